"""otpserve.kernel against numpy: every function, random shapes, both dtypes, every bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from otpserve import kernel

DTYPES = [np.float32, np.float64]
# 1, 0, small primes, and a large inner dimension.
DIMS = st.sampled_from([0, 1, 2, 3, 5, 7, 13, 17, 31, 64, 127])
INNER = st.sampled_from([0, 1, 2, 3, 7, 31, 128, 784, 1031])


def tolerance(dtype: type, inner: int) -> dict[str, float]:
    eps = np.finfo(dtype).eps
    return {"rtol": 50 * eps * max(inner, 1) ** 0.5 + 10 * eps, "atol": 50 * eps * max(inner, 1)}


def random(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def numpy_mlp(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def test_reference_exercise() -> None:
    want = [[19, 22], [43, 50]]
    assert kernel.matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]).tolist() == want
    for dtype in DTYPES:
        a = np.array([[1, 2], [3, 4]], dtype)
        b = np.array([[5, 6], [7, 8]], dtype)
        result = kernel.matmul(a, b)
        assert result.dtype == dtype
        assert result.tolist() == want


# ---- agreement with numpy ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(m=DIMS, k=INNER, n=DIMS, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_matmul_matches_numpy(m: int, k: int, n: int, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = random(rng, (m, k), dtype), random(rng, (k, n), dtype)
    got = kernel.matmul(a, b)
    assert got.dtype == dtype and got.shape == (m, n)
    np.testing.assert_allclose(got, a @ b, **tolerance(dtype, k))


@settings(max_examples=60, deadline=None)
@given(
    m=DIMS,
    k=INNER,
    n=DIMS,
    dtype=st.sampled_from(DTYPES),
    activation=st.sampled_from([None, "relu"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_matches_numpy(m: int, k: int, n: int, dtype: type, activation: str | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, w, b = random(rng, (m, k), dtype), random(rng, (k, n), dtype), random(rng, (n,), dtype)
    want = x @ w + b
    if activation == "relu":
        want = np.maximum(want, 0)
    got = kernel.dense(x, w, b, activation=activation)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, **tolerance(dtype, k))


@settings(max_examples=40, deadline=None)
@given(
    batch=st.sampled_from([0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 128]),
    widths=st.lists(st.sampled_from([1, 3, 10, 16, 31, 128, 784]), min_size=2, max_size=4),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_mlp_forward_matches_numpy(batch: int, widths: list[int], dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = random(rng, (batch, widths[0]), dtype)
    layers = [(random(rng, (i, o), dtype), random(rng, (o,), dtype)) for i, o in itertools.pairwise(widths)]
    got = kernel.mlp_forward(x, layers)
    assert got.dtype == dtype and got.shape == (batch, widths[-1])
    np.testing.assert_allclose(got, numpy_mlp(x, layers), **tolerance(dtype, max(widths) * 4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_weights_too_big_for_cache_take_the_packed_gemm_path_and_still_match_numpy(dtype: type, threads: int) -> None:
    rng = np.random.default_rng(7)
    # w over 1 MiB: the packed path (w packed into panels, in column bands), bias and ReLU fused.
    x, w, b = random(rng, (601, 700), dtype), random(rng, (700, 523), dtype), random(rng, (523,), dtype)
    before = kernel.get_num_threads()
    kernel.set_num_threads(threads)
    try:
        np.testing.assert_allclose(kernel.matmul(x, w), x @ w, **tolerance(dtype, 700))
        got = kernel.dense(x, w, b, activation="relu")
        np.testing.assert_allclose(got, np.maximum(x @ w + b, 0), **tolerance(dtype, 700))
    finally:
        kernel.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_batches_split_with_the_partner_thread_equal_the_one_thread_result(dtype: type) -> None:
    # Batch <= 8 of a 784 x 128 layer: with two threads its columns are split with the partner thread,
    # which must change no bit of the result (each column is still one core's dot products).
    rng = np.random.default_rng(11)
    layers = [
        (random(rng, (784, 128), dtype), random(rng, (128,), dtype)),
        (random(rng, (128, 10), dtype), random(rng, (10,), dtype)),
    ]
    before = kernel.get_num_threads()
    try:
        for batch in [1, 2, 3, 4, 5, 8]:
            x = random(rng, (batch, 784), dtype)
            kernel.set_num_threads(1)
            alone = kernel.mlp_forward(x, layers)
            kernel.set_num_threads(2)
            for _ in range(20):
                np.testing.assert_array_equal(kernel.mlp_forward(x, layers), alone)
    finally:
        kernel.set_num_threads(before)


def test_mlp_forward_on_the_784_128_10_model_matches_numpy_forward() -> None:
    rng = np.random.default_rng(0)
    w1, b1 = random(rng, (784, 128), np.float32), random(rng, (128,), np.float32)
    w2, b2 = random(rng, (128, 10), np.float32), random(rng, (10,), np.float32)
    for batch in [1, 2, 4, 8, 32, 128, 1024]:
        x = random(rng, (batch, 784), np.float32)
        h = x @ w1
        h += b1
        np.maximum(h, 0, out=h)
        y = h @ w2
        y += b2
        np.testing.assert_allclose(kernel.mlp_forward(x, [(w1, b1), (w2, b2)]), y, rtol=1e-4, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(m=DIMS, n=DIMS, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_softmax_and_argmax_match_numpy(m: int, n: int, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (random(rng, (m, n), dtype) * 10).astype(dtype)
    got = kernel.softmax(x)
    assert got.dtype == dtype and got.shape == (m, n)
    if n:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
        assert kernel.argmax(x).tolist() == np.argmax(x, axis=1).tolist()
        assert kernel.argmax(x).dtype == np.int64


def test_nan_and_inf_propagate_as_numpy() -> None:
    x = np.array([[1.0, np.nan, 3.0], [np.inf, 1.0, 2.0], [-np.inf, 0.0, 1.0], [2.0, 2.0, 1.0]])
    w = np.array([[1.0], [1.0], [0.0]])
    b = np.zeros(1)
    np.testing.assert_array_equal(kernel.matmul(x, w), x @ w)
    np.testing.assert_array_equal(kernel.dense(x, w, b, activation="relu"), np.maximum(x @ w + b, 0))
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        np.testing.assert_array_equal(kernel.softmax(x), e / e.sum(axis=1, keepdims=True))
    assert kernel.argmax(x).tolist() == np.argmax(x, axis=1).tolist()
    big = np.full((20, 20), 0.0)
    big[3, 4] = np.nan
    assert np.isnan(kernel.matmul(big, big)[3]).all()


def test_zero_size_dimensions_are_valid() -> None:
    for dtype in DTYPES:
        assert kernel.matmul(np.zeros((0, 3), dtype), np.zeros((3, 4), dtype)).shape == (0, 4)
        np.testing.assert_array_equal(kernel.matmul(np.ones((2, 0), dtype), np.ones((0, 5), dtype)), np.zeros((2, 5)))
        np.testing.assert_array_equal(
            kernel.dense(np.ones((40, 0), dtype), np.ones((0, 3), dtype), np.arange(3, dtype=dtype)),
            np.tile(np.arange(3), (40, 1)),
        )
        assert kernel.softmax(np.zeros((3, 0), dtype)).shape == (3, 0)
        assert kernel.argmax(np.zeros((0, 0), dtype)).shape == (0,)


# ---- layouts and out= --------------------------------------------------------------------------------


def test_c_contiguous_input_is_read_in_place_and_out_is_written_in_place() -> None:
    rng = np.random.default_rng(1)
    a, b = random(rng, (33, 20), np.float32), random(rng, (20, 7), np.float32)
    out = np.empty((33, 7), np.float32)
    result = kernel.matmul(a, b, out=out)
    assert result is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    w, bias = random(rng, (20, 7), np.float64), random(rng, (7,), np.float64)
    out64 = np.empty((33, 7))
    assert kernel.dense(a.astype(np.float64), w, bias, out=out64) is out64
    assert kernel.mlp_forward(a.astype(np.float64), [(w, bias)], out=out64) is out64
    soft = np.empty((33, 20), np.float32)
    assert kernel.softmax(a, out=soft) is soft


def test_read_only_inputs_and_one_array_passed_twice_are_read_in_place() -> None:
    rng = np.random.default_rng(4)
    a = random(rng, (6, 6), np.float32)
    w, bias = random(rng, (6, 3), np.float32), random(rng, (3,), np.float32)
    for array in (a, w, bias):
        array.flags.writeable = False
    np.testing.assert_allclose(kernel.matmul(a, a), a @ a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel.mlp_forward(a, [(w, bias)]), a @ w + bias, rtol=1e-5, atol=1e-5)
    assert kernel.argmax(a).tolist() == np.argmax(a, axis=1).tolist()


def test_fortran_order_and_strided_views_give_correct_results() -> None:
    rng = np.random.default_rng(2)
    base = random(rng, (40, 60), np.float64)
    views = [np.asfortranarray(base[:, :30]), base[::2, ::2], base[:30, 5:35].T, base[::-1, :30]]
    for a in views:
        b = random(rng, (a.shape[1], 9), np.float64)
        np.testing.assert_allclose(kernel.matmul(a, np.asfortranarray(b)), a @ b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(kernel.dense(a, b[::1], b[0]), a @ b + b[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(kernel.softmax(a).sum(axis=1), 1.0)
        assert kernel.argmax(a).tolist() == np.argmax(a, axis=1).tolist()


# ---- bad input ---------------------------------------------------------------------------------------


def test_mismatched_inner_dimensions_name_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        kernel.matmul(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        kernel.dense(np.ones((2, 3)), np.ones((4, 5)), np.ones(5))


def test_unsupported_dtypes_are_type_errors_naming_the_accepted_ones() -> None:
    for bad in [np.int64, np.float16, np.complex64, np.bool_]:
        with pytest.raises(TypeError, match="float32, float64"):
            kernel.matmul(np.ones((2, 2), bad), np.ones((2, 2), bad))
    with pytest.raises(TypeError, match="float32"):
        kernel.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float64))
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        kernel.matmul(np.ones((2, 2)), "not an array")


def test_wrong_ndim_and_bias_length_are_value_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        kernel.matmul(np.ones(3), np.ones((3, 3)))
    with pytest.raises(ValueError, match="2-D"):
        kernel.softmax(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        kernel.dense(np.ones((2, 3)), np.ones((3, 4)), np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"b has shape \(3,\), expected \(4,\)"):
        kernel.dense(np.ones((2, 3)), np.ones((3, 4)), np.ones(3))
    with pytest.raises(ValueError, match="activation"):
        kernel.dense(np.ones((2, 3)), np.ones((3, 4)), np.ones(4), activation="tanh")
    with pytest.raises(ValueError, match="empty row"):
        kernel.argmax(np.ones((2, 0)))


def test_mlp_forward_checks_every_layer_up_front_and_names_the_layer() -> None:
    x = np.ones((2, 8), np.float32)
    good = (np.ones((8, 4), np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"layer 1: w has shape \(5, 2\)"):
        kernel.mlp_forward(x, [good, (np.ones((5, 2), np.float32), np.ones(2, np.float32))])
    with pytest.raises(ValueError, match=r"layer 1: b has shape \(3,\)"):
        kernel.mlp_forward(x, [good, (np.ones((4, 2), np.float32), np.ones(3, np.float32))])
    with pytest.raises(TypeError, match="layer 1 w is float64"):
        kernel.mlp_forward(x, [good, (np.ones((4, 2)), np.ones(2, np.float32))])
    with pytest.raises(TypeError, match=r"layers\[0\] must be a \(w, b\) pair"):
        kernel.mlp_forward(x, [(good[0],)])
    with pytest.raises(ValueError, match="at least one"):
        kernel.mlp_forward(x, [])


def test_bad_out_arrays_are_refused() -> None:
    a, b = np.ones((3, 4)), np.ones((4, 5))
    with pytest.raises(ValueError, match=r"out has shape \(5, 3\)"):
        kernel.matmul(a, b, out=np.empty((5, 3)))
    with pytest.raises(TypeError, match="out has dtype float32"):
        kernel.matmul(a, b, out=np.empty((3, 5), np.float32))
    read_only = np.empty((3, 5))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernel.matmul(a, b, out=read_only)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernel.matmul(a, b, out=np.empty((5, 3)).T)
    square = np.ones((4, 4))
    with pytest.raises(ValueError, match="shares memory with a"):
        kernel.matmul(square, np.ones((4, 4)), out=square)
    with pytest.raises(ValueError, match="shares memory with x"):
        kernel.softmax(square, out=square)
    big = np.ones((8, 4))
    with pytest.raises(ValueError, match="shares memory with x"):
        kernel.dense(big[:4], np.ones((4, 4)), np.ones(4), out=big[2:6])


def test_no_input_crashes_the_interpreter() -> None:
    weird = [
        None,
        3,
        np.float64(2.0),
        np.ones((2, 2), ">f8"),
        np.ones((2, 2), object),
        np.frombuffer(b"\0" * 17, np.uint8)[1:].view(np.float32).reshape(2, 2),
    ]
    for value in weird:
        try:
            kernel.matmul(value, np.ones((2, 2), np.float32))
        except (TypeError, ValueError):
            pass
    misaligned = np.frombuffer(b"\0" * 17, np.uint8)[1:].view(np.float32).reshape(2, 2)
    np.testing.assert_array_equal(kernel.matmul(misaligned, np.ones((2, 2), np.float32)), np.zeros((2, 2)))


def test_thread_count_can_be_set_and_read() -> None:
    before = kernel.get_num_threads()
    try:
        kernel.set_num_threads(1)
        assert kernel.get_num_threads() == 1
        a = np.ones((300, 300), np.float32)
        np.testing.assert_array_equal(kernel.matmul(a, a), a @ a)
        with pytest.raises(ValueError, match="at least 1"):
            kernel.set_num_threads(0)
    finally:
        kernel.set_num_threads(before)
