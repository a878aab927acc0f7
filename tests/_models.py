"""Module-level model functions for serving tests (process workers import them by name)."""

from __future__ import annotations

import os
import time

import numpy as np

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def affine(x: np.ndarray) -> np.ndarray:
    """A tiny deterministic model: 4 features in, 3 out."""
    return x @ W + 1.0


def slow_affine(x: np.ndarray) -> np.ndarray:
    """``affine`` after a pause long enough to kill the worker mid-batch."""
    time.sleep(float(os.environ.get("OTPSERVE_TEST_SLOW", "0.5")))
    return affine(x)


def crash_on_negative(x: np.ndarray) -> np.ndarray:
    """Dies like a segfaulting native model when a row holds a negative value."""
    if (x < 0).any():
        os._exit(139)
    return affine(x)


def raise_on_negative(x: np.ndarray) -> np.ndarray:
    """Raises (a model bug) when a row holds a negative value."""
    if (x < 0).any():
        raise ValueError("negative input")
    return affine(x)
