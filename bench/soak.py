"""What the fault soaks share: run one suite of tests/integration with longer settings.

The soaks are the integration suites themselves (tests/integration/test_crash_suite.py,
tests/integration/cluster/test_partitions.py) run longer, through pytest, so they build
and tear down exactly as the tests do (every daemon, task process, namespace, veth and
rule removed by its own handle). The suite's progress goes to stderr; the figure lines
it prints (and pytest's verdict) go to stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_suite(
    target: str, env: dict[str, str], figures: Sequence[str], timeout_s: int, keyword: str = ""
) -> int:
    """Run `pytest target` with `env` added; copy the lines that start with one of
    `figures` to stdout. Returns pytest's exit code."""
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", target]
    argv += [f"--timeout={timeout_s}"]
    if keyword:
        argv += ["-k", keyword]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        text = line.lstrip(".FE")
        if text.startswith(tuple(figures)) or " passed" in text or " failed" in text:
            print(text.rstrip(), flush=True)
    return proc.wait()
