#!/usr/bin/env bash
# Idempotent set-up: uv, the locked Python environment in .venv/, and the native extension (release build).
# Pipelines and their tests need a real redis-server (Debian's package, installed here when missing);
# bench/serve.py needs wrk (bench/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }

if ! command -v redis-server >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "setup: redis-server is missing; install it (apt-get install redis-server)" >&2; exit 1; }
    echo "setup: installing redis-server"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null
    # The package starts a system-wide server on 6379; otpserve's tests start their own on free ports.
    (systemctl disable --now redis-server || service redis-server stop || pkill -x redis-server) >/dev/null 2>&1 || true
fi

if ! command -v uv >/dev/null; then
    echo "setup: installing uv"
    python3 -m pip install -q uv
fi
export UV_PYTHON_DOWNLOADS=never
PY=$(command -v python3.11 || command -v python3)
uv sync --frozen --python "$PY" --quiet
# Build the extension in release mode into python/otpserve/ (an editable install: python/ is on the path).
.venv/bin/maturin develop --release --uv --quiet 2>&1 | grep -v -E '^\s*$' | tail -n 3 || true
.venv/bin/python -c "import otpserve._kernel" || { echo "setup: the native extension did not build" >&2; exit 1; }
