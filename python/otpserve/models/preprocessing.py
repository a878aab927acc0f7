"""Pixels → model input, the one way training, ``otpserve predict`` and serving all do it.

The reference MLP takes MNIST-shaped input: a 28×28 grayscale image, light ink on a dark background,
scaled to [0, 1], flattened row-major into 784 float32 values. ``pixels_to_input`` is that recipe;
``IMAGE_PREPROCESSING`` is the same recipe as data, written into every manifest so a server can check it
applies the steps the model was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import zoom

from otpserve.errors import ShapeError

IMAGE_SIZE = (28, 28)

# Order matters and is the same for the training data and for served images: scale, resize, clip, flatten.
IMAGE_PREPROCESSING: dict[str, Any] = {
    "input": "grayscale image, light ink on dark background (MNIST convention)",
    "steps": [
        {"op": "scale", "divide_by": "pixel_max", "pixel_max": {"uint8": 255, "sklearn_digits": 16}},
        {
            "op": "resize",
            "to": list(IMAGE_SIZE),
            "method": "scipy.ndimage.zoom",
            "order": 1,
            "note": "bilinear, corner-aligned; skipped when the image is already 28x28",
        },
        {"op": "clip", "min": 0.0, "max": 1.0},
        {"op": "flatten", "order": "C"},
        {"op": "cast", "dtype": "float32"},
    ],
}


def resize(images: np.ndarray, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Resize one image (h, w) or a stack (n, h, w) to ``size`` with bilinear interpolation."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    factors = (1.0,) * (images.ndim - 2) + (size[0] / h, size[1] / w)
    return zoom(images, factors, order=1)


def pixels_to_input(pixels: np.ndarray, pixel_max: float) -> np.ndarray:
    """Turn images (h, w) or (n, h, w) with values in [0, pixel_max] into model rows (784,) or (n, 784)."""
    if pixels.ndim not in (2, 3):
        raise ShapeError(f"expected an image (h, w) or images (n, h, w), got shape {pixels.shape}")
    scaled = pixels.astype(np.float64) / float(pixel_max)
    resized = np.clip(resize(scaled), 0.0, 1.0)
    flat = resized.reshape(-1, IMAGE_SIZE[0] * IMAGE_SIZE[1]) if pixels.ndim == 3 else resized.reshape(-1)
    return np.ascontiguousarray(flat, dtype=np.float32)


def load_input_file(path: str | Path, *, invert: bool = False) -> np.ndarray:
    """Read a .png (or other image) or .npy file as a batch of model rows, shape (n, 784).

    Images are converted to 8-bit grayscale (pixel_max 255). A .npy of integers is taken as 8-bit pixels;
    a .npy of floats as pixels already in [0, 1]. Shapes: (784,) or (h, w) is one image, (n, 784) or
    (n, h, w) is n images. ``invert`` is for dark ink on a light background (a scanned page, a drawing).
    """
    file = Path(path)
    if file.suffix.lower() == ".npy":
        array = np.load(file, allow_pickle=False)
        if array.dtype.kind not in "biuf":
            raise ShapeError(f"{file}: expected a numeric array, got dtype {array.dtype}")
        pixel_max = 255.0 if array.dtype.kind in "biu" else 1.0
        side = IMAGE_SIZE[0] * IMAGE_SIZE[1]
        if array.ndim == 1 and array.shape[0] == side:
            array = array.reshape(IMAGE_SIZE)
        elif array.ndim == 2 and array.shape[1] == side:
            array = array.reshape(-1, *IMAGE_SIZE)
    else:
        from PIL import Image  # only needed for images; keeps `import otpserve.models` light

        with Image.open(file) as image:
            array = np.asarray(image.convert("L"))
        pixel_max = 255.0
    if invert:
        array = pixel_max - array.astype(np.float64)
    try:
        rows = pixels_to_input(array, pixel_max)
    except ShapeError as exc:
        raise ShapeError(f"{file}: {exc}") from None
    return rows.reshape(-1, rows.shape[-1])
