#!/usr/bin/env bash
# Every check: Rust (fmt, clippy, tests) and Python (ruff, pytest).  Sets everything up first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo fmt --check";              cargo fmt --check
echo "== cargo clippy -- -D warnings";    cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo test";                     cargo test --quiet
# bench/loadgen is a crate of its own (the overload benchmark's generator): the same checks.
LOADGEN=(--manifest-path bench/loadgen/Cargo.toml)
echo "== loadgen: fmt, clippy, test";      cargo fmt "${LOADGEN[@]}" --check
cargo clippy --quiet "${LOADGEN[@]}" --all-targets -- -D warnings
cargo test --quiet "${LOADGEN[@]}"
echo "== ruff check";                     .venv/bin/ruff check .
echo "== ruff format --check";            .venv/bin/ruff format --check .
echo "== pytest";                         .venv/bin/python -m pytest -q "$@"
