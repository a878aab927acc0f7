"""ServingOptions: the one validated configuration object of a Serving.

Names and defaults follow Nx.Serving where the concept is the same (batch_size, batch_timeout,
partitions, shutdown); the queue bound and deadlines go beyond it, as Triton and Ray Serve users expect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Literal

Isolation = Literal["thread", "process"]


@dataclass(frozen=True)
class ServingOptions:
    """How a Serving batches, isolates and bounds its work; every field is checked in ``__post_init__``."""

    # 64 rows fill the 784->128->10 MLP's fast path while keeping a batch well under a millisecond.
    batch_size: int = 64
    # Seconds counted from the first request of a batch (Nx.Serving counts the same way; 100 ms there is
    # tuned for GPUs). A CPU MLP answers in microseconds, and what arrives in one turn of the event loop is
    # the batch that is worth waiting for: 0.5 ms measured ~1.5x the throughput of 2 ms at 64 connections
    # (the callers wait less, so they send sooner) with full batches under load. uvloop's timers count
    # whole milliseconds, so there a timeout under 1 ms closes the batch after the current loop turn.
    batch_timeout: float = 0.0005
    # Workers that each run one batch at a time ("partitions" in Nx.Serving).
    partitions: int = 1
    # "process": each partition is an OS process under a supervisor, batches cross through shared memory,
    # a crash in the model never takes the caller's process down. "thread": a thread per partition.
    isolation: Isolation = "thread"
    # Rows waiting for a batch, at most; past it `run` raises Overloaded at once (HTTP 503 + Retry-After).
    max_queue: int = 1024
    # Seconds a request may wait in total when the caller gives no timeout (LitServe's default is 30 s).
    default_timeout: float | None = 30.0
    # Restart intensity of the workers' supervisor (OTP's defaults are 3 in 5 s; a serving restarts a
    # crash-looping worker with backoff instead of giving up at once).
    max_restarts: int = 10
    max_seconds: float = 10.0
    # Seconds a worker gets to finish its batch at shutdown before it is killed (Nx.Serving: 30 s).
    shutdown: float = 30.0
    # Kernel threads inside each process worker; 1 keeps partitions from fighting over the cores.
    worker_threads: int = 1
    # How worker processes are started; never "fork" (the server process has threads). "zygote": forked
    # from a preloaded helper in ms, each still this process's own child; "spawn": a fresh interpreter.
    start_method: Literal["zygote", "spawn"] = "zygote"
    # Seconds a batch may run before its worker counts as hung: it is killed and restarted and the batch
    # re-run once elsewhere (a second hang fails its callers with BatchHung, HTTP 503). The MLP runs a
    # batch in well under a millisecond; 5 s leaves a model 1000x slower room, and a first batch its warm-up.
    batch_deadline: float | None = 5.0
    # Recycle a process worker after this many batches, or once its resident memory passes this many
    # bytes (Celery's max-tasks-per-child, max-memory-per-child); its successor starts before it retires.
    max_batches: int | None = None
    max_rss: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"ServingOptions.{name}={getattr(self, name)!r}: {why}")

        for name in ("batch_size", "partitions", "max_queue", "max_restarts", "worker_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("batch_timeout", "max_seconds", "shutdown"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise bad(name, "must be a number of seconds >= 0")
        if self.default_timeout is not None and not (
            isinstance(self.default_timeout, (int, float)) and self.default_timeout > 0
        ):
            raise bad("default_timeout", "must be None or a number of seconds > 0")
        if self.isolation not in ("thread", "process"):
            raise bad("isolation", "allowed values are 'thread' and 'process'")
        if self.start_method not in ("zygote", "spawn"):
            raise bad("start_method", "allowed values are 'zygote' and 'spawn'")
        if self.batch_deadline is not None and not (
            isinstance(self.batch_deadline, (int, float))
            and not isinstance(self.batch_deadline, bool)
            and self.batch_deadline > 0
        ):
            raise bad("batch_deadline", "must be None or a number of seconds > 0")
        for name in ("max_batches", "max_rss"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise bad(name, "must be None or an integer >= 1")
        if (self.max_batches is not None or self.max_rss is not None) and self.isolation != "process":
            raise bad("max_batches" if self.max_batches is not None else "max_rss", "needs isolation='process'")

    @classmethod
    def names(cls) -> list[str]:
        """The option names, for error messages and the CLI."""
        return [f.name for f in fields(cls)]


def default_partitions() -> int:
    """One worker per core beyond the one the event loop needs, at least one."""
    return max(1, (os.cpu_count() or 1) - 1)
