#!/usr/bin/env bash
# Everything the benchmarks need beyond scripts/setup.sh: Celery (the lock's bench extra, for bench/pipeline.py),
# wrk (Debian), the open-loop generator bench/loadgen (for the overload run, which wrk can't pace), and the
# peers' venvs (bench/serve.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The lock's bench extra (Celery, for bench/pipeline.py), added to .venv without removing the rest.
uv sync --frozen --extra bench --inexact --quiet
cargo build --release --quiet --manifest-path bench/loadgen/Cargo.toml
if ! command -v wrk >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "bench/setup.sh: wrk is missing; install it (apt-get install wrk)" >&2; exit 1; }
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null
fi
PEERS_DIR=${PEERS_DIR:-$(cd .. && pwd)/shared/bench/peers}
bash "$PEERS_DIR/setup_venvs.sh"
