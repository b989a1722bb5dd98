#!/usr/bin/env bash
# Set up, then run the main job: `shoal demo` starts a single-node cluster on the
# embedded defaults, deploys the DockerCoins stack (examples/dockercoins), shows its
# progress while it converges and prints the addresses of the web UI and of the
# visualizer; it runs until Ctrl-C, then removes the stack and stops the daemon.
# Arguments are passed to `shoal demo` (see `.venv/bin/shoal demo --help`).
# SHOAL_SKIP_SETUP=1 skips scripts/setup.sh (already done, as in the tests).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${SHOAL_SKIP_SETUP:-}" != 1 ]]; then
    scripts/setup.sh
fi
exec "$ROOT/.venv/bin/shoal" demo "$@"
