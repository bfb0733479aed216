#!/usr/bin/env bash
# Enqueue cost: pgbench (2 clients, 2 threads, prepared statements, as an
# application's driver would use: the INSERT is not planned again each
# time, as twilio_enqueue()'s kept plan is not) running one-statement
# transactions that call twilio_enqueue() (a random +1415 recipient, a short
# body, the default account and sender), against the same transactions
# doing a plain INSERT of the values the enqueue stores into a table of the
# same shape (LIKE twilio_outbox.messages INCLUDING ALL: same columns,
# defaults, identity and indexes).  Both after a warm-up, then in 2 s
# segments alternating the two (see below), with no dispatcher running.
#
# Twice: with synchronous_commit = on (what an application pays, each
# commit waiting for its WAL flush) and off (the statements' own CPU cost,
# which the flush would otherwise hide).
#
#   bench/enqueue.sh [seconds of each kind per mode, default 20] [warm-up seconds, default 5]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

secs=${1:-20}
warm=${2:-5}
run=${BENCH_RUN:-1}
bench_workdir
machine_load
cpu_mark
start_cluster
psql_b <<'SQL'
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
	VALUES ('main', 'AC' || repeat('0', 32), 'http://127.0.0.1:9', true);
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'bench');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
CREATE SCHEMA scratch;
CREATE TABLE scratch.messages (LIKE twilio_outbox.messages INCLUDING ALL);
SQL
sender_id=$(psql_b -c "SELECT id FROM twilio_outbox.senders")

# What the enqueue stores for this call is what the INSERT writes.
cat >"$BENCH_DIR/enqueue.sql" <<'SQL'
\set n random(0, 9999999)
SELECT twilio_enqueue('+1415' || lpad(:n::text, 7, '0'), 'Your verification code is 481516');
SQL
cat >"$BENCH_DIR/insert.sql" <<SQL
\set n random(0, 9999999)
INSERT INTO scratch.messages (account, sender_id, to_number, from_number, body, encoding, segments, idempotency_key, next_attempt_at) VALUES ('main', $sender_id, '+1415' || lpad(:n::text, 7, '0'), '+15005550006', 'Your verification code is 481516', 'GSM-7', 1, gen_random_uuid(), now());
SQL
chmod 644 "$BENCH_DIR"/*.sql

# The stored rows must be alike, or the comparison means nothing.
check=$(psql_b <<SQL
BEGIN;
SELECT twilio_enqueue('+14150000000', 'Your verification code is 481516');
INSERT INTO scratch.messages (account, sender_id, to_number, from_number, body, encoding, segments, idempotency_key, next_attempt_at) VALUES ('main', $sender_id, '+14150000000', '+15005550006', 'Your verification code is 481516', 'GSM-7', 1, gen_random_uuid(), now());
SELECT count(*) FROM (
	SELECT account, sender_id, to_number, from_number, body, encoding, segments, state, next_attempt_at, send_after, expires_at, dedupe_key FROM twilio_outbox.messages
	UNION SELECT account, sender_id, to_number, from_number, body, encoding, segments, state, next_attempt_at, send_after, expires_at, dedupe_key FROM scratch.messages) x;
ROLLBACK;
SQL
)
check=$(echo "$check" | tail -1)
if [ "$check" != 1 ]; then
	echo "the plain INSERT does not store what twilio_enqueue() stores" >&2
	exit 1
fi

# pgbench_run script sync: prints "tps latency_ms"
pgbench_run()
{
	PGOPTIONS="-c synchronous_commit=$3" as_pg pgbench -h "$BENCH_DIR" -U postgres -n -M prepared -c 2 -j 2 -T "$2" \
		-f "$BENCH_DIR/$1.sql" postgres 2>&1 |
		awk '/^latency average/ {lat = $4} /^tps = / {tps = $3} END {if (tps == "") exit 1; print tps, lat}'
}

# Each measurement is split in short segments strictly alternating the two
# kinds (which goes first shifts from run to run), so that a drift or a burst
# in the machine's speed (the WAL flush above all, on a disk shared with
# others) weighs on both alike.  TPS and latency are the means over the
# segments; the ratio is the median over adjacent pairs, which one slow
# segment cannot move.
seg=2
pairs=$(( secs / seg > 0 ? secs / seg : 1 ))
echo "enqueue cost: pgbench -M prepared -c 2 -j 2, ${warm} s warm-up, then $pairs x ${seg} s of each, alternating"
for sync in on off; do
	pgbench_run insert "$warm" "$sync" >/dev/null
	pgbench_run enqueue "$warm" "$sync" >/dev/null
	: >"$BENCH_DIR/segments.$sync"
	if [ $((run % 2)) = 1 ]; then order="insert enqueue"; else order="enqueue insert"; fi
	for p in $(seq "$pairs"); do
		for kind in $order; do
			read -r tps lat < <(pgbench_run "$kind" "$seg" "$sync")
			echo "$p $kind $tps $lat" >>"$BENCH_DIR/segments.$sync"
		done
	done
	read -r insert_tps insert_lat enqueue_tps enqueue_lat ratio < <(python3 - "$BENCH_DIR/segments.$sync" <<'PY'
import collections, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = collections.defaultdict(list)
pair = collections.defaultdict(dict)
for p, kind, tps, lat in rows:
    by[kind].append((float(tps), float(lat)))
    pair[p][kind] = float(lat)
mean = lambda kind, i: sum(x[i] for x in by[kind]) / len(by[kind])
ratio = statistics.median(v["enqueue"] / v["insert"] for v in pair.values())
print(f"{mean('insert', 0):.1f} {mean('insert', 1):.4f} {mean('enqueue', 0):.1f} {mean('enqueue', 1):.4f} {ratio:.3f}")
PY
)
	echo "  segments (pair kind tps latency_ms): $(awk '{printf "%s %s %.0f %s; ", $1, $2, $3, $4}' "$BENCH_DIR/segments.$sync")"
	suffix=$([ "$sync" = on ] && echo "" || echo "_async")
	result "insert_tps$suffix" "$insert_tps"
	result "enqueue_tps$suffix" "$enqueue_tps"
	result "insert_latency_ms$suffix" "$insert_lat"
	result "enqueue_latency_ms$suffix" "$enqueue_lat"
	result "enqueue_insert_ratio$suffix" "$ratio"
done
foreign_cpu
