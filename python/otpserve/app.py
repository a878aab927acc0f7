"""The serve command's composition root: model artifact -> supervised Serving -> HTTP server.

``otpserve serve`` calls ``serve_forever``: it loads the artifact (training the default model first when
none exists), starts the Serving (process isolation by default, so a crash in a model never takes the server
down), starts the HTTP server, prints the URL and a ready-to-paste request, and on SIGINT/SIGTERM stops in
order: listener closed, in-flight requests answered, queued batches drained, workers stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from otpserve.http import HttpServer
from otpserve.models import MLP, default_model_path, otpserve_home
from otpserve.serving import Serving, ServingOptions
from otpserve.serving.options import default_partitions


def ensure_model(path: Path | None) -> Path:
    """The artifact to serve: ``path``, or the default one (trained now if it does not exist yet)."""
    if path is not None:
        return path
    path = default_model_path()
    if not (path / "manifest.json").exists():
        from otpserve.train.trainer import train

        print(f"no model at {path}; training the default model first (about a minute) ...", flush=True)
        train(out=path)
    return path


def example_body(model: MLP, path: Path) -> bytes:
    """A v2 request for the real held-out row ``otpserve train`` kept in the manifest (``example``); else zeros.

    Read from the artifact, not recomputed: loading the training data here imported scikit-learn (~4 s
    cold), which held up the top process, and a SIGTERM, for as long.
    """
    x = np.zeros((1, *model.input_shape), dtype=np.float32)
    with contextlib.suppress(OSError, ValueError, TypeError):
        row = np.asarray(json.loads((path / "manifest.json").read_text()).get("example"), dtype=np.float32)
        if row.size == x.size:
            x = row.reshape(x.shape)
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor]})


async def serve_forever(
    model_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    name: str = "mlp",
    options: ServingOptions | None = None,
    started: asyncio.Event | None = None,
    quiet: bool = False,
    reuse_port: bool = False,
    peers_dir: str | None = None,
    peer_name: str = "acceptor",
) -> None:
    """Serve the model over HTTP until SIGINT/SIGTERM (or until cancelled), then shut down in order."""
    path = ensure_model(model_path)
    model = MLP.load(path)
    if options is None:
        options = ServingOptions(isolation="process", partitions=default_partitions())
    serving = Serving(model, options, name=name)
    await serving.start()
    server = HttpServer({name: serving}, host, port, reuse_port=reuse_port, peers_dir=peers_dir, peer_name=peer_name)
    try:
        await server.start()
    except BaseException:
        await serving.stop(drain=False)
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if not quiet:
            _announce(server.url, model, path, name)
        # Everything allocated so far (numpy, the model, scikit-learn for the example: ~100k objects) lives
        # as long as the server: move it out of the collector's sight. Without this, each full collection
        # walks it all and stalls every request for ~30-40 ms; measured, that was the whole p99 (41 ms with,
        # 10 without).
        gc.collect()
        gc.freeze()
        if started is not None:
            started.set()
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        # The listener first (every request already read is answered), then the serving (its last batches).
        await server.stop(grace=options.shutdown)
        await serving.stop()
        if not quiet:
            print("otpserve: stopped", flush=True)


def _announce(base: str, model: Any, path: Path, name: str, acceptors: int = 1) -> None:
    example = otpserve_home() / "example-request.json"
    example.parent.mkdir(parents=True, exist_ok=True)
    example.write_bytes(example_body(model, path))
    url = f"{base}/v2/models/{name}/infer"
    how = f" ({acceptors} acceptor processes)" if acceptors > 1 else ""
    print(
        f"otpserve: serving {path} as model {name!r} at {base}{how}\n"
        f"  ready:   curl -s {base}/v2/health/ready\n"
        f"  infer:   curl -s -H 'Content-Type: application/json' --data @{example} {url}\n"
        f"  metrics: curl -s {base}/metrics\n"
        "  stop with Ctrl-C",
        flush=True,
    )


# ---- several acceptors on one port ------------------------------------------------------------------------


def acceptor_main(model_path: Path, host: str, port: int, options: ServingOptions, index: int, peers_dir: str) -> None:
    """One acceptor process: a whole server (HTTP, Serving, its workers) on a port it shares (SO_REUSEPORT)."""
    import uvloop

    from otpserve.otp.zygote import zygote

    # Fresh from the top's zygote, this process has the preload and no threads yet: its own zygote is a
    # fork of it now, so the restart of a killed acceptor does not wait for an interpreter to boot.
    zygote().prefork()
    uvloop.run(
        serve_forever(
            model_path,
            host,
            port,
            options=options,
            quiet=True,
            reuse_port=True,
            peers_dir=peers_dir,
            peer_name=f"acceptor-{index}",
        )
    )


async def serve_acceptors(
    model_path: Path | None, host: str, port: int, options: ServingOptions, acceptors: int
) -> None:
    """Run ``acceptors`` server processes on one port under a supervisor (one event loop per core, as the
    BEAM runs one scheduler per core); the kernel spreads connections over them. Each is a complete server,
    so one that crashes is restarted while the others keep answering; /metrics on any answers for all."""
    from otpserve.otp import ChildSpec, Supervisor
    from otpserve.otp.zygote import set_zygote_preload

    # Acceptors fork from a zygote that has the whole server imported: a restart takes milliseconds.
    set_zygote_preload(["otpserve.app", "uvloop"])
    path = ensure_model(model_path)
    model = MLP.load(path)  # a broken artifact fails here, once, with one clear error
    _check_port_free(host, port)
    peers_dir = tempfile.mkdtemp(prefix="otpserve-metrics-")
    children = [
        ChildSpec.process(
            f"acceptor-{i}", acceptor_main, path, host, port, options, i, peers_dir, shutdown=options.shutdown + 5
        )
        for i in range(acceptors)
    ]
    supervisor = Supervisor(children, max_restarts=5, max_seconds=30.0, name="otpserve.acceptors")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    try:
        # An acceptor writes its first metrics snapshot once its workers and its listener are up.
        while len(list(Path(peers_dir).glob("*.prom"))) < acceptors and not stop.is_set():
            if not supervisor.is_alive():
                raise RuntimeError(f"the acceptors could not start: {supervisor.exit_reason}")
            await asyncio.sleep(0.05)
        _announce(f"http://{host}:{port}", model, path, "mlp", acceptors)
        gc.collect()
        gc.freeze()
        gave_up = asyncio.ensure_future(supervisor.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({gave_up, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if gave_up.done():
            raise RuntimeError(f"the acceptors kept crashing and their supervisor gave up: {gave_up.result()}")
        gave_up.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await supervisor.stop()
        shutil.rmtree(peers_dir, ignore_errors=True)
        print("otpserve: stopped", flush=True)


def _check_port_free(host: str, port: int) -> None:
    """Fail at once, with one clear error, when something that does not share the port holds it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, port))


def default_acceptors() -> int:
    """One acceptor process per core (at least one)."""
    return max(1, os.cpu_count() or 1)


def run(
    model_path: Path | None,
    host: str,
    port: int,
    options: ServingOptions | None = None,
    acceptors: int = 1,
) -> int:
    """Blocking entry point used by the CLI (uvloop when available)."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is for odd platforms
        runner = asyncio.run
    try:
        if acceptors > 1:
            runner(serve_acceptors(model_path, host, port, options or ServingOptions(isolation="process"), acceptors))
        else:
            runner(serve_forever(model_path, host, port, options=options))
    except OSError as exc:
        print(f"otpserve serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"otpserve serve: {exc}", file=sys.stderr)
        return 1
    return 0
