"""The HTTP face: KServe v2 routes, the binary extension, bad input, overload, deadlines, disconnects, fuzz."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from _models import affine, crash_on_negative
from otpserve.http import HttpServer
from otpserve.http.shedding import LoadShedder
from otpserve.models import FunctionModel
from otpserve.serving import Serving


class Gated:
    """A 4 -> 3 model that can be held at a gate (to fill queues and pass deadlines)."""

    input_shape = (4,)
    output_shape = (3,)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.rows = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.rows += len(x)
        return affine(x)


@contextmanager
def running_server(model=None, **opts) -> Iterator[tuple[int, Serving, HttpServer]]:
    """A Serving + HttpServer on an event loop in a background thread, on a free port."""
    model = model or FunctionModel(affine, input_shape=(4,), output_shape=(3,))
    http_opts = {k: opts.pop(k) for k in ("max_body", "request_timeout") if k in opts}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        serving = await Serving(model, batch_timeout=0.001, **opts).start()
        server = await HttpServer({"tiny": serving}, "127.0.0.1", 0, **http_opts).start()
        return serving, server

    serving, server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield server.port, serving, server
    finally:

        async def stop():
            await server.stop(grace=1.0)
            await serving.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def infer_body(x: np.ndarray, **extra) -> bytes:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


X = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3) / 5


@pytest.fixture(scope="module")
def port():
    with running_server(batch_size=8) as (port, _, _):
        yield port


def test_health_live_ready_and_metadata(port):
    assert request(port, "GET", "/v2/health/live")[0] == 200
    status, _, body = request(port, "GET", "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = request(port, "GET", "/v2/models/tiny")
    meta = json.loads(body)
    assert status == 200
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    assert request(port, "GET", "/v2/models/tiny/ready")[0] == 200
    assert "binary_tensor_data" in json.loads(request(port, "GET", "/v2")[2])["extensions"]


def test_json_inference_returns_v2_outputs_and_echoes_the_id(port):
    status, _, body = request(port, "POST", "/v2/models/tiny/infer", infer_body(X, id="req-7"))
    assert status == 200
    out = json.loads(body)
    assert out["id"] == "req-7" and out["model_name"] == "tiny"
    (tensor,) = out["outputs"]
    assert tensor["shape"] == [2, 3] and tensor["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(tensor["data"]).reshape(2, 3), affine(X), rtol=1e-6)


def test_nested_json_data_is_accepted(port):
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}]})
    status, _, resp = request(port, "POST", "/v2/models/tiny/infer", body.encode())
    assert status == 200
    np.testing.assert_allclose(np.array(json.loads(resp)["outputs"][0]["data"]).reshape(2, 3), affine(X), rtol=1e-6)


def test_binary_tensor_extension_in_and_out(port):
    raw = X.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = request(
        port,
        "POST",
        "/v2/models/tiny/infer",
        header + raw,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_allclose(np.frombuffer(body[n:], "<f4").reshape(2, 3), affine(X), rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (
            b'{"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1,2,3,4,5]}]}',
            {},
            400,
            "(1, 5)",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3]}]}',
            {},
            400,
            "shape",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a","b","c","d"]}]}',
            {},
            400,
            "numeric",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1,"x",3,4]}]}',
            {},
            400,
            "input",
        ),
        (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype"', {}, 400, "invalid inference request"),
        (b'{"outputs": []}', {}, 400, "inputs"),
        (b"not json at all", {}, 400, "invalid"),
        (b'{"inputs": []}', {}, 400, "exactly 1 input"),
        (infer_body(X), {"X-Request-Timeout": "soon"}, 400, "X-Request-Timeout"),
        (infer_body(X), {"Inference-Header-Content-Length": "99999"}, 400, "outside the body"),
        (b"{}" + b"\0" * 8, {"Inference-Header-Content-Length": "2"}, 400, "inputs"),
    ],
)
def test_bad_inference_requests_get_400_naming_the_problem(port, body, headers, status, fragment):
    got, _, resp = request(port, "POST", "/v2/models/tiny/infer", body, headers)
    assert got == status, resp
    assert fragment in json.loads(resp)["error"]


def test_unknown_model_route_and_method_get_404_and_405(port):
    status, _, body = request(port, "POST", "/v2/models/nope/infer", infer_body(X))
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]
    assert request(port, "GET", "/nowhere")[0] == 404
    assert request(port, "GET", "/v2/models/tiny/infer")[0] == 405
    assert request(port, "POST", "/v2/health/live", b"")[0] == 405


def test_body_over_the_limit_gets_413_before_it_is_read():
    with running_server(batch_size=4, max_body=1000) as (port, _, _):
        reply = raw_exchange(
            port,
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 100,
        )
        assert reply.startswith(b"HTTP/1.1 413")
        assert b"over the limit of 1000 bytes" in reply


def test_lying_content_length_gets_408_and_the_server_keeps_answering():
    with running_server(batch_size=4, request_timeout=0.5) as (port, _, _):
        t0 = time.monotonic()
        reply = raw_exchange(port, b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{", 5)
        assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4
        assert request(port, "POST", "/v2/models/tiny/infer", infer_body(X))[0] == 200


def test_malformed_http_gets_400_and_closes():
    with running_server(batch_size=4) as (port, _, _):
        assert raw_exchange(port, b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert request(port, "GET", "/v2/health/live")[0] == 200


def test_full_queue_gets_503_with_retry_after_at_once():
    model = Gated()
    model.gate.clear()
    with running_server(model, batch_size=1, max_queue=1) as (port, _, _):
        held = [threading.Thread(target=request, args=(port, "POST", "/v2/models/tiny/infer", infer_body(X[:1])))]
        held.append(threading.Thread(target=request, args=(port, "POST", "/v2/models/tiny/infer", infer_body(X[:1]))))
        for t in held:
            t.start()
            time.sleep(0.2)  # first one runs (blocked), second one queues
        t0 = time.monotonic()
        status, headers, body = request(port, "POST", "/v2/models/tiny/infer", infer_body(X[:1]))
        elapsed = time.monotonic() - t0
        model.gate.set()
        for t in held:
            t.join(10)
        assert status == 503 and headers.get("retry-after") == "1"
        assert "queue full" in json.loads(body)["error"]
        assert elapsed < 1.0


def test_deadline_passed_in_queue_gets_504_and_no_compute():
    model = Gated()
    model.gate.clear()
    with running_server(model, batch_size=1) as (port, _, _):
        blocker = threading.Thread(target=request, args=(port, "POST", "/v2/models/tiny/infer", infer_body(X[:1])))
        blocker.start()
        time.sleep(0.2)
        status, _, body = request(port, "POST", "/v2/models/tiny/infer", infer_body(X), {"X-Request-Timeout": "0.2"})
        model.gate.set()
        blocker.join(10)
        assert status == 504 and "deadline" in json.loads(body)["error"]
        time.sleep(0.1)
        assert model.rows == 1  # only the blocker's row was computed


def test_client_disconnect_cancels_its_queued_request():
    model = Gated()
    model.gate.clear()
    with running_server(model, batch_size=1) as (port, serving, _):
        blocker = threading.Thread(target=request, args=(port, "POST", "/v2/models/tiny/infer", infer_body(X[:1])))
        blocker.start()
        time.sleep(0.2)
        body = infer_body(X)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            time.sleep(0.2)
            assert serving.queue_depth == 2
        time.sleep(0.3)
        assert serving.queue_depth == 0
        assert serving.metrics.requests.get((("outcome", "cancelled"),)) == 1
        model.gate.set()
        blocker.join(10)
        assert model.rows == 1


def test_metrics_expose_requests_latency_queue_batches_and_workers(port):
    request(port, "POST", "/v2/models/tiny/infer", infer_body(X))
    status, headers, body = request(port, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        'otpserve_requests_total{model="tiny",outcome="success"}',
        "otpserve_request_duration_seconds_bucket",
        "otpserve_queue_duration_seconds_count",
        'otpserve_queue_depth{model="tiny"} 0',
        "otpserve_batch_size_bucket",
        "otpserve_batches_total",
        'otpserve_workers_alive{model="tiny"} 1',
        "otpserve_worker_restarts_total",
        'otpserve_http_responses_total{code="200"}',
    ):
        assert name in text, name


def test_pipelined_requests_are_answered_in_order(port):
    a, b = infer_body(X[:1], id="a"), infer_body(X[1:], id="b")
    data = b"".join(
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(p), p) for p in (a, b)
    )
    data += b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw_exchange(port, data)
    assert reply.count(b"HTTP/1.1 200") == 3
    assert reply.index(b'"id":"a"') < reply.index(b'"id":"b"') < reply.index(b'{"live":true}')


def test_fuzzed_requests_never_get_500_and_the_server_still_answers_correctly():
    rng = random.Random(1234)
    valid = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    body = infer_body(X, id="fuzz")
    statuses: dict[int, int] = {}
    with running_server(batch_size=8, request_timeout=0.3) as (port, _, _):
        for i in range(200):
            kind = i % 5
            if kind == 1 and i % 25 != 1:  # each lying length costs request_timeout; a few suffice
                kind = 0
            payload = bytearray(body)
            if kind == 0:  # flip bytes in the body, keep the length honest
                for _ in range(rng.randrange(1, 6)):
                    payload[rng.randrange(len(payload))] = rng.randrange(256)
                data = valid % (len(payload), bytes(payload))
            elif kind == 1:  # truncate the body but declare it whole (a lying Content-Length)
                data = valid % (len(payload), bytes(payload[: rng.randrange(len(payload))]))
            elif kind == 2:  # random bytes as the whole request
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            elif kind == 3:  # mangle the request head
                head = bytearray(valid % (len(payload), b""))
                for _ in range(3):
                    head[rng.randrange(len(head))] = rng.randrange(256)
                data = bytes(head) + bytes(payload)
            else:  # a datatype or shape the model cannot take
                data = valid % (
                    len(payload),
                    bytes(payload).replace(b"FP32", rng.choice([b"BOOL", b"FP64", b"XX"])),
                )
            reply = raw_exchange(port, data, timeout=2.0)
            if reply:
                code = int(reply[9:12])
                statuses[code] = statuses.get(code, 0) + 1
                assert code < 500, reply[:300]
        status, _, resp = request(port, "POST", "/v2/models/tiny/infer", body)
        assert status == 200
        np.testing.assert_allclose(np.array(json.loads(resp)["outputs"][0]["data"]).reshape(2, 3), affine(X), rtol=1e-6)
    assert statuses.get(400, 0) > 50


def test_readiness_turns_false_when_workers_keep_dying_while_liveness_stays_true():
    model = FunctionModel(crash_on_negative, input_shape=(4,), output_shape=(3,))
    with running_server(model, batch_size=1, isolation="process", max_restarts=1, max_seconds=60.0) as (port, _, _):
        assert request(port, "GET", "/v2/health/ready")[0] == 200
        poison = -np.ones((1, 4), np.float32)  # crash_on_negative kills its worker on it, twice
        status, headers, body = request(port, "POST", "/v2/models/tiny/infer", infer_body(poison))
        assert status == 503 and headers.get("retry-after") == "1", body
        for _ in range(100):
            if request(port, "GET", "/v2/health/ready")[0] == 503:
                break
            time.sleep(0.05)
        assert request(port, "GET", "/v2/health/ready")[0] == 503
        assert request(port, "GET", "/v2/models/tiny/ready")[0] == 503
        assert request(port, "GET", "/v2/health/live")[0] == 200
        status, _, body = request(port, "POST", "/v2/models/tiny/infer", infer_body(X[:1]))
        assert status == 503 and "stopped" in json.loads(body)["error"]


def test_load_shedder_caps_admissions_per_tick_while_ticks_run_late_and_lifts_the_cap_once_calm():
    shedder = LoadShedder(engage=0.010, above=0.004, sustain=2, max_cut=0.5, min_cut=0.9, increase=0.5, calm_ticks=2)

    def tick(arrivals: int, behind: float) -> tuple[int, float | None]:
        admitted = sum(not shedder.refuse() for _ in range(arrivals))
        return admitted, shedder.observe(behind)

    assert tick(100, 0.001) == (100, None)
    assert tick(100, 0.050) == (100, None)  # one stall is not overload
    assert tick(100, 0.001) == (100, None)
    assert tick(100, 0.008) == (100, None)  # behind, but not by enough to start capping
    assert tick(100, 0.008) == (100, None)
    assert tick(100, 0.011) == (100, None)
    assert tick(100, 0.016) == (100, 50.0)  # the second tick in a row over `engage` caps: 100 x 4/16 -> max_cut
    assert tick(300, 0.005) == (50, 50.0)  # three times the arrivals, still 50 admitted; one late tick: hold
    assert shedder.shedding and shedder.admit == 50 / 300
    assert tick(300, 0.0042) == (50, 45.0)  # the second late tick in a row cuts: 50 x 0.9 (min_cut)
    assert tick(300, 0.003) == (45, 45 * 1.5 + 1)  # keeping time grows the cap, refusals or not
    assert tick(60, 0.003) == (60, 68.5 * 1.5 + 1)  # the cap no longer bites: one more such tick lifts it
    assert tick(60, 0.003) == (60, None)
    assert not shedder.shedding
    shedder.limit = 0.5  # never below one a tick (floor): the server keeps doing useful work
    shedder._late = 5
    assert shedder.observe(1.0) == 1.0
    with pytest.raises(ValueError, match="engage"):
        LoadShedder(above=0.02, engage=0.01)
    with pytest.raises(ValueError, match="floor"):
        LoadShedder(floor=0)


def test_while_the_loop_runs_late_inference_is_refused_with_503_before_decoding():
    with running_server(batch_size=4) as (port, serving, server):
        server.shedder.observe = lambda lag: server.shedder.limit  # the lag watcher may not change it
        server.shedder.limit = 0.0
        status, headers, body = request(port, "POST", "/v2/models/tiny/infer", b"not even json")
        assert status == 503 and headers.get("retry-after") == "1"
        assert "overloaded" in json.loads(body)["error"]
        assert request(port, "GET", "/v2/health/live")[0] == 200  # only inference is shed
        server.shedder.limit = None
        assert request(port, "POST", "/v2/models/tiny/infer", infer_body(X))[0] == 200
        assert serving.metrics.requests.get((("outcome", "overloaded"),)) == 1
        assert server.shed.get() == 1


def test_blocking_the_event_loop_shows_up_as_lag_and_lowers_admission_until_it_recovers():
    with running_server(batch_size=4) as (_, _, server):
        loop_blocked = threading.Event()

        def block(times: int) -> None:
            loop_blocked.set()
            time.sleep(0.03)  # the loop is stuck, as under a flood of requests, tick after tick
            if times > 1:
                server.loop.call_later(0.001, block, times - 1)

        server.loop.call_soon_threadsafe(block, 10)
        loop_blocked.wait(5)
        deadline = time.monotonic() + 5
        while not server.shedder.shedding and time.monotonic() < deadline:
            time.sleep(0.001)
        assert server.shedder.shedding, f"behind {server.shedder.behind}"
        deadline = time.monotonic() + 5
        while server.shedder.shedding and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not server.shedder.shedding  # and it recovers once the loop keeps time again


def _stall_loop(server: HttpServer, times: int, seconds: float = 0.03) -> None:
    """Block the server's loop `times` times in a row, as a host that takes the CPU away would."""
    stalled = threading.Event()

    def block(left: int) -> None:
        stalled.set()
        time.sleep(seconds)
        if left > 1:
            server.loop.call_later(0.001, block, left - 1)

    server.loop.call_soon_threadsafe(block, times)
    stalled.wait(5)


def test_a_stall_our_few_connections_cannot_explain_is_not_shed_but_one_they_can_is():
    with running_server(batch_size=4) as (port, _, server):
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            deadline = time.monotonic() + 5
            while len(server.connections) < 4 and time.monotonic() < deadline:
                time.sleep(0.001)
            # 4 connections x 50 us: our own requests could make the loop at most 0.2 ms late.
            server.request_cost = 50e-6
            _stall_loop(server, 10)
            time.sleep(0.4)
            assert not server.shedder.shedding, f"behind {server.shedder.behind}"
            assert server.shedder.behind <= 4 * 50e-6 + 1e-3  # the stall beyond that was not counted
            # 4 connections x 20 ms: a backlog that size could be ours, so the same stall caps admission.
            server.request_cost = 0.020
            _stall_loop(server, 10)
            deadline = time.monotonic() + 5
            while not server.shedder.shedding and time.monotonic() < deadline:
                time.sleep(0.001)
            assert server.shedder.shedding, f"behind {server.shedder.behind}"
        finally:
            for sock in sockets:
                sock.close()


def test_request_cost_is_measured_from_the_loops_cpu_time_per_inference_request():
    with running_server(batch_size=8) as (port, _, server):
        assert server.request_cost is None
        body = infer_body(X)

        def client(_: int) -> list[int]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            statuses = []
            for _ in range(100):
                conn.request("POST", "/v2/models/tiny/infer", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            conn.close()
            return statuses

        threads = []
        results: list[list[int]] = []
        for i in range(16):
            threads.append(threading.Thread(target=lambda i=i: results.append(client(i))))
            threads[-1].start()
        for t in threads:
            t.join(60)
        assert [s for r in results for s in r] == [200] * 1600
        # Some tick saw a handful of requests; a request costs microseconds to a millisecond of CPU.
        assert server.request_cost is not None and 0 < server.request_cost < 0.005, server.request_cost


def test_a_protocol_error_behind_an_in_flight_request_is_answered_after_it_in_order():
    model = Gated()
    model.gate.clear()
    with running_server(model, batch_size=1, max_body=20_000) as (port, _, _):
        good = infer_body(X[:1], id="first")
        data = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(good), good)
        data += b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            time.sleep(0.2)
            model.gate.set()
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.index(b"HTTP/1.1 200") < reply.index(b"HTTP/1.1 413")
        assert b'"id":"first"' in reply


def test_hundreds_of_pipelined_requests_are_all_answered():
    model = Gated()
    model.gate.clear()
    with running_server(model, batch_size=1) as (port, _, _):
        body = infer_body(X[:1])
        data = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        data += b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 600
        data += b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            sender = threading.Thread(target=s.sendall, args=(data,))
            sender.start()
            time.sleep(0.2)
            model.gate.set()
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            sender.join(10)
        assert reply.count(b"HTTP/1.1 200") == 602
        assert b"HTTP/1.1 500" not in reply


def test_binary_request_with_a_hostile_shape_gets_400(port):
    header = json.dumps({"inputs": [{"name": "input", "shape": [4611686018427387904, 4], "datatype": "FP32"}]}).encode()
    status, _, body = request(
        port, "POST", "/v2/models/tiny/infer", header, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and "needs" in json.loads(body)["error"]


def test_head_gets_headers_only_and_idle_keep_alive_connections_are_closed():
    with running_server(batch_size=4) as (port, _, server):
        server.keep_alive_timeout = 0.5
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            reply = b""
            t0 = time.monotonic()
            while chunk := s.recv(65536):  # the server closes the idle connection after ~0.5-1.5 s
                reply += chunk
            assert time.monotonic() - t0 < 4
        head, get = reply.split(b"HTTP/1.1 200")[1:]
        assert head.endswith(b"\r\n\r\n") and b"live" not in head
        assert get.endswith(b'{"live":true}')


def test_stop_answers_every_request_already_read_or_queued_and_closes_idle_connections():
    gated = Gated()
    gated.gate.clear()
    body = infer_body(X)
    req = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def read_all(reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.read(1 << 20), 10)

    async def main():
        serving = await Serving(gated, isolation="thread", batch_timeout=0.001).start()
        server = await HttpServer({"tiny": serving}, "127.0.0.1", 0).start()
        port = server.port
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        busy_w.write(req + req)  # one in flight (held at the gate), one pipelined behind it
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)  # waits for its next request
        deadline = time.monotonic() + 10
        while len(server.connections) < 2 or not any(c.busy for c in server.connections):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # Connected and sent, but not yet accepted by the loop (no await since): closing the listener
        # would reset it.
        queued = socket.create_connection(("127.0.0.1", port))
        queued.sendall(req)
        queued.setblocking(False)
        stopping = asyncio.ensure_future(server.stop(grace=5.0))
        await asyncio.sleep(0.3)
        assert not stopping.done()
        assert await read_all(idle_r) == b""  # closed: it had nothing to answer
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        gated.gate.set()
        both = await read_all(busy_r)
        while both.count(b"HTTP/1.1") < 2 or not busy_r.at_eof():
            more = await read_all(busy_r)
            if not more:
                break
            both += more
        first, second = both.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"200") and b"connection: close" not in first
        assert second.startswith(b"200") and b"connection: close" in second  # the last answer says so
        reply = b""
        loop = asyncio.get_running_loop()
        while chunk := await asyncio.wait_for(loop.sock_recv(queued, 65536), 10):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"connection: close" in reply and b'"outputs"' in reply
        await asyncio.wait_for(stopping, 10)
        assert not server.connections
        queued.close()
        busy_w.close()
        idle_w.close()
        await serving.stop()

    asyncio.run(main())


class _Recorder:
    """A stand-in connection that records what the protocol hands the router."""

    def __init__(self) -> None:
        self.got: list = []


def _parse_both_ways(raw: bytes) -> tuple[list, list]:
    """``raw`` through the one-call fast path (one read) and through httptools (one byte per read)."""
    from otpserve.http.protocol import HttpConnection

    results = []
    for chunks in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        seen: list = []
        router = type("R", (), {})()
        router.server = type("S", (), {"max_body": 1 << 20, "connections": set(), "stopping": False})()
        router.handle = lambda conn, req, seen=seen: (
            seen.append((req.method, req.path, req.query, req.keep_alive, req.body, sorted(req.headers.items()))),
            conn.send(b"", req.keep_alive),
        )
        loop = asyncio.new_event_loop()
        try:
            conn = HttpConnection(router, loop)
            transport = type("T", (), {"write": lambda self, d: None, "close": lambda self: None})()
            conn.connection_made(transport)
            for chunk in chunks:
                conn.data_received(chunk)
        finally:
            loop.close()
        results.append(seen)
    return results[0], results[1]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /v2/models/tiny/infer?q=1&r HTTP/1.1\r\nX-Request-Timeout: 0.5\r\n"
        b"Inference-Header-Content-Length: 7\r\nContent-Length: 0\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.0\r\n\r\n",
        b"GET /v2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"HEAD /v2/models/tiny HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
    ],
)
def test_the_one_call_fast_path_parses_exactly_as_httptools_does(raw):
    from otpserve._kernel import http_parse_whole

    assert http_parse_whole(raw, 65536, 1 << 20) is not None  # the fast path takes it whole
    fast, slow = _parse_both_ways(raw)
    assert len(fast) == 1
    method, path, query, keep_alive, body, fast_headers = fast[0]
    # httptools keeps every header; the fast path keeps the ones the router reads: compare those.
    slow_method, slow_path, slow_query, slow_keep_alive, slow_body, slow_headers = slow[0]
    read = {b"inference-header-content-length", b"x-request-timeout"}
    assert (method, path, query, keep_alive, body) == (slow_method, slow_path, slow_query, slow_keep_alive, slow_body)
    assert fast_headers == [(k, v) for k, v in slow_headers if k in read]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v2/health/live HTTP/1.1\n\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: a\n\r\n",
        # a proxy that ends lines only at CRLF sees no Content-Length here: the two must not disagree
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nX: a\nContent-Length: 2\r\n\r\n{}",
        b"get /v2/health/live HTTP/1.1\r\n\r\n",
        b"GET /v2/health/live\xc3\xa9 HTTP/1.1\r\n\r\n",
    ],
)
def test_what_httptools_refuses_gets_400_even_when_it_arrives_whole_in_one_read(port, raw):
    from otpserve._kernel import http_parse_whole

    assert http_parse_whole(raw, 65536, 1 << 20) is None  # the fast path leaves it to httptools
    assert raw_exchange(port, raw).startswith(b"HTTP/1.1 400")
