"""otpserve.flow — layer 6: GenStage stages and Broadway pipelines, fed by a real broker (docs/flow.md).

- ``GenStage`` with ``Producer`` / ``ProducerConsumer`` / ``Consumer`` and the Demand, Broadcast and
  Partition dispatchers: demand-driven stages that are GenServers, so the OTP core supervises them.
- ``Pipeline`` (Broadway): producers → processors → batchers, ``Message``, acks per acknowledger after the
  batch, one options schema, test helpers, a supervised topology and a graceful drain.
- ``RedisStreamProducer`` (in ``otpserve.flow.redis``): consumer groups with retries counted by the broker,
  dead letters, exactly-once results, reclaim of dead consumers' entries and retention.
"""

from otpserve.flow.dispatchers import BroadcastDispatcher, DemandDispatcher, Dispatcher, PartitionDispatcher
from otpserve.flow.genstage import Consumer, GenStage, Producer, ProducerConsumer
from otpserve.flow.message import Acknowledger, Message
from otpserve.flow.options import PipelineOptionsError
from otpserve.flow.pipeline import Ack, Pipeline, PipelineNotRunning
from otpserve.flow.producer import Producer as PipelineProducer
from otpserve.flow.testing import DummyProducer
from otpserve.flow.topology.batcher_stage import BatchInfo

__all__ = [
    "Ack",
    "Acknowledger",
    "BatchInfo",
    "BroadcastDispatcher",
    "Consumer",
    "DemandDispatcher",
    "Dispatcher",
    "DummyProducer",
    "GenStage",
    "Message",
    "PartitionDispatcher",
    "Pipeline",
    "PipelineNotRunning",
    "PipelineOptionsError",
    "PipelineProducer",
    "Producer",
    "ProducerConsumer",
]
