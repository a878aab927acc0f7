"""Routes of the HTTP face: KServe v2 inference, health, model metadata and Prometheus metrics.

| route | answer |
|---|---|
| ``GET /v2`` | server metadata |
| ``GET /v2/health/live`` | 200 while the process answers (liveness) |
| ``GET /v2/health/ready`` | 200 when every model has a live worker, else 503 (readiness tells the truth) |
| ``GET /v2/models/{name}`` | model metadata (inputs, outputs) |
| ``GET /v2/models/{name}/ready`` | 200 / 503 for one model |
| ``POST /v2/models/{name}/infer`` | inference: JSON tensors, or the binary tensor data extension |
| ``GET /metrics`` | Prometheus text |

Status codes: bad input 400/404/405/413 with ``{"error": "..."}``; a full queue 503 with Retry-After at once;
a deadline passed 504; a worker that died twice on the same batch 503. Never a 500 for a client's mistake.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from otpserve.errors import BatchHung, DeadlineExceeded, Overloaded, ServingStopped, ShapeError, WorkerCrashed
from otpserve.http.protocol import HttpConnection, Incoming, response_bytes
from otpserve.http.v2 import (
    BadRequest,
    InferRequest,
    decode_binary,
    decode_json,
    encode_binary,
    encode_json,
    v2_datatype,
)
from otpserve.serving.batch_queue import DONE, Request

if TYPE_CHECKING:
    from otpserve.http.server import HttpServer
    from otpserve.serving import Serving

log = logging.getLogger("otpserve.http")

JSON = b"application/json"
RETRY_AFTER = b"retry-after: 1\r\n"
TIMEOUT_HEADER = b"x-request-timeout"
OVERLOADED = (("outcome", "overloaded"),)


class Router:
    """Maps a parsed request to its handler and writes the answer on the connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.servings: dict[str, Serving] = server.servings
        # The hot route, looked up whole: b"/v2/models/{name}/infer" -> serving (rebuilt if servings change).
        self._infer_routes: dict[bytes, tuple[str, Serving]] = {}
        self._routes_for: dict[str, Serving] = {}
        # Refusals under overload are answered from prebuilt bytes: a refusal must cost a fraction of an answer.
        self._refusals: dict[tuple[int, bool], bytes] = {}

    @staticmethod
    def error_body(message: str) -> bytes:
        """The v2 error object."""
        return orjson.dumps({"error": message})

    def handle(self, conn: HttpConnection, req: Incoming) -> None:
        """Answer ``req`` now, or arrange for it to be answered when its inference is done."""
        path = req.path
        if self._routes_for != self.servings:
            self._infer_routes = {f"/v2/models/{n}/infer".encode(): (n, s) for n, s in self.servings.items()}
            self._routes_for = dict(self.servings)
        route = self._infer_routes.get(path)
        if route is not None and req.method == b"POST":
            try:
                self.infer(conn, req, *route)
            except _HttpError as exc:
                self._reply(conn, req, exc.status, self.error_body(exc.message), extra=exc.extra)
            except Exception as exc:  # a bug of ours: answer 500 and keep serving
                log.exception("unhandled error answering %r", path)
                self._reply(conn, req, 500, self.error_body(f"internal error: {type(exc).__name__}: {exc}"))
            return
        try:
            if path.startswith(b"/v2/models/"):
                rest = path[len(b"/v2/models/") :].decode("utf-8", "replace")
                name, _, action = rest.partition("/")
                if action == "infer":
                    if req.method != b"POST":
                        raise _HttpError(405, f"{req.method.decode()} not allowed on /v2/models/{name}/infer; use POST")
                    self.infer(conn, req, name, self._serving(name))
                    return
                serving = self._serving(name)
                self._get_only(req)
                if action == "":
                    self._reply(conn, req, 200, orjson.dumps(self.model_metadata(name, serving)))
                elif action == "ready":
                    ready = serving.ready
                    self._reply(conn, req, 200 if ready else 503, orjson.dumps({"name": name, "ready": ready}))
                else:
                    raise _HttpError(404, f"no route {path.decode('utf-8', 'replace')}")
            elif path == b"/v2/health/live":
                self._get_only(req)
                self._reply(conn, req, 200, b'{"live":true}')
            elif path == b"/v2/health/ready":
                self._get_only(req)
                ready = bool(self.servings) and all(s.ready for s in self.servings.values())
                self._reply(conn, req, 200 if ready else 503, orjson.dumps({"ready": ready}))
            elif path == b"/metrics":
                self._get_only(req)
                text = self.server.render_metrics().encode()
                self._reply(conn, req, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
            elif path == b"/v2":
                self._get_only(req)
                meta = {"name": "otpserve", "version": _version(), "extensions": ["binary_tensor_data"]}
                self._reply(conn, req, 200, orjson.dumps(meta))
            else:
                raise _HttpError(404, f"no route {path.decode('utf-8', 'replace')}")
        except _HttpError as exc:
            self._reply(conn, req, exc.status, self.error_body(exc.message), extra=exc.extra)
        except Exception as exc:  # a bug of ours: answer 500 and keep serving
            log.exception("unhandled error answering %r", path)
            self._reply(conn, req, 500, self.error_body(f"internal error: {type(exc).__name__}: {exc}"))

    # ---- inference -------------------------------------------------------------------------------------

    def infer(self, conn: HttpConnection, req: Incoming, name: str, serving: Serving) -> None:
        """Decode, queue and, when the batch is done, answer one inference request."""
        shedder = self.server.shedder
        if shedder.refuse():
            self._refuse(conn, req, serving, shedder.behind)
            return
        if serving.queue_full:
            # Refuse before decoding: under overload a refusal must cost far less than an answer, or the
            # refusals themselves eat the capacity the accepted requests need.
            serving.metrics.requests.inc(labels=OVERLOADED)
            raise _HttpError(
                503,
                f"model {name!r} is overloaded: queue full ({serving.queue_depth} of "
                f"{serving.options.max_queue} rows queued); retry later",
                RETRY_AFTER,
            )
        headers = req.headers
        try:
            header_length = headers.get(b"inference-header-content-length")
            decoded = decode_json(req.body) if header_length is None else decode_binary(req.body, header_length)
            x = serving.check_input(decoded.x)
        except (BadRequest, ShapeError) as exc:
            raise _HttpError(400, str(exc)) from None
        timeout = None
        raw_timeout = headers.get(TIMEOUT_HEADER)
        if raw_timeout is not None:
            timeout = _parse_timeout(raw_timeout)
        try:
            pending = serving.submit(x, timeout, partial(self._answer, conn, req, name, decoded))
        except Overloaded as exc:
            raise _HttpError(503, str(exc), RETRY_AFTER) from None
        except ServingStopped as exc:
            raise _HttpError(503, str(exc), RETRY_AFTER) from None
        if pending.state != DONE:
            conn.cancel_current = partial(serving.cancel, pending)

    def _answer(self, conn: HttpConnection, req: Incoming, name: str, decoded: InferRequest, done: Request) -> None:
        try:
            self._answer_inference(conn, req, name, decoded, done)
        except Exception as exc:  # a bug of ours: the client still gets an answer, the server lives on
            log.exception("unhandled error answering an inference on %r", req.path)
            self._reply(conn, req, 500, self.error_body(f"internal error: {type(exc).__name__}: {exc}"))

    def _answer_inference(
        self, conn: HttpConnection, req: Incoming, name: str, decoded: InferRequest, done: Request
    ) -> None:
        exc = done.error
        if exc is None:
            y = done.out
            if decoded.binary_output:
                body, n = encode_binary(name, decoded.id, y)
                extra = b"inference-header-content-length: %d\r\n" % n
                self._reply(conn, req, 200, body, b"application/octet-stream", extra)
            else:
                self._reply(conn, req, 200, encode_json(name, decoded.id, y))
            return
        if isinstance(exc, DeadlineExceeded):
            status, extra = 504, b""
        elif isinstance(exc, (WorkerCrashed, BatchHung, ServingStopped, Overloaded)):
            status, extra = 503, RETRY_AFTER
        else:
            status, extra = 500, b""
            exc = RuntimeError(f"the model failed on this batch: {exc}")
        self._reply(conn, req, status, self.error_body(str(exc)), extra=extra)

    def _refuse(self, conn: HttpConnection, req: Incoming, serving: Serving, behind: float) -> None:
        """503 + Retry-After for a request the shedder turned away, before its body is decoded."""
        server = self.server
        server.shed.inc()
        server.count_status(503)
        serving.metrics.requests.inc(labels=OVERLOADED)
        behind_ms = int(behind * 1000)
        keep_alive = conn.keeps_alive(req)
        response = self._refusals.get((behind_ms, keep_alive))
        if response is None:
            if len(self._refusals) > 256:
                self._refusals.clear()
            message = f"server overloaded: requests wait {behind_ms} ms beyond their compute; retry later"
            response = response_bytes(503, self.error_body(message), JSON, RETRY_AFTER, close=not keep_alive)
            self._refusals[(behind_ms, keep_alive)] = response
        conn.send(response, keep_alive)

    # ---- helpers ---------------------------------------------------------------------------------------

    def _serving(self, name: str) -> Serving:
        serving = self.servings.get(name)
        if serving is None:
            raise _HttpError(404, f"unknown model {name!r}; served models: {sorted(self.servings)}")
        return serving

    @staticmethod
    def _get_only(req: Incoming) -> None:
        if req.method not in (b"GET", b"HEAD"):
            raise _HttpError(405, f"{req.method.decode()} not allowed on {req.path.decode('utf-8', 'replace')}")

    def _reply(
        self,
        conn: HttpConnection,
        req: Incoming,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        extra: bytes = b"",
    ) -> None:
        self.server.count_status(status)
        keep_alive = conn.keeps_alive(req)
        response = response_bytes(status, body, content_type, extra, close=not keep_alive)
        if req.method == b"HEAD":
            response = response[: len(response) - len(body)]  # headers only (Content-Length still says it all)
        conn.send(response, keep_alive)

    @staticmethod
    def model_metadata(name: str, serving: Serving) -> dict[str, Any]:
        """The v2 model metadata object."""
        layout = serving.layout
        return {
            "name": name,
            "versions": ["1"],
            "platform": "otpserve",
            "inputs": [
                {
                    "name": "input",
                    "datatype": v2_datatype(layout.input_dtype),
                    "shape": [-1, *layout.input_shape],
                }
            ],
            "outputs": [
                {
                    "name": "output",
                    "datatype": v2_datatype(layout.output_dtype),
                    "shape": [-1, *layout.output_shape],
                }
            ],
        }


class _HttpError(Exception):
    def __init__(self, status: int, message: str, extra: bytes = b"") -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _parse_timeout(raw: bytes) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _HttpError(400, f"X-Request-Timeout {raw!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise _HttpError(400, f"X-Request-Timeout {raw!r} must be a positive, finite number of seconds")
    return value


def _version() -> str:
    from otpserve import __version__

    return __version__
