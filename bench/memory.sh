#!/usr/bin/env bash
# The dispatcher's memory over a long drain: N messages (default 1,000,000)
# over 4 accounts x 5 senders, enqueued with twilio_enqueue() in chunks of C
# (default 50,000), each chunk drained by the running dispatcher (against
# nginx answering 201) before the next is enqueued, so that the table never
# holds more than one chunk's backlog; autovacuum on, as in production.
#
# Its memory is sampled every quarter of a second while it drains: "local", the
# pages private to the process outside PostgreSQL's shared memory segment
# (bench/lib.sh's local_kb: its own memory, not the shared buffers it
# touched), and RSS.  Reported at 10 %, 50 % and 100 % of the messages
# drained: the local memory then (after that chunk's drain) and the peak so
# far; and the growth from 10 % to 100 % (issue 14's goal: flat, read here
# as at most 1.1x).  Also the dispatcher's CPU per 1,000 messages over the
# whole run.  Run as root; never part of make test.
#
#   bench/memory.sh [messages] [chunk]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

n=${1:-1000000}
chunk=${2:-50000}
accounts=${BENCH_ACCOUNTS:-4}
senders=${BENCH_SENDERS:-5}
bench_workdir
machine_load
cpu_mark
start_nginx
start_cluster
make_accounts "http://127.0.0.1:$NGINX_PORT" "$accounts" "$senders" "'Infinity'" 100

pid=$(psql_b -c "SELECT twilio_outbox.start_worker()")
# memory, sampled every 0.25 s until the end: "peak_local peak_rss"
echo "0 0" >"$BENCH_DIR/memory"
(
	peak_rss=0 peak_local=0
	while [ ! -f "$BENCH_DIR/drained" ] && [ -d "/proc/$pid" ]; do
		rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
		loc=$(local_kb "$pid")
		[ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
		[ "$loc" -gt "$peak_local" ] && peak_local=$loc
		echo "$peak_local $peak_rss" >"$BENCH_DIR/memory.new"
		mv "$BENCH_DIR/memory.new" "$BENCH_DIR/memory"
		sleep 0.25
	done
) &
BENCH_PIDS+=($!)

echo "memory: $n messages in chunks of $chunk over $accounts accounts x $senders senders"
start=$(date +%s.%N)
done_n=0
next_mark=0
marks=(10 50 100)
while [ "$done_n" -lt "$n" ]; do
	c=$chunk
	[ $((done_n + c)) -gt "$n" ] && c=$((n - done_n))
	psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad((i % 10000000)::text, 7, '0'), 'Benchmark message ' || i,
		account => 'acct' || (1 + i % $accounts),
		from_number => '+1500555' || lpad((1 + i % $accounts)::text, 2, '0') || lpad((1 + (i / $accounts) % $senders)::text, 2, '0')))
		FROM generate_series($done_n + 1, $done_n + $c) i" >/dev/null
	wait_drained 600 >/dev/null
	done_n=$((done_n + c))
	while [ "$next_mark" -lt ${#marks[@]} ] && [ $((done_n * 100)) -ge $((marks[next_mark] * n)) ]; do
		p=${marks[next_mark]}
		read -r peak_local peak_rss <"$BENCH_DIR/memory"
		loc=$(local_kb "$pid")
		[ "$loc" -gt "$peak_local" ] && peak_local=$loc
		echo "  $done_n drained ($p %) after $(calc "round($(date +%s.%N) - $start, 1)") s: local $loc kB (peak so far $peak_local kB), RSS peak $peak_rss kB"
		result "memory_local_kb_p$p" "$loc"
		result "memory_peak_local_kb_p$p" "$peak_local"
		result "memory_peak_rss_kb_p$p" "$peak_rss"
		next_mark=$((next_mark + 1))
	done
done
cpu=$(cpu_seconds "$pid")
touch "$BENCH_DIR/drained"
left=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state <> 'sent'")
if [ "$left" != 0 ]; then
	echo "$left messages not sent" >&2
	exit 1
fi
result memory_cpu_s_per_1000 "$(calc "round($cpu * 1000 / $n, 4)")"
a=$(awk '$1 == "memory_local_kb_p10" {print $2}' "$BENCH_DIR/results")
z=$(awk '$1 == "memory_local_kb_p100" {print $2}' "$BENCH_DIR/results")
result memory_local_growth_ratio "$(calc "round($z / $a, 3)")"
a=$(awk '$1 == "memory_peak_local_kb_p10" {print $2}' "$BENCH_DIR/results")
z=$(awk '$1 == "memory_peak_local_kb_p100" {print $2}' "$BENCH_DIR/results")
result memory_peak_local_growth_ratio "$(calc "round($z / $a, 3)")"
note autovacuum "$(psql_b -c "SELECT string_agg(relname || ': vacuum ' || autovacuum_count || ', analyze ' || autoanalyze_count, '; ' ORDER BY relname)
	FROM pg_stat_user_tables WHERE schemaname = 'twilio_outbox' AND relname IN ('messages', 'attempts')")"
foreign_cpu
