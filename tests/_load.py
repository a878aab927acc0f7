"""Steady HTTP load from a background thread: keep-alive clients that count every outcome.

Each client sends one request at a time on its own connection and, when the connection fails, counts the
request as failed and opens a new one. Outcomes: ``ok`` (200 with the expected body), ``status`` (any
other status, by code), ``reset`` (the connection closed or broke before an answer came back).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter


class Load:
    """``with Load(port, body, clients) as load:`` ... ``load.counts()``; stops on exit."""

    def __init__(self, port: int, body: bytes, clients: int = 8, path: str = "/v2/models/mlp/infer") -> None:
        self.port = port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.clients = clients
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)
        self.failures: list[tuple[float, str]] = []  # (monotonic time, what) for each failed request
        self.latencies: list[float] = []  # seconds, of each request answered 200

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the clients and wait for them."""
        self._stop.set()
        self._thread.join(30)

    def counts(self) -> Counter[str]:
        """A snapshot of the outcomes so far."""
        with self._lock:
            return Counter(self._counts)

    def wait_for(self, n_ok: int, within: float = 30.0) -> None:
        """Wait until ``n_ok`` more requests than now have been answered 200."""
        target = self.counts()["ok"] + n_ok
        deadline = time.monotonic() + within
        while self.counts()["ok"] < target:
            assert time.monotonic() < deadline, f"load stalled: {self.counts()}"
            time.sleep(0.01)

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1
            if what != "ok":
                self.failures.append((time.monotonic(), what))

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    async def _client(self) -> None:
        reader = writer = None
        while not self._stop.is_set():
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.01)  # refused: nothing was sent, nothing is counted
                    continue
            assert reader is not None
            try:
                t0 = time.perf_counter()
                writer.write(self.request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await asyncio.wait_for(reader.readexactly(length), 30)
                close = b"connection: close" in head.lower()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                self._count("reset")
                writer.close()
                reader = writer = None
                continue
            ok = status == 200 and b'"outputs"' in body
            if ok:
                self.latencies.append(time.perf_counter() - t0)
            self._count("ok" if ok else f"status {status}")
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()
