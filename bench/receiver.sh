#!/usr/bin/env bash
# The thin receiver under load: wrk posting signed status callbacks over
# $conns keep-alive connections to twilio_outbox_receiver (pool of $pool
# database connections), which hands each to receive_status() on a
# throwaway cluster.  Prints requests per second and the latency at the
# client (p50, p95, p99), then checks that every request was answered 200
# and nothing was applied twice.  The callbacks ($messages messages' sent
# and delivered, signed beforehand) are walked in a different order by each
# wrk thread, so the load mixes first arrivals, out-of-order ones and
# duplicates.  Not part of make bench's default list or of make test.
#
#   bench/receiver.sh [seconds, default 10] [connections, default 20] [pool, default 4] [messages, default 20000]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

secs=${1:-10}
conns=${2:-20}
pool=${3:-4}
messages=${4:-20000}
bench_workdir
start_cluster
port=$(free_port)
public=http://127.0.0.1:$port/twilio
psql_b <<SQL
CREATE EXTENSION twilio_outbox;
CREATE ROLE twilio_receiver LOGIN IN ROLE twilio_outbox_webhook;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
	VALUES ('main', 'AC' || repeat('0', 32), 'http://127.0.0.1:9', true);
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'bench-auth-token');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
SELECT count(twilio_enqueue('+1415' || lpad(g::text, 7, '0'), 'bench')) FROM generate_series(1, $messages) g;
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1, twilio_status = 'queued',
	twilio_sid = 'SM' || lpad(to_hex(id), 32, '0'), sent_at = now(), finished_at = now();
VACUUM ANALYZE;
SQL
# path, body, signature: a tab-separated line per callback, for wrk.
psql_b -F $'\t' >"$BENCH_DIR/callbacks.tsv" <<SQL
SELECT '/twilio/status?outbox_id=' || m.id, b,
	twilio_outbox.webhook_signature('bench-auth-token', '$public/status?outbox_id=' || m.id, b)
FROM twilio_outbox.messages m, unnest(ARRAY['sent', 'delivered']) s,
	LATERAL (SELECT 'AccountSid=AC' || repeat('0', 32) || '&ApiVersion=2010-04-01&From=%2B15005550006'
		|| '&MessageSid=' || m.twilio_sid || '&MessageStatus=' || s || '&SmsSid=' || m.twilio_sid
		|| '&SmsStatus=' || s || '&To=' || replace(m.to_number, '+', '%2B') AS b) x
ORDER BY random();
SQL
cat >"$BENCH_DIR/receiver.lua" <<'LUA'
-- Each thread loads the signed callbacks and walks them from its own offset.
local n = 0
function setup(thread)
	thread:set("id", n)
	n = n + 1
end
function init(args)
	reqs = {}
	for line in io.lines(args[1]) do
		local path, body, sig = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)$")
		reqs[#reqs + 1] = wrk.format("POST", path, {
			["Content-Type"] = "application/x-www-form-urlencoded",
			["X-Twilio-Signature"] = sig }, body)
	end
	i = (id * 7919) % #reqs
end
function request()
	i = i % #reqs + 1
	return reqs[i]
end
function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format("requests %d\nnot_200 %d\nsocket_errors %d\nseconds %.3f\np50_ms %.3f\np95_ms %.3f\np99_ms %.3f\nmax_ms %.3f\n",
		summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration / 1e6,
		latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
		latency.max / 1000))
end
LUA
chmod 644 "$BENCH_DIR"/callbacks.tsv "$BENCH_DIR"/receiver.lua

dir=$BENCH_DIR
start_receiver "$port" "$public" "host=$BENCH_DIR port=5432 dbname=postgres user=twilio_receiver" --pool "$pool"
BENCH_PIDS+=("$receiver_pid")

echo "== wrk: $conns connections, $secs s, receiver pool $pool, $((messages * 2)) distinct callbacks"
threads=$((conns < 2 ? conns : 2))
out=$(wrk -t "$threads" -c "$conns" -d "${secs}s" -s "$BENCH_DIR/receiver.lua" "http://127.0.0.1:$port" \
	-- "$BENCH_DIR/callbacks.tsv" 2>&1)
val() { echo "$out" | awk -v k="$1" '$1 == k {print $2}'; }
requests=$(val requests)
result receiver_requests_per_s "$(calc "round($requests / $(val seconds))")"
result receiver_p50_ms "$(val p50_ms)"
result receiver_p95_ms "$(val p95_ms)"
result receiver_p99_ms "$(val p99_ms)"
result receiver_max_ms "$(val max_ms)"
result receiver_not_200 "$(val not_200)"
result receiver_socket_errors "$(val socket_errors)"
kill "$receiver_pid"
wait "$receiver_pid" 2>/dev/null || true
psql_b <<'SQL'
SELECT 'status events ' || count(*) || ' (applied ' || count(*) FILTER (WHERE verdict = 'applied')
	|| ', stale ' || count(*) FILTER (WHERE verdict = 'stale') || '), distinct pairs '
	|| count(DISTINCT (message_sid, message_status)) FROM twilio_outbox.status_events;
SELECT 'delivered messages ' || (SELECT count(*) FROM twilio_outbox.messages WHERE state = 'delivered')
	|| ', delivered callbacks applied ' || count(*) FROM twilio_outbox.status_events
	WHERE message_status = 'delivered' AND verdict = 'applied';
SQL
tail -n 2 "$BENCH_DIR/receiver.log"
