"""Partitions: the workers of a Serving, each running one batch at a time.

``ThreadPartition`` runs the model in a thread of this process (the kernel releases the GIL while it
computes). ``ProcessPartition`` runs it in an OS process started and restarted by the serving's supervisor;
a batch crosses through a shared-memory buffer and a few bytes on a pipe. Both call back into their owner
(the Serving) with ``batch_done(partition, batch, outputs | exception)`` and, for a process, ``partition_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import multiprocessing
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import reduction
from typing import TYPE_CHECKING, Any

import numpy as np

from otpserve.errors import WorkerCrashed
from otpserve.serving.worker import BufferLayout, _timed_predict, worker_main

if TYPE_CHECKING:
    from otpserve.serving.batch_queue import Batch

log = logging.getLogger("otpserve.serving")

STARTING, IDLE, BUSY, DOWN = "starting", "idle", "busy", "down"
_generation = itertools.count()


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

    def partition_down(self, part: Partition, batch: Batch | None) -> None:
        """The partition died, holding ``batch`` if it was busy."""
        raise NotImplementedError


class Partition:
    """Common state of a worker slot."""

    def __init__(self, index: int, owner: Owner, layout: BufferLayout) -> None:
        self.index = index
        self.owner = owner
        self.layout = layout
        self.state = DOWN
        self.batch: Batch | None = None
        self.pid: int | None = None

    @property
    def alive(self) -> bool:
        """Whether the partition can take (or is running) batches."""
        return self.state in (IDLE, BUSY)

    def run(self, batch: Batch) -> None:
        """Start running ``batch``; the owner hears back through ``batch_done``."""
        raise NotImplementedError


class ThreadPartition(Partition):
    """A partition whose model runs in a dedicated thread of this process."""

    def __init__(self, index: int, owner: Owner, layout: BufferLayout, model: Any) -> None:
        super().__init__(index, owner, layout)
        self.model = model
        self.inputs = np.empty((layout.batch_size, *layout.input_shape), dtype=layout.input_dtype)
        self.executor: ThreadPoolExecutor | None = None

    async def serve(self) -> None:
        """The body of this partition's supervised task: own the thread until cancelled."""
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"otpserve-partition-{self.index}")
        self.state = IDLE
        self.owner.partition_up(self)
        try:
            await asyncio.Event().wait()
        finally:
            batch, self.batch = self.batch, None
            self.state = DOWN
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.owner.partition_down(self, batch)

    def run(self, batch: Batch) -> None:
        """Copy the batch into this partition's buffer and run the model in the thread."""
        assert self.executor is not None
        self.state, self.batch = BUSY, batch
        view = batch.fill(self.inputs)
        fut = asyncio.get_running_loop().run_in_executor(self.executor, _timed_predict, self.model, view)
        fut.add_done_callback(lambda f: self._finished(batch, f))

    def _finished(self, batch: Batch, fut: asyncio.Future) -> None:
        if self.batch is not batch:
            return  # the partition went down meanwhile; partition_down took care of the batch
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


class ProcessPartition(Partition):
    """A partition whose model runs in a supervised OS process, fed through shared memory."""

    def __init__(
        self, index: int, owner: Owner, layout: BufferLayout, model: Any, threads: int, start_method: str
    ) -> None:
        super().__init__(index, owner, layout)
        self.model = model
        self.threads = threads
        self.start_method = start_method
        self.conn: Any = None
        self.buf: mmap.mmap | None = None
        self.inputs: np.ndarray | None = None
        self.outputs: np.ndarray | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> Any:
        """Set up the pipe and shared buffer for this (re)start, then launch the worker process."""
        from otpserve.otp.process import start_process

        if self.conn is not None:
            self._down(self.conn)  # the supervisor saw the exit before we saw EOF: report the held batch first
        self._close()
        self._loop = asyncio.get_running_loop()
        layout = self.layout
        # Anonymous shared memory (memfd): it has no name in /dev/shm, so no crash, kill or restart can
        # leave a file behind; the worker gets the descriptor itself over the pipe (SCM_RIGHTS).
        fd = os.memfd_create(f"otpserve-partition-{self.index}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, layout.size)
            self.buf = mmap.mmap(fd, layout.size)
            self.inputs, self.outputs = layout.views(self.buf)
            ctx = multiprocessing.get_context(self.start_method)
            if self.start_method == "forkserver":
                # Workers fork from a server that already imported numpy and the kernel: restarts take ms.
                ctx.set_forkserver_preload(["numpy", "otpserve.kernel", "otpserve.serving.worker"])
            ours, theirs = ctx.Pipe(duplex=True)
            self.conn = ours
            self.state = STARTING
            try:
                child = start_process(
                    worker_main,
                    args=(self.model, theirs, layout, self.threads),
                    name=f"otpserve-partition-{self.index}",
                    method=self.start_method,
                )
            except BaseException:
                self._close()
                self.state = DOWN
                raise
            finally:
                theirs.close()  # only the worker holds its end now, so its death reads as EOF here
            reduction.send_handle(ours, fd, child.pid)
        finally:
            os.close(fd)  # the mappings keep the memory alive; it is freed when the last one goes
        self.pid = child.pid
        self._loop.add_reader(ours.fileno(), self._readable, ours)
        return child

    def run(self, batch: Batch) -> None:
        """Write the batch into shared memory and tell the worker how many rows to run."""
        assert self.inputs is not None and self.conn is not None
        self.state, self.batch = BUSY, batch
        batch.fill(self.inputs)
        try:
            self.conn.send_bytes(batch.rows.to_bytes(4, "little"))
        except OSError:
            self._down(self.conn)

    def _readable(self, conn: Any) -> None:
        if conn is not self.conn:
            return
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            self._down(conn)
            return
        kind = msg[:1]
        if kind == b"R":
            self.state = IDLE
            self.owner.partition_up(self)
        elif kind in (b"O", b"E"):
            batch, self.batch = self.batch, None
            self.state = IDLE
            if batch is None:
                return
            if kind == b"O":
                assert self.outputs is not None
                compute = struct.unpack_from("<d", msg, 1)[0] if len(msg) >= 9 else 0.0
                self.owner.batch_done(self, batch, self.outputs[: batch.rows], compute)
            else:
                self.owner.batch_done(self, batch, RuntimeError(msg[1:].decode("utf-8", "replace")))
        else:
            log.error("partition %d: unexpected message %r from worker", self.index, msg[:16])

    def _down(self, conn: Any) -> None:
        if conn is not self.conn:
            return
        batch, self.batch = self.batch, None
        self.state = DOWN
        self._close()
        self.owner.partition_down(self, batch)

    def _close(self) -> None:
        """Release this start's pipe and buffer (the worker is gone or being replaced)."""
        if self.conn is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.conn.fileno())
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
        self.inputs = self.outputs = None
        if self.buf is not None:
            with contextlib.suppress(BufferError):
                self.buf.close()
            self.buf = None

    def shutdown(self) -> None:
        """Close everything this partition holds (the serving is stopping)."""
        self._close()
        self.state = DOWN
