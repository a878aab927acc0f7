"""The model protocol: what the serving layers need from any model, and FunctionModel for plain callables.

A model turns a batch into a batch: ``predict(batch)`` takes an array whose first axis is the batch and
returns one row per input row. The metadata attributes let the HTTP layer describe and validate requests
without running the model. ``FunctionModel`` wraps any Python callable — the analog of ``Nx.Serving.new(fn)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from otpserve.errors import DTypeError, ShapeError


@runtime_checkable
class Model(Protocol):
    """What a serving needs from a model. ``input_shape``/``output_shape`` are per row (no batch axis)."""

    name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    output_shape: tuple[int, ...]
    labels: list[str] | None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Return one output row per input row: a batch of shape ``(n, *output_shape)``."""
        ...


def check_batch(batch: object, input_shape: tuple[int, ...], dtype: np.dtype, *, model: str) -> np.ndarray:
    """Return ``batch`` as a C-contiguous array of ``dtype`` with shape ``(n, *input_shape)``, or raise.

    Any numeric dtype (bool, integers, floats) is converted, because a client sending float64 or uint8
    pixels means the same thing; strings, objects and complex numbers raise ``DTypeError`` rather than
    be guessed at.
    """
    array = np.asarray(batch)
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"{model}: batch dtype {array.dtype} is not numeric; expected {np.dtype(dtype)}")
    expected = (None, *input_shape)
    if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(input_shape):
        hint = " (a single row needs a batch axis: x.reshape(1, -1))" if array.shape == tuple(input_shape) else ""
        shown = "(n, " + ", ".join(str(d) for d in input_shape) + ")"
        raise ShapeError(f"{model}: expected a batch of shape {shown}, got {tuple(array.shape)}{hint}")
    return np.ascontiguousarray(array, dtype=dtype)


CACHE_LINE = 64


def cache_aligned(array: np.ndarray) -> np.ndarray:
    """``array`` if its data starts on a 64-byte cache line, else a C-contiguous copy that does.

    numpy aligns its arrays to 16 bytes only, and the kernel reads weights that start mid-line with
    vector loads that straddle two lines: ``mlp_forward`` on the 784 -> 128 -> 10 MLP ran 6 % slower at
    batch 8 and 12 % slower at batch 32 than on the same weights 64-byte aligned (smaller batches lose
    nothing: the kernel realigns its own loads there).
    """
    if array.ctypes.data % CACHE_LINE == 0 and array.flags.c_contiguous:
        return array
    buffer = np.empty(array.nbytes + CACHE_LINE, dtype=np.uint8)
    start = -buffer.ctypes.data % CACHE_LINE
    aligned = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    aligned[...] = array
    return aligned


class FunctionModel:
    """A model made from a callable ``fn(batch) -> batch`` plus the metadata a serving needs.

    The batch ``fn`` receives is already checked and converted (shape ``(n, *input_shape)``, ``dtype``); its
    result must have shape ``(n, *output_shape)``. Pickle it (to send it to a worker process) only if ``fn``
    is picklable, i.e. a module-level function rather than a lambda.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        *,
        name: str = "function",
        dtype: np.dtype | type = np.float32,
        labels: list[str] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = tuple(int(d) for d in output_shape)
        self.input_dtype = np.dtype(dtype)
        self.labels = list(labels) if labels is not None else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Check and convert ``batch``, run ``fn`` on it; raise ShapeError if the result has the wrong shape."""
        x = check_batch(batch, self.input_shape, self.input_dtype, model=self.name)
        y = np.asarray(self.fn(x))
        if y.shape != (x.shape[0], *self.output_shape):
            raise ShapeError(
                f"{self.name}: function returned shape {y.shape}, expected {(x.shape[0], *self.output_shape)}"
            )
        return y

    def __repr__(self) -> str:
        return f"FunctionModel({self.name!r}, input_shape={self.input_shape}, output_shape={self.output_shape})"
