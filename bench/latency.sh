#!/usr/bin/env bash
# Latency at idle: from the commit of a single twilio_enqueue() to the
# request arriving at the responder, over N messages (default 1,000) sent
# one at a time with a pause between them (default 30 ms), so that the
# dispatcher is idle each time and only the commit's wake-up can explain a
# send faster than its poll interval (left at its default, 1 s).
#
# The responder is the Python stand-in (test/twilio_standin.py), which
# records each request's arrival time (time.time()).  The client side is one
# psql session running, per message: BEGIN; SELECT twilio_enqueue(...);
# COMMIT; then the server's clock_timestamp() (the same machine clock), so
# each latency is arrival minus the end of the commit as the client saw it.
# Messages are matched by recipient.  A few warm-up messages (to +1416...)
# come first and are not counted.
#
#   bench/latency.sh [messages] [pause ms]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

n=${1:-1000}
pause_ms=${2:-30}
warmup=20
bench_workdir
machine_load
cpu_mark
start_standin
start_cluster
make_accounts "http://127.0.0.1:$STANDIN_PORT" 1 1 "'Infinity'" 100
psql_b -c "SHOW twilio_outbox.poll_interval" | sed 's/^/  poll_interval: /'
psql_b -c "SELECT twilio_outbox.start_worker()" >/dev/null
sleep 1

pause=$(calc "$pause_ms / 1000")
{
	echo '\set ON_ERROR_STOP 1'
	for i in $(seq "$warmup"); do
		echo "SELECT twilio_enqueue('+1416$(printf %07d "$i")', 'Warm-up $i'); SELECT pg_sleep($pause);"
	done
	for i in $(seq "$n"); do
		printf "BEGIN;\nSELECT twilio_enqueue('+1415%07d', 'Latency probe %d');\nCOMMIT;\n" "$i" "$i"
		printf "SELECT 'P', '+1415%07d', extract(epoch FROM clock_timestamp());\n" "$i"
		echo "SELECT pg_sleep($pause);"
	done
} >"$BENCH_DIR/probes.sql"
chmod 644 "$BENCH_DIR/probes.sql"

echo "latency: $n messages, one at a time, ${pause_ms} ms apart"
psql_b -f "$BENCH_DIR/probes.sql" | grep '^P|' >"$BENCH_DIR/commits"
wait_drained 60 >/dev/null
curl -sf "http://127.0.0.1:$STANDIN_PORT/_requests" >"$BENCH_DIR/requests.json"

python3 - "$BENCH_DIR/commits" "$BENCH_DIR/requests.json" "$n" >"$BENCH_DIR/latency" <<'PY'
import json, sys
commits = {}
for line in open(sys.argv[1]):
    _, to, t = line.strip().split("|")
    commits[to] = float(t)
arrivals = {}
for r in json.load(open(sys.argv[2])):
    to = r["form"]["To"][0]
    if to in commits:
        arrivals.setdefault(to, r["t"])   # the first request for it
lat = sorted((arrivals[to] - commits[to]) * 1000 for to in arrivals)
n = int(sys.argv[3])
if len(lat) != n:
    sys.exit(f"{len(lat)} of {n} messages arrived")
def pct(p):  # nearest rank
    return lat[max(0, min(len(lat) - 1, int(-(-p * len(lat) // 100)) - 1))]
print("latency_p50_ms", round(pct(50), 2))
print("latency_p99_ms", round(pct(99), 2))
print("latency_max_ms", round(lat[-1], 2))
print("latency_mean_ms", round(sum(lat) / len(lat), 2))
print("latency_over_100ms", sum(1 for x in lat if x > 100))
PY
while read -r key value; do
	result "$key" "$value"
done <"$BENCH_DIR/latency"
foreign_cpu
