"""The terminator: the last child of a pipeline's supervisor, so the first one stopped; its stop is the
graceful drain (Broadway's ``Topology.Terminator``).

Stopping it tells the producers to stop fetching and to cancel their consumers after the events they have
already handed out; the cancels travel down through processors and batchers, each flushing what it holds
(batchers cut their partial batches); once every last stage has acked its last batch and said done, or
``shutdown`` seconds have passed, the supervisor goes on to stop the stages. Whatever was still unacked
then stays pending in the broker and is redelivered later: nothing is dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otpserve.otp import GenServer

if TYPE_CHECKING:
    from otpserve.flow.topology.topology import Topology


class Terminator(GenServer):
    """Does nothing until it is stopped; then drains the pipeline within ``shutdown``."""

    async def init(self, topology: Topology) -> None:
        """Remember the topology it drains."""
        self.topology = topology

    async def terminate(self, reason: Any) -> None:
        """Drain: producers stop, in-flight messages go through and are acked, within ``shutdown`` seconds."""
        await self.topology.drain(self.topology.options["shutdown"])
