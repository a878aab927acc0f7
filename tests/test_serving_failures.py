"""Let it crash, in one Serving: hangs are crashes (batch_deadline), workers are recycled without a failure."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _models import (
    SlowToStart,
    affine,
    block_in_native_code_on_negative,
    hang_once_then_answer,
    leak_per_batch,
)
from _procs import alive, wait_gone
from otpserve.errors import BatchHung
from otpserve.models import FunctionModel
from otpserve.serving import Serving, ServingOptions


def model_of(fn):
    return FunctionModel(fn, input_shape=(4,), output_shape=(3,), name=fn.__name__)


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) + start) / 7


def options(**kw) -> dict:
    return {"isolation": "process", "batch_timeout": 0.001, "batch_size": 4, **kw}


async def wait_for(predicate, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_a_batch_stuck_in_native_code_twice_fails_with_batch_hung_and_everyone_else_is_served():
    async def main():
        opts = options(partitions=2, batch_deadline=0.5)
        async with Serving(model_of(block_in_native_code_on_negative), **opts) as s:
            first = [p.pid for p in s.partitions]
            poison = asyncio.ensure_future(s.run(-rows(1)))
            await asyncio.sleep(0.1)
            # While one worker is stuck (GIL held, in native code) the other answers.
            good = await asyncio.wait_for(asyncio.gather(*(s.run(rows(1, i)) for i in range(8))), 10)
            with pytest.raises(BatchHung, match=r"ran past batch_deadline=0.5s on two workers"):
                await asyncio.wait_for(poison, 20)
            assert s.metrics.hangs.get() == 2
            assert s.metrics.reruns.get() == 1
            await wait_for(lambda: s.workers_alive == 2)
            assert wait_gone(first, within=5.0) == []  # both stuck workers were killed, not left running
            np.testing.assert_allclose(await s.run(rows(2)), affine(rows(2)), rtol=1e-6)
        for i, out in enumerate(good):
            np.testing.assert_allclose(out, affine(rows(1, i)), rtol=1e-6)

    asyncio.run(main())


def test_a_batch_that_hangs_once_is_rerun_on_a_live_worker_and_answered(tmp_path, monkeypatch):
    monkeypatch.setenv("OTPSERVE_TEST_MARKER", str(tmp_path / "hung"))

    async def main():
        async with Serving(model_of(hang_once_then_answer), **options(partitions=1, batch_deadline=0.4)) as s:
            stuck = s.partitions[0].pid
            out = await asyncio.wait_for(s.run(-rows(2)), 20)
            np.testing.assert_allclose(out, affine(rows(2)), rtol=1e-6)
            assert s.metrics.hangs.get() == 1 and s.metrics.reruns.get() == 1
            assert s.metrics.restarts.get() == 1
            assert s.partitions[0].pid != stuck and not alive(stuck)

    asyncio.run(main())


def test_a_stopped_worker_is_killed_and_replaced_and_its_callers_answered():
    async def main():
        async with Serving(model_of(affine), **options(partitions=1, batch_deadline=0.5)) as s:
            victim = s.partitions[0].pid
            os.kill(victim, signal.SIGSTOP)  # looks the same as a deadlock or a loop in native code
            outs = await asyncio.wait_for(asyncio.gather(*(s.run(rows(1, i)) for i in range(6))), 20)
            for i, out in enumerate(outs):
                np.testing.assert_allclose(out, affine(rows(1, i)), rtol=1e-6)
            assert s.metrics.hangs.get() == 1
            assert s.partitions[0].pid != victim
            assert wait_gone([victim], within=5.0) == []
            assert s.ready

    asyncio.run(main())


def test_readiness_is_false_while_the_only_worker_is_being_replaced_after_a_hang(monkeypatch):
    monkeypatch.setenv("OTPSERVE_TEST_START", "1.5")  # the replacement takes 1.5 s to load the model

    async def main():
        async with Serving(SlowToStart(), **options(partitions=1, batch_deadline=0.3)) as s:
            assert s.ready
            hung = asyncio.ensure_future(s.run(-rows(1)))
            await wait_for(lambda: s.metrics.hangs.get() == 1)
            assert not s.ready and s.workers_alive == 0  # nothing can take work: not ready
            await wait_for(lambda: s.ready)
            with pytest.raises(BatchHung):
                await asyncio.wait_for(hung, 20)
            np.testing.assert_allclose(await s.run(rows(1)), affine(rows(1)), rtol=1e-6)

    asyncio.run(main())


def test_a_thread_worker_that_hangs_is_abandoned_for_a_fresh_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("OTPSERVE_TEST_MARKER", str(tmp_path / "hung"))

    async def main():
        # time.sleep releases the GIL, so an abandoned thread costs nothing but itself.
        s = Serving(model_of(hang_once_then_answer), isolation="thread", batch_size=4, batch_deadline=0.3)
        async with s:
            out = await asyncio.wait_for(s.run(-rows(1)), 20)
            np.testing.assert_allclose(out, affine(rows(1)), rtol=1e-6)
            assert s.metrics.hangs.get() == 1 and s.metrics.restarts.get() == 1
            np.testing.assert_allclose(await s.run(rows(3)), affine(rows(3)), rtol=1e-6)

    asyncio.run(main())


def test_a_process_whose_thread_worker_hung_still_exits(tmp_path):
    # The abandoned thread sleeps for an hour: a thread the interpreter joins at exit would keep the process
    # (a server told to stop) alive that long.
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from _models import hang_once_then_answer
from otpserve.models import FunctionModel
from otpserve.serving import Serving

async def main():
    s = Serving(FunctionModel(hang_once_then_answer, input_shape=(4,), output_shape=(3,)),
                isolation="thread", batch_size=4, batch_deadline=0.2)
    async with s:
        await s.run(-np.ones((1, 4), np.float32))
    print("stopped", s.metrics.hangs.get())

asyncio.run(main())
"""
    env = {**os.environ, "OTPSERVE_TEST_MARKER": str(tmp_path / "hung")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stopped", "1"]


async def steady(s: Serving, callers: int, requests: int) -> tuple[list, list[int]]:
    """``callers`` closed-loop callers, ``requests`` each; returns the failures and the alive-worker samples."""
    failures: list = []
    alive_seen: list[int] = []

    async def caller(c: int) -> None:
        for i in range(requests):
            x = rows(1 + (i % 3), c * 100 + i)
            try:
                np.testing.assert_allclose(await s.run(x, timeout=10), affine(x), rtol=1e-5)
            except Exception as exc:
                failures.append(exc)

    async def sample() -> None:
        while True:
            alive_seen.append(s.workers_alive)
            await asyncio.sleep(0.001)

    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*(caller(c) for c in range(callers)))
    sampler.cancel()
    return failures, alive_seen


def test_workers_past_max_batches_are_recycled_under_load_without_a_failed_request():
    async def main():
        async with Serving(model_of(affine), **options(partitions=1, max_batches=20)) as s:
            first = s.partitions[0].pid
            failures, alive_seen = await steady(s, callers=8, requests=200)
            assert failures == []
            # A successor takes tens of ms to start, while the old worker serves on: each did >= 20 batches.
            recycled = s.metrics.recycles.get(labels=(("reason", "max_batches"),))
            assert 3 <= recycled <= s.metrics.batches.get() // 20, recycled
            assert s.metrics.restarts.get() == 0  # a recycle is not a crash
            assert min(alive_seen) == 1  # the successor was up before the old worker retired
            assert wait_gone([first], within=5.0) == []

    asyncio.run(main())


def test_a_worker_past_max_rss_is_recycled_and_its_successor_starts_small():
    async def main():
        opts = options(partitions=1)
        async with Serving(model_of(affine), **opts) as s:  # how big a fresh worker is
            await s.run(rows(1))
            fresh = s.partitions[0]._current.rss
        async with Serving(model_of(leak_per_batch), **options(partitions=1, max_rss=fresh + (16 << 20))) as s:
            failures, alive_seen = await steady(s, callers=2, requests=30)
            assert failures == []
            assert s.metrics.recycles.get(labels=(("reason", "max_rss"),)) >= 1
            assert min(alive_seen) == 1
            assert s.partitions[0]._current.first_rss < fresh + (16 << 20)

    asyncio.run(main())


def test_deadline_and_recycling_options_are_validated():
    with pytest.raises(ValueError, match=r"batch_deadline=0"):
        ServingOptions(batch_deadline=0)
    with pytest.raises(ValueError, match=r"max_batches=0: must be None or an integer >= 1"):
        ServingOptions(isolation="process", max_batches=0)
    with pytest.raises(ValueError, match=r"max_rss=1024: needs isolation='process'"):
        ServingOptions(max_rss=1024)
