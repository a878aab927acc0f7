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


def block_in_native_code_on_negative(x: np.ndarray) -> np.ndarray:
    """A model stuck forever inside native code, holding the GIL, when a row holds a negative value."""
    if (x < 0).any():
        import ctypes

        ctypes.PyDLL(None).pause()  # PyDLL keeps the GIL: nothing in this process runs Python again
    return affine(x)


def hang_once_then_answer(x: np.ndarray) -> np.ndarray:
    """Hangs the first time it ever sees a negative row (a marker file says it did), then answers."""
    marker = os.environ["OTPSERVE_TEST_MARKER"]
    if (x < 0).any() and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(3600)
    return affine(np.abs(x))


_leak: list[bytes] = []


def leak_per_batch(x: np.ndarray) -> np.ndarray:
    """Keeps 2 MiB per batch (touched, so it is resident): a model that leaks."""
    _leak.append(b"x" * (2 << 20))
    return affine(x)


class SlowToStart:
    """A model whose worker takes ``OTPSERVE_TEST_START`` seconds to load it (unpickling in the child)."""

    input_shape = (4,)
    output_shape = (3,)

    def __init__(self) -> None:
        self.home = os.getpid()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if os.getpid() != self.home:
            time.sleep(float(os.environ.get("OTPSERVE_TEST_START", "1.0")))

    def predict(self, x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            time.sleep(3600)
        return affine(x)
