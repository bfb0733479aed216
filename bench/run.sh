#!/usr/bin/env bash
# make bench: every benchmark, BENCH_RUNS times each (default 3), each run on
# its own throwaway cluster; prints each figure, then a summary (medians),
# and appends a dated section to BENCHMARKS.md.  Never part of make test.
# Sizes and what each benchmark measures: the header of BENCHMARKS.md
# (bench/report.py writes it when the file is missing).
#
#   make bench                      # everything, 3 runs (claim and memory 1), about 30 minutes
#   BENCH_QUICK=1 make bench        # one small run of each, not recorded
#   BENCH_ONLY="latency rate" make bench
#   BENCH_ONLY=claim BENCH_HISTORY=1000000 make bench
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/lib.sh"

quick=${BENCH_QUICK:-0}
q() { [ "$quick" = 1 ] && echo "$1" || echo "$2"; }
runs=${BENCH_RUNS:-$(q 1 3)}
# dispatch: the configuration the README recommends on this 2-core machine
# (twilio_outbox.dispatchers_per_database = 2); dispatch1: one dispatcher,
# for reference (no ceilings: dispatch measures them)
dispatchers=${BENCH_DISPATCHERS:-2}
# row_versions: row versions and index entries per message
# (bench/row_versions.sh), run when the script exists
default_only="enqueue instructions dispatch dispatch1 batch latency rate claim memory"
[ -f "$here/row_versions.sh" ] && default_only="$default_only row_versions"
only=${BENCH_ONLY:-$default_only}
record=${BENCH_RECORD:-$(q 0 1)}
# a profiled drain is slower: not for the record unless asked
[ "${BENCH_PERF:-0}" = 1 ] && record=${BENCH_RECORD:-0}
enqueue_secs=${BENCH_ENQUEUE_SECONDS:-$(q 3 20)}
enqueue_warm=${BENCH_ENQUEUE_WARMUP:-$(q 1 5)}
messages=${BENCH_MESSAGES:-$(q 5000 50000)}
accounts=${BENCH_ACCOUNTS:-4}
senders=${BENCH_SENDERS:-5}
wrk_secs=${BENCH_WRK_SECONDS:-$(q 3 10)}
latency_n=${BENCH_LATENCY_MESSAGES:-$(q 100 1000)}
latency_pause=${BENCH_LATENCY_PAUSE_MS:-30}
rate_window=${BENCH_RATE_WINDOW:-$(q 10 30)}
rate_settle=${BENCH_RATE_SETTLE:-2}
# drain.sh's pgbench ceiling: messages per measurement (read by drain.sh)
export BENCH_CEILING_ROWS=${BENCH_CEILING_ROWS:-$(q 20000 200000)}
batch_messages=${BENCH_BATCH_MESSAGES:-$(q 5000 50000)}
batches=${BENCH_BATCHES:-200 1000 2000}
history=${BENCH_HISTORY:-$(q 100000 5000000)}
claim_due=${BENCH_CLAIM_DUE:-$(q 2000 10000)}
claim_senders=${BENCH_CLAIM_SENDERS:-$(q 200 1000)}
memory_messages=${BENCH_MEMORY_MESSAGES:-$(q 50000 1000000)}
memory_chunk=${BENCH_MEMORY_CHUNK:-$(q 5000 50000)}
# runs of one benchmark: BENCH_RUNS_<NAME> (e.g. BENCH_RUNS_CLAIM), else
# BENCH_RUNS; claim and memory take 1 by default (each repeats its own
# measurements, and each takes minutes)
runs_of()
{
	local var="BENCH_RUNS_${1^^}" def=$runs
	case $1 in claim | memory) [ -n "${BENCH_RUNS:-}" ] || def=1 ;; esac
	echo "${!var:-$def}"
}
instr_tx=${BENCH_INSTRUCTIONS_TRANSACTIONS:-$(q 300 2000)}
instr_messages=${BENCH_INSTRUCTIONS_MESSAGES:-$(q 1000 5000)}

bench_prepare
results=$(mktemp -d /tmp/twilio_outbox_bench_results.XXXXXX)
trap 'rm -rf "$results"' EXIT

{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc: $(nproc)"
	echo "CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
	echo "PostgreSQL: $("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')"
	echo "libcurl: $(curl-config --version | sed 's/^libcurl //')"
	echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: nginx\///')"
	commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
	dirty=$(git -C "$top" status --porcelain -- src sql Makefile 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
	echo "commit: $commit${dirty:+ with uncommitted changes to ${dirty% }}"
	echo "sizes: runs $runs; enqueue ${enqueue_secs} s (warm-up ${enqueue_warm} s); dispatch $messages messages, $accounts x $senders senders, $dispatchers dispatchers (dispatch1: 1), wrk ${wrk_secs} s; pgbench ceiling $BENCH_CEILING_ROWS messages; batch $batch_messages messages at claim_batch $batches; latency $latency_n messages ${latency_pause} ms apart; rate window ${rate_settle}-$((rate_settle + rate_window)) s; claim $claim_due due messages, $claim_senders senders, history $history (runs $(runs_of claim)); memory $memory_messages messages in chunks of $memory_chunk (runs $(runs_of memory)); instructions $instr_tx transactions, $instr_messages messages"
} >"$results/facts"
sed 's/^/  /' "$results/facts"

status=0
for bench in $only; do
	envs=()
	case $bench in
	enqueue) cmd=("$here/enqueue.sh" "$enqueue_secs" "$enqueue_warm") ;;
	dispatch) cmd=("$here/drain.sh" "$messages" "$accounts" "$senders" "$wrk_secs" "$dispatchers") ;;
	dispatch1)
		cmd=("$here/drain.sh" "$messages" "$accounts" "$senders" "$wrk_secs" 1)
		envs=(DRAIN_CEILINGS=0)
		;;
	row_versions)
		cmd=("$here/row_versions.sh" "$(q 5000 20000)" 2 2)
		;;
	latency) cmd=("$here/latency.sh" "$latency_n" "$latency_pause") ;;
	rate) cmd=("$here/rate.sh" "$rate_window" "$rate_settle") ;;
	batch) cmd=("$here/batch.sh" "$batch_messages" $batches) ;;
	claim) cmd=("$here/claim.sh" "$history" "$claim_due" "$claim_senders") ;;
	memory) cmd=("$here/memory.sh" "$memory_messages" "$memory_chunk") ;;
	instructions) cmd=("$here/instructions.sh" "$instr_tx" "$instr_messages") ;;
	*) echo "unknown benchmark $bench (BENCH_ONLY: enqueue instructions dispatch dispatch1 batch latency rate claim memory row_versions)" >&2; exit 2 ;;
	esac
	n_runs=$(runs_of "$bench")
	for run in $(seq "$n_runs"); do
		echo "== $bench, run $run of $n_runs"
		rc=0
		env "${envs[@]}" BENCH_RUN="$run" BENCH_RESULTS="$results/$bench.$run" bash "${cmd[@]}" || rc=$?
		echo "$rc" >"$results/$bench.$run.status"
		if [ "$rc" != 0 ]; then
			echo "== $bench, run $run failed (exit status $rc)"
			status=1
		fi
	done
done

if [ "$record" = 1 ]; then
	python3 "$here/report.py" "$results" "$results/facts" "$top/BENCHMARKS.md" || status=1
else
	python3 "$here/report.py" "$results" "$results/facts" || status=1
fi
exit $status
