#!/usr/bin/env bash
# Every check: Rust (fmt, clippy, tests) and Python (ruff, pytest).  Sets everything up first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo fmt --check";              cargo fmt --check
echo "== cargo clippy -- -D warnings";    cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo test";                     cargo test --quiet
echo "== ruff check";                     .venv/bin/ruff check .
echo "== ruff format --check";            .venv/bin/ruff format --check .
echo "== pytest";                         .venv/bin/python -m pytest -q "$@"
