#!/usr/bin/env bash
# The cost of a campaign's pace on the dispatch path (issue 12, and the
# shared buckets of the issue 14 follow-up): N messages (default 20,000) of
# one campaign of account acct1, spread over S senders (default 4, rate
# 'Infinity', so that only the campaign holds them back), drained by D
# dispatchers (default 2) against nginx on 127.0.0.1.
#
# PACE is the campaign's pace (messages/s; "none": no campaign at all, the
# reference) and BURST its burst.  A pace far above what the dispatchers can
# send (the default 1,000,000, burst 1,000,000) admits every message: the
# cost of the bucket on each claim alone.  A pace below it (e.g. 5000 burst
# 100) also puts messages back to their slots, claim after claim.
#
# Prints the drain rate (start_worker() until nothing is queued or in
# flight), which must not exceed PACE (plus the burst), and the dispatchers'
# CPU time per 1,000 messages, summed over them.  Holds
# /tmp/twilio_outbox_test.lock (it installs).  Never part of make test.
#
#   bench/campaign_pace.sh [messages] [pace|none] [burst] [dispatchers] [senders]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
take_test_lock 9
bench_prepare

n=${1:-20000}
pace=${2:-1000000}
burst=${3:-1000000}
dispatchers=${4:-2}
senders=${5:-4}
bench_workdir
machine_load
start_nginx
start_cluster "twilio_outbox.dispatchers_per_database = $dispatchers" "autovacuum = off"
make_accounts "http://127.0.0.1:$NGINX_PORT" 1 "$senders" "'Infinity'" 100

campaign=""
if [ "$pace" != none ]; then
	psql_b -c "SELECT twilio_outbox.create_campaign('bench', account => 'acct1', pace => $pace, burst => $burst)" >/dev/null
	campaign=", campaign => 'bench'"
fi
echo "campaign pace: $n messages, pace $pace burst $burst, $dispatchers dispatchers, $senders senders"
psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad(i::text, 7, '0'), 'Benchmark message ' || i,
	account => 'acct1', from_number => '+150055501' || lpad((1 + i % $senders)::text, 2, '0') $campaign))
	FROM generate_series(1, $n) i" >/dev/null
psql_b -c "VACUUM ANALYZE twilio_outbox.messages"

t0=$(psql_b -c "SELECT extract(epoch FROM clock_timestamp()) FROM twilio_outbox.start_worker()")
t1=$(wait_drained 600)
cpu=0
for p in $(psql_b -c "SELECT pid FROM twilio_outbox.worker_dispatchers WHERE running"); do
	cpu=$(calc "$cpu + $(cpu_seconds "$p")")
done
check_drained "$n"
result "pace_drain_msgs_per_s" "$(calc "round($n / $elapsed, 1)")"
result "pace_dispatcher_cpu_s_per_1000" "$(calc "round($cpu * 1000 / $n, 4)")"
