"""MLP: a multilayer perceptron whose forward pass runs on the native kernel.

Layers are ``(w, b)`` pairs with ``w`` of shape (in, out): ``y = x @ w + b``, ReLU between layers, none after
the last, so ``predict`` returns logits. The weights are kept as float32 C-contiguous arrays starting on a
cache line (``cache_aligned``), exactly what ``otpserve.kernel.mlp_forward`` reads without copying. An
``MLP`` holds nothing but arrays and metadata, so it is cheap to build and pickles cleanly into worker
processes.
"""

from __future__ import annotations

import itertools
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from otpserve import kernel
from otpserve.errors import ManifestError, ShapeError, TensorShapeMismatch
from otpserve.models.artifact import MANIFEST_FILE, read_artifact, write_artifact
from otpserve.models.base import cache_aligned, check_batch

ARCHITECTURE = "mlp"
WEIGHT_LAYOUT = "layers.{i}.weight is (in, out), layers.{i}.bias is (out,); y = x @ w + b; ReLU between layers"


def _tensor_names(i: int) -> tuple[str, str]:
    return f"layers.{i}.weight", f"layers.{i}.bias"


class MLP:
    """A fully connected ReLU network. ``MLP.load(path)`` reads a verified artifact; ``save`` writes one."""

    input_dtype = np.dtype(np.float32)

    def __init__(
        self,
        layers: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        name: str = "mlp",
        labels: Sequence[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        if not layers:
            raise ShapeError("an MLP needs at least one (weight, bias) layer")
        checked: list[tuple[np.ndarray, np.ndarray]] = []
        for i, (w, b) in enumerate(layers):
            w = np.ascontiguousarray(w, dtype=np.float32)
            b = np.ascontiguousarray(b, dtype=np.float32)
            if w.ndim != 2 or b.shape != (w.shape[1],):
                raise ShapeError(f"layer {i}: weight must be (in, out) and bias (out,), got {w.shape} and {b.shape}")
            if checked and checked[-1][0].shape[1] != w.shape[0]:
                raise ShapeError(
                    f"layer {i}: takes {w.shape[0]} inputs but layer {i - 1} gives {checked[-1][0].shape[1]}"
                )
            checked.append((cache_aligned(w), b))
        self.layers: tuple[tuple[np.ndarray, np.ndarray], ...] = tuple(checked)
        self.name = name
        self.input_shape: tuple[int, ...] = (checked[0][0].shape[0],)
        self.output_shape: tuple[int, ...] = (checked[-1][0].shape[1],)
        if labels is not None and len(labels) != self.output_shape[0]:
            raise ShapeError(f"{len(labels)} labels given for {self.output_shape[0]} outputs")
        self.labels: list[str] | None = list(labels) if labels is not None else None
        self.preprocessing = preprocessing
        # The manifest this model was loaded from (metrics, versions, training details), or None.
        self.manifest = manifest

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a worker process: the weights arrive in fresh numpy buffers, so align them again."""
        self.__dict__.update(state)
        self.layers = tuple((cache_aligned(w), b) for w, b in self.layers)

    @property
    def sizes(self) -> list[int]:
        """Layer widths, input first: [784, 128, 10] for the reference model."""
        return [self.input_shape[0], *(w.shape[1] for w, _ in self.layers)]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of shape (n, in); numeric dtypes are converted to float32."""
        x = check_batch(batch, self.input_shape, self.input_dtype, model=self.name)
        if x.shape[0] == 0:  # nothing to compute; don't ask the kernel to reason about empty matrices
            return np.zeros((0, *self.output_shape), dtype=np.float32)
        return kernel.mlp_forward(x, self.layers)

    def tensors(self) -> dict[str, np.ndarray]:
        """The weights by safetensors name: ``layers.0.weight``, ``layers.0.bias``, ..."""
        out: dict[str, np.ndarray] = {}
        for i, (w, b) in enumerate(self.layers):
            w_name, b_name = _tensor_names(i)
            out[w_name], out[b_name] = w, b
        return out

    def save(self, path: str | Path, *, metrics: dict[str, Any] | None = None, **extra: Any) -> Path:
        """Write this model as an artifact folder; ``extra`` goes into the manifest (``training=...``)."""
        manifest: dict[str, Any] = {
            "name": self.name,
            "architecture": {
                "type": ARCHITECTURE,
                "sizes": self.sizes,
                "activation": "relu",
                "output": "logits (no softmax; argmax is the class)",
            },
            "input": {"shape": list(self.input_shape), "dtype": str(self.input_dtype)},
            "output": {"shape": list(self.output_shape)},
            "labels": self.labels,
            "preprocessing": self.preprocessing,
            "metrics": metrics or {},
            "versions": library_versions(),
            "weights": {"layout": WEIGHT_LAYOUT},
            **extra,
        }
        return write_artifact(path, self.tensors(), manifest)

    @classmethod
    def load(cls, path: str | Path) -> MLP:
        """Read and verify an artifact (hash, tensors, shapes); raise an ``ArtifactError`` naming the file."""
        manifest, tensors = read_artifact(path)
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        manifest_path = folder / MANIFEST_FILE
        weights_path = folder / manifest["weights"]["file"]
        arch = manifest.get("architecture")
        if not isinstance(arch, dict) or arch.get("type") != ARCHITECTURE:
            raise ManifestError(manifest_path, f"architecture.type must be {ARCHITECTURE!r}, got {arch!r}")
        sizes = arch.get("sizes")
        if not isinstance(sizes, list) or len(sizes) < 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ManifestError(manifest_path, f"architecture.sizes must list at least two widths, got {sizes!r}")

        layers = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            for name, expected in zip(_tensor_names(i), ((n_in, n_out), (n_out,)), strict=True):
                if name not in manifest["weights"]["tensors"]:
                    raise ManifestError(manifest_path, f"architecture needs tensor {name!r}, weights.tensors lacks it")
                if tensors[name].shape != expected:
                    raise TensorShapeMismatch(
                        weights_path,
                        f"tensor {name!r} has shape {list(tensors[name].shape)}, architecture {sizes} needs "
                        f"{list(expected)}",
                    )
            w_name, b_name = _tensor_names(i)
            layers.append((tensors[w_name], tensors[b_name]))

        input_spec = manifest.get("input", {})
        if input_spec.get("shape") != [sizes[0]] or input_spec.get("dtype") != "float32":
            raise ManifestError(
                manifest_path, f"input must be {{shape: [{sizes[0]}], dtype: float32}}, got {input_spec!r}"
            )
        labels = manifest.get("labels")
        if labels is not None and (not isinstance(labels, list) or len(labels) != sizes[-1]):
            raise ManifestError(manifest_path, f"labels must be a list of {sizes[-1]} names, got {labels!r}")
        return cls(
            layers,
            name=str(manifest.get("name", folder.name)),
            labels=labels,
            preprocessing=manifest.get("preprocessing"),
            manifest=manifest,
        )

    def __repr__(self) -> str:
        return f"MLP({self.name!r}, sizes={self.sizes})"


def library_versions() -> dict[str, str]:
    """Versions of what made the artifact; training adds its own library (scikit-learn) to this."""
    versions = {"python": platform.python_version()}
    for dist in ("otpserve", "numpy", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions
