"""The processor stage: runs ``prepare_messages`` and ``handle_message`` on what its producers send, then
hands messages to their batchers, or acks them when the pipeline has none (Broadway's
``Topology.ProcessorStage``).

A failure fails one message: an exception in ``handle_message`` (or a non-Message return) marks that message
failed; ``handle_failed`` sees it and it is acked as failed right away, as Broadway does. With
``isolation="process"`` the handlers run in an OS process owned by this stage (``ProcessorWorker``), so
CPU-bound Python handlers use every core; a worker that dies (segfault, SIGKILL, OOM) crashes this stage,
and the topology is restarted with it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from otpserve import telemetry
from otpserve.flow.dispatchers import DemandDispatcher, Dispatcher, PartitionDispatcher
from otpserve.flow.genstage import Consumer, GenStage, ProducerConsumer
from otpserve.flow.message import Message, ack_messages
from otpserve.flow.topology.callbacks import await_all, call_handle_failed, run_handlers
from otpserve.otp import ExitReason

if TYPE_CHECKING:
    from otpserve.flow.topology.processor_worker import ProcessorWorker
    from otpserve.flow.topology.topology import Topology

log = logging.getLogger("otpserve.flow")

START = ("broadway", "processor", "start")
STOP = ("broadway", "processor", "stop")


class ProcessorStage(GenStage):
    """One of ``processors.default.concurrency`` processors."""

    async def init(self, arg: tuple[Topology, int]) -> Any:
        """Subscribe to every live producer; hand on to batchers (a Partition dispatcher by batcher name)."""
        topology, index = arg
        self.topology = topology
        self.index = index
        self.name = f"{topology.name}.processor_default_{index}"
        self.options = topology.options["processors"]["default"]
        self.batchers = list(topology.options["batchers"])
        self.worker: ProcessorWorker | None = None
        if self.options["isolation"] == "process":
            from otpserve.flow.topology.processor_worker import ProcessorWorker

            self.worker = await ProcessorWorker.start(
                topology.pipeline_class, topology.context, self.name, self.batchers
            )
        self._subscribe_opts = {
            "max_demand": self.options["max_demand"],
            "min_demand": self.options["min_demand"],
            "cancel": "temporary",
        }
        subscribe_to = [(p, dict(self._subscribe_opts)) for p in topology.live_producers()]
        topology.processor_started(self)
        if not self.batchers:
            return Consumer(subscribe_to=subscribe_to)
        # One batcher is every message's batcher (run_handlers fails a message sent anywhere else): a Demand
        # dispatcher is then the same routing without a hash per message.
        dispatcher: Dispatcher = (
            DemandDispatcher() if len(self.batchers) == 1 else PartitionDispatcher(self.batchers, lambda m: m.batcher)
        )
        return ProducerConsumer(subscribe_to=subscribe_to, dispatcher=dispatcher)

    async def handle_events(self, events: list[Message], from_: int) -> list[Message] | None:
        """Run the handlers; ack failures now, and successes too when there are no batchers."""
        topology = self.topology
        meta = {"topology_name": topology.name, "name": self.name, "processor_key": "default", "index": self.index}
        started = time.monotonic()
        if telemetry.attached(START):
            telemetry.execute(
                START, {"system_time": time.time(), "monotonic_time": started}, {**meta, "messages": events}
            )
        if self.worker is not None:
            await self.worker.run(events)
        else:
            run_handlers(topology.pipeline, self.name, events, topology.context, batchers=self.batchers)
        ok: list[Message] = []
        failed: list[Message] = []
        for message in events:
            (failed if message.status != "ok" else ok).append(message)
        pending = []
        if failed:
            failed = call_handle_failed(topology.pipeline, failed, topology.context)
            pending += ack_messages((), failed)
        if not self.batchers:
            pending += ack_messages(ok, ())
            out = None
        else:
            out = ok
        await await_all(pending)
        if telemetry.attached(STOP):
            telemetry.execute(
                STOP,
                {"duration": time.monotonic() - started, "monotonic_time": time.monotonic()},
                {**meta, "successful_messages_to_ack": [] if self.batchers else ok, "failed_messages": failed},
            )
        return out

    async def handle_info(self, message: Any) -> None:
        """``("subscribe_producer", stage)``: a restarted producer offers itself (Broadway's resubscribe)."""
        if isinstance(message, tuple) and message[0] == "subscribe_producer":
            producer = message[1]
            if producer.is_alive() and not self.topology.draining:
                await self.subscribe(producer, **self._subscribe_opts)
            return None
        if message == ("drain_without_producers",):
            return await self.handle_cancel(ExitReason.shutdown(), 0)
        return await super().handle_info(message)

    async def handle_cancel(self, reason: ExitReason, ref: int) -> None:
        """Once no producer is left during a drain, pass the drain on (after what we still hold)."""
        if not self.producer_refs and self.topology.draining:
            if self.batchers:
                self.cancel_consumers_when_flushed("shutdown")
            else:
                self.topology.stage_done(self)
        return None

    def _finish(self, reason: ExitReason) -> None:
        if getattr(self, "worker", None) is not None:
            self.worker.kill()  # type: ignore[union-attr]
        super()._finish(reason)
