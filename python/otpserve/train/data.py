"""Training data: scikit-learn's digits (the default, no download) or MNIST IDX files from a folder.

Both come out the same shape — rows of 784 float32 values in [0, 1], labels 0–9 — made by the same
``otpserve.models.preprocessing.pixels_to_input`` that serves images later, so training and serving agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otpserve.errors import IDXFormatError
from otpserve.models.preprocessing import pixels_to_input
from otpserve.train.idx import read_idx

LABELS = [str(d) for d in range(10)]

# The held-out share of the digits. 20 % (360 of 1,797 images) is large enough that one image is
# 0.28 points of accuracy, small enough to leave ~144 training images per class.
DIGITS_HELDOUT_FRACTION = 0.2

# Accepted names, first match wins: the original files (optionally .gz) and the `name.idx3-ubyte` variant.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


@dataclass(frozen=True)
class Dataset:
    """Train and held-out rows (n, 784) float32 with int labels, and how they were made (for the manifest)."""

    train_x: np.ndarray
    train_y: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)


def load_digits_dataset(seed: int, heldout_fraction: float = DIGITS_HELDOUT_FRACTION) -> Dataset:
    """scikit-learn's 1,797 scanned 8×8 digits (values 0–16), resampled to 28×28, split stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = pixels_to_input(digits.images, pixel_max=16.0)
    y = digits.target.astype(np.int64)
    train_x, heldout_x, train_y, heldout_y = train_test_split(
        x, y, test_size=heldout_fraction, stratify=y, random_state=seed
    )
    return Dataset(
        train_x,
        train_y,
        heldout_x,
        heldout_y,
        {
            "name": "sklearn-digits",
            "source": "sklearn.datasets.load_digits (1,797 scanned 8x8 digits, values 0-16)",
            "resampled": "8x8 -> 28x28, see preprocessing",
            "split": (
                f"stratified by class, {heldout_fraction:.0%} held out "
                f"(train_test_split(random_state={seed})): "
                f"{len(train_y)} train / {len(heldout_y)} held-out"
            ),
            "train_samples": len(train_y),
            "heldout_samples": len(heldout_y),
        },
    )


def load_mnist_dataset(folder: str | Path) -> Dataset:
    """MNIST from IDX files in ``folder``: train on the 60,000 train images, hold out the 10,000 t10k ones."""
    root = Path(folder)
    arrays = {key: read_idx(_find(root, names)) for key, names in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise IDXFormatError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not match "
                "(expected (n, h, w) and (n,))"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise IDXFormatError(f"{root}: {split} labels must be 0-9, found {labels.min()}..{labels.max()}")
    pixel_max = 255.0 if arrays["train_images"].dtype == np.uint8 else 1.0
    return Dataset(
        pixels_to_input(arrays["train_images"], pixel_max),
        arrays["train_labels"].astype(np.int64),
        pixels_to_input(arrays["test_images"], pixel_max),
        arrays["test_labels"].astype(np.int64),
        {
            "name": "mnist",
            "source": f"IDX files in {root}",
            "split": "the official one: train on train-images, hold out t10k-images",
            "train_samples": int(arrays["train_labels"].shape[0]),
            "heldout_samples": int(arrays["test_labels"].shape[0]),
        },
    )


def _find(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{root}: no {names[0]} file (also tried {', '.join(names[1:])} and .gz variants)")
