"""MLP and FunctionModel as the serving layers use them: validated batches, metadata, pickling."""

import itertools
import pickle

import numpy as np
import pytest
from otpserve.errors import DTypeError, ShapeError
from otpserve.models import MLP, FunctionModel, Model, default_model_path


def reference_forward(x, layers):
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


@pytest.fixture
def mlp():
    rng = np.random.default_rng(1)
    sizes = [784, 128, 10]
    layers = [
        ((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), rng.normal(size=b).astype(np.float32))
        for a, b in itertools.pairwise(sizes)
    ]
    return MLP(layers, labels=[str(i) for i in range(10)])


def test_mlp_has_the_metadata_the_http_layer_reads(mlp):
    assert isinstance(mlp, Model)
    assert mlp.name == "mlp"
    assert mlp.input_shape == (784,)
    assert mlp.output_shape == (10,)
    assert mlp.input_dtype == np.float32
    assert mlp.labels == [str(i) for i in range(10)]
    assert mlp.sizes == [784, 128, 10]


def test_mlp_predict_runs_the_kernel_and_matches_a_float64_reference(mlp):
    x = np.random.default_rng(2).random((33, 784), dtype=np.float32)
    y = mlp.predict(x)
    assert y.shape == (33, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y, reference_forward(x, mlp.layers), atol=1e-4)


def test_mlp_predict_converts_numeric_dtypes_to_float32(mlp):
    x = np.random.default_rng(3).integers(0, 2, size=(4, 784))
    np.testing.assert_allclose(mlp.predict(x), mlp.predict(x.astype(np.float32)), atol=0)
    np.testing.assert_allclose(mlp.predict(x.astype(np.float64)), mlp.predict(x.astype(np.float32)), atol=0)


def test_mlp_predict_accepts_non_contiguous_batches(mlp):
    x = np.random.default_rng(4).random((784, 5), dtype=np.float32).T  # Fortran-ordered view
    np.testing.assert_allclose(mlp.predict(x), mlp.predict(np.ascontiguousarray(x)), atol=0)


def test_mlp_predict_on_empty_batch_returns_empty(mlp):
    assert mlp.predict(np.zeros((0, 784), np.float32)).shape == (0, 10)


def test_wrong_width_is_a_shape_error_naming_expected_and_got(mlp):
    with pytest.raises(ShapeError, match=r"expected a batch of shape \(n, 784\), got \(2, 100\)"):
        mlp.predict(np.zeros((2, 100), np.float32))


def test_single_row_without_batch_axis_is_a_shape_error_with_a_hint(mlp):
    with pytest.raises(ShapeError, match=r"got \(784,\) \(a single row needs a batch axis"):
        mlp.predict(np.zeros(784, np.float32))


@pytest.mark.parametrize("bad", [np.array([["a"] * 784]), np.zeros((1, 784), dtype=complex)])
def test_non_numeric_batch_is_a_dtype_error(mlp, bad):
    with pytest.raises(DTypeError, match="is not numeric; expected float32"):
        mlp.predict(bad)


def test_mlp_survives_pickling_for_worker_processes(mlp):
    clone = pickle.loads(pickle.dumps(mlp))
    x = np.random.default_rng(5).random((3, 784), dtype=np.float32)
    np.testing.assert_array_equal(clone.predict(x), mlp.predict(x))
    assert clone.labels == mlp.labels and clone.input_shape == mlp.input_shape


def test_weights_start_on_a_cache_line_when_built_and_when_unpickled():
    rng = np.random.default_rng(6)
    # A slice one float in: numpy's allocation is 16-byte aligned at best, this is 4 bytes off it.
    w = rng.random((785, 128), dtype=np.float32).ravel()[1 : 1 + 784 * 128].reshape(784, 128)
    assert w.ctypes.data % 64 != 0
    model = MLP([(w, np.zeros(128, np.float32)), (rng.random((128, 10), dtype=np.float32), np.zeros(10, np.float32))])
    clone = pickle.loads(pickle.dumps(model))
    for m in (model, clone):
        for (got, _), (want, _) in zip(m.layers, model.layers, strict=True):
            assert got.ctypes.data % 64 == 0 and got.flags.c_contiguous and got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.layers[0][0], w)
    x = rng.random((3, 784), dtype=np.float32)
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))


def test_layers_that_do_not_chain_are_refused():
    with pytest.raises(ShapeError, match="layer 1: takes 4 inputs but layer 0 gives 3"):
        MLP([(np.zeros((2, 3)), np.zeros(3)), (np.zeros((4, 1)), np.zeros(1))])


def test_bias_of_wrong_length_is_refused():
    with pytest.raises(ShapeError, match=r"bias \(out,\), got \(2, 3\) and \(2,\)"):
        MLP([(np.zeros((2, 3)), np.zeros(2))])


def double(x):
    return x * 2


def test_function_model_wraps_a_callable_with_validation():
    model = FunctionModel(double, input_shape=(3,), output_shape=(3,), name="double")
    assert isinstance(model, Model)
    np.testing.assert_array_equal(model.predict([[1, 2, 3]]), np.array([[2, 4, 6]], np.float32))
    with pytest.raises(ShapeError, match=r"double: expected a batch of shape \(n, 3\), got \(1, 4\)"):
        model.predict(np.zeros((1, 4)))
    assert pickle.loads(pickle.dumps(model)).predict(np.ones((1, 3)))[0, 0] == 2


def test_function_model_checks_what_the_function_returns():
    model = FunctionModel(double, input_shape=(3,), output_shape=(2,), name="liar")
    with pytest.raises(ShapeError, match=r"liar: function returned shape \(1, 3\), expected \(1, 2\)"):
        model.predict(np.zeros((1, 3)))


def test_default_model_path_is_under_otpserve_home(monkeypatch, tmp_path):
    monkeypatch.setenv("OTPSERVE_HOME", str(tmp_path))
    assert default_model_path() == tmp_path / "models" / "mlp"


def test_default_model_path_falls_back_to_xdg_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("OTPSERVE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_model_path() == tmp_path / ".local" / "share" / "otpserve" / "models" / "mlp"
