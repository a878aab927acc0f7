"""Restart policy: restart intensity (OTP's max_restarts in max_seconds) and optional backoff.

Intensity is OTP's: more than ``max_restarts`` restarts within ``max_seconds`` and the supervisor gives up,
stops its children and exits, so the failure escalates to its parent. Backoff is *not* OTP: a delay before
each restart of a child that keeps crashing, so a crash loop does not burn a core while intensity is
still below its limit (OTP restarts immediately; backoff is off by default).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

__all__ = ["Backoff", "RestartIntensity"]


class RestartIntensity:
    """OTP's restart intensity: at most ``max_restarts`` restarts within ``max_seconds``."""

    def __init__(self, max_restarts: int = 3, max_seconds: float = 5.0) -> None:
        if max_restarts < 0 or max_seconds <= 0:
            raise ValueError(f"need max_restarts >= 0 and max_seconds > 0, got {max_restarts}, {max_seconds}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: deque[float] = deque()

    def add_restart(self, now: float | None = None) -> bool:
        """Record a restart; False when it exceeds the intensity (the supervisor must give up)."""
        now = time.monotonic() if now is None else now
        self._times.append(now)
        while self._times and self._times[0] <= now - self.max_seconds:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    @property
    def recent(self) -> int:
        """Restarts within ``max_seconds`` before the latest ``add_restart``."""
        return len(self._times)


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n of a crash loop: ``min(max, initial * factor**(n-1))``.

    The count resets once the child has stayed up for ``reset_after`` seconds.
    """

    initial: float = 0.05
    max: float = 2.0
    factor: float = 2.0
    reset_after: float = 5.0

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.max) or self.factor < 1 or self.reset_after <= 0:
            raise ValueError(f"invalid backoff {self!r}: need 0 <= initial <= max, factor >= 1, reset_after > 0")

    def delay(self, consecutive: int) -> float:
        """Seconds to wait before restart number ``consecutive`` of a crash loop (0 when it is 0)."""
        if consecutive <= 0:
            return 0.0
        return min(self.max, self.initial * self.factor ** (consecutive - 1))
