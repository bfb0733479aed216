#!/usr/bin/env bash
# make bench: the benchmarks (never part of make test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/drain.sh" "${BENCH_MESSAGES:-100000}" "${BENCH_ACCOUNTS:-4}"
