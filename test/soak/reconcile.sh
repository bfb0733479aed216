#!/usr/bin/env bash
# Soak for ambiguous sends (issue 11): does any message reach Twilio twice,
# or never, when requests lose their answers and the dispatcher and the
# postmaster are killed at random points?  Never part of make test.
#
# A throwaway cluster with the extension (bench/lib.sh), the Python stand-in
# (test/twilio_standin.py) injecting faults at random into SOAK_FAULT_RATE of
# the creates, an equal mix of: created then 500, created then no answer
# past the request timeout, created then the connection closed; closed
# before the body was read, 429, 503 (none of these three creates it).
# SOAK_MESSAGES messages are enqueued over SOAK_ACCOUNTS accounts x
# SOAK_SENDERS senders, with sender rates that spread the drain over the
# kill schedule, and the stand-in answers every create SOAK_DELAY s late so
# that requests are in flight when a kill comes.  Then, at random intervals
# (0.2 to 2 s), SOAK_KILLS kill points: kill -9 of the dispatcher (found
# in pg_stat_activity by backend_type), and every SOAK_POSTMASTER_EVERY-th
# kill point the postmaster instead, alternately kill -9 and
# pg_ctl -m immediate stop, then started again.  The kills stop early if
# every message is finished; the run then waits, at most SOAK_BUDGET s from
# the start, until no message is queued, sending, or ambiguous with a
# lookup due.
#
# It counts at the stand-in (GET /_created: creates per Idempotency-Key) and
# prints, each with its message id and why:
#   lost          committed, never created at the stand-in, and neither
#                 dead-lettered, canceled nor held for an operator (a
#                 message still queued when the budget ran out is counted
#                 here, with its state)
#   created twice created at the stand-in more than once (same key)
#   for operator  state ambiguous with reconcile_at NULL, with how many times
#                 the stand-in really created it (what the operator has to
#                 find out)
# and also the dead-lettered (with their reason and creates), and how many
# were unfinished (queued, sending, or waiting for a lookup) at the end.
# A summary line, the details in $SOAK_DETAILS (default: printed, first 20
# of each), and a row appended to BENCHMARKS.md under "## Soak" (unless
# SOAK_RECORD=0).  Exit status 0 when nothing is lost or created twice, 1
# otherwise (so retry is expected to fail).
#
# Parameters (environment, defaults in brackets):
#   SOAK_POLICY            twilio_outbox.on_ambiguous: retry | hold | reconcile [reconcile],
#                          passed through as it is
#   SOAK_FAULT_RATE        share of creates that meet a fault [0.1]
#   SOAK_KILLS             kill points [100]
#   SOAK_MESSAGES          messages [2000]
#   SOAK_ACCOUNTS, SOAK_SENDERS   accounts, senders per account [3, 2]
#   SOAK_RECIPIENTS        distinct recipients (several messages each, so
#                          that a lookup by To sees more than one) [300]
#   SOAK_POSTMASTER_EVERY  every n-th kill point kills the postmaster [5]
#   SOAK_BUDGET            seconds for the whole run [600]
#   SOAK_DELAY             seconds the stand-in takes to answer a create [0.2]
#   SOAK_SEED              seed of the faults and the kill schedule [random]
#   SOAK_SETTINGS          more postgresql.conf lines (e.g. reconcile's settings)
#   SOAK_LOCKED=1          the caller already holds /tmp/twilio_outbox_test.lock
#
#   make soak SOAK_POLICY=reconcile SOAK_FAULT_RATE=0.3
#   SOAK_POLICY=retry bash test/soak/reconcile.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/bench/lib.sh"

policy=${SOAK_POLICY:-reconcile}
fault_rate=${SOAK_FAULT_RATE:-0.1}
kills=${SOAK_KILLS:-100}
messages=${SOAK_MESSAGES:-2000}
accounts=${SOAK_ACCOUNTS:-3}
senders=${SOAK_SENDERS:-2}
recipients=${SOAK_RECIPIENTS:-300}
pm_every=${SOAK_POSTMASTER_EVERY:-5}
budget=${SOAK_BUDGET:-600}
delay=${SOAK_DELAY:-0.2}
seed=${SOAK_SEED:-$(( (RANDOM << 15) | RANDOM ))}
record=${SOAK_RECORD:-1}
# The client gives up on a request after request_timeout; a create_hang
# fault holds its connection longer than that.
request_timeout=2
hang=5

# One heavy run at a time on the machine: the same lock as the test suites.
[ -n "${SOAK_LOCKED:-}" ] && export TWILIO_OUTBOX_TEST_LOCK_HELD=1
take_test_lock 9
need_packages
build_and_install "$top" >/dev/null
bench_workdir
RANDOM=$seed
t_start=$(date +%s)
echo "soak: policy $policy, fault rate $fault_rate, $kills kill points (every ${pm_every}th the postmaster)," \
	"$messages messages over $accounts accounts x $senders senders, budget ${budget}s, seed $seed"

# --- the stand-in, with random faults --------------------------------------
python3 "$top/test/twilio_standin.py" --port 0 --port-file "$BENCH_DIR/standin.port" --quiet \
	--fault-rate "$fault_rate" --fault-hang "$hang" --fault-seed "$seed" &
BENCH_PIDS+=($!)
for _ in $(seq 100); do
	[ -s "$BENCH_DIR/standin.port" ] && break
	sleep 0.1
done
STANDIN_PORT=$(cat "$BENCH_DIR/standin.port")
standin="http://127.0.0.1:$STANDIN_PORT"
curl -sf -X POST "$standin/_script" -d "{\"steady\": {\"status\": 201, \"delay\": $delay}}" >/dev/null

# --- the cluster ---------------------------------------------------------------
settings=(
	"twilio_outbox.databases = 'postgres'"
	"twilio_outbox.on_ambiguous = '$policy'"
	"twilio_outbox.request_timeout = '${request_timeout}s'"
	"twilio_outbox.connect_timeout = '1s'"
	"twilio_outbox.lease = '10s'"
	"twilio_outbox.backoff_base = '200ms'"
	"twilio_outbox.backoff_max = '3s'"
	"twilio_outbox.poll_interval = '500ms'"
	"restart_after_crash = on"
)
if [ -n "${SOAK_SETTINGS:-}" ]; then
	mapfile -t extra <<<"$SOAK_SETTINGS"
	settings+=("${extra[@]}")
fi
start_cluster "${settings[@]}"
# A value the build does not know is only a warning in the server log, and
# the default would run instead: make sure the policy asked for is the one.
actual=$(psql_b -c "SHOW twilio_outbox.on_ambiguous")
if [ "$actual" != "$policy" ]; then
	echo "soak: twilio_outbox.on_ambiguous is '$actual', not '$policy': does this build have it?" >&2
	grep -i "on_ambiguous" "$BENCH_DIR/server.log" >&2 || true
	exit 2
fi
pgctl() { as_pg pg_ctl -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" "$@"; }
# A statement that may meet a server being killed or restarted: retried
# until it answers, at most 60 s.
psql_retry()
{
	local i out
	for i in $(seq 600); do
		if out=$(psql_b -c "$1" 2>/dev/null); then
			printf '%s\n' "$out"
			return 0
		fi
		sleep 0.1
	done
	echo "soak: no answer from the server in 60 s to: $1" >&2
	return 1
}

# Sender rates that make the drain outlast the kill schedule (a mean of
# 1.1 s per kill point, plus the restarts), so that every kill point finds
# messages to send even with hold, where the held ones need no resend; at
# least 1 per second.
rate=$(calc "max(1, round($messages / ($kills * 1.1) / ($accounts * $senders) * 0.6, 2))")
make_accounts "$standin" "$accounts" "$senders" "$rate" 20 >/dev/null
# An outbox_id in every create's StatusCallback (nobody listens there: the
# stand-in posts no callbacks unless told).
psql_b -c "UPDATE twilio_outbox.accounts SET status_callback_url = 'http://127.0.0.1:1/twilio/status'"
psql_b -c "SELECT count(twilio_enqueue('+1415555' || lpad((i % $recipients)::text, 4, '0'), 'soak message ' || i,
	account => 'acct' || (1 + i % $accounts),
	from_number => '+1500555' || lpad((1 + i % $accounts)::text, 2, '0') || lpad((1 + (i / $accounts) % $senders)::text, 2, '0')))
	FROM generate_series(1, $messages) i" >/dev/null
echo "soak: $messages messages enqueued; senders at $rate/s each; stand-in on $standin"

# Finished: nothing queued, in flight, or ambiguous with a lookup due.
unfinished_sql="SELECT count(*) FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')
	OR (state = 'ambiguous' AND reconcile_at IS NOT NULL)"

# --- the killer ---------------------------------------------------------------
dispatcher_kills=0 pm_kills=0 point=0
psql_retry "SELECT twilio_outbox.start_worker()" >/dev/null
while [ $point -lt "$kills" ]; do
	[ $(( $(date +%s) - t_start )) -ge "$budget" ] && break
	sleep "$(calc "0.2 + $((RANDOM % 1800)) / 1000")"
	if [ "$(psql_retry "$unfinished_sql")" = 0 ]; then
		echo "soak: every message finished after $point kill points"
		break
	fi
	point=$((point + 1))
	if [ $((point % pm_every)) -eq 0 ]; then
		pm_kills=$((pm_kills + 1))
		if [ $((pm_kills % 2)) -eq 1 ]; then
			kill -9 "$(head -1 "$BENCH_DIR/data/postmaster.pid")"
		else
			pgctl -m immediate stop >/dev/null
		fi
		# After a kill -9 its children notice and exit, and a new
		# postmaster refuses to start while they still hold the shared
		# memory: try again until it starts.
		for _ in $(seq 100); do
			pgctl -w start >/dev/null 2>&1 && break
			sleep 0.2
		done
	else
		pid=$(psql_retry "SELECT pid FROM pg_stat_activity WHERE backend_type = 'twilio_outbox dispatcher' LIMIT 1")
		if [ -z "$pid" ]; then
			point=$((point - 1))
		else
			dispatcher_kills=$((dispatcher_kills + 1))
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	# twilio_outbox.databases restarts it too, but later: no need to wait.
	psql_retry "SELECT twilio_outbox.start_worker()" >/dev/null
	if [ $((point % 10)) -eq 0 ] && [ $point -gt 0 ]; then
		echo "  $point kill points ($dispatcher_kills dispatcher, $pm_kills postmaster), $(psql_retry "$unfinished_sql") messages unfinished"
	fi
done

echo "soak: kills done ($dispatcher_kills dispatcher, $pm_kills postmaster); waiting for the rest"
while [ "$(psql_retry "$unfinished_sql")" != 0 ] && [ $(( $(date +%s) - t_start )) -lt "$budget" ]; do
	sleep 1
done
# Let what is in flight finish and be recorded.
psql_retry "SELECT twilio_outbox.stop_worker()" >/dev/null
sleep 1
elapsed=$(( $(date +%s) - t_start ))

# --- count at the stand-in ---------------------------------------------------
curl -sf "$standin/_created" >"$BENCH_DIR/created.json"
curl -sf "$standin/_faults" >"$BENCH_DIR/faults.json"
psql_b -F $'\t' -c "SELECT m.id, m.idempotency_key, m.state, m.reconcile_at IS NULL,
		m.attempts, m.ambiguous_attempts, coalesce(d.reason, ''),
		coalesce(pg_catalog.array_to_string(m.reconcile_candidates, ' '), ''),
		coalesce((SELECT pg_catalog.string_agg(a.outcome::text || '/' || coalesce(a.http_status::text,
				CASE WHEN a.transport_error IS NULL THEN '-' ELSE 'net' END), ' ' ORDER BY a.attempt)
			FROM twilio_outbox.attempt_rows a WHERE a.message_id = m.id), '')
	FROM twilio_outbox.messages m LEFT JOIN twilio_outbox.dead_letters d ON d.message_id = m.id
	ORDER BY m.id" >"$BENCH_DIR/messages.tsv"

summary=$(python3 - "$BENCH_DIR/created.json" "$BENCH_DIR/faults.json" "$BENCH_DIR/messages.tsv" \
	"${SOAK_DETAILS:-}" <<'PY'
import json, sys
created = json.load(open(sys.argv[1]))["by_key"]
faults = json.load(open(sys.argv[2]))["injected"]
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[3]) if line.strip()]
lost, twice, operator, dead = [], [], [], []
unfinished = 0
for mid, key, state, no_lookup, attempts, amb, reason, cands, history in rows:
    n = created.get(key, 0)
    if state in ("queued", "sending") or (state == "ambiguous" and no_lookup == "f"):
        unfinished += 1
    why = f"state {state}, {attempts} attempts ({amb} ambiguous), created {n}x; attempts: {history or '-'}"
    if n >= 2:
        twice.append(f"{mid}: {why}")
    if state == "ambiguous" and no_lookup == "t":
        operator.append(f"{mid}: {why}; candidates: {cands or '-'}")
    elif state == "dead":
        dead.append(f"{mid}: {reason}, {why}")
    elif n == 0 and state != "canceled":
        lost.append(f"{mid}: {why}")
ours = {r[1] for r in rows}
strays = sum(v for k, v in created.items() if k not in ours)
details = []
for title, items in (("lost", lost), ("created twice", twice), ("left for an operator", operator),
                     ("dead-lettered", dead)):
    details.append(f"{title}: {len(items)}")
    details += ["  " + item for item in items]
text = "\n".join(details) + "\n"
if len(sys.argv) > 4 and sys.argv[4]:
    open(sys.argv[4], "w").write(text)
else:
    shown = []
    for block in text.split("\n"):
        shown.append(block)
    count = 0
    for line in shown:
        if not line.startswith("  "):
            count = 0
            print(line, file=sys.stderr)
        elif count < 20:
            count += 1
            print(line, file=sys.stderr)
print(len(rows), len(lost), len(twice), len(operator), len(dead), unfinished, sum(created.values()), strays,
      " ".join(f"{k}={v}" for k, v in sorted(faults.items())))
PY
)
read -r total n_lost n_twice n_operator n_dead n_unfinished n_created n_strays fault_counts <<<"$summary"
line="soak: policy $policy, faults $fault_rate, kill points $((dispatcher_kills + pm_kills)) ($dispatcher_kills dispatcher, $pm_kills postmaster), messages $total: lost $n_lost, created twice $n_twice, left for an operator $n_operator, dead-lettered $n_dead, unfinished $n_unfinished; $n_created creates at the stand-in; ${elapsed}s"
echo "$line"
echo "  faults injected: $fault_counts"
[ "$n_strays" = 0 ] || echo "  creates with a key no message has: $n_strays"

if [ "$record" = 1 ]; then
	bench_file="$top/BENCHMARKS.md"
	if ! grep -q '^## Soak' "$bench_file"; then
		cat >>"$bench_file" <<'MD'

## Soak

Ambiguous sends under faults and kills (issue 11): `make soak` (test/soak/reconcile.sh,
see its header and the README's "Soak" paragraph). Counted at the stand-in: lost
(committed, never created, not dead-lettered nor held for an operator), created twice
(same idempotency key created more than once), left for an operator (ambiguous with
no lookup due); dead-lettered for reference. One run per row.

| date (UTC) | policy | fault rate | kill points (dispatcher + postmaster) | messages | lost | created twice | left for operator | dead-lettered | seconds | seed |
|---|---|---|---|---|---|---|---|---|---|---|
MD
	fi
	# The row goes at the end of the Soak table, wherever later sections are.
	python3 - "$bench_file" "| $(date -u '+%Y-%m-%d %H:%M') | $policy | $fault_rate | $((dispatcher_kills + pm_kills)) ($dispatcher_kills + $pm_kills) | $total | $n_lost | $n_twice | $n_operator | $n_dead | $elapsed | $seed |" <<'PY'
import sys
path, row = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
at = lines.index("## Soak")
end = next(i for i in range(at, len(lines)) if lines[i].startswith("|---"))
while end + 1 < len(lines) and lines[end + 1].startswith("|"):
    end += 1
lines.insert(end + 1, row)
open(path, "w").write("\n".join(lines))
PY
fi
[ "$n_lost" = 0 ] && [ "$n_twice" = 0 ]
