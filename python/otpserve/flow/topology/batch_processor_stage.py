"""The batch processor stage: runs ``handle_batch`` on one batch at a time and acks its messages
(Broadway's ``Topology.BatchProcessorStage``).

An exception in ``handle_batch`` (or a return that is not the batch's messages) fails the whole batch; a
message the handler marked failed fails alone. Failed messages go through ``handle_failed``; then every
message is acked, per acknowledger, and the stage waits for the acks before it asks for the next batch, so
at a drain "done" means acked.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from otpserve import telemetry
from otpserve.flow.genstage import Consumer, GenStage
from otpserve.flow.message import Message, ack_messages
from otpserve.flow.topology.callbacks import await_all, call_handle_failed
from otpserve.otp import ExitReason

if TYPE_CHECKING:
    from otpserve.flow.topology.batcher_stage import Batch, BatcherStage
    from otpserve.flow.topology.topology import Topology

log = logging.getLogger("otpserve.flow")

START = ("broadway", "batch_processor", "start")
STOP = ("broadway", "batch_processor", "stop")


class BatchProcessorStage(GenStage):
    """One of a batcher's ``concurrency`` batch processors."""

    async def init(self, arg: tuple[Topology, BatcherStage, int]) -> Consumer:
        """Subscribe to the batcher for one batch at a time (its partition, with partition_by)."""
        topology, batcher, index = arg
        self.topology = topology
        self.batcher = batcher.batcher
        self.index = index
        self.name = f"{topology.name}.batch_processor_{self.batcher}_{index}"
        opts: dict[str, Any] = {"max_demand": 1, "min_demand": 0, "cancel": "temporary"}
        if batcher.partition_by is not None:
            opts["partition"] = index
        topology.last_stage_started(self)
        return Consumer(subscribe_to=[(batcher, opts)])

    async def handle_events(self, events: list[Batch], from_: int) -> None:
        """Run handle_batch on each batch, then ack it."""
        for batch in events:
            await self._run(batch)

    async def _run(self, batch: Batch) -> None:
        topology = self.topology
        messages = batch.messages
        meta = {"topology_name": topology.name, "name": self.name, "batch_info": batch.info}
        started = time.monotonic()
        if telemetry.attached(START):
            telemetry.execute(
                START, {"system_time": time.time(), "monotonic_time": started}, {**meta, "messages": messages}
            )
        try:
            result = topology.pipeline.handle_batch(self.batcher, messages, batch.info, topology.context)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, list) or not all(isinstance(m, Message) for m in result):
                raise TypeError(f"handle_batch must return the batch's messages, got {result!r:.80}")
            if len(result) != len(messages):
                raise TypeError(
                    f"handle_batch must return the {len(messages)} messages of its batch, got {len(result)}"
                )
        except Exception as exc:
            log.error("%s: handle_batch raised; failing its %d messages", self.name, len(messages), exc_info=exc)
            for message in messages:
                message.failed(exc)
            result = messages
        ok = [m for m in result if m.status == "ok"]
        failed = [m for m in result if m.status != "ok"]
        if failed:
            failed = call_handle_failed(topology.pipeline, failed, topology.context)
        await await_all(ack_messages(ok, failed))
        telemetry.execute(
            STOP,
            {"duration": time.monotonic() - started, "monotonic_time": time.monotonic()},
            {**meta, "successful_messages": ok, "failed_messages": failed},
        )

    async def handle_cancel(self, reason: ExitReason, ref: int) -> None:
        """The batcher passed the drain on: nothing more will come; tell the terminator."""
        if self.topology.draining:
            self.topology.stage_done(self)
        return None
