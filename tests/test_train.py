"""The train stage: accuracy on the digits, agreement with scikit-learn, determinism, MNIST input."""

import json

import numpy as np
import pytest
from otpserve.errors import IDXFormatError
from otpserve.models import MLP
from otpserve.train import (
    Dataset,
    fit_classifier,
    load_digits_dataset,
    load_mnist_dataset,
    mlp_from_sklearn,
    sklearn_logits,
    train,
    write_idx,
)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The full default training (digits, 30 epochs, seed 0): a few seconds on 2 cores."""
    return train(out=tmp_path_factory.mktemp("default") / "mlp", progress=False)


@pytest.fixture(scope="module")
def small_digits():
    """A 400-image slice of the digits, for tests that need a trained model, not a good one."""
    full = load_digits_dataset(seed=0)
    return Dataset(full.train_x[:400], full.train_y[:400], full.heldout_x, full.heldout_y, full.description)


def test_default_run_reaches_95_percent_on_the_held_out_digits(default_run):
    assert default_run.metrics["heldout_accuracy"] >= 0.95
    assert default_run.metrics["heldout_samples"] == 360  # 20 % of 1,797, stratified


def test_default_run_writes_an_artifact_that_loads_and_reproduces_the_metric(default_run):
    model = MLP.load(default_run.path)
    assert model.sizes == [784, 128, 10]
    data = default_run.dataset
    accuracy = float(np.mean(model.predict(data.heldout_x).argmax(axis=1) == data.heldout_y))
    assert accuracy == default_run.metrics["heldout_accuracy"]


def test_manifest_records_library_split_preprocessing_and_metrics(default_run):
    manifest = json.loads((default_run.path / "manifest.json").read_text())
    assert manifest["training"]["library"] == "scikit-learn"
    assert manifest["training"]["seed"] == 0 and manifest["training"]["epochs"] == 30
    assert "stratified" in manifest["training"]["data"]["split"]
    assert "scikit-learn" in manifest["versions"]
    assert [s["op"] for s in manifest["preprocessing"]["steps"]] == [
        "scale",
        "resize",
        "clip",
        "flatten",
        "cast",
    ]
    assert manifest["metrics"]["max_abs_logit_diff_vs_sklearn"] <= 1e-4
    assert manifest["labels"] == [str(d) for d in range(10)]


def test_kernel_logits_match_scikit_learns_within_1e4_and_argmax_exactly(small_digits):
    classifier, _ = fit_classifier(small_digits, epochs=3, seed=7, progress=False)
    model = mlp_from_sklearn(classifier)
    x = np.concatenate([small_digits.heldout_x, small_digits.train_x])
    ours = model.predict(x)
    theirs = sklearn_logits(classifier, x)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(ours.argmax(axis=1), classifier.predict(x))
    # and the logits really are the pre-softmax values behind predict_proba
    softmax = np.exp(ours - ours.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), classifier.predict_proba(x), atol=1e-5)


def test_same_data_and_seed_give_identical_weights(tmp_path, small_digits):
    a = train(dataset=small_digits, out=tmp_path / "a", epochs=2, seed=3, progress=False)
    b = train(dataset=small_digits, out=tmp_path / "b", epochs=2, seed=3, progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    for (wa, ba), (wb, bb) in zip(a.model.layers, b.model.layers, strict=True):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)


def test_different_seed_gives_different_weights(tmp_path, small_digits):
    a = train(dataset=small_digits, out=tmp_path / "a", epochs=1, seed=1, progress=False)
    b = train(dataset=small_digits, out=tmp_path / "b", epochs=1, seed=2, progress=False)
    assert not np.array_equal(a.model.layers[0][0], b.model.layers[0][0])


def test_digits_are_resampled_to_mnist_shape_in_unit_range():
    data = load_digits_dataset(seed=0)
    assert data.train_x.shape == (1437, 784) and data.heldout_x.shape == (360, 784)
    assert data.train_x.dtype == np.float32
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    # stratified: every class is held out in proportion (each has 174-183 images, so 35-37 held out)
    assert set(np.bincount(data.heldout_y)) <= {35, 36, 37}


def write_mnist(folder, n_train=200, n_test=50, gz=True, seed=0):
    """Fake MNIST in the real file layout: a bright bar whose column encodes the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 30, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, :, 2 + 2 * label] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_folder_is_read_with_the_official_split(tmp_path, gz):
    data = load_mnist_dataset(write_mnist(tmp_path / "mnist", gz=gz))
    assert data.train_x.shape == (200, 784) and data.heldout_x.shape == (50, 784)
    assert data.train_x.max() == 1.0 and data.train_x.dtype == np.float32
    assert data.description["name"] == "mnist"


def test_training_on_an_mnist_folder_learns_and_records_it(tmp_path):
    result = train(data=write_mnist(tmp_path / "mnist"), out=tmp_path / "model", epochs=5, progress=False)
    assert result.metrics["heldout_accuracy"] >= 0.9
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["training"]["data"]["name"] == "mnist"
    assert manifest["training"]["data"]["train_samples"] == 200


def test_mnist_folder_missing_a_file_names_it(tmp_path):
    folder = write_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte file"):
        load_mnist_dataset(folder)


def test_mnist_images_and_labels_of_different_counts_are_refused(tmp_path):
    folder = write_mnist(tmp_path / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(IDXFormatError, match=r"train images \(200, 28, 28\) and labels \(7,\) do not match"):
        load_mnist_dataset(folder)


def test_the_example_request_serve_prints_is_a_held_out_row_read_from_the_manifest(default_run):
    import orjson
    from otpserve.app import example_body

    model = MLP.load(default_run.path)
    body = orjson.loads(example_body(model, default_run.path))
    x = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(1, 784)
    np.testing.assert_array_equal(x, default_run.dataset.heldout_x[:1].astype(np.float32))
