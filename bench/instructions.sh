#!/usr/bin/env bash
# Instructions, counted by callgrind: what one enqueue transaction costs
# against a plain INSERT of the same row, and what one dispatched message
# costs the dispatcher.  Counts, unlike timings, do not move with the other
# load on the machine: run it beside anything.  Run as root; never part of
# make test.
#
# Method.  The cluster is prepared natively (extension, account, sender,
# nginx as the account's base URL, M messages enqueued, scratch.messages:
# LIKE twilio_outbox.messages INCLUDING ALL, the same columns, defaults,
# identity and indexes), then restarted with every server process under
# valgrind --tool=callgrind (PostgreSQL forks without exec: a backend or a
# background worker is counted in a file of its own, cg.<pid>).
#  - Enqueue and INSERT: one pgbench connection each (-M prepared, as an
#    application's driver; one statement per transaction, fixed seed)
#    runs W warm-up transactions, then N measured ones, between two marker
#    calls: callgrind zeroes the backend's counts on entering
#    pg_stat_clear_snapshot() (--zero-before) and writes them on entering
#    pg_stat_force_next_flush() (--dump-before), functions nothing else
#    calls.  Instructions per transaction = the dump's total / N; the
#    markers' own statements add a few thousand instructions to the N
#    transactions.  The INSERT writes what the enqueue stores (the row is
#    compared first, as bench/enqueue.sh does).  Two more variants: the
#    INSERT into a copy that also has a foreign key to accounts (which the
#    messages table had until 48_enqueue_cost.sql), and the enqueue with
#    that foreign key dropped from the messages table if it has one (put
#    back afterwards): what the key's check costs each enqueue.
#  - Dispatcher: start_worker() with the M messages queued, wait until none
#    is queued or in flight, stop_worker(); the dispatcher's whole life is
#    counted (dump at exit).  The same with no message queued gives its
#    fixed cost (start, the idle loop for about as long, exit); per message
#    = (drain - empty) / M.
#
#   bench/instructions.sh [N transactions, default 2000] [M messages, default 5000] [W warm-up, default 200]
#
# BENCH_PROFILE=1 also prints the measured enqueue's costliest functions
# (callgrind_annotate, inclusive, instructions per transaction);
# BENCH_PROFILE_DIR=dir keeps each variant's callgrind file there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_packages valgrind
# Nobody installs another build between ours and the two server starts that
# load it (the tests' lock, test/run_some.sh); released once both are up.
take_test_lock 9
bench_prepare

n=${1:-2000}
m=${2:-5000}
w=${3:-200}
run=${BENCH_RUN:-1}
bench_workdir
machine_load
start_nginx
start_cluster "checkpoint_timeout = '1h'" "autovacuum = off"
base="http://127.0.0.1:$NGINX_PORT"
psql_b <<SQL
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default, max_concurrency)
	VALUES ('main', 'AC' || repeat('0', 32), '$base', true, 100);
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'bench');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
	VALUES ('main', '+15005550006', 'long_code', true, 'Infinity');
CREATE SCHEMA scratch;
CREATE TABLE scratch.messages (LIKE twilio_outbox.messages INCLUDING ALL);
CREATE TABLE scratch.messages_fk (LIKE twilio_outbox.messages INCLUDING ALL,
	FOREIGN KEY (account) REFERENCES twilio_outbox.accounts (name));
SELECT FROM (SELECT count(twilio_enqueue('+1416' || lpad(i::text, 7, '0'), 'Benchmark message ' || i))
	FROM generate_series(1, $m) i) x;
SQL
sender_id=$(psql_b -c "SELECT id FROM twilio_outbox.senders")

row="'main', $sender_id, '+1415' || lpad(:n::text, 7, '0'), '+15005550006', 'Your verification code is 481516', 'GSM-7', 1, gen_random_uuid(), now()"
cols="account, sender_id, to_number, from_number, body, encoding, segments, idempotency_key, next_attempt_at"
check=$(psql_b <<SQL | tail -1
\set n 0
BEGIN;
SELECT twilio_enqueue('+14150000000', 'Your verification code is 481516');
INSERT INTO scratch.messages ($cols) VALUES ($row);
SELECT count(*) FROM (
	SELECT account, sender_id, to_number, from_number, body, encoding, segments, state, next_attempt_at, send_after, expires_at, dedupe_key FROM twilio_outbox.messages WHERE to_number = '+14150000000'
	UNION SELECT account, sender_id, to_number, from_number, body, encoding, segments, state, next_attempt_at, send_after, expires_at, dedupe_key FROM scratch.messages) x;
ROLLBACK;
SQL
)
if [ "$check" != 1 ]; then
	echo "the plain INSERT does not store what twilio_enqueue() stores" >&2
	exit 1
fi

# One pgbench script per variant: the statement, with the markers around
# the measured transactions (pgbench variables last across transactions).
script()
{
	cat >"$BENCH_DIR/$1.sql" <<SQL
\set i :i + 1
\set n random(0, 9999999)
\if :i = $((w + 1))
SELECT pg_stat_clear_snapshot();
\endif
$2;
\if :i = $((w + n))
SELECT pg_stat_force_next_flush();
\endif
SQL
	chmod 644 "$BENCH_DIR/$1.sql"
}
script enqueue "SELECT twilio_enqueue('+1415' || lpad(:n::text, 7, '0'), 'Your verification code is 481516')"
script insert "INSERT INTO scratch.messages ($cols) VALUES ($row)"
cp "$BENCH_DIR/enqueue.sql" "$BENCH_DIR/enqueue_nofk.sql"
script insert_fk "INSERT INTO scratch.messages_fk ($cols) VALUES ($row)"

# Everything under callgrind from here on.
as_pg pg_ctl -D "$BENCH_DIR/data" -m fast -w stop >/dev/null
as_pg bash -c "cd '$BENCH_DIR' && exec valgrind --quiet --tool=callgrind --trace-children=yes \
	--callgrind-out-file='$BENCH_DIR/cg.%p' \
	--zero-before=pg_stat_clear_snapshot --dump-before=pg_stat_force_next_flush \
	/usr/lib/postgresql/$PG_MAJOR/bin/postgres -D '$BENCH_DIR/data' >'$BENCH_DIR/server.log' 2>&1 &"
for _ in $(seq 300); do
	as_pg pg_isready -q -h "$BENCH_DIR" && break
	sleep 0.5
done
# pg_ctl stops it at the end (bench_cleanup)
flock -u 9
exec 9>&-

# The total of a callgrind output file: its "totals:" line, every thread of
# the process (libcurl resolves names in a thread of its own).
total() { awk '/^totals:/ {print $2; exit}' "$1"; }

echo "instructions (callgrind): $w warm-up + $n measured transactions per variant, one connection"
for kind in insert insert_fk enqueue enqueue_nofk; do
	if [ "$kind" = enqueue_nofk ]; then
		# what the foreign key costs the enqueue (put back below); since
		# 48_enqueue_cost.sql the table has none: the same as enqueue then
		had_fk=$(psql_b -c "SELECT count(*) FROM pg_constraint WHERE conname = 'messages_account_fkey'")
		psql_b -c "SET client_min_messages = warning; ALTER TABLE twilio_outbox.messages DROP CONSTRAINT IF EXISTS messages_account_fkey" >/dev/null
	fi
	before=$(ls "$BENCH_DIR"/cg.* 2>/dev/null | sort)
	as_pg pgbench -h "$BENCH_DIR" -U postgres -n -M prepared -c 1 -t $((w + n)) --random-seed="$run" \
		-D i=0 -f "$BENCH_DIR/$kind.sql" postgres >"$BENCH_DIR/pgbench.$kind" 2>&1 ||
		{ cat "$BENCH_DIR/pgbench.$kind" >&2; exit 1; }
	# the dump the marker wrote: cg.<pid>.1 of the pgbench backend
	dump=$(comm -13 <(echo "$before") <(ls "$BENCH_DIR"/cg.* | sort) | grep '\.[0-9]*\.1$' | head -1 || true)
	if [ -z "$dump" ]; then
		for _ in $(seq 20); do
			dump=$(ls "$BENCH_DIR"/cg.*.1 2>/dev/null | grep -v -F -x -f <(echo "$before") | head -1 || true)
			[ -n "$dump" ] && break
			sleep 0.5
		done
	fi
	[ -n "$dump" ] || { echo "no callgrind dump for $kind" >&2; exit 1; }
	per=$(( $(total "$dump") / n ))
	eval "${kind}_ir=$per"
	result "${kind}_instructions" "$per"
	if [ -n "${BENCH_PROFILE_DIR:-}" ]; then
		cp "$dump" "$BENCH_PROFILE_DIR/$kind.callgrind"
	fi
	if [ "${BENCH_PROFILE:-0}" = 1 ] && [ "$kind" = enqueue ]; then
		echo "  the enqueue's costliest functions (inclusive, per transaction):"
		callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
			awk -v n="$n" '/^ *[0-9,]+ +\( *[0-9.]+%\)/ {ir = $1; gsub(",", "", ir); line = $0;
				sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", line); sub(/ \[.*$/, "", line);
				if (ir / n >= 2000) printf "    %8d  %s\n", ir / n, line}' |
			grep -v 'libc-start\|below main\|???:0x' | sed -n '1,60p'
	fi
done
result enqueue_insert_instructions_ratio "$(calc "round($enqueue_ir / $insert_ir, 3)")"
result enqueue_insert_fk_instructions_ratio "$(calc "round($enqueue_ir / $insert_fk_ir, 3)")"
result enqueue_nofk_insert_instructions_ratio "$(calc "round($enqueue_nofk_ir / $insert_ir, 3)")"
if [ "$had_fk" != 0 ]; then
	psql_b -c "ALTER TABLE twilio_outbox.messages ADD CONSTRAINT messages_account_fkey
		FOREIGN KEY (account) REFERENCES twilio_outbox.accounts (name)"
fi

# The dispatcher: its whole life, draining the queue, then with nothing to do.
dispatcher()
{
	local pid file
	pid=$(psql_b -c "SELECT twilio_outbox.start_worker()")
	if [ "$1" = drain ]; then
		wait_drained 1200 >/dev/null
	else
		sleep "$2"
	fi
	psql_b -c "SELECT twilio_outbox.stop_worker()" >/dev/null
	for _ in $(seq 120); do
		[ -d "/proc/$pid" ] || break
		sleep 0.5
	done
	file="$BENCH_DIR/cg.$pid"
	[ -n "${BENCH_DEBUG:-}" ] && mkdir -p /tmp/h4dbg && cp "$BENCH_DIR"/cg.* /tmp/h4dbg/ >&2
	for _ in $(seq 20); do
		[ -s "$file" ] && grep -q '^totals:' "$file" && break
		sleep 0.5
	done
	total "$file"
}
queued=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'queued'")
t0=$(date +%s)
drain=$(dispatcher drain)
secs=$(( $(date +%s) - t0 ))
sent=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'")
if [ "$sent" != "$queued" ]; then
	echo "the dispatcher sent $sent of $queued messages" >&2
	exit 1
fi
empty=$(dispatcher empty "$secs")
echo "  dispatcher: $queued messages drained in $secs s under callgrind: $drain instructions; idle as long: $empty"
result dispatcher_instructions_per_message "$(( (drain - empty) / queued ))"
