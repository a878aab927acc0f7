"""The pipeline guarantee, shared by tests/test_flow_guarantee.py (10,000 messages) and bench/pipeline.py
(100,000): matmul messages, some with mismatched dimensions; ``otpserve pipeline matmul`` SIGKILLed at random
moments and restarted, redis-server SIGKILLed and restarted once; afterwards every input id is exactly once
in ``:results`` or ``:dead``, every product is numpy's, every bad one is a dead letter naming the shapes, and
the group's pending list is empty."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
OTPSERVE = [sys.executable, "-m", "otpserve.cli"]


@dataclass
class Outcome:
    """What the run left behind, and what happened during it."""

    ids: list[str]
    expected: dict[str, np.ndarray | None]  # None: a bad pair
    results: dict[str, list[bytes]]  # input id -> the ``c`` of every result entry for it
    dead: dict[str, list[dict[bytes, bytes]]]
    pending: int
    kills: int
    redis_restarts: int
    seconds: float


def load(client: redis.Redis, stream: str, n: int, bad_every: int = 17, seed: int = 0) -> tuple[list[str], dict]:
    """XADD ``n`` matmul entries (every ``bad_every``-th with mismatched dimensions), pipelined."""
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    expected: dict[str, np.ndarray | None] = {}
    pipe = client.pipeline(transaction=False)
    pairs = []
    for i in range(n):
        m, k, p = (int(d) for d in rng.integers(1, 6, size=3))
        a = rng.integers(-9, 10, size=(m, k)).astype(np.float64)
        b = rng.integers(-9, 10, size=(k + (1 if i % bad_every == 0 else 0), p)).astype(np.float64)
        fields = {"a": orjson.dumps(a.tolist()), "b": orjson.dumps(b.tolist())}
        if i % 5 == 1:  # the reference's flat form, for a fifth of them
            fields = {
                "a": orjson.dumps(a.ravel().tolist()), "a_rows": m, "a_cols": k,
                "b": orjson.dumps(b.ravel().tolist()), "b_rows": b.shape[0], "b_cols": p,
            }  # fmt: skip
        pipe.xadd(stream, fields)
        pairs.append((a, b))
        if len(pairs) == 1000:
            for eid, (a_, b_) in zip(pipe.execute(), pairs, strict=True):
                ids.append(eid.decode())
                expected[ids[-1]] = a_ @ b_ if a_.shape[1] == b_.shape[0] else None
            pairs = []
    for eid, (a_, b_) in zip(pipe.execute(), pairs, strict=True):
        ids.append(eid.decode())
        expected[ids[-1]] = a_ @ b_ if a_.shape[1] == b_.shape[0] else None
    return ids, expected


def start_pipeline(url: str, stream: str, log: Path) -> subprocess.Popen:
    """``otpserve pipeline matmul`` in its own session (so its whole group can be killed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            *OTPSERVE,
            "pipeline",
            "matmul",
            "--redis",
            url,
            "--stream",
            stream,
            "--no-progress",
            "--batch-timeout",
            "0.01",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything in its session."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(server, n: int, kills: int = 3, log: Path | None = None, seed: int = 0, timeout: float = 240.0) -> Outcome:
    """The whole scenario against ``server`` (a LocalRedis)."""
    stream = "matmul"
    log = log or Path(server.dir) / "pipeline.log"
    client = redis.Redis.from_url(server.url)
    ids, expected = load(client, stream, n, seed=seed)
    rnd = random.Random(seed)
    # Kill points spread over the run, and the Redis restart between the first and the second kill.
    marks = sorted(rnd.uniform(0.1, 0.8) * n for _ in range(kills))
    redis_mark = (marks[0] + marks[1]) / 2 if kills >= 2 else n * 0.5
    started = time.monotonic()
    proc = start_pipeline(server.url, stream, log)
    done_kills = redis_restarts = 0
    try:
        while True:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not finished in {timeout} s; log: {log.read_text()[-3000:]}")
            try:
                finished = client.xlen(f"{stream}:results") + client.xlen(f"{stream}:dead")
            except redis.ConnectionError:
                time.sleep(0.05)
                continue
            if done_kills < kills and finished >= marks[done_kills]:
                time.sleep(rnd.uniform(0, 0.05))  # a random moment, not a batch boundary
                kill_group(proc)
                done_kills += 1
                proc = start_pipeline(server.url, stream, log)
            elif not redis_restarts and finished >= redis_mark:
                server.restart()
                redis_restarts += 1
                client = redis.Redis.from_url(server.url)
            elif finished >= n and done_kills == kills:
                if client.xpending(stream, "otpserve")["pending"] == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"the pipeline exited with {proc.returncode}; log: {log.read_text()[-3000:]}")
            time.sleep(0.005)
        seconds = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_group(proc)
    results: dict[str, list[bytes]] = {}
    for _, fields in client.xrange(f"{stream}:results"):
        results.setdefault(fields[b"id"].decode(), []).append(fields[b"c"])
    dead: dict[str, list[dict[bytes, bytes]]] = {}
    for _, fields in client.xrange(f"{stream}:dead"):
        dead.setdefault(fields[b"id"].decode(), []).append(fields)
    pending = client.xpending(stream, "otpserve")["pending"]
    client.close()
    return Outcome(ids, expected, results, dead, pending, done_kills, redis_restarts, seconds)


def check(outcome: Outcome) -> list[str]:
    """Every way the outcome breaks the guarantee (empty when it holds)."""
    problems = []
    seen = {i: len(outcome.results.get(i, ())) + len(outcome.dead.get(i, ())) for i in outcome.ids}
    lost = [i for i, k in seen.items() if k == 0]
    twice = [i for i, k in seen.items() if k > 1]
    if lost:
        problems.append(f"{len(lost)} input ids in neither results nor dead letters, e.g. {lost[:3]}")
    if twice:
        problems.append(f"{len(twice)} input ids written more than once, e.g. {twice[:3]}")
    stray = (set(outcome.results) | set(outcome.dead)) - set(outcome.ids)
    if stray:
        problems.append(f"{len(stray)} results for ids never sent")
    wrong = bad_reason = misplaced = 0
    for i, want in outcome.expected.items():
        if want is None:
            entries = outcome.dead.get(i)
            if not entries:
                misplaced += 1
            elif b"inner dimensions do not match" not in entries[0][b"reason"] or b"shape" not in entries[0][b"reason"]:
                bad_reason += 1
        else:
            got = outcome.results.get(i)
            if not got or not np.array_equal(np.asarray(orjson.loads(got[0])), want):
                wrong += 1
    if wrong:
        problems.append(f"{wrong} products differ from numpy's (or are missing)")
    if misplaced:
        problems.append(f"{misplaced} bad pairs are not dead letters")
    if bad_reason:
        problems.append(f"{bad_reason} dead letters do not name the dimensions")
    if outcome.pending:
        problems.append(f"{outcome.pending} entries still pending")
    return problems
