"""Telemetry: a tiny analog of Erlang's ``:telemetry`` — named events, attached handlers, no policy.

Every layer may emit events (``execute``); metrics and logging attach handlers to the events they care
about. An event is a tuple of strings such as ``("otpserve", "supervisor", "child", "exited")``, with a dict
of *measurements* (numbers) and a dict of *metadata* (anything). Handlers run synchronously in the
emitting thread, so they must be cheap; one that raises is detached and logged and never breaks the
emitter, exactly as in ``:telemetry``.

A handler is ``fn(event, measurements, metadata, config)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Event",
    "Handler",
    "HandlerFunction",
    "attach",
    "attach_many",
    "attached",
    "detach",
    "execute",
    "list_handlers",
    "span",
]

log = logging.getLogger(__name__)

Event = tuple[str, ...]
HandlerFunction = Callable[[Event, dict[str, Any], dict[str, Any], Any], None]


@dataclass(frozen=True)
class Handler:
    """An attached handler: its unique id, the events it listens to, its function and its config."""

    id: str
    events: tuple[Event, ...]
    function: HandlerFunction
    config: Any = None


_lock = threading.Lock()
_by_id: dict[str, Handler] = {}
# event -> handlers in attach order; rebuilt on attach/detach so execute() reads without locking.
_by_event: dict[Event, tuple[Handler, ...]] = {}


def _rebuild() -> None:
    table: dict[Event, list[Handler]] = {}
    for handler in _by_id.values():
        for event in handler.events:
            table.setdefault(event, []).append(handler)
    global _by_event
    _by_event = {event: tuple(handlers) for event, handlers in table.items()}


def attach_many(handler_id: str, events: Iterable[Event], function: HandlerFunction, config: Any = None) -> None:
    """Attach ``function`` to every event in ``events`` under one id (ids are unique, as in :telemetry)."""
    evs = tuple(tuple(e) for e in events)
    if not evs or any(not e or not all(isinstance(p, str) for p in e) for e in evs):
        raise ValueError(f"events must be non-empty tuples of strings, got {evs!r}")
    with _lock:
        if handler_id in _by_id:
            raise ValueError(f"a telemetry handler with id {handler_id!r} is already attached")
        _by_id[handler_id] = Handler(handler_id, evs, function, config)
        _rebuild()


def attach(handler_id: str, event: Event, function: HandlerFunction, config: Any = None) -> None:
    """Attach ``function`` to one event."""
    attach_many(handler_id, [event], function, config)


def detach(handler_id: str) -> bool:
    """Detach a handler; returns False when no handler had that id."""
    with _lock:
        if _by_id.pop(handler_id, None) is None:
            return False
        _rebuild()
        return True


def attached(event: Event) -> bool:
    """Whether any handler listens to ``event``: lets a hot loop skip building events nobody reads."""
    return event in _by_event


def list_handlers(prefix: Event = ()) -> list[Handler]:
    """Handlers attached to events that start with ``prefix``."""
    n = len(prefix)
    return [h for h in list(_by_id.values()) if any(e[:n] == tuple(prefix) for e in h.events)]


def execute(
    event: Event, measurements: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None
) -> None:
    """Emit ``event`` to its handlers. Never raises because of a handler."""
    handlers = _by_event.get(tuple(event))
    if not handlers:
        return
    meas = dict(measurements or {})
    meta = dict(metadata or {})
    for handler in handlers:
        try:
            handler.function(tuple(event), meas, meta, handler.config)
        except Exception:
            log.exception("telemetry handler %r failed on event %r and was detached", handler.id, event)
            detach(handler.id)


@contextmanager
def span(prefix: Event, metadata: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Emit ``prefix + ("start",)`` now and ``("stop",)`` or ``("exception",)`` when the block ends.

    Yields a dict the block may fill with extra stop metadata. Measurements: ``system_time`` and
    ``monotonic_time`` on start, ``duration`` (seconds, monotonic) on stop/exception.
    """
    meta = dict(metadata or {})
    start = time.monotonic()
    execute((*prefix, "start"), {"system_time": time.time(), "monotonic_time": start}, meta)
    extra: dict[str, Any] = {}
    try:
        yield extra
    except BaseException as exc:
        execute(
            (*prefix, "exception"),
            {"duration": time.monotonic() - start, "monotonic_time": time.monotonic()},
            {**meta, **extra, "kind": type(exc).__name__, "reason": exc},
        )
        raise
    execute(
        (*prefix, "stop"),
        {"duration": time.monotonic() - start, "monotonic_time": time.monotonic()},
        {**meta, **extra},
    )
