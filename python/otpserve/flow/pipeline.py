"""Pipeline: a Broadway topology of producers → processors → batchers, with acks at the end.

Mental model (Broadway's): producers fetch only what processors ask for; processors run
``handle_message`` on each message (a failure fails that message alone) and route it to a batcher;
batchers group messages into batches (``batch_size``, or ``batch_timeout`` after the first); batch
processors run ``handle_batch`` (a failure fails the batch) and then every message is acked through its
acknowledger — after its batch, never before. Failed messages pass through ``handle_failed`` first::

    class Squares(Pipeline):
        def handle_message(self, processor, message, context):
            return message.update_data(message.data ** 2)

        def handle_batch(self, batcher, messages, batch_info, context):
            print([m.data for m in messages])
            return messages

    pipeline = Squares(
        name="squares",
        producer={"module": RedisStreamProducer, "options": {"url": ..., "stream": "jobs"}},
        processors={"default": {"concurrency": 2}},
        batchers={"default": {"batch_size": 100, "batch_timeout": 0.5}},
    )
    async with pipeline:
        ...

Options are checked against one schema (``otpserve.flow.options``): a bad one raises
``PipelineOptionsError`` naming it and the allowed values. Supervision, restarts and the drain at stop are
the topology's (``otpserve.flow.topology.topology``). ``test_message``/``test_batch`` push messages through
the running pipeline and return what was acked and what failed, as Broadway's test helpers do.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self

from otpserve import telemetry
from otpserve.errors import OtpserveError
from otpserve.flow.message import Message
from otpserve.flow.options import validate
from otpserve.flow.topology.topology import Topology
from otpserve.otp import Child, ChildSpec, ExitReason, Supervisor

__all__ = ["Ack", "Pipeline", "PipelineNotRunning"]

_test_refs = itertools.count(1)


class PipelineNotRunning(OtpserveError, RuntimeError):
    """The pipeline was not started, or has stopped."""


@dataclass
class Ack:
    """What ``test_message``/``test_batch`` return: the messages acked as successful and as failed."""

    successful: list[Message]
    failed: list[Message]


class _CallerAcknowledger:
    """Broadway.CallerAcknowledger: collects the acks of one test ref until all its messages are in."""

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[int, Ack, asyncio.Future[Ack]]] = {}

    def expect(self, ref: int, count: int) -> asyncio.Future[Ack]:
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = (count, Ack([], []), fut)
        return fut

    def ack(self, ref: int, successful: list[Message], failed: list[Message]) -> None:
        entry = self._waiting.get(ref)
        if entry is None:
            return
        count, got, fut = entry
        got.successful.extend(successful)
        got.failed.extend(failed)
        if len(got.successful) + len(got.failed) >= count:
            del self._waiting[ref]
            if not fut.done():
                fut.set_result(got)


class Pipeline:
    """Subclass, override ``handle_message`` (required) and the other callbacks, construct with options."""

    # ---- callbacks ----------------------------------------------------------------------------------

    def handle_message(self, processor: str, message: Message, context: Any) -> Message:
        """Process one message in a processor; return it (changed with ``update_data``, ``put_batcher`` ...)."""
        raise NotImplementedError(f"{type(self).__name__} must define handle_message")

    def prepare_messages(self, messages: list[Message], context: Any) -> list[Message]:
        """Before ``handle_message``, on the processor's whole chunk (preload what they share); same length."""
        return messages

    def handle_batch(self, batcher: str, messages: list[Message], batch_info: Any, context: Any) -> Any:
        """Process a batch (plain or ``async def``); return its messages, marking failures with ``failed``."""
        return messages

    def handle_failed(self, messages: list[Message], context: Any) -> list[Message]:
        """See failed messages before they are acked as failed; return them (possibly changed)."""
        return messages

    # ---- lifecycle ----------------------------------------------------------------------------------

    def __init__(self, **options: Any) -> None:
        self.options = validate(options)
        self.name: str = self.options["name"]
        self.topology: Topology | None = None
        self._supervisor: Supervisor | None = None
        self._test_acker = _CallerAcknowledger()

    async def start(self) -> Self:
        """Start the supervised topology; returns once every stage runs."""
        if self._supervisor is not None and self._supervisor.is_alive():
            raise RuntimeError(f"pipeline {self.name!r} is already running")
        self.topology = Topology(self, self.options)
        self._supervisor = Supervisor(
            self.topology.children(),
            strategy="rest_for_one",
            max_restarts=self.options["max_restarts"],
            max_seconds=self.options["max_seconds"],
            name=self.name,
        )
        await self._supervisor.start()
        telemetry.execute(("broadway", "topology", "init"), {}, {"topology_name": self.name, "config": self.options})
        return self

    async def stop(self, reason: ExitReason | str = "shutdown") -> ExitReason:
        """Drain (producers stop, in-flight messages are acked, within ``shutdown``), then stop every stage."""
        if self._supervisor is None:
            return ExitReason.normal()
        return await self._supervisor.stop(reason)

    async def wait(self) -> ExitReason:
        """Wait until the pipeline has stopped (or its supervisor gave up) and return why."""
        if self._supervisor is None:
            raise PipelineNotRunning(f"pipeline {self.name!r} was never started")
        return await self._supervisor.wait()

    def is_alive(self) -> bool:
        """Whether the pipeline's supervisor runs."""
        return self._supervisor is not None and self._supervisor.is_alive()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    def child_spec(cls, *, id: Any = None, **options: Any) -> ChildSpec:
        """A spec that starts a fresh ``cls(**options)`` at every (re)start, under any supervisor."""

        async def start() -> Child:
            """Start a fresh pipeline and hand its supervisor to ours."""
            pipeline = await cls(**options).start()
            assert pipeline._supervisor is not None
            return pipeline._supervisor

        return ChildSpec(id or options.get("name", cls.__name__), start, shutdown="infinity", type="supervisor")

    # ---- introspection -------------------------------------------------------------------------------

    @property
    def supervisor(self) -> Supervisor:
        """The pipeline's top supervisor (its children: producers, stages, terminator)."""
        if self._supervisor is None:
            raise PipelineNotRunning(f"pipeline {self.name!r} was never started")
        return self._supervisor

    def producers(self) -> list[Any]:
        """The live producers (the objects behind the producer stages)."""
        if self.topology is None:
            return []
        return [stage.producer for stage in self.topology.live_producers()]

    # ---- test helpers (Broadway.test_message / test_batch) -------------------------------------------

    def test_message(self, data: Any, metadata: dict[str, Any] | None = None) -> asyncio.Future[Ack]:
        """Push one message through the pipeline; await the result for what was acked and failed."""
        return self.test_batch([data], metadata=metadata, batch_mode="flush")

    def test_batch(
        self,
        batch: Iterable[Any],
        metadata: dict[str, Any] | None = None,
        batch_mode: Literal["bulk", "flush"] = "bulk",
    ) -> asyncio.Future[Ack]:
        """Push messages through the pipeline; ``batch_mode="flush"`` cuts their batches at once instead of
        waiting for ``batch_size``/``batch_timeout``. Await the result for what was acked and failed."""
        if self.topology is None or not self.is_alive():
            raise PipelineNotRunning(f"pipeline {self.name!r} is not running")
        producers = self.topology.live_producers()
        if not producers:
            raise PipelineNotRunning(f"pipeline {self.name!r} has no live producer")
        if batch_mode not in ("bulk", "flush"):
            raise ValueError(f"batch_mode must be 'bulk' or 'flush', got {batch_mode!r}")
        ref = next(_test_refs)
        messages = [
            Message(
                data, (self._test_acker, ref, None), {**(metadata or {}), "test_ref": ref, "batch_mode": batch_mode}
            )
            for data in batch
        ]
        fut = self._test_acker.expect(ref, len(messages))
        if not messages:
            fut.set_result(Ack([], []))
            return fut
        producers[0].push_messages(messages)
        return fut
