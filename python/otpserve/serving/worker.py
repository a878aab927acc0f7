"""The body of a process partition: an OS process that runs batches from shared memory.

The server process writes a batch's rows into the shared buffer and sends the row count over a pipe; the
worker runs the model on that view in place (zero-copy into the kernel), writes the outputs after the
inputs in the same buffer and answers with one short message. Nothing but a few bytes is pickled per batch.

Messages, worker -> server: ``R`` ready; ``O<float64><int64>`` batch done, with the seconds the model
took and the worker's resident memory in bytes (for ``max_rss``); ``E<text>`` the model raised (the worker
lives on).
Messages, server -> worker: the row count as 4 little-endian bytes. EOF on the pipe means the other side died.
"""

from __future__ import annotations

import mmap
import os
import struct
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from time import perf_counter
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BufferLayout:
    """Where a partition's inputs and outputs live in its shared buffer (byte offsets and shapes)."""

    batch_size: int
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str

    @property
    def input_bytes(self) -> int:
        """Bytes of the input region."""
        return self.batch_size * int(np.prod(self.input_shape, dtype=np.int64)) * np.dtype(self.input_dtype).itemsize

    @property
    def output_bytes(self) -> int:
        """Bytes of the output region."""
        return self.batch_size * int(np.prod(self.output_shape, dtype=np.int64)) * np.dtype(self.output_dtype).itemsize

    @property
    def size(self) -> int:
        """Bytes of the whole buffer (at least one page, so mmap accepts it)."""
        return max(mmap.PAGESIZE, self.input_bytes + self.output_bytes)

    def views(self, buf: Any) -> tuple[np.ndarray, np.ndarray]:
        """The input and output arrays over ``buf`` (an mmap)."""
        inputs = np.ndarray((self.batch_size, *self.input_shape), dtype=self.input_dtype, buffer=buf, offset=0)
        outputs = np.ndarray(
            (self.batch_size, *self.output_shape),
            dtype=self.output_dtype,
            buffer=buf,
            offset=self.input_bytes,
        )
        return inputs, outputs


def open_shared(fd: int, size: int) -> mmap.mmap:
    """Map the shared buffer the server handed over at start (an anonymous memfd); the descriptor is closed."""
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _rss_reader() -> Any:
    """A function returning this process's resident memory in bytes (one pread of /proc/self/statm)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return lambda: 0
    page = os.sysconf("SC_PAGE_SIZE")
    return lambda: int(os.pread(fd, 64, 0).split()[1]) * page


def _predict(model: Any, batch: np.ndarray) -> np.ndarray:
    predict = getattr(model, "predict", None)
    return predict(batch) if predict is not None else model(batch)


def _timed_predict(model: Any, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """The model's outputs on ``batch`` and the seconds it took."""
    started = perf_counter()
    y = np.asarray(_predict(model, batch))
    return y, perf_counter() - started


def worker_main(model: Any, conn_fd: int, shm_fd: int, layout: BufferLayout, threads: int) -> None:
    """Serve batches until the socket closes; any exception from the model is reported, not fatal."""
    try:
        from otpserve import kernel

        kernel.set_num_threads(threads)
    except (ImportError, AttributeError):  # a model without the kernel still runs
        pass
    conn = Connection(conn_fd)
    buf = open_shared(shm_fd, layout.size)
    inputs, outputs = layout.views(buf)
    rss = _rss_reader()
    conn.send_bytes(b"R")
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the server is gone or closed the pipe: stop quietly
        n = int.from_bytes(msg[:4], "little")
        try:
            y, took = _timed_predict(model, inputs[:n])
            if y.shape != (n, *layout.output_shape):
                raise ValueError(
                    f"model returned shape {y.shape} for a batch of {n}; expected {(n, *layout.output_shape)}"
                )
            outputs[:n] = y
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            conn.send_bytes(b"E" + detail.encode("utf-8", "replace"))
            continue
        # The model's compute time is for load shedding; the memory for recycling.
        conn.send_bytes(b"O" + struct.pack("<dq", took, rss()))
