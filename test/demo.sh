#!/usr/bin/env bash
# make demo: twilio_outbox doing its job on a throwaway cluster.
#
# Installs what is missing (as root), builds and installs the extension,
# starts a throwaway PostgreSQL 15 with pg_cron on a Unix socket and a local
# Twilio stand-in on 127.0.0.1, then plays an application: a realistic batch
# enqueued in transactions (one rolled back), the dispatcher sending it with
# a retry, a rate limit and a dead letter among the outcomes.  Then Twilio's
# side of delivery: the stand-in posts signed status callbacks (sent, then
# delivered or undelivered; some twice, some out of order) and an inbound
# STOP to the thin receiver (twilio_outbox_receiver), which hands them to
# the extension; one login code's SMS is reported undelivered and its
# fallback chain escalates to a voice call, which completes.  Everything is
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

make_scratch demo

echo "== a throwaway cluster with pg_cron, in $dir"
init_cluster <<CONF
shared_preload_libraries = 'pg_cron,twilio_outbox'
cron.database_name = 'postgres'
twilio_outbox.allow_insecure_http = $([ $real = yes ] && echo off || echo on)
twilio_outbox.backoff_base = '500ms'
CONF
# The auth token reaches the server through its environment, never SQL.
as_pg env TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-demo-token}" \
	pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null

psql_demo() { as_pg psql -h "$dir" -p 5432 -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 "$@"; }

if [ $real = yes ]; then
	base_url=https://api.twilio.com
	sid=$TWILIO_ACCOUNT_SID
	from=$TWILIO_FROM
	kind=${TWILIO_FROM_KIND:-long_code}
	echo "== real mode: one message from $from to $TWILIO_TO through $base_url"
else
	start_standin
	base_url=$standin_url
	sid=AC$(printf '%032d' 0)
	from=+15005550006
	kind=short_code   # 100 segments a second
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
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default, max_concurrency)
	VALUES ('main', '$sid', '$base_url', true, 4);
INSERT INTO twilio_outbox.account_credentials (account, secret_env)
	VALUES ('main', 'TWILIO_AUTH_TOKEN');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '$from', '$kind', true);
SELECT twilio_outbox.schedule_supervisor() AS supervisor_job;
SQL

if [ $real = no ]; then
	# Twilio's webhooks come back through the thin receiver, which connects
	# as a role that may only hand them over.  Behind a TLS proxy its public
	# URL would be https://...; here Twilio (the stand-in) calls it directly.
	rport=$(free_port)
	hooks=http://127.0.0.1:$rport/twilio
	echo "== the thin receiver for Twilio's webhooks at $hooks/{status,inbound}"
	psql_demo <<SQL
CREATE ROLE twilio_receiver LOGIN IN ROLE twilio_outbox_webhook;
UPDATE twilio_outbox.accounts SET status_callback_url = '$hooks/status' WHERE name = 'main';
SQL
	start_receiver "$rport" "$hooks" "host=$dir port=5432 dbname=postgres user=twilio_receiver"
	# After each 201 the stand-in posts the message's callbacks, signed with
	# the account's auth token: delivered, except three undelivered; every
	# 7th message's twice, every 5th's final status before its 'sent'.
	curl -sf -X POST "$base_url/_callbacks" -d '{"auth_token": "demo-token",
		"outcomes": {"+14155550150": {"status": "undelivered", "error_code": 30003},
			"+14155550250": {"status": "undelivered", "error_code": 30003},
			"+14155550350": {"status": "undelivered", "error_code": 30005},
			"+14155550950": {"status": "undelivered", "error_code": 30003}},
		"duplicate_every": 7, "reverse_every": 5}' >/dev/null
fi

echo "== the application's transactions"
if [ $real = yes ]; then
	psql_demo -c "SELECT twilio_enqueue('$TWILIO_TO', 'Hello from twilio_outbox', expires_at => now() + interval '10 minutes') AS message_id"
else
	# The stand-in takes 50 ms a request and the account sends 4 at a
	# time, so that the progress below can be watched.
	curl -sf -X POST "$base_url/_script" -d '{"steady": {"status": 201, "delay": 0.05}}' >/dev/null
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
-- A campaign: one-time codes that must never arrive stale, a picture, a
-- Unicode message, one to a number Twilio will refuse.
BEGIN;
SELECT count(twilio_enqueue('+1415555' || lpad(n::text, 4, '0'),
	'Your verification code is ' || (100000 + n * 7919 % 900000),
	expires_at => now() + interval '5 minutes')) AS codes
FROM generate_series(103, 400) AS n;
SELECT twilio_enqueue('+14155550920', 'Your parcel has arrived',
	media_urls => ARRAY['https://demo.example.com/parcel.jpg']) AS mms;
SELECT twilio_enqueue('+14155550921', 'Merci beaucoup ! 🎉') AS unicode;
SELECT twilio_enqueue('+15005550001', 'This number is invalid') AS invalid;
-- A login code that escalates to a voice call if the SMS is not delivered.
SELECT twilio_enqueue('+14155550950', 'Your login code is 4 2 4 2 4 2',
	fallback => '[{"channel": "voice", "voice": "alice", "language": "en-US"}]') AS chain;
COMMIT;
SQL
fi

echo "== the dispatcher starts; twilio_outbox.backlog until nothing is waiting"
psql_demo -c "SELECT twilio_outbox.start_worker() IS NOT NULL AS dispatcher_started"
for _ in $(seq 120); do
	psql_demo -At -F ' ' -c "
		SELECT to_char(now(), 'HH24:MI:SS.MS'), 'due', coalesce(sum(due_now), 0),
			'retrying', coalesce(sum(retrying), 0), 'in flight', coalesce(sum(in_flight), 0),
			'| sent', (SELECT count(*) FROM twilio_outbox.messages WHERE state IN ('sent', 'delivered', 'undelivered', 'failed')),
			'delivered', (SELECT count(*) FROM twilio_outbox.messages WHERE state = 'delivered'),
			'dead', (SELECT count(*) FROM twilio_outbox.messages WHERE state = 'dead'),
			coalesce((SELECT '| paused: ' || pause_reason FROM twilio_outbox.accounts
				WHERE paused_until > now()), '')
		FROM twilio_outbox.backlog"
	waiting=$(psql_demo -At -c "SELECT count(*) FROM twilio_outbox.messages WHERE state IN ('queued', 'sending') OR (state = 'ambiguous' AND reconcile_at IS NOT NULL)")
	[ "$waiting" = 0 ] && break
	sleep 0.5
done

if [ $real = no ]; then
	echo "== Twilio's status callbacks through the receiver, until every sent message has its final status"
	for _ in $(seq 60); do
		# a fallback step comes after its SMS's callback: queued, then sent, then its own
		settled=$(psql_demo -At -c "SELECT count(*) = 0 FROM twilio_outbox.messages WHERE state IN ('queued', 'sending', 'sent') OR (state = 'ambiguous' AND reconcile_at IS NOT NULL)")
		queued=$(curl -sf "$base_url/_callbacks" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queued"])')
		[ "$settled" = t ] && [ "$queued" = 0 ] && break
		sleep 0.25
	done
	echo "== a recipient replies STOP: Twilio posts it to the receiver's inbound path"
	curl -sf -X POST "$base_url/_inbound" -d '{"url": "'"$hooks"'/inbound", "auth_token": "demo-token",
		"account_sid": "'"$sid"'", "from": "+14155550400", "to": "'"$from"'", "body": "STOP"}' |
		python3 -c 'import json,sys; a = json.load(sys.stdin); print("receiver answered", a["status"], a["body"])'
fi

echo "== what happened"
psql_demo <<'SQL'
\pset footer off
\echo 'Attempts that did not simply succeed (twilio_outbox.attempt_log):'
SELECT message_id, attempt, to_number, http_status, twilio_code, outcome, ambiguous,
	delay, retry_after
FROM twilio_outbox.attempt_log WHERE outcome <> 'sent' OR attempt > 1 ORDER BY started_at;
\echo 'Dead letters (twilio_outbox.dead_letter_queue):'
SELECT message_id, to_number, kind, reason, twilio_code, error_message
FROM twilio_outbox.dead_letter_queue;
\echo 'Throughput and errors (twilio_outbox.stats):'
SELECT * FROM twilio_outbox.stats;
\echo 'Health checks (twilio_outbox.health):'
SELECT * FROM twilio_outbox.health;
\echo 'The dispatcher (twilio_outbox.worker):'
SELECT pid IS NOT NULL AS running, in_flight, sent_since_start, dead_since_start, last_error
FROM twilio_outbox.worker;
\echo 'Its pg_cron supervisor:'
SELECT jobname, schedule, command, database FROM cron.job;
SQL
if [ $real = no ]; then
	psql_demo <<'SQL'
\pset footer off
\echo 'Delivery, from the status callbacks (twilio_outbox.messages by state):'
SELECT state, count(*) FROM twilio_outbox.messages GROUP BY state ORDER BY state;
\echo 'What each callback did, once per MessageSid and MessageStatus (twilio_outbox.status_events):'
SELECT message_status, verdict, count(*) FROM twilio_outbox.status_events
GROUP BY message_status, verdict ORDER BY message_status, verdict;
\echo 'Undelivered messages and their dead letters:'
SELECT m.id, m.to_number, m.last_error_code, d.reason AS dead_letter
FROM twilio_outbox.messages m LEFT JOIN twilio_outbox.dead_letters d ON d.message_id = m.id
WHERE m.state = 'undelivered' ORDER BY m.id;
\echo 'A fallback chain: the SMS undelivered, then the call (twilio_outbox.chains, chain_steps):'
SELECT head_id, outcome, delivered_channel, steps_made FROM twilio_outbox.chains;
SELECT step, channel, to_number, state, twilio_status FROM twilio_outbox.chain_steps ORDER BY head_id, step;
\echo 'Suppressed recipients (the STOP):'
SELECT account, to_number, reason FROM twilio_outbox.suppressed_recipients;
\echo 'Webhooks accepted and refused (twilio_outbox.webhook_counters):'
SELECT verdict, webhooks FROM twilio_outbox.webhook_counters() WHERE webhooks > 0;
SQL
	echo "== the stand-in received $(curl -sf "$base_url/_requests" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') requests" \
		"and posted $(curl -sf "$base_url/_callbacks" | python3 -c 'import json,sys; c = json.load(sys.stdin); print(c["posted"], "status callbacks, answered", c["answers"])')"
	echo "== the receiver's log, last lines (one per request, nothing secret):"
	tail -n 3 "$dir/receiver.log"
fi
# The verdict: every committed message sent or dead-lettered as scripted
# (with the stand-in: all but the invalid number sent), nothing left behind;
# with the stand-in also every callback applied once: all but four
# delivered, those four undelivered, the STOP's sender suppressed, and
# every webhook answered 200 by the receiver; the fourth undelivered (the
# login code) made one more message, its call, which completed (delivered).
# total counts that call too: 303 committed, 304 messages.
read -r total sent dead waiting delivered undelivered opted_out < <(psql_demo -At -F ' ' -c "
	SELECT count(*), count(*) FILTER (WHERE state IN ('sent', 'delivered', 'undelivered', 'failed')),
		count(*) FILTER (WHERE state = 'dead'),
		count(*) FILTER (WHERE state IN ('queued', 'sending') OR (state = 'ambiguous' AND reconcile_at IS NOT NULL)),
		count(*) FILTER (WHERE state = 'delivered'),
		count(*) FILTER (WHERE state = 'undelivered'),
		(SELECT count(*) FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550400')
	FROM twilio_outbox.messages")
refused=0
if [ $real = no ]; then
	refused=$(curl -sf "$base_url/_callbacks" | python3 -c 'import json,sys; c = json.load(sys.stdin); print(c["posted"] - c["answers"].get("200", 0))')
fi
got="$total $sent $dead $waiting $delivered $undelivered $opted_out $refused"
if [ $real = yes ]; then expect="1 1 0 0 0 0 0 0"; else expect="304 303 1 0 299 4 1 0"; fi
echo "== done; stopping and removing the cluster"
if [ "$got" = "$expect" ]; then
	echo "demo passed: $total messages (fallback steps included), $sent sent, $dead dead-lettered, $waiting waiting;" \
		"$delivered delivered, $undelivered undelivered, $opted_out opted out"
else
	set -- $expect
	echo "demo FAILED: $total messages (fallback steps included), $sent sent, $dead dead-lettered, $waiting waiting;" \
		"$delivered delivered, $undelivered undelivered, $opted_out opted out, $refused callbacks not answered 200" \
		"(expected $1, $2, $3, $4; $5, $6, $7, $8; the server log was $dir/server.log, kept with KEEP=1)"
	exit 1
fi
