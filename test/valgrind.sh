#!/usr/bin/env bash
# The dispatcher under valgrind memcheck: a throwaway cluster whose server
# processes all run under valgrind, a Twilio stand-in answering every kind of
# outcome (201, 400, 401, 429, 500, reset, hang, a body stalled half-way,
# malformed), N messages
# drained, then a clean stop.  Reports memcheck errors whose stacks touch
# twilio_outbox or libcurl, and the dispatcher's definite leaks.  Slow (a
# minute or more); not part of make test.
#
#   test/valgrind.sh [messages]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/setup.sh"
need_packages valgrind
build_and_install "$top" >/dev/null
n=${1:-300}

make_scratch vg
start_standin
base=$standin_url
curl -sf -X POST "$base/_script" -d '{"default": [
	{"status": 500}, {"status": 429, "retry_after": "1"}, {"reset": true},
	{"malformed": true}, {"status": 400, "code": 21211}, {"status": 400, "code": 21610},
	{"hang": 3}, {"stall_body": 3}, {"status": 503}, {"status": 201, "delay": 0.2}]}' >/dev/null

init_cluster <<CONF
shared_preload_libraries = 'twilio_outbox'
max_connections = 10
twilio_outbox.allow_insecure_http = on
twilio_outbox.backoff_base = '100ms'
twilio_outbox.request_timeout = '2s'
twilio_outbox.lease = '30s'
CONF
# Every server process under memcheck; the log of each in vg.<pid>.
as_pg bash -c "cd '$dir' && valgrind --quiet --trace-children=yes --track-origins=no \
	--leak-check=full --show-leak-kinds=definite --error-limit=no \
	--log-file='$dir/vg.%p' /usr/lib/postgresql/15/bin/postgres -D '$dir/data' \
	>'$dir/server.log' 2>&1 &"
for _ in $(seq 120); do as_pg pg_isready -q -h "$dir" && break; sleep 1; done
psql_v() { as_pg psql -h "$dir" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }

psql_v <<SQL
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
	VALUES ('main', 'AC' || repeat('0', 32), '$base', true);
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'vg');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
	VALUES ('main', '+15005550006', 'long_code', true, 'Infinity');
SELECT count(twilio_enqueue('+1415555' || lpad(i::text, 4, '0'), 'valgrind ' || i,
	media_urls => CASE WHEN i % 7 = 0 THEN ARRAY['https://example.com/a.png'] END,
	params => CASE WHEN i % 5 = 0 THEN '{"ValidityPeriod": 60, "SmartEncoded": true}'::jsonb END,
	expires_at => CASE WHEN i % 3 = 0 THEN now() + interval '1 hour' END))
FROM generate_series(1, $n) i;
SELECT twilio_outbox.start_worker() > 0;
SQL
pid=$(psql_v -c "SELECT twilio_outbox.worker_pid()")
echo "dispatcher pid $pid; draining $n messages under valgrind"
for _ in $(seq 600); do
	psql_v -c "UPDATE twilio_outbox.accounts SET paused_until = NULL WHERE paused_until = 'infinity'" >/dev/null
	left=$(psql_v -c "SELECT count(*) FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')")
	[ "$left" = 0 ] && break
	sleep 1
done
psql_v -c "SELECT state, count(*) FROM twilio_outbox.messages GROUP BY 1 ORDER BY 1"
psql_v -c "SELECT twilio_outbox.stop_worker()" >/dev/null
as_pg pg_ctl -D "$dir/data" -m fast -w stop >/dev/null

# An error is ours when the innermost frame outside libc and valgrind is in
# twilio_outbox or libcurl; a leak is ours when our code allocated it.
# (PostgreSQL's own known reports, uninitialised WAL padding and the like,
# are left out, as its src/tools/valgrind.supp does.)
python3 - "$dir" <<'PY'
import glob, re, sys
ours = re.compile(r"twilio_outbox|libcurl|\((worker|queue|http|twilio|retry|enqueue|message|shmem|guc)\.c:")
outside = re.compile(r"vgpreload|libc\.so|/libc-|ld-linux|\((pwrite64|write|fileops|iofwrite|memcpy|strdup)\.c:")
found = 0
for path in glob.glob(sys.argv[1] + "/vg.*"):
    blocks = re.split(r"\n==\d+== \n", open(path, errors="replace").read())
    for b in blocks:
        frames = [l for l in b.splitlines() if re.search(r"(at|by) 0x", l)]
        if not frames:
            continue
        if "definitely lost" in b:
            mine = any(ours.search(f) for f in frames)
        else:
            inner = next((f for f in frames if not outside.search(f)), "")
            mine = bool(ours.search(inner))
        if mine:
            found += 1
            print(b.strip() + "\n")
print("%d memcheck report(s) in twilio_outbox or libcurl" % found)
sys.exit(1 if found else 0)
PY
