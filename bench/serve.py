"""Serving benchmark: otpserve against the peers of ../shared/bench/peers, in one run, on the same workload.

Every server runs through the peers' own ``bench_server.sh`` (readiness, correctness, 5 s warm-up, 2 x 20 s
of ``wrk -t1 -c64 --latency``), on the fixed MLP 784->128->10 with the peers' weights (model.py, seed 0).
otpserve is driven with KServe v2 JSON bodies holding the same 784 floats; its correctness check sends the same
256 inputs as v2 requests (check_v2.py). Then an overload run: wrk paced to about twice otpserve's measured
capacity, while an open-loop probe times single requests and splits them into accepted (200) and rejected (503).

    .venv/bin/python bench/serve.py [--peers hello,litserve,ray] [--dur 20s] [--skip-overload]

Prints req/s, p50, p99 for each server and the ratios otpserve / peer. Peer venvs come from
``bench/setup.sh`` (wrk + ``shared/bench/peers/setup_venvs.sh``; run it once, it takes a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "bench" / "peers"))
SCRATCH = Path(os.environ.get("PEERS", Path(tempfile.gettempdir()) / "otpserve-peers"))
VENVS = SCRATCH / "venvs"
PY = ROOT / ".venv" / "bin" / "python"


def peer_model():
    sys.path.insert(0, str(PEERS))
    import model  # the peers' fixed workload

    return model


def write_artifact(folder: Path) -> Path:
    """The peers' MLP weights as an otpserve artifact, so both sides compute the same logits."""
    from otpserve.models import MLP

    m = peer_model()
    MLP([(m.W1, m.b1), (m.W2, m.b2)], name="mlp").save(folder)
    return folder


def write_v2_body(path: Path) -> None:
    x = peer_model().load_body_x()
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [float(v) for v in x]}
    path.write_text(json.dumps({"inputs": [tensor]}))


def run_bench_server(name: str, port: int, upath: str, cmd: list[str], out: Path, env: dict) -> dict:
    """One server through the peers' harness; returns the parsed RESULT_JSON lines and the check line."""
    script = PEERS / "bench_server.sh"
    proc = subprocess.run(
        ["bash", str(script), name, str(port), upath, "--", *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = (out / f"{name}.txt").read_text() if (out / f"{name}.txt").exists() else proc.stdout
    runs = [json.loads(m) for m in re.findall(r"RESULT_JSON (\{.*\})", text)]
    check = re.findall(r"CORRECT_JSON (\{.*\})", text)
    if not runs:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    return {"name": name, "runs": runs, "check": json.loads(check[0]) if check else None}


def summarize(result: dict) -> dict:
    runs = result["runs"]
    if not runs:
        return {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "non2xx": -1}
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50": statistics.median(r["p50_ms"] for r in runs),
        "p99": statistics.median(r["p99_ms"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "each": [round(r["rps"]) for r in runs],
    }


# ---- overload -----------------------------------------------------------------------------------------

PACED_LUA = """
-- wrk script: the peers' POST body, each connection pausing DELAY_MS between requests (paced load).
local path = os.getenv("BODY_FILE")
local f = assert(io.open(path, "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.path = os.getenv("WRK_PATH")
local d = tonumber(os.getenv("DELAY_MS"))
delay = function() return d end
done = function(summary, latency, requests)
  io.write(string.format("PACED_JSON {\\"requests\\":%d,\\"duration_s\\":%.3f,\\"non2xx\\":%d}\\n",
    summary.requests, summary.duration / 1e6, summary.errors.status))
end
"""


async def probe(port: int, path: str, body: bytes, rate: float, seconds: float, conns: int = 8) -> list:
    """Open-loop probe over keep-alive connections: a request every 1/rate s; (status, latency ms) each.

    A request whose turn comes while all ``conns`` connections are busy is recorded as status -1 (the probe
    could not send it), so a stalled server shows up rather than slowing the probe down.
    """
    results: list[tuple[int, float]] = []
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list = []
    for _ in range(conns):
        idle.append(await asyncio.open_connection("127.0.0.1", port))

    async def one() -> None:
        if not idle:
            results.append((-1, float("nan")))
            return
        reader, writer = idle.pop()
        t0 = time.perf_counter()
        try:
            writer.write(request)
            status = int((await asyncio.wait_for(reader.readline(), 30)).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        except Exception:
            results.append((0, (time.perf_counter() - t0) * 1000))
            writer.close()
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            return
        results.append((status, (time.perf_counter() - t0) * 1000))
        idle.append((reader, writer))

    tasks = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(one()))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return results


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def wait_ready(port: int) -> None:
    for _ in range(600):
        try:
            code = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/v2/health/ready"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if code == "200":
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} never became ready")


def overload(port: int, upath: str, body_file: Path, capacity: float, seconds: int, server_cmd: list[str]) -> dict:
    """The probe alone, then with wrk -c64 (at capacity), then with paced wrk at about twice capacity."""
    lua = SCRATCH / "paced.lua"
    lua.write_text(PACED_LUA)
    body = body_file.read_bytes()
    proc = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port)
        alone = _probe_during(port, upath, body, body_file, lua, conns=0, delay_ms=0, seconds=6)
        base = _probe_during(port, upath, body, body_file, lua, conns=64, delay_ms=0, seconds=seconds)
        # Twice capacity: 512 paced connections. A connection offers 1 / (delay + latency) requests a second;
        # calibrate the delay on a short run so that the offered rate (answers + refusals) is ~2 x capacity.
        conns, target = 512, 2 * capacity
        delay_ms = max(1, int(conns / target * 1000))
        for _ in range(3):
            trial = _probe_during(port, upath, body, body_file, lua, conns=conns, delay_ms=delay_ms, seconds=5)
            ratio = trial["offered_rps"] / target
            if 0.9 <= ratio <= 1.15 or delay_ms == 1:
                break
            delay_ms = max(1, int(delay_ms * ratio))
        over = _probe_during(port, upath, body, body_file, lua, conns=conns, delay_ms=delay_ms, seconds=seconds)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    return {"alone": alone, "base": base, "over": over, "conns": conns, "delay_ms": delay_ms}


def _probe_during(port, upath, body, body_file, lua, conns, delay_ms, seconds) -> dict:
    wrk = None
    if conns:
        env = {**os.environ, "BODY_FILE": str(body_file), "WRK_PATH": upath, "DELAY_MS": str(delay_ms)}
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua)]
        wrk = subprocess.Popen([*cmd, f"http://127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
    samples = asyncio.run(probe(port, upath, body, rate=200, seconds=max(2, seconds - 2)))
    w = {"requests": 0, "duration_s": 1, "non2xx": 0}
    if wrk is not None:
        out, _ = wrk.communicate(timeout=seconds + 30)
        m = re.search(r"PACED_JSON (\{.*\})", out)
        w = json.loads(m.group(1)) if m else w
    ok = [ms for st, ms in samples if st == 200]
    rejected = [ms for st, ms in samples if st == 503]
    return {
        "offered_rps": w["requests"] / w["duration_s"],
        "answered_2xx_rps": (w["requests"] - w["non2xx"]) / w["duration_s"],
        "probe_n": len(samples),
        "ok_n": len(ok),
        "ok_p50": pct(ok, 50),
        "ok_p99": pct(ok, 99),
        "rej_n": len(rejected),
        "rej_p50": pct(rejected, 50),
        "rej_p99": pct(rejected, 99),
        "unsent": sum(1 for st, _ in samples if st == -1),
        "other": sorted({st for st, _ in samples if st not in (200, 503, -1)}),
    }


def report_overload(args, otp_cmd: list[str], v2_body: Path, capacity: float) -> None:
    """Run the overload section and print it."""
    o = overload(8112, "/v2/models/mlp/infer", v2_body, capacity, args.overload_seconds, [*otp_cmd[:-1], "8112"])
    a, b, v = o["alone"], o["base"], o["over"]
    print("\n== overload: probe = 200 req/s open-loop over 8 keep-alive connections, beside wrk")
    print(f"probe alone (unloaded):   accepted p50 {a['ok_p50']:.2f} ms  p99 {a['ok_p99']:.2f} ms (n={a['ok_n']})")
    print(
        f"at capacity (wrk -c64):   offered {b['offered_rps']:.0f}/s; accepted p50 {b['ok_p50']:.2f} ms "
        f"p99 {b['ok_p99']:.2f} ms (n={b['ok_n']}), refused n={b['rej_n']}"
    )
    print(
        f"2x capacity (wrk -c{o['conns']}, {o['delay_ms']} ms pause per connection): offered "
        f"{v['offered_rps']:.0f}/s = {v['offered_rps'] / capacity:.2f}x capacity, answered 200 "
        f"{v['answered_2xx_rps']:.0f}/s; accepted p50 {v['ok_p50']:.2f} p99 {v['ok_p99']:.2f} ms (n={v['ok_n']}); "
        f"refused 503 p50 {v['rej_p50']:.2f} p99 {v['rej_p99']:.2f} ms (n={v['rej_n']}); unsent {v['unsent']}; "
        f"other statuses {v['other']}"
    )
    print(
        f"accepted p99 at 2x / at capacity = {v['ok_p99'] / b['ok_p99']:.2f}x, / unloaded = "
        f"{v['ok_p99'] / a['ok_p99']:.2f}x (target <= 3x); 503 p99 {v['rej_p99']:.2f} ms (target <= 5 ms)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="hello,litserve,ray", help="comma list of: hello, litserve, ray")
    ap.add_argument("--dur", default="20s", help="wrk duration of each measured run (peers' harness: 20s)")
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--overload-seconds", type=int, default=15)
    ap.add_argument("--only-overload", type=float, metavar="CAPACITY", help="skip the wrk runs; overload at this req/s")
    args = ap.parse_args()

    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (or run shared/bench/peers/setup_venvs.sh)", file=sys.stderr)
        return 2
    out = SCRATCH / "results-otpserve"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="otpserve-bench-"))
    artifact = write_artifact(work / "mlp")
    v2_body = work / "body_v2.json"
    write_v2_body(v2_body)
    x_body = SCRATCH / "body.json"
    subprocess.run([str(PY), str(PEERS / "make_body.py"), str(x_body)], check=True, capture_output=True)
    check = work / "check.sh"  # bench_server.sh runs "$CHECK_PY check_correct.py URL N C": check v2 instead
    check.write_text(f'#!/bin/sh\nshift\nexec {PY} {ROOT / "bench" / "check_v2.py"} "$@"\n')
    check.chmod(0o755)

    base_env = {**os.environ, "OUT_DIR": str(out), "DUR": args.dur}
    peer_env = {**base_env, "BODY_FILE": str(x_body), "CHECK_PY": str(VENVS / "kernel" / "bin" / "python")}
    if not (VENVS / "kernel" / "bin" / "python").exists():
        peer_env["CHECK_PY"] = str(PY)
    ours_env = {**base_env, "BODY_FILE": str(v2_body), "CHECK_PY": str(check)}
    otp_cmd = [str(ROOT / ".venv" / "bin" / "otpserve"), "serve", str(artifact), "--port", "8110"]

    results = []
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    if args.only_overload:
        report_overload(args, otp_cmd, v2_body, args.only_overload)
        shutil.rmtree(work, ignore_errors=True)
        return 0
    uv = VENVS / "fastapi" / "bin" / "uvicorn"
    peers = {
        "hello": (
            "hello_uvicorn",
            8100,
            [
                str(uv),
                "--app-dir",
                str(PEERS),
                "--host",
                "127.0.0.1",
                "--port",
                "8100",
                "--workers",
                "1",
                "--no-access-log",
                "--log-level",
                "warning",
                "hello_asgi:app",
            ],
        ),
        "litserve": ("litserve", 8102, [str(VENVS / "litserve/bin/python"), str(PEERS / "litserve_app.py"), "8102"]),
        "ray": ("ray_mor64", 8103, [str(VENVS / "ray/bin/python"), str(PEERS / "ray_app.py"), "8103", "64"]),
    }
    print(f"== otpserve (v2 JSON, process isolation) and peers {wanted}; wrk -t1 -c64, 2 x {args.dur} each")
    ours = run_bench_server("otpserve", 8110, "/v2/models/mlp/infer", otp_cmd, out, ours_env)
    results.append(ours)
    for key in wanted:
        name, port, cmd = peers[key]
        if not Path(cmd[0]).exists():
            print(f"-- skipping {key}: {cmd[0]} missing (run shared/bench/peers/setup_venvs.sh)")
            continue
        results.append(run_bench_server(name, port, "/predict", cmd, out, peer_env))
    # otpserve again at the end: the VM drifts, so bracket the peers
    again = run_bench_server("otpserve_again", 8111, "/v2/models/mlp/infer", [*otp_cmd[:-1], "8111"], out, ours_env)
    ours["runs"] += again["runs"]

    ours_s = summarize(ours)
    print(f"\n{'server':<18}{'req/s (each run)':>26}{'p50 ms':>9}{'p99 ms':>9}{'non2xx':>8}   otpserve/peer  check")
    for r in results:
        s = summarize(r)
        ratio = ours_s["rps"] / s["rps"] if s["rps"] == s["rps"] and s["rps"] > 0 else float("nan")
        chk = r["check"] or {}
        chk_text = f"{chk.get('argmax_agree', '?')}/{chk.get('n', '?')} maxdiff {chk.get('max_abs_diff', '?')}"
        print(
            f"{r['name']:<18}{s['rps']:>10.0f} {s.get('each', '')!s:>15}{s['p50']:>9.2f}{s['p99']:>9.2f}"
            f"{s['non2xx']:>8}   {ratio:>8.2f}x     {chk_text}"
        )

    if not args.skip_overload and ours_s["rps"] == ours_s["rps"]:
        report_overload(args, otp_cmd, v2_body, ours_s["rps"])
    print(f"\nraw wrk output: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
