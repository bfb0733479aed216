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
# dispatcher's to the same nginx.  And PostgreSQL's own ceiling for the
# dispatcher's writes, in the same run on the same cluster (the dispatcher
# stopped): pgbench running bench/shape.sh's ceiling_script (claim a batch of
# 200 due messages of one sender, then record them with their attempt rows,
# two transactions, synchronous_commit on) over BENCH_CEILING_ROWS (default
# 200,000) messages written by gen_messages, on one connection and then on
# two (each on its own sender of acct1: with one sender per account, on
# one only); rows/s.  The drain rate is then printed as a
# ratio of each ceiling.  Run as root; never part of make test.
#
# Knobs for bench/batch.sh (environment): DRAIN_SETTINGS, lines added to
# postgresql.conf (e.g. twilio_outbox.claim_batch); DRAIN_CONCURRENCY, each
# account's max_concurrency [100]; DRAIN_NOFILE, the cluster's soft limit of
# open files (the cluster restarted under it; the dispatcher inherits it:
# each request in flight holds a socket, and at the postgres user's usual
# 1,024 connections fail beyond about 1,000 in flight); DRAIN_SUFFIX, appended to every figure's
# name; DRAIN_CEILINGS=0 skips wrk and pgbench.
#
# BENCH_PERF=1 also profiles the dispatcher while it drains (perf record -g)
# and prints where its CPU went (BENCH_PERF_OUT=file keeps perf.data).
#
# BENCH_WAITS=1 samples what the dispatchers wait for (pg_stat_activity
# every 20 ms, by a psql that costs some CPU itself), noted as
# dispatcher_waits.  Every run notes cpu_by_role: the cores each role kept
# busy over the drain (the dispatchers, nginx, the cluster's other
# processes by title, and the machine's idle time).
#
# With [dispatchers] > 1 (twilio_outbox.dispatchers_per_database), the CPU
# per 1,000 messages is summed over the dispatchers; memory is the first's.
#
#   bench/drain.sh [messages] [accounts] [senders per account] [wrk seconds] [dispatchers]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/shape.sh"
bench_prepare

n=${1:-50000}
accounts=${2:-4}
senders=${3:-5}
wrk_secs=${4:-10}
ceilings=${DRAIN_CEILINGS:-1}
ceiling_rows=${BENCH_CEILING_ROWS:-200000}
ceiling_batch=${BENCH_CEILING_BATCH:-200}
sfx=${DRAIN_SUFFIX:-}
dispatchers=${5:-1}
bench_workdir
machine_load
cpu_mark
start_nginx
settings=()
if [ -n "${DRAIN_SETTINGS:-}" ]; then
	mapfile -t settings <<<"$DRAIN_SETTINGS"
fi
start_cluster "twilio_outbox.dispatchers_per_database = $dispatchers" "${settings[@]}"
if [ -n "${DRAIN_NOFILE:-}" ]; then
	as_pg bash -c "ulimit -Sn $DRAIN_NOFILE && exec pg_ctl -D '$BENCH_DIR/data' -l '$BENCH_DIR/server.log' -w restart" >/dev/null
	note "nofile$sfx" "the cluster's open files limit raised to $DRAIN_NOFILE"
fi
make_accounts "http://127.0.0.1:$NGINX_PORT" "$accounts" "$senders" "'Infinity'" "${DRAIN_CONCURRENCY:-100}"

echo "dispatch: enqueueing $n messages over $accounts accounts x $senders senders"
start=$(date +%s.%N)
psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad((i % 10000000)::text, 7, '0'), 'Benchmark message ' || i,
	account => 'acct' || (1 + i % $accounts),
	from_number => '+1500555' || lpad((1 + i % $accounts)::text, 2, '0') || lpad((1 + (i / $accounts) % $senders)::text, 2, '0')))
	FROM generate_series(1, $n) i" >/dev/null
echo "  enqueued in $(calc "round($(date +%s.%N) - $start, 2)") s"
psql_b -c "VACUUM ANALYZE twilio_outbox.messages"

# Where the machine's CPU goes while it drains: each process of the cluster
# (by its title: the dispatchers, the WAL writer, ...), nginx, and the
# machine's idle time, in clock ticks (what keeps two dispatchers from twice
# one's rate shows here: a busy machine, or the WAL writer, or nginx).
cpu_by_role()
{
	python3 - "$BENCH_DIR" <<'PY'
import os, sys
d = sys.argv[1]
roots = {}
for f, role in ((d + "/data/postmaster.pid", "postmaster"), (d + "/nginx.pid", "nginx")):
    try:
        roots[int(open(f).readline())] = role
    except (OSError, ValueError):
        pass
ticks = {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        cmd = open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip()
    except OSError:
        continue
    pid, ppid, t = int(p), int(stat[1]), int(stat[11]) + int(stat[12])
    if pid in roots:
        role = roots[pid]
    elif ppid in roots:
        role = roots[ppid]
        if role == "postmaster":
            title = cmd.replace("postgres: ", "")
            role = ("dispatcher" if "twilio_outbox dispatcher" in title
                    else "other backends" if "postgres postgres" in title or "[local]" in title
                    else title.split(" ")[0] if title else "postmaster")
    else:
        continue
    ticks[role] = ticks.get(role, 0) + t
cpu = open("/proc/stat").readline().split()
ticks["(idle)"] = int(cpu[4]) + int(cpu[5])
for k, v in sorted(ticks.items()):
    print(f"{k}\t{v}")
PY
}
cpu_by_role >"$BENCH_DIR/roles.start"
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
# BENCH_WAITS=1: what the dispatchers wait for, pg_stat_activity sampled
# every 20 ms by one psql (which costs some CPU itself: not for the record)
if [ "${BENCH_WAITS:-0}" = 1 ]; then
	(
		while [ ! -f "$BENCH_DIR/drained" ]; do
			echo "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity WHERE backend_type LIKE 'twilio_outbox%' OR application_name = 'twilio_outbox dispatcher';"
			echo "SELECT pg_sleep(0.02);"
		done | psql_b >"$BENCH_DIR/waits" 2>/dev/null
	) &
	BENCH_PIDS+=("$!")
fi
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
cpu_by_role >"$BENCH_DIR/roles.end"
if [ -n "${perf_pid:-}" ]; then
	kill -INT "$perf_pid"
	wait "$perf_pid" || true
fi
wait "$sampler" || true
read -r peak_rss peak_local <"$BENCH_DIR/memory"
if [ -f "$BENCH_DIR/waits" ]; then
	note "dispatcher_waits$sfx" "$(grep -v '^$' "$BENCH_DIR/waits" | sort | uniq -c | sort -rn | head -8 | awk '{printf "%s%s %s", sep, $2, $1; sep = ", "}') (samples every 20 ms)"
fi
end_local=$(local_kb "$pid")

# autovacuum that ran on the tables meanwhile (a run where it did may differ)
note autovacuum "$(psql_b -c "SELECT string_agg(relname || ': vacuum ' || autovacuum_count || ', analyze ' || autoanalyze_count, '; ' ORDER BY relname)
	FROM pg_stat_user_tables WHERE schemaname = 'twilio_outbox' AND relname IN ('messages', 'attempts')")"
check_drained "$n"
note "dispatchers_per_database$sfx" "$dispatchers"
note "cpu_by_role$sfx" "$(python3 - "$BENCH_DIR" "$(getconf CLK_TCK)" "$(calc "$t1 - $t0")" <<'PY'
import sys
d, hz, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def load(f):
    return {k: int(v) for k, v in (l.rstrip("\n").split("\t") for l in open(f))}
a, b = load(d + "/roles.start"), load(d + "/roles.end")
out = [f"{k} {(b[k] - a.get(k, 0)) / hz / secs:.2f}" for k in sorted(b) if b[k] - a.get(k, 0) > 0]
print("cores busy over the drain: " + ", ".join(out))
PY
)"
rate=$(calc "round($n / $elapsed, 1)")
result "attempts_per_message$sfx" "$(calc "round($attempts / $n, 3)")"
if [ "$attempts" != "$n" ]; then
	# retried attempts cost CPU too: say why they failed
	note "failed_attempts$sfx" "$(psql_b -c "SELECT string_agg(c || ' ' || outcome || coalesce(' (' || coalesce(transport_error, 'HTTP ' || http_status) || ')', ''), '; ')
		FROM (SELECT outcome, transport_error, http_status, count(*) c FROM twilio_outbox.attempts
			WHERE outcome <> 'sent' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 5) x")"
fi
result "drain_msgs_per_s$sfx" "$rate"
result "dispatcher_cpu_s_per_1000$sfx" "$(calc "round($cpu * 1000 / $n, 4)")"
result "dispatcher_cpu_share$sfx" "$(calc "round($cpu / $elapsed, 3)")"
result "dispatcher_peak_rss_kb$sfx" "$peak_rss"
result "dispatcher_peak_local_kb$sfx" "$peak_local"
result "dispatcher_end_local_kb$sfx" "$end_local"
# BENCH_PERF=1: the dispatcher's profile, printed whether or not the
# ceilings are measured
perf_report()
{
	[ -n "${perf_pid:-}" ] || return 0
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
}
psql_b -c "SELECT twilio_outbox.stop_worker()" >/dev/null
perf_report
if [ "$ceilings" != 1 ]; then
	foreign_cpu
	exit 0
fi

# The responder alone: wrk POSTing what the dispatcher POSTs.
cat >"$BENCH_DIR/post.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic QUMwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMTpiZW5jaA=="
wrk.headers["Idempotency-Key"] = "3f2b8c1e-5a47-4d2e-9c1a-7b6e0f4d2a91"
wrk.body = "To=%2B14150012345&From=%2B15005550101&Body=Benchmark+message+12345"
LUA
wrk -t2 -c100 -d"${wrk_secs}s" -s "$BENCH_DIR/post.lua" "http://127.0.0.1:$NGINX_PORT" >"$BENCH_DIR/wrk.out"
wrk_rps=$(awk '/^Requests\/sec:/ {print $2}' "$BENCH_DIR/wrk.out")
# a ceiling that measured errors is no ceiling
if [ -z "$wrk_rps" ] || grep -qE '^ +(Socket errors|Non-2xx or 3xx responses)' "$BENCH_DIR/wrk.out"; then
	cat "$BENCH_DIR/wrk.out" >&2
	echo "the nginx ceiling run failed (errors above): no ratio to it is reported" >&2
	exit 1
fi
result "nginx_wrk_requests_per_s$sfx" "$wrk_rps"

# PostgreSQL's ceiling for the same writes: pgbench, CLIENTS connections,
# each claiming and recording batches of its own sender's due messages.
ceiling_script "$ceiling_batch" "$BENCH_DIR/ceiling.sql"
chmod 644 "$BENCH_DIR/ceiling.sql"
pg_ceiling()
{
	local clients=$1 per txns before after tps
	per=$((ceiling_rows / clients / ceiling_batch * ceiling_batch))
	txns=$((per / ceiling_batch))
	gen_messages due $((per * clients)) "SELECT id FROM twilio_outbox.senders WHERE account = 'acct1' ORDER BY id LIMIT $clients" >/dev/null
	psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "VACUUM ANALYZE twilio_outbox.attempts" -c "CHECKPOINT"
	before=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'")
	as_pg pgbench -h "$BENCH_DIR" -U postgres -n -M prepared -c "$clients" -j "$clients" -t "$txns" \
		-f "$BENCH_DIR/ceiling.sql" postgres >"$BENCH_DIR/pgbench.$clients.out" 2>&1 || {
		cat "$BENCH_DIR/pgbench.$clients.out" >&2
		return 1
	}
	after=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'")
	if [ $((after - before)) != $((per * clients)) ]; then
		echo "pgbench recorded $((after - before)) of $((per * clients)) messages" >&2
		return 1
	fi
	if grep -qE '^number of failed transactions: [1-9]' "$BENCH_DIR/pgbench.$clients.out"; then
		cat "$BENCH_DIR/pgbench.$clients.out" >&2
		return 1
	fi
	tps=$(awk '/^tps = / {print $3; exit}' "$BENCH_DIR/pgbench.$clients.out")
	echo "  pgbench, $clients connection(s): $txns batches of $ceiling_batch each, $tps batches/s" >&2
	calc "round($tps * $ceiling_batch, 1)"
}
echo "PostgreSQL's ceiling for the dispatcher's writes (pgbench, batches of $ceiling_batch, synchronous_commit $(psql_b -c 'SHOW synchronous_commit'))"
pg1=$(pg_ceiling 1)
result "pg_ceiling_rows_per_s_1conn$sfx" "$pg1"
# two connections take a sender each
pg2=
if [ "$senders" -ge 2 ]; then
	pg2=$(pg_ceiling 2)
	result "pg_ceiling_rows_per_s_2conn$sfx" "$pg2"
fi
# The dispatchers make these writes and more (the HTTP, the rest of their
# statements), over as many connections as there are dispatchers: a ceiling
# below their drain rate measured something else (the run of 2026-11-29
# 12:44 reported 4,315 rows/s, a pgbench script sorting every due row per
# batch, and a drain at 2.8 times its "ceiling").  Fail rather than report
# such ratios.
ceiling=$pg1
[ "$dispatchers" -ge 2 ] && [ -n "$pg2" ] && ceiling=$pg2
if [ "$(calc "int($ceiling < $rate)")" = 1 ]; then
	echo "PostgreSQL's ceiling ($ceiling rows/s on $([ "$ceiling" = "$pg1" ] && echo 1 || echo 2) connection(s)) is below the drain rate ($rate messages/s): the ceiling run is broken; no ratio to it is reported" >&2
	note "ceiling_broken$sfx" "pgbench ceiling $ceiling rows/s below the drain's $rate messages/s"
	exit 1
fi
result "drain_share_of_pg_1conn$sfx" "$(calc "round($rate / $pg1, 3)")"
[ -n "$pg2" ] && result "drain_share_of_pg_2conn$sfx" "$(calc "round($rate / $pg2, 3)")"
result "drain_share_of_nginx$sfx" "$(calc "round($rate / $wrk_rps, 3)")"
foreign_cpu
