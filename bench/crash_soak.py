"""The crash soak: the crash suite with many rounds (issue 15: 100).

    .venv/bin/python bench/crash_soak.py [--rounds 100] [--seed N]

Runs tests/integration/test_crash_suite.py with SHOAL_CRASH_ROUNDS=N: N rounds of
`kill -9` of the manager at random moments while 8 clients create, update, scale and
remove services, each restart checked (every acknowledged write there, a write cut off
there entirely or not at all, no slot with two tasks, every service converged); then
N/2 rounds of a worker's daemon killed in a two-node cluster. Prints on stdout the
rounds run, the acknowledged writes, the service states checked and what was lost
(must be none); exits with pytest's code. Needs root (cgroups), as the suite does.
"""

from __future__ import annotations

import argparse
import sys

from soak import run_suite

SECONDS_PER_ROUND = 30  # a generous bound per round, for the suite's timeout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    env = {"SHOAL_CRASH_ROUNDS": str(args.rounds)}
    if args.seed is not None:
        env["SHOAL_CRASH_SEED"] = str(args.seed)
    return run_suite(
        "tests/integration/test_crash_suite.py",
        env,
        ("crash suite", "manager crash suite", "worker crash suite"),
        timeout_s=120 + SECONDS_PER_ROUND * args.rounds,
    )


if __name__ == "__main__":
    sys.exit(main())
