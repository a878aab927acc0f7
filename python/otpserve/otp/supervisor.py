"""Supervisor: a fixed, ordered list of children restarted by strategy (OTP's ``Supervisor``).

- ``one_for_one``: only the child that exited is restarted.
- ``one_for_all``: every other child is stopped (reverse start order) and all are restarted in order.
- ``rest_for_one``: the children started after it are stopped and restarted with it.

Temporary siblings stopped by a strategy are not restarted, as in OTP. More than ``max_restarts`` restarts in
``max_seconds`` (defaults 3 and 5, OTP's) and the supervisor stops everything and exits with an
``escalated`` reason that its own supervisor (or ``await sup.wait()``) sees.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Self

from .child import Child, ChildSpec
from .errors import ChildNotFound, ChildRunning, ChildStartError
from .reason import ExitReason
from .restart import Backoff
from .supervision import ChildInfo, SupervisorBase, _ChildRecord, log

__all__ = ["ChildInfo", "Strategy", "Supervisor"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]


class Supervisor(SupervisorBase):
    """Supervises a fixed, ordered list of children, restarted per ``strategy`` (OTP's Supervisor)."""

    def __init__(
        self,
        children: Iterable[ChildSpec],
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(f"strategy must be one_for_one, one_for_all or rest_for_one, got {strategy!r}")
        super().__init__(name=name, max_restarts=max_restarts, max_seconds=max_seconds, backoff=backoff)
        self.strategy = strategy
        self._specs = list(children)
        ids = [s.id for s in self._specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"child ids must be unique, got {ids!r}")

    async def start(self) -> Self:
        """Start the children in order; if one fails, stop the started ones and raise ChildStartError."""
        self._begin()
        for spec in self._specs:
            rec = _ChildRecord(spec)
            try:
                await self._start_record(rec)
            except BaseException as exc:
                await self._shutdown_all()
                self._finish(ExitReason.exception(exc) if isinstance(exc, Exception) else ExitReason.shutdown())
                if isinstance(exc, Exception):
                    raise ChildStartError(self.label, spec.id) from exc
                raise
            self._records.append(rec)
        self._launch_run()
        return self

    async def _on_child_exit(self, rec: _ChildRecord) -> None:
        if self.strategy == "one_for_one":
            rec.status = "restarting"
            return
        index = self._records.index(rec)
        affected = self._records if self.strategy == "one_for_all" else self._records[index:]
        for other in reversed(affected):
            if other is rec:
                continue
            if other.child is not None:
                await self._stop_record(other)
                if other.spec.restart == "temporary":
                    self._records.remove(other)
                else:
                    other.status = "restarting"
        rec.status = "restarting"

    # ---- OTP's child management API ---------------------------------------------------------------

    def _find(self, child_id: Any) -> _ChildRecord:
        for rec in self._records:
            if rec.spec.id == child_id:
                return rec
        raise ChildNotFound(self.label, child_id)

    async def start_child(self, spec: ChildSpec) -> Child:
        """Add a child at the end of the start order and start it."""
        async with self._lock:
            if not self.is_alive():
                raise RuntimeError(f"{self!r} is not running")
            if any(r.spec.id == spec.id for r in self._records):
                raise ValueError(f"{self.label} already has a child with id {spec.id!r}")
            rec = _ChildRecord(spec)
            try:
                child = await self._start_record(rec)
            except Exception as exc:
                raise ChildStartError(self.label, spec.id) from exc
            self._records.append(rec)
            return child

    async def terminate_child(self, child_id: Any) -> None:
        """Stop a child per its shutdown, keeping its spec for restart_child (a temporary one is deleted)."""
        async with self._lock:
            rec = self._find(child_id)
            await self._stop_record(rec)
            rec.status = "terminated"
            if rec.spec.restart == "temporary":
                self._records.remove(rec)

    async def restart_child(self, child_id: Any) -> Child:
        """Start a terminated child again from its spec."""
        async with self._lock:
            rec = self._find(child_id)
            if rec.child is not None:
                raise ChildRunning(self.label, child_id)
            try:
                return await self._start_record(rec)
            except Exception as exc:
                log.exception("%r could not restart child %r", self, child_id)
                raise ChildStartError(self.label, child_id) from exc

    async def delete_child(self, child_id: Any) -> None:
        """Forget a terminated child's spec."""
        async with self._lock:
            rec = self._find(child_id)
            if rec.child is not None:
                raise ChildRunning(self.label, child_id)
            self._records.remove(rec)
