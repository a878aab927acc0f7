"""Partitions: the workers of a Serving, each running one batch at a time.

``ThreadPartition`` runs the model in a thread of this process (the kernel releases the GIL while it
computes). ``ProcessPartition`` runs it in an OS process, a child of this process, started and restarted by
the serving's supervisor; a batch crosses through a shared-memory buffer and a few bytes on a socket. Both
call back into their owner (the Serving) with ``batch_done(partition, batch, outputs | exception)`` and
``partition_down(partition, batch, hung)``.

A hang is a crash: a batch still running ``deadline`` seconds after it was handed over gets its worker
killed (a process: SIGKILL, which also ends a stopped one or one stuck in native code; a thread cannot be
killed, so it is abandoned and a fresh one takes over), and the owner re-runs the batch as after any crash.

A process worker is recycled after ``max_batches`` batches or once its resident memory passes ``max_rss``
bytes (Celery's max-tasks-per-child and max-memory-per-child): its successor is started while it goes on
serving, takes over at the next batch boundary, and only then is the old one retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from otpserve.errors import BatchHung, WorkerCrashed
from otpserve.otp.reason import ExitReason
from otpserve.serving.worker import BufferLayout, _timed_predict, worker_main

if TYPE_CHECKING:
    from otpserve.otp.process import ProcessChild
    from otpserve.serving.batch_queue import Batch

log = logging.getLogger("otpserve.serving")

STARTING, IDLE, BUSY, DOWN = "starting", "idle", "busy", "down"


class Owner:
    """What a partition reports to (implemented by Serving)."""

    def batch_done(
        self, part: Partition, batch: Batch, result: np.ndarray | BaseException, compute: float = 0.0
    ) -> None:
        """A batch finished with outputs (a view valid until the partition runs again) or an error;
        ``compute``: seconds the model itself took on it."""
        raise NotImplementedError

    def partition_up(self, part: Partition) -> None:
        """The partition can take batches."""
        raise NotImplementedError

    def partition_down(self, part: Partition, batch: Batch | None, hung: bool = False) -> None:
        """The partition died, holding ``batch`` if it was busy; ``hung``: killed for running past its deadline."""
        raise NotImplementedError

    def worker_recycled(self, part: Partition, why: str) -> None:
        """A worker of ``part`` was replaced by a fresh one (``why``: max_batches or max_rss)."""


class Partition:
    """Common state of a worker slot: what it runs and the deadline of that run."""

    def __init__(self, index: int, owner: Owner, layout: BufferLayout, deadline: float | None) -> None:
        self.index = index
        self.owner = owner
        self.layout = layout
        self.deadline = deadline
        self.state = DOWN
        self.batch: Batch | None = None
        self.pid: int | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        """Whether the partition can take (or is running) batches."""
        return self.state in (IDLE, BUSY)

    def run(self, batch: Batch) -> None:
        """Start running ``batch``; the owner hears back through ``batch_done``."""
        raise NotImplementedError

    def _arm(self, batch: Batch) -> None:
        if self.deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(self.deadline, self._overdue, batch)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _overdue(self, batch: Batch) -> None:
        """The batch ran past the deadline: the worker is hung (a deadlock, a stop, a loop in native code)."""
        self._timer = None
        if self.batch is batch:
            log.error(
                "partition %d: a batch of %d rows ran past batch_deadline=%gs; killing its worker",
                self.index,
                batch.rows,
                self.deadline,
            )
            self._hang(batch)

    def _hang(self, batch: Batch) -> None:
        raise NotImplementedError


class _ModelThread:
    """A daemon thread that runs one call at a time for a ThreadPartition.

    Not a ``ThreadPoolExecutor``: the interpreter joins those threads at exit, so one abandoned in a hung
    model would keep the process from ever exiting (a SIGTERM'd server would wait forever). A daemon
    thread is simply left behind when the process ends.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``call()`` in the thread; its result (or exception) arrives on the running loop."""
        fut = asyncio.get_running_loop().create_future()
        self._calls.put((call, fut))
        return fut

    def shutdown(self) -> None:
        """Let the thread end after its current call (if that call never returns, it is abandoned)."""
        self._calls.put(None)

    def _main(self) -> None:
        while (item := self._calls.get()) is not None:
            call, fut = item
            try:
                result, error = call(), None
            except BaseException as exc:  # reported to the caller, as an executor would
                result, error = None, exc
            loop = fut.get_loop()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, fut, result, error)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class ThreadPartition(Partition):
    """A partition whose model runs in a dedicated thread of this process."""

    def __init__(self, index: int, owner: Owner, layout: BufferLayout, model: Any, deadline: float | None) -> None:
        super().__init__(index, owner, layout, deadline)
        self.model = model
        self.inputs = np.empty((layout.batch_size, *layout.input_shape), dtype=layout.input_dtype)
        self.thread: _ModelThread | None = None
        self._hung: asyncio.Future[None] | None = None
        self._runs = 0  # which run a finished future belongs to (an abandoned thread may finish much later)

    async def serve(self) -> None:
        """The body of this partition's supervised task: own the thread until cancelled or hung."""
        self.thread = _ModelThread(f"otpserve-partition-{self.index}")
        self._hung = asyncio.get_running_loop().create_future()
        hung = False
        self.state = IDLE
        self.owner.partition_up(self)
        try:
            await self._hung  # raises BatchHung: the supervisor restarts this task with a fresh thread
        except BatchHung:
            hung = True
            raise
        finally:
            self._disarm()
            batch, self.batch = self.batch, None
            self.state = DOWN
            self._runs += 1
            # A hung thread cannot be killed: it is abandoned (it holds the GIL only if the model does).
            self.thread.shutdown()
            self.owner.partition_down(self, batch, hung)

    def run(self, batch: Batch) -> None:
        """Copy the batch into this partition's buffer and run the model in the thread."""
        assert self.thread is not None
        self.state, self.batch = BUSY, batch
        self._runs += 1
        run = self._runs
        view = batch.fill(self.inputs)
        model = self.model
        fut = self.thread.submit(lambda: _timed_predict(model, view))
        fut.add_done_callback(lambda f: self._finished(run, batch, f))
        self._arm(batch)

    def _hang(self, batch: Batch) -> None:
        self.state = DOWN
        self.inputs = np.empty_like(self.inputs)  # the abandoned thread may still read the old buffer
        if self._hung is not None and not self._hung.done():
            self._hung.set_exception(BatchHung(f"partition {self.index}: batch ran past batch_deadline"))

    def _finished(self, run: int, batch: Batch, fut: asyncio.Future) -> None:
        if run != self._runs or self.batch is not batch:
            return  # the partition went down meanwhile; partition_down took care of the batch
        self._disarm()
        self.state, self.batch = IDLE, None
        if fut.cancelled():
            self.owner.batch_done(self, batch, WorkerCrashed(f"partition {self.index} stopped mid-batch"))
            return
        exc = fut.exception()
        if exc is not None:
            self.owner.batch_done(self, batch, exc)
            return
        y, compute = fut.result()
        expected = (batch.rows, *self.layout.output_shape)
        if y.shape != expected:
            err = ValueError(f"model returned shape {y.shape} for a batch of {batch.rows}; expected {expected}")
            self.owner.batch_done(self, batch, err)
            return
        self.owner.batch_done(self, batch, y, compute)


class _Worker:
    """One worker process of a partition and what it holds: its socket, its shared buffer, its counts."""

    def __init__(self, child: ProcessChild, conn: Connection, buf: mmap.mmap, layout: BufferLayout) -> None:
        self.child = child
        self.conn = conn
        self.buf = buf
        self.inputs, self.outputs = layout.views(buf)
        self.ready = False
        self.batches = 0
        self.rss = 0
        self.first_rss = 0
        self.hung = False
        self.retiring = False
        self.down = False  # died (or was killed) while it was the partition's running worker

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Release the socket and the buffer (the worker reads EOF and exits, if it still runs)."""
        with contextlib.suppress(Exception):
            loop.remove_reader(self.conn.fileno())
        with contextlib.suppress(OSError):
            self.conn.close()
        self.inputs = self.outputs = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self.buf.close()


class _SlotChild:
    """What the supervisor sees of a process partition: one child, whichever worker process runs it now.

    It exits when the running worker dies unasked (a crash, a kill, a hang); a recycled worker is replaced
    without the supervisor restarting anything.
    """

    def __init__(self, part: ProcessPartition) -> None:
        self._part = part
        self._exited: asyncio.Future[ExitReason] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int | None:
        """The running worker's pid."""
        w = self._part._current
        return w.child.pid if w is not None else None

    def exit(self, reason: ExitReason) -> None:
        if not self._exited.done():
            self._exited.set_result(reason)

    async def wait(self) -> ExitReason:
        """Complete when the partition's running worker died (or the partition was stopped)."""
        return await asyncio.shield(self._exited)

    async def stop(self, timeout: float | None = 5.0) -> ExitReason:
        """SIGTERM every worker of the partition, SIGKILL after ``timeout``."""
        part = self._part
        workers = [w for w in (part._current, part._successor, *part._retiring) if w is not None]
        for w in workers:
            w.retiring = True
        reasons = await asyncio.gather(*(w.child.stop(timeout) for w in workers))
        self.exit(reasons[0] if reasons else ExitReason.shutdown())
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL every worker of the partition."""
        part = self._part
        for w in (part._current, part._successor, *part._retiring):
            if w is not None:
                w.child.kill()


class ProcessPartition(Partition):
    """A partition whose model runs in a supervised OS process, fed through shared memory."""

    def __init__(
        self,
        index: int,
        owner: Owner,
        layout: BufferLayout,
        model: Any,
        threads: int,
        start_method: str,
        *,
        deadline: float | None = None,
        max_batches: int | None = None,
        max_rss: int | None = None,
    ) -> None:
        super().__init__(index, owner, layout, deadline)
        self.model = model
        self.threads = threads
        self.start_method = start_method
        self.max_batches = max_batches
        self.max_rss = max_rss
        self._current: _Worker | None = None
        self._successor: _Worker | None = None
        self._retiring: set[_Worker] = set()
        self._slot: _SlotChild | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._rss_warned = False
        self._recycle_why = ""

    @property
    def inputs(self) -> np.ndarray | None:
        """The running worker's input buffer."""
        return self._current.inputs if self._current is not None else None

    async def start(self) -> _SlotChild:
        """Start this (re)start's worker; the supervisor watches the returned slot."""
        self._loop = asyncio.get_running_loop()
        if self._current is not None:
            self._down(self._current)  # the supervisor saw the exit before we saw EOF: report the batch first
        self._stop_extra()
        self.state = STARTING
        self._slot = _SlotChild(self)
        try:
            self._current = self._launch()
        except BaseException:
            self.state = DOWN
            raise
        self.pid = self._current.child.pid
        return self._slot

    def _launch(self) -> _Worker:
        """Start one worker process with its own buffer and socket."""
        from otpserve.otp.process import PassFd, start_process

        loop = self._loop
        assert loop is not None
        layout = self.layout
        # Anonymous shared memory (memfd): it has no name in /dev/shm, so no crash, kill or restart can
        # leave a file behind; the worker gets the descriptor itself when it starts.
        fd = os.memfd_create(f"otpserve-partition-{self.index}", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.ftruncate(fd, layout.size)
            buf = mmap.mmap(fd, layout.size)
            try:
                child = start_process(
                    worker_main,
                    args=(self.model, PassFd(theirs.fileno()), PassFd(fd), layout, self.threads),
                    name=f"partition-{self.index}",
                    method=self.start_method,
                )
            except BaseException:
                buf.close()
                ours.close()
                raise
        finally:
            theirs.close()  # only the worker holds its end now, so its death reads as EOF here
            os.close(fd)  # the mappings keep the memory alive; it is freed when the last one goes
        conn = Connection(ours.detach())
        w = _Worker(child, conn, buf, layout)
        loop.add_reader(conn.fileno(), self._readable, w)
        task = loop.create_task(self._watch(w), name=f"partition-{self.index}-worker-{child.pid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return w

    async def _watch(self, w: _Worker) -> None:
        """When a worker process exits: expected if it was retired, else the partition's crash."""
        reason = await w.child.wait()
        if w is self._current:
            self._down(w)
        if w.down:  # it was running the partition: the slot exits and its supervisor restarts it
            if w.hung:
                reason = ExitReason.exception(BatchHung(f"partition {self.index}: batch ran past batch_deadline"))
            if self._slot is not None:
                self._slot.exit(reason)
            return
        if w is self._successor:
            if not w.retiring:
                log.warning("partition %d: the successor worker died while starting (%s)", self.index, reason)
            self._successor = None
        self._retiring.discard(w)
        w.close(self._loop)  # type: ignore[arg-type]

    def run(self, batch: Batch) -> None:
        """Write the batch into shared memory and tell the worker how many rows to run."""
        w = self._current
        assert w is not None and w.ready
        self.state, self.batch = BUSY, batch
        batch.fill(w.inputs)
        try:
            w.conn.send_bytes(batch.rows.to_bytes(4, "little"))
        except OSError:
            self._down(w)
            return
        self._arm(batch)

    def _hang(self, batch: Batch) -> None:
        w = self._current
        if w is not None:
            w.hung = True
            self.state = DOWN  # not ready for work while it is being replaced
            w.child.kill()  # SIGKILL ends a stopped process and one stuck in native code alike

    def _readable(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv_bytes()
        except (EOFError, OSError):
            if w is self._current:
                self._down(w)
            else:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(w.conn.fileno())  # type: ignore[union-attr]
            return
        kind = msg[:1]
        if kind == b"R":
            w.ready = True
            if w is self._current:
                self.state = IDLE
                self.owner.partition_up(self)
            elif w is self._successor and self._current is not None and self.state == IDLE:
                self._retire(self._take_over())
        elif kind in (b"O", b"E"):
            if w is not self._current:
                return
            self._disarm()
            batch, self.batch = self.batch, None
            self.state = IDLE
            if batch is None:
                return
            w.batches += 1
            if kind == b"O":
                compute, rss = struct.unpack_from("<dq", msg, 1)
                w.rss = rss
                if w.batches == 1:
                    w.first_rss = rss
                outputs = w.outputs[: batch.rows]
            else:
                compute = 0.0
                outputs = None
            self._check_recycle(w)
            if self._successor is not None and self._successor.ready:
                self._take_over()  # the next batch goes to the successor; these outputs stay valid until then
            if outputs is not None:
                self.owner.batch_done(self, batch, outputs, compute)
            else:
                self.owner.batch_done(self, batch, RuntimeError(msg[1:].decode("utf-8", "replace")))
            if w is not self._current:
                self._retire(w)
        else:
            log.error("partition %d: unexpected message %r from worker", self.index, msg[:16])

    def _check_recycle(self, w: _Worker) -> None:
        """Start a successor for a worker past ``max_batches`` or ``max_rss`` (it serves on meanwhile)."""
        if self._successor is not None:
            return
        why = None
        if self.max_batches is not None and w.batches >= self.max_batches:
            why = "max_batches"
        elif self.max_rss is not None and w.rss > self.max_rss:
            if w.first_rss > self.max_rss:
                if not self._rss_warned:
                    self._rss_warned = True
                    log.error(
                        "partition %d: max_rss=%d is below a fresh worker's resident memory (%d bytes); "
                        "not recycling for memory",
                        self.index,
                        self.max_rss,
                        w.first_rss,
                    )
            else:
                why = "max_rss"
        if why is None:
            return
        log.info("partition %d: worker %d reached %s; starting its successor", self.index, w.child.pid, why)
        self._recycle_why = why
        try:
            self._successor = self._launch()
        except Exception:
            log.exception("partition %d: could not start a successor; the worker serves on", self.index)

    def _take_over(self) -> _Worker:
        """The ready successor becomes the running worker (between batches); returns the one it replaces."""
        old, new = self._current, self._successor
        assert old is not None and new is not None and self.batch is None
        self._current, self._successor = new, None
        self.pid = new.child.pid
        self.owner.worker_recycled(self, self._recycle_why)
        return old

    def _retire(self, w: _Worker) -> None:
        """Stop a replaced worker: it exits on EOF; SIGTERM makes sure, SIGKILL after a second."""
        w.retiring = True
        self._retiring.add(w)
        w.close(self._loop)  # type: ignore[arg-type]
        assert self._loop is not None
        task = self._loop.create_task(w.child.stop(1.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _down(self, w: _Worker) -> None:
        """The running worker is gone: report the batch it held (once)."""
        if w is not self._current:
            return
        self._disarm()
        batch, self.batch = self.batch, None
        self.state = DOWN
        self._current = None
        w.down = True
        w.close(self._loop)  # type: ignore[arg-type]
        self._stop_extra()
        self.owner.partition_down(self, batch, w.hung)

    def _stop_extra(self) -> None:
        """Kill a successor still starting and workers still retiring (a restart starts afresh)."""
        for w in (self._successor, *self._retiring):
            if w is not None:
                w.child.kill()
        self._successor = None

    def shutdown(self) -> None:
        """Close everything this partition holds (the serving is stopping)."""
        loop = self._loop
        for w in (self._current, self._successor, *self._retiring):
            if w is not None and loop is not None:
                w.close(loop)
        self._current = self._successor = None
        self._retiring.clear()
        self._disarm()
        self.state = DOWN
