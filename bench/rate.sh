#!/usr/bin/env bash
# Rate accuracy: two long-code senders of one account, one at rate 10 and
# one at rate 3 (segments/s, burst left at its default),
# each with enough one-segment messages queued to keep sending past the end
# of the window, against the Python stand-in enforcing the same rates per
# sender (token buckets, burst 10 so that our initial burst is accepted, a
# 429 above).  Over a window in steady state (default from 2 s to 32 s after
# start_worker()), the observed rate of each sender (201s per second, by
# arrival time at the stand-in) and the number of 429s (in the window, and
# over the whole run).  Also the rate over the window's last two thirds, to
# tell a start-up transient from a steady-state error.
#
# BENCH_RATE_TRACE=1 also lists the first 3 s of the 10/s sender's requests.
#
#   bench/rate.sh [window seconds, default 30] [settle seconds, default 2]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

window=${1:-30}
settle=${2:-2}
fast=10
slow=3
bench_workdir
machine_load
cpu_mark
start_standin
start_cluster
make_accounts "http://127.0.0.1:$STANDIN_PORT" 1 2 NULL 100
# senders +15005550101 (rate 10) and +15005550102 (rate 3)
curl -sf -X POST -d "{\"rates\": {\"+15005550101\": $fast, \"+15005550102\": $slow}, \"burst\": 10}" \
	"http://127.0.0.1:$STANDIN_PORT/_config" >/dev/null
span=$((settle + window + 10))
psql_b >/dev/null <<SQL
UPDATE twilio_outbox.senders SET rate = $fast WHERE from_number = '+15005550101';
UPDATE twilio_outbox.senders SET rate = $slow WHERE from_number = '+15005550102';
SELECT count(twilio_enqueue('+1415' || lpad(i::text, 7, '0'), 'Rate probe ' || i, from_number => '+15005550101'))
	FROM generate_series(1, $fast * $span) i;
SELECT count(twilio_enqueue('+1416' || lpad(i::text, 7, '0'), 'Rate probe ' || i, from_number => '+15005550102'))
	FROM generate_series(1, $slow * $span) i;
SQL

echo "rate: senders at $fast/s and $slow/s, window ${settle}-$((settle + window)) s after start"
t0=$(psql_b -c "SELECT extract(epoch FROM clock_timestamp()) FROM (SELECT twilio_outbox.start_worker()) w")
sleep "$(calc "max(0, $t0 + $settle + $window + 1 - $(date +%s.%N))")"
left=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'queued'")
psql_b -c "SELECT twilio_outbox.stop_worker()" >/dev/null
curl -sf "http://127.0.0.1:$STANDIN_PORT/_requests" >"$BENCH_DIR/requests.json"
if [ "$left" -lt $((fast + slow)) ]; then
	echo "the backlog ran out before the window ended ($left left)" >&2
	exit 1
fi
python3 - "$BENCH_DIR/requests.json" "$t0" "$settle" "$window" "$fast" "$slow" >"$BENCH_DIR/rates" <<'PY'
import json, sys
requests = json.load(open(sys.argv[1]))
t0, settle, window, fast, slow = map(float, sys.argv[2:])
lo, hi = t0 + settle, t0 + settle + window
for name, sender, rate in (("fast", "+15005550101", fast), ("slow", "+15005550102", slow)):
    mine = [r for r in requests if r["form"]["From"][0] == sender]
    ok = [r for r in mine if r["action"].get("status") == 201 and lo <= r["t"] < hi]
    limited = [r for r in mine if r["action"].get("status") == 429]
    observed = len(ok) / window
    print(f"rate_{name}_per_s", round(observed, 3))
    print(f"rate_{name}_error_pct", round(100 * (observed - rate) / rate, 2))
    # the last two thirds of the window: is a miss a start-up transient?
    late_lo = lo + window / 3
    late = sum(1 for r in ok if r["t"] >= late_lo) / (hi - late_lo)
    print(f"rate_{name}_late_per_s", round(late, 3))
    print(f"rate_{name}_429_in_window", sum(1 for r in limited if lo <= r["t"] < hi))
    print(f"rate_{name}_429_total", len(limited))
    if limited:
        at = ", ".join(f"{r['t'] - t0:.3f}" for r in limited[:10])
        print(f"note:rate_{name}_429 seconds after start: {at}")
PY
# BENCH_RATE_TRACE=1: every request of the 10/s sender in the first 3 s
if [ "${BENCH_RATE_TRACE:-0}" = 1 ]; then
	python3 - "$BENCH_DIR/requests.json" "$t0" <<'PY'
import json, sys
t0 = float(sys.argv[2])
print("  arrivals of the 10/s sender (s after start_worker(), status):")
for r in json.load(open(sys.argv[1])):
    if r["form"]["From"][0] == "+15005550101" and r["t"] - t0 < 3:
        print(f"    {r['t'] - t0:7.4f}  {r['action'].get('status')}")
PY
fi
while read -r key value; do
	case $key in
	note:*) note "${key#note:}" "$value" ;;
	*) result "$key" "$value" ;;
	esac
done <"$BENCH_DIR/rates"
foreign_cpu
