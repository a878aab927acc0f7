"""`otpserve serve --acceptors N`: several supervised server processes on one port, one /metrics for all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _crash import free_port
from _procs import alive, by_kind, descendants
from otpserve.metrics import merge_expositions
from otpserve.models import MLP


def test_merged_metrics_add_counters_and_histograms_and_keep_the_worst_lag():
    a = (
        "# HELP r_total Requests.\n# TYPE r_total counter\n"
        'r_total{code="200"} 3\n'
        "# HELP h Latency.\n# TYPE h histogram\n"
        'h_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 0.5\nh_count 2\n'
        "# HELP otpserve_event_loop_lag_seconds Lag.\n# TYPE otpserve_event_loop_lag_seconds gauge\n"
        "otpserve_event_loop_lag_seconds 0.002\n"
    )
    b = (
        "# HELP r_total Requests.\n# TYPE r_total counter\n"
        'r_total{code="200"} 4\nr_total{code="503"} 1\n'
        "# HELP h Latency.\n# TYPE h histogram\n"
        'h_bucket{le="0.1"} 0\nh_bucket{le="+Inf"} 1\nh_sum 0.25\nh_count 1\n'
        "# HELP otpserve_event_loop_lag_seconds Lag.\n# TYPE otpserve_event_loop_lag_seconds gauge\n"
        "otpserve_event_loop_lag_seconds 0.009\n"
    )
    merged = merge_expositions([a, b])
    assert 'r_total{code="200"} 7' in merged and 'r_total{code="503"} 1' in merged
    assert 'h_bucket{le="+Inf"} 3' in merged and "h_sum 0.75" in merged and "h_count 3" in merged
    assert "otpserve_event_loop_lag_seconds 0.009" in merged
    assert merged.count("# TYPE r_total counter") == 1


def get(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


@pytest.mark.timeout(180)
def test_acceptors_share_the_port_survive_a_killed_acceptor_and_stop_without_orphans(tmp_path: Path):
    rng = np.random.default_rng(0)
    MLP([(rng.standard_normal((4, 3)).astype(np.float32), np.zeros(3, np.float32))]).save(tmp_path / "m")
    port = free_port()
    env = {**os.environ, "OTPSERVE_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "otpserve.cli", "serve", str(tmp_path / "m"), "--port", str(port), "--acceptors", "2"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
    try:
        line = server.stdout.readline()
        assert "2 acceptor processes" in line, line
        assert get(f"{base}/v2/models/mlp/infer", body)[0] == 200
        acceptors = by_kind(server.pid)["acceptor"]
        assert len(acceptors) == 2, acceptors
        deadline = time.monotonic() + 10
        while b'otpserve_workers_alive{model="mlp"} 2' not in get(f"{base}/metrics")[1]:
            assert time.monotonic() < deadline, "the merged metrics never showed both acceptors' workers"
            time.sleep(0.2)

        os.kill(acceptors[0], signal.SIGKILL)  # the other keeps answering while the supervisor restarts it
        statuses = [get(f"{base}/v2/models/mlp/infer", body)[0] for _ in range(20)]
        assert statuses.count(200) >= 15, statuses
        deadline = time.monotonic() + 30
        while len(by_kind(server.pid).get("acceptor", [])) < 2:
            assert time.monotonic() < deadline, "the killed acceptor was not restarted"
            time.sleep(0.2)
    finally:
        everything = descendants(server.pid)
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in everything):
        assert time.monotonic() < deadline, f"left behind: {[p for p in everything if alive(p)]}"
        time.sleep(0.1)
