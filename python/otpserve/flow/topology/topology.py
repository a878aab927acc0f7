"""The topology: which stages a pipeline runs, how they are supervised, and who is alive now (Broadway's
``Topology``, the composition root of a pipeline).

The supervision tree, as Broadway's (``rest_for_one`` at the top, so a crash restarts what comes after)::

    <name> (Supervisor, rest_for_one, max_restarts/max_seconds from the options)
    ├── <name>.producers   (one_for_one)     ProducerStage × producer.concurrency
    ├── <name>.stages      (one_for_all, 0)  ProcessorStage × processors.default.concurrency,
    │                                          then per batcher: BatcherStage, BatchProcessorStage × concurrency
    └── <name>.terminator  (Terminator: its stop is the drain)

A crash of any processor, batcher or batch processor escalates at once (``max_restarts: 0``) and the
pipeline supervisor restarts all of them, never the producers. That is one step more than Broadway (where a
batcher's crash leaves the processors running): with the whole downstream restarted, the producers know
exactly what was lost in it — every message they handed out and that is not acked — and redeliver it
(``Producer.redeliver_lost``) instead of waiting for the broker's redelivery timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from otpserve.otp import Child, ChildSpec, Supervisor

from .batch_processor_stage import BatchProcessorStage
from .batcher_stage import BatcherStage
from .processor_stage import ProcessorStage
from .producer_stage import ProducerStage
from .rate_limiter import RateLimiter
from .terminator import Terminator

if TYPE_CHECKING:
    from otpserve.flow.genstage import GenStage

log = logging.getLogger("otpserve.flow")


class Topology:
    """The stages of one running pipeline and the tree that supervises them."""

    def __init__(self, pipeline: Any, options: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.pipeline_class = type(pipeline)
        self.options = options
        self.name: str = options["name"]
        self.context = options["context"]
        limit = options["producer"]["rate_limiting"]
        self.rate_limiter = RateLimiter(limit["allowed_messages"], limit["interval"]) if limit else None
        self.producers: dict[int, ProducerStage] = {}
        self.processors: list[ProcessorStage] = []
        self.batchers: dict[str, BatcherStage] = {}
        self.last_stages: list[GenStage] = []
        self._done: set[int] = set()
        self._all_done = asyncio.Event()
        self.draining = False
        self.stage_starts = 0  # how often the stages after the producers were (re)started

    # ---- who is alive ---------------------------------------------------------------------------------

    def live_producers(self) -> list[ProducerStage]:
        """The producer stages running now."""
        return [p for _, p in sorted(self.producers.items()) if p.is_alive()]

    def producer_started(self, stage: ProducerStage) -> None:
        """A producer (re)started: live processors subscribe to it (Broadway's processors resubscribe)."""
        self.producers[stage.index] = stage
        for processor in self.processors:
            if processor.is_alive():
                processor.send(("subscribe_producer", stage))

    def producer_exited(self, stage: ProducerStage) -> None:
        """A producer stage is gone."""
        if self.producers.get(stage.index) is stage:
            del self.producers[stage.index]

    def processor_started(self, stage: ProcessorStage) -> None:
        """A processor started (it is a last stage when there are no batchers)."""
        self.processors.append(stage)
        if not self.options["batchers"]:
            self.last_stage_started(stage)

    def batcher_started(self, stage: BatcherStage) -> None:
        """A batcher started."""
        self.batchers[stage.batcher] = stage

    def last_stage_started(self, stage: GenStage) -> None:
        """A stage that acks (a batch processor, or a processor without batchers) started."""
        self.last_stages.append(stage)

    def stage_done(self, stage: GenStage) -> None:
        """A last stage has handled and acked everything it will ever get (during a drain)."""
        self._done.add(id(stage))
        if all(id(s) in self._done or not s.is_alive() for s in self.last_stages):
            self._all_done.set()

    # ---- the tree ---------------------------------------------------------------------------------------

    def children(self) -> list[ChildSpec]:
        """The pipeline supervisor's children, in start order."""
        opts = self.options
        producers = [
            ProducerStage.child_spec((self, i), id=f"producer_{i}", shutdown=opts["shutdown"] + 5.0)
            for i in range(opts["producer"]["concurrency"])
        ]
        return [
            Supervisor.child_spec(producers, id="producers", strategy="one_for_one", name=f"{self.name}.producers"),
            ChildSpec("stages", self._start_stages, shutdown="infinity", type="supervisor"),
            Terminator.child_spec(self, id="terminator", shutdown=opts["shutdown"] + 1.0),
        ]

    async def _start_stages(self) -> Child:
        if self.stage_starts:
            # Everything the old stages held died with them: the producers hand it out again.
            for producer in self.live_producers():
                producer.producer.redeliver_lost()
        self.stage_starts += 1
        self.processors, self.batchers, self.last_stages = [], {}, []
        self._done.clear()
        self._all_done.clear()
        opts = self.options
        specs = [
            ProcessorStage.child_spec((self, i), id=f"processor_{i}")
            for i in range(opts["processors"]["default"]["concurrency"])
        ]
        for name, batcher in opts["batchers"].items():
            specs.append(BatcherStage.child_spec((self, name), id=f"batcher_{name}"))
            for j in range(batcher["concurrency"]):
                specs.append(ChildSpec(f"batch_processor_{name}_{j}", self._batch_processor_start(name, j)))
        sup = Supervisor(specs, strategy="one_for_all", max_restarts=0, name=f"{self.name}.stages.{self.stage_starts}")
        return await sup.start()

    def _batch_processor_start(self, batcher: str, index: int) -> Any:
        async def start() -> Child:
            """Start a batch processor on the batcher that is running now."""
            return await BatchProcessorStage.start_link((self, self.batchers[batcher], index))

        return start

    # ---- draining ---------------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Stop fetching and let in-flight messages through; True if every last stage finished in time."""
        self.draining = True
        live_last = [s for s in self.last_stages if s.is_alive()]
        if not live_last:
            return True
        producers = self.live_producers()
        if not producers:  # nothing left to cancel the chain from: the processors pass the drain on themselves
            for processor in self.processors:
                if processor.is_alive():
                    processor.send(("drain_without_producers",))
        for producer in producers:
            producer.drain()
        try:
            await asyncio.wait_for(self._all_done.wait(), timeout)
            return True
        except TimeoutError:
            log.warning(
                "pipeline %s: drain did not finish within shutdown=%s s; unacked messages stay pending and "
                "will be redelivered",
                self.name,
                timeout,
            )
            return False
