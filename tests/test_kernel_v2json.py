"""decode_v2_json against json + numpy: good KServe v2 requests decode to the same numbers, bad ones
are ValueErrors that say what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otpserve.kernel import decode_v2_json


def request(*inputs: dict, **top: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **top}).encode()


def tensor(name: str = "x", shape: list[int] | None = None, datatype: str = "FP32", **fields: object) -> dict:
    body: dict = {"name": name, "shape": shape if shape is not None else [1, 3], "datatype": datatype}
    if "data" not in fields:
        fields["data"] = [1.0, 2.0, 3.0]
    body.update({k: v for k, v in fields.items() if v is not ...})
    return body


def test_a_784_float_request_decodes_like_json_and_numpy() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(784).tolist()
    body = request(
        tensor("input-0", [1, 784], data=values, parameters={"content_type": "np"}),
        id="req-7",
        parameters={"priority": 1},
        outputs=[{"name": "output-0"}],
    )
    request_id, inputs = decode_v2_json(body)
    assert request_id == "req-7"
    [(name, datatype, shape, data)] = inputs
    assert (name, datatype, shape) == ("input-0", "FP32", [1, 784])
    assert data.dtype == np.float32 and data.flags.c_contiguous and data.ndim == 1
    np.testing.assert_array_equal(data, np.asarray(json.loads(body)["inputs"][0]["data"], np.float32))


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.integers(-(2**40), 2**40),
        ),
        min_size=0,
        max_size=60,
    ),
    nested=st.booleans(),
)
def test_any_numbers_decode_exactly_as_numpy_rounds_them(values: list[float], nested: bool) -> None:
    data: list = values
    shape = [len(values)]
    if nested and len(values) % 2 == 0 and values:
        data = [values[i : i + 2] for i in range(0, len(values), 2)]
        shape = [len(values) // 2, 2]
    body = request(tensor(shape=shape, data=data))
    with np.errstate(over="ignore"):
        want = np.asarray(json.loads(body)["inputs"][0]["data"], np.float64).astype(np.float32).ravel()
    _, [(_, _, got_shape, got)] = decode_v2_json(body)
    assert got_shape == shape
    np.testing.assert_array_equal(got, want)


def test_nested_data_is_flattened_row_major_and_id_is_optional() -> None:
    body = request(tensor(shape=[2, 2, 2], data=[[[1, 2], [3, 4]], [[5, 6], [7, 8]]]))
    request_id, [(_, _, shape, data)] = decode_v2_json(body)
    assert request_id is None
    assert shape == [2, 2, 2]
    assert data.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_every_numeric_datatype_is_accepted_and_converted_to_float32() -> None:
    for datatype in ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]:
        _, [(_, got_type, _, data)] = decode_v2_json(request(tensor(datatype=datatype, data=[1, 2, 3])))
        assert got_type == datatype
        assert data.dtype == np.float32 and data.tolist() == [1, 2, 3]


def test_several_inputs_keep_their_order_and_binary_inputs_have_no_data() -> None:
    body = request(
        tensor("a", [1], data=[1]),
        tensor("b", [2], data=..., parameters={"binary_data_size": 8}),
        tensor("c", [0], data=[]),
    )
    _, inputs = decode_v2_json(body)
    assert [(name, shape) for name, _, shape, _ in inputs] == [("a", [1]), ("b", [2]), ("c", [0])]
    assert inputs[1][3] is None
    assert inputs[2][3].shape == (0,)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": [', r"line 1 column \d+"),
        (b'{"inputs": [}\n', r"line 1 column"),
        (b"[1, 2]", "request object"),
        (b'{"id": "x"}', "'inputs'"),
        (request({"shape": [1], "datatype": "FP32", "data": [1]}), "'name'"),
        (request({"name": "x", "datatype": "FP32", "data": [1]}), "'shape'"),
        (request({"name": "x", "shape": [1], "data": [1]}), "'datatype'"),
        (request({"name": "x", "shape": [1], "datatype": "FP32"}), "'data'"),
        (request(tensor(datatype="BOOL", shape=[1], data=[True])), "only numeric"),
        (request(tensor(datatype="BYTES", shape=[1], data=["abc"])), "only numeric"),
        (request(tensor(shape=[-1, 3])), r"negative.*-1"),
        (request(tensor(shape=[2, 3])), r"\[2, 3\] holds 6 values but data has 3"),
        (request(tensor("img", shape=[3], data=[1, "2", 3])), "input 'img': element 1 is a string"),
        (request(tensor("img", shape=[3], data=[1, 2, None])), "input 'img': element 2 is null"),
        (request(tensor("img", shape=[3], data=[1, {"a": 1}, 3])), "element 1 is an object"),
        (request(tensor("img", shape=[2], data=[True, 1])), "element 0 is a boolean"),
        (request(tensor(datatype="INT8", shape=[2], data=[1, 128])), r"element 1 is 128.*INT8"),
        (request(tensor(datatype="UINT8", shape=[1], data=[-1])), r"element 0 is -1.*UINT8"),
        (request(tensor(datatype="INT32", shape=[1], data=[1.5])), r"element 0 is 1.5.*INT32"),
    ],
)
def test_bad_requests_are_value_errors_that_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_v2_json(body)
