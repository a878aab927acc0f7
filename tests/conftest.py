"""Shared fixtures: a real redis-server per test (AOF on, a free loopback port, a temporary folder)."""

import threading

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


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a thread would keep the interpreter from exiting (it once waited an hour in CI)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in others:
        t.join(timeout=5.0)  # one that is just finishing
    left = [t for t in others if t.is_alive()]
    if left:
        names = ", ".join(t.name for t in left)
        session.config.get_terminal_writer().line(f"threads that would block the exit: {names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
