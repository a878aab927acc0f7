"""``otpserve pipeline KIND``: the composition root of a pipeline process.

It builds the pipeline for KIND (``matmul`` or ``infer``; the latter starts a supervised ``Serving`` of the
model first), runs it on the stream, serves ``/metrics`` when asked, shows a live progress line on a
terminal, and on SIGINT/SIGTERM stops gracefully: fetching stops, in-flight messages are acked, what could
not finish within ``shutdown`` stays pending for the next run. Several such processes, on one machine or
many, share a stream through the consumer group; each takes a stable consumer name of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otpserve.flow.metrics import PipelineMetrics
from otpserve.flow.redis import RedisStreamProducer, RetryPolicy

log = logging.getLogger("otpserve.pipeline")

KINDS = ("matmul", "infer")


@dataclass(frozen=True)
class PipelineCommand:
    """What ``otpserve pipeline`` was asked to run (the CLI's options, checked)."""

    kind: str
    redis: str
    stream: str
    group: str = "otpserve"
    consumer: str | None = None
    model: Path | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    batch_size: int = 100
    batch_timeout: float = 0.05
    processors: int | None = None
    max_attempts: int = 5
    claim_idle: float = 60.0
    shutdown: float = 30.0
    durable: bool = False
    progress: bool | None = None  # None: on a terminal only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pipeline kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


def _producer_options(cmd: PipelineCommand) -> dict[str, Any]:
    return {
        "url": cmd.redis,
        "stream": cmd.stream,
        "group": cmd.group,
        "consumer": cmd.consumer,
        "results_stream": f"{cmd.stream}:results",
        "dead_letter_stream": f"{cmd.stream}:dead",
        "retry": RetryPolicy(max_attempts=cmd.max_attempts),
        "claim_idle": cmd.claim_idle,
        "durable": cmd.durable,
    }


async def run(cmd: PipelineCommand, started: asyncio.Event | None = None) -> int:
    """Run the pipeline until SIGINT/SIGTERM; 0 after a graceful stop, 1 if its supervisor gave up."""
    serving = None
    if cmd.kind == "matmul":
        from otpserve.pipelines.matmul import MatmulPipeline as cls

        context: dict[str, Any] = {}
        processors = cmd.processors or 2
    else:
        from otpserve.app import ensure_model
        from otpserve.models import MLP
        from otpserve.pipelines.infer import InferPipeline as cls  # type: ignore[assignment]
        from otpserve.serving import Serving, ServingOptions
        from otpserve.serving.options import default_partitions

        model = MLP.load(ensure_model(cmd.model))
        options = ServingOptions(
            isolation="process",
            partitions=default_partitions(),
            batch_size=cmd.batch_size,
            max_queue=4 * cmd.batch_size * default_partitions(),
        )
        serving = await Serving(model, options, name="pipeline-infer").start()
        context = {"serving": serving, "width": int(model.input_shape[0]), "timeout": 30.0}
        processors = cmd.processors or 1
    pipeline = cls(
        name=f"otpserve-pipeline-{cmd.kind}",
        context=context,
        producer={"module": RedisStreamProducer, "options": _producer_options(cmd)},
        processors={
            "default": {"concurrency": processors, "max_demand": cmd.batch_size, "min_demand": cmd.batch_size // 2}
        },
        batchers={"default": {"batch_size": cmd.batch_size, "batch_timeout": cmd.batch_timeout}},
        shutdown=cmd.shutdown,
    )
    metrics = PipelineMetrics(pipeline)
    metrics_server = None
    try:
        await pipeline.start()
        if cmd.metrics_port is not None:
            metrics_server = await _serve_metrics(metrics, cmd.metrics_host, cmd.metrics_port)
        producer = pipeline.producers()[0]
        print(
            f"otpserve pipeline {cmd.kind}: {cmd.stream} -> {cmd.stream}:results (dead letters: {cmd.stream}:dead), "
            f"group {cmd.group}, consumer {producer.consumer}"
            + (f", metrics http://{cmd.metrics_host}:{cmd.metrics_port}/metrics" if metrics_server else ""),
            flush=True,
        )
        if started is not None:
            started.set()
        return await _until_stopped(pipeline, cmd)
    finally:
        if metrics_server is not None:
            metrics_server.close()
            await metrics_server.wait_closed()
        if pipeline.is_alive():
            await pipeline.stop()
        metrics.close()
        if serving is not None:
            await serving.stop()


async def _until_stopped(pipeline: Any, cmd: PipelineCommand) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    progress = sys.stderr.isatty() if cmd.progress is None else cmd.progress
    exited = asyncio.ensure_future(pipeline.wait())
    stopper = asyncio.ensure_future(stop.wait())
    ticker = asyncio.ensure_future(_progress(pipeline)) if progress else None
    try:
        await asyncio.wait({exited, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for task in (stopper, ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if exited.done():
        reason = exited.result()
        print(f"\notpserve pipeline: stopped ({reason})", file=sys.stderr, flush=True)
        return 0 if reason.is_normal else 1
    exited.cancel()
    if progress:
        print(file=sys.stderr)
    print("otpserve pipeline: draining ...", file=sys.stderr, flush=True)
    reason = await pipeline.stop()
    print(f"otpserve pipeline: stopped ({reason})", file=sys.stderr, flush=True)
    return 0


async def _progress(pipeline: Any) -> None:
    """One line, rewritten every second: messages/s, lag, pending, retries, dead letters."""
    last, last_t = 0.0, time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        totals = {"acked": 0, "retried": 0, "dead_lettered": 0, "lag": 0, "pending": 0}
        for producer in pipeline.producers():
            for key, value in producer.stats().items():
                totals[key] = totals.get(key, 0) + (value or 0)
        now = time.monotonic()
        done = totals["acked"] + totals["dead_lettered"]
        rate = (done - last) / (now - last_t)
        last, last_t = done, now
        sys.stderr.write(
            f"\r{rate:9,.0f} msg/s  acked {totals['acked']:,}  lag {totals['lag']:,}  pending {totals['pending']:,}  "
            f"retries {totals['retried']:,}  dead letters {totals['dead_lettered']:,}   "
        )
        sys.stderr.flush()


async def _serve_metrics(metrics: PipelineMetrics, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP endpoint: ``GET /metrics`` → the Prometheus text; anything else → 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if head.startswith(b"GET ") and target.split(b"?")[0] == b"/metrics":
                body, status = metrics.render().encode(), b"200 OK"
                kind = b"text/plain; version=0.0.4"
            else:
                body, status, kind = b"not found; try GET /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
