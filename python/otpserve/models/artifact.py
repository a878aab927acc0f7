"""The on-disk model artifact: a folder with a safetensors weights file and a JSON manifest.

    <artifact>/
        manifest.json        what the model is: architecture, input shape/dtype, labels, preprocessing,
                             metrics, library versions, and the SHA-256 of the weights file
        model.safetensors    the tensors, named in the manifest's ``weights.tensors`` with their shapes

Reading verifies everything before a single weight is used: the manifest parses and has its fields, the
weights file parses as safetensors, its SHA-256 matches, and every listed tensor is present with the listed
shape and dtype. Each failure raises its own ``otpserve.errors.ArtifactError`` subclass naming the file and
the problem — never a bare ``KeyError`` or a crash inside a parser.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from otpserve.errors import (
    ArtifactNotFound,
    ManifestError,
    MissingTensor,
    TensorShapeMismatch,
    WeightsCorrupt,
    WeightsHashMismatch,
)

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "otpserve.artifact"
FORMAT_VERSION = 1


def sha256_of(data: bytes) -> str:
    """The SHA-256 of ``data``, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def write_artifact(path: str | Path, tensors: dict[str, np.ndarray], manifest: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``manifest`` as an artifact folder at ``path`` (created if needed); return it.

    The manifest's ``format``, ``weights.file``, ``weights.sha256`` and ``weights.tensors`` are filled in
    here, so they always describe the bytes actually written. Files are written to a temporary name and
    renamed, so a reader never sees a half-written artifact.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    data = save_safetensors(arrays)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    full["weights"] = {
        **manifest.get("weights", {}),
        "file": WEIGHTS_FILE,
        "sha256": sha256_of(data),
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype)} for name, t in arrays.items()},
    }
    _write_atomically(folder / WEIGHTS_FILE, data)
    _write_atomically(folder / MANIFEST_FILE, (json.dumps(full, indent=2, sort_keys=False) + "\n").encode())
    return folder


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify the artifact at ``path`` (folder or manifest file); return (manifest, tensors)."""
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST_FILE:
        folder = folder.parent
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ArtifactNotFound(folder, "no such model artifact folder (train one with `otpserve train`)")
    manifest = read_manifest(manifest_path)

    weights = manifest["weights"]
    weights_path = folder / weights["file"]
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactNotFound(weights_path, "weights file is missing") from None
    except OSError as exc:
        raise WeightsCorrupt(weights_path, f"cannot read weights file: {exc.strerror or exc}") from exc

    tensors, parse_error = _parse_safetensors(data)
    actual = sha256_of(data)
    if parse_error is not None:
        hash_note = "" if actual == weights["sha256"] else " (its SHA-256 also differs from the manifest's)"
        raise WeightsCorrupt(
            weights_path,
            f"not a valid safetensors file, truncated or garbage ({len(data)} bytes): {parse_error}{hash_note}",
        )
    if actual != weights["sha256"]:
        raise WeightsHashMismatch(
            weights_path,
            f"SHA-256 mismatch: manifest says {weights['sha256']}, file has {actual} "
            "(the weights were changed after the manifest was written)",
        )

    for name, spec in weights["tensors"].items():
        if name not in tensors:
            raise MissingTensor(weights_path, f"tensor {name!r} listed in the manifest is missing from the file")
        tensor = tensors[name]
        if list(tensor.shape) != list(spec["shape"]):
            raise TensorShapeMismatch(
                weights_path, f"tensor {name!r} has shape {list(tensor.shape)}, manifest says {spec['shape']}"
            )
        if str(tensor.dtype) != spec["dtype"]:
            raise WeightsCorrupt(
                weights_path, f"tensor {name!r} has dtype {tensor.dtype}, manifest says {spec['dtype']}"
            )
    return manifest, tensors


def read_manifest(manifest_path: Path) -> dict[str, Any]:
    """Parse the manifest and check the fields every artifact has (the model checks its own fields)."""
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactNotFound(manifest_path, "manifest is missing") from None
    except OSError as exc:
        raise ManifestError(manifest_path, f"cannot read manifest: {exc.strerror or exc}") from exc
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(manifest_path, f"not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(manifest_path, f"expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ManifestError(manifest_path, f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            manifest_path,
            f"format_version {manifest.get('format_version')!r} is not supported (this otpserve reads "
            f"{FORMAT_VERSION})",
        )
    weights = manifest.get("weights")
    if not isinstance(weights, dict):
        raise ManifestError(manifest_path, "field 'weights' is missing or not an object")
    file_name = weights.get("file")
    # A bare file name only: the manifest must not point the loader outside its own folder.
    if not isinstance(file_name, str) or not file_name or Path(file_name).name != file_name:
        raise ManifestError(manifest_path, f"weights.file must be a plain file name, got {file_name!r}")
    sha = weights.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise ManifestError(manifest_path, f"weights.sha256 must be a 64-digit hex string, got {sha!r}")
    tensors = weights.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(spec, dict)
        and isinstance(spec.get("shape"), list)
        and all(isinstance(d, int) for d in spec["shape"])
        and isinstance(spec.get("dtype"), str)
        for spec in tensors.values()
    ):
        raise ManifestError(
            manifest_path, "weights.tensors must map each tensor name to {shape: [int, ...], dtype: str}"
        )
    return manifest


def _parse_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], str | None]:
    try:
        return load_safetensors(data), None
    except SafetensorError as exc:
        return {}, str(exc)
    except (ValueError, TypeError) as exc:  # e.g. a header that parses but names an unsupported dtype
        return {}, f"{type(exc).__name__}: {exc}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
