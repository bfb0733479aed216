#!/usr/bin/env bash
# Campaign enqueue cost (issue 12): enqueueing a campaign from a query,
#
#   SELECT count(twilio_enqueue(phone, body, campaign => 'x', ...)) FROM ...
#
# of N rows (default 100,000) in one statement, against the same statement
# without a campaign, and against single enqueues (one statement and one
# transaction each, pgbench with prepared statements, synchronous_commit
# off so that the commit's WAL flush does not hide the statement's cost),
# with and without a campaign.  Per row, in microseconds, median of
# BENCH_REPS (default 3); the table emptied and VACUUMed between runs, no
# dispatcher running.  Holds /tmp/twilio_outbox_test.lock (it installs).
#
#   bench/campaign_enqueue.sh [rows, default 100000] [single enqueues, default 20000]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
take_test_lock 9
bench_prepare

rows=${1:-100000}
singles=${2:-20000}
reps=${BENCH_REPS:-3}
bench_workdir
machine_load
start_cluster "autovacuum = off"
make_accounts "http://127.0.0.1:9" 1 1 "'Infinity'" 25

empty() { psql_b -c "DELETE FROM twilio_outbox.messages" -c "DELETE FROM twilio_outbox.campaigns" -c "VACUUM ANALYZE twilio_outbox.messages" -c "CHECKPOINT" >/dev/null; }

# bulk label extra-args: microseconds per row of one N-row statement
bulk()
{
	local label=$1 args=$2 rep us
	: >"$BENCH_DIR/bulk.$label"
	for rep in $(seq "$reps"); do
		empty
		us=$(psql_b <<SQL
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT count(twilio_enqueue('+1415' || lpad(g::text, 7, '0'), 'Black Friday: 30% off everything, today only' $args))
FROM generate_series(1, $rows) g \g /dev/null
SELECT round((extract(epoch FROM clock_timestamp()) - :t0) * 1e6 / $rows, 2);
SQL
)
		echo "$us" >>"$BENCH_DIR/bulk.$label"
	done
	echo "  bulk $label, each run (us/row): $(tr '\n' ' ' <"$BENCH_DIR/bulk.$label")"
	result "bulk_us_per_row_$label" "$(python3 -c "import statistics, sys; print(statistics.median(float(l) for l in open(sys.argv[1])))" "$BENCH_DIR/bulk.$label")"
}

# single label extra-args: microseconds per single enqueue (pgbench, 1 client)
single()
{
	local label=$1 args=$2 rep tps
	cat >"$BENCH_DIR/single.$label.sql" <<SQL
\set n random(0, 9999999)
SELECT twilio_enqueue('+1415' || lpad(:n::text, 7, '0'), 'Black Friday: 30% off everything, today only' $args);
SQL
	chmod 644 "$BENCH_DIR/single.$label.sql"
	: >"$BENCH_DIR/single.$label"
	for rep in $(seq "$reps"); do
		empty
		tps=$(as_pg env PGOPTIONS='-c synchronous_commit=off' pgbench -h "$BENCH_DIR" -U postgres -n -M prepared -c 1 -t "$singles" \
			-f "$BENCH_DIR/single.$label.sql" postgres 2>/dev/null | awk '/^tps/ {print $3; exit}')
		calc "round(1e6 / $tps, 2)" >>"$BENCH_DIR/single.$label"
	done
	echo "  single $label, each run (us/enqueue): $(tr '\n' ' ' <"$BENCH_DIR/single.$label")"
	result "single_us_per_enqueue_$label" "$(python3 -c "import statistics, sys; print(statistics.median(float(l) for l in open(sys.argv[1])))" "$BENCH_DIR/single.$label")"
}

echo "campaign enqueue: $rows rows in one statement, and $singles single enqueues, with and without a campaign"
bulk plain ""
bulk campaign ", campaign => 'black-friday', traffic_class => 'marketing', priority => 'low'"
single plain ""
single campaign ", campaign => 'black-friday', traffic_class => 'marketing', priority => 'low'"
for label in plain campaign; do
	a=$(awk -v k="bulk_us_per_row_$label" '$1 == k {print $2}' "$BENCH_DIR/results")
	b=$(awk -v k="single_us_per_enqueue_$label" '$1 == k {print $2}' "$BENCH_DIR/results")
	result "bulk_over_single_$label" "$(calc "round($a / $b, 3)")"
done
a=$(awk '$1 == "bulk_us_per_row_plain" {print $2}' "$BENCH_DIR/results")
b=$(awk '$1 == "bulk_us_per_row_campaign" {print $2}' "$BENCH_DIR/results")
result "bulk_campaign_over_plain" "$(calc "round($b / $a, 3)")"
