"""`otpserve pipeline`: the matmul exercise end to end in a real process, /metrics, stable consumer names,
clean errors, a graceful stop."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from otpserve.flow.redis.consumer_name import slot_consumer_name

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_matmul_products_go_to_results_and_bad_ones_to_dead_letters_with_the_kernels_message(
    redis_server, redis_client
):
    good = redis_client.xadd("m", {"a": orjson.dumps([[1, 2], [3, 4]]), "b": orjson.dumps([[5, 6], [7, 8]])}).decode()
    flat = redis_client.xadd(
        "m", {"a": "[1,2,3,4,5,6]", "a_rows": 2, "a_cols": 3, "b": "[1,0,0,1,1,1]", "b_rows": 3, "b_cols": 2}
    ).decode()
    bad = redis_client.xadd("m", {"a": orjson.dumps([[1, 2, 3]]), "b": orjson.dumps([[1, 2]])}).decode()
    wrong_size = redis_client.xadd("m", {"a": "[1,2,3]", "a_rows": 2, "a_cols": 2, "b": "[[1]]"}).decode()
    not_json = redis_client.xadd("m", {"a": "nope", "b": "[[1]]"}).decode()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "otpserve.cli", "pipeline", "matmul", "--redis", redis_server.url, "--stream", "m",
         "--metrics-port", str(port), "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: redis_client.xlen("m:results") + redis_client.xlen("m:dead") == 5)
        results = {f[b"id"].decode(): orjson.loads(f[b"c"]) for _, f in redis_client.xrange("m:results")}
        assert results == {good: [[19.0, 22.0], [43.0, 50.0]], flat: [[4.0, 5.0], [10.0, 11.0]]}
        dead = {f[b"id"].decode(): f[b"reason"].decode() for _, f in redis_client.xrange("m:dead")}
        assert (
            dead[bad] == "ValueError: matmul: inner dimensions do not match: a has shape (1, 3) and b has shape (1, 2)"
        )
        assert dead[wrong_size] == "ValueError: a has 3 numbers but a_rows x a_cols = 2 x 2 = 4"
        assert dead[not_json].startswith("ValueError: field 'a' is not JSON")
        wait_for(lambda: b"otpserve_pipeline_lag" in _get(port))
        metrics = _get(port).decode()
        assert 'otpserve_pipeline_messages_total{pipeline="otpserve-pipeline-matmul",outcome="acked"} 2' in metrics
        assert 'outcome="dead_lettered"} 3' in metrics
        assert "otpserve_pipeline_batch_size_count" in metrics
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"draining" in out and b"stopped (shutdown)" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _get(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read()
    except OSError:
        return b""


def test_an_unreachable_redis_is_one_clear_error_line_not_a_traceback():
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "otpserve.cli", "pipeline", "matmul", "--redis", f"redis://127.0.0.1:{port}/0",
         "--stream", "m"],
        cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "otpserve pipeline: error:" in err and f"127.0.0.1:{port}" in err and "Traceback" not in err


def test_a_bad_redis_url_names_it():
    proc = subprocess.run(
        [sys.executable, "-m", "otpserve.cli", "pipeline", "matmul", "--redis", "http://x", "--stream", "m"],
        cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "url must start with redis://, rediss:// or unix://, got 'http://x'" in proc.stderr.decode()


def test_consumer_names_are_stable_per_slot_and_never_shared_on_a_host(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    script = (
        "import sys, time; from otpserve.flow.redis.consumer_name import slot_consumer_name as n; "
        "print(n('redis://h', 's', 'g', host='box'), flush=True); time.sleep(float(sys.argv[1]))"
    )
    first = subprocess.Popen([sys.executable, "-c", script, "30"], stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline().strip() == b"box-0"
        second = subprocess.run([sys.executable, "-c", script, "0"], capture_output=True, timeout=30)
        assert second.stdout.strip() == b"box-1"  # slot 0 is held by a live process
        first.kill()  # SIGKILL: the kernel releases its lock at once
        first.wait()
        again = subprocess.run([sys.executable, "-c", script, "0"], capture_output=True, timeout=30)
        assert again.stdout.strip() == b"box-0"  # the restarted slot gets its name back
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert slot_consumer_name("redis://h", "s", "other-group", host="box") == "box-0"


@pytest.mark.parametrize("kind", ["nope"])
def test_an_unknown_kind_is_refused_by_the_parser(kind):
    proc = subprocess.run(
        [sys.executable, "-m", "otpserve.cli", "pipeline", kind, "--redis", "redis://x", "--stream", "m"],
        cwd=ROOT, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and b"invalid choice: 'nope'" in proc.stderr


def test_infer_answers_logits_for_json_and_float32_rows_and_dead_letters_a_wrong_width(
    redis_server, redis_client, tmp_path
):
    import numpy as np
    from otpserve.models import MLP

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((784, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    w2, b2 = rng.standard_normal((16, 10)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    model = MLP([(w1, b1), (w2, b2)])
    model.save(tmp_path / "mlp")
    x = rng.standard_normal((3, 784)).astype(np.float32)
    as_json = redis_client.xadd("d", {"x": orjson.dumps(x[0].tolist())}).decode()
    as_f32 = redis_client.xadd("d", {"x_f32": x[1].astype("<f4").tobytes()}).decode()
    short = redis_client.xadd("d", {"x_f32": x[2, :10].tobytes()}).decode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "otpserve.cli", "pipeline", "infer", "--redis", redis_server.url, "--stream", "d",
         "--model", str(tmp_path / "mlp"), "--no-progress", "--batch-timeout", "0.01"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: redis_client.xlen("d:results") + redis_client.xlen("d:dead") == 3, timeout=60)
        got = {f[b"id"].decode(): np.asarray(orjson.loads(f[b"y"])) for _, f in redis_client.xrange("d:results")}
        want = model.predict(x[:2])
        assert np.allclose(got[as_json], want[0], rtol=1e-5, atol=1e-5)
        assert np.allclose(got[as_f32], want[1], rtol=1e-5, atol=1e-5)
        (dead,) = [f for _, f in redis_client.xrange("d:dead")]
        assert dead[b"id"].decode() == short
        assert dead[b"reason"] == b"ValueError: x_f32 has 40 bytes; the model takes 784 float32 values (3136 bytes)"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
