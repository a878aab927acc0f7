"""A pipeline's Prometheus series, from its telemetry spans and its producers' counters.

Broadway's spans are the source (``[:broadway, :batch_processor, :stop]`` for batch sizes and handler time,
``[:broadway, :processor, :stop]`` for the processors' time); messages by outcome (acked, failed, retried,
dead-lettered), consumer-group lag and pending entries come from the producers, which see the broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otpserve import telemetry
from otpserve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Histogram, Registry, render_many

if TYPE_CHECKING:
    from otpserve.flow.pipeline import Pipeline

__all__ = ["PipelineMetrics"]

PROCESSOR_STOP = ("broadway", "processor", "stop")
BATCH_STOP = ("broadway", "batch_processor", "stop")


class PipelineMetrics:
    """Attach to a pipeline's spans; ``render()`` is the text for ``/metrics``. ``close()`` detaches."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        r = self.registry = Registry()
        self.batch_size = r.add(Histogram("otpserve_pipeline_batch_size", "Messages per batch.", BATCH_BUCKETS))
        self.batch_seconds = r.add(
            Histogram("otpserve_pipeline_batch_seconds", "Time handle_batch and its acks took.", LATENCY_BUCKETS)
        )
        self.processor_seconds = r.add(
            Histogram("otpserve_pipeline_processor_seconds", "Time a processor took on a chunk.", LATENCY_BUCKETS)
        )
        self._id = f"otpserve-pipeline-metrics-{id(self)}"
        telemetry.attach_many(self._id, [PROCESSOR_STOP, BATCH_STOP], self._on_event)

    def _on_event(self, event: tuple[str, ...], measurements: dict[str, Any], metadata: dict[str, Any], _: Any) -> None:
        if metadata.get("topology_name") != self.pipeline.name:
            return
        if event == BATCH_STOP:
            self.batch_size.observe(metadata["batch_info"].size)
            self.batch_seconds.observe(measurements["duration"])
        else:
            self.processor_seconds.observe(measurements["duration"])

    def render(self) -> str:
        """The Prometheus text exposition of the pipeline and its live producers."""
        labels = (("pipeline", self.pipeline.name),)
        registries = [(labels, self.registry)]
        for producer in self.pipeline.producers():
            registry = producer.metrics()
            if registry is not None:
                registries.append((labels, registry))
        return render_many(registries)

    def close(self) -> None:
        """Detach from telemetry."""
        telemetry.detach(self._id)
