"""Children: what a supervisor starts (``ChildSpec``) and what it holds while they run (``Child``).

A ``ChildSpec`` says how to start a child and how to treat its exit. Its ``start`` is a zero-argument
callable returning an awaitable of a running ``Child``; the supervisor calls it in its own process at every
(re)start, so the caller can set up per-start plumbing (pipes, shared memory) before launching.

Anything with the ``Child`` shape can be supervised: an asyncio task (``TaskChild``, here), an OS process
(``otpserve.otp.process.ProcessChild``), a ``GenServer``, or another supervisor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from .reason import ExitReason

__all__ = ["Child", "ChildSpec", "Restart", "Shutdown", "TaskChild", "start_task"]

log = logging.getLogger(__name__)

Restart = Literal["permanent", "transient", "temporary"]
Shutdown = float | Literal["brutal_kill", "infinity"]

# After a task ignored its cancellation for the whole shutdown timeout it is cancelled again ("killed");
# a task cannot be killed harder than that, so past this grace it is abandoned with an error log.
TASK_KILL_GRACE = 1.0


@runtime_checkable
class Child(Protocol):
    """A running child as its supervisor sees it."""

    @property
    def pid(self) -> int | None:
        """OS pid, or None for a child living in this process."""
        ...

    async def wait(self) -> ExitReason:
        """Complete when the child has exited, with why. Safe to call many times and to cancel."""
        ...

    async def stop(self, timeout: float | None = 5.0) -> Any:
        """Ask politely (cancel / SIGTERM), kill after ``timeout`` seconds (None: wait forever)."""
        ...

    def kill(self) -> None:
        """Stop now, without cleanup."""
        ...


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child and what to do when it exits (OTP's child specification).

    - ``restart``: permanent (always restarted), transient (only after an abnormal exit), temporary (never).
    - ``shutdown``: seconds to wait after the polite stop before killing, ``"brutal_kill"`` (kill at once)
      or ``"infinity"``. Workers default to 5 s as in OTP; use ``"infinity"`` for supervisors.
    - ``type``: ``"worker"`` or ``"supervisor"`` (only reported by ``count_children``).
    """

    id: Any
    start: Callable[[], Awaitable[Child]]
    restart: Restart = "permanent"
    shutdown: Shutdown = 5.0
    type: Literal["worker", "supervisor"] = "worker"

    def __post_init__(self) -> None:
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ValueError(f"restart must be permanent, transient or temporary, got {self.restart!r}")
        if self.type not in ("worker", "supervisor"):
            raise ValueError(f"type must be worker or supervisor, got {self.type!r}")
        if isinstance(self.shutdown, str):
            if self.shutdown not in ("brutal_kill", "infinity"):
                raise ValueError(f"shutdown must be seconds, 'brutal_kill' or 'infinity', got {self.shutdown!r}")
        elif not self.shutdown >= 0:
            raise ValueError(f"shutdown must be >= 0 seconds, got {self.shutdown!r}")
        if not callable(self.start):
            raise TypeError(f"start must be a zero-argument callable, got {self.start!r}")

    @classmethod
    def task(cls, id: Any, coro_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **opts: Any) -> ChildSpec:
        """A child that is an asyncio task running ``coro_fn(*args)`` in this process."""

        async def start() -> Child:
            """Start the task (the spec's ``start``, called at every (re)start)."""
            return start_task(coro_fn, *args, name=str(id))

        return cls(id, start, **opts)

    @classmethod
    def process(cls, id: Any, target: Callable[..., Any], *args: Any, method: str = "zygote", **opts: Any) -> ChildSpec:
        """A child that is an OS process running ``target(*args)`` (target and args must pickle)."""
        from .process import start_process

        async def start() -> Child:
            """Start the OS process (the spec's ``start``, called at every (re)start)."""
            return start_process(target, args, name=str(id), method=method)

        return cls(id, start, **opts)


class TaskChild:
    """A child that is an asyncio task. Cancellation is its polite stop; a second cancel is its kill."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._stop_requested = False
        self._killed = False

    @property
    def pid(self) -> None:
        """Always None: a task lives in this process."""
        return None

    @property
    def task(self) -> asyncio.Task[Any]:
        """The asyncio task this child runs as."""
        return self._task

    def __repr__(self) -> str:
        return f"<TaskChild {self._task.get_name()}>"

    async def wait(self) -> ExitReason:
        """Wait for the task to finish and return why: normal, shutdown, killed or exception."""
        await asyncio.wait({self._task})
        return self._reason()

    def _reason(self) -> ExitReason:
        if self._task.cancelled():
            return ExitReason.killed() if self._killed else ExitReason.shutdown()
        exc = self._task.exception()
        if exc is not None:
            return ExitReason.exception(exc)
        return ExitReason.shutdown() if self._stop_requested else ExitReason.normal()

    async def stop(self, timeout: float | None = 5.0) -> ExitReason:
        """Cancel the task, cancel it again (kill) after ``timeout`` seconds; return its exit reason."""
        if not self._task.done():
            self._stop_requested = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout)
            if not self._task.done():
                self.kill()
                await asyncio.wait({self._task}, timeout=TASK_KILL_GRACE)
                if not self._task.done():
                    log.error("task %s ignored cancellation twice and is abandoned", self._task.get_name())
                    return ExitReason.killed()
        return await self.wait()

    def kill(self) -> None:
        """Cancel the task as a kill (reason ``killed``); a no-op once it is done."""
        if not self._task.done():
            self._killed = True
            self._task.cancel()


def start_task(coro_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None) -> TaskChild:
    """Run ``coro_fn(*args)`` as a supervised task. Its owner is whoever holds the returned child."""
    return TaskChild(asyncio.get_running_loop().create_task(coro_fn(*args), name=name))
