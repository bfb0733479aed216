#!/usr/bin/env bash
# Claim cost: how the dispatcher's claim scales with the number of senders
# and with history.  Three cases, each claiming the same D due messages
# (default 10,000; one segment each, rate 'Infinity'):
#
#   one      one sender with D due messages, no finished rows in the table;
#   many     S senders (default 1,000) with D / S due messages each, in
#            another database of the same cluster, no finished rows;
#   history  the first case's database with H finished rows added (default
#            5,000,000: 19 in 20 sent, 1 in 20 dead, with their attempts
#            and dead letters; bench/shape.sh's gen_messages).
#
# Two measures each time, the tables freshly VACUUMed and ANALYZEd and
# checkpointed (autovacuum off, so that nothing else runs):
#
#  (a) the claim statement itself, EXPLAIN (ANALYZE, BUFFERS): the one
#      src/queue.c's outbox_claim() prepares, read out of that file by
#      bench/claim_sql.py so that it mirrors the function as it is now,
#      PREPAREd with the dispatcher's parameter types and executed as the
#      dispatcher would with twilio_outbox.claim_batch R (default 200): the
#      senders outbox_claim() asks (k senders share R equally, at least 16
#      each, as many as fill R, in turn), budget Infinity, an account room
#      of R; each execution its own transaction (committed:
#      the claimed rows are sending afterwards, as after a dispatcher's
#      claim), repeated until every due message is claimed.  The figure is
#      the sum of the executions' times (and of their buffers, shared hit +
#      read): what claiming the same D messages costs.  Median of
#      BENCH_CLAIM_REPS (default 3) sweeps, each on freshly written due
#      messages (the claimed ones deleted and VACUUMed away in between),
#      once with the custom plan (what the dispatcher's first claims use)
#      and once with the generic plan (what its cached plan may switch to).
#  (b) end to end, against nginx answering 201: from start_worker() until
#      the D messages are all sent and recorded, and the dispatcher's CPU
#      time meanwhile (its start included); median of BENCH_CLAIM_DRAINS
#      (default 3) drains, each of freshly written due messages (so the
#      "one" and "many" databases hold at most that many times D sent
#      messages by their last drain).
#
# Ratios: many / one and history / one, for (a) with each plan and for (b)
# (issue 14's goals: at most 1.2 each).
#
#   bench/claim.sh [history rows] [due messages] [senders]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/shape.sh"
bench_prepare

history=${1:-5000000}
due=${2:-10000}
nsenders=${3:-1000}
room=${BENCH_CLAIM_ROOM:-200}
reps=${BENCH_CLAIM_REPS:-3}
reps_b=${BENCH_CLAIM_DRAINS:-3}
bench_workdir
machine_load
cpu_mark
python3 "$BENCH_TOP/bench/claim_sql.py" "$BENCH_TOP/src/queue.c" >"$BENCH_DIR/claim.sql"
start_nginx
# autovacuum off: the table is VACUUMed where the measurement says, and a
# worker VACUUMing or ANALYZEing millions of rows meanwhile would weigh on
# one side only
start_cluster "autovacuum = off"
for db in one many; do
	psql_b -c "CREATE DATABASE $db"
done
BENCH_DB=one make_accounts "http://127.0.0.1:$NGINX_PORT" 1 1 "'Infinity'" "$room"
BENCH_DB=many make_accounts "http://127.0.0.1:$NGINX_PORT" 1 1 "'Infinity'" "$room"
BENCH_DB=many psql_b -c "INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
	SELECT 'acct1', '+15006' || lpad(s::text, 6, '0'), 'long_code', 'Infinity'
	FROM generate_series(2, $nsenders) s"
senders_sql="SELECT id FROM twilio_outbox.senders ORDER BY id"

# The claim statement, prepared as the dispatcher prepares it.
{
	echo "PREPARE claim(int8[], text[], int4[], float8[], bool[], int4[], int4, int4, text) AS"
	cat "$BENCH_DIR/claim.sql"
	echo ";"
} >"$BENCH_DIR/prepare.sql"

# fresh DB: D due messages over the database's senders, VACUUMed and
# ANALYZEd, checkpointed
fresh_due()
{
	gen_messages due "$due" "$senders_sql" >/dev/null
	psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "CHECKPOINT"
}

# sweep label mode rep: (a) once; prints "exec_ms buffers claims"
sweep()
{
	local label=$1 mode=$2 rep=$3 execute k share per_claim nexec
	# The senders each claim asks, as outbox_claim() asks them: k senders
	# share the room R equally (at least 16 each: CLAIM_MIN_SHARE), only as
	# many are asked as their shares fill the room, least recently asked
	# first (here: in turn by id).
	k=$(psql_b -c "SELECT count(*) FROM twilio_outbox.senders")
	share=$(( (room + k - 1) / k ))
	[ "$share" -lt 16 ] && share=$(( room < 16 ? room : 16 ))
	per_claim=$(( (room + share - 1) / share ))
	[ "$per_claim" -gt "$k" ] && per_claim=$k
	nexec=$(( (due + room - 1) / room ))
	[ "$nexec" -lt $(( (k + per_claim - 1) / per_claim )) ] && nexec=$(( (k + per_claim - 1) / per_claim ))
	{
		echo "SET plan_cache_mode = $mode;"
		cat "$BENCH_DIR/prepare.sql"
		echo "\\o $BENCH_DIR/sweep.json"
		# one more than needed: the last claims nothing
		psql_b -c "WITH s AS (SELECT id, account, row_number() OVER (ORDER BY id) - 1 AS r FROM twilio_outbox.senders)
			SELECT format('EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim(%L::int8[], %L::text[], %L::int4[], %L::float8[], %L::bool[], %L::int4[], 300, pg_backend_pid(), %L);',
				array_agg(s.id ORDER BY s.r), array_agg(s.account ORDER BY s.r), array_agg($share),
				array_agg('Infinity'::float8), array_agg(false), array_agg($room), min(s.account))
			FROM generate_series(0, $nexec) e
			JOIN s ON s.r IN (SELECT (e * $per_claim + j) % $k FROM generate_series(0, $per_claim - 1) j)
			GROUP BY e ORDER BY e"
	} >"$BENCH_DIR/sweep.sql"
	execute=$(grep -m1 '^EXPLAIN' "$BENCH_DIR/sweep.sql" | sed 's/^EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) //; s/;$//')
	chmod 644 "$BENCH_DIR"/*.sql
	fresh_due
	psql_b -f "$BENCH_DIR/sweep.sql"
	# the first claim's plan, for the log
	if [ "$rep" = 1 ]; then
		psql_b -c "DELETE FROM twilio_outbox.messages WHERE state = 'sending'" -c "VACUUM (INDEX_CLEANUP ON) twilio_outbox.messages"
		fresh_due
		{
			echo "SET plan_cache_mode = $mode;"
			cat "$BENCH_DIR/prepare.sql"
			echo "BEGIN;"
			echo "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $execute;"
			echo "ROLLBACK;"
		} | psql_b >"$BENCH_DIR/plan.$label.$mode.txt"
	fi
	psql_b -c "DELETE FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')" \
		-c "VACUUM (INDEX_CLEANUP ON) twilio_outbox.messages"
	python3 - "$BENCH_DIR/sweep.json" "$due" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
plans, decoder, pos = [], json.JSONDecoder(), 0
while text[pos:].strip():
    pos = text.index("[", pos)
    obj, pos = decoder.raw_decode(text, pos)
    plans.append(obj[0])
rows = sum(p["Plan"]["Actual Rows"] for p in plans)
if rows != int(sys.argv[2]):
    sys.exit(f"the claims took {rows} rows, not {sys.argv[2]}")
exec_ms = sum(p["Execution Time"] for p in plans)
buffers = sum(p["Plan"]["Shared Hit Blocks"] + p["Plan"]["Shared Read Blocks"] for p in plans)
claims = sum(1 for p in plans if p["Plan"]["Actual Rows"] > 0)
print(round(exec_ms, 3), buffers, claims)
PY
}

median() { python3 -c "import statistics, sys; print(round(statistics.median(float(l) for l in open(sys.argv[1])), 3))" "$1"; }

# measure label: (a) then (b) in $BENCH_DB; results suffixed with the label
measure()
{
	local label=$1 mode kind rep ms bufs claims t0 t1 pid cpu
	echo "  $label: $(psql_b -c "SELECT count(*) FROM twilio_outbox.senders") senders; $(psql_b -c "SELECT count(*) FROM twilio_outbox.messages") messages, $(psql_b -c "SELECT pg_size_pretty(pg_total_relation_size('twilio_outbox.messages'))") with indexes, before $due due ones"
	for mode in force_custom_plan force_generic_plan; do
		kind=${mode#force_}
		kind=${kind%_plan}
		: >"$BENCH_DIR/ms.$label.$kind"
		: >"$BENCH_DIR/bufs.$label.$kind"
		for rep in $(seq "$reps"); do
			sweep "$label" "$mode" "$rep" >"$BENCH_DIR/sweep.out"
			read -r ms bufs claims <"$BENCH_DIR/sweep.out"
			echo "$ms" >>"$BENCH_DIR/ms.$label.$kind"
			echo "$bufs" >>"$BENCH_DIR/bufs.$label.$kind"
		done
		echo "  (a) $label, $kind plan, $claims claims, each sweep (ms): $(tr '\n' ' ' <"$BENCH_DIR/ms.$label.$kind")"
		result "claim_${kind}_ms_$label" "$(median "$BENCH_DIR/ms.$label.$kind")"
		result "claim_${kind}_buffers_$label" "$(median "$BENCH_DIR/bufs.$label.$kind")"
	done
	: >"$BENCH_DIR/drain.$label"
	: >"$BENCH_DIR/cpu.$label"
	for rep in $(seq "$reps_b"); do
		fresh_due
		read -r t0 pid < <(psql_b -F' ' -c "SELECT extract(epoch FROM clock_timestamp()), twilio_outbox.start_worker()")
		t1=$(wait_drained 300)
		cpu=$(cpu_seconds "$pid")
		psql_b -c "SELECT twilio_outbox.stop_worker()" >/dev/null
		calc "round(1000 * ($t1 - $t0), 1)" >>"$BENCH_DIR/drain.$label"
		calc "round(1000 * $cpu, 1)" >>"$BENCH_DIR/cpu.$label"
		if [ "$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state NOT IN ('sent', 'dead')")" != 0 ]; then
			echo "not every message was sent" >&2
			exit 1
		fi
	done
	echo "  (b) $label, each drain (ms): $(tr '\n' ' ' <"$BENCH_DIR/drain.$label"); dispatcher CPU (ms): $(tr '\n' ' ' <"$BENCH_DIR/cpu.$label")"
	result "drain_ms_$label" "$(median "$BENCH_DIR/drain.$label")"
	result "drain_cpu_ms_$label" "$(median "$BENCH_DIR/cpu.$label")"
}

ratio()
{
	local a b
	a=$(awk -v k="$2" '$1 == k {print $2}' "$BENCH_DIR/results")
	b=$(awk -v k="$3" '$1 == k {print $2}' "$BENCH_DIR/results")
	result "$1" "$(calc "round($b / $a, 3)")"
}

echo "claim cost: $due due messages; one sender, $nsenders senders, then one sender beside $history finished messages; claim_batch $room"
BENCH_DB=one measure one
BENCH_DB=many measure many

start=$(date +%s.%N)
BENCH_DB=one gen_messages finished "$history" "$senders_sql" >/dev/null
BENCH_DB=one psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "VACUUM ANALYZE twilio_outbox.attempts" \
	-c "VACUUM ANALYZE twilio_outbox.dead_letters" -c "CHECKPOINT"
note claim_history_write "$history finished messages written, VACUUMed and ANALYZEd in $(calc "round($(date +%s.%N) - $start, 1)") s"
BENCH_DB=one measure history

for kind in custom generic; do
	for label in many history; do
		ratio "claim_${kind}_ratio_$label" "claim_${kind}_ms_one" "claim_${kind}_ms_$label"
	done
done
for label in many history; do
	ratio "drain_cpu_ratio_$label" drain_cpu_ms_one "drain_cpu_ms_$label"
	ratio "drain_ms_ratio_$label" drain_ms_one "drain_ms_$label"
done
for label in many history; do
	for kind in custom generic; do
		echo "  the first claim's plan, $label, $kind plan:"
		sed 's/^/    /' "$BENCH_DIR/plan.$label.force_${kind}_plan.txt"
	done
done
foreign_cpu
