"""Calling the user's callbacks the way Broadway does: each failure confined to what it concerns.

``run_handlers`` is what a processor does to its messages (here, or inside a processor worker process):
``prepare_messages`` on the whole chunk (an exception fails the chunk), then ``handle_message`` on each (an
exception, or a return that is not a Message, fails that message alone). ``call_handle_failed`` gives
failed messages to ``handle_failed``; if it raises, the messages stay failed as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from otpserve import telemetry
from otpserve.flow.message import Message

log = logging.getLogger("otpserve.flow")

MESSAGE_START = ("broadway", "processor", "message", "start")
MESSAGE_STOP = ("broadway", "processor", "message", "stop")
MESSAGE_EXCEPTION = ("broadway", "processor", "message", "exception")


def run_handlers(
    pipeline: Any, processor: str, messages: list[Message], context: Any, batchers: list[str] | None = None
) -> None:
    """Run prepare_messages and handle_message on ``messages`` in place (data, status, batcher updated)."""
    try:
        prepared = pipeline.prepare_messages(messages, context)
        if not isinstance(prepared, list) or len(prepared) != len(messages):
            raise TypeError(
                f"prepare_messages must return a list of the {len(messages)} messages it was given, "
                f"got {prepared!r:.80}"
            )
    except Exception as exc:
        log.error("%s: prepare_messages raised; failing its %d messages", processor, len(messages), exc_info=exc)
        for message in messages:
            message.failed(exc)
        return
    traced = telemetry.attached(MESSAGE_START) or telemetry.attached(MESSAGE_STOP)
    for i, message in enumerate(prepared):
        if traced:
            started = time.monotonic()
            telemetry.execute(MESSAGE_START, {"monotonic_time": started}, {"processor": processor, "message": message})
        try:
            result = pipeline.handle_message("default", message, context)
            if not isinstance(result, Message):
                raise TypeError(f"handle_message must return a Message, got {result!r:.80}")
        except Exception as exc:
            if traced:
                telemetry.execute(
                    MESSAGE_EXCEPTION,
                    {"duration": time.monotonic() - started},
                    {"processor": processor, "message": message, "kind": type(exc).__name__, "reason": exc},
                )
            message.failed(exc)
            result = message
        else:
            if traced:
                telemetry.execute(
                    MESSAGE_STOP, {"duration": time.monotonic() - started}, {"processor": processor, "message": result}
                )
        if batchers is not None and result.status == "ok" and batchers and result.batcher not in batchers:
            result.failed(ValueError(f"message put to batcher {result.batcher!r}, which is not one of {batchers!r}"))
        if result is not messages[i]:
            _copy_into(messages[i], result)


def _copy_into(target: Message, source: Message) -> None:
    """Keep the pipeline's own Message object (its acknowledger and identity) with the handler's changes."""
    target.data, target.status = source.data, source.status
    target.batcher, target.batch_key, target.metadata = source.batcher, source.batch_key, source.metadata


def call_handle_failed(pipeline: Any, failed: list[Message], context: Any) -> list[Message]:
    """Give ``failed`` to handle_failed; its answer is acked (the originals if it raises or returns junk)."""
    try:
        result = pipeline.handle_failed(failed, context)
    except Exception:
        log.exception("handle_failed raised; acking the failed messages as they were")
        return failed
    if not isinstance(result, list) or len(result) != len(failed) or not all(isinstance(m, Message) for m in result):
        log.error("handle_failed must return the %d messages it was given; acking them as they were", len(failed))
        return failed
    return result


async def await_all(pending: Iterable[Awaitable[None]]) -> None:
    """Await every acknowledger's work, all of it even if one fails (each failure is logged)."""
    pending = list(pending)
    if not pending:
        return
    results = await asyncio.gather(*pending, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("an acknowledger failed", exc_info=result)
