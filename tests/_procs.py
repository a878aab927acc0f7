"""Reading a process tree from /proc: who is below whom, what each is (its comm name), whether it runs."""

from __future__ import annotations

import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it holds nothing but its pid)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def comm(pid: int) -> str:
    """The process's name (otpserve sets it: acceptor-0, partition-1, otpserve-zygote)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def parent(pid: int) -> int | None:
    """The parent pid, or None once the process is gone."""
    stat = _stat(pid)
    return int(stat[1]) if stat is not None else None


def descendants(root: int) -> set[int]:
    """Every live process below ``root``."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                parents[int(entry.name)] = int(stat[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def by_kind(root: int) -> dict[str, list[int]]:
    """The live processes below ``root`` grouped by kind: acceptor, partition, zygote (from their names)."""
    kinds: dict[str, list[int]] = {}
    for pid in sorted(descendants(root)):
        name = comm(pid)
        kind = "zygote" if name == "otpserve-zygote" else name.rsplit("-", 1)[0]
        kinds.setdefault(kind, []).append(pid)
    return kinds


def wait_gone(pids, within: float) -> list[int]:
    """Wait up to ``within`` seconds for every pid to be gone; the ones still running."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]
