"""DynamicSupervisor: children started on demand, each restarted alone (OTP's ``DynamicSupervisor``).

Children are anonymous (a handle, not an id, names them) and restarted one_for_one per their restart type.
``max_children`` (default: no limit, as in OTP) bounds how many run at once. Restart intensity and
escalation are those of ``Supervisor``.
"""

from __future__ import annotations

from typing import Self

from .child import Child, ChildSpec
from .errors import ChildNotFound, ChildStartError, MaxChildrenReached
from .reason import ExitReason
from .restart import Backoff
from .supervision import SupervisorBase, _ChildRecord

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor(SupervisorBase):
    """Supervises children started on demand by ``start_child``, each restarted alone (OTP's DynamicSupervisor)."""

    def __init__(
        self,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if max_children is not None and max_children < 0:
            raise ValueError(f"max_children must be >= 0 or None, got {max_children!r}")
        super().__init__(name=name, max_restarts=max_restarts, max_seconds=max_seconds, backoff=backoff)
        self.max_children = max_children

    async def start(self) -> Self:
        """Start the supervisor with no children; return it."""
        self._begin()
        self._launch_run()
        return self

    async def start_child(self, spec: ChildSpec) -> Child:
        """Start a child from ``spec``; raises MaxChildrenReached when ``max_children`` run already."""
        async with self._lock:
            if not self.is_alive():
                raise RuntimeError(f"{self!r} is not running")
            if self.max_children is not None and len(self._records) >= self.max_children:
                raise MaxChildrenReached(self.label, self.max_children)
            rec = _ChildRecord(spec)
            try:
                child = await self._start_record(rec)
            except Exception as exc:
                raise ChildStartError(self.label, spec.id) from exc
            self._records.append(rec)
            return child

    async def terminate_child(self, child: Child | int) -> ExitReason | None:
        """Stop the child (a handle from start_child, or its OS pid) and forget it."""
        async with self._lock:
            for rec in self._records:
                if rec.child is not None and (rec.child is child or rec.child.pid == child):
                    reason = await self._stop_record(rec)
                    self._records.remove(rec)
                    return reason
            raise ChildNotFound(self.label, child)

    async def _on_child_exit(self, rec: _ChildRecord) -> None:
        rec.status = "restarting"

    async def _handle_exit(self, rec: _ChildRecord, child: Child | None, reason: ExitReason) -> float | None:
        delay = await super()._handle_exit(rec, child, reason)
        # A dynamic child that is not restarted has no id to restart it by: forget it.
        if rec.status == "terminated" and rec in self._records:
            self._records.remove(rec)
        return delay
