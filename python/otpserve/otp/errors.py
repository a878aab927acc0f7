"""Errors raised by ``otpserve.otp``: types a caller can catch, with messages that name the server/child."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyRegistered",
    "CallTimeout",
    "ChildNotFound",
    "ChildRunning",
    "ChildStartError",
    "MaxChildrenReached",
    "NoProc",
    "OTPError",
    "ServerExited",
]


class OTPError(Exception):
    """Base class of every error raised by otpserve.otp."""


class CallTimeout(OTPError, TimeoutError):
    """A ``GenServer.call`` got no reply in time. A reply that arrives later is dropped."""

    def __init__(self, server: str, timeout: float, message: Any = None) -> None:
        self.server, self.timeout, self.message = server, timeout, message
        super().__init__(f"call to {server} timed out after {timeout:g} s (message {message!r})")


class ServerExited(OTPError):
    """The server exited before replying: it crashed in a handler (``__cause__`` holds the exception),
    was stopped, or was already gone. ``reason`` is its ``ExitReason``."""

    def __init__(self, server: str, reason: Any, message: Any = None) -> None:
        self.server, self.reason, self.message = server, reason, message
        super().__init__(f"{server} exited with reason {reason} before replying to {message!r}")


class NoProc(OTPError, LookupError):
    """No live server is registered under that name (OTP's ``noproc``)."""

    def __init__(self, name: Any) -> None:
        self.name = name
        super().__init__(f"no live process registered as {name!r}")


class AlreadyRegistered(OTPError):
    """``name`` is already registered to another live holder (OTP's ``{already_started, pid}``)."""

    def __init__(self, name: str, holder: Any) -> None:
        self.name, self.holder = name, holder
        super().__init__(f"name {name!r} is already registered to {holder!r}")


class ChildNotFound(OTPError, LookupError):
    """The supervisor has no child with that id (a DynamicSupervisor: that handle or pid) (OTP's ``not_found``)."""

    def __init__(self, supervisor: str, child_id: Any) -> None:
        self.supervisor, self.child_id = supervisor, child_id
        super().__init__(f"{supervisor} has no child with id {child_id!r}")


class ChildRunning(OTPError):
    """restart_child/delete_child on a child that is still running (OTP's ``running``)."""

    def __init__(self, supervisor: str, child_id: Any) -> None:
        self.supervisor, self.child_id = supervisor, child_id
        super().__init__(f"child {child_id!r} of {supervisor} is running; terminate_child it first")


class ChildStartError(OTPError):
    """A child's ``start`` raised; ``__cause__`` is the original exception."""

    def __init__(self, supervisor: str, child_id: Any) -> None:
        self.supervisor, self.child_id = supervisor, child_id
        super().__init__(f"{supervisor} could not start child {child_id!r}")


class MaxChildrenReached(OTPError):
    """``start_child`` when ``max_children`` children already run (OTP's ``max_children``)."""

    def __init__(self, supervisor: str, max_children: int) -> None:
        self.supervisor, self.max_children = supervisor, max_children
        super().__init__(f"{supervisor} already runs max_children={max_children} children")
