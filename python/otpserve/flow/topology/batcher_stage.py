"""The batcher stage: groups messages of one batcher into batches by ``batch_key`` (Broadway's
``Topology.BatcherStage``).

A batch is cut when it holds ``batch_size`` messages, or ``batch_timeout`` seconds after its first message
(Broadway counts from the first message too). With ``partition_by`` each batch holds messages of one
partition only and goes to that partition's batch processor; otherwise to whichever batch processor asks.
The batcher takes messages only while a batch processor has demand, so a slow ``handle_batch`` slows the
processors and, through them, the producers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otpserve import telemetry
from otpserve.flow.dispatchers import DemandDispatcher, Dispatcher, PartitionDispatcher
from otpserve.flow.genstage import GenStage, ProducerConsumer
from otpserve.flow.message import Message
from otpserve.otp import ExitReason

if TYPE_CHECKING:
    from otpserve.flow.topology.topology import Topology

START = ("broadway", "batcher", "start")
STOP = ("broadway", "batcher", "stop")


@dataclass
class BatchInfo:
    """What ``handle_batch`` is told about its batch (Broadway.BatchInfo)."""

    batcher: str
    batch_key: Any
    partition: int | None
    size: int
    trigger: str  # "flush" (batch_size reached), "timeout" or "shutdown"


@dataclass
class Batch:
    """A cut batch on its way to a batch processor."""

    messages: list[Message]
    info: BatchInfo


class BatcherStage(GenStage):
    """One per named batcher."""

    split_by_demand = False  # many messages in, one batch out

    async def init(self, arg: tuple[Topology, str]) -> ProducerConsumer:
        """Subscribe to every processor for this batcher's partition."""
        topology, batcher = arg
        self.topology = topology
        self.batcher = batcher
        self.name = f"{topology.name}.batcher_{batcher}"
        opts = topology.options["batchers"][batcher]
        self.batch_size = opts["batch_size"]
        self.batch_timeout = opts["batch_timeout"]
        self.partition_by = opts["partition_by"]
        self.concurrency = opts["concurrency"]
        self._open: dict[Any, list[Message]] = {}  # (batch_key, partition) -> messages of the open batch
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._flushing = False
        sub = {"max_demand": opts["max_demand"], "min_demand": opts["max_demand"] // 2, "cancel": "temporary"}
        subscribe_to = [(p, {**sub, "partition": batcher}) for p in topology.processors]
        dispatcher: Dispatcher
        if self.partition_by is not None:
            dispatcher = PartitionDispatcher(self.concurrency, lambda batch: batch.info.partition)
        else:
            dispatcher = DemandDispatcher()
        topology.batcher_started(self)
        return ProducerConsumer(subscribe_to=subscribe_to, dispatcher=dispatcher)

    async def handle_events(self, events: list[Message], from_: int) -> list[Batch]:
        """Add messages to their open batches; return the batches that are full."""
        started = time.monotonic()
        out: list[Batch] = []
        size, partition_by, concurrency = self.batch_size, self.partition_by, self.concurrency
        key: Any = None
        batch: list[Message] | None = None
        for message in events:
            partition = None if partition_by is None else int(partition_by(message)) % concurrency
            if batch is None or key[0] != message.batch_key or key[1] != partition:
                key = (message.batch_key, partition)  # look the open batch up only when the key changes
                batch = self._open.get(key)
                if batch is None:
                    batch = self._open[key] = []
                    self._arm(key, batch)
            batch.append(message)
            if len(batch) >= size or message.metadata.get("batch_mode") == "flush":
                out.append(self._cut(key, "flush"))
                batch = None
        if self._flushing:
            out += [self._cut(key, "shutdown") for key in list(self._open)]
        if telemetry.attached(STOP):
            telemetry.execute(
                STOP,
                {"duration": time.monotonic() - started},
                {
                    "topology_name": self.topology.name,
                    "name": self.name,
                    "batcher_key": self.batcher,
                    "messages": events,
                },
            )
        return out

    def _arm(self, key: Any, batch: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(self.batch_timeout, self.send, ("timeout", key, batch))

    def _cut(self, key: Any, trigger: str) -> Batch:
        messages = self._open.pop(key)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        batch_key, partition = key
        return Batch(messages, BatchInfo(self.batcher, batch_key, partition, len(messages), trigger))

    async def handle_info(self, message: Any) -> list[Batch] | None:
        """``("timeout", key, batch)``: the batch's time is up; cut it (if it is still the open one: a timeout
        posted just before its batch filled up must not cut the next batch early)."""
        if isinstance(message, tuple) and message[0] == "timeout":
            _, key, batch = message
            if self._open.get(key) is batch:
                return [self._cut(key, "timeout")]
            return None
        return await super().handle_info(message)

    async def handle_cancel(self, reason: ExitReason, ref: int) -> list[Batch] | None:
        """When the last processor has gone during a drain: cut every open batch, then pass the drain on."""
        if self.producer_refs or not self.topology.draining:
            return None
        self._flushing = True  # messages still in our inbox are cut as soon as they are batched
        self._emit([self._cut(key, "shutdown") for key in list(self._open)])
        self.cancel_consumers_when_flushed("shutdown")
        return None

    async def terminate(self, reason: ExitReason) -> None:
        """Cancel the batch timers."""
        for timer in self._timers.values():
            timer.cancel()
