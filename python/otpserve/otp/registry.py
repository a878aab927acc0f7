"""Named registration: the analog of registering a process name (``name: :counter``) and ``whereis/1``.

One table per Python process. A name is released when its holder exits.
"""

from __future__ import annotations

from typing import Any

from .errors import AlreadyRegistered, NoProc

__all__ = ["register", "registered", "unregister", "whereis"]

_names: dict[str, Any] = {}


def _alive(holder: Any) -> bool:
    is_alive = getattr(holder, "is_alive", None)
    return bool(is_alive()) if callable(is_alive) else True


def register(name: str, holder: Any) -> None:
    """Register ``holder`` as ``name``; raise AlreadyRegistered if another live holder has it."""
    current = _names.get(name)
    if current is not None and current is not holder and _alive(current):
        raise AlreadyRegistered(name, current)
    _names[name] = holder


def unregister(name: str, holder: Any) -> None:
    """Release ``name`` if ``holder`` still owns it."""
    if _names.get(name) is holder:
        del _names[name]


def whereis(name: str) -> Any | None:
    """The live server or supervisor registered as ``name``, or None."""
    holder = _names.get(name)
    return holder if holder is not None and _alive(holder) else None


def lookup(name: str) -> Any:
    """The live holder of ``name``; raise NoProc (OTP's ``noproc``) if there is none."""
    holder = whereis(name)
    if holder is None:
        raise NoProc(name)
    return holder


def registered() -> list[str]:
    """The names that have a live holder (OTP's ``registered/0``)."""
    return [name for name, holder in list(_names.items()) if _alive(holder)]
