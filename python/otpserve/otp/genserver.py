"""GenServer: a server with private state, one message at a time, over an asyncio task (OTP's GenServer).

Subclass and override the callbacks; each may be ``async def`` or plain ``def``::

    class Counter(GenServer):
        async def init(self, start):
            self.count = start
        async def handle_cast(self, msg):
            self.count += msg
        async def handle_call(self, msg, caller):
            return self.count          # the reply

    counter = await Counter.start_link(0, name="counter")
    counter.cast(5)
    assert await counter.call("get") == 5
    assert await GenServer.call("counter", "get") == 5   # by registered name, as in OTP

Returning ``NoReply`` from ``handle_call`` defers the reply (``caller.reply(value)`` later); returning
``Stop(reason, reply=...)`` from any handler stops the server after replying. An exception in a handler
crashes the server with that reason: a pending caller gets ``ServerExited`` (``__cause__`` = the exception),
and the supervisor, if any, restarts it. ``init`` runs in the caller of ``start_link``, so an error there
raises straight from ``start_link``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

from . import registry
from .child import Child, ChildSpec
from .errors import CallTimeout, NoProc, ServerExited
from .reason import ExitReason

__all__ = ["Caller", "GenServer", "NoReply", "Stop"]

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT = 5.0  # OTP's 5000 ms


class _NoReply:
    def __repr__(self) -> str:
        return "NoReply"


NoReply: Any = _NoReply()


@dataclass(frozen=True)
class Stop:
    """Return from a handler to stop the server with ``reason`` (after sending ``reply`` to a caller)."""

    reason: ExitReason | str = "normal"
    reply: Any = None


class Caller:
    """Who is waiting on a call (OTP's ``from``). A reply to a caller that gave up is dropped."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self._future = future

    def reply(self, value: Any) -> None:
        """Send ``value`` as the reply (for a deferred reply after ``handle_call`` returned NoReply)."""
        if not self._future.done():
            self._future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        """Make the caller's call raise ``exc`` instead of returning a reply."""
        if not self._future.done():
            self._future.set_exception(exc)

    @property
    def waiting(self) -> bool:
        """True while the caller still waits for a reply."""
        return not self._future.done()


class _ByNameOrInstance:
    """``server.call(msg)`` on an instance, ``GenServer.call(name_or_server, msg)`` on the class (OTP)."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method
        self.__doc__ = method.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> Callable[..., Any]:
        if obj is not None:
            return self._method.__get__(obj, owner)

        def by_name(server: GenServer | str, *args: Any, **kwargs: Any) -> Any:
            """Call the method on ``server``, or on the live server registered under that name."""
            target = registry.lookup(server) if isinstance(server, str) else server
            return self._method(target, *args, **kwargs)

        return by_name


class GenServer:
    """Base class of servers. Implements the ``Child`` protocol, so a supervisor can hold one."""

    # ---- callbacks to override ------------------------------------------------------------------

    async def init(self, init_arg: Any) -> None:
        """Set up state. Raising here makes ``start_link`` raise."""

    async def handle_call(self, message: Any, caller: Caller) -> Any:
        """Answer a call; return the reply, NoReply, or Stop(reason, reply=)."""
        raise NotImplementedError(f"{type(self).__name__} got call {message!r} but defines no handle_call")

    async def handle_cast(self, message: Any) -> Any:
        """Handle a cast (no reply); return Stop(reason) to stop the server."""
        raise NotImplementedError(f"{type(self).__name__} got cast {message!r} but defines no handle_cast")

    async def handle_info(self, message: Any) -> Any:
        """Handle a plain message from ``send``; by default logs it as unexpected."""
        log.warning("%r received unexpected message %r", self, message)

    async def terminate(self, reason: ExitReason) -> None:
        """Cleanup on stop or crash (not on kill, as in OTP)."""

    # ---- starting -------------------------------------------------------------------------------

    @classmethod
    async def start_link(cls, init_arg: Any = None, *, name: str | None = None) -> Self:
        """Create the server, register ``name``, run ``init`` in the caller, start its loop; return it."""
        server = cls()
        server._setup(name)
        if name is not None:
            registry.register(name, server)
        try:
            server._init_result(await _maybe_await(server.init(init_arg)))
        except BaseException:
            server._exit = ExitReason.shutdown()
            if name is not None:
                registry.unregister(name, server)
            raise
        server._task = asyncio.get_running_loop().create_task(server._loop(), name=f"GenServer {server.label}")
        server._task.add_done_callback(server._on_task_done)
        await server._started()
        return server

    def _on_task_done(self, task: asyncio.Task[ExitReason]) -> None:
        if task.cancelled() and self._exit is None:  # killed before its loop took its first step
            self._finish(ExitReason.killed())

    def _handled(self, result: Any) -> Any:
        """What handle_cast/handle_info returned, for behaviours that give it a meaning (a GenStage's events)."""
        return result

    def _init_result(self, result: Any) -> None:
        """What ``init`` returned, for behaviours built on GenServer (a GenStage's type and options)."""

    async def _started(self) -> None:
        """Runs once the server loop exists, before ``start_link`` returns (a GenStage subscribes here)."""

    @classmethod
    def child_spec(
        cls,
        init_arg: Any = None,
        *,
        name: str | None = None,
        id: Any = None,
        restart: Literal["permanent", "transient", "temporary"] = "permanent",
        shutdown: float | Literal["brutal_kill", "infinity"] = 5.0,
    ) -> ChildSpec:
        """A spec that starts ``cls.start_link(init_arg, name=name)`` at every (re)start."""

        async def start() -> Child:
            """Start a fresh server (the spec's ``start``, called at every (re)start)."""
            return await cls.start_link(init_arg, name=name)

        child_id = id if id is not None else name or cls.__name__
        return ChildSpec(child_id, start, restart=restart, shutdown=shutdown, type="worker")

    def _setup(self, name: str | None) -> None:
        self.name = name
        self._mailbox: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self._task: asyncio.Task[ExitReason] | None = None
        self._stop_request: ExitReason | None = None
        self._killed = False
        self._exit: ExitReason | None = None
        self._current: tuple[Any, Caller] | None = None  # the call being handled, failed if we die in it

    # ---- identity -------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """``ClassName 'name'``, or ``ClassName@id`` when unnamed."""
        return f"{type(self).__name__} {self.name!r}" if self.name else f"{type(self).__name__}@{id(self):x}"

    def __repr__(self) -> str:
        return f"<GenServer {self.label}>"

    @property
    def pid(self) -> None:
        """Always None: a GenServer lives in this process."""
        return None

    def is_alive(self) -> bool:
        """True from ``start_link`` until the server loop has ended."""
        return self._task is not None and not self._task.done()

    # ---- client API -----------------------------------------------------------------------------

    async def _call(self, message: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Send ``message`` to ``handle_call`` and wait for the reply; ``CallTimeout`` after ``timeout`` s."""
        if not self.is_alive():
            raise NoProc(self.name or self.label)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._mailbox.put_nowait(("call", message, future))
        try:
            # wait_for cancels the future on timeout, so a late reply finds it done and is dropped.
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CallTimeout(self.label, timeout or 0.0, message) from None

    def _cast(self, message: Any) -> None:
        """Send ``message`` to ``handle_cast``; never waits, never fails (a dead server drops it)."""
        if self.is_alive():
            self._mailbox.put_nowait(("cast", message, None))

    def _send(self, message: Any) -> None:
        """Send a plain message, handled by ``handle_info``."""
        if self.is_alive():
            self._mailbox.put_nowait(("info", message, None))

    def _send_system(self, message: Any) -> None:
        """Send a protocol message of a behaviour built on GenServer (GenStage's demand and events), handled by
        ``_handle_system`` in the server's own loop, in order with every other message."""
        if self.is_alive():
            self._mailbox.put_nowait(("system", message, None))

    async def _handle_system(self, message: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} got system message {message!r}")

    call = _ByNameOrInstance(_call)
    cast = _ByNameOrInstance(_cast)
    send = _ByNameOrInstance(_send)

    async def stop(self, reason: ExitReason | str = "normal", timeout: float | None = 5.0) -> ExitReason:
        """Stop after the message being handled; ``terminate`` runs. Killed if not done in ``timeout`` s."""
        if self._task is None:
            return self._exit or ExitReason.coerce(reason)
        if not self._task.done():
            if self._stop_request is None:
                self._stop_request = ExitReason.coerce(reason)
            self._mailbox.put_nowait(("stop", None, None))
            await asyncio.wait({self._task}, timeout=timeout)
            if not self._task.done():
                log.error("%r did not stop within %s s; killing it", self, timeout)
                self.kill()
        return await self.wait()

    def kill(self) -> None:
        """Cancel the server now; ``terminate`` does not run (reason ``killed``)."""
        if self._task is not None and not self._task.done():
            self._killed = True
            self._task.cancel()

    async def wait(self) -> ExitReason:
        """Wait for the server to exit and return its exit reason."""
        if self._task is None:
            return self._exit or ExitReason.normal()
        await asyncio.wait({self._task})
        if self._task.cancelled():  # cancelled before its first step ran: _on_task_done recorded it
            return self._exit or ExitReason.killed()
        return self._task.result()

    # ---- the server loop ------------------------------------------------------------------------

    async def _loop(self) -> ExitReason:
        reason = ExitReason.normal()
        try:
            while self._stop_request is None:
                kind, message, future = await self._mailbox.get()
                if kind == "stop":
                    continue
                caller = Caller(future) if kind == "call" else None
                self._current = (message, caller) if caller is not None else None
                try:
                    if caller is not None:
                        result = await _maybe_await(self.handle_call(message, caller))
                    elif kind == "cast":
                        result = self._handled(await _maybe_await(self.handle_cast(message)))
                    elif kind == "system":
                        result = await _maybe_await(self._handle_system(message))
                    else:
                        result = self._handled(await _maybe_await(self.handle_info(message)))
                except Exception as exc:
                    reason = ExitReason.exception(exc)
                    log.error("%r crashed handling %s %r", self, kind, message, exc_info=exc)
                    if caller is not None:
                        error = ServerExited(self.label, reason, message)
                        error.__cause__ = exc
                        caller.fail(error)
                    break
                if isinstance(result, Stop):
                    if caller is not None:
                        caller.reply(result.reply)
                    reason = ExitReason.coerce(result.reason)
                    break
                if caller is not None and result is not NoReply:
                    caller.reply(result)
                self._current = None
            else:
                reason = self._stop_request
        except asyncio.CancelledError:
            # kill(): no terminate, as in OTP. The cancellation is how this task ends, not an error.
            reason = ExitReason.killed()
            self._finish(reason)
            return reason
        try:
            await _maybe_await(self.terminate(reason))
        except asyncio.CancelledError:
            reason = ExitReason.killed()  # killed while cleaning up (stop timed out)
        except Exception:
            log.exception("%r: terminate raised", self)
        self._finish(reason)
        return reason

    def _finish(self, reason: ExitReason) -> None:
        self._exit = reason
        if self.name is not None:
            registry.unregister(self.name, self)
        if self._current is not None:
            message, caller = self._current
            self._current = None
            caller.fail(ServerExited(self.label, reason, message))
        while not self._mailbox.empty():
            kind, message, future = self._mailbox.get_nowait()
            if kind == "call" and not future.done():
                future.set_exception(ServerExited(self.label, reason, message))


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
