"""What a pipeline's producer is: the source of messages behind a producer stage (Broadway's producer).

A producer is made fresh at every (re)start of its stage from ``producer.module(**producer.options)``.
The stage calls ``start`` once, then ``handle_demand(n)`` whenever consumers want ``n`` more messages; the
producer returns some now and may hand the rest later with ``stage.push(messages)``, but never more than
was asked for in all (that is what keeps a pipeline from fetching what nobody can take). Draining
(``prepare_for_draining``) stops fetching; ``stop`` runs when the stage stops.

``redeliver_lost`` is otpserve's addition: the stages after the producers were restarted after a crash, so
every message handed to them and not yet acked is lost in transit; a broker-backed producer hands those out
again (counting the attempt), Broadway leaves that to the broker's redelivery timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otpserve.flow.message import Message
    from otpserve.flow.topology.producer_stage import ProducerStage
    from otpserve.metrics import Registry

__all__ = ["Producer"]


class Producer:
    """Base class of pipeline producers; every method but ``handle_demand`` has a default that does nothing."""

    async def start(self, stage: ProducerStage, index: int) -> None:
        """Set up (connect, create the group); ``index`` is this producer's number among ``concurrency``."""

    def handle_demand(self, demand: int) -> list[Message] | Awaitable[list[Message] | None] | None:
        """Consumers want ``demand`` more messages."""
        raise NotImplementedError

    def prepare_for_draining(self) -> None:
        """Stop fetching: the pipeline is shutting down and drains what it already has."""

    def redeliver_lost(self) -> None:
        """Everything handed downstream and not acked was lost in a crash; hand it out again if possible."""

    async def stop(self) -> None:
        """The stage is stopping: flush what must be flushed (acks), close connections."""

    def metrics(self) -> Registry | None:
        """Prometheus series of this producer (lag, pending), or None."""
        return None

    def stats(self) -> dict[str, Any]:
        """A few live numbers for a progress line (lag, pending, retries, dead letters)."""
        return {}
