#!/usr/bin/env bash
# Dispatch throughput: N messages (default 50,000) over A accounts (default
# 4, max_concurrency 100 each) x S senders each (default 5, rate 'Infinity'),
# enqueued, then drained by the dispatcher against nginx on 127.0.0.1
# answering every POST with a Twilio-shaped 201.
#
# Prints the drain rate (messages/s from start_worker() until no message is
# queued or in flight, every outcome recorded, both on the server's clock),
# the dispatcher's CPU time per 1,000 messages (user + system from
# /proc/<pid>/stat, its start included), and its memory sampled every half
# second: RSS, and "local", the pages private to the process outside
# PostgreSQL's shared memory segment (shared buffers it alone has touched
# count as private in smaps, and are not its own memory).  Then, in the same
# run, the responder's own ceiling: wrk POSTing a form body like the
# dispatcher's to the same nginx.  Run as root; never part of make test.
#
# BENCH_PERF=1 also profiles the dispatcher while it drains (perf record -g)
# and prints where its CPU went (BENCH_PERF_OUT=file keeps perf.data).
#
# With [dispatchers] > 1 (twilio_outbox.dispatchers_per_database), the CPU
# per 1,000 messages is summed over the dispatchers; memory is the first's.
#
#   bench/drain.sh [messages] [accounts] [senders per account] [wrk seconds] [dispatchers]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

n=${1:-50000}
accounts=${2:-4}
senders=${3:-5}
wrk_secs=${4:-10}
dispatchers=${5:-1}
bench_workdir
machine_load
cpu_mark
start_nginx
start_cluster "twilio_outbox.dispatchers_per_database = $dispatchers"
make_accounts "http://127.0.0.1:$NGINX_PORT" "$accounts" "$senders" "'Infinity'" 100

echo "dispatch: enqueueing $n messages over $accounts accounts x $senders senders"
start=$(date +%s.%N)
psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad((i % 10000000)::text, 7, '0'), 'Benchmark message ' || i,
	account => 'acct' || (1 + i % $accounts),
	from_number => '+1500555' || lpad((1 + i % $accounts)::text, 2, '0') || lpad((1 + (i / $accounts) % $senders)::text, 2, '0')))
	FROM generate_series(1, $n) i" >/dev/null
echo "  enqueued in $(calc "round($(date +%s.%N) - $start, 2)") s"
psql_b -c "VACUUM ANALYZE twilio_outbox.messages"

read -r t0 pid < <(psql_b -F' ' <<'SQL'
SELECT extract(epoch FROM clock_timestamp()), twilio_outbox.start_worker();
SQL
)
# memory, sampled until the drain is over
(
	peak_rss=0 peak_local=0
	while [ ! -f "$BENCH_DIR/drained" ] && [ -d "/proc/$pid" ]; do
		rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
		loc=$(local_kb "$pid")
		[ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
		[ "$loc" -gt "$peak_local" ] && peak_local=$loc
		echo "$peak_rss $peak_local" >"$BENCH_DIR/memory"
		sleep 0.5
	done
) &
sampler=$!
BENCH_PIDS+=("$sampler")
# BENCH_PERF=1: where the dispatcher's CPU goes (perf record -g), reported below
if [ "${BENCH_PERF:-0}" = 1 ]; then
	perf record -q -g -o "$BENCH_DIR/perf.data" -p "$pid" 2>/dev/null &
	perf_pid=$!
fi
t1=$(wait_drained 600)
cpu=0
for p in $(psql_b -c "SELECT pid FROM twilio_outbox.worker_dispatchers WHERE running"); do
	cpu=$(calc "$cpu + $(cpu_seconds "$p")")
done
touch "$BENCH_DIR/drained"
if [ -n "${perf_pid:-}" ]; then
	kill -INT "$perf_pid"
	wait "$perf_pid" || true
fi
wait "$sampler" || true
read -r peak_rss peak_local <"$BENCH_DIR/memory"
end_local=$(local_kb "$pid")

# autovacuum that ran on the tables meanwhile (a run where it did may differ)
note autovacuum "$(psql_b -c "SELECT string_agg(relname || ': vacuum ' || autovacuum_count || ', analyze ' || autoanalyze_count, '; ' ORDER BY relname)
	FROM pg_stat_user_tables WHERE schemaname = 'twilio_outbox' AND relname IN ('messages', 'attempts')")"
read -r sent attempts < <(psql_b -F' ' -c "SELECT (SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'),
	(SELECT count(*) FROM twilio_outbox.attempts)")
elapsed=$(calc "$t1 - $t0")
echo "  sent $sent of $n ($attempts attempts) in $(calc "round($elapsed, 3)") s"
if [ "$sent" != "$n" ]; then
	echo "not every message was sent" >&2
	exit 1
fi
note dispatchers_per_database "$dispatchers"
result drain_msgs_per_s "$(calc "round($n / $elapsed, 1)")"
result dispatcher_cpu_s_per_1000 "$(calc "round($cpu * 1000 / $n, 4)")"
result dispatcher_cpu_share "$(calc "round($cpu / $elapsed, 3)")"
result dispatcher_peak_rss_kb "$peak_rss"
result dispatcher_peak_local_kb "$peak_local"
result dispatcher_end_local_kb "$end_local"

# The responder alone: wrk POSTing what the dispatcher POSTs.
cat >"$BENCH_DIR/post.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic QUMwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMTpiZW5jaA=="
wrk.headers["Idempotency-Key"] = "3f2b8c1e-5a47-4d2e-9c1a-7b6e0f4d2a91"
wrk.body = "To=%2B14150012345&From=%2B15005550101&Body=Benchmark+message+12345"
LUA
wrk_rps=$(wrk -t2 -c100 -d"${wrk_secs}s" -s "$BENCH_DIR/post.lua" "http://127.0.0.1:$NGINX_PORT" |
	awk '/^Requests\/sec:/ {print $2}')
result nginx_wrk_requests_per_s "$wrk_rps"
if [ -n "${perf_pid:-}" ]; then
	[ -n "${BENCH_PERF_OUT:-}" ] && cp "$BENCH_DIR/perf.data" "$BENCH_PERF_OUT"
	perf report -i "$BENCH_DIR/perf.data" --stdio --no-children --sort dso,symbol >"$BENCH_DIR/perf.self" 2>/dev/null || true
	perf report -i "$BENCH_DIR/perf.data" --stdio --no-children --sort dso >"$BENCH_DIR/perf.dso" 2>/dev/null || true
	perf report -i "$BENCH_DIR/perf.data" --stdio --children --sort symbol -g none >"$BENCH_DIR/perf.children" 2>/dev/null || true
	echo "  the dispatcher's profile (perf, self time, top 30):"
	grep -E '^ +[0-9]+\.[0-9]+%' "$BENCH_DIR/perf.self" | sed -n '1,30s/^/    /p'
	echo "  by library:"
	grep -E '^ +[0-9]+\.[0-9]+%' "$BENCH_DIR/perf.dso" | sed -n '1,12s/^/    /p'
	echo "  inclusive time of the dispatcher's own steps:"
	grep -E '^ +[0-9]+\.[0-9]+% +[0-9]+\.[0-9]+% .*(outbox_|database_phase|curl_multi_perform|CommitTransactionCommand|XLogFlush|SPI_execute_plan)' \
		"$BENCH_DIR/perf.children" | sed -n '1,25s/^/    /p'
fi
foreign_cpu
