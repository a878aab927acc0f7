#!/usr/bin/env bash
# The main job: set everything up, then serve the default model (trained first if missing) on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/otpserve serve "$@"
