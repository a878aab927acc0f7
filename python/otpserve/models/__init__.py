"""Models: one protocol — a model turns a batch (first axis = batch) into a batch.

Built-ins: ``MLP`` (a safetensors artifact run on the native kernel) and ``FunctionModel`` (any Python
callable, the ``Nx.Serving.new(fn)`` analog). ``default_model_path()`` is where ``otpserve train`` writes
and the serving commands look when the user names no model.
"""

from __future__ import annotations

import os
from pathlib import Path

from otpserve.models.base import FunctionModel, Model, check_batch
from otpserve.models.mlp import MLP

__all__ = ["MLP", "FunctionModel", "Model", "check_batch", "default_model_path", "otpserve_home"]


def otpserve_home() -> Path:
    """``$OTPSERVE_HOME``, else ``~/.local/share/otpserve`` (the XDG data dir convention, no root needed)."""
    home = os.environ.get("OTPSERVE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".local" / "share" / "otpserve"


def default_model_path() -> Path:
    """Where the default artifact lives: ``$OTPSERVE_HOME/models/mlp``. Decided once; see docs/train.md."""
    return otpserve_home() / "models" / "mlp"
