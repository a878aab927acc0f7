"""Serving: batching, bounds, deadlines, cancellation, and supervised workers that crash."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
from _models import affine, crash_on_negative, raise_on_negative, slow_affine
from otpserve.errors import DeadlineExceeded, Overloaded, ServingStopped, ShapeError, WorkerCrashed
from otpserve.models import FunctionModel
from otpserve.serving import Serving, ServingOptions


def model_of(fn):
    return FunctionModel(fn, input_shape=(4,), output_shape=(3,), name=fn.__name__)


class Recording:
    """A thread-isolated model that records the batch sizes it saw, and can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.rows_seen: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.input_shape = (4,)
        self.output_shape = (3,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.batches.append(len(x))
        self.rows_seen.append(x.copy())
        return affine(x)


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) + start) / 7


def test_run_answers_single_and_multi_row_requests_with_the_model_output():
    async def main():
        async with Serving(model_of(affine), batch_size=8, batch_timeout=0.001) as s:
            one = await s.run(rows(1))
            many = await s.run(rows(5, 3.0))
        np.testing.assert_allclose(one, affine(rows(1)), rtol=1e-6)
        np.testing.assert_allclose(many, affine(rows(5, 3.0)), rtol=1e-6)

    asyncio.run(main())


def test_concurrent_requests_are_merged_into_one_full_batch_without_waiting_for_the_timeout():
    model = Recording()

    async def main():
        async with Serving(model, batch_size=8, batch_timeout=30.0) as s:
            t0 = time.monotonic()
            outs = await asyncio.gather(*(s.run(rows(1, i)) for i in range(8)))
            elapsed = time.monotonic() - t0
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out, affine(rows(1, i)), rtol=1e-6)
        assert model.batches == [8]
        assert elapsed < 10, "a full batch must not wait for batch_timeout"

    asyncio.run(main())


def test_batch_closes_batch_timeout_after_its_first_request():
    model = Recording()

    async def main():
        async with Serving(model, batch_size=100, batch_timeout=0.2) as s:
            t0 = time.monotonic()
            first = asyncio.ensure_future(s.run(rows(1)))
            await asyncio.sleep(0.1)
            second = asyncio.ensure_future(s.run(rows(1, 1)))
            await asyncio.gather(first, second)
            elapsed = time.monotonic() - t0
        assert model.batches == [2]
        assert 0.15 <= elapsed < 5, f"batch closed {elapsed:.3f}s after its first request; expected ~0.2s"

    asyncio.run(main())


def test_requests_larger_than_a_batch_are_split_and_merged_back_in_order():
    model = Recording()

    async def main():
        async with Serving(model, batch_size=4, batch_timeout=0.001) as s:
            big, small = await asyncio.gather(s.run(rows(10)), s.run(rows(3, 50)))
        np.testing.assert_allclose(big, affine(rows(10)), rtol=1e-6)
        np.testing.assert_allclose(small, affine(rows(3, 50)), rtol=1e-6)
        assert max(model.batches) <= 4 and sum(model.batches) == 13

    asyncio.run(main())


def test_queue_full_raises_overloaded_at_once():
    model = Recording()
    model.gate.clear()

    async def main():
        async with Serving(model, batch_size=2, batch_timeout=0.001, max_queue=4) as s:
            running = asyncio.ensure_future(s.run(rows(2)))  # taken by the (blocked) worker
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(s.run(rows(2, i))) for i in range(2)]
            await asyncio.sleep(0.01)
            t0 = time.monotonic()
            with pytest.raises(Overloaded, match="queue full"):
                await s.run(rows(1))
            assert time.monotonic() - t0 < 0.05
            model.gate.set()
            await asyncio.gather(running, *queued)
            assert s.metrics.requests.get((("outcome", "overloaded"),)) == 1

    asyncio.run(main())


def test_deadline_passing_while_queued_raises_and_spends_no_compute():
    model = Recording()
    model.gate.clear()

    async def main():
        async with Serving(model, batch_size=1, batch_timeout=0.001) as s:
            running = asyncio.ensure_future(s.run(rows(1)))
            await asyncio.sleep(0.05)
            with pytest.raises(DeadlineExceeded):
                await s.run(np.full((1, 4), 99.0, np.float32), timeout=0.1)
            model.gate.set()
            await running
            await s.run(rows(1, 5))
        assert not any((seen == 99.0).any() for seen in model.rows_seen), "expired row reached the model"
        assert s.queue_depth == 0

    asyncio.run(main())


def test_default_deadline_expires_queued_requests_in_order_and_spares_answered_ones():
    model = Recording()
    model.gate.clear()

    async def main():
        async with Serving(model, batch_size=1, batch_timeout=0.001, default_timeout=0.2) as s:
            running = asyncio.ensure_future(s.run(rows(1)))  # held in the model past its deadline
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(s.run(np.full((1, 4), 55.0 + i, np.float32))) for i in range(3)]
            done = await asyncio.gather(*queued, return_exceptions=True)
            assert all(isinstance(d, DeadlineExceeded) for d in done)
            model.gate.set()
            with pytest.raises(DeadlineExceeded):  # its caller's deadline passed while it ran
                await running
            np.testing.assert_allclose(await s.run(rows(1, 2)), affine(rows(1, 2)), rtol=1e-6)
            assert s.metrics.requests.get((("outcome", "deadline_exceeded"),)) == 4
        assert not any((seen >= 55.0).any() for seen in model.rows_seen)

    asyncio.run(main())


def test_cancelled_caller_removes_its_rows_before_they_are_computed():
    model = Recording()
    model.gate.clear()

    async def main():
        async with Serving(model, batch_size=1, batch_timeout=0.001) as s:
            running = asyncio.ensure_future(s.run(rows(1)))
            await asyncio.sleep(0.05)
            doomed = asyncio.ensure_future(s.run(np.full((1, 4), 77.0, np.float32)))
            await asyncio.sleep(0.01)
            assert s.queue_depth == 1
            doomed.cancel()
            await asyncio.sleep(0.01)
            assert s.queue_depth == 0
            model.gate.set()
            await running
        assert not any((seen == 77.0).any() for seen in model.rows_seen)

    asyncio.run(main())


def test_bad_input_shape_and_dtype_raise_errors_naming_the_shapes():
    async def main():
        async with Serving(model_of(affine), batch_size=4) as s:
            with pytest.raises(ShapeError, match=r"\(2, 5\).*\(batch, 4\)"):
                await s.run(np.zeros((2, 5), np.float32))
            with pytest.raises(ShapeError, match="shape"):
                await s.run(np.zeros(4, np.float32))
            with pytest.raises(ShapeError, match="not numeric"):
                await s.run(np.array([["a", "b", "c", "d"]]))
            np.testing.assert_allclose(await s.run(rows(1).astype(np.float64)), affine(rows(1)), rtol=1e-6)

    asyncio.run(main())


def test_model_exception_fails_only_the_callers_of_that_batch():
    async def main():
        async with Serving(model_of(raise_on_negative), batch_size=1, batch_timeout=0.001) as s:
            bad, good = await asyncio.gather(s.run(-rows(1)), s.run(rows(1)), return_exceptions=True)
            assert isinstance(bad, ValueError) and "negative input" in str(bad)
            np.testing.assert_allclose(good, affine(rows(1)), rtol=1e-6)

    asyncio.run(main())


def test_options_are_validated_naming_the_option_and_allowed_values():
    with pytest.raises(ValueError, match=r"isolation.*'thread' and 'process'"):
        ServingOptions(isolation="fiber")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size=0"):
        ServingOptions(batch_size=0)
    with pytest.raises(TypeError, match="unknown Serving option"):
        Serving(model_of(affine), batchsize=3)


def test_run_sync_serves_blocking_callers_from_other_threads():
    serving = Serving(model_of(affine), batch_size=4, batch_timeout=0.001)
    with serving.start_in_thread() as s:
        out = s.run_sync(rows(2))
    np.testing.assert_allclose(out, affine(rows(2)), rtol=1e-6)


def test_take_behind_reports_the_oldest_waiting_request_then_the_longest_wait_and_resets():
    model = Recording()
    model.gate.clear()  # hold the worker: requests queue up behind the first batch

    async def main():
        async with Serving(model, batch_size=1, batch_timeout=0.001) as s:
            assert s.take_behind() == 0.0  # nothing queued, nothing answered
            first = asyncio.ensure_future(s.run(rows(1)))
            second = asyncio.ensure_future(s.run(rows(1)))
            await asyncio.sleep(0.05)
            waiting = s.take_behind()
            assert 0.04 < waiting < 5  # the second request has been queued ~50 ms behind the held batch
            model.gate.set()
            await asyncio.gather(first, second)
            # answered: the second waited for exactly one batch ahead of it, which is the model's pace
            assert s.take_behind() == 0.0

    asyncio.run(main())


def affine_in_20_ms(x: np.ndarray) -> np.ndarray:
    time.sleep(0.02)
    return affine(x)


def test_a_slow_model_at_ease_is_not_behind_however_long_its_batches_take():
    model = model_of(affine_in_20_ms)

    async def main():
        async with Serving(model, batch_size=4, batch_timeout=0.001) as s:

            async def caller() -> None:
                for _ in range(6):
                    await s.run(rows(1))

            readings: list[float] = []

            async def watch() -> None:
                while True:
                    await asyncio.sleep(0.005)
                    readings.append(s.take_behind())

            watcher = asyncio.ensure_future(watch())
            await asyncio.gather(*(caller() for _ in range(4)))
            watcher.cancel()
            # requests wait for the batch in progress and their own: that is the model's pace, not a backlog
            assert max(readings) < 0.010, readings

    asyncio.run(main())


def test_stop_drains_queued_work_and_then_refuses_new_requests():
    model = Recording()

    async def main():
        s = await Serving(model, batch_size=2, batch_timeout=5.0).start()
        pending = asyncio.ensure_future(s.run(rows(1)))  # waits for a batch that is not full
        await asyncio.sleep(0.01)
        await s.stop()
        np.testing.assert_allclose(await pending, affine(rows(1)), rtol=1e-6)
        with pytest.raises(ServingStopped):
            await s.run(rows(1))

    asyncio.run(main())


# ---- process isolation --------------------------------------------------------------------------------


def shared_buffers_mapped() -> list[str]:
    """This process's mappings of partition buffers (anonymous memfds named otpserve-partition-N)."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "memfd:otpserve-partition" in line]


def process_options(**kw) -> dict:
    return {"isolation": "process", "batch_timeout": 0.001, **kw}


def test_process_workers_answer_through_shared_memory():
    async def main():
        async with Serving(model_of(affine_in_20_ms), **process_options(batch_size=8, partitions=2)) as s:
            outs = await asyncio.gather(*(s.run(rows(3, i)) for i in range(10)))
            assert s.workers_alive == 2
            pids = [p.pid for p in s.partitions]
            compute = s.metrics.compute  # each worker reports what the model took on each batch
            assert compute.count == s.metrics.batches.get() > 0
            assert 0.02 * compute.count <= compute.sum < 5
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out, affine(rows(3, i)), rtol=1e-6)
        assert all(pid != os.getpid() for pid in pids)

    asyncio.run(main())


def test_worker_killed_mid_batch_is_restarted_and_its_batch_rerun_for_every_caller(monkeypatch):
    monkeypatch.setenv("OTPSERVE_TEST_SLOW", "0.4")

    async def main():
        async with Serving(model_of(slow_affine), **process_options(batch_size=8, partitions=1)) as s:
            victim = s.partitions[0].pid
            calls = [asyncio.ensure_future(s.run(rows(1, i))) for i in range(5)]
            await asyncio.sleep(0.15)  # the batch is inside the worker now
            assert s.partitions[0].batch is not None
            os.kill(victim, signal.SIGKILL)
            outs = await asyncio.wait_for(asyncio.gather(*calls), 30)
            assert s.partitions[0].pid != victim
            assert s.metrics.reruns.get() == 1
            assert s.metrics.restarts.get() >= 1
            assert s.ready
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out, affine(rows(1, i)), rtol=1e-6)
        with pytest.raises(ProcessLookupError):
            os.kill(victim, 0)

    asyncio.run(main())


def test_batch_that_kills_its_worker_twice_fails_with_worker_crashed_and_others_are_served():
    async def main():
        async with Serving(model_of(crash_on_negative), **process_options(batch_size=1, partitions=1)) as s:
            with pytest.raises(WorkerCrashed, match="died running this batch twice"):
                await asyncio.wait_for(s.run(-rows(1)), 30)
            await asyncio.wait_for(s._up.wait(), 30)
            for _ in range(100):  # the restarted worker comes up
                if s.ready:
                    break
                await asyncio.sleep(0.05)
            np.testing.assert_allclose(await asyncio.wait_for(s.run(rows(1)), 30), affine(rows(1)), rtol=1e-6)

    asyncio.run(main())


def test_readiness_is_false_and_requests_fail_when_workers_keep_dying_past_restart_intensity():
    async def main():
        opts = process_options(batch_size=1, partitions=1, max_restarts=1, max_seconds=30.0)
        s = await Serving(model_of(crash_on_negative), **opts).start()
        try:
            assert s.ready
            for _ in range(3):
                try:
                    await asyncio.wait_for(s.run(-rows(1)), 30)
                except (WorkerCrashed, ServingStopped):
                    pass
                if not s.ready:
                    break
                for _ in range(100):
                    if s.ready:
                        break
                    await asyncio.sleep(0.05)
            for _ in range(100):
                if not s.ready:
                    break
                await asyncio.sleep(0.05)
            assert not s.ready
            with pytest.raises(ServingStopped):
                await s.run(rows(1))
        finally:
            await s.stop()

    asyncio.run(main())


def test_stopping_a_process_serving_leaves_no_worker_process_or_shared_buffer_behind():
    async def main():
        s = await Serving(model_of(affine), **process_options(partitions=2)).start()
        pids = [p.pid for p in s.partitions]
        await s.run(rows(2))
        assert len(shared_buffers_mapped()) == 2  # one buffer per partition while it runs
        await s.stop()
        return pids

    pids = asyncio.run(main())
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert shared_buffers_mapped() == []


class Unpicklable:
    """A model that cannot be sent to a worker process (a lambda inside)."""

    input_shape = (4,)
    output_shape = (3,)

    def __init__(self) -> None:
        self.fn = lambda x: x

    def predict(self, x: np.ndarray) -> np.ndarray:
        return affine(x)


def test_a_worker_that_cannot_start_fails_start_and_leaves_no_shared_buffer_behind():
    async def main():
        with pytest.raises(Exception, match=r"could not start|pickle"):
            await Serving(Unpicklable(), **process_options(partitions=1)).start()

    asyncio.run(main())
    assert shared_buffers_mapped() == []


class FailsOnce:
    """Raises on its first batch only."""

    input_shape = (4,)
    output_shape = (3,)

    def __init__(self) -> None:
        self.failed = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.failed:
            self.failed = True
            raise RuntimeError("first batch fails")
        return affine(x)


def test_a_failed_batch_of_a_split_request_frees_its_queued_rows_so_later_requests_run():
    async def main():
        async with Serving(FailsOnce(), batch_size=4, batch_timeout=0.001, default_timeout=5.0) as s:
            big = asyncio.ensure_future(s.run(rows(6)))  # 4 rows in the failing batch, 2 still queued
            small = asyncio.ensure_future(s.run(rows(1, 9)))
            with pytest.raises(RuntimeError, match="first batch fails"):
                await big
            np.testing.assert_allclose(await small, affine(rows(1, 9)), rtol=1e-6)
            assert s.queue_depth == 0
            later = await asyncio.wait_for(s.run(rows(1, 3)), 2)  # would wait for its deadline if rows leaked
            np.testing.assert_allclose(later, affine(rows(1, 3)), rtol=1e-6)

    asyncio.run(main())
