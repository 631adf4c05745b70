#!/usr/bin/env bash
# README command 2: install everything, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
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
# shellcheck disable=SC1091
source .venv/bin/activate
echo "==> pytest"
exec python -m pytest "$@"
