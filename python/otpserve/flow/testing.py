"""Test helpers: a producer that makes nothing, for pipelines driven by ``test_message``/``test_batch``
(Broadway.DummyProducer)."""

from __future__ import annotations

from otpserve.flow.message import Message
from otpserve.flow.producer import Producer

__all__ = ["DummyProducer"]


class DummyProducer(Producer):
    """Produces nothing on demand; messages arrive only through ``Pipeline.test_message``/``test_batch``."""

    def __init__(self, **options: object) -> None:
        self.options = options

    def handle_demand(self, demand: int) -> list[Message] | None:
        """Nothing to hand out."""
        return None
