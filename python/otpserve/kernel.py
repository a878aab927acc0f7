"""The native kernel, as Python sees it (layer 2 of DESIGN.md).

Every function here runs in Rust (``otpserve._kernel``) with the GIL released for the whole
computation, so other Python threads keep running and two threads calling the kernel run in parallel:
the counterpart of a Rustler NIF on a dirty scheduler.

Arrays:
    * float32 and float64, 2-D with the batch first (``b`` is 1-D). All arrays of one call share one
      dtype; anything else is a ``TypeError`` naming the dtypes accepted.
    * A C-contiguous numpy array of the right dtype is read in place, never copied. Other layouts
      (Fortran order, strided views) are copied once to C order and give the same results.
    * Python sequences (lists, tuples) are converted with ``numpy.asarray``; integer or boolean ones
      become float64. numpy arrays are never converted: an int64 array is a ``TypeError``.
    * Results go to a new array, or to ``out=``: a writeable, C-contiguous array of the result's shape
      and dtype that shares no memory with the inputs (else ``ValueError``/``TypeError``).
    * As with numpy's own functions that release the GIL, an array a call uses must not be written by
      another thread while the call runs: the result would hold unspecified values (never a crash).

Shapes follow numpy: ``dense(x, w, b)`` is ``x @ w + b`` with ``w`` of shape (in, out), and zero-size
dimensions are valid. NaN and inf propagate as numpy propagates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from otpserve import _kernel

__all__ = [
    "argmax",
    "decode_v2_json",
    "dense",
    "get_num_threads",
    "matmul",
    "mlp_forward",
    "set_num_threads",
    "softmax",
]

FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float64]
ArrayLike = FloatArray | Sequence[Any]


def _coerce(value: Any) -> Any:
    """Sequences become arrays (integers as float64); arrays, and anything else, go to the kernel as is."""
    if type(value) is np.ndarray or not isinstance(value, (list, tuple)):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "biu":
        array = array.astype(np.float64)
    return array


def matmul(a: ArrayLike, b: ArrayLike, out: FloatArray | None = None) -> FloatArray:
    """``a @ b`` for 2-D arrays of shape (m, k) and (k, n), on a packed SIMD GEMM over the kernel's threads.

    Large products pack their operands into per-thread scratch buffers that are kept for the next call
    (up to 64 MB each, backed by huge pages where the OS allows): a fresh buffer would cost a page fault
    per 4 KiB. Raises ``ValueError`` naming both shapes when the inner dimensions differ.
    """
    return _kernel.matmul(_coerce(a), _coerce(b), out)


def dense(
    x: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    activation: Literal["relu"] | None = None,
    out: FloatArray | None = None,
) -> FloatArray:
    """One dense layer, fused: ``activation(x @ w + b)`` with no intermediate array.

    ``x`` is (batch, in), ``w`` is (in, out), ``b`` is (out,); ``activation`` is None or ``"relu"``.
    """
    return _kernel.dense(_coerce(x), _coerce(w), _coerce(b), activation, out)


def mlp_forward(
    x: ArrayLike,
    layers: Sequence[tuple[FloatArray, FloatArray]],
    out: FloatArray | None = None,
) -> FloatArray:
    """The inference pass of an MLP in one call: dense layers with ReLU between them, none after the last.

    ``layers`` is a sequence of ``(w, b)`` pairs, ``w`` of shape (in, out). Every layer's shapes are checked
    before anything is computed; errors name the layer index. Layers whose weights fit in a core's L2
    (up to 1 MiB), and any batch of up to 16 rows, run on a register-tiled AVX-512/AVX2 kernel that reads
    the weights in place with no packing; small work stays on the calling thread, large batches are split
    by rows over the kernel's threads. Bigger weights go to a packed GEMM.
    """
    return _kernel.mlp_forward(_coerce(x), layers, out)


def softmax(x: ArrayLike, out: FloatArray | None = None) -> FloatArray:
    """Softmax of each row: ``exp(x - max) / sum(exp(x - max))``, computed as numpy would."""
    return _kernel.softmax(_coerce(x), out)


def argmax(x: ArrayLike) -> npt.NDArray[np.int64]:
    """The column index of each row's maximum (int64): the first on ties, the first NaN if any, as numpy.

    A row with no columns has no argmax: ``ValueError``.
    """
    return _kernel.argmax(_coerce(x))


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (at least 1) for large products; the default is one per available core."""
    _kernel.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads large products use."""
    return _kernel.get_num_threads()


def decode_v2_json(
    body: bytes,
) -> tuple[str | None, list[tuple[str, str, list[int], npt.NDArray[np.float32] | None]]]:
    """Parse a KServe v2 (Open Inference Protocol) JSON inference request, with the GIL released.

    Returns ``(id or None, [(name, datatype, shape, data), ...])`` where ``data`` is a new contiguous 1-D
    float32 array of the input's values in row-major order (nested ``data`` arrays are flattened), or
    None for an input sent with the binary extension (``parameters.binary_data_size`` and no ``data``).
    Numeric datatypes only (FP16/32/64, INT8..64, UINT8..64; integer values must be integral and in
    range). Every problem is a ``ValueError`` naming the input and what is wrong; malformed JSON gives
    the parser's message with line and column. Unknown fields are ignored.
    """
    return _kernel.decode_v2_json(body)
