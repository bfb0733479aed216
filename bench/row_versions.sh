#!/usr/bin/env bash
# Row versions per message (issue 14): N messages (default 5,000) over A
# accounts (default 2) x S senders each (default 2, rate 'Infinity'),
# enqueued, then drained by one dispatcher against nginx on 127.0.0.1 (as
# bench/drain.sh), autovacuum off so nothing prunes or removes meanwhile.
# Counted over the drain only (from after the enqueue to the dispatcher's
# exit):
#   - heap tuples written per message: pg_stat_user_tables n_tup_ins +
#     n_tup_upd over the extension's tables (the dispatcher's statistics
#     are flushed when it exits), with the updates that were HOT;
#   - index entries written per message: the B-tree leaf insertions in the
#     WAL (pg_waldump: INSERT_LEAF, INSERT_POST and each level-0 split, which
#     carries its new item) per index of the extension, and the BRIN
#     records likewise (BRIN adds no entry per tuple: it only widens or
#     summarizes a range);
#   - WAL bytes per message, and the dispatcher's CPU-s per 1,000 messages.
# Per-index counts are printed as notes.  Run as root; never part of make
# test.
#
#   bench/row_versions.sh [messages] [accounts] [senders per account]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

n=${1:-5000}
accounts=${2:-2}
senders=${3:-2}
bench_workdir
machine_load
cpu_mark
start_nginx
# no checkpoint may recycle the WAL read below
start_cluster "autovacuum = off" "checkpoint_timeout = '1h'" "wal_keep_size = '4GB'"
make_accounts "http://127.0.0.1:$NGINX_PORT" "$accounts" "$senders" "'Infinity'" 100

echo "row versions: enqueueing $n messages over $accounts accounts x $senders senders"
psql_b -c "SELECT count(twilio_enqueue('+1415' || lpad((i % 10000000)::text, 7, '0'), 'Benchmark message ' || i,
	account => 'acct' || (1 + i % $accounts),
	from_number => '+1500555' || lpad((1 + i % $accounts)::text, 2, '0') || lpad((1 + (i / $accounts) % $senders)::text, 2, '0')))
	FROM generate_series(1, $n) i" >/dev/null
psql_b -c "VACUUM ANALYZE twilio_outbox.messages" -c "VACUUM ANALYZE twilio_outbox.attempts" -c "CHECKPOINT"

# the extension's tables' counters, as "relname ins upd hot" lines
counters()
{
	psql_b -F' ' -c "SELECT pg_stat_clear_snapshot()" -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd
		FROM pg_stat_user_tables WHERE schemaname = 'twilio_outbox' ORDER BY relname" | grep -v '^$'
}
counters >"$BENCH_DIR/before"
lsn0=$(psql_b -c "SELECT pg_current_wal_lsn()")

pid=$(psql_b -c "SELECT twilio_outbox.start_worker()")
wait_drained 600 >/dev/null
cpu=$(cpu_seconds "$pid")
psql_b -c "SELECT twilio_outbox.stop_worker()" >/dev/null
# its statistics are flushed as it exits
for _ in $(seq 100); do
	[ -d "/proc/$pid" ] || break
	sleep 0.1
done
sent=$(psql_b -c "SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent'")
if [ "$sent" != "$n" ]; then
	echo "sent $sent of $n" >&2
	exit 1
fi
lsn1=$(psql_b -c "SELECT pg_current_wal_lsn()")
counters >"$BENCH_DIR/after"

read -r heap upd hot ins_attempts upd_messages < <(python3 - "$BENCH_DIR/before" "$BENCH_DIR/after" <<'PY'
import sys
def load(f):
    return {l.split()[0]: [int(x) for x in l.split()[1:]] for l in open(f) if l.strip()}
b, a = load(sys.argv[1]), load(sys.argv[2])
d = {k: [x - y for x, y in zip(a[k], b.get(k, [0, 0, 0]))] for k in a}
heap = sum(v[0] + v[1] for v in d.values())
upd = sum(v[1] for v in d.values())
hot = sum(v[2] for v in d.values())
print(heap, upd, hot, d.get("attempts", [0])[0], d.get("messages", [0, 0])[1])
PY
)
result heap_tuples_per_message "$(calc "round($heap / $n, 3)")"
result updates_per_message "$(calc "round($upd / $n, 3)")"
result hot_updates_per_message "$(calc "round($hot / $n, 3)")"
result message_updates_per_message "$(calc "round($upd_messages / $n, 3)")"
result attempt_rows_per_message "$(calc "round($ins_attempts / $n, 3)")"

# index entries: B-tree leaf insertions and BRIN records in the WAL, per index
psql_b -F' ' -c "SELECT c.relfilenode, c.relname, am.amname FROM pg_class c
	JOIN pg_am am ON am.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname = 'twilio_outbox' AND c.relkind = 'i'" >"$BENCH_DIR/indexes"
as_pg /usr/lib/postgresql/15/bin/pg_waldump -p "$BENCH_DIR/data/pg_wal" -s "$lsn0" -e "$lsn1" \
	-r Btree -r Brin 2>/dev/null >"$BENCH_DIR/wal.txt" || true
read -r btree brin per_index < <(python3 - "$BENCH_DIR/indexes" "$BENCH_DIR/wal.txt" <<'PY'
import re, sys
names = {}
for l in open(sys.argv[1]):
    f = l.split()
    if len(f) == 3:
        names[f[0]] = (f[1], f[2])
counts = {}
for l in open(sys.argv[2]):
    m = re.search(r"rmgr: (Btree|Brin) .*desc: (\S+)(.*?)blkref #0: rel \d+/\d+/(\d+)", l)
    if not m or m.group(4) not in names:
        continue
    rmgr, op, rest, node = m.groups()
    if rmgr == "Btree":
        leaf = op in ("INSERT_LEAF", "INSERT_POST") or (
            op in ("SPLIT_L", "SPLIT_R") and re.search(r"level 0\b", rest))
        if not leaf:
            continue
    counts[node] = counts.get(node, 0) + 1
btree = sum(c for k, c in counts.items() if names[k][1] == "btree")
brin = sum(c for k, c in counts.items() if names[k][1] == "brin")
per = ",".join(f"{names[k][0]}={c}" for k, c in sorted(counts.items(), key=lambda kv: -kv[1]))
print(btree, brin, per or "-")
PY
)
result index_entries_per_message "$(calc "round($btree / $n, 3)")"
result brin_records_per_message "$(calc "round($brin / $n, 3)")"
note index_entries "$per_index"
result wal_bytes_per_message "$(calc "round($(psql_b -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')") / $n, 1)")"
result row_versions_dispatcher_cpu_s_per_1000 "$(calc "round($cpu * 1000 / $n, 4)")"
foreign_cpu
