"""A real ``redis-server`` on loopback, owned by the caller: for tests, benchmarks and demos.

Each instance runs in its own temporary folder on a free port, with AOF on (``appendfsync everysec``, as a
durable pipeline needs) and RDB snapshots off. ``kill`` is a SIGKILL (a crash), ``restart`` starts it again
on the same port and folder, so it reloads its AOF; ``stop`` ends it and removes the folder. Nothing is left
running: the process is a child of ours, killed on stop and on interpreter exit.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["LocalRedis"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """``with LocalRedis() as server: server.url``: a redis-server for the duration of the block."""

    def __init__(self, appendfsync: str = "everysec", appendonly: bool = True) -> None:
        if shutil.which("redis-server") is None:
            raise FileNotFoundError("redis-server is not installed (scripts/setup.sh installs Debian's package)")
        self.dir = Path(tempfile.mkdtemp(prefix="otpserve-redis-"))
        self.port = _free_port()
        self.appendfsync = appendfsync
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        """Start the server and wait until it answers PING (10 s at most)."""
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {(self.dir / 'redis.log').read_text()[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"redis-server on port {self.port} did not answer within 10 s")

    def kill(self) -> None:
        """SIGKILL the server (a crash: what AOF has written survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Start again on the same port and folder (the AOF is reloaded)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """End the server and remove its folder."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
