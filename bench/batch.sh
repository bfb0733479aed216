#!/usr/bin/env bash
# The dispatcher's CPU per 1,000 messages as a function of
# twilio_outbox.claim_batch: bench/drain.sh (N messages, default 50,000, over
# 4 accounts x 5 senders, against nginx) once per batch size (default 200,
# 1000 and 2000), each on its own cluster, without drain.sh's ceilings.
# twilio_outbox.max_in_flight is set to the batch size times
# BENCH_BATCH_IN_FLIGHT_FACTOR (default 1: a claim can fill a whole batch
# only when that many requests may be in flight), and each account's
# max_concurrency to its share of that (at least 100, at most 1,000, the
# column's limit), so that neither caps the batch; and the cluster's soft
# limit of open files to max_in_flight + 1,024 (a socket per request in
# flight: at the postgres user's usual 1,024 the dispatcher's connects fail
# beyond about 1,000 in flight, and are retried).
#
# Prints, per batch size B, drain.sh's figures suffixed _bB (messages/s, CPU
# s per 1,000, memory) and batch_max_in_flight_bB; then batch_cpu_ratio, the
# CPU per 1,000 at the largest batch over that at the smallest (issue 14's
# goal: at most 1.2 for 2,000 against 200).  Run as root; never part of make
# test.
#
#   bench/batch.sh [messages] [batch sizes...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
bench_prepare

n=${1:-50000}
shift || true
if [ $# -gt 0 ]; then
	batches=("$@")
else
	batches=(200 1000 2000)
fi
accounts=${BENCH_ACCOUNTS:-4}
senders=${BENCH_SENDERS:-5}
factor=${BENCH_BATCH_IN_FLIGHT_FACTOR:-1}
work=$(mktemp -d /tmp/twilio_outbox_batch.XXXXXX)
trap 'rm -rf "$work"' EXIT

for b in "${batches[@]}"; do
	in_flight=$((b * factor))
	conc=$(( (in_flight + accounts - 1) / accounts ))
	[ "$conc" -lt 100 ] && conc=100
	[ "$conc" -gt 1000 ] && conc=1000
	echo "== claim_batch $b, max_in_flight $in_flight, max_concurrency $conc per account"
	BENCH_RESULTS="$work/b$b" DRAIN_SUFFIX="_b$b" DRAIN_CEILINGS=0 DRAIN_CONCURRENCY=$conc \
		DRAIN_NOFILE=$((in_flight + 1024)) \
		DRAIN_SETTINGS="twilio_outbox.claim_batch = $b
twilio_outbox.max_in_flight = $in_flight" \
		bash "$here/drain.sh" "$n" "$accounts" "$senders"
	if [ -n "${BENCH_RESULTS:-}" ]; then
		cat "$work/b$b" >>"$BENCH_RESULTS"
	fi
	result "batch_max_in_flight_b$b" "$in_flight"
done

first=${batches[0]}
last=${batches[${#batches[@]} - 1]}
a=$(awk -v k="dispatcher_cpu_s_per_1000_b$first" '$1 == k {print $2}' "$work/b$first")
z=$(awk -v k="dispatcher_cpu_s_per_1000_b$last" '$1 == k {print $2}' "$work/b$last")
echo "CPU s per 1,000 messages: $a at claim_batch $first, $z at $last"
result batch_cpu_ratio "$(calc "round($z / $a, 3)")"
