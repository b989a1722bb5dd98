#!/usr/bin/env bash
# Set up, then run the main job: `shoal demo` starts a single-node cluster on the
# embedded defaults, deploys a sample service and prints how to reach it.
# Arguments are passed to `shoal demo` (see `.venv/bin/shoal demo --help`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh
exec "$ROOT/.venv/bin/shoal" demo "$@"
