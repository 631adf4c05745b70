#!/usr/bin/env bash
# README command 2: install everything, then run the whole test suite.
#   bash scripts/test.sh            the whole suite (what CI runs; docs/testing.md)
#   bash scripts/test.sh --quick    the quick tier: no training, no dvc repro, no server,
#                                   no browser; what to run after each change
# Any other arguments go to pytest (e.g. -k tracking, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
source .venv/bin/activate
if [ "$quick" = 1 ]; then
  echo "==> pytest, quick tier (-m 'not slow')"
  exec python -m pytest -m "not slow" "$@"
fi
# The browser tests need Debian's chromium, the team tracking server's test a
# PostgreSQL server; install them when we can (root with apt), else those tests skip.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing ${missing[*]} for the browser and tracking-server tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) ||
    echo "warning: could not install ${missing[*]}; the tests that need them will be skipped" >&2
fi
# Two workers (pytest-xdist): about 1.7x faster than one on 2 cores (docs/testing.md).
# PYTEST_WORKERS=0 runs in one process.
workers=${PYTEST_WORKERS:-2}
echo "==> pytest ($workers workers)"
if [ "$workers" = 0 ]; then
  exec python -m pytest "$@"
fi
exec python -m pytest -n "$workers" --dist worksteal "$@"
