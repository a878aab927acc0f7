"""`otpserve serve` as a user runs it, under load, for killing its processes one kind at a time.

Shared by tests/test_let_it_crash.py (which asserts) and bench/let_it_crash.py (which measures): start the
server, read its process tree, kill one process of a kind, and time until the tree is whole again.

The tree of ``otpserve serve --acceptors A --partitions P``: the top process, its zygote and A acceptors;
under each acceptor, its own zygote and P partition workers. Whole means all of them run and A listening
sockets are open on the port (an acceptor listens once its workers are up).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from _procs import alive, by_kind, descendants, parent
from otpserve.models import MLP

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
KINDS = ("partition", "acceptor", "acceptor's zygote", "top's zygote")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners(port: int) -> int:
    """How many sockets listen on ``port`` (each acceptor has its own: SO_REUSEPORT)."""
    hexport = f":{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(hexport) and fields[3] == "0A":
            count += 1
    return count


class Served:
    """A running ``otpserve serve`` process and what can be read of its tree."""

    def __init__(self, proc: subprocess.Popen, port: int, acceptors: int, partitions: int) -> None:
        self.proc = proc
        self.port = port
        self.acceptors = acceptors
        self.partitions = partitions
        self.output: list[str] = []  # what it printed after its first line (read all along: a full pipe blocks it)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def tree(self) -> dict[str, list[int]]:
        """Live processes by kind; the two kinds of zygote told apart by their parent."""
        kinds = by_kind(self.proc.pid)
        zygotes = kinds.pop("zygote", [])
        kinds["top's zygote"] = [z for z in zygotes if parent(z) == self.proc.pid]
        kinds["acceptor's zygote"] = [z for z in zygotes if parent(z) != self.proc.pid]
        return kinds

    def whole(self) -> bool:
        """Every process of the tree runs and every acceptor listens."""
        kinds = self.tree()
        a, p = self.acceptors, self.partitions
        want = {"acceptor": a, "partition": a * p, "acceptor's zygote": a, "top's zygote": 1}
        return all(len(kinds.get(k, [])) == n for k, n in want.items()) and listeners(self.port) == a

    def wait_whole(self, within: float) -> float:
        """Seconds until the tree is whole (polled every 5 ms); fails past ``within``."""
        t0 = time.monotonic()
        while not self.whole():
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}"
            assert time.monotonic() - t0 < within, f"the tree is not whole after {within} s: {self.tree()}"
            time.sleep(0.005)
        return time.monotonic() - t0

    def kill(self, kind: str) -> int:
        """SIGKILL one process of ``kind``; its pid."""
        pid = self.tree()[kind][0]
        os.kill(pid, signal.SIGKILL)
        return pid


@contextmanager
def served(home: Path, acceptors: int = 2, partitions: int = 1, *extra: str):
    """``otpserve serve`` on a free port with a small MLP, whole and answering; stopped (and checked) after."""
    rng = np.random.default_rng(0)
    model = home / "model"
    MLP([(rng.standard_normal((4, 3)).astype(np.float32), np.zeros(3, np.float32))]).save(model)
    port = free_port()
    cmd = [sys.executable, "-m", "otpserve.cli", "serve", str(model), "--port", str(port)]
    cmd += ["--acceptors", str(acceptors), "--partitions", str(partitions), *extra]
    env = {**os.environ, "OTPSERVE_HOME": str(home / "home")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    s = Served(proc, port, acceptors, partitions)
    try:
        assert "serving" in line, line + "".join(s.output)
        s.wait_whole(60)
        yield s
    finally:
        everything = descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        s._reader.join(10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in everything):
            assert time.monotonic() < deadline, f"left behind: {[p for p in everything if alive(p)]}"
            time.sleep(0.05)
