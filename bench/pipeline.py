"""Pipeline benchmark: a Redis-fed Pipeline against a plain redis-py loop and Celery, in one run, on one Redis.

Sections (each prints its numbers and a ratio against a baseline measured in the same run):

1. ``trivial``: N preloaded entries consumed by (a) a plain redis-py loop — sync, hiredis, ``XREADGROUP COUNT
   100`` then ``XACK`` of the batch, the loop PIPELINES.md measured at ~100k msg/s — and (b) a ``Pipeline``
   with ``RedisStreamProducer``, a trivial ``handle_message`` and a batcher of 100. Target: b/a >= 1.0.
2. ``celery``: the same trivial task under Celery 5 with this Redis as broker, ``acks_late``, a prefork worker
   of 2 processes, no result backend: tasks/s from the first to the last done. Target: pipeline >= 20x.
3. ``infer``: ``otpserve pipeline infer`` end to end (x_f32 rows in, logits in ``:results``), Redis and the
   pipeline on the same 2 cores. Target: >= 20,000 msg/s. Also the JSON form of ``x``, for reference.
4. ``cpu``: a CPU-bound Python ``handle_message`` (a pure-Python loop of ~1 ms), processors as asyncio tasks
   vs as OS processes (``isolation="process"``), concurrency 2: the speed-up shows both cores at work.
5. ``guarantee``: the test suite's scenario at 100,000 messages (three SIGKILLs, a Redis restart).

    .venv/bin/python bench/pipeline.py [--only trivial,celery,infer,cpu,guarantee] [-n 200000]

Celery comes from the lock's ``bench`` extra (``bash bench/setup.sh`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import redis  # noqa: E402
import uvloop  # noqa: E402
from otpserve.flow import Pipeline  # noqa: E402
from otpserve.flow.redis import LocalRedis, RedisStreamProducer  # noqa: E402


def preload(client: redis.Redis, stream: str, n: int, fields: dict | None = None) -> None:
    """XADD n entries of ~100 bytes (pipelined, 1,000 a round trip)."""
    fields = fields or {"payload": "x" * 90}
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, fields)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


# ---- 1. trivial: plain redis-py loop vs Pipeline ----------------------------------------------------------


def plain_loop(url: str, stream: str, n: int) -> float:
    """The baseline: sync redis-py + hiredis, XREADGROUP COUNT 100 then XACK; msg/s."""
    client = redis.Redis.from_url(url)
    client.xgroup_create(stream, "plain", id="0")
    done = 0
    started = time.perf_counter()
    while done < n:
        reply = client.xreadgroup("plain", "c", {stream: ">"}, count=100, block=100)
        if not reply:
            continue
        ids = [eid for eid, _ in reply[0][1]]
        client.xack(stream, "plain", *ids)
        done += len(ids)
    took = time.perf_counter() - started
    client.close()
    return n / took


class Trivial(Pipeline):
    """Does nothing with a message: what is measured is the pipeline and its Redis traffic."""

    def handle_message(self, processor, message, context):
        return message


async def pipeline_run(url: str, stream: str, n: int) -> float:
    """A Pipeline with a trivial handle_message and a batcher of 100; msg/s from start to the last ack."""
    pipeline = Trivial(
        name="bench-trivial",
        producer={
            "module": RedisStreamProducer,
            "options": {"url": url, "stream": stream, "group": "pipeline", "consumer": "c", "retention": None},
        },
        # One processor and one batch processor: a trivial handler gains nothing from more stages on one
        # event loop, and each extra stage is one more hop per chunk (measured: 2+2 ran ~10-20 % slower).
        processors={"default": {"concurrency": 1, "max_demand": 200, "min_demand": 100}},
        batchers={"default": {"batch_size": 100, "batch_timeout": 0.01, "concurrency": 1}},
    )
    started = time.perf_counter()
    async with pipeline:
        producer = pipeline.producers()[0]
        while producer.stats()["acked"] < n:
            await asyncio.sleep(0.002)
        took = time.perf_counter() - started
    return n / took


def trivial(n: int, runs: int) -> float:
    plain, ours = [], []
    for _ in range(runs):  # alternate, on a fresh server each time, so neither side gets the warm one
        with LocalRedis() as server:
            client = redis.Redis.from_url(server.url)
            preload(client, "s", n)
            plain.append(plain_loop(server.url, "s", n))
            ours.append(uvloop.run(pipeline_run(server.url, "s", n)))
            client.close()
    ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    print(f"trivial ({n:,} entries, {runs} runs, both sides on the same server per run, plain first)")
    print(f"  plain redis-py loop (sync, hiredis, XREADGROUP COUNT 100 + XACK): {_spread(plain)} msg/s")
    print(f"  Pipeline (RedisStreamProducer, trivial handle_message, batch 100): {_spread(ours)} msg/s")
    print(f"  ratio Pipeline / plain loop: {_spread(ratios, '.2f')}  (target >= 1.0)")
    return statistics.median(ours)


# ---- 2. Celery ---------------------------------------------------------------------------------------------

CELERY_APP = """
import os
from celery import Celery
app = Celery("bench", broker=os.environ["BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, task_ignore_result=True,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

@app.task(name="trivial")
def trivial(i):
    return None
"""


def celery(n: int, pipeline_rate: float) -> None:
    try:
        import celery  # noqa: F401
    except ImportError:
        print("celery: not installed (bash bench/setup.sh installs the lock's bench extra); skipped")
        return
    with LocalRedis() as server, tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_celery.py").write_text(CELERY_APP)
        env = {**os.environ, "BROKER": server.url, "PYTHONPATH": tmp}
        sys.path.insert(0, tmp)
        os.environ["BROKER"] = server.url
        import bench_celery

        started = time.perf_counter()
        for i in range(n):
            bench_celery.trivial.delay(i)
        sent = time.perf_counter() - started
        client = redis.Redis.from_url(server.url)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench_celery", "worker", "-c", "2", "-P", "prefork",
             "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            first = None
            while True:
                left = client.llen("celery")
                if first is None and left < n:
                    first = time.perf_counter()
                if left == 0 and client.hlen("unacked") == 0:
                    break
                if worker.poll() is not None:
                    raise RuntimeError("the celery worker exited")
                time.sleep(0.01)
            took = time.perf_counter() - (first or started)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            client.close()
        rate = n / took
        print(f"celery ({n:,} trivial tasks, acks_late, prefork -c 2, Redis broker; enqueued at {n / sent:,.0f}/s)")
        print(f"  celery: {rate:,.0f} tasks/s;  Pipeline (trivial section): {pipeline_rate:,.0f} msg/s")
        print(f"  ratio Pipeline / Celery: {pipeline_rate / rate:.1f}x  (target >= 20x)")


# ---- 3. infer ----------------------------------------------------------------------------------------------


def infer(n: int, runs: int) -> None:
    rng = np.random.default_rng(0)
    rows = rng.random((256, 784), dtype=np.float32)
    for form in ("x_f32", "x"):
        rates = []
        for _ in range(runs):
            with LocalRedis() as server:
                client = redis.Redis.from_url(server.url)
                pipe = client.pipeline(transaction=False)
                for i in range(n):
                    row = rows[i % 256]
                    pipe.xadd("infer", {"x_f32": row.tobytes()} if form == "x_f32" else {"x": _json(row)})
                    if i % 1000 == 999:
                        pipe.execute()
                pipe.execute()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "otpserve.cli", "pipeline", "infer", "--redis", server.url,
                     "--stream", "infer", "--no-progress", "--batch-size", "256", "--batch-timeout", "0.005"],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
                try:
                    first = last = None
                    while True:
                        done = client.xlen("infer:results") + client.xlen("infer:dead")
                        now = time.perf_counter()
                        if first is None and done > 0:
                            first, first_done = now, done
                        if done >= n:
                            last = now
                            break
                        if proc.poll() is not None:
                            raise RuntimeError("otpserve pipeline infer exited")
                        time.sleep(0.005)
                    rates.append((n - first_done) / (last - first))
                    assert client.xlen("infer:dead") == 0
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                    client.close()
        print(f"infer ({n:,} entries with {form}, otpserve pipeline infer, batch 256, {runs} runs)")
        print(f"  end to end: {_spread(rates)} msg/s" + ("  (target >= 20,000)" if form == "x_f32" else ""))


def _json(row: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)


# ---- 4. CPU-bound handlers: tasks vs processes --------------------------------------------------------------


class Busy(Pipeline):
    """About a millisecond of pure Python per message: the GIL-bound kind of handler."""

    def handle_message(self, processor, message, context):
        total = 0
        for i in range(25_000):
            total += i * i
        return message.update_data(total)


async def busy_run(isolation: str, n: int) -> float:
    from otpserve.flow import DummyProducer

    pipeline = Busy(
        name=f"bench-busy-{isolation}",
        producer={"module": DummyProducer},
        processors={"default": {"concurrency": 2, "isolation": isolation, "max_demand": 20, "min_demand": 10}},
        batchers={"default": {"batch_size": 50, "batch_timeout": 0.01}},
    )
    async with pipeline:
        await pipeline.test_batch(range(40))  # warm up the workers
        started = time.perf_counter()
        ack = await pipeline.test_batch(range(n))
        took = time.perf_counter() - started
    assert len(ack.successful) == n
    return n / took


def cpu(n: int, runs: int) -> None:
    tasks, procs = [], []
    for _ in range(runs):
        tasks.append(asyncio.run(busy_run("task", n)))
        procs.append(asyncio.run(busy_run("process", n)))
    ratios = [p / t for p, t in zip(procs, tasks, strict=True)]
    print(f"cpu ({n:,} messages of ~1 ms pure Python, 2 processors, {runs} runs)")
    print(f"  processors as asyncio tasks (one core, the GIL): {_spread(tasks)} msg/s")
    print(f"  processors as OS processes:                      {_spread(procs)} msg/s")
    print(f"  speed-up: {_spread(ratios, '.2f')}  (2 cores: at most 2)")


# ---- 5. the guarantee at 100,000 ----------------------------------------------------------------------------


def guarantee(n: int) -> None:
    import flow_guarantee

    with LocalRedis() as server:
        outcome = flow_guarantee.run(server, n, kills=3, seed=7, timeout=900)
        problems = flow_guarantee.check(outcome)
    bad = sum(1 for want in outcome.expected.values() if want is None)
    print(f"guarantee ({n:,} matmul messages, {bad:,} with mismatched dimensions)")
    print(
        f"  {outcome.kills} SIGKILLs of the pipeline, {outcome.redis_restarts} redis-server SIGKILL+restart, "
        f"{outcome.seconds:.1f} s: results {len(outcome.results):,}, dead letters {len(outcome.dead):,}, "
        f"pending {outcome.pending}"
    )
    print("  zero lost, zero duplicated, every product numpy's" if not problems else f"  FAILED: {problems}")


def _spread(values: list[float], fmt: str = ",.0f") -> str:
    values = sorted(values)
    if len(values) == 1:
        return format(values[0], fmt)
    return f"median {format(statistics.median(values), fmt)} (range {format(values[0], fmt)}–{format(values[-1], fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="trivial,celery,infer,cpu,guarantee")
    parser.add_argument("-n", type=int, default=200_000, help="entries for the trivial section")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"bench/pipeline.py on {os.cpu_count()} cores (Redis, the generator and the pipeline share them)\n")
    rate = trivial(args.n, args.runs) if "trivial" in only else float("nan")
    if "celery" in only:
        celery(20_000, rate)
    if "infer" in only:
        infer(100_000, args.runs)
    if "cpu" in only:
        cpu(400, args.runs)
    if "guarantee" in only:
        guarantee(100_000)


if __name__ == "__main__":
    main()
