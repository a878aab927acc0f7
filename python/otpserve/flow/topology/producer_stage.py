"""The producer stage: a GenStage producer around a pipeline's producer, with rate limiting and draining
(Broadway's ``Topology.ProducerStage``)."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import TYPE_CHECKING, Any

from otpserve.flow.genstage import GenStage, Producer

if TYPE_CHECKING:
    from otpserve.flow.message import Message
    from otpserve.flow.producer import Producer as PipelineProducer
    from otpserve.flow.topology.rate_limiter import RateLimiter
    from otpserve.flow.topology.topology import Topology


class ProducerStage(GenStage):
    """Asks its producer for what consumers demand; holds back what the rate limiter does not allow yet."""

    async def init(self, arg: tuple[Topology, int]) -> Producer:
        """Make a fresh producer from the options, start it, and offer this stage to live processors."""
        topology, index = arg
        self.topology = topology
        self.index = index
        options = topology.options["producer"]
        self.producer: PipelineProducer = options["module"](**options["options"])
        self.rate_limiter: RateLimiter | None = topology.rate_limiter
        self._held: deque[Message] = deque()  # made, but over the rate limit for now
        self._release: asyncio.TimerHandle | None = None
        self.draining = False
        result = self.producer.start(self, index)
        if inspect.isawaitable(result):
            await result
        topology.producer_started(self)
        # Demand, not a buffer, bounds a pipeline: unbounded here, since the producer only makes what was asked.
        return Producer(buffer_size=float("inf"))

    async def handle_demand(self, demand: int) -> list[Any] | None:
        """Forward the demand to the producer (not while draining)."""
        if self.draining:
            return None
        result = self.producer.handle_demand(demand)
        if inspect.isawaitable(result):
            result = await result
        return self._limit(result)

    def push_messages(self, messages: list[Message]) -> None:
        """For the producer: hand out messages it got after ``handle_demand`` returned."""
        self.push(messages)

    def crash(self, exc: BaseException) -> None:
        """For the producer's own tasks: a failure there crashes this stage (and its supervisor restarts it)."""
        self._send_system(("crash", exc))

    async def _handle_system(self, message: Any) -> Any:
        if message[0] == "crash":
            raise message[1]
        if message[0] == "push":
            self._emit(self._limit(message[1]))
            return None
        if message[0] == "drain":
            return await self._drain()
        if message[0] == "release":
            self._release = None
            self._emit(self._limit([]))
            return None
        return await super()._handle_system(message)

    def _limit(self, messages: list[Message] | None) -> list[Message] | None:
        limiter = self.rate_limiter
        if limiter is None or self.draining:
            if self._held:
                messages = [*self._held, *(messages or [])]
                self._held.clear()
            return messages
        if messages:
            self._held.extend(messages)
        if not self._held:
            return messages
        allowed = limiter.take(len(self._held))
        out = [self._held.popleft() for _ in range(allowed)]
        if self._held and self._release is None:
            loop = asyncio.get_running_loop()
            self._release = loop.call_at(limiter.next_reset(loop.time()), self._send_system, ("release",))
        return out

    @property
    def held(self) -> int:
        """Messages made but held back by the rate limiter."""
        return len(self._held)

    def drain(self) -> None:
        """Stop fetching, hand out what is held, then cancel the consumers after the last event."""
        self._send_system(("drain",))

    async def _drain(self) -> None:
        self.draining = True
        self.producer.prepare_for_draining()
        self._emit(self._limit([]))
        self.cancel_consumers_when_flushed("shutdown")

    async def terminate(self, reason: Any) -> None:
        """Stop the producer (it flushes its acks and closes its connections)."""
        if self._release is not None:
            self._release.cancel()
        await self.producer.stop()

    def _finish(self, reason: Any) -> None:
        super()._finish(reason)
        topology = getattr(self, "topology", None)
        if topology is not None:
            topology.producer_exited(self)
