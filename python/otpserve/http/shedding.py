"""LoadShedder: refuse inference while the event loop runs late, so overload costs refusals, not latency.

The bounded queue of a Serving protects latency when the *model* is the bottleneck. When the HTTP front end
is (one event loop reading, decoding and answering), requests wait in socket buffers before the loop ever
sees them, the queue never fills, and every request gets slower. The loop's lag (how late a periodic timer
fires) measures exactly that wait. While it is above ``above`` seconds the router answers inference requests
503 + Retry-After before decoding them (a refusal costs a fraction of an answer), until it falls below
``below``: hysteresis, so the server does not flap on every tick. It turns on only when ``sustain``
ticks in a row were late: one stall (a garbage collection, an import, another thread holding the GIL) is
not overload, and must not cost a client its answer.
"""

from __future__ import annotations


class LoadShedder:
    """Hysteresis on event-loop lag: shed above ``above`` seconds, stop below ``below``."""

    def __init__(self, above: float = 0.008, below: float = 0.004, sustain: int = 3) -> None:
        if not 0 < below <= above:
            raise ValueError(f"LoadShedder needs 0 < below <= above; got below={below}, above={above}")
        if sustain < 1:
            raise ValueError(f"LoadShedder needs sustain >= 1 ticks; got {sustain}")
        # 8 ms: at capacity with 64 connections one loop turn takes ~3-4 ms on this class of machine, and
        # noise (steal, other processes) doubles that now and then; normal full load must not shed.
        self.above = above
        self.below = below
        self.sustain = sustain
        self.shedding = False
        self.lag = 0.0
        self._late = 0  # consecutive late ticks

    def observe(self, lag: float) -> bool:
        """Record one lag measurement (seconds); returns whether to shed now."""
        self.lag = lag
        if lag > self.above:
            self._late += 1
            if self._late >= self.sustain:
                self.shedding = True
        else:
            self._late = 0
            if lag < self.below:
                self.shedding = False
        return self.shedding
