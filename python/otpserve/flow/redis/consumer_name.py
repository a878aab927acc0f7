"""Stable consumer names: the same process slot gets the same name after every restart.

A consumer's pending entries belong to its name, so a name that changes at every restart (taskiq's random
UUIDs) orphans them until somebody's idle timeout. Here a pipeline process takes the lowest free *slot* on
its host for its stream and group, by holding an exclusive ``flock`` on a file named after them: the kernel
releases the lock the moment the process dies, SIGKILL and the OOM killer included, so a restarted
process gets its slot — and its name, ``<host>-<slot>`` — back at once and re-reads its own pending
entries first. Two processes on one host never share a name; a slot, once taken, stays with its process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
from pathlib import Path

__all__ = ["slot_consumer_name"]

_held: dict[tuple[str, int], tuple[int, str]] = {}  # (key, producer index) -> (lock fd, name), for this process


def _lock_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / "otpserve-consumer-slots"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def slot_consumer_name(url: str, stream: str, group: str, index: int = 0, host: str | None = None) -> str:
    """``<host>-<slot>``: the lowest slot no live process on this host holds for this stream and group.

    Each producer of a pipeline (``index``) holds a slot of its own; a producer restarted in the same process
    gets the same slot again. (``flock`` locks belong to an open file, so even two producers of one process
    cannot take the same slot.)
    """
    host = host or socket.gethostname()
    key = hashlib.sha256(f"{url}\0{stream}\0{group}".encode()).hexdigest()[:16]
    held = _held.get((key, index))
    if held is not None:
        return held[1]
    directory = _lock_dir()
    slot = 0
    while True:
        fd = os.open(directory / f"{key}-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            slot += 1
            continue
        name = f"{host}-{slot}"
        _held[(key, index)] = (fd, name)  # kept open (and locked) for the life of this process
        return name
