"""Rate limiting shared by a pipeline's producers: ``allowed_messages`` per ``interval`` (Broadway's
``rate_limiting``), counted in fixed windows as Broadway's rate limiter resets its counter every interval."""

from __future__ import annotations

import time


class RateLimiter:
    """At most ``allowed_messages`` handed out per window of ``interval`` seconds, across all producers."""

    def __init__(self, allowed_messages: int, interval: float, clock=time.monotonic) -> None:
        self.allowed_messages = allowed_messages
        self.interval = interval
        self._clock = clock
        self._window = clock()
        self._left = allowed_messages

    def _roll(self, now: float) -> None:
        if now >= self._window + self.interval:
            self._window += self.interval * ((now - self._window) // self.interval)
            self._left = self.allowed_messages

    def take(self, n: int) -> int:
        """Take up to ``n`` messages' worth from this window; returns how many may go now."""
        self._roll(self._clock())
        k = min(n, self._left)
        self._left -= k
        return k

    def next_reset(self, loop_now: float) -> float:
        """When (on the caller's clock, given its ``now``) the next window opens."""
        now = self._clock()
        self._roll(now)
        return loop_now + max(0.0, self._window + self.interval - now)
