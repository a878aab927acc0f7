"""BatchQueue: queued requests, and the batches cut from them.

A request carries one or more rows. Batches are cut from the head of the queue, up to batch_size rows, so
a request may be split across batches and a batch may hold parts of many requests; each part writes its
rows of the output into the request's own result array, and the request is answered when its last part
is done. Requests that expired or were cancelled while queued stay in the deque as tombstones and are
skipped at the next cut, so removing one costs O(1).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np

QUEUED, RUNNING, DONE = 0, 1, 2


class Request:
    """One caller's rows, how far they have been dispatched, and how the caller hears back.

    A caller waits either on ``fut`` (``Serving.run``) or is called back with the request itself once
    ``out`` or ``error`` is set (the HTTP path: no future, no extra loop turn per answer).
    """

    __slots__ = (
        "callback",
        "deadline_handle",
        "dispatched",
        "enqueued_at",
        "error",
        "fut",
        "n",
        "out",
        "pending",
        "state",
        "x",
    )

    def __init__(
        self,
        x: np.ndarray,
        enqueued_at: float,
        fut: asyncio.Future | None = None,
        callback: Callable[[Request], None] | None = None,
    ) -> None:
        self.fut = fut
        self.callback = callback
        self.error: BaseException | None = None
        self.x = x
        self.n = x.shape[0]
        self.dispatched = 0  # rows already placed in a batch
        self.pending = self.n  # rows whose output has not arrived yet
        self.out: np.ndarray | None = None
        self.state = QUEUED
        self.enqueued_at = enqueued_at
        self.deadline_handle: asyncio.TimerHandle | None = None

    def finish(self) -> None:
        """Stop the deadline timer; the request needs no more bookkeeping."""
        self.state = DONE
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None


class Batch:
    """Rows cut from the queue for one partition: ``parts`` are (request, first row, row count)."""

    __slots__ = ("attempts", "parts", "rows")

    def __init__(self, parts: list[tuple[Request, int, int]], rows: int) -> None:
        self.parts = parts
        self.rows = rows
        self.attempts = 0

    def live(self) -> bool:
        """Whether any caller still waits for this batch."""
        return any(req.state != DONE for req, _, _ in self.parts)

    def fill(self, buf: np.ndarray) -> np.ndarray:
        """Copy this batch's rows into the front of ``buf`` and return that view."""
        view = buf[: self.rows]
        parts = self.parts
        if len(parts) == 1:
            req, start, count = parts[0]
            view[:] = req.x[start : start + count]
            return view
        row = 0
        for req, start, count in parts:
            if count == 1:
                view[row] = req.x[start]
            else:
                view[row : row + count] = req.x[start : start + count]
            row += count
        return view


class BatchQueue:
    """FIFO of requests with a row count, cut into batches of at most ``batch_size`` rows."""

    def __init__(self, batch_size: int, max_queue: int) -> None:
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.rows = 0  # rows queued and not yet cut into a batch
        self._requests: deque[Request] = deque()

    def __len__(self) -> int:
        return self.rows

    def has_room(self, n: int) -> bool:
        """Whether ``n`` more rows fit under max_queue (an empty queue takes any request, so none starves)."""
        return self.rows == 0 or self.rows + n <= self.max_queue

    def put(self, req: Request) -> None:
        """Append a request (the caller checked ``has_room``)."""
        self._requests.append(req)
        self.rows += req.n

    def drop(self, req: Request) -> None:
        """Forget a queued request's undispatched rows (it expired or its caller went away)."""
        self.rows -= req.n - req.dispatched
        req.dispatched = req.n

    def cut(self) -> Batch | None:
        """Take up to batch_size rows from the head, splitting the last request if it is larger."""
        parts: list[tuple[Request, int, int]] = []
        room = self.batch_size
        requests = self._requests
        while room and requests:
            req = requests[0]
            if req.state == DONE or req.dispatched >= req.n:
                requests.popleft()
                continue
            take = min(room, req.n - req.dispatched)
            parts.append((req, req.dispatched, take))
            req.dispatched += take
            req.state = RUNNING
            room -= take
            if req.dispatched >= req.n:
                requests.popleft()
        if not parts:
            return None
        rows = self.batch_size - room
        self.rows -= rows
        return Batch(parts, rows)

    def head(self) -> Request | None:
        """The oldest request that still has rows waiting, dropping tombstones on the way."""
        requests = self._requests
        while requests:
            req = requests[0]
            if req.state == DONE or req.dispatched >= req.n:
                requests.popleft()
                continue
            return req
        return None

    def drain(self) -> list[Request]:
        """Remove and return every request still waiting (used when the serving stops)."""
        waiting = [r for r in self._requests if r.state != DONE]
        self._requests.clear()
        self.rows = 0
        return waiting
