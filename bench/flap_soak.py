"""The flapping-link soak: a worker's link to the manager cut and healed at random
intervals for a full minute (or `--seconds`).

    .venv/bin/python bench/flap_soak.py [--seconds 60] [--seed N]

Runs the flapping test of tests/integration/cluster/test_partitions.py with
SHOAL_FLAP_S: three daemons in network namespaces, iptables rules in the worker's
namespace dropping every packet to and from the manager for 1-5 s at a time, 1-4 s
healed between cuts, the service scaled midway; then the cluster must converge with no
slot running twice. Prints the seed, how many cuts were made and pytest's verdict;
exits with pytest's code. Needs root (namespaces, iptables).
"""

from __future__ import annotations

import argparse
import sys

from soak import run_suite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    env = {"SHOAL_FLAP_S": str(args.seconds)}
    if args.seed is not None:
        env["SHOAL_PARTITION_SEED"] = str(args.seed)
    return run_suite(
        "tests/integration/cluster/test_partitions.py",
        env,
        ("partition seed", "flapped"),
        timeout_s=int(300 + 2 * args.seconds),
        keyword="flapping",
    )


if __name__ == "__main__":
    sys.exit(main())
