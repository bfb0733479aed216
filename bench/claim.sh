#!/usr/bin/env bash
# Claim cost against history: claiming 1,000 due messages of one sender,
# first with no history in the table, then with H (default 1,000,000)
# finished (sent) messages in it; both times the table freshly VACUUMed and
# ANALYZEd, and checkpointed (autovacuum off, so that nothing else runs).  Two measures each time:
#
#  (a) EXPLAIN (ANALYZE, BUFFERS) of the claim statement itself: the one
#      src/queue.c's outbox_claim() prepares, read out of that file by
#      bench/claim_sql.py so that it mirrors the function as it is now,
#      PREPAREd with the same parameter types as the dispatcher's SPI plan
#      and executed for one sender with max_n 1000, budget Infinity and an
#      account room of 1000, inside a transaction that is rolled back.  One
#      warm-up, then 9 measured executions (each after a VACUUM (INDEX_CLEANUP ON) of the
#      rolled-back row versions); the median's execution time and buffers
#      (shared hit + read, all nodes) are reported, once with the custom
#      plan (what the dispatcher's first claims use) and once with the
#      generic plan (what its cached plan may switch to).
#  (b) end to end, against nginx answering 201: from start_worker() until
#      those 1,000 messages are all sent and recorded; then, with the
#      dispatcher running and idle, from the commit of 1,000 more to their
#      last outcome; 5 times each (the dispatcher stopped and 1,000 more
#      enqueued in between), the medians reported.  So "no history" holds
#      at most 10,000 sent messages by the end.
#
# History rows are written by INSERT ... SELECT generate_series: state
# 'sent', a Twilio SID, finished_at set, every NOT NULL column filled.
#
#   bench/claim.sh [history rows]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

history=${1:-1000000}
due=1000
reps=9
reps_b=5
bench_workdir
machine_load
cpu_mark
python3 "$BENCH_TOP/bench/claim_sql.py" "$BENCH_TOP/src/queue.c" >"$BENCH_DIR/claim.sql"
start_nginx
# autovacuum off: the table is VACUUMed where the measurement says, and a
# worker VACUUMing or ANALYZEing 1,000,000 rows meanwhile would weigh on one
# side only
start_cluster "autovacuum = off"
make_accounts "http://127.0.0.1:$NGINX_PORT" 1 1 "'Infinity'" 100
sender_id=$(psql_b -c "SELECT id FROM twilio_outbox.senders")

# The claim statement, prepared as the dispatcher prepares it.
{
	echo "PREPARE claim(int8[], text[], int4[], float8[], bool[], int4[], int4, int4) AS"
	cat "$BENCH_DIR/claim.sql"
	echo ";"
} >"$BENCH_DIR/prepare.sql"
execute="EXECUTE claim(ARRAY[$sender_id]::int8[], ARRAY['acct1'], ARRAY[$due], ARRAY['Infinity']::float8[], ARRAY[false], ARRAY[$due], 300, pg_backend_pid())"

enqueue_due()
{
	psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad(i::text, 7, '0'), 'Claim probe ' || i)) FROM generate_series(1, $due) i" >/dev/null
}

# claim_explain label plan_cache_mode: (a), prints "exec_ms buffers planning_ms"
claim_explain()
{
	local mode=$2 i
	{
		echo "SET plan_cache_mode = $mode;"
		cat "$BENCH_DIR/prepare.sql"
		# warm-up, in text for the log
		echo "\\o $BENCH_DIR/explain.$1.$mode.txt"
		echo "BEGIN; EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $execute; ROLLBACK;"
		echo "\\o $BENCH_DIR/explain.$1.$mode.json"
		for i in $(seq $reps); do
			echo "VACUUM (INDEX_CLEANUP ON) twilio_outbox.messages;"
			echo "BEGIN; EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) $execute; ROLLBACK;"
		done
		echo "VACUUM (INDEX_CLEANUP ON) twilio_outbox.messages;"
	} >"$BENCH_DIR/explain.sql"
	chmod 644 "$BENCH_DIR"/*.sql
	psql_b -f "$BENCH_DIR/explain.sql"
	python3 - "$BENCH_DIR/explain.$1.$mode.json" "$due" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
plans, decoder, pos = [], json.JSONDecoder(), 0
while text[pos:].strip():
    pos = text.index("[", pos)
    obj, pos = decoder.raw_decode(text, pos)
    plans.append(obj[0])
runs = []
for p in plans:
    top = p["Plan"]
    if top["Actual Rows"] != int(sys.argv[2]):
        sys.exit(f"the claim took {top['Actual Rows']} rows, not {sys.argv[2]}")
    runs.append((p["Execution Time"], top["Shared Hit Blocks"] + top["Shared Read Blocks"],
                 p.get("Planning Time", 0.0)))
runs.sort()
exec_ms, buffers, planning = runs[len(runs) // 2]
print(round(exec_ms, 3), buffers, round(planning, 3))
PY
}

# measure label: (a) then (b); results suffixed with the label
measure()
{
	local label=$1 t0 t1 pid ms bufs plan
	enqueue_due
	psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "CHECKPOINT"
	echo "  $label: $(psql_b -c "SELECT count(*) FROM twilio_outbox.messages") rows, $(psql_b -c "SELECT pg_size_pretty(pg_total_relation_size('twilio_outbox.messages'))") with indexes"
	for mode in force_custom_plan force_generic_plan; do
		read -r ms bufs plan < <(claim_explain "$label" "$mode")
		local kind=${mode#force_}
		kind=${kind%_plan}
		result "claim_${kind}_exec_ms_$label" "$ms"
		result "claim_${kind}_buffers_$label" "$bufs"
		[ "$kind" = custom ] && result "claim_custom_planning_ms_$label" "$plan"
	done
	psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "CHECKPOINT"
	: >"$BENCH_DIR/start.$label"
	: >"$BENCH_DIR/running.$label"
	for i in $(seq $reps_b); do
		[ "$i" = 1 ] || enqueue_due
		read -r t0 pid < <(psql_b -F' ' -c "SELECT extract(epoch FROM clock_timestamp()), twilio_outbox.start_worker()")
		t1=$(wait_drained 120)
		calc "round(1000 * ($t1 - $t0), 1)" >>"$BENCH_DIR/start.$label"
		sleep 1
		t0=$(psql_b -c "SELECT count(twilio_enqueue('+1417' || lpad(i::text, 7, '0'), 'Claim probe ' || i)) FROM generate_series(1, $due) i" \
			-c "SELECT extract(epoch FROM clock_timestamp())" | tail -1)
		t1=$(wait_drained 120)
		calc "round(1000 * ($t1 - $t0), 1)" >>"$BENCH_DIR/running.$label"
		psql_b -c "SELECT twilio_outbox.stop_worker()" >/dev/null
	done
	echo "  (b) $label, each (ms): from start $(tr '\n' ' ' <"$BENCH_DIR/start.$label"); running $(tr '\n' ' ' <"$BENCH_DIR/running.$label")"
	result "drain_1000_from_start_ms_$label" "$(median "$BENCH_DIR/start.$label")"
	result "drain_1000_running_ms_$label" "$(median "$BENCH_DIR/running.$label")"
	# every one sent, none left behind
	if [ "$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state <> 'sent'")" != 0 ]; then
		echo "not every message was sent" >&2
		exit 1
	fi
}

median() { python3 -c "import statistics, sys; print(round(statistics.median(float(l) for l in open(sys.argv[1])), 1))" "$1"; }

echo "claim cost: $due due messages, no history, then $history sent messages of history"
measure empty

start=$(date +%s.%N)
psql_b <<SQL
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, from_number, body,
	encoding, segments, idempotency_key, state, attempts, next_attempt_at,
	twilio_sid, twilio_status, twilio_segments, last_http_status,
	created_at, updated_at, sent_at, finished_at)
SELECT 'acct1', $sender_id, '+1415' || lpad((i % 10000000)::text, 7, '0'), '+15005550101',
	'Historic message ' || i, 'GSM-7', 1, gen_random_uuid(), 'sent', 1, t,
	'SM' || md5(i::text), 'queued', 1, 201, t, t + interval '1 s', t + interval '1 s', t + interval '1 s'
FROM generate_series(1, $history) i,
	LATERAL (SELECT now() - interval '30 days' + i * (interval '29 days' / $history)) x(t);
SQL
echo "  history written in $(calc "round($(date +%s.%N) - $start, 1)") s"
measure history

for kind in custom generic; do
	a=$(awk -v k="claim_${kind}_exec_ms_empty" '$1 == k {print $2}' "$BENCH_DIR/results")
	b=$(awk -v k="claim_${kind}_exec_ms_history" '$1 == k {print $2}' "$BENCH_DIR/results")
	result "claim_${kind}_ratio" "$(calc "round($b / $a, 3)")"
done
a=$(awk '$1 == "drain_1000_from_start_ms_empty" {print $2}' "$BENCH_DIR/results")
b=$(awk '$1 == "drain_1000_from_start_ms_history" {print $2}' "$BENCH_DIR/results")
result drain_1000_from_start_ratio "$(calc "round($b / $a, 3)")"
a=$(awk '$1 == "drain_1000_running_ms_empty" {print $2}' "$BENCH_DIR/results")
b=$(awk '$1 == "drain_1000_running_ms_history" {print $2}' "$BENCH_DIR/results")
result drain_1000_running_ratio "$(calc "round($b / $a, 3)")"
for mode in force_custom_plan force_generic_plan; do
	echo "  the plan with history ($mode, warm-up execution):"
	sed 's/^/    /' "$BENCH_DIR/explain.history.$mode.txt"
done
foreign_cpu
