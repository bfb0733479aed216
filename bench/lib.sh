# Shared by the benchmark scripts in bench/: sourced, not run.
#
# Each benchmark script is one run of one benchmark: it builds what it needs
# (a throwaway cluster on a Unix socket in a temporary directory, nginx or
# the Python Twilio stand-in on 127.0.0.1), measures, prints its figures,
# and removes everything it started on exit.  Figures are also appended as
# "key value" lines to $BENCH_RESULTS when it is set (bench/run.sh reads
# them back to take medians).

BENCH_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$BENCH_TOP/test/setup.sh"

# Packages and the build, once per make bench (run.sh exports BENCH_BUILT).
bench_prepare()
{
	if [ -z "${BENCH_BUILT:-}" ]; then
		need_packages nginx-light wrk
		build_and_install "$BENCH_TOP" >/dev/null
		export BENCH_BUILT=1
	fi
}

# A figure: printed, and recorded for run.sh.
result()
{
	printf '  %-28s %s\n' "$1" "$2"
	if [ -n "${BENCH_DIR:-}" ]; then
		echo "$1 $2" >>"$BENCH_DIR/results"
	fi
	if [ -n "${BENCH_RESULTS:-}" ]; then
		echo "$1 $2" >>"$BENCH_RESULTS"
	fi
}

# A note for BENCHMARKS.md (run.sh keeps the last one per key).
note()
{
	echo "  note: $1: $2"
	if [ -n "${BENCH_RESULTS:-}" ]; then
		echo "note:$1 $2" >>"$BENCH_RESULTS"
	fi
}

calc() { python3 -c "print($1)"; }

# The working directory of this run, removed on exit with what runs in it.
BENCH_PIDS=()
bench_workdir()
{
	BENCH_DIR=$(mktemp -d /tmp/twilio_outbox_bench.XXXXXX)
	chmod 755 "$BENCH_DIR"
	[ "$(id -u)" = 0 ] && chown postgres "$BENCH_DIR"
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup()
{
	local pid
	if [ -f "$BENCH_DIR/data/postmaster.pid" ]; then
		as_pg pg_ctl -D "$BENCH_DIR/data" -m immediate stop >/dev/null 2>&1 || true
	fi
	if [ -f "$BENCH_DIR/nginx.pid" ]; then
		kill "$(cat "$BENCH_DIR/nginx.pid")" 2>/dev/null || true
	fi
	for pid in "${BENCH_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$BENCH_DIR"
}

# A throwaway cluster with the dispatcher preloaded; extra settings (lines of
# postgresql.conf) as arguments.  No TCP: a Unix socket in $BENCH_DIR.
start_cluster()
{
	as_pg initdb -D "$BENCH_DIR/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
	cat >>"$BENCH_DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_cron,twilio_outbox'
cron.database_name = 'postgres'
listen_addresses = ''
unix_socket_directories = '$BENCH_DIR'
port = 5432
shared_buffers = '1GB'
max_wal_size = '4GB'
max_worker_processes = 16
synchronous_commit = on
twilio_outbox.allow_insecure_http = on
CONF
	if [ $# -gt 0 ]; then
		printf '%s\n' "$@" >>"$BENCH_DIR/data/postgresql.conf"
	fi
	as_pg pg_ctl -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w start >/dev/null
}

psql_b() { as_pg psql -h "$BENCH_DIR" -U postgres -d "${BENCH_DB:-postgres}" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

# nginx on 127.0.0.1 answering every request with a Twilio-shaped 201; sets
# NGINX_PORT.
start_nginx()
{
	NGINX_PORT=$(free_port)
	cat >"$BENCH_DIR/nginx.conf" <<NGINX
worker_processes 1;
pid $BENCH_DIR/nginx.pid;
error_log $BENCH_DIR/nginx.err warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	client_body_buffer_size 16k;
	server {
		listen 127.0.0.1:$NGINX_PORT backlog=4096;
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
	nginx -c "$BENCH_DIR/nginx.conf"
}

# The Python Twilio stand-in on 127.0.0.1; sets STANDIN_PORT.
start_standin()
{
	python3 "$BENCH_TOP/test/twilio_standin.py" --port 0 --port-file "$BENCH_DIR/standin.port" --quiet &
	BENCH_PIDS+=($!)
	local i
	for i in $(seq 100); do
		[ -s "$BENCH_DIR/standin.port" ] && break
		sleep 0.1
	done
	STANDIN_PORT=$(cat "$BENCH_DIR/standin.port")
}

# Accounts acct1..acctN (all pointing at base_url, max_concurrency as
# given), each with S long-code senders +1500555AAss at the given rate.
make_accounts()
{
	local base_url=$1 accounts=$2 senders=$3 rate=$4 concurrency=$5
	psql_b <<SQL
CREATE EXTENSION IF NOT EXISTS twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, max_concurrency, is_default)
	SELECT 'acct' || a, 'AC' || lpad(a::text, 32, '0'), '$base_url', $concurrency, a = 1
	FROM generate_series(1, $accounts) a;
INSERT INTO twilio_outbox.account_credentials (account, secret)
	SELECT name, 'bench' FROM twilio_outbox.accounts;
INSERT INTO twilio_outbox.senders (account, from_number, kind, rate, is_default)
	SELECT 'acct' || a, '+1500555' || lpad(a::text, 2, '0') || lpad(s::text, 2, '0'),
		'long_code', $rate, s = 1
	FROM generate_series(1, $accounts) a, generate_series(1, $senders) s;
SQL
}

# Wait (in the server, polling every 10 ms) until no message is queued or
# in flight, at most $1 seconds; print the server's clock (epoch seconds)
# when it saw none.  Both partial indexes make each look cheap.  The loop
# commits each time round: a DO block that did not would keep its first
# snapshot, and so an old xmin, for the whole wait, and the dispatcher could
# then neither prune the rows it finished nor skip their index entries.
wait_drained()
{
	psql_b <<SQL
DO \$\$
DECLARE deadline timestamptz := clock_timestamp() + interval '$1 seconds';
BEGIN
	WHILE EXISTS (SELECT 1 FROM twilio_outbox.messages WHERE state = 'queued')
		OR EXISTS (SELECT 1 FROM twilio_outbox.messages WHERE state = 'sending') LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'not drained after $1 s';
		END IF;
		COMMIT;
		PERFORM pg_sleep(0.01);
		COMMIT;
	END LOOP;
END
\$\$;
SELECT extract(epoch FROM clock_timestamp());
SQL
}

# CPU seconds (user + system) a process has used.
# After a drain of $1 messages that began at $t0 and ended at $t1 (the
# caller's): print what was sent and attempted in how long, and fail unless
# every message was sent.  Sets sent, attempts and elapsed.
check_drained()
{
	local n=$1
	read -r sent attempts < <(psql_b -F' ' -c "SELECT (SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'),
		(SELECT count(*) FROM twilio_outbox.attempt_rows)")
	elapsed=$(calc "$t1 - $t0")
	echo "  sent $sent of $n ($attempts attempts) in $(calc "round($elapsed, 3)") s"
	if [ "$sent" != "$n" ]; then
		echo "not every message was sent" >&2
		exit 1
	fi
}

cpu_seconds()
{
	awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

# kB of private pages outside the shared memory segment: the process's own
# memory (shared buffers it alone has touched count as private in smaps, and
# are not its own memory).
local_kb()
{
	awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6} /^Private_(Clean|Dirty):/ {if (name !~ /zero|SYSV|shm/) s += $2} END {print s + 0}' "/proc/$1/smaps"
}

# How fast one CPU is now: the best of 5 timings of a fixed single-threaded
# loop, in ms (a virtual machine's neighbours can slow it with no load or
# steal time showing inside it).
cpu_probe()
{
	python3 -c '
import time
best = None
for _ in range(5):
    t = time.perf_counter()
    x = 0
    for i in range(1000000):
        x += i * i % 7
    d = time.perf_counter() - t
    best = d if best is None else min(best, d)
print(round(best * 1000, 1))'
}

# How busy the machine is before a run starts: the 1-minute load average,
# the share of CPU time busy over one second (other people's tests), and
# the CPU probe.
machine_load()
{
	local a b
	a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
	sleep 1
	b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
	note load "loadavg $(cut -d' ' -f1-3 /proc/loadavg), CPU busy before start $(python3 -c "a = '$a'.split(); b = '$b'.split(); print(round(100 * (int(b[0]) - int(a[0])) / max(1, int(b[1]) - int(a[1]))))") %, CPU probe $(cpu_probe) ms"
}

# CPU used by other people's processes while a run lasts, which the load
# average cannot tell from ours: the machine's user + system time (from
# /proc/stat) less that of this script's process tree, the cluster's and
# nginx's (each with what they have reaped).  Also the steal time the
# hypervisor reports (other machines on the same host).  cpu_mark at the
# start, foreign_cpu at the end.
cpu_sample()
{
	python3 - "$$" "$BENCH_DIR" <<'PY'
import os, sys
root_pids = {int(sys.argv[1])}
for f, first in ((sys.argv[2] + "/data/postmaster.pid", True), (sys.argv[2] + "/nginx.pid", True)):
    try:
        root_pids.add(int(open(f).readline()))
    except (OSError, ValueError):
        pass
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the name: state ppid ... utime(14) stime cutime cstime
        procs[int(p)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
def ours(pid):
    while pid > 1:
        if pid in root_pids:
            return True
        pid = procs.get(pid, (0, 0))[0]
    return False
mine = sum(t for pid, (_, t) in procs.items() if ours(pid))
cpu = open("/proc/stat").readline().split()[1:]
busy = int(cpu[0]) + int(cpu[1]) + int(cpu[2])
total = sum(int(x) for x in cpu[:8])
print(busy, mine, total, int(cpu[7]))
PY
}

cpu_mark() { cpu_sample >"$BENCH_DIR/cpu.start"; }

foreign_cpu()
{
	local b0 m0 t0 s0 b1 m1 t1 s1
	read -r b0 m0 t0 s0 <"$BENCH_DIR/cpu.start"
	read -r b1 m1 t1 s1 < <(cpu_sample)
	note foreign_cpu "other processes used $(calc "round(100 * max(0, ($b1 - $b0) - ($m1 - $m0)) / max(1, $t1 - $t0))") % of the machine's CPU during the run ($(calc "round(max(0, ($b1 - $b0) - ($m1 - $m0)) / $(getconf CLK_TCK), 1)") CPU-s over $(calc "round(($t1 - $t0) / $(getconf CLK_TCK) / $(nproc), 1)") s), steal $(calc "round(100 * ($s1 - $s0) / max(1, $t1 - $t0), 1)") %"
}
