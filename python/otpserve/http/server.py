"""HttpServer: servings behind the KServe v2 REST API on one asyncio loop.

``await HttpServer({"mlp": serving}, host="127.0.0.1", port=8000).start()``. The server owns its listening
socket, its connections and one housekeeping task (the idle sweep); ``stop()`` drains: it takes the
connections still queued on the listener and closes it, answers every request already read (the last on each
connection with ``connection: close``), closes connections that wait for a next request, and after ``grace``
seconds closes whatever is left. It does not own the servings: whoever started them stops them
(``otpserve serve`` does both, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from time import perf_counter, thread_time
from typing import TYPE_CHECKING

from otpserve.http.protocol import HttpConnection
from otpserve.http.router import Router
from otpserve.http.shedding import LoadShedder
from otpserve.metrics import Counter, Gauge, Registry, merge_expositions, render_many

if TYPE_CHECKING:
    from otpserve.serving import Serving

log = logging.getLogger("otpserve.http")
_STATUS_LABELS: dict[int, tuple[tuple[str, str], ...]] = {}
# A tick's CPU per request is a sample of `request_cost` once it saw this many inference requests; samples
# are averaged with this weight (about the last 20 busy ticks).
COST_MIN_REQUESTS = 8
COST_WEIGHT = 0.05
# While stopping, a connection with nothing to answer is closed once its client has sent nothing for this
# long: a closed-loop client sends its next request within milliseconds of an answer, and that request is
# answered (with connection: close) rather than cut off by a close that crosses it on the wire.
STOP_LINGER = 0.25


class HttpServer:
    """The HTTP face of one or more servings (KServe v2 + /metrics)."""

    def __init__(
        self,
        servings: dict[str, Serving],
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        max_body: int = 16 * 1024 * 1024,
        request_timeout: float = 10.0,
        keep_alive_timeout: float = 75.0,
        backlog: int = 2048,
        shedder: LoadShedder | None = None,
        reuse_port: bool = False,
        peers_dir: str | None = None,
        peer_name: str = "acceptor",
    ) -> None:
        self.servings = servings
        self.host = host
        self.port = port
        # 16 MiB fits a batch of ~5,000 MNIST rows as JSON; larger requests get 413 before any is buffered.
        self.max_body = max_body
        # A request whose body stops arriving for this long is answered 408 and its connection closed.
        self.request_timeout = request_timeout
        # An idle keep-alive connection is closed after this long (nginx's default), freeing its descriptor.
        self.keep_alive_timeout = keep_alive_timeout
        self.backlog = backlog
        # Several acceptor processes may share the port (SO_REUSEPORT); each writes its metrics into
        # ``peers_dir`` once a second, and /metrics on any of them answers for all of them.
        self.reuse_port = reuse_port
        self.peers_dir = peers_dir
        self.peer_name = peer_name
        self.shedder = shedder if shedder is not None else LoadShedder()
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self.router = Router(self)
        self.registry = Registry()
        self.responses = self.registry.add(Counter("otpserve_http_responses_total", "HTTP responses by status."))
        self.shed = self.registry.add(Counter("otpserve_http_shed_total", "Inference refused while running behind."))
        self.loop_lag = 0.0
        # Seconds of this loop's CPU per inference request (an average over recent busy ticks); None until
        # measured. With one request in flight per connection, connections x this bounds the loop lag our
        # own requests can cause: lag beyond it is a stall from outside, which refusing cannot shorten.
        self.request_cost: float | None = None
        self.registry.add(
            Gauge("otpserve_event_loop_lag_seconds", "How late the last loop tick ran.", lambda: self.loop_lag)
        )
        self.registry.add(
            Gauge(
                "otpserve_http_behind_seconds",
                "Loop lag plus the longest recent wait beyond model compute: what the shedder steers.",
                lambda: self.shedder.behind,
            )
        )
        self.registry.add(
            Gauge("otpserve_http_admit_ratio", "Share of inference requests admitted now.", lambda: self.shedder.admit)
        )
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop the server runs on, once started
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self._lag_watch: asyncio.Task | None = None

    @property
    def url(self) -> str:
        """The base URL the server listens on."""
        return f"http://{self.host}:{self.port}"

    def count_status(self, status: int) -> None:
        """Count one response by status code."""
        labels = _STATUS_LABELS.get(status)
        if labels is None:
            labels = _STATUS_LABELS[status] = (("code", str(status)),)
        self.responses.inc(labels=labels)

    def render_local(self) -> str:
        """Prometheus text for this process: the HTTP layer and every serving (labelled by model)."""
        text = self.registry.render()
        text += render_many([((("model", name),), s.metrics.registry) for name, s in self.servings.items()])
        return text

    def render_metrics(self) -> str:
        """Prometheus text for the whole server: this process, merged with its peers' latest snapshots."""
        local = self.render_local()
        if self.peers_dir is None:
            return local
        texts = [local]
        for path in sorted(Path(self.peers_dir).glob("*.prom")):
            if path.stem != self.peer_name:
                with contextlib.suppress(OSError):
                    texts.append(path.read_text())
        return merge_expositions(texts)

    def _write_snapshot(self) -> None:
        assert self.peers_dir is not None
        path = Path(self.peers_dir) / f"{self.peer_name}.prom"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.render_local())
        tmp.replace(path)  # atomic: a reader never sees half a file

    async def start(self) -> HttpServer:
        """Bind and start accepting connections; port 0 picks a free port (read it back from ``port``)."""
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self.router, loop),
            self.host,
            self.port,
            backlog=self.backlog,
            reuse_address=True,
            reuse_port=self.reuse_port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep(), name="otpserve-http-sweep")
        self._lag_watch = asyncio.create_task(self._watch_lag(), name="otpserve-http-lag")
        return self

    async def _watch_lag(self, interval: float = 0.005) -> None:
        """Every few ms, measure how far behind the server runs: the shedder's input (~200 cheap wake-ups/s).

        A request waits twice before its answer: for the loop to read it (how late this timer fires) and in
        its serving (the longest wait beyond the model's compute since the last tick: ``take_behind``).
        The shedder steers their sum, which is what an accepted request sees beyond its own compute.

        Only what the server's own requests can explain counts: at most one request per connection, each
        costing ``request_cost`` of this loop's CPU. A host that takes the CPU away (another process, a
        noisy neighbour) makes the timer late and the workers slow too, but with a few dozen connections
        there is no backlog for refusals to cut: closed-loop clients resend at once, and shedding would
        only turn waits into 503s. Under a flood of connections the bound is far above what is steered to.
        """
        servings, shedder = self.servings, self.shedder
        cpu = thread_time()
        while True:
            t0 = perf_counter()
            await asyncio.sleep(interval)
            lag = self.loop_lag = max(0.0, perf_counter() - t0 - interval)
            now = thread_time()
            if not shedder.refused:  # what an answered request costs, not a cheap refusal
                self._measure_cost(now - cpu, shedder.admitted)
            cpu = now
            behind = lag + max((s.take_behind() for s in servings.values()), default=0.0)
            if self.request_cost is not None:
                # No more than this loop's connections can explain, one request each: past that the CPU
                # went elsewhere, and shedding would only turn waits into 503s.
                behind = min(behind, len(self.connections) * self.request_cost)
            shedder.observe(behind)

    def _measure_cost(self, cpu: float, requests: int) -> None:
        """Fold one tick's CPU per inference request into ``request_cost`` (ticks with a handful or more).

        Only ticks without refusals count: a backlog of requests read from their sockets costs what
        answering them does, and averaging in refusals would shrink the bound just as a flood needs it.
        """
        if requests < COST_MIN_REQUESTS:
            return
        sample = cpu / requests
        cost = self.request_cost
        self.request_cost = sample if cost is None else cost + COST_WEIGHT * (sample - cost)

    async def _sweep(self) -> None:
        """Once a second, time out connections stuck mid-request (one timer for all, not one per request),
        and leave this process's metrics where its peers can read them."""
        loop = asyncio.get_running_loop()
        while True:
            if self.peers_dir is not None:
                try:
                    self._write_snapshot()
                except OSError as exc:
                    log.warning("cannot write the metrics snapshot to %s: %s", self.peers_dir, exc)
            await asyncio.sleep(min(1.0, self.request_timeout / 2))
            now = loop.time()
            for conn in list(self.connections):
                conn.idle_check(now, self.request_timeout, self.keep_alive_timeout)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting and drain: every request already read is answered within ``grace`` seconds."""
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        self.stopping = True
        # Closing a listener resets the connections in its accept queue (the kernel hands them to no one,
        # even with SO_REUSEPORT peers still open): take them first, in the same step, and answer them too.
        queued = self._take_queued()
        self._server.close()
        for sock in queued:
            with contextlib.suppress(OSError):
                await loop.connect_accepted_socket(lambda: HttpConnection(self.router, loop), sock)
        for conn in list(self.connections):
            conn.drain()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            now = loop.time()
            for conn in list(self.connections):
                idle = conn.idle_since(now)
                if idle is not None and idle >= STOP_LINGER:
                    conn.close()
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()
        for task in (self._sweeper, self._lag_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._server.wait_closed()
        self._server = None

    def _take_queued(self) -> list[socket.socket]:
        """Accept, without waiting, every connection queued on the listening sockets."""
        assert self._server is not None
        taken: list[socket.socket] = []
        for listener in self._server.sockets:
            with socket.socket(fileno=os.dup(listener.fileno())) as sock:
                sock.setblocking(False)
                while True:
                    try:
                        conn, _ = sock.accept()
                    except OSError:  # BlockingIOError: the queue is empty
                        break
                    conn.setblocking(False)
                    taken.append(conn)
        return taken

    async def __aenter__(self) -> HttpServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
