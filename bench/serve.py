"""Serving benchmark: otpserve against the peers of ../shared/bench/peers, in one run, on the same workload.

Every server runs through the peers' own ``bench_server.sh`` (readiness, correctness, 5 s warm-up, 2 x 20 s
of ``wrk -t1 -c64 --latency``), on the fixed MLP 784->128->10 with the peers' weights (model.py, seed 0).
otpserve is driven with KServe v2 JSON bodies holding the same 784 floats; its correctness check sends the same
256 inputs as v2 requests (check_v2.py). Then an overload run with bench/loadgen, an open-loop generator (wrk is
closed-loop: a slow server slows it down, so it cannot hold an offered rate): 200 req/s for the unloaded
latency, then twice otpserve's measured capacity, timing answers (200) and refusals (503) apart.

    .venv/bin/python bench/serve.py [--peers hello,litserve,ray] [--dur 20s] [--skip-overload]

Prints req/s, p50, p99 for each server and the ratios otpserve / peer. Peer venvs come from
``bench/setup.sh`` (wrk + ``shared/bench/peers/setup_venvs.sh``; run it once, it takes a few minutes).
"""

from __future__ import annotations

import argparse
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

nan = float("nan")

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

LOADGEN = ROOT / "bench" / "loadgen" / "target" / "release" / "loadgen"


def loadgen(port: int, upath: str, body_file: Path, rate: float, conns: int, seconds: int) -> dict:
    """One open-loop run of bench/loadgen: ``rate`` requests a second at fixed times, whatever the server does.

    Latencies count from each request's intended send time (no coordinated omission), per status code.
    """
    cmd = [str(LOADGEN), "--url", f"http://127.0.0.1:{port}{upath}", "--body", str(body_file)]
    cmd += ["--rate", str(int(rate)), "--connections", str(conns), "--duration", str(seconds), "--warmup", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"LOADGEN_JSON (\{.*\})", out)
    if m is None:
        raise RuntimeError(f"loadgen printed no result: {out[-2000:]}")
    return json.loads(m.group(1))


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
    """Open-loop runs on a fresh server: nearly unloaded (200 req/s), then at twice ``capacity``."""
    if not LOADGEN.exists():
        manifest = ROOT / "bench" / "loadgen" / "Cargo.toml"
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", str(manifest)], check=True)
    proc = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port)
        alone = loadgen(port, upath, body_file, 200, 16, 8)
        # Many connections: with one request in flight per connection, the server can only be offered more
        # than it answers if connections outnumber what it holds in flight at capacity.
        over = loadgen(port, upath, body_file, 2 * capacity, 1024, seconds)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    return {"alone": alone, "over": over}


def report_overload(args, otp_cmd: list[str], v2_body: Path, capacity: float) -> None:
    """Run the overload section and print it."""
    o = overload(8112, "/v2/models/mlp/infer", v2_body, capacity, args.overload_seconds, [*otp_cmd[:-1], "8112"])
    alone, over = o["alone"], o["over"]
    quiet = alone["status"].get("200", {})
    ok, refused = over["status"].get("200", {}), over["status"].get("503", {})
    other = {k: v["n"] for k, v in over["status"].items() if k not in ("200", "503")}
    secs = over["duration_s"]
    print("\n== overload: bench/loadgen, open loop (fixed send times; latency from the intended send time)")
    print(f"unloaded (200 req/s, 16 conns): p50 {quiet.get('p50_ms', nan):.2f} p99 {quiet.get('p99_ms', nan):.2f} ms")
    print(
        f"2x capacity ({over['rate']} req/s = 2 x {capacity:.0f}, {over['connections']} conns, {secs} s): "
        f"answered 200 {ok.get('n', 0) / secs:.0f}/s, refused 503 {refused.get('n', 0) / secs:.0f}/s, "
        f"errors {over['errors']}, timeouts {over['timeouts']}, unsent {over['unsent']}, other {other}"
    )
    print(
        f"  accepted p50 {ok.get('p50_ms', nan):.2f} p99 {ok.get('p99_ms', nan):.2f} ms; "
        f"refused p50 {refused.get('p50_ms', nan):.2f} p99 {refused.get('p99_ms', nan):.2f} ms"
    )
    print(
        f"accepted p99 at 2x / unloaded p99 = {ok.get('p99_ms', nan) / quiet.get('p99_ms', nan):.2f}x "
        f"(target <= 3x); 503 p99 {refused.get('p99_ms', nan):.2f} ms (target <= 5 ms)"
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
