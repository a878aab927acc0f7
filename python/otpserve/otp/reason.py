"""ExitReason: why a child (task, OS process, GenServer, supervisor) exited.

OTP exit reasons are terms; here they are one small value type. Only ``normal`` and ``shutdown`` are
*normal* exits — the distinction that decides whether a ``transient`` child is restarted.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from typing import Any

__all__ = ["ExitReason"]

_NORMAL_KINDS = frozenset({"normal", "shutdown"})


@dataclass(frozen=True)
class ExitReason:
    """``kind`` is one of normal, shutdown, killed, exception, exit_code, signal, escalated, error.

    ``detail`` carries the exception, the exit code, the signal number, ``(child_id, reason)`` for an
    escalation, or the text of a custom reason.
    """

    kind: str
    detail: Any = None

    @property
    def is_normal(self) -> bool:
        """True for ``normal`` and ``shutdown``, the exits after which a transient child is not restarted."""
        return self.kind in _NORMAL_KINDS

    @property
    def abnormal(self) -> bool:
        """Not ``is_normal``: an exit after which a transient child is restarted."""
        return not self.is_normal

    @classmethod
    def normal(cls) -> ExitReason:
        """A clean exit (OTP's ``normal``)."""
        return cls("normal")

    @classmethod
    def shutdown(cls) -> ExitReason:
        """Stopped on request by its supervisor or owner (OTP's ``shutdown``)."""
        return cls("shutdown")

    @classmethod
    def killed(cls) -> ExitReason:
        """Killed without cleanup (OTP's ``killed``)."""
        return cls("killed")

    @classmethod
    def exception(cls, exc: BaseException) -> ExitReason:
        """Crashed with the exception ``exc``."""
        return cls("exception", exc)

    @classmethod
    def exit_code(cls, code: int) -> ExitReason:
        """An OS process exited with status ``code``."""
        return cls("exit_code", code)

    @classmethod
    def signal(cls, signum: int) -> ExitReason:
        """An OS process was ended by signal ``signum``."""
        return cls("signal", signum)

    @classmethod
    def escalated(cls, child_id: Any, reason: ExitReason) -> ExitReason:
        """A supervisor gave up: restart intensity exceeded, last by ``child_id`` exiting with ``reason``."""
        return cls("escalated", (child_id, reason))

    @classmethod
    def coerce(cls, reason: ExitReason | str) -> ExitReason:
        """Accept ``"normal"``, ``"shutdown"``, ``"killed"``, other text (abnormal ``error``), or a reason."""
        if isinstance(reason, ExitReason):
            return reason
        if reason in ("normal", "shutdown", "killed"):
            return cls(reason)
        return cls("error", str(reason))

    def __str__(self) -> str:
        if self.kind == "exception":
            return f"exception {type(self.detail).__name__}: {self.detail}"
        if self.kind == "signal":
            try:
                return f"signal {_signal.Signals(self.detail).name}"
            except ValueError:
                return f"signal {self.detail}"
        if self.kind == "escalated":
            child_id, reason = self.detail
            return f"escalated (restart intensity exceeded; last child {child_id!r}: {reason})"
        if self.detail is None:
            return self.kind
        return f"{self.kind} {self.detail}"
