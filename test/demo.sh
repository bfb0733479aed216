#!/usr/bin/env bash
# make demo: twilio_outbox doing its job on a throwaway cluster.
#
# Installs what is missing (as root), builds and installs the extension,
# starts a throwaway PostgreSQL 15 with pg_cron on a Unix socket and a local
# Twilio stand-in on 127.0.0.1, then plays an application: a realistic batch
# enqueued in transactions (one rolled back), the dispatcher sending it with
# a retry, a rate limit and a dead letter among the outcomes.  Everything is
# stopped and removed at the end.
#
# With TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM and TWILIO_TO set,
# it sends one real message through api.twilio.com instead of the stand-in.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/setup.sh"
need_packages
build_and_install "$top"

real=no
if [ -n "${TWILIO_ACCOUNT_SID:-}" ] && [ -n "${TWILIO_AUTH_TOKEN:-}" ] &&
	[ -n "${TWILIO_FROM:-}" ] && [ -n "${TWILIO_TO:-}" ]; then
	real=yes
fi

dir=$(mktemp -d /tmp/twilio_outbox_demo.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$dir"
standin_pid=
cleanup()
{
	as_pg pg_ctl -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
	[ -n "$standin_pid" ] && kill "$standin_pid" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

echo "== a throwaway cluster with pg_cron, in $dir"
as_pg initdb -D "$dir/data" -A trust -U postgres >/dev/null
cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_cron,twilio_outbox'
cron.database_name = 'postgres'
listen_addresses = ''
unix_socket_directories = '$dir'
port = 5432
twilio_outbox.allow_insecure_http = $([ $real = yes ] && echo off || echo on)
twilio_outbox.backoff_base = '500ms'
CONF
# The auth token reaches the server through its environment, never SQL.
as_pg env TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-demo-token}" \
	pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null

psql_demo() { as_pg psql -h "$dir" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 "$@"; }

if [ $real = yes ]; then
	base_url=https://api.twilio.com
	sid=$TWILIO_ACCOUNT_SID
	from=$TWILIO_FROM
	echo "== real mode: one message from $from to $TWILIO_TO through $base_url"
else
	python3 "$top/test/twilio_standin.py" --port 0 --port-file "$dir/standin.port" --quiet &
	standin_pid=$!
	for _ in $(seq 100); do [ -s "$dir/standin.port" ] && break; sleep 0.1; done
	base_url=http://127.0.0.1:$(cat "$dir/standin.port")
	sid=AC$(printf '%032d' 0)
	from=+15005550006
	echo "== a Twilio stand-in at $base_url"
	# What the stand-in will answer: a 500 then success for one recipient,
	# a 429 for another, and Twilio's invalid-number error for a third.
	curl -sf -X POST "$base_url/_script" -d '{"to": "+14155550103", "actions": [{"status": 500}]}' >/dev/null
	curl -sf -X POST "$base_url/_script" -d '{"to": "+14155550105", "actions": [{"status": 429, "retry_after": "1"}]}' >/dev/null
	curl -sf -X POST "$base_url/_script" -d '{"to": "+15005550001", "actions": [{"status": 400, "code": 21211, "message": "The '"'"'To'"'"' number +15005550001 is not a valid phone number."}]}' >/dev/null
fi

echo "== CREATE EXTENSION, an account, a sender, the pg_cron supervisor"
psql_demo <<SQL
CREATE EXTENSION pg_cron;
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
	VALUES ('main', '$sid', '$base_url', true);
INSERT INTO twilio_outbox.account_credentials (account, secret_env)
	VALUES ('main', 'TWILIO_AUTH_TOKEN');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '$from', 'long_code', true);
SELECT twilio_outbox.schedule_supervisor() AS supervisor_job;
SELECT twilio_outbox.start_worker() IS NOT NULL AS dispatcher_started;
SQL

echo "== the application's transactions"
if [ $real = yes ]; then
	psql_demo -c "SELECT twilio_enqueue('$TWILIO_TO', 'Hello from twilio_outbox', expires_at => now() + interval '10 minutes') AS message_id"
else
	psql_demo -e <<'SQL'
-- An order is placed: the confirmation is queued in the same transaction.
BEGIN;
CREATE TEMP TABLE orders (id int, phone text);
INSERT INTO orders VALUES (1001, '+14155550101');
SELECT twilio_enqueue('+14155550101', 'Order 1001 confirmed. Reply STOP to opt out.',
	dedupe_key => 'order-1001-confirmed') AS message_id;
COMMIT;
-- A payment fails: the transaction rolls back, so its SMS is never sent.
BEGIN;
SELECT twilio_enqueue('+14155550102', 'Payment received, thank you!') AS message_id;
ROLLBACK;
-- A batch: one-time codes that must never arrive stale, a picture, a
-- Unicode message, one to a number Twilio will refuse.
BEGIN;
SELECT twilio_enqueue('+1415555' || lpad(n::text, 4, '0'),
	'Your verification code is ' || (100000 + n * 7919 % 900000),
	expires_at => now() + interval '5 minutes')
FROM generate_series(103, 112) AS n;
SELECT twilio_enqueue('+14155550120', 'Your parcel has arrived',
	media_urls => ARRAY['https://demo.example.com/parcel.jpg']);
SELECT twilio_enqueue('+14155550121', 'Merci beaucoup ! 🎉');
SELECT twilio_enqueue('+15005550001', 'This number is invalid');
COMMIT;
SQL
fi

echo "== the dispatcher at work (state counts until nothing is waiting)"
for _ in $(seq 60); do
	line=$(psql_demo -At -c "SELECT string_agg(state || '=' || n, '  ' ORDER BY state)
		FROM (SELECT state::text, count(*) n FROM twilio_outbox.messages GROUP BY 1) s")
	echo "   $line"
	waiting=$(psql_demo -At -c "SELECT count(*) FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')")
	[ "$waiting" = 0 ] && break
	sleep 0.5
done

echo "== what the outbox holds"
psql_demo <<'SQL'
\pset footer off
SELECT id, to_number, state, attempts, twilio_sid, coalesce(last_error_message, '') AS last_error
FROM twilio_outbox.messages ORDER BY id;
SELECT message_id, attempt, http_status, twilio_code, outcome, ambiguous, delay,
	round(duration_ms::numeric, 1) AS ms
FROM twilio_outbox.attempts WHERE outcome <> 'sent' OR attempt > 1 ORDER BY id;
SELECT message_id, to_number, reason, twilio_code, error_message FROM twilio_outbox.dead_letters;
SELECT jobname, schedule, command FROM cron.job;
SQL
if [ $real = no ]; then
	echo "== the stand-in received $(curl -sf "$base_url/_requests" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') requests"
fi
echo "== done; stopping and removing the cluster"
