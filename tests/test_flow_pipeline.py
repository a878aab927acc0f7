"""Pipeline (Broadway): callbacks, acks after the batch, failures confined, options, supervision, drain."""

import asyncio
import os
import signal

import pytest
from otpserve import telemetry
from otpserve.flow import DummyProducer, Pipeline, PipelineOptionsError


def arun(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def options(**overrides):
    opts = {
        "name": "test-pipeline",
        "producer": {"module": DummyProducer},
        "processors": {"default": {"concurrency": 2}},
        "batchers": {"default": {"batch_size": 3, "batch_timeout": 0.05}},
    }
    opts.update(overrides)
    return opts


class Squares(Pipeline):
    """Squares numbers; fails 13 in handle_message; routes odd numbers to the batcher 'odd' if it exists;
    a batch containing 99 raises in handle_batch."""

    def handle_message(self, processor, message, context):
        if message.data == 13:
            raise ValueError("13 is unlucky")
        if message.data == -1:
            return message.failed("marked failed")
        if message.data % 2 and context and context.get("split"):
            message.put_batcher("odd")
        return message.update_data(message.data * message.data)

    def handle_batch(self, batcher, messages, batch_info, context):
        if any(m.data == 99 * 99 for m in messages):
            raise RuntimeError("batch with 99")
        for m in messages:
            m.metadata["batcher"] = batcher
            m.metadata["batch_size"] = batch_info.size
        return messages


def test_test_message_returns_the_acked_message_with_its_new_data():
    async def main():
        async with Squares(**options()) as pipeline:
            ack = await pipeline.test_message(4)
            assert [m.data for m in ack.successful] == [16] and ack.failed == []
            assert ack.successful[0].metadata["batcher"] == "default"

    arun(main())


def test_a_crash_in_handle_message_fails_that_message_alone():
    async def main():
        async with Squares(**options()) as pipeline:
            ack = await pipeline.test_batch([1, 13, 2, -1])
            assert sorted(m.data for m in ack.successful) == [1, 4]
            reasons = {str(m.failure) for m in ack.failed}
            assert reasons == {"13 is unlucky", "marked failed"}

    arun(main())


def test_a_crash_in_handle_batch_fails_the_whole_batch():
    async def main():
        async with Squares(**options(batchers={"default": {"batch_size": 3, "batch_timeout": 5}})) as pipeline:
            ack = await pipeline.test_batch([98, 99, 100])
            assert ack.successful == []
            assert sorted(m.data for m in ack.failed) == [98 * 98, 99 * 99, 100 * 100]
            assert all("batch with 99" in str(m.failure) for m in ack.failed)

    arun(main())


def test_messages_are_acked_only_after_their_batch_is_full_or_times_out():
    async def main():
        opts = options(batchers={"default": {"batch_size": 3, "batch_timeout": 0.3}})
        async with Squares(**opts) as pipeline:
            loop = asyncio.get_running_loop()
            started = loop.time()
            full = pipeline.test_batch([1, 2, 3])
            ack = await full
            assert loop.time() - started < 0.25  # three make a full batch: no wait for the timeout
            assert {m.metadata["batch_size"] for m in ack.successful} == {3}
            started = loop.time()
            ack = await pipeline.test_batch([5])
            assert loop.time() - started >= 0.25  # one waits for batch_timeout, counted from it
            assert ack.successful[0].metadata["batch_size"] == 1

    arun(main())


def test_put_batcher_routes_messages_to_named_batchers_and_an_unknown_batcher_fails_the_message():
    async def main():
        opts = options(
            context={"split": True},
            batchers={
                "default": {"batch_size": 10, "batch_timeout": 0.02},
                "odd": {"batch_size": 10, "batch_timeout": 0.02},
            },
        )
        async with Squares(**opts) as pipeline:
            ack = await pipeline.test_batch([1, 2, 3, 4])
            by = {m.data: m.metadata["batcher"] for m in ack.successful}
            assert by == {1: "odd", 4: "default", 9: "odd", 16: "default"}

        class Misroute(Pipeline):
            def handle_message(self, processor, message, context):
                return message.put_batcher("nowhere")

        async with Misroute(**options()) as pipeline:
            ack = await pipeline.test_message(1)
            assert "not one of ['default']" in str(ack.failed[0].failure)

    arun(main())


def test_without_batchers_processors_ack_and_handle_failed_sees_failures():
    seen = []

    class NoBatch(Squares):
        def handle_failed(self, messages, context):
            seen.extend(m.data for m in messages)
            return messages

    async def main():
        async with NoBatch(**options(batchers={})) as pipeline:
            ack = await pipeline.test_batch([2, 13])
            assert [m.data for m in ack.successful] == [4]
            assert [m.data for m in ack.failed] == [13]
            assert seen == [13]

    arun(main())


def test_batch_keys_keep_batches_apart_and_partition_by_sends_each_partition_to_one_batch_processor():
    class Keyed(Pipeline):
        def handle_message(self, processor, message, context):
            return message.put_batch_key(message.data % 2)

        def handle_batch(self, batcher, messages, batch_info, context):
            keys = {m.data % 2 for m in messages}
            assert keys == {batch_info.batch_key}
            for m in messages:
                m.metadata["partition"] = batch_info.partition
            return messages

    async def main():
        opts = options(
            batchers={
                "default": {
                    "batch_size": 4,
                    "batch_timeout": 0.02,
                    "concurrency": 2,
                    "partition_by": lambda m: m.data % 2,
                }
            }
        )
        async with Keyed(**opts) as pipeline:
            ack = await pipeline.test_batch(list(range(20)))
            assert len(ack.successful) == 20
            assert all(m.metadata["partition"] == m.data % 2 for m in ack.successful)

    arun(main())


def test_rate_limiting_caps_messages_per_interval():
    async def main():
        opts = options(
            producer={"module": DummyProducer, "rate_limiting": {"allowed_messages": 5, "interval": 0.2}},
            batchers={"default": {"batch_size": 1, "batch_timeout": 0.01}},
        )
        async with Squares(**opts) as pipeline:
            loop = asyncio.get_running_loop()
            started = loop.time()
            ack = await pipeline.test_batch(list(range(20, 35)))
            assert len(ack.successful) == 15
            assert loop.time() - started >= 0.35  # 5 now, 5 after 0.2 s, 5 after 0.4 s

    arun(main())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"processors": {"default": {"concurency": 2}}},
            "unknown pipeline option concurency in processors.default; "
            "allowed: concurrency, min_demand, max_demand, isolation",
        ),
        (
            {"batchers": {"sqs": {"batch_size": 0}}},
            "invalid pipeline option batchers.sqs.batch_size: expected a positive integer, got 0",
        ),
        (
            {"processors": {"default": {"isolation": "thread"}}},
            "processors.default.isolation: expected one of 'task', 'process', got 'thread'",
        ),
        (
            {"processors": {"default": {"min_demand": 10}}},
            "processors.default.min_demand: expected less than max_demand=10, got 10",
        ),
        ({"shutdown": -1}, "invalid pipeline option shutdown: expected a number of seconds >= 0, got -1"),
        ({"producer": {}}, "required pipeline option producer.module is missing"),
        ({"frobnicate": 1}, "unknown pipeline option frobnicate; allowed: name, producer, processors"),
    ],
)
def test_a_bad_option_is_refused_naming_it_and_the_allowed_values(overrides, message):
    with pytest.raises(PipelineOptionsError) as info:
        Squares(**options(**overrides))
    assert message in str(info.value)


def test_defaults_are_broadways():
    opts = Squares(**options(batchers={"default": {}}, processors={"default": {}})).options
    assert opts["processors"]["default"]["max_demand"] == 10
    assert opts["processors"]["default"]["min_demand"] == 5
    assert opts["processors"]["default"]["concurrency"] == 2 * os.cpu_count()
    assert opts["batchers"]["default"]["batch_size"] == 100
    assert opts["batchers"]["default"]["batch_timeout"] == 1.0
    assert opts["shutdown"] == 30.0
    assert (opts["max_restarts"], opts["max_seconds"]) == (3, 5.0)


def test_telemetry_spans_carry_broadways_names():
    events = []
    names = [
        ("broadway", "processor", "start"),
        ("broadway", "processor", "stop"),
        ("broadway", "processor", "message", "start"),
        ("broadway", "processor", "message", "exception"),
        ("broadway", "batch_processor", "stop"),
        ("broadway", "topology", "init"),
    ]
    telemetry.attach_many("test-spans", names, lambda e, m, md, c: events.append(e))

    async def main():
        async with Squares(**options()) as pipeline:
            await pipeline.test_batch([1, 13])

    try:
        arun(main())
    finally:
        telemetry.detach("test-spans")
    assert set(events) == set(names)


class WherePid(Pipeline):
    """Answers with the pid it ran in (module level: process isolation pickles the class by name)."""

    def handle_message(self, processor, message, context):
        if message.data == "bad":
            raise KeyError("no such thing")
        if message.data == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return message.update_data(os.getpid())


def test_a_processor_crash_restarts_processors_and_batchers_but_not_the_producer():
    async def main():
        pipeline = WherePid(**options(processors={"default": {"concurrency": 2, "isolation": "process"}}))
        await pipeline.start()
        try:
            producer_before = pipeline.producers()[0]
            stages_before = pipeline.supervisor.which_children()[1].child
            pending = pipeline.test_message("kill")  # SIGKILLs the processor's worker process
            for _ in range(250):
                await asyncio.sleep(0.02)
                stages_now = pipeline.supervisor.which_children()[1].child
                if stages_now is not None and stages_now is not stages_before:
                    break
            else:
                raise AssertionError("the stages were not restarted")
            assert pipeline.producers()[0] is producer_before
            assert not pending.done()  # the killed message was not acked (a broker producer redelivers it)
            ack = await pipeline.test_message("x")  # the restarted topology works
            assert len(ack.successful) == 1
        finally:
            await pipeline.stop()

    arun(main())


def test_process_isolation_runs_handlers_in_other_processes_and_carries_failures_back():
    async def main():
        async with WherePid(**options(processors={"default": {"concurrency": 2, "isolation": "process"}})) as pipeline:
            ack = await pipeline.test_batch(["a", "b", "bad"])
            pids = {m.data for m in ack.successful}
            assert os.getpid() not in pids and len(ack.successful) == 2
            assert isinstance(ack.failed[0].failure, KeyError)

    arun(main())


def test_stop_drains_in_flight_messages_through_the_batchers_before_stopping():
    class Slow(Pipeline):
        def handle_message(self, processor, message, context):
            return message

        async def handle_batch(self, batcher, messages, batch_info, context):
            await asyncio.sleep(0.05)
            return messages

    async def main():
        pipeline = Slow(**options(batchers={"default": {"batch_size": 10, "batch_timeout": 10.0}}))
        await pipeline.start()
        pending = pipeline.test_batch(list(range(25)))
        await asyncio.sleep(0.05)
        reason = await pipeline.stop()
        assert reason.kind == "shutdown"
        ack = await asyncio.wait_for(pending, 1)  # answered by the drain, long before batch_timeout
        assert sorted(m.data for m in ack.successful) == list(range(25))

    arun(main())


def test_the_options_table_in_docs_is_the_schemas_own():
    from pathlib import Path

    from otpserve.flow.options import docs

    text = (Path(__file__).resolve().parents[1] / "docs" / "flow.md").read_text()
    table = text.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert table == docs()
