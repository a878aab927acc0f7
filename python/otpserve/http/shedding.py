"""LoadShedder: refuse part of the inference traffic while the event loop runs late.

The bounded queue of a Serving protects latency when the *model* is the bottleneck. When the HTTP front end
is (one event loop reading, decoding and answering), requests wait in socket buffers before the loop ever
sees them, the queue never fills, and every request gets slower. The loop's lag (how late a periodic timer
fires) measures exactly that wait.

The shedder keeps an admission probability, adjusted on every lag measurement the way TCP adjusts its
window (AIMD): after ``sustain`` late ticks in a row (lag above ``above``) it multiplies the probability by
``decrease``; on a tick under ``below`` it adds ``increase`` back. A refused request gets 503 + Retry-After
before its body is decoded, so a refusal costs a fraction of an answer. Refusing only a share keeps the
goodput up: refusing *everything* while the loop is late collapses it, because with hundreds of busy
connections even pure refusals keep the loop late. One stall (a GC pause, a slow import) is not overload.
"""

from __future__ import annotations

import random


class LoadShedder:
    """AIMD on event-loop lag: admit fewer requests while ticks run late, more once they keep time."""

    def __init__(
        self,
        above: float = 0.008,
        below: float = 0.004,
        sustain: int = 3,
        decrease: float = 0.7,
        increase: float = 0.05,
        floor: float = 0.05,
    ) -> None:
        if not 0 < below <= above:
            raise ValueError(f"LoadShedder needs 0 < below <= above; got below={below}, above={above}")
        if sustain < 1:
            raise ValueError(f"LoadShedder needs sustain >= 1 ticks; got {sustain}")
        if not (0 < decrease < 1 and 0 < increase <= 1 and 0 <= floor < 1):
            raise ValueError(
                f"LoadShedder needs 0 < decrease < 1, 0 < increase <= 1, 0 <= floor < 1; "
                f"got decrease={decrease}, increase={increase}, floor={floor}"
            )
        # 8 ms: at capacity with 64 connections one loop turn takes ~3-4 ms on this class of machine, and
        # noise (steal, other processes) doubles that now and then; normal full load must not shed.
        self.above = above
        self.below = below
        self.sustain = sustain
        self.decrease = decrease
        self.increase = increase
        # Never refuse everything: some requests always get through, so the server keeps doing useful work.
        self.floor = floor
        self.admit = 1.0  # probability that an inference request is taken
        self.lag = 0.0
        self._late = 0  # consecutive late ticks
        self._random = random.Random()

    @property
    def shedding(self) -> bool:
        """Whether some inference requests are being refused now."""
        return self.admit < 1.0

    def observe(self, lag: float) -> float:
        """Record one lag measurement (seconds); returns the admission probability now."""
        self.lag = lag
        if lag > self.above:
            self._late += 1
            if self._late >= self.sustain:
                self.admit = max(self.floor, self.admit * self.decrease)
        else:
            self._late = 0
            if lag < self.below:
                self.admit = min(1.0, self.admit + self.increase)
        return self.admit

    def refuse(self) -> bool:
        """Whether to refuse the request at hand (a draw against the admission probability)."""
        admit = self.admit
        return admit < 1.0 and self._random.random() >= admit
