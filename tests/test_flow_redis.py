"""RedisStreamProducer against a real redis-server: acks after success, retries counted by the broker,
dead letters, exactly-once results, recovery of own and dead consumers' entries, leases, retention,
durability, drain."""

import asyncio
import logging
import time

import pytest
import redis
from otpserve.flow import Pipeline
from otpserve.flow.redis import LocalRedis, NotDurable, RedisStreamProducer, RetryPolicy


def arun(coro, timeout=60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Doubling(Pipeline):
    """y = 2x; x == 13 raises ValueError (cannot succeed on retry); x == 7 fails with a transient error the
    first `context['flaky']` attempts; x == 99 makes handle_batch sleep `context['slow']` seconds."""

    def handle_message(self, processor, message, context):
        x = int(message.data["x"])
        if x == 13:
            raise ValueError("13 is unlucky")
        if x == 7 and message.metadata["attempt"] <= (context or {}).get("flaky", 0):
            raise ConnectionError(f"flaky on attempt {message.metadata['attempt']}")
        return message.update_data({"y": 2 * x, "attempt": message.metadata["attempt"]})

    async def handle_batch(self, batcher, messages, batch_info, context):
        if any(m.data["y"] == 198 for m in messages):
            await asyncio.sleep((context or {}).get("slow", 0))
        return messages


def pipeline(url, *, context=None, name="redis-test", batch_size=20, batch_timeout=0.02, **producer):
    opts = {"url": url, "stream": "jobs", "results_stream": "jobs:results", **producer}
    return Doubling(
        name=name,
        context=context,
        producer={"module": RedisStreamProducer, "options": opts},
        processors={"default": {"concurrency": 2}},
        batchers={"default": {"batch_size": batch_size, "batch_timeout": batch_timeout}},
        shutdown=5.0,
    )


async def until(pred, timeout=15.0, every=0.02):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


def results(client, stream="jobs:results"):
    return {f[b"id"].decode(): f for _, f in client.xrange(stream)}


def add(client, xs, stream="jobs"):
    return [client.xadd(stream, {"x": x}).decode() for x in xs]


def test_every_message_is_processed_and_its_result_written_once_then_the_input_trimmed(redis_client, redis_server):
    ids = add(redis_client, range(300))

    async def main():
        async with pipeline(redis_server.url, trim_interval=0.2) as p:
            await until(lambda: redis_client.xlen("jobs:results") + redis_client.xlen("jobs:dead") >= 300)
            await until(lambda: redis_client.xlen("jobs") == 0)  # retention: acked entries trimmed
            stats = p.producers()[0].stats()
        got = results(redis_client)
        assert set(got) | set(results(redis_client, "jobs:dead")) == set(ids)
        assert all(int(got[i][b"y"]) == 2 * x for x, i in enumerate(ids) if x != 13)
        assert redis_client.xpending("jobs", "otpserve")["pending"] == 0
        assert stats["acked"] == 299 and stats["dead_lettered"] == 1

    arun(main())


def test_a_value_error_goes_to_the_dead_letters_at_once_with_reason_attempts_and_original_fields(
    redis_client, redis_server
):
    (eid,) = add(redis_client, [13])
    redis_client.xadd("jobs", {"x": 13, "id": "mine"})

    async def main():
        async with pipeline(redis_server.url):
            await until(lambda: redis_client.xlen("jobs:dead") == 2)
        dead = [f for _, f in redis_client.xrange("jobs:dead")]
        assert dead[0][b"id"].decode() == eid
        assert dead[0][b"reason"] == b"ValueError: 13 is unlucky"
        assert dead[0][b"attempts"] == b"1" and dead[0][b"x"] == b"13"
        assert dead[1][b"original_id"] == b"mine"  # an original field named like ours keeps its value
        assert redis_client.xlen("jobs:results") == 0

    arun(main())


def test_a_transient_failure_is_retried_with_backoff_and_its_attempts_come_from_the_delivery_count(
    redis_client, redis_server
):
    add(redis_client, [7])

    async def main():
        retry = RetryPolicy(max_attempts=5, backoff_initial=0.1, backoff_max=0.2)
        started = time.monotonic()
        async with pipeline(redis_server.url, context={"flaky": 2}, retry=retry):
            await until(lambda: redis_client.xlen("jobs:results") == 1)
        took = time.monotonic() - started
        (fields,) = results(redis_client).values()
        assert fields[b"attempt"] == b"3"  # failed twice, succeeded on the third delivery
        assert took >= 0.05 + 0.1  # waited at least half of each backoff (0.1, then 0.2)
        assert redis_client.xpending("jobs", "otpserve")["pending"] == 0

    arun(main())


def test_past_max_attempts_a_failing_message_is_dead_lettered_with_its_last_reason(redis_client, redis_server):
    add(redis_client, [7])

    async def main():
        retry = RetryPolicy(max_attempts=3, backoff_initial=0.02, backoff_max=0.05)
        async with pipeline(redis_server.url, context={"flaky": 10}, retry=retry) as p:
            await until(lambda: redis_client.xlen("jobs:dead") == 1)
            stats = p.producers()[0].stats()
        (fields,) = [f for _, f in redis_client.xrange("jobs:dead")]
        assert fields[b"attempts"] == b"3"
        assert fields[b"reason"] == b"ConnectionError: flaky on attempt 3"
        assert stats["retried"] == 2

    arun(main())


def test_a_consumer_that_died_holding_entries_takes_them_back_first_and_they_count_as_attempts(
    redis_client, redis_server
):
    ids = add(redis_client, range(10))
    # A previous life of the same consumer read them and died (SIGKILL): they are pending under its name.
    redis_client.xgroup_create("jobs", "otpserve", id="0")
    redis_client.xreadgroup("otpserve", "worker-a", {"jobs": ">"}, count=10)
    ids += add(redis_client, range(20, 25))

    async def main():
        async with pipeline(redis_server.url, consumer="worker-a"):
            await until(lambda: redis_client.xlen("jobs:results") + redis_client.xlen("jobs:dead") == 15)
        got = results(redis_client)
        assert {got[i][b"attempt"] for i in ids[:10]} == {b"2"}  # their second delivery
        assert {got[i][b"attempt"] for i in ids[10:]} == {b"1"}
        order = [f[b"id"].decode() for _, f in redis_client.xrange("jobs:results")]
        assert set(order[:10]) == set(ids[:10])  # own pending entries before new ones

    arun(main())


def test_a_message_delivered_more_than_max_attempts_times_is_dead_lettered_without_running(redis_client, redis_server):
    (eid,) = add(redis_client, [5])
    redis_client.xgroup_create("jobs", "otpserve", id="0")
    redis_client.xreadgroup("otpserve", "worker-a", {"jobs": ">"}, count=1)
    for _ in range(4):  # four more deliveries that never finished: consumers killed mid-message
        redis_client.xclaim("jobs", "otpserve", "worker-a", 0, [eid])

    async def main():
        async with pipeline(redis_server.url, consumer="worker-a", retry=RetryPolicy(max_attempts=5)):
            await until(lambda: redis_client.xlen("jobs:dead") == 1)
        (fields,) = [f for _, f in redis_client.xrange("jobs:dead")]
        assert fields[b"attempts"] == b"6"
        assert b"delivered 6 times without success (max_attempts=5)" in fields[b"reason"]
        assert redis_client.xlen("jobs:results") == 0

    arun(main())


def test_the_janitor_reclaims_entries_of_a_dead_consumer_after_claim_idle(redis_client, redis_server):
    ids = add(redis_client, range(5))
    redis_client.xgroup_create("jobs", "otpserve", id="0")
    redis_client.xreadgroup("otpserve", "dead-one", {"jobs": ">"}, count=5)

    async def main():
        started = time.monotonic()
        async with pipeline(redis_server.url, consumer="alive", claim_idle=0.4, claim_interval=0.1) as p:
            await until(lambda: redis_client.xlen("jobs:results") == 5, timeout=10)
            reclaimed = p.producers()[0].fetched.get((("how", "reclaimed"),))
        assert time.monotonic() - started >= 0.4  # not before they were idle for claim_idle
        got = results(redis_client)
        assert set(got) == set(ids) and {got[i][b"attempt"] for i in ids} == {b"2"}
        assert reclaimed == 5
        assert redis_client.xpending("jobs", "otpserve")["pending"] == 0

    arun(main())


def test_a_long_batch_renews_its_lease_so_another_consumers_janitor_does_not_steal_it(redis_client, redis_server):
    add(redis_client, [99])  # handle_batch sleeps 2 s on it: five times claim_idle

    async def main():
        slow = pipeline(redis_server.url, name="slow", consumer="slow", context={"slow": 2.0}, claim_idle=0.4)
        thief = pipeline(redis_server.url, name="thief", consumer="thief", claim_idle=0.4, claim_interval=0.05)
        async with slow:
            await until(lambda: redis_client.xpending("jobs", "otpserve")["pending"] == 1)
            async with thief as t:
                await until(lambda: redis_client.xlen("jobs:results") == 1, timeout=10)
                stolen = t.producers()[0].fetched.get((("how", "reclaimed"),))
        (fields,) = results(redis_client).values()
        assert fields[b"attempt"] == b"1" and stolen == 0

    arun(main())


def test_an_entry_acked_twice_writes_one_result(redis_client, redis_server):
    (eid,) = add(redis_client, [4])

    async def main():
        async with pipeline(redis_server.url) as p:
            await until(lambda: redis_client.xlen("jobs:results") == 1)
            producer = p.producers()[0]
            # A second copy of the same entry finishes (as after a reclaim race): its ack must write nothing.
            acked = await producer._write([("r", eid, ["id", eid, "y", "8"])])
            assert acked == [0]
        assert redis_client.xlen("jobs:results") == 1

    arun(main())


def test_without_aof_a_pipeline_warns_and_a_durable_one_refuses_to_start(caplog):
    async def main(url):
        with caplog.at_level(logging.WARNING, logger="otpserve.flow.redis"):
            async with pipeline(url):
                pass
        assert "appendonly no" in caplog.text and "can lose acknowledgements" in caplog.text
        with pytest.raises(Exception) as info:
            await pipeline(url, durable=True).start()
        cause = info.value
        while cause.__cause__ is not None:
            cause = cause.__cause__
        assert isinstance(cause, NotDurable) and "durable=True refused" in str(cause)

    with LocalRedis(appendonly=False) as server:
        arun(main(server.url))


def test_stop_drains_in_flight_messages_and_leaves_nothing_pending(redis_client, redis_server):
    add(redis_client, range(20, 120))

    async def main():
        p = pipeline(redis_server.url, batch_size=1000, batch_timeout=30.0)  # batches only close at the drain
        await p.start()
        await until(lambda: p.producers()[0].stats()["pending"] == 100, timeout=10)
        await p.stop()
        assert redis_client.xlen("jobs:results") == 100
        assert redis_client.xpending("jobs", "otpserve")["pending"] == 0

    arun(main())


def test_what_a_drain_could_not_finish_stays_pending_and_is_redelivered_to_the_same_consumer(
    redis_client, redis_server
):
    add(redis_client, [99])

    async def main():
        p = pipeline(redis_server.url, consumer="c1", context={"slow": 30.0})
        p.options["shutdown"] = 0.3
        await p.start()
        await until(lambda: redis_client.xpending("jobs", "otpserve")["pending"] == 1)
        await p.stop()  # handle_batch still sleeping: killed after the drain's 0.3 s
        assert redis_client.xlen("jobs:results") == 0
        assert redis_client.xpending("jobs", "otpserve")["pending"] == 1
        async with pipeline(redis_server.url, consumer="c1"):
            await until(lambda: redis_client.xlen("jobs:results") == 1)
        (fields,) = results(redis_client).values()
        assert fields[b"attempt"] == b"2"

    arun(main())


def test_a_redis_restart_mid_run_loses_nothing_and_duplicates_nothing(redis_client, redis_server):
    ids = add(redis_client, range(20, 2020))

    async def main():
        async with pipeline(redis_server.url, batch_size=50):
            await until(lambda: redis_client.xlen("jobs:results") > 300, every=0.002)
            redis_server.restart()  # SIGKILL, then start again from its AOF
            fresh = redis.Redis.from_url(redis_server.url)
            await until(lambda: fresh.xlen("jobs:results") == 2000, timeout=30)
            await until(lambda: fresh.xpending("jobs", "otpserve")["pending"] == 0)
        got = [f[b"id"].decode() for _, f in fresh.xrange("jobs:results")]
        assert sorted(got) == sorted(ids) and len(got) == len(set(got))
        fresh.close()

    arun(main())


def test_a_field_name_that_is_not_utf8_does_not_crash_the_consumer(redis_client, redis_server):
    redis_client.xadd("jobs", {b"\xff\xfe": b"1", "x": 3})
    add(redis_client, [4])

    async def main():
        async with pipeline(redis_server.url) as p:
            await until(lambda: redis_client.xlen("jobs:results") == 2)
            assert p.producers()[0].stats()["acked"] == 2

    arun(main())


def test_acks_given_to_a_stopped_producer_return_at_once_and_leave_the_entries_pending(redis_client, redis_server):
    add(redis_client, [99])

    async def main():
        async with pipeline(redis_server.url, context={"slow": 0.5}) as p:
            await until(lambda: redis_client.xpending("jobs", "otpserve")["pending"] == 1)
            producer = p.producers()[0]
            (held,) = producer._held.values()
            await producer.stop()  # as when its stage is restarted under the messages still in flight
            assert producer.ack(None, [held.message], []) is None
        assert redis_client.xpending("jobs", "otpserve")["pending"] == 1

    arun(main())


def test_a_claim_that_fails_keeps_its_entries_due_instead_of_stranding_them(redis_client, redis_server):
    add(redis_client, [7])

    async def main():
        retry = RetryPolicy(max_attempts=5, backoff_initial=0.05, backoff_max=0.05)
        async with pipeline(redis_server.url, context={"flaky": 1}, retry=retry) as p:
            producer = p.producers()[0]
            real, failures = producer.redis.xclaim, []

            async def flaky_xclaim(*args, **kwargs):
                if not failures:
                    failures.append(1)
                    raise redis.ConnectionError("Redis went away mid-claim")
                return await real(*args, **kwargs)

            producer.redis.xclaim = flaky_xclaim
            await until(lambda: redis_client.xlen("jobs:results") == 1)
            assert failures == [1]

    arun(main())
