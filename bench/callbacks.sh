#!/usr/bin/env bash
# Status callbacks per second: pgbench clients calling
# twilio_outbox.receive_status() (one short transaction each: signature
# check, dedupe insert, guarded update) with real signed callbacks for
# $messages sent messages: each message's sent and delivered callbacks,
# every callback sent about twice over the run and in random order, so
# duplicates and out-of-order arrivals are part of the load.  The callbacks
# are signed beforehand (a receiver does not sign); the lookup of the
# prepared callback by its number is part of each transaction.  Then checks
# that nothing was applied twice or backwards.  Not part of make bench's
# default list (BENCH_ONLY) or of make test.
#
#   bench/callbacks.sh [seconds, default 10] [clients, default 4] [messages, default 20000]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

secs=${1:-10}
clients=${2:-4}
messages=${3:-20000}
bench_workdir
start_cluster
psql_b <<SQL
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
	VALUES ('main', 'AC' || repeat('0', 32), 'http://127.0.0.1:9', true);
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'bench-auth-token');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
SELECT count(twilio_enqueue('+1415' || lpad(g::text, 7, '0'), 'bench')) FROM generate_series(1, $messages) g;
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1, twilio_status = 'queued',
	twilio_sid = 'SM' || lpad(to_hex(id), 32, '0'), sent_at = now(), finished_at = now();
CREATE TABLE cb (n int PRIMARY KEY, url text, body text, sig text);
INSERT INTO cb
SELECT row_number() OVER (), u, b, twilio_outbox.webhook_signature('bench-auth-token', u, b)
FROM (SELECT 'https://hooks.example.com/twilio/status?outbox_id=' || m.id AS u,
		'AccountSid=AC' || repeat('0', 32) || '&ApiVersion=2010-04-01&From=%2B15005550006'
		|| '&MessageSid=' || m.twilio_sid || '&MessageStatus=' || s || '&SmsSid=' || m.twilio_sid
		|| '&SmsStatus=' || s || '&To=' || replace(m.to_number, '+', '%2B') AS b
	  FROM twilio_outbox.messages m, unnest(ARRAY['sent', 'delivered']) s) x;
VACUUM ANALYZE;
SQL
total=$((messages * 2))
cat >"$BENCH_DIR/callback.sql" <<SQL
\set n random(1, $total)
SELECT twilio_outbox.receive_status(url, body, sig) FROM cb WHERE n = :n;
SQL
chmod 644 "$BENCH_DIR/callback.sql"

echo "== $clients clients, $secs s, $messages messages ($total distinct callbacks)"
out=$(as_pg pgbench -h "$BENCH_DIR" -U postgres -n -M prepared -c "$clients" -j "$clients" -T "$secs" \
	-f "$BENCH_DIR/callback.sql" postgres 2>&1)
tps=$(echo "$out" | awk '/^tps = / {print $3}')
lat=$(echo "$out" | awk '/^latency average/ {print $4}')
result callbacks_per_s "$tps"
result callback_latency_ms "$lat"
psql_b <<'SQL'
SELECT 'events ' || count(*) || ', applied ' || count(*) FILTER (WHERE verdict = 'applied')
	|| ', stale ' || count(*) FILTER (WHERE verdict = 'stale') FROM twilio_outbox.status_events;
SQL
# Nothing twice, nothing backwards: one event per pair, and every message
# with a delivered event is delivered.
bad=$(psql_b <<'SQL'
SELECT (SELECT count(*) FROM (SELECT message_sid, message_status FROM twilio_outbox.status_events
		GROUP BY 1, 2 HAVING count(*) > 1) d)
	 + (SELECT count(*) FROM twilio_outbox.messages m JOIN twilio_outbox.status_events e
		ON e.message_id = m.id AND e.message_status = 'delivered' WHERE m.state <> 'delivered')
	 + (SELECT count(*) FROM twilio_outbox.messages m WHERE m.state = 'sent' AND m.twilio_status = 'delivered');
SQL
)
if [ "$bad" != 0 ]; then
	echo "error: $bad callbacks applied twice or backwards" >&2
	exit 1
fi
echo "  checked: no pair recorded twice, no message moved backwards"
