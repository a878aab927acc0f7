"""Shared fixtures: a real redis-server per test (AOF on, a free loopback port, a temporary folder)."""

import pytest
from otpserve.flow.redis import LocalRedis


@pytest.fixture
def redis_server():
    """A fresh redis-server for one test, stopped (and its folder removed) afterwards."""
    server = LocalRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A sync redis-py client of that server."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()
