#!/usr/bin/env bash
# Claim cost with priorities (issue 12): the dispatcher's claim statement
# (read out of src/queue.c by bench/claim_sql.py, so it mirrors the
# function as it is), EXPLAIN (ANALYZE, BUFFERS) of one claim of R
# (default 200) on one unlimited sender, rolled back each time, in three
# shapes of the queue:
#
#   normal   D (default 10,000) due messages of priority normal: today's
#            shape, what bench/claim.sh's "one" case claims;
#   backlog  the same D normal messages and L (default 1,000,000) due
#            low-priority messages, all older than the normal ones: the
#            claim must still take the normal ones first, reading about R
#            rows, not L;
#   low      the L low-priority messages alone: the claim reads the lowest
#            level after finding the higher levels empty.
#
# Median of BENCH_CLAIM_REPS (default 5) executions per shape and plan
# (custom, generic), milliseconds and shared buffers (hit + read).  The
# tables are VACUUMed, ANALYZEd and checkpointed before each shape
# (autovacuum off).  Holds /tmp/twilio_outbox_test.lock while it installs
# and runs (others' tests use the same installation).
#
#   bench/priority_claim.sh [low-priority due messages] [normal due messages]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
take_test_lock 9
bench_prepare

low=${1:-1000000}
due=${2:-10000}
room=${BENCH_CLAIM_ROOM:-200}
reps=${BENCH_CLAIM_REPS:-5}
bench_workdir
machine_load
python3 "$BENCH_TOP/bench/claim_sql.py" "$BENCH_TOP/src/queue.c" >"$BENCH_DIR/claim.sql"
start_cluster "autovacuum = off"
make_accounts "http://127.0.0.1:9" 1 1 "'Infinity'" "$room"
sender=$(psql_b -c "SELECT id FROM twilio_outbox.senders")

# due messages of a priority level, due since $3 (older for the backlog)
gen_due()
{
	local n=$1 level=$2 since=$3
	psql_b <<SQL
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, from_number, body,
	encoding, segments, idempotency_key, state, attempts, next_attempt_at, created_at, updated_at,
	priority, traffic_class)
SELECT 'acct1', $sender, '+1415' || lpad((i % 10000000)::text, 7, '0'), '+15005550101',
	'Benchmark message ' || i, 'GSM-7', 1, gen_random_uuid(), 'queued', 0, t, t, t,
	$level, CASE WHEN $level = 2 THEN 'marketing' ELSE 'transactional' END
FROM generate_series(0, $n - 1) i,
	LATERAL (SELECT now() - interval '$since' + i * interval '1 microsecond') x(t);
SQL
	psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "CHECKPOINT"
}

# measure label: the claim, R rows, custom and generic plan
measure()
{
	local label=$1 mode kind
	for mode in force_custom_plan force_generic_plan; do
		kind=${mode#force_}
		kind=${kind%_plan}
		{
			# as the dispatcher runs it (src/worker.c: jit off)
			echo "SET jit = off;"
			echo "SET plan_cache_mode = $mode;"
			echo "PREPARE claim(int8[], text[], int4[], float8[], bool[], int4[], int4, int4, text) AS"
			cat "$BENCH_DIR/claim.sql"
			echo ";"
			echo "\\o $BENCH_DIR/claim.$label.$kind.json"
			for _ in $(seq "$reps"); do
				echo "BEGIN;"
				echo "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim('{$sender}', '{acct1}', '{$room}', '{Infinity}', '{f}', '{$room}', 300, pg_backend_pid(), 'acct1');"
				echo "ROLLBACK;"
			done
			echo "\\o"
			echo "BEGIN;"
			echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE claim('{$sender}', '{acct1}', '{$room}', '{Infinity}', '{f}', '{$room}', 300, pg_backend_pid(), 'acct1');"
			echo "ROLLBACK;"
		} >"$BENCH_DIR/run.sql"
		chmod 644 "$BENCH_DIR/run.sql"
		psql_b -f "$BENCH_DIR/run.sql" >"$BENCH_DIR/plan.$label.$kind.txt"
		python3 - "$BENCH_DIR/claim.$label.$kind.json" "$room" "$label" "$kind" >>"$BENCH_DIR/out" <<'PY'
import json, statistics, sys
text = open(sys.argv[1]).read()
plans, decoder, pos = [], json.JSONDecoder(), 0
while text[pos:].strip():
    pos = text.index("[", pos)
    obj, pos = decoder.raw_decode(text, pos)
    plans.append(obj[0])
for p in plans:
    if p["Plan"]["Actual Rows"] != int(sys.argv[2]):
        sys.exit(f"a claim took {p['Plan']['Actual Rows']} rows, not {sys.argv[2]}")
ms = statistics.median(p["Execution Time"] for p in plans)
bufs = statistics.median(p["Plan"]["Shared Hit Blocks"] + p["Plan"]["Shared Read Blocks"] for p in plans)
print(f"claim_{sys.argv[4]}_ms_{sys.argv[3]} {round(ms, 3)}")
print(f"claim_{sys.argv[4]}_buffers_{sys.argv[3]} {int(bufs)}")
PY
	done
}

echo "claim cost with priorities: one claim of $room; $due normal due messages, then beside $low older low-priority ones, then the low ones alone"
gen_due "$due" 1 '1 minute'
measure normal
start=$(date +%s.%N)
gen_due "$low" 2 '2 hours'
note priority_backlog_write "$low low-priority due messages written, VACUUMed and ANALYZEd in $(calc "round($(date +%s.%N) - $start, 1)") s"
measure backlog
psql_b -c "DELETE FROM twilio_outbox.messages WHERE priority = 1" -c "VACUUM ANALYZE twilio_outbox.messages" -c "CHECKPOINT"
measure low
while read -r k v; do result "$k" "$v"; done <"$BENCH_DIR/out"
for kind in custom generic; do
	echo "  the claim's plan, backlog, $kind plan:"
	sed 's/^/    /' "$BENCH_DIR/plan.backlog.$kind.txt"
done
