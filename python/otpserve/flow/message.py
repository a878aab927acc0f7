"""Message and Acknowledger: what flows through a pipeline and who hears how it ended (Broadway's).

A ``Message`` carries ``data`` (what the handlers work on and replace), ``metadata`` (the broker's: id,
attempt, stream), its ``acknowledger`` (``(acknowledger, ack_ref, ack_data)``), its ``status`` (``"ok"`` or
``("failed", reason)``) and where it is going (``batcher``, ``batch_key``). Every message ends in exactly one
``ack(ack_ref, successful, failed)`` call of its acknowledger, at the end of the pipeline: after its batch
(or after its processor when there are no batchers), or at once when it failed in a processor.

This module imports nothing of otpserve's: it is the leaf every other part of the flow layer shares.
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable, Iterable
from typing import Any, Protocol

__all__ = ["Acknowledger", "Message", "ack_messages"]


class Acknowledger(Protocol):
    """Told how each of its messages ended; may return an awaitable, which the pipeline awaits."""

    def ack(self, ack_ref: Any, successful: list[Message], failed: list[Message]) -> Awaitable[None] | None:
        """``successful`` and ``failed`` are messages of this acknowledger with that ``ack_ref``."""
        ...


class Message:
    """One unit of work in a pipeline (Broadway.Message)."""

    __slots__ = ("acknowledger", "batch_key", "batcher", "data", "metadata", "status")

    def __init__(
        self,
        data: Any,
        acknowledger: tuple[Acknowledger, Any, Any],
        metadata: dict[str, Any] | None = None,
        batcher: Hashable = "default",
        batch_key: Hashable = "default",
    ) -> None:
        self.data = data
        self.metadata = metadata if metadata is not None else {}
        self.acknowledger = acknowledger
        self.status: Any = "ok"
        self.batcher = batcher
        self.batch_key = batch_key

    def __repr__(self) -> str:
        return f"<Message {self.metadata.get('id', '')} status={self.status!r} data={self.data!r:.60}>"

    def update_data(self, data: Any) -> Message:
        """Replace the data (Broadway.Message.update_data / put_data); returns the message."""
        self.data = data
        return self

    def put_batcher(self, batcher: Hashable) -> Message:
        """Send the message to the batcher named ``batcher``."""
        self.batcher = batcher
        return self

    def put_batch_key(self, batch_key: Hashable) -> Message:
        """Batch only with messages of the same ``batch_key`` (within its batcher)."""
        self.batch_key = batch_key
        return self

    def failed(self, reason: Any) -> Message:
        """Mark the message failed with ``reason`` (an exception or text); it is acked as failed."""
        self.status = ("failed", reason)
        return self

    @property
    def is_failed(self) -> bool:
        """Whether the message was marked failed."""
        return self.status != "ok"

    @property
    def failure(self) -> Any:
        """The reason given to ``failed`` (None while the message is ok)."""
        return self.status[1] if self.status != "ok" else None


def ack_messages(successful: Iterable[Message], failed: Iterable[Message]) -> list[Awaitable[None]]:
    """Ack messages grouped by acknowledger and ack_ref (Broadway.Acknowledger.ack_messages); returns what
    the acknowledgers gave back to await."""
    successful, failed = list(successful), list(failed)
    if successful or failed:
        # The common case, one acknowledger for all (one broker connection): no grouping needed.
        first = (successful or failed)[0].acknowledger
        if all(m.acknowledger is first for m in successful) and all(m.acknowledger is first for m in failed):
            result = first[0].ack(first[1], successful, failed)
            return [result] if result is not None else []
    groups: dict[tuple[int, Any], tuple[Acknowledger, list[Message], list[Message]]] = {}
    for index, messages in ((0, successful), (1, failed)):
        for message in messages:
            acknowledger, ref, _ = message.acknowledger
            key = (id(acknowledger), ref)
            group = groups.get(key)
            if group is None:
                group = groups[key] = (acknowledger, [], [])
            group[1 + index].append(message)
    pending = []
    for (_, ref), (acknowledger, ok, bad) in groups.items():
        result = acknowledger.ack(ref, ok, bad)
        if result is not None:
            pending.append(result)
    return pending
