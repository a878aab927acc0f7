"""Redis Streams for pipelines: the producer, its scripts, consumer names, durability, a local server."""

from otpserve.flow.redis.durability import Durability, NotDurable, check_durability
from otpserve.flow.redis.local_server import LocalRedis
from otpserve.flow.redis.producer import RedisStreamProducer, RetryPolicy

__all__ = ["Durability", "LocalRedis", "NotDurable", "RedisStreamProducer", "RetryPolicy", "check_durability"]
