"""OS-process children: a ``multiprocessing`` process watched by the event loop.

Why each piece is here:

- Start method ``forkserver`` (default) or ``spawn``, never ``fork``: forking a threaded process (numpy,
  the event loop's executor) copies locks held by other threads. ``forkserver`` is the fast one: children
  fork from a small single-threaded server instead of booting a fresh interpreter.
- Exit detection is event-driven: the process's ``sentinel`` fd becomes readable when it exits, and
  ``loop.add_reader`` turns that into a callback — no polling loop, exit seen in well under 100 ms
  whatever the cause (exception, ``os._exit``, SIGKILL, segfault).
- No orphans: each child sets ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` first thing, so it dies when its parent
  dies, even by SIGKILL, then checks that the supervising process is still alive (it may have died before
  the prctl). With ``forkserver`` the parent is the fork server, which exits when our process dies (its
  pipe from us reaches EOF), so the chain holds. PDEATHSIG follows the *thread* that forked: start
  processes from the event-loop thread, not from a short-lived thread.
- Children ignore SIGINT: a Ctrl-C in the terminal reaches the whole process group, but shutting workers
  down is the supervisor's job (it sends SIGTERM, then SIGKILL after the shutdown timeout).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .reason import ExitReason

__all__ = ["ProcessChild", "start_process"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(supervisor_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died between our fork and the prctl: then nobody would ever kill us.
    try:
        os.kill(supervisor_pid, 0)
    except ProcessLookupError:
        os._exit(1)
    except PermissionError:
        pass


def _process_main(supervisor_pid: int, target: Callable[..., Any], args: Sequence[Any]) -> None:
    _die_with_parent(supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    target(*args)


class ProcessChild:
    """A running OS process under supervision. Create with ``start_process``."""

    def __init__(self, process: multiprocessing.process.BaseProcess, loop: asyncio.AbstractEventLoop) -> None:
        self._process = process
        self._pid: int = process.pid  # type: ignore[assignment]
        self._name = process.name
        self._loop = loop
        self._sentinel = process.sentinel
        self._exited: asyncio.Future[ExitReason] = loop.create_future()
        self._stop_requested = False
        self._killed = False
        self.exitcode: int | None = None
        loop.add_reader(self._sentinel, self._on_exit)

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self._pid

    @property
    def name(self) -> str:
        """The process name (``name`` given to ``start_process``, else multiprocessing's default)."""
        return self._name

    def is_alive(self) -> bool:
        """True until the process's exit has been seen."""
        return not self._exited.done()

    def __repr__(self) -> str:
        return f"<ProcessChild {self._name} pid={self._pid}>"

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._sentinel)
        # The sentinel is readable only once the process is gone, so this join does not block
        # (spawn: waitpid on an exited child; forkserver: reads the status the server already wrote).
        self._process.join()
        code = self._process.exitcode
        self.exitcode = code
        self._process.close()
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
        # Only signalled before _on_exit reaped it, so the pid cannot have been reused yet.
        try:
            os.kill(self._pid, signum)
        except ProcessLookupError:
            pass


def start_process(
    target: Callable[..., Any],
    args: Sequence[Any] = (),
    name: str | None = None,
    method: str = "forkserver",
) -> ProcessChild:
    """Start ``target(*args)`` in a new OS process and return it as a supervisable child.

    Must be called from a running event loop's thread. ``target`` and ``args`` must pickle.
    """
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"method must be 'forkserver' or 'spawn' (never 'fork'), got {method!r}")
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context(method)
    process = ctx.Process(target=_process_main, args=(os.getpid(), target, tuple(args)), name=name, daemon=False)
    process.start()
    # We reap it ourselves (ProcessChild._on_exit). Leaving it in multiprocessing's registry would make
    # interpreter exit join it (a hang if nobody stopped it) and let active_children() reap it behind
    # our back.
    # Not daemonic, so a process child may run a supervision tree of its own.
    multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
    return ProcessChild(process, loop)
