"""LoadShedder: cap the inference work the server takes on while it runs behind.

The bounded queue of a Serving protects latency when the *model* is the bottleneck. When the HTTP front end
is (one event loop reading, decoding and answering), requests wait in socket buffers before the loop ever
sees them, the queue never fills, and every request gets slower. Every few milliseconds the server measures
how far behind it runs: how late a periodic timer fires (the wait before a request is read) plus the slowest
submit-to-answer time in its servings since the last tick (the wait after).

While the server keeps up the shedder does nothing. After ``sustain`` late ticks in a row (behind by more
than ``above``) it caps how many inference requests each tick may admit, starting from what the last tick
admitted and cutting the cap on every further late tick in proportion to how late it ran (``above / behind``,
between ``max_cut`` and ``min_cut``); past the cap a tick's requests get 503 + Retry-After before their
bodies are decoded. On a tick under ``below`` the cap grows by ``increase`` of itself, and once a few calm
ticks pass without a refusal the cap is lifted.

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
        above: float = 0.004,
        below: float = 0.002,
        sustain: int = 5,
        max_cut: float = 0.5,
        min_cut: float = 0.9,
        increase: float = 0.03,
        floor: int = 1,
        calm_ticks: int = 20,
    ) -> None:
        if not 0 < below <= above:
            raise ValueError(f"LoadShedder needs 0 < below <= above; got below={below}, above={above}")
        if sustain < 1 or calm_ticks < 1:
            raise ValueError(f"LoadShedder needs sustain >= 1 and calm_ticks >= 1; got {sustain}, {calm_ticks}")
        if not (0 < max_cut <= min_cut < 1 and 0 < increase <= 1 and floor >= 1):
            raise ValueError(
                f"LoadShedder needs 0 < max_cut <= min_cut < 1, 0 < increase <= 1, floor >= 1; "
                f"got max_cut={max_cut}, min_cut={min_cut}, increase={increase}, floor={floor}"
            )
        # 4 ms: at capacity with 64 busy connections a request waits ~2 ms (p99 ~4 ms) on this class of
        # machine, and never for more than two ticks in a row over 4 ms; a real overload keeps them late.
        self.above = above
        self.below = below
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
        self._calm = 0  # consecutive calm ticks without a refusal

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
        if behind > self.above:
            self._late += 1
            self._calm = 0
            if self._late >= self.sustain:
                cut = min(self.min_cut, max(self.max_cut, self.above / behind))
                start = admitted if self.limit is None else min(self.limit, admitted)
                self.limit = max(float(self.floor), start * cut)
            return self.limit
        self._late = 0
        if self.limit is not None and behind < self.below:
            self._calm = self._calm + 1 if refused == 0 else 0
            if self._calm >= self.calm_ticks:
                self.limit = None  # the cap has not bitten for a while: lift it
            else:
                self.limit = self.limit * (1.0 + self.increase) + 1.0
        return self.limit

    def refuse(self) -> bool:
        """Whether to refuse the inference request at hand (counted against this tick's cap)."""
        limit = self.limit
        if limit is not None and self.admitted >= limit:
            self.refused += 1
            return True
        self.admitted += 1
        return False
