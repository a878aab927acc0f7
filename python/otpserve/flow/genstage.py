"""GenStage: producer, producer_consumer and consumer stages exchanging events on demand (Elixir's GenStage).

Mental model: a consumer *asks* its producer for up to ``max_demand`` events; the producer hands out no more
than it was asked for (``handle_demand`` is told how many more it may produce), and what it makes beyond that
waits in its bounded buffer (``buffer_size``, 10,000 by default; overflow is dropped and logged, as in
GenStage). The consumer asks again once what it has asked for and not yet handled falls to ``min_demand``
(default ``max_demand // 2``), so events in flight on a subscription never exceed ``max_demand``. A
producer_consumer handles upstream events only while its own consumers have demand: back-pressure travels
up the whole chain and nothing piles up in a hidden queue.

Each stage is a ``GenServer`` (one task, one message at a time), so it is a child that the OTP core's
supervisors start and restart::

    class Counter(GenStage):
        async def init(self, start):
            self.n = start
            return Producer()
        async def handle_demand(self, demand):
            events = list(range(self.n, self.n + demand))
            self.n += demand
            return events

    class Printer(GenStage):
        async def init(self, _):
            return Consumer()
        async def handle_events(self, events, from_):
            print(events)

    producer = await Counter.start_link(0)
    consumer = await Printer.start_link()
    await consumer.subscribe(producer, max_demand=10)

Callbacks return the events to hand out (a list, or None for none): ``handle_demand`` (producers),
``handle_events`` (producer_consumers; consumers return nothing), ``handle_info`` and ``handle_cast``.
``handle_subscribe``/``handle_cancel`` see subscriptions come and go. A stage that exits cancels all its
subscriptions; a consumer whose producer goes away exits too when its subscription's ``cancel`` is
``"permanent"`` (the default), on an abnormal exit only when ``"transient"``, never when ``"temporary"``.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from otpserve.flow.dispatchers import DemandDispatcher, Dispatcher
from otpserve.otp import ExitReason, GenServer, NoProc, Stop

__all__ = ["Consumer", "GenStage", "Producer", "ProducerConsumer", "Subscription"]

log = logging.getLogger("otpserve.flow")

Cancel = Literal["permanent", "transient", "temporary"]
_refs = itertools.count(1)

DEFAULT_MAX_DEMAND = 1000  # GenStage's


@dataclass
class Producer:
    """``init``'s answer for a producer: its dispatcher and buffer (GenStage's ``{:producer, state, opts}``)."""

    dispatcher: Dispatcher | None = None
    # GenStage's 10,000: events made beyond demand wait here; past it the oldest (``buffer_keep="last"``)
    # or the newest (``"first"``) are dropped and logged.
    buffer_size: int | float = 10_000
    buffer_keep: Literal["first", "last"] = "last"


@dataclass
class ProducerConsumer:
    """``init``'s answer for a producer_consumer; its buffer is unbounded by default, as in GenStage (what
    it holds is bounded by its own subscriptions' ``max_demand``)."""

    subscribe_to: Iterable[Any] = ()
    dispatcher: Dispatcher | None = None
    buffer_size: int | float = float("inf")
    buffer_keep: Literal["first", "last"] = "last"


@dataclass
class Consumer:
    """``init``'s answer for a consumer: the producers to subscribe to, each a stage or ``(stage, opts)``."""

    subscribe_to: Iterable[Any] = ()


@dataclass
class Subscription:
    """A consumer's view of one of its producers: how much it asked for and holds."""

    ref: int
    producer: GenStage
    max_demand: int
    min_demand: int
    cancel: Cancel
    opts: dict[str, Any] = field(default_factory=dict)
    outstanding: int = 0  # asked for, not yet received
    held: int = 0  # received, not yet handled


def _check_demand(max_demand: Any, min_demand: Any) -> tuple[int, int]:
    if not isinstance(max_demand, int) or isinstance(max_demand, bool) or max_demand < 1:
        raise ValueError(f"max_demand must be an integer >= 1, got {max_demand!r}")
    if min_demand is None:
        min_demand = max_demand // 2
    if not isinstance(min_demand, int) or isinstance(min_demand, bool) or not 0 <= min_demand < max_demand:
        raise ValueError(f"min_demand must be an integer in [0, max_demand={max_demand}), got {min_demand!r}")
    return max_demand, min_demand


class GenStage(GenServer):
    """Base class of stages: override ``init`` (returning Producer, ProducerConsumer or Consumer) and the
    callbacks of that type. A GenServer underneath: ``call``/``cast``/``send`` and supervision work as there."""

    stage_type: Literal["producer", "producer_consumer", "consumer"]
    # A producer_consumer hands upstream events to handle_events only as many at a time as its consumers
    # want (GenStage's rule, exact for one-event-in-one-out stages); a stage that folds many events into
    # one (a batcher) sets this False and takes whole chunks while any demand exists.
    split_by_demand: bool = True

    # ---- callbacks ----------------------------------------------------------------------------------

    async def handle_demand(self, demand: int) -> list[Any] | None:
        """Producers: consumers want ``demand`` more events; return some or all now (or later, by ``push``)."""
        raise NotImplementedError(f"{type(self).__name__} is a producer but defines no handle_demand")

    async def handle_events(self, events: list[Any], from_: int) -> list[Any] | None:
        """Consumers and producer_consumers: handle events from subscription ``from_``; a producer_consumer
        returns the events to hand on."""
        raise NotImplementedError(f"{type(self).__name__} defines no handle_events")

    async def handle_subscribe(self, kind: Literal["producer", "consumer"], opts: dict[str, Any], ref: int) -> None:
        """A subscription started: to a producer of ours (``kind="producer"``) or from a consumer."""

    async def handle_cancel(self, reason: ExitReason, ref: int) -> list[Any] | None:
        """A subscription ended (the other side cancelled or exited with ``reason``)."""
        return None

    async def handle_info(self, message: Any) -> list[Any] | None:  # type: ignore[override]
        """A plain message; may return events to hand out."""
        log.warning("%r received unexpected message %r", self, message)
        return None

    # ---- starting and subscribing --------------------------------------------------------------------

    def _init_result(self, result: Any) -> None:
        if isinstance(result, Producer):
            self.stage_type = "producer"
        elif isinstance(result, ProducerConsumer):
            self.stage_type = "producer_consumer"
        elif isinstance(result, Consumer):
            self.stage_type = "consumer"
        else:
            raise TypeError(
                f"{type(self).__name__}.init must return Producer(), ProducerConsumer() or Consumer(), got {result!r}"
            )
        self._spec = result
        self._producers: dict[int, Subscription] = {}  # our subscriptions to producers, by ref
        self._consumers: dict[int, GenStage] = {}  # consumers subscribed to us, by ref
        self._inbox: deque[tuple[int, list[Any]]] = deque()  # producer_consumer: events awaiting demand
        self._buffer: deque[Any] = deque()
        self._asked = 0  # demand given to handle_demand and not yet met
        self.dropped = 0  # events dropped by a full buffer
        self._cancel_after_flush: ExitReason | None = None
        if not isinstance(result, Consumer):
            self.dispatcher: Dispatcher = result.dispatcher or DemandDispatcher()
            self._buffer_size = result.buffer_size
            self._buffer_keep = result.buffer_keep

    async def _started(self) -> None:
        for target in getattr(self._spec, "subscribe_to", ()):
            producer, opts = target if isinstance(target, tuple) else (target, {})
            try:
                await self.subscribe(producer, **opts)
            except BaseException:
                self.kill()
                raise

    async def subscribe(
        self,
        producer: GenStage,
        *,
        max_demand: int = DEFAULT_MAX_DEMAND,
        min_demand: int | None = None,
        cancel: Cancel = "permanent",
        **opts: Any,
    ) -> int:
        """Subscribe this consumer to ``producer`` and ask for ``max_demand`` events; returns the ref.

        Extra ``opts`` go to the producer's dispatcher (``partition=`` for a PartitionDispatcher).
        """
        if self.stage_type == "producer":
            raise TypeError(f"{self!r} is a producer; only consumers and producer_consumers subscribe")
        max_demand, min_demand = _check_demand(max_demand, min_demand)
        if cancel not in ("permanent", "transient", "temporary"):
            raise ValueError(f"cancel must be permanent, transient or temporary, got {cancel!r}")
        if not producer.is_alive():
            raise NoProc(producer.label)
        if producer.stage_type == "consumer":
            raise TypeError(f"{producer!r} is a consumer and has no events to subscribe to")
        ref = next(_refs)
        sub = Subscription(ref, producer, max_demand, min_demand, cancel, dict(opts))
        self._producers[ref] = sub
        producer._send_system(("subscribe", self, ref, dict(opts)))
        await _maybe(self.handle_subscribe("producer", dict(opts), ref))
        self._ask(sub, max_demand)
        return ref

    def cancel_subscription(self, ref: int, reason: ExitReason | str = "normal") -> None:
        """End one subscription from either side; the other side hears ``handle_cancel``."""
        why = ExitReason.coerce(reason)
        sub = self._producers.pop(ref, None)
        if sub is not None:
            sub.producer._send_system(("cancel_consumer", ref, why))
            return
        consumer = self._consumers.pop(ref, None)
        if consumer is not None:
            self._requeue(self.dispatcher.cancel(ref))
            consumer._send_system(("cancel_producer", ref, why))

    def cancel_consumers_when_flushed(self, reason: ExitReason | str = "shutdown") -> None:
        """Once every buffered event is handed out, cancel every consumer (the cancel follows the events):
        how a draining pipeline lets its last events through before the stages after it stop."""
        self._cancel_after_flush = ExitReason.coerce(reason)
        self._maybe_cancel_consumers()

    def push(self, events: list[Any]) -> None:
        """Hand out ``events`` from outside the stage's callbacks (e.g. another task of the stage): they are
        posted to the stage's mailbox and dispatched in order with everything else."""
        self._send_system(("push", events))

    @property
    def buffered(self) -> int:
        """Events this stage holds for its consumers (buffer and partition queues)."""
        return len(self._buffer) + getattr(self.dispatcher, "queued", 0)

    @property
    def consumer_refs(self) -> list[int]:
        """Refs of the consumers subscribed to this stage."""
        return list(self._consumers)

    @property
    def producer_refs(self) -> list[int]:
        """Refs of this stage's subscriptions to producers."""
        return list(self._producers)

    # ---- the protocol, in the stage's own loop ---------------------------------------------------------

    def _handled(self, result: Any) -> Any:
        if isinstance(result, Stop) or result is None:
            return result
        self._emit(result)  # handle_info / handle_cast returned events
        return None

    async def _handle_system(self, message: Any) -> Any:
        kind = message[0]
        if kind == "events":
            return await self._on_events(message[1], message[2])
        if kind == "ask":
            return await self._on_ask(message[1], message[2])
        if kind == "push":
            self._emit(message[1])
            return None
        if kind == "subscribe":
            return await self._on_subscribe(message[1], message[2], message[3])
        if kind == "cancel_consumer":
            return await self._on_consumer_cancel(message[1], message[2])
        if kind == "cancel_producer":
            return await self._on_producer_cancel(message[1], message[2])
        raise ValueError(f"unknown stage message {message!r}")

    async def _on_subscribe(self, consumer: GenStage, ref: int, opts: dict[str, Any]) -> None:
        if self.stage_type == "consumer":
            consumer._send_system(("cancel_producer", ref, ExitReason.coerce("not a producer")))
            return
        try:
            self.dispatcher.subscribe(ref, opts)
        except ValueError as exc:
            log.error("%r refused subscription from %r: %s", self, consumer, exc)
            consumer._send_system(("cancel_producer", ref, ExitReason.exception(exc)))
            return
        self._consumers[ref] = consumer
        await _maybe(self.handle_subscribe("consumer", opts, ref))

    async def _on_ask(self, ref: int, n: int) -> Any:
        if ref not in self._consumers:
            return None  # a late ask from a consumer that left
        self.dispatcher.ask(ref, n)
        self._flush()
        if self.stage_type == "producer_consumer":
            return await self._drain_inbox()
        return await self._demand_more()

    async def _demand_more(self) -> Any:
        want = self.dispatcher.wanted() - len(self._buffer) - self._asked
        if want <= 0:
            return None
        self._asked += want
        self._emit(await _maybe(self.handle_demand(want)))
        return None

    async def _on_events(self, ref: int, events: list[Any]) -> Any:
        sub = self._producers.get(ref)
        if sub is None:
            return None  # cancelled meanwhile: these are no longer ours to handle
        sub.outstanding -= len(events)
        sub.held += len(events)
        if self.stage_type == "consumer":
            try:
                result = await _maybe(self.handle_events(events, ref))
            finally:
                sub.held -= len(events)
            if isinstance(result, Stop):
                return result
            self._ask_if_low(sub)
            return None
        self._inbox.append((ref, events))
        return await self._drain_inbox()

    async def _drain_inbox(self) -> Any:
        """Producer_consumer: handle upstream events while our consumers have demand for what comes out."""
        while self._inbox and (wanted := self.dispatcher.wanted()) > 0:
            ref, events = self._inbox.popleft()
            if self.split_by_demand and len(events) > wanted:
                # One event out per event in: take only what our consumers can take now, keep the rest.
                self._inbox.appendleft((ref, events[wanted:]))
                events = events[:wanted]
            try:
                result = await _maybe(self.handle_events(events, ref))
            finally:
                sub = self._producers.get(ref)
                if sub is not None:
                    sub.held -= len(events)
            if isinstance(result, Stop):
                return result
            self._emit(result)
            if sub is not None and sub.ref in self._producers:
                self._ask_if_low(sub)
        self._maybe_cancel_consumers()
        return None

    async def _on_consumer_cancel(self, ref: int, reason: ExitReason) -> Any:
        if self._consumers.pop(ref, None) is None:
            return None
        self._requeue(self.dispatcher.cancel(ref))
        return await _maybe(self.handle_cancel(reason, ref))

    async def _on_producer_cancel(self, ref: int, reason: ExitReason) -> Any:
        sub = self._producers.pop(ref, None)
        if sub is None:
            return None
        # Events of this subscription still waiting in a producer_consumer's inbox stay: they were handed over.
        result = await _maybe(self.handle_cancel(reason, ref))
        if isinstance(result, Stop):
            return result
        if sub.cancel == "permanent" or (sub.cancel == "transient" and reason.abnormal):
            return Stop(reason if reason.abnormal else "normal")
        if self.stage_type != "consumer":
            self._emit(result)
        return None

    # ---- handing events out --------------------------------------------------------------------------

    def _emit(self, events: list[Any] | None) -> None:
        if not events:
            self._maybe_cancel_consumers()
            return
        if self.stage_type == "consumer":
            raise TypeError(f"{self!r} is a consumer: its callbacks hand out no events")
        events = list(events)
        self._asked = max(0, self._asked - len(events))
        if self._buffer:
            self._buffer.extend(events)
            self._flush()
        else:
            self._send(events)
        self._maybe_cancel_consumers()

    def _send(self, events: list[Any]) -> None:
        deliveries, leftover = self.dispatcher.dispatch(events)
        for ref, batch in deliveries:
            consumer = self._consumers.get(ref)
            if consumer is not None:
                consumer._send_system(("events", ref, batch))
        if leftover:
            self._buffer_events(leftover)

    def _flush(self) -> None:
        """Hand buffered events to whoever now has demand (and flush partition queues)."""
        events = list(self._buffer)
        self._buffer.clear()
        self._send(events)

    def _buffer_events(self, events: list[Any]) -> None:
        self._buffer.extend(events)
        over = len(self._buffer) - self._buffer_size
        if over > 0:
            over = int(over)
            for _ in range(over):
                if self._buffer_keep == "last":
                    self._buffer.popleft()
                else:
                    self._buffer.pop()
            self.dropped += over
            log.warning("%r: buffer full (buffer_size=%s); %d events dropped", self, self._buffer_size, over)

    def _requeue(self, events: list[Any]) -> None:
        if events:
            self._buffer.extendleft(reversed(events))

    def _maybe_cancel_consumers(self) -> None:
        reason = self._cancel_after_flush
        if reason is None or self.buffered or self._inbox:
            return
        self._cancel_after_flush = None
        for ref in list(self._consumers):
            self.cancel_subscription(ref, reason)

    # ---- asking ---------------------------------------------------------------------------------------

    def _ask(self, sub: Subscription, n: int) -> None:
        sub.outstanding += n
        sub.producer._send_system(("ask", sub.ref, n))

    def _ask_if_low(self, sub: Subscription) -> None:
        if sub.outstanding + sub.held <= sub.min_demand:
            self._ask(sub, sub.max_demand - sub.outstanding - sub.held)

    # ---- exit -----------------------------------------------------------------------------------------

    def _finish(self, reason: ExitReason) -> None:
        # OTP's monitors: every peer hears that we are gone, whatever the reason (kill included), also a
        # consumer whose subscription was still in our mailbox.
        producers, self._producers = getattr(self, "_producers", {}), {}
        consumers, self._consumers = getattr(self, "_consumers", {}), {}
        unread = []
        while not self._mailbox.empty():
            item = self._mailbox.get_nowait()
            unread.append(item)
            if item[0] == "system" and item[1][0] == "subscribe":
                consumers[item[1][2]] = item[1][1]
        for item in unread:
            self._mailbox.put_nowait(item)
        super()._finish(reason)
        for ref, sub in producers.items():
            sub.producer._send_system(("cancel_consumer", ref, reason))
        for ref, consumer in consumers.items():
            consumer._send_system(("cancel_producer", ref, reason))


async def _maybe(value: Any) -> Any:
    if hasattr(value, "__await__"):
        return await value
    return value
