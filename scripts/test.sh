#!/usr/bin/env bash
# Set up, then run every quality gate and the tests:
#   ruff check, ruff format --check, mypy (configured in pyproject.toml),
#   pytest over tests/unit, then tests/integration (real daemons, real docker CLI),
#   both measured for coverage (the daemons too: [tool.coverage.run] in pyproject.toml),
#   combined, printed, and held to the floor `fail_under` there.
# Every gate runs even when an earlier one failed, so one run shows everything;
# the exit status is non-zero if any gate failed or if no test ran at all.
# Extra arguments are passed to both pytest runs (e.g. -x, -k NAME); a run with
# arguments (a part of the suite) prints coverage but is not held to the floor.
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
    "$BIN/pytest" -q "$dir" --durations=20 --cov --cov-append --cov-report= --cov-fail-under=0 "$@" || rc=$?
    case "$rc" in
    0) ran_tests=1 ;;
    5) printf 'no %s tests collected\n' "$name" ;;
    *) failed+=("pytest $name") ;;
    esac
}

"$BIN/coverage" erase
suite unit tests/unit "$@"
suite integration tests/integration "$@"

printf '\n=== coverage\n'
"$BIN/coverage" combine --append -q >/dev/null 2>&1 || true # strays pytest-cov left
coverage_total="$("$BIN/coverage" report --format=total --fail-under=0 2>/dev/null || echo "?")"
coverage_manager="$("$BIN/coverage" report --format=total --fail-under=0 \
    --include='shoal/manager/**' 2>/dev/null || echo "?")"
if (($# == 0)); then
    gate "coverage floor" "$BIN/coverage" report --skip-covered
else
    "$BIN/coverage" report --skip-covered --fail-under=0 || true
fi

if ((ran_tests == 0)) && [[ ! " ${failed[*]} " =~ " pytest " ]]; then
    failed+=("no tests ran")
fi

printf '\ncoverage: %s%% of shoal, %s%% of shoal/manager (floor: fail_under in pyproject.toml)\n' \
    "$coverage_total" "$coverage_manager"
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")"
    exit 1
fi
printf 'all gates passed\n'
