"""Serving: a model behind a batcher and supervised partitions (the Nx.Serving of otpserve).

Mental model: callers ``submit`` rows; they wait in a bounded ``BatchQueue``; a batch is cut when it is
full or ``batch_timeout`` after its first request, and only when a partition is free (so under load batches
grow up to ``batch_size`` on their own); the partition's outputs are scattered back to the callers' futures.
The partitions are children of an OTP ``Supervisor``: a worker process that dies is restarted, and the batch
it held is re-run once on a live partition, so its callers still get their answers.

Everything here runs on one asyncio loop; only the model runs elsewhere (a thread or a process).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

import numpy as np

from otpserve import telemetry
from otpserve.errors import BatchHung, DeadlineExceeded, Overloaded, ServingStopped, ShapeError, WorkerCrashed
from otpserve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry
from otpserve.otp import ChildSpec, Supervisor
from otpserve.serving.batch_queue import DONE, Batch, BatchQueue, Request
from otpserve.serving.deadlines import Deadlines
from otpserve.serving.options import ServingOptions
from otpserve.serving.partition import Owner, Partition, ProcessPartition, ThreadPartition
from otpserve.serving.worker import BufferLayout, _predict

log = logging.getLogger("otpserve.serving")
_instances = itertools.count(1)


class ServingMetrics:
    """The serving's Prometheus series (Triton's and BentoML's names where they fit)."""

    def __init__(self, serving: Serving) -> None:
        r = self.registry = Registry()
        self.requests = r.add(Counter("otpserve_requests_total", "Inference requests by outcome."))
        self.latency = r.add(
            Histogram("otpserve_request_duration_seconds", "Time from submit to answer.", LATENCY_BUCKETS)
        )
        self.queue_time = r.add(
            Histogram("otpserve_queue_duration_seconds", "Time from submit to a batch.", LATENCY_BUCKETS)
        )
        self.compute = r.add(
            Histogram("otpserve_batch_compute_seconds", "Time the model took on a batch.", LATENCY_BUCKETS)
        )
        self.batch_size = r.add(Histogram("otpserve_batch_size", "Rows per executed batch.", BATCH_BUCKETS))
        self.batches = r.add(Counter("otpserve_batches_total", "Batches executed (inference executions)."))
        self.rows = r.add(Counter("otpserve_inference_rows_total", "Rows inferred (inference count)."))
        self.restarts = r.add(Counter("otpserve_worker_restarts_total", "Worker restarts by the supervisor."))
        self.reruns = r.add(Counter("otpserve_batch_reruns_total", "Batches re-run after their worker died."))
        self.hangs = r.add(
            Counter("otpserve_batch_hangs_total", "Batches that ran past batch_deadline (their worker was killed).")
        )
        self.recycles = r.add(Counter("otpserve_worker_recycles_total", "Workers replaced by a fresh one, by reason."))
        r.add(Gauge("otpserve_queue_depth", "Rows waiting for a batch.", lambda: serving.queue_depth))
        r.add(Gauge("otpserve_workers_alive", "Partitions able to run batches.", lambda: serving.workers_alive))
        r.add(Gauge("otpserve_workers", "Partitions configured.", lambda: len(serving.partitions)))


class Serving(Owner):
    """A model served batched by supervised partitions: ``await serving.run(x)`` returns its output."""

    def __init__(self, model: Any, options: ServingOptions | None = None, *, name: str = "serving", **opts: Any):
        if options is not None and opts:
            raise TypeError("give either options= or keyword options, not both")
        if options is None:
            unknown = sorted(set(opts) - set(ServingOptions.names()))
            if unknown:
                raise TypeError(f"unknown Serving option(s) {unknown}; allowed: {ServingOptions.names()}")
            options = ServingOptions(**opts)
        self.options = options
        self.name = name
        self.model = model
        self.layout = _layout_of(model, options.batch_size)
        self._input_dtype = np.dtype(self.layout.input_dtype)
        self.queue = BatchQueue(options.batch_size, options.max_queue)
        self.metrics = ServingMetrics(self)
        self.partitions: list[Partition] = []
        self._free: list[Partition] = []
        self._retry: deque[Batch] = deque()
        self._due = False
        self._behind = 0.0  # longest wait beyond model compute since the last `take_behind`
        self._compute = 0.0  # seconds the model takes on a batch (moving average)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: Supervisor | None = None
        self._watch: asyncio.Task | None = None
        self._accepting = False
        self._running = False  # workers may still run batches (true through a draining stop)
        self._stopped_because: str | None = None
        self._up = asyncio.Event()  # set once every partition can take batches
        self._idle = asyncio.Event()  # set while no batch is queued or running (for graceful stop)
        self._handler_id = f"otpserve-serving-{id(self)}"
        # Registered names are global, and two servings may share a name (tests, several servers).
        self._supervisor_name = f"{name}.partitions.{next(_instances)}"

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> Serving:
        """Start the partitions under a supervisor; returns once all can take batches (or raises)."""
        self._loop = asyncio.get_running_loop()
        opts = self.options
        self._deadlines = Deadlines(self._loop, opts.default_timeout, self._expire)
        children = []
        for i in range(opts.partitions):
            if opts.isolation == "process":
                part: Partition = ProcessPartition(
                    i,
                    self,
                    self.layout,
                    self.model,
                    opts.worker_threads,
                    opts.start_method,
                    deadline=opts.batch_deadline,
                    max_batches=opts.max_batches,
                    max_rss=opts.max_rss,
                )
                spec = ChildSpec(id=f"partition-{i}", start=part.start, shutdown=opts.shutdown)
            else:
                part = ThreadPartition(i, self, self.layout, self.model, opts.batch_deadline)
                spec = ChildSpec.task(f"partition-{i}", part.serve, shutdown=opts.shutdown)
            self.partitions.append(part)
            children.append(spec)
        telemetry.attach(self._handler_id, ("otpserve", "supervisor", "child", "restarted"), self._on_restart, None)
        self._supervisor = Supervisor(
            children,
            strategy="one_for_one",
            max_restarts=opts.max_restarts,
            max_seconds=opts.max_seconds,
            name=self._supervisor_name,
        )
        await self._supervisor.start()
        self._watch = asyncio.create_task(self._watch_supervisor(), name=f"{self.name}.watch")
        self._accepting = True
        self._running = True
        self._idle.set()
        await self._up.wait()
        if not self.ready:
            await self.stop(drain=False)
            raise ServingStopped(f"serving {self.name!r}: no worker could be started (see the log for why)")
        return self

    async def _watch_supervisor(self) -> None:
        """If the partitions' supervisor gives up (restart intensity), fail what waits: nothing hangs."""
        assert self._supervisor is not None
        reason = await self._supervisor.wait()
        if self._accepting:
            log.error("serving %s: worker supervisor exited (%s); serving stops", self.name, reason)
            self._accepting = self._running = False
            self._stopped_because = f"its workers kept dying and their supervisor gave up ({reason})"
            self._fail_all(ServingStopped(f"serving {self.name!r} stopped: {self._stopped_because}"))
            self._up.set()

    async def stop(self, drain: bool = True) -> None:
        """Stop taking requests, let queued and running batches finish (``drain``), then stop the workers."""
        if self._loop is None:
            return
        self._accepting = False
        if drain and self.workers_alive:
            self._due = True
            self._dispatch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.options.shutdown)
        self._running = False
        stopped = ServingStopped(f"serving {self.name!r} stopped")
        self._fail_all(stopped)
        telemetry.detach(self._handler_id)
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self._watch is not None:
            await self._watch
            self._watch = None
        for part in self.partitions:
            held, part.batch = part.batch, None
            if held is not None:  # the drain timed out with this batch still running: its callers must hear
                self.batch_done(part, held, stopped)
            if isinstance(part, ProcessPartition):
                part.shutdown()
        if self._timer is not None:
            self._timer.cancel()
        self._deadlines.close()
        self._loop = None

    async def __aenter__(self) -> Serving:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- the request path ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a request submitted now can be served: accepting, with at least one live worker."""
        return self._accepting and any(p.alive for p in self.partitions)

    @property
    def workers_alive(self) -> int:
        """Partitions able to take batches."""
        return sum(1 for p in self.partitions if p.alive)

    @property
    def queue_full(self) -> bool:
        """Whether a request of one more row would be refused right now."""
        return not self.queue.has_room(1)

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a batch."""
        return self.queue.rows

    def check_input(self, x: Any) -> np.ndarray:
        """Return ``x`` as a batch of this model's rows (first axis = batch), or raise ShapeError."""
        layout, dtype = self.layout, self._input_dtype
        if type(x) is np.ndarray and x.dtype == dtype and x.ndim > 1 and x.shape[1:] == layout.input_shape:
            return x  # the HTTP path: already a decoded float32 batch
        arr = np.asarray(x)
        if arr.dtype != dtype:
            if arr.dtype.kind not in "biuf":
                raise ShapeError(f"input dtype {arr.dtype} is not numeric; the model takes {layout.input_dtype}")
            arr = arr.astype(layout.input_dtype)
        if arr.shape[1:] != layout.input_shape or arr.ndim != len(layout.input_shape) + 1:
            raise ShapeError(
                f"input shape {arr.shape} does not match the model's (batch, {', '.join(map(str, layout.input_shape))})"
            )
        return arr

    def submit(
        self, x: np.ndarray, timeout: float | None = None, callback: Callable[[Request], None] | None = None
    ) -> Request:
        """Queue a checked batch ``x``; its answer comes on ``request.fut``, or through ``callback(request)``
        (with ``request.out`` or ``request.error`` set) when one is given."""
        loop = self._loop
        if loop is None or not self._accepting:
            why = f"stopped: {self._stopped_because}" if self._stopped_because else "is not running"
            raise ServingStopped(f"serving {self.name!r} {why}")
        n = x.shape[0]
        if not self.queue.has_room(n):
            self.metrics.requests.inc(labels=(("outcome", "overloaded"),))
            raise Overloaded(
                f"serving {self.name!r}: queue full ({self.queue.rows} of {self.options.max_queue} rows queued)"
            )
        now = loop.time()
        req = Request(x, perf_counter(), None if callback else loop.create_future(), callback)
        if n == 0:
            req.out = np.empty((0, *self.layout.output_shape), self.layout.output_dtype)
            loop.call_soon(self._resolve, req)  # never call back before submit has returned
            return req
        self._deadlines.add(req, timeout)
        was_empty = self.queue.rows == 0
        self.queue.put(req)
        self._idle.clear()
        if self.queue.rows >= self.options.batch_size:
            self._due = True
        elif was_empty and self._timer is None:
            self._timer = loop.call_at(now + self.options.batch_timeout, self._timer_fired)
        if self._free:
            self._dispatch()
        return req

    def take_behind(self) -> float:
        """Seconds the longest-waiting request waited beyond the model's own pace since the last call: for
        an answered one, its submit-to-answer time less two batches' compute (its own and the one it may
        have queued behind); for one still queued, its age less one. A load shedder's view of how far the
        workers run behind; a slow model at ease reads ~0, whatever its batch time."""
        behind, self._behind = self._behind, 0.0
        head = self.queue.head() if self.queue.rows else None
        if head is not None:
            behind = max(behind, perf_counter() - head.enqueued_at - self._compute)
        return behind

    def cancel(self, req: Request) -> None:
        """The caller went away: drop its queued rows (no compute is spent on them)."""
        if req.state == DONE:
            return
        self.queue.drop(req)
        req.finish()
        if req.fut is not None:
            req.fut.cancel()
        self.metrics.requests.inc(labels=(("outcome", "cancelled"),))
        self._check_idle()

    async def run(self, x: Any, timeout: float | None = None) -> np.ndarray:
        """Run the model on batch ``x`` through the batcher; raises Overloaded, DeadlineExceeded, ShapeError."""
        req = self.submit(self.check_input(x), timeout)
        assert req.fut is not None
        try:
            return await req.fut
        except asyncio.CancelledError:
            self.cancel(req)
            raise

    def run_sync(self, x: Any, timeout: float | None = None) -> np.ndarray:
        """The blocking twin of ``run``, for threads other than the serving's event loop."""
        loop = self._loop
        if loop is None:
            raise ServingStopped(f"serving {self.name!r} is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("run_sync would block the serving's own event loop; use `await serving.run(x)`")
        return asyncio.run_coroutine_threadsafe(self.run(x, timeout), loop).result()

    @contextlib.contextmanager
    def start_in_thread(self) -> Iterator[Serving]:
        """Run this serving on an event loop in a background thread, for blocking callers (``run_sync``)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"{self.name}-loop", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result()
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    # ---- batching --------------------------------------------------------------------------------------

    def _timer_fired(self) -> None:
        self._timer = None
        self._due = True
        self._dispatch()

    def _dispatch(self) -> None:
        """Give batches to free partitions while there is work that may go."""
        free, queue = self._free, self.queue
        while free:
            if self._retry:
                batch = self._retry.popleft()
                if not batch.live():
                    continue
            elif queue.rows and (self._due or queue.rows >= queue.batch_size):
                batch = queue.cut()
                if batch is None:
                    break
                self._due = False
                self._arm_timer_for_head()
                self._record_dispatch(batch)
            else:
                break
            part = free.pop()
            part.run(batch)

    def _arm_timer_for_head(self) -> None:
        """After a cut, the next batch is due batch_timeout after its own first request."""
        if self.queue.rows == 0 or self._timer is not None:
            return
        head = self.queue.head()
        if head is None:
            return
        loop = self._loop
        assert loop is not None
        # enqueued_at is on the perf_counter clock; timers run on the loop's clock.
        delay = head.enqueued_at + self.options.batch_timeout - perf_counter()
        self._timer = loop.call_at(loop.time() + max(0.0, delay), self._timer_fired)

    def _record_dispatch(self, batch: Batch) -> None:
        now = perf_counter()
        m = self.metrics
        for req, start, _ in batch.parts:
            if start == 0:
                m.queue_time.observe(now - req.enqueued_at)

    def _expire(self, req: Request, timeout: float) -> None:
        self.queue.drop(req)
        if req.state != DONE and not (req.fut is not None and req.fut.done()):
            self.metrics.requests.inc(labels=(("outcome", "deadline_exceeded"),))
        self._resolve(req, DeadlineExceeded(f"request not answered within its deadline of {timeout:g} s"))
        self._check_idle()

    def _resolve(self, req: Request, error: BaseException | None = None) -> None:
        """Finish ``req``: its future gets ``req.out`` (or ``error``), or its callback is called."""
        req.finish()
        req.error = error
        fut = req.fut
        if fut is not None:
            if not fut.done():  # its awaiting task may have been cancelled a moment ago
                if error is None:
                    fut.set_result(req.out)
                else:
                    fut.set_exception(error)
            return
        callback, req.callback = req.callback, None  # at most once
        if callback is not None:
            try:
                callback(req)
            except Exception:  # a caller's bug must not cost the rest of the batch its answers
                log.exception("serving %s: a request's callback raised", self.name)

    # ---- what partitions report ------------------------------------------------------------------------

    def batch_done(
        self, part: Partition, batch: Batch, result: np.ndarray | BaseException, compute: float = 0.0
    ) -> None:
        """Scatter a batch's outputs (or its error) to its callers, then hand out more work."""
        m = self.metrics
        now = perf_counter()
        self._compute = compute if self._compute == 0.0 else self._compute + 0.2 * (compute - self._compute)
        allowance = 2 * max(compute, self._compute)
        if isinstance(result, BaseException):
            for req, _, _ in batch.parts:
                if req.state != DONE:
                    self.queue.drop(req)  # rows of it still queued (a split request) will not run
                    m.requests.inc(labels=(("outcome", "error"),))
                    self._resolve(req, result)
        else:
            m.batches.inc()
            m.compute.observe(compute)
            m.rows.inc(batch.rows)
            m.batch_size.observe(batch.rows)
            outputs = result.astype(self.layout.output_dtype)  # a copy: the buffer is reused
            row = 0
            for req, start, count in batch.parts:
                if req.state != DONE:
                    if count == req.n:
                        req.out = outputs[row : row + count]
                    else:
                        if req.out is None:
                            req.out = np.empty((req.n, *outputs.shape[1:]), outputs.dtype)
                        req.out[start : start + count] = outputs[row : row + count]
                    req.pending -= count
                    if req.pending == 0:
                        m.requests.inc(labels=(("outcome", "success"),))
                        took = now - req.enqueued_at
                        m.latency.observe(took)
                        if took - allowance > self._behind:
                            self._behind = took - allowance
                        self._resolve(req)
                row += count
        self._deadlines.trim()
        if part.alive:
            self._free.append(part)
        self._dispatch()
        self._check_idle()

    def partition_up(self, part: Partition) -> None:
        """A (re)started partition is ready: give it work."""
        self._free.append(part)
        if self.workers_alive == len(self.partitions):
            self._up.set()
        self._dispatch()

    def partition_down(self, part: Partition, batch: Batch | None, hung: bool = False) -> None:
        """A partition died (or hung and was killed): re-run the batch it held once on a live partition, or
        fail its callers."""
        with contextlib.suppress(ValueError):
            self._free.remove(part)
        if hung:
            self.metrics.hangs.inc()
        if batch is None or not batch.live():
            self._check_idle()
            return
        batch.attempts += 1
        if batch.attempts <= 1 and self._running:
            self.metrics.reruns.inc()
            log.warning(
                "serving %s: partition %d %s mid-batch; re-running its %d rows",
                self.name,
                part.index,
                "hung" if hung else "died",
                batch.rows,
            )
            self._retry.append(batch)
            self._dispatch()
        else:
            err: Exception
            if hung:
                err = BatchHung(
                    f"serving {self.name!r}: this batch ({batch.rows} rows) ran past batch_deadline="
                    f"{self.options.batch_deadline:g}s on two workers; not retried again"
                )
            else:
                err = WorkerCrashed(
                    f"serving {self.name!r}: the worker died running this batch twice "
                    f"({batch.rows} rows); not retried again"
                )
            self.batch_done(part, batch, err)

    def worker_recycled(self, part: Partition, why: str) -> None:
        """A fresh worker took over from one past max_batches or max_rss."""
        self.metrics.recycles.inc(labels=(("reason", why),))

    def _on_restart(self, event: tuple, measurements: dict, metadata: dict, config: Any) -> None:
        if metadata.get("supervisor") == self._supervisor_name:
            self.metrics.restarts.inc()

    def _check_idle(self) -> None:
        if self.queue.rows == 0 and not self._retry and all(p.batch is None for p in self.partitions):
            self._idle.set()

    def _fail_all(self, err: Exception) -> None:
        for req in self.queue.drain():
            self._resolve(req, err)
        while self._retry:
            for req, _, _ in self._retry.popleft().parts:
                if req.state != DONE:
                    self._resolve(req, err)
        self._check_idle()


def _layout_of(model: Any, batch_size: int) -> BufferLayout:
    """Read the model's row shapes and dtypes; probe its output with one zero row if it does not say."""
    input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        raise TypeError(
            "Serving needs the model's per-row input shape: give the model an `input_shape` attribute "
            "(e.g. wrap a function in otpserve.models.FunctionModel(fn, input_shape=(784,), ...))"
        )
    input_shape = tuple(int(d) for d in input_shape)
    input_dtype = np.dtype(getattr(model, "input_dtype", np.float32))
    output_shape = getattr(model, "output_shape", None)
    # Outputs travel as float32 unless the model says otherwise (the kernel computes in float32).
    output_dtype = getattr(model, "output_dtype", np.float32)
    if output_shape is None:
        output_shape = np.asarray(_predict(model, np.zeros((1, *input_shape), input_dtype))).shape[1:]
    return BufferLayout(
        batch_size=batch_size,
        input_shape=input_shape,
        input_dtype=input_dtype.str,
        output_shape=tuple(int(d) for d in output_shape),
        output_dtype=np.dtype(output_dtype).str,
    )
