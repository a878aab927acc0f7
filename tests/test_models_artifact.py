"""Loading a model artifact: a round trip works, and every kind of damage is a clear, typed error."""

import hashlib
import itertools
import json

import numpy as np
import pytest
from otpserve.errors import (
    ArtifactError,
    ArtifactNotFound,
    ManifestError,
    MissingTensor,
    TensorShapeMismatch,
    WeightsCorrupt,
    WeightsHashMismatch,
)
from otpserve.models import MLP
from safetensors.numpy import save_file


def small_layers(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [6, 5, 3]
    return [
        (rng.normal(size=(a, b)).astype(np.float32), rng.normal(size=b).astype(np.float32))
        for a, b in itertools.pairwise(sizes)
    ]


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "model"
    MLP(small_layers(), name="tiny", labels=["a", "b", "c"]).save(path, metrics={"heldout_accuracy": 0.5})
    return path


def manifest_of(path):
    return json.loads((path / "manifest.json").read_text())


def rewrite_weights(path, tensors):
    """Replace the weights and update the manifest's hash, so only the tensor problem remains."""
    save_file(tensors, str(path / "model.safetensors"))
    manifest = manifest_of(path)
    manifest["weights"]["sha256"] = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_saved_artifact_loads_back_with_same_weights_and_metadata(artifact):
    model = MLP.load(artifact)
    for (w, b), (w0, b0) in zip(model.layers, small_layers(), strict=True):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
    assert model.name == "tiny"
    assert model.labels == ["a", "b", "c"]
    assert model.input_shape == (6,) and model.output_shape == (3,)
    assert model.manifest["metrics"]["heldout_accuracy"] == 0.5


def test_manifest_records_hash_layout_shapes_and_versions(artifact):
    manifest = manifest_of(artifact)
    data = (artifact / "model.safetensors").read_bytes()
    assert manifest["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["weights"]["tensors"]["layers.0.weight"] == {"shape": [6, 5], "dtype": "float32"}
    assert manifest["weights"]["tensors"]["layers.1.bias"] == {"shape": [3], "dtype": "float32"}
    assert "(in, out)" in manifest["weights"]["layout"]
    assert manifest["architecture"]["sizes"] == [6, 5, 3]
    assert manifest["input"] == {"shape": [6], "dtype": "float32"}
    assert {"python", "numpy", "safetensors"} <= set(manifest["versions"])


def test_loading_accepts_the_manifest_path_too(artifact):
    assert MLP.load(artifact / "manifest.json").sizes == [6, 5, 3]


def test_missing_folder_is_artifact_not_found(tmp_path):
    with pytest.raises(ArtifactNotFound, match="nowhere: no such model artifact folder"):
        MLP.load(tmp_path / "nowhere")


def test_missing_manifest_is_artifact_not_found_naming_it(artifact):
    (artifact / "manifest.json").unlink()
    with pytest.raises(ArtifactNotFound, match=r"manifest.json: manifest is missing"):
        MLP.load(artifact)


def test_missing_weights_file_is_artifact_not_found_naming_it(artifact):
    (artifact / "model.safetensors").unlink()
    with pytest.raises(ArtifactNotFound, match=r"model.safetensors: weights file is missing"):
        MLP.load(artifact)


def test_changed_weights_are_a_hash_mismatch_naming_the_file(artifact):
    weights = artifact / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last float: still a valid file, different hash
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsHashMismatch, match=r"model.safetensors: SHA-256 mismatch: manifest says [0-9a-f]{64}"):
        MLP.load(artifact)


def test_truncated_weights_file_is_weights_corrupt(artifact):
    weights = artifact / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(WeightsCorrupt, match=r"model.safetensors: not a valid safetensors file, truncated"):
        MLP.load(artifact)


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"garbage" * 100, bytes(range(256)) * 4])
def test_garbage_weights_file_is_weights_corrupt_not_a_crash(artifact, garbage):
    (artifact / "model.safetensors").write_bytes(garbage)
    with pytest.raises(WeightsCorrupt, match=r"model\.safetensors"):
        MLP.load(artifact)


def test_missing_tensor_is_named(artifact):
    tensors = MLP(small_layers()).tensors()
    del tensors["layers.1.bias"]
    rewrite_weights(artifact, tensors)
    with pytest.raises(MissingTensor, match=r"model.safetensors: tensor 'layers.1.bias' .* missing"):
        MLP.load(artifact)


def test_tensor_shape_disagreeing_with_manifest_is_named(artifact):
    tensors = MLP(small_layers()).tensors()
    tensors["layers.0.weight"] = np.zeros((6, 4), np.float32)
    rewrite_weights(artifact, tensors)
    with pytest.raises(TensorShapeMismatch, match=r"'layers.0.weight' has shape \[6, 4\], manifest says \[6, 5\]"):
        MLP.load(artifact)


def test_architecture_disagreeing_with_consistent_tensors_is_a_shape_mismatch(artifact):
    manifest = manifest_of(artifact)
    manifest["architecture"]["sizes"] = [6, 7, 3]
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TensorShapeMismatch, match=r"architecture \[6, 7, 3\] needs \[6, 7\]"):
        MLP.load(artifact)


def test_wrong_tensor_dtype_is_named(artifact):
    tensors = {k: v.astype(np.float64) if k == "layers.0.bias" else v for k, v in MLP(small_layers()).tensors().items()}
    rewrite_weights(artifact, tensors)
    with pytest.raises(WeightsCorrupt, match=r"'layers.0.bias' has dtype float64, manifest says float32"):
        MLP.load(artifact)


def test_manifest_that_is_not_json_is_a_manifest_error(artifact):
    (artifact / "manifest.json").write_bytes(b"{not json")
    with pytest.raises(ManifestError, match=r"manifest.json: not valid JSON"):
        MLP.load(artifact)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format", "something-else", "format is 'something-else'"),
        ("format_version", 99, "format_version 99 is not supported"),
        ("weights", None, "'weights' is missing"),
        ("labels", ["only-one"], "labels must be a list of 3"),
        ("architecture", {"type": "cnn"}, "architecture.type must be 'mlp'"),
    ],
)
def test_manifest_with_bad_field_is_a_manifest_error_naming_it(artifact, field, value, message):
    manifest = manifest_of(artifact)
    manifest[field] = value
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message):
        MLP.load(artifact)


def test_weights_file_outside_the_artifact_folder_is_refused(artifact):
    manifest = manifest_of(artifact)
    manifest["weights"]["file"] = "../elsewhere.safetensors"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="plain file name"):
        MLP.load(artifact)


def test_every_artifact_error_names_the_file_and_is_catchable_as_one_type(artifact):
    (artifact / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ArtifactError) as info:
        MLP.load(artifact)
    assert info.value.path == artifact / "model.safetensors"
    assert str(info.value).startswith(str(artifact / "model.safetensors"))
