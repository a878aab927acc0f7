"""The errors otpserve raises on purpose, as types a user can catch.

Every error here derives from :class:`OtpserveError`, so ``except OtpserveError`` catches anything otpserve
meant to tell you about; each also derives from the closest built-in (``ValueError``, ``TimeoutError``,
``FileNotFoundError``) so code that does not know otpserve still handles it sensibly. Messages name the
values involved: the file, the expected and the actual shape, the limit that was hit.
"""

from __future__ import annotations

from pathlib import Path


class OtpserveError(Exception):
    """Base of every error otpserve raises on purpose."""


# --- data and model errors -------------------------------------------------------------------------------


class ShapeError(OtpserveError, ValueError):
    """A batch (or a tensor) has a shape the model does not accept; the message names expected and got."""


class DTypeError(OtpserveError, TypeError):
    """A batch has a dtype that cannot be converted to the model's input dtype (strings, objects, complex)."""


class IDXFormatError(OtpserveError, ValueError):
    """An MNIST IDX file is malformed: wrong magic number, unknown dtype code, truncated, trailing bytes."""


class ArtifactError(OtpserveError):
    """A model artifact (folder with a manifest and a weights file) cannot be used.

    ``path`` is the file at fault and ``problem`` says what is wrong with it; the message is
    ``"{path}: {problem}"``.    The subclasses below let a caller tell the failure modes apart.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep the two-argument constructor picklable (errors cross process boundaries)
        return (type(self), (self.path, self.problem))


class ArtifactNotFound(ArtifactError, FileNotFoundError):
    """The artifact folder, its manifest or its weights file does not exist."""


class ManifestError(ArtifactError):
    """The manifest is not valid JSON, or lacks a field, or a field has the wrong type or value."""


class WeightsCorrupt(ArtifactError):
    """The weights file is not a readable safetensors file (truncated, garbage, wrong tensor dtype)."""


class WeightsHashMismatch(ArtifactError):
    """The weights file parses but its SHA-256 differs from the manifest's: it was changed after saving."""


class MissingTensor(ArtifactError):
    """A tensor the manifest lists (e.g. ``layers.1.bias``) is absent from the weights file."""


class TensorShapeMismatch(ArtifactError):
    """A tensor's shape disagrees with the manifest (or the layers do not chain: out of one != in of next)."""


# --- serving errors (raised by otpserve.serving / otpserve.http) ----------------------------------------


class Overloaded(OtpserveError):
    """The serving's bounded queue is full: the request was refused at once (HTTP 503 + Retry-After)."""


class DeadlineExceeded(OtpserveError, TimeoutError):
    """A request's deadline passed before it got a result; if still queued, it cost no compute (HTTP 504)."""


class WorkerCrashed(OtpserveError):
    """The worker running a batch died (exception, segfault, OOM kill) and the batch could not be re-run."""


class BatchHung(OtpserveError, TimeoutError):
    """A batch ran past ``batch_deadline`` twice, killing a worker each time; not retried again (HTTP 503)."""


class ServingStopped(OtpserveError):
    """The serving is shutting down or stopped and takes no new requests."""
