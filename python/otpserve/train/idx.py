"""A reader for the IDX format the MNIST files use (gzip-compressed or plain).

Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per dimension,
then the data, big-endian, row-major. Every way a file can be wrong — a bad magic number, an unknown dtype
code, too few or too many data bytes, a broken gzip stream — raises ``IDXFormatError`` naming the file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from otpserve.errors import IDXFormatError

# dtype code → big-endian numpy dtype (from the format's definition, yann.lecun.com/exdb/mnist)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file into an array in native byte order (uint8 for MNIST images and labels)."""
    file = Path(path)
    raw = file.read_bytes()
    # Decide by content, not by name: MNIST mirrors ship both `.gz` and already-unpacked files.
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{file}: broken gzip stream ({exc})") from None
    return parse_idx(raw, name=str(file))


def parse_idx(raw: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array in native byte order; raise IDXFormatError naming ``name`` if malformed."""
    if len(raw) < 4:
        raise IDXFormatError(f"{name}: {len(raw)} bytes is too short for an IDX header (needs 4)")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise IDXFormatError(f"{name}: wrong magic number 0x{raw[:4].hex()} (an IDX file starts with two zero bytes)")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXFormatError(f"{name}: unknown dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXFormatError(f"{name}: header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IDXFormatError(
            f"{name}: truncated header: {ndim} dimensions need {header_len} bytes, file has {len(raw)}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header_len
    if got < expected:
        raise IDXFormatError(f"{name}: truncated: shape {shape} needs {expected} data bytes, file has {got}")
    if got > expected:
        raise IDXFormatError(f"{name}: {got - expected} unexpected bytes after the data for shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, gzipped if ``compress`` (default: if the name ends in .gz)."""
    file = Path(path)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise IDXFormatError(f"{file}: dtype {array.dtype} has no IDX code")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + np.ascontiguousarray(array).astype(IDX_DTYPES[codes[native]]).tobytes()
    if compress if compress is not None else file.suffix == ".gz":
        body = gzip.compress(body, mtime=0)
    file.write_bytes(body)
    return file
