"""The Open Inference Protocol (KServe v2) tensors: request decoding and response encoding.

JSON requests are decoded by the native kernel straight into a float32 array (``kernel.decode_v2_json``);
the binary tensor data extension (``Inference-Header-Content-Length``) reads a small JSON header with orjson
and takes the raw little-endian tensor bytes as they are. Anything malformed raises ``BadRequest`` with a
message naming the problem, which the router turns into a 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from otpserve import kernel

DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMERIC = {name for name in DTYPES if name != "BOOL"}
V2_NAMES = {np.dtype(v).str: k for k, v in DTYPES.items()}
_BY_DTYPE: dict[np.dtype, str] = {}  # v2_datatype's cache: the lookup runs once per response


class BadRequest(ValueError):
    """The request cannot be served as sent; the message says why (HTTP 400)."""


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: its id, the one input tensor, and how to answer."""

    id: str | None
    input_name: str
    x: np.ndarray
    binary_output: bool = False


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 name of a numpy dtype (FP32 for float32)."""
    name = _BY_DTYPE.get(dtype)
    if name is None:
        name = _BY_DTYPE[dtype] = V2_NAMES.get(np.dtype(dtype).newbyteorder("<").str, "FP32")
    return name


def decode_json(body: bytes) -> InferRequest:
    """Decode a JSON inference request with one input tensor."""
    try:
        rid, inputs = kernel.decode_v2_json(body)
    except ValueError as exc:
        raise BadRequest(f"invalid inference request: {exc}") from None
    if len(inputs) != 1:
        raise BadRequest(f"the model takes exactly 1 input tensor; the request has {len(inputs)}")
    name, _datatype, shape, data = inputs[0]
    if data is None:
        raise BadRequest(
            f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length header"
        )
    return InferRequest(rid, name, data.reshape(shape))


def decode_binary(body: bytes, header_length: bytes) -> InferRequest:
    """Decode a request using the binary tensor data extension."""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
    try:
        header = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in the inference header: {exc}") from None
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("the inference header needs 'inputs': a list with exactly 1 input tensor object")
    spec = inputs[0]
    name = spec.get("name")
    datatype = spec.get("datatype")
    shape = spec.get("shape")
    if not isinstance(name, str):
        raise BadRequest("input tensor is missing its 'name'")
    if datatype not in NUMERIC:
        raise BadRequest(f"input {name!r}: datatype {datatype!r} is not supported; use one of {sorted(NUMERIC)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape {shape!r} must be a list of non-negative integers")
    dtype = DTYPES[datatype]
    count = math.prod(shape)  # Python ints: a hostile shape cannot wrap around
    raw = body[n:]
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size", len(raw)) if isinstance(params, dict) else len(raw)
    if size != len(raw) or size != count * dtype.itemsize:
        raise BadRequest(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes; "
            f"binary_data_size is {size} and {len(raw)} bytes follow the header"
        )
    if "data" in spec:
        raise BadRequest(f"input {name!r} has both 'data' and binary data")
    x = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return InferRequest(header.get("id"), name, x, binary_output=_wants_binary(header))


def _wants_binary(header: dict) -> bool:
    params = header.get("parameters")
    if isinstance(params, dict) and params.get("binary_data_output"):
        return True
    outputs = header.get("outputs")
    if isinstance(outputs, list):
        for out in outputs:
            p = out.get("parameters") if isinstance(out, dict) else None
            if isinstance(p, dict) and p.get("binary_data"):
                return True
    return False


def encode_json(model_name: str, rid: str | None, y: np.ndarray) -> bytes:
    """A JSON inference response with one output tensor."""
    out = {"name": "output", "datatype": v2_datatype(y.dtype), "shape": y.shape, "data": y.ravel()}
    if rid is None:
        return orjson.dumps({"model_name": model_name, "outputs": [out]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps({"model_name": model_name, "id": rid, "outputs": [out]}, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_binary(model_name: str, rid: str | None, y: np.ndarray) -> tuple[bytes, int]:
    """A binary-extension response: the JSON header, then the raw output bytes; returns (body, header length)."""
    raw = np.ascontiguousarray(y).astype(y.dtype.newbyteorder("<"), copy=False).tobytes()
    out = {
        "name": "output",
        "datatype": v2_datatype(y.dtype),
        "shape": y.shape,
        "parameters": {"binary_data_size": len(raw)},
    }
    head: dict = {"model_name": model_name, "outputs": [out]}
    if rid is not None:
        head["id"] = rid
    header = orjson.dumps(head)
    return header + raw, len(header)
