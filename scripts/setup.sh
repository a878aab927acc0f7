#!/usr/bin/env bash
# Idempotent set-up: Debian packages, uv, the locked Python environment in .venv/, and the native extension.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}") >/dev/null \
        || echo "setup: could not install ${need_apt[*]} (only benchmarks need them)" >&2
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
