"""OS-process children: a process this process started, watched by the event loop.

Why each piece is here:

- Start method ``zygote`` (default) or ``spawn``, never ``fork``: forking a threaded process (numpy,
  the kernel's pool, the event loop's executor) copies locks held by other threads. ``zygote`` is the fast
  one: children fork from a small preloaded server, yet each is this process's own child and depends on
  nothing but it (see ``otpserve.otp.zygote``). ``spawn`` boots a fresh interpreter (~0.5 s with numpy).
- Exit detection is event-driven: a pidfd becomes readable when the process exits, ``loop.add_reader``
  turns that into a callback and we reap the process ourselves — no polling, exit seen in well under
  100 ms whatever the cause (exception, ``os._exit``, SIGKILL, segfault), with the kernel's exit status.
- No orphans: each child sets ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` first thing, once this process is its
  parent, so it dies when we die, even by SIGKILL, and with nothing else. PDEATHSIG follows the *thread*
  that is the parent: start processes from the event-loop thread, not from a short-lived thread.
- Children ignore SIGINT: a Ctrl-C in the terminal reaches the whole process group, but shutting workers
  down is the supervisor's job (it sends SIGTERM, then SIGKILL after the shutdown timeout).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

from .reason import ExitReason
from .zygote import PassFd, launch, reaper

__all__ = ["PassFd", "ProcessChild", "start_process"]

log = logging.getLogger(__name__)


class ProcessChild:
    """A running OS process under supervision. Create with ``start_process``."""

    def __init__(self, pid: int, pgid: int, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._pid = pid
        self._name = name
        self._loop = loop
        self._exited: asyncio.Future[ExitReason] = loop.create_future()
        self._stop_requested = False
        self._killed = False
        self.exitcode: int | None = None
        reaper.watch(pid, pgid, self._on_exit)

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self._pid

    @property
    def name(self) -> str:
        """The process name (``name`` given to ``start_process``; also its comm, cut to 15 bytes)."""
        return self._name

    def is_alive(self) -> bool:
        """True until the process's exit has been seen."""
        return not self._exited.done()

    def __repr__(self) -> str:
        return f"<ProcessChild {self._name} pid={self._pid}>"

    def _on_exit(self, code: int) -> None:
        self.exitcode = code
        if not self._exited.done():
            self._exited.set_result(self._reason(code))

    def _reason(self, code: int | None) -> ExitReason:
        if code is None:
            return ExitReason.exit_code(255)
        if self._stop_requested and code in (0, -signal.SIGTERM):
            return ExitReason.shutdown()
        if self._killed and code == -signal.SIGKILL:
            return ExitReason.killed()
        if code == 0:
            return ExitReason.normal()
        if code < 0:
            return ExitReason.signal(-code)
        return ExitReason.exit_code(code)

    async def wait(self) -> ExitReason:
        """Wait for the process to exit and return why; safe to call many times and to cancel."""
        return await asyncio.shield(self._exited)

    async def stop(self, timeout: float | None = 5.0) -> ExitReason:
        """SIGTERM, then SIGKILL if still alive after ``timeout`` seconds."""
        if not self._exited.done():
            self._stop_requested = True
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            except TimeoutError:
                self.kill()
        return await self.wait()

    def kill(self) -> None:
        """Send SIGKILL now (no cleanup); a no-op once the process has exited."""
        if not self._exited.done():
            self._killed = True
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        # Only signalled before we reaped it, so the pid cannot have been reused yet.
        try:
            os.kill(self._pid, signum)
        except ProcessLookupError:
            pass


def start_process(
    target: Callable[..., Any],
    args: Sequence[Any] = (),
    name: str | None = None,
    method: str = "zygote",
) -> ProcessChild:
    """Start ``target(*args)`` in a new OS process, a child of this one, and return it as a supervisable child.

    Must be called from a running event loop's thread. ``target`` and ``args`` must pickle; an argument
    wrapped in ``PassFd(fd)`` is handed over as a file descriptor (the child gets its own number).
    """
    if method not in ("zygote", "spawn"):
        raise ValueError(f"method must be 'zygote' or 'spawn' (never 'fork'), got {method!r}")
    loop = asyncio.get_running_loop()
    name = name or getattr(target, "__name__", "otpserve-child")
    pid, pgid = launch(target, args, name, method)
    return ProcessChild(pid, pgid, name, loop)
