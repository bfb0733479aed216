#!/usr/bin/env bash
# Drain benchmark: N messages (default 100000) enqueued, then drained by the
# dispatcher against nginx on 127.0.0.1 answering every POST with a
# Twilio-shaped 201.  Prints the drain rate, the dispatcher's CPU time per
# 1,000 messages, and its memory sampled every second: RSS, and "local", the
# pages private to the process outside PostgreSQL's shared memory segment
# (shared buffers it alone has touched count as private in smaps, and are
# not its own memory).  Run as root (or a user that may run initdb); never part of
# make test.
#
#   bench/drain.sh [messages] [accounts]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/setup.sh"
need_packages nginx-light
build_and_install "$top" >/dev/null

n=${1:-100000}
accounts=${2:-4}
dir=$(mktemp -d /tmp/twilio_outbox_bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$dir"
cleanup()
{
	as_pg pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	[ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 10000))
cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx.err warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	server {
		listen 127.0.0.1:$port;
		location / {
			default_type application/json;
			add_header Twilio-Request-Id RQ00000000000000000000000000000000;
			add_header Twilio-Concurrent-Requests 1;
			add_header Twilio-Request-Duration 0.001;
			return 201 '{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued", "num_segments": "1", "error_code": null, "error_message": null}';
		}
	}
}
NGINX
nginx -c "$dir/nginx.conf"

as_pg initdb -D "$dir/data" -A trust -U postgres >/dev/null
cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_cron,twilio_outbox'
listen_addresses = ''
unix_socket_directories = '$dir'
port = 5432
shared_buffers = '1GB'
synchronous_commit = on
twilio_outbox.allow_insecure_http = on
CONF
as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
psql_b() { as_pg psql -h "$dir" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }

psql_b <<SQL
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, max_concurrency, is_default)
	SELECT 'acct' || a, 'AC' || lpad(a::text, 32, '0'), 'http://127.0.0.1:$port', 100, a = 1
	FROM generate_series(1, $accounts) a;
INSERT INTO twilio_outbox.account_credentials (account, secret) SELECT name, 'bench' FROM twilio_outbox.accounts;
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	SELECT name, '+1500555' || lpad(row_number() OVER ()::text, 4, '0'), 'short_code', true FROM twilio_outbox.accounts;
SQL
echo "enqueueing $n messages over $accounts accounts"
start=$(date +%s.%N)
psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad((i % 10000000)::text, 7, '0'), 'Benchmark message ' || i,
	account => 'acct' || (1 + i % $accounts))) FROM generate_series(1, $n) i" >/dev/null
echo "enqueued in $(echo "$(date +%s.%N) - $start" | bc) s"

pid=$(psql_b -c "SELECT twilio_outbox.start_worker()")
t0=$(date +%s.%N)
cpu0=$(awk '{print $14 + $15}' /proc/$pid/stat)
peak_rss=0
peak_local=0
# kB of private pages outside the shared memory segment
local_kb() { awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6} /^Private_(Clean|Dirty):/ {if (name !~ /zero|SYSV|shm/) s += $2} END {print s + 0}' "/proc/$1/smaps"; }
while :; do
	left=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')")
	rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
	local=$(local_kb "$pid")
	[ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
	[ "$local" -gt "$peak_local" ] && peak_local=$local
	printf '  %8s left  rss %6s kB  local %6s kB\n' "$left" "$rss" "$local"
	[ "$left" = 0 ] && break
	sleep 1
done
t1=$(date +%s.%N)
cpu1=$(awk '{print $14 + $15}' /proc/$pid/stat)
ticks=$(getconf CLK_TCK)
elapsed=$(echo "$t1 - $t0" | bc)
sent=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'")
echo "sent: $sent of $n"
echo "drain: $(echo "scale=1; $n / $elapsed" | bc) messages/s over $elapsed s"
echo "dispatcher CPU: $(echo "scale=3; ($cpu1 - $cpu0) / $ticks * 1000 / $n" | bc) s per 1,000 messages"
echo "dispatcher memory: peak RSS $peak_rss kB, peak local $peak_local kB; at the end: local $(local_kb "$pid") kB"
