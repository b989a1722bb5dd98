#!/usr/bin/env bash
# Set up, then run every quality gate and the tests:
#   ruff check, ruff format --check, mypy (configured in pyproject.toml),
#   pytest over tests/unit, then tests/integration (real daemons, real docker CLI).
# Every gate runs even when an earlier one failed, so one run shows everything;
# the exit status is non-zero if any gate failed or if no test ran at all.
# Extra arguments are passed to both pytest runs (e.g. -x, -k NAME).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh

BIN="$ROOT/.venv/bin"
LINT_PATHS=(shoal tests)
[[ -d bench ]] && LINT_PATHS+=(bench)

failed=()
gate() {
    local name="$1"
    shift
    printf '\n=== %s\n' "$name"
    if "$@"; then
        return 0
    fi
    failed+=("$name")
}

gate "ruff check" "$BIN/ruff" check "${LINT_PATHS[@]}"
gate "ruff format" "$BIN/ruff" format --check "${LINT_PATHS[@]}"
gate "mypy" "$BIN/mypy"

# pytest exits 5 when it collects no test. One empty suite is allowed (the other one
# ran tests); both empty is a failure: this script never passes on zero tests.
ran_tests=0
suite() {
    local name="$1" dir="$2"
    shift 2
    printf '\n=== pytest %s\n' "$name"
    local rc=0
    "$BIN/pytest" -q "$dir" "$@" || rc=$?
    case "$rc" in
    0) ran_tests=1 ;;
    5) printf 'no %s tests collected\n' "$name" ;;
    *) failed+=("pytest $name") ;;
    esac
}

suite unit tests/unit "$@"
suite integration tests/integration "$@"

if ((ran_tests == 0)) && [[ ! " ${failed[*]} " =~ " pytest " ]]; then
    failed+=("no tests ran")
fi

printf '\n'
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")"
    exit 1
fi
printf 'all gates passed\n'
