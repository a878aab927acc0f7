"""Let it crash, measured: `otpserve serve --acceptors 2 --partitions 1` under 8 keep-alive clients while its
processes are killed one kind at a time, a worker is stopped, workers are recycled and the server is stopped.

Per run (a fresh server each), it prints:

1. ``kill <kind>``: SIGKILL one partition worker, acceptor, acceptor's zygote, top's zygote; seconds until the
   tree is whole again (every process runs, both acceptors listen; polled every 5 ms) and the requests that
   failed meanwhile. Baseline of the same run: ``cold start``, exec of ``otpserve serve`` to a whole tree.
2. ``hang``: SIGSTOP a worker (``--batch-deadline 0.5``): seconds until the tree is whole again, failures.
3. ``recycle``: 5 s with ``--max-batches 1000`` against 5 s without, same load: recycles, failures, and p99 and
   max latency as a ratio to the run without.
4. ``sigterm``: SIGTERM under load: seconds to exit, exit code, failures (refused connections not counted).
5. ``sigkill top``: seconds until every process of the tree is gone.

    .venv/bin/python bench/let_it_crash.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _crash import BODY, KINDS, served  # noqa: E402
from _load import Load  # noqa: E402
from _procs import alive, descendants, wait_gone  # noqa: E402

CLIENTS = 8


def failed(load: Load, before) -> int:
    """Requests that were not answered 200 since ``before``."""
    delta = load.counts() - before
    return sum(n for what, n in delta.items() if what != "ok")


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def one_run(results: dict[str, list[tuple[float, float]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        with served(Path(d)) as s:
            results["cold start"].append((time.monotonic() - t0, 0))
            with Load(s.port, BODY, CLIENTS) as load:
                load.wait_for(300)
                for kind in KINDS:
                    before = load.counts()
                    s.kill(kind)
                    took = s.wait_whole(30)
                    load.wait_for(300)
                    results[f"kill {kind}"].append((took, failed(load, before)))

    with tempfile.TemporaryDirectory() as d, served(Path(d), 2, 1, "--batch-deadline", "0.5") as s:
        with Load(s.port, BODY, CLIENTS) as load:
            load.wait_for(300)
            before = load.counts()
            victim = s.tree()["partition"][0]
            t0 = time.monotonic()
            os.kill(victim, signal.SIGSTOP)
            wait_gone([victim], 30)
            s.wait_whole(30)
            results["hang (SIGSTOP, deadline 0.5 s)"].append((time.monotonic() - t0, failed(load, before)))
            load.wait_for(300)

    tails = {}
    for label, extra in (("without", ()), ("with", ("--max-batches", "1000"))):
        with tempfile.TemporaryDirectory() as d, served(Path(d), 2, 1, *extra) as s:
            with Load(s.port, BODY, CLIENTS) as load:
                load.wait_for(300)
                before, start = load.counts(), len(load.latencies)
                time.sleep(5)
                lat = load.latencies[start:]
                fails = failed(load, before)
                text = urllib.request.urlopen(f"http://127.0.0.1:{s.port}/metrics", timeout=10).read().decode()
                recycles = sum(float(v) for v in re.findall(r"otpserve_worker_recycles_total\{[^}]*\} (\S+)", text))
            tails[label] = (quantile(lat, 0.99), max(lat), fails, recycles, len(lat))
    (p99_0, max_0, _, _, _), (p99_1, max_1, fails, recycles, n) = tails["without"], tails["with"]
    results["recycle: p99 with/without"].append((p99_1 / p99_0, fails))
    results["recycle: max with/without"].append((max_1 / max_0, fails))
    results["recycle: recycles in 5 s"].append((recycles, fails))
    print(
        f"  recycle: {recycles:.0f} recycles, {n} requests; p99 {p99_1 * 1e3:.2f} ms vs {p99_0 * 1e3:.2f} ms, "
        f"max {max_1 * 1e3:.1f} ms vs {max_0 * 1e3:.1f} ms",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as d, served(Path(d), 2, 1, "--shutdown", "10") as s:
        with Load(s.port, BODY, CLIENTS) as load:
            load.wait_for(300)
            before = load.counts()
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            code = s.proc.wait(60)
            took = time.monotonic() - t0
            load.stop()
            results["sigterm: seconds to exit"].append((took, failed(load, before)))
            assert code == 0, code

    with tempfile.TemporaryDirectory() as d, served(Path(d)) as s:
        with Load(s.port, BODY, CLIENTS) as load:
            load.wait_for(300)
            everything = descendants(s.proc.pid)
            t0 = time.monotonic()
            s.proc.kill()
            left = wait_gone(everything, 10)
            results["sigkill top: all gone"].append((time.monotonic() - t0, len([p for p in left if alive(p)])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        one_run(results)
    print(f"\n{'scenario':34} {'median':>9} {'min':>9} {'max':>9}   failed requests per run")
    cold = statistics.median(t for t, _ in results["cold start"])
    for name, values in results.items():
        times = [t for t, _ in values]
        fails = " ".join(f"{f:g}" for _, f in values)
        unit = "" if name.startswith("recycle") else " s"
        cells = (statistics.median(times), min(times), max(times))
        line = f"{name:34} " + " ".join(f"{v:>7.3f}{unit:2}" for v in cells)
        if name.startswith("kill"):
            line += f"   {fails}   ({statistics.median(times) / cold:.2f} of a cold start)"
        else:
            line += f"   {fails}"
        print(line)


if __name__ == "__main__":
    main()
