"""Prometheus metrics: counters, gauges and histograms cheap enough for the request path.

A plain in-process registry (the serving loop is single-threaded, so no locks) rendered in the Prometheus
text exposition format. Names follow Triton's where the concept matches (request success/failure, inference
count vs executions, queue duration) and BentoML's batch-size histogram.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

LabelSet = tuple[tuple[str, str], ...]


def _labels(labels: LabelSet, extra: LabelSet = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Counter:
    """A monotonically increasing count, one series per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[LabelSet, float] = {}

    def inc(self, amount: float = 1, labels: LabelSet = ()) -> None:
        """Add ``amount`` to the series with ``labels``."""
        self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, labels: LabelSet = ()) -> float:
        """The current value of one series."""
        return self.values.get(labels, 0)

    def samples(self, const: LabelSet = ()) -> Iterable[str]:
        """Text lines of every series."""
        for labels, value in self.values.items():
            yield f"{self.name}{_labels(const, labels)} {_num(value)}"


class Gauge:
    """A value read when scraped (``fn``) or set by the owner."""

    kind = "gauge"

    def __init__(self, name: str, help: str, fn: Callable[[], float] | None = None) -> None:
        self.name, self.help, self.fn = name, help, fn
        self.value: float = 0

    def set(self, value: float) -> None:
        """Set the gauge's value."""
        self.value = value

    def samples(self, const: LabelSet = ()) -> Iterable[str]:
        """Text line of the gauge."""
        yield f"{self.name}{_labels(const)} {_num(self.fn() if self.fn is not None else self.value)}"


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus expects."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float]) -> None:
        self.name, self.help = name, help
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self, const: LabelSet = ()) -> Iterable[str]:
        """Text lines of the buckets, sum and count."""
        running = 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += n
            yield f"{self.name}_bucket{_labels(const, (('le', _num(bound)),))} {running}"
        yield f"{self.name}_sum{_labels(const)} {_num(self.sum)}"
        yield f"{self.name}_count{_labels(const)} {self.count}"


Metric = Counter | Gauge | Histogram


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def add(self, metric: Metric) -> Metric:
        """Register ``metric`` and return it."""
        self.metrics.append(metric)
        return metric

    def render(self, const: LabelSet = ()) -> str:
        """The Prometheus text exposition of every metric."""
        return render_many([(const, self)])


def render_many(registries: list[tuple[LabelSet, Registry]]) -> str:
    """Render registries holding the same metrics (e.g. one per model) with one HELP/TYPE per name."""
    by_name: dict[str, list[tuple[LabelSet, Metric]]] = {}
    for const, registry in registries:
        for m in registry.metrics:
            by_name.setdefault(m.name, []).append((const, m))
    lines: list[str] = []
    for name, series in by_name.items():
        first = series[0][1]
        lines.append(f"# HELP {name} {first.help}")
        lines.append(f"# TYPE {name} {first.kind}")
        for const, m in series:
            lines.extend(m.samples(const))
    return "\n".join(lines) + "\n"


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# Gauges that must not be summed across processes: the worst lag, the lowest admission ratio.
_GAUGE_MERGE = {
    "otpserve_event_loop_lag_seconds": max,
    "otpserve_http_behind_seconds": max,
    "otpserve_http_admit_ratio": min,
}


def merge_expositions(texts: list[str]) -> str:
    """Merge the Prometheus text of several processes serving one port into one exposition.

    Counters and histograms add up series by series; gauges add up too (queue depth, workers alive),
    except the ones in ``_GAUGE_MERGE``. A series only one process has is kept as it is.
    """
    families: dict[str, tuple[str, str, dict[str, float]]] = {}
    for text in texts:
        family = None
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                families.setdefault(name, (help_text, "untyped", {}))
                family = name
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                help_text, _, series = families.setdefault(name, ("", kind, {}))
                families[name] = (help_text, kind, series)
                family = name
            elif line and family is not None:
                key, _, raw = line.rpartition(" ")
                value = float(raw.replace("+Inf", "inf"))
                series = families[family][2]
                if key in series:
                    combine = _GAUGE_MERGE.get(family, lambda a, b: a + b)
                    series[key] = combine(series[key], value)
                else:
                    series[key] = value
    lines: list[str] = []
    for name, (help_text, kind, series) in families.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{key} {_num(int(value) if value.is_integer() else value)}" for key, value in series.items())
    return "\n".join(lines) + "\n"
