"""Machinery shared by ``Supervisor`` and ``DynamicSupervisor``: child records, exit watching, restart
intensity and backoff, ordered shutdown, telemetry.

One owner task per supervisor (``_run``) takes child exits from a queue and decides restarts; one watcher
task per running child turns ``child.wait()`` into a queue item. Every task is awaited by the supervisor
that created it. Anything that changes the child list holds ``_lock``, so exits, API calls
(``terminate_child`` ...) and ``stop`` never interleave; a backoff delay is slept *outside* the lock, so
``stop`` is never held up by it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Self

from .. import telemetry
from . import registry
from .child import Child, ChildSpec
from .reason import ExitReason
from .restart import Backoff, RestartIntensity

__all__ = ["ChildInfo", "SupervisorBase"]

log = logging.getLogger("otpserve.otp.supervisor")

# After a child was killed, how long to wait for it to be gone before giving up on it (with an error log).
KILL_WAIT = 5.0

ChildStatus = Literal["running", "restarting", "terminated"]


@dataclass(frozen=True)
class ChildInfo:
    """One row of ``which_children``. ``child``/``pid`` are None unless ``status == "running"``."""

    id: Any
    child: Child | None
    pid: int | None
    type: str
    restart: str
    status: ChildStatus


def _takes_reason(child: Child) -> bool:
    try:
        return "reason" in inspect.signature(child.stop).parameters
    except (TypeError, ValueError):
        return False


class _ChildRecord:
    __slots__ = ("child", "consecutive", "spec", "started_at", "status", "watcher")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.child: Child | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.status: ChildStatus = "terminated"
        self.started_at = 0.0
        self.consecutive = 0  # restarts in a row without staying up Backoff.reset_after seconds


class SupervisorBase:
    """What Supervisor and DynamicSupervisor share: child records, restarts, shutdown; itself a ``Child``."""

    def __init__(
        self,
        *,
        name: str | None,
        max_restarts: int,
        max_seconds: float,
        backoff: Backoff | None,
    ) -> None:
        self.name = name
        self._records: list[_ChildRecord] = []
        self._intensity = RestartIntensity(max_restarts, max_seconds)
        self._backoff = backoff
        self._lock = asyncio.Lock()
        self._exits: asyncio.Queue[tuple[_ChildRecord, Child | None, ExitReason]] = asyncio.Queue()
        self._run_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._reason: ExitReason | None = None
        self._stopping = False

    async def start(self) -> Self:
        """Start the supervisor (and, for a Supervisor, its children in order)."""
        raise NotImplementedError

    @classmethod
    async def start_link(cls, *args: Any, **kwargs: Any) -> Self:
        """``await Supervisor.start_link(children, ...)``: construct and start."""
        return await cls(*args, **kwargs).start()

    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: Any = None,
        restart: Literal["permanent", "transient", "temporary"] = "permanent",
        shutdown: float | Literal["brutal_kill", "infinity"] = "infinity",
        **kwargs: Any,
    ) -> ChildSpec:
        """A spec that starts a fresh ``cls(*args, **kwargs)`` at every (re)start, for nesting supervisors."""

        async def start() -> Child:
            """Construct and start a fresh supervisor (the spec's ``start``, called at every (re)start)."""
            return await cls(*args, **kwargs).start()

        child_id = id if id is not None else kwargs.get("name") or cls.__name__
        return ChildSpec(child_id, start, restart=restart, shutdown=shutdown, type="supervisor")

    # ---- identity -------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The registered name, else ``ClassName@id``."""
        return self.name or f"{type(self).__name__}@{id(self):x}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    @property
    def pid(self) -> None:
        """Supervisors live in this process (the ``Child`` protocol's pid)."""
        return None

    def is_alive(self) -> bool:
        """True from start until the supervisor has exited."""
        return self._run_task is not None and not self._done.is_set()

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the supervisor exited, or None while it has not."""
        return self._reason

    # ---- lifecycle --------------------------------------------------------------------------------

    def _begin(self) -> None:
        if self._run_task is not None or self._done.is_set():
            raise RuntimeError(f"{self!r} was already started")
        if self.name is not None:
            registry.register(self.name, self)

    def _launch_run(self) -> None:
        self._run_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.label} run")

    async def wait(self) -> ExitReason:
        """The supervisor's exit reason, once it has exited (``escalated`` after too many restarts)."""
        await self._done.wait()
        owned = [t for t in (self._run_task, *(r.watcher for r in self._records)) if t is not None]
        if owned:
            await asyncio.wait(owned)
        assert self._reason is not None
        return self._reason

    async def stop(self, reason: ExitReason | str = "shutdown", timeout: float | None = None) -> ExitReason:
        """Stop every child in reverse start order (each per its ``shutdown``), then exit with ``reason``.

        ``timeout`` bounds the whole stop; past it the remaining children are killed.
        """
        if self._run_task is None and not self._done.is_set():
            self._finish(ExitReason.coerce(reason))
        if not self._done.is_set():
            try:
                await asyncio.wait_for(self._stop(ExitReason.coerce(reason)), timeout)
            except TimeoutError:
                log.error("%r did not stop within %s s; killing its children", self, timeout)
                self.kill()
        return await self.wait()

    async def _stop(self, reason: ExitReason) -> None:
        async with self._lock:
            if self._done.is_set():
                return
            self._stopping = True
            assert self._run_task is not None
            self._run_task.cancel()
            await asyncio.wait({self._run_task})
            await self._shutdown_all()
            self._finish(reason)

    def kill(self) -> None:
        """Kill every child now, without shutdown timeouts (``brutal_kill`` of a whole tree)."""
        if self._done.is_set():
            return
        self._stopping = True
        if self._run_task is not None:
            self._run_task.cancel()
        for rec in reversed(self._records):
            if rec.child is not None:
                rec.child.kill()
                rec.child = None
                rec.status = "terminated"
            if rec.watcher is not None:
                rec.watcher.cancel()
        self._finish(ExitReason.killed())

    def _finish(self, reason: ExitReason) -> None:
        self._reason = reason
        self._done.set()
        if self.name is not None:
            registry.unregister(self.name, self)

    # ---- starting and stopping one child ---------------------------------------------------------

    async def _start_record(self, rec: _ChildRecord) -> Child:
        child = await rec.spec.start()
        rec.child = child
        rec.status = "running"
        rec.started_at = time.monotonic()
        rec.watcher = asyncio.get_running_loop().create_task(
            self._watch(rec, child), name=f"{self.label} watch {rec.spec.id!r}"
        )
        self._emit("started", rec, child)
        return child

    async def _watch(self, rec: _ChildRecord, child: Child) -> None:
        reason = await child.wait()
        self._exits.put_nowait((rec, child, reason))

    async def _stop_record(self, rec: _ChildRecord) -> ExitReason | None:
        """Stop ``rec``'s child per its shutdown option. Its exit then reads as stale to ``_run``."""
        child = rec.child
        if child is None:
            return None
        rec.child = None
        rec.status = "terminated"
        shutdown = rec.spec.shutdown
        try:
            if shutdown == "brutal_kill":
                child.kill()
            else:
                timeout = None if shutdown == "infinity" else float(shutdown)
                if _takes_reason(child):  # our GenServers and supervisors: exit "shutdown", as in OTP
                    await child.stop(reason="shutdown", timeout=timeout)  # type: ignore[call-arg]
                else:
                    await child.stop(timeout=timeout)
        except asyncio.CancelledError:
            child.kill()  # our own stop was cut short (its timeout): do not leave this child running
            raise
        except Exception:
            log.exception("stopping child %r of %r failed; killing it", rec.spec.id, self)
            child.kill()
        try:
            reason = await asyncio.wait_for(child.wait(), KILL_WAIT)
        except TimeoutError:
            log.error("child %r of %r is still running %s s after kill; abandoned", rec.spec.id, self, KILL_WAIT)
            reason = ExitReason.killed()
        await self._reap_watcher(rec)
        self._emit("exited", rec, child, reason)
        return reason

    async def _reap_watcher(self, rec: _ChildRecord) -> None:
        watcher, rec.watcher = rec.watcher, None
        if watcher is None:
            return
        if not watcher.done():
            watcher.cancel()
        await asyncio.wait({watcher})
        if not watcher.cancelled() and watcher.exception() is not None:
            log.error("watcher of child %r of %r failed", rec.spec.id, self, exc_info=watcher.exception())

    async def _shutdown_all(self) -> None:
        for rec in reversed(self._records):
            await self._stop_record(rec)

    # ---- the owner loop ---------------------------------------------------------------------------

    def _wants_restart(self, spec: ChildSpec, reason: ExitReason) -> bool:
        if spec.restart == "permanent":
            return True
        if spec.restart == "transient":
            return reason.abnormal
        return False

    async def _on_child_exit(self, rec: _ChildRecord) -> None:
        """Strategy hook, called under the lock: mark what must restart (status ``restarting``)."""
        rec.status = "restarting"

    async def _run(self) -> None:
        try:
            while True:
                rec, child, reason = await self._exits.get()
                async with self._lock:
                    if self._stopping:
                        return
                    delay = await self._handle_exit(rec, child, reason)
                    if self._done.is_set():
                        return  # escalated
                    if delay is None:
                        continue
                if delay > 0:
                    await asyncio.sleep(delay)
                async with self._lock:
                    if self._stopping:
                        return
                    await self._restart_pending()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%r crashed; stopping its children", self)
            self._stopping = True
            await self._shutdown_all()
            self._finish(ExitReason.exception(exc))

    async def _handle_exit(self, rec: _ChildRecord, child: Child | None, reason: ExitReason) -> float | None:
        """Returns the delay before restarting, or None when nothing is to be restarted."""
        if child is not None:
            if rec.child is not child:
                return None  # we stopped it ourselves; _stop_record already reported it
            rec.child = None
            await self._reap_watcher(rec)
            self._emit("exited", rec, child, reason)
            if not self._wants_restart(rec.spec, reason):
                rec.status = "terminated"
                if rec.spec.restart == "temporary":
                    self._records.remove(rec)
                return None
        elif rec.status != "restarting" or rec not in self._records:
            return None  # a failed restart of a child deleted or stopped since
        if not self._intensity.add_restart():
            await self._escalate(rec, reason)
            return None
        await self._on_child_exit(rec)
        if self._backoff is None:
            return 0.0
        if time.monotonic() - rec.started_at >= self._backoff.reset_after:
            rec.consecutive = 0
        rec.consecutive += 1
        return self._backoff.delay(rec.consecutive)

    async def _restart_pending(self) -> None:
        for rec in list(self._records):
            if rec.status != "restarting":
                continue
            try:
                child = await self._start_record(rec)
            except Exception as exc:
                log.exception("%r could not restart child %r", self, rec.spec.id)
                self._exits.put_nowait((rec, None, ExitReason.exception(exc)))
                return
            self._emit("restarted", rec, child)

    async def _escalate(self, rec: _ChildRecord, reason: ExitReason) -> None:
        log.error(
            "%r: more than %d restarts in %g s (last: child %r, %s); stopping all children and exiting",
            self,
            self._intensity.max_restarts,
            self._intensity.max_seconds,
            rec.spec.id,
            reason,
        )
        self._stopping = True
        await self._shutdown_all()
        exit_reason = ExitReason.escalated(rec.spec.id, reason)
        telemetry.execute(
            ("otpserve", "supervisor", "escalated"),
            {"restarts": self._intensity.recent, "system_time": time.time()},
            {
                "supervisor": self.label,
                "child_id": rec.spec.id,
                "reason": exit_reason,
                "child_reason": reason,
            },
        )
        self._finish(exit_reason)

    # ---- introspection ----------------------------------------------------------------------------

    def which_children(self) -> list[ChildInfo]:
        """One ChildInfo per child, in start order (OTP's ``which_children``)."""
        return [
            ChildInfo(
                r.spec.id,
                r.child,
                r.child.pid if r.child is not None else None,
                r.spec.type,
                r.spec.restart,
                r.status,
            )
            for r in self._records
        ]

    def count_children(self) -> dict[str, int]:
        """OTP's count: specs, active (running), supervisors, workers."""
        return {
            "specs": len(self._records),
            "active": sum(r.child is not None for r in self._records),
            "supervisors": sum(r.spec.type == "supervisor" for r in self._records),
            "workers": sum(r.spec.type == "worker" for r in self._records),
        }

    def _emit(self, what: str, rec: _ChildRecord, child: Child, reason: ExitReason | None = None) -> None:
        now = time.monotonic()
        measurements: dict[str, Any] = {"system_time": time.time()}
        if what == "exited":
            measurements["uptime"] = now - rec.started_at
        if what == "restarted":
            measurements["consecutive"] = rec.consecutive
        metadata: dict[str, Any] = {
            "supervisor": self.label,
            "child_id": rec.spec.id,
            "child_type": rec.spec.type,
            "pid": child.pid,
        }
        if reason is not None:
            metadata["reason"] = reason
        telemetry.execute(("otpserve", "supervisor", "child", what), measurements, metadata)
