"""LoadShedder: cap the inference work the server takes on while it runs behind.

The bounded queue of a Serving protects latency when the *model* is the bottleneck. When the HTTP front end
is (one event loop reading, decoding and answering), requests wait in socket buffers before the loop ever
sees them, the queue never fills, and every request gets slower. Every few milliseconds the server measures
how far behind it runs: how late a periodic timer fires (the wait before a request is read; no more than its
connections' requests could take, so that a host taking the CPU away is not mistaken for a backlog) plus the
longest wait in its servings beyond the model's own compute since the last tick (the wait after).

While the server keeps up the shedder does nothing. After ``sustain`` ticks in a row more than ``engage``
behind (a backlog that keeps growing, not the few ms a busy server runs behind) it caps how many inference
requests each tick may admit, starting from what the last tick admitted; past the cap a tick's requests get
503 + Retry-After before their bodies are decoded. While capped it steers to ``above``: two ticks in a row
over it cut the cap in proportion to how late they ran (``above / behind``, between ``max_cut`` and
``min_cut``); every tick under it grows the cap by ``increase`` of itself. Once ``calm_ticks`` ticks pass
without a refusal, the cap is lifted. Growing on every tick that keeps time, not only on idle ones, is what
lets a busy closed-loop client (which resends at once, so its refusals never stop by themselves) get the
cap lifted again.

A cap on *admitted work per tick*, rather than a share of the arrivals, is what keeps the loop on time under
a flood: twice the offered load then means twice the (cheap) refusals, not twice the (expensive) answers.
Refusing everything instead would collapse the goodput, since with hundreds of busy connections even pure
refusals keep the loop late; ``floor`` requests a tick always get through. One stall (a GC pause, a moment
without the CPU) is not overload: that is what ``sustain`` is for.
"""

from __future__ import annotations


class LoadShedder:
    """Caps the inference requests admitted per tick while the server runs behind."""

    def __init__(
        self,
        engage: float = 0.010,
        above: float = 0.004,
        sustain: int = 5,
        max_cut: float = 0.5,
        min_cut: float = 0.9,
        increase: float = 0.03,
        floor: int = 1,
        calm_ticks: int = 20,
    ) -> None:
        if not 0 < above <= engage:
            raise ValueError(f"LoadShedder needs 0 < above <= engage; got above={above}, engage={engage}")
        if sustain < 1 or calm_ticks < 1:
            raise ValueError(f"LoadShedder needs sustain >= 1 and calm_ticks >= 1; got {sustain}, {calm_ticks}")
        if not (0 < max_cut <= min_cut < 1 and 0 < increase <= 1 and floor >= 1):
            raise ValueError(
                f"LoadShedder needs 0 < max_cut <= min_cut < 1, 0 < increase <= 1, floor >= 1; "
                f"got max_cut={max_cut}, min_cut={min_cut}, increase={increase}, floor={floor}"
            )
        # At capacity with 64 busy connections a request waits ~2 ms (p99 ~4 ms) on this class of machine and
        # a stall (a collection, a moment without the CPU) makes a tick or two late; 5 ticks in a row over
        # 10 ms is a backlog. Once capped, 4 ms is the wait the cap steers to.
        self.engage = engage
        self.above = above
        self.sustain = sustain
        self.max_cut = max_cut
        self.min_cut = min_cut
        self.increase = increase
        self.floor = floor
        self.calm_ticks = calm_ticks
        self.limit: float | None = None  # inference requests a tick may admit; None: no cap
        self.behind = 0.0  # seconds, as last observed
        self.admit = 1.0  # share of the last tick's inference requests that were admitted (for metrics)
        self.admitted = 0  # in the current tick
        self.refused = 0
        self._late = 0  # consecutive late ticks
        self._calm = 0  # consecutive ticks without a refusal, while capped

    @property
    def shedding(self) -> bool:
        """Whether inference is capped now."""
        return self.limit is not None

    def observe(self, behind: float) -> float | None:
        """Close one tick with how far behind the server ran (seconds); returns the next tick's cap (None: none)."""
        self.behind = behind
        admitted, refused = self.admitted, self.refused
        self.admitted = self.refused = 0
        self.admit = admitted / (admitted + refused) if admitted + refused else 1.0
        limit = self.limit
        if limit is None:
            self._late = self._late + 1 if behind > self.engage else 0
            if self._late >= self.sustain:
                self._late = self._calm = 0
                self.limit = max(float(self.floor), admitted * self._cut(behind))
            return self.limit
        if behind > self.above:
            self._late += 1
            self._calm = 0
            if self._late >= 2:
                self.limit = max(float(self.floor), min(limit, admitted) * self._cut(behind))
            return self.limit
        self._late = 0
        self._calm = self._calm + 1 if refused == 0 else 0
        self.limit = None if self._calm >= self.calm_ticks else limit * (1.0 + self.increase) + 1.0
        return self.limit

    def _cut(self, behind: float) -> float:
        return min(self.min_cut, max(self.max_cut, self.above / behind))

    def refuse(self) -> bool:
        """Whether to refuse the inference request at hand (counted against this tick's cap)."""
        limit = self.limit
        if limit is not None and self.admitted >= limit:
            self.refused += 1
            return True
        self.admitted += 1
        return False
