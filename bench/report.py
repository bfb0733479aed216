#!/usr/bin/env python3
"""Summarise the runs of make bench; append a dated section to BENCHMARKS.md.

    python3 bench/report.py RESULTS_DIR FACTS_FILE [BENCHMARKS.md]

RESULTS_DIR holds, per benchmark and run, NAME.RUN ("key value" lines and
"note:key text" lines, written by bench/lib.sh) and NAME.RUN.status (the
script's exit status).  FACTS_FILE holds "key: value" lines about the
machine and the sizes.  Without a BENCHMARKS.md argument only the summary is
printed.
"""
import os
import re
import statistics
import sys

HEADER = """\
# Benchmarks

Reproduce with `make bench` (runs `bench/run.sh`) as root on a Debian
bookworm machine: it installs what is missing (PostgreSQL 15, pg_cron,
libcurl, nginx-light, wrk), builds and installs the extension, runs each
benchmark 3 times, each on a throwaway cluster (`initdb` in /tmp,
`shared_preload_libraries = 'pg_cron,twilio_outbox'`, Unix socket only,
`shared_buffers` 1GB, `synchronous_commit` on) with its responder on
127.0.0.1, prints every figure, and appends a dated section below: the
machine, the median of each figure with the individual runs, its target and
whether it was met.  Every benchmark is bounded in time and stops by itself;
the whole suite takes about 30 minutes on a quiet 2-core machine (claim and
memory run once, the others 3 times).  The targets are issue 14's goals.

Sizes (environment variables; defaults in brackets):

| variable | what |
|---|---|
| `BENCH_QUICK=1` | a quick check: one run of each, small sizes (below), not recorded here unless `BENCH_RECORD=1` |
| `BENCH_RUNS` | runs of each benchmark [3; quick 1; claim and memory 1 unless `BENCH_RUNS` is set] |
| `BENCH_RUNS_<NAME>` | runs of one benchmark, e.g. `BENCH_RUNS_CLAIM=3` |
| `BENCH_ONLY` | the benchmarks to run, of `enqueue instructions dispatch dispatch1 batch latency rate claim memory row_versions` [all; row_versions when bench/row_versions.sh exists] |
| `BENCH_DISPATCHERS` | dispatch: `twilio_outbox.dispatchers_per_database` [2; dispatch1 always 1] |
| `BENCH_INSTRUCTIONS_TRANSACTIONS`, `BENCH_INSTRUCTIONS_MESSAGES` | instructions: measured transactions per variant, messages the dispatcher drains [2000, 5000; quick 300, 1000] |
| `BENCH_ENQUEUE_SECONDS`, `BENCH_ENQUEUE_WARMUP` | pgbench measurement and warm-up per variant [20, 5; quick 3, 1] |
| `BENCH_MESSAGES`, `BENCH_ACCOUNTS`, `BENCH_SENDERS` | dispatch: messages, accounts, senders per account [50000, 4, 5; quick 5000] |
| `BENCH_WRK_SECONDS` | dispatch: the wrk run against nginx alone [10; quick 3] |
| `BENCH_CEILING_ROWS`, `BENCH_CEILING_BATCH` | dispatch: messages per pgbench ceiling measurement, and per batch [200000, 200; quick 20000] |
| `BENCH_BATCH_MESSAGES`, `BENCH_BATCHES`, `BENCH_BATCH_IN_FLIGHT_FACTOR` | batch: messages per drain, the claim_batch values, max_in_flight as a multiple of the batch [50000, "200 1000 2000", 1; quick 5000] |
| `BENCH_LATENCY_MESSAGES`, `BENCH_LATENCY_PAUSE_MS` | latency: messages, pause between them [1000, 30; quick 100] |
| `BENCH_RATE_WINDOW`, `BENCH_RATE_SETTLE` | rate: window length, and its start after `start_worker()` [30, 2; quick 10] |
| `BENCH_HISTORY`, `BENCH_CLAIM_DUE`, `BENCH_CLAIM_SENDERS` | claim: finished messages of history, due messages, senders of the many-senders case [5000000, 10000, 1000; quick 100000, 2000, 200] |
| `BENCH_CLAIM_ROOM`, `BENCH_CLAIM_REPS`, `BENCH_CLAIM_DRAINS` | claim: the claim_batch the claims mirror, sweeps (a) and drains (b) per case [200, 3, 3] |
| `BENCH_MEMORY_MESSAGES`, `BENCH_MEMORY_CHUNK` | memory: messages drained, enqueued in chunks of [1000000, 50000; quick 50000, 5000] |
| `SHAPE_FIRST_SUCCESS_ATTEMPT_ROW` | 1 for 0.1's shape: an attempts row for a message sent at its first attempt in the generated history and the pgbench ceiling; 0 keeps that attempt on the message, as the dispatcher does since 0.2 [0] |
| `BENCH_RECORD` | 1: append to this file, 0: do not [1; quick 0; with `BENCH_PERF` 0] |
| `BENCH_PERF=1` | dispatch: also profile the dispatcher with `perf record -g` and print where its CPU goes (slower: not recorded by default; `BENCH_PERF_OUT=file` keeps perf.data) |
| `BENCH_RATE_TRACE=1` | rate: also list the 10/s sender's requests in its first 3 s |

Each script also runs alone, e.g. `bash bench/drain.sh 50000 4 5 10`,
`bash bench/claim.sh 1000000`.  What the benchmarks know about the tables'
columns (rows written straight into them, the pgbench script of the
dispatcher's writes) is in one file, `bench/shape.sh`.

What each measures:

1. **Enqueue cost** (`bench/enqueue.sh`): pgbench, 2 clients and 2 threads,
   prepared statements (`-M prepared`), one-statement transactions calling
   `twilio_enqueue()` (a random +1415 recipient, a short body) against the
   same transactions doing a plain INSERT of the values the enqueue stores
   into a table of the same shape (`LIKE twilio_outbox.messages INCLUDING
   ALL`, in a scratch schema), after a warm-up of each, in 2 s segments
   strictly alternating the two kinds (20 s of each in all), so that a drift
   or a burst in the machine's speed weighs on both; no dispatcher running.
   The figure is the median, over adjacent pairs of segments, of the ratio
   of their average latencies (enqueue / INSERT); TPS and latencies are
   means over the segments. Measured with `synchronous_commit` on (what an
   application pays: each commit waits for its WAL flush) and off (the
   statements' own cost, which the flush hides). Target: enqueue within 1.3x
   of the INSERT.
1b. **Instructions** (`bench/instructions.sh`): the same two statements,
   and the INSERT into a copy that also has the messages table's foreign key
   to accounts, counted by callgrind (every server process under
   `valgrind --tool=callgrind`; one pgbench connection per variant, `-M
   prepared`, 200 warm-up transactions, then 2,000 counted between two
   marker calls that zero and dump the backend's counts), so that the
   figures do not move with the machine's load: instructions per
   transaction and their ratios. And the dispatcher's instructions per
   message: its whole life draining 5,000 messages to nginx, less its life
   idle for as long, over the messages. Target: enqueue within 1.3x of the
   INSERT.
2. **Dispatch throughput** (`bench/drain.sh`): 50,000 messages over 4
   accounts (`max_concurrency` 100) x 5 senders (rate `'Infinity'`), drained
   by two dispatchers (`dispatchers_per_database = 2`, the README's
   recommendation on 2 cores; `dispatch1`: the same with one, without the
   ceilings) against nginx on 127.0.0.1 answering every POST with a
   Twilio-shaped 201: messages/s from `start_worker()` until every outcome
   is recorded (the server's clock, polled every 10 ms), the dispatcher's
   CPU seconds per 1,000 messages (`/proc/<pid>/stat`, its start included),
   its peak RSS and "local" memory (private pages outside the shared memory
   segment, sampled every 0.5 s), attempts per message; then, in the same
   run, the machine's ceilings: nginx's, wrk (`-t2 -c100`) POSTing a form
   body like the dispatcher's; and PostgreSQL's for the same writes,
   pgbench (`-M prepared`, synchronous_commit on) running the dispatcher's
   two transactions per batch of 200 (the claim's UPDATE of one sender's
   oldest due messages FOR UPDATE SKIP LOCKED; the record's 200-row UPDATE
   ... FROM unnest guarded by state and attempt number, with the attempts
   INSERT) over 200,000 messages written straight into the table, on one
   connection and on two (each on its own sender).  The drain rate is
   reported as a share of each ceiling; a ceiling below the drain rate (on
   as many connections as dispatchers), a pgbench with failed transactions
   or a wrk with errors fails the run instead.  Target: 20,000 messages/s (pg_net,
   measured against the same kind of responder, peaked near 2,800
   requests/s at batch size 10,000 and near 200/s at its default).
3. **Latency** (`bench/latency.sh`): from the commit of a single
   `twilio_enqueue()` to the request's arrival at the Python Twilio stand-in
   (`test/twilio_standin.py`, which records arrival times), 1,000 messages
   one at a time, 30 ms apart so that the dispatcher is idle each time; its
   poll interval stays at the default 1 s, so only the commit's wake-up
   explains a faster send.  The commit time is the server's
   `clock_timestamp()` just after `COMMIT` in the same psql session (the same
   clock).  Targets: p50 under 10 ms, p99 under 100 ms.
4. **Rate accuracy** (`bench/rate.sh`): two long-code senders of one
   account, rates 10 and 3 segments/s (burst left at its default), with a
   backlog lasting past the window, against the stand-in enforcing the same
   rates (token buckets, burst 10 so that our initial burst is accepted, 429
   above). Over the window from 2 s to 32 s after `start_worker()`: each
   sender's 201s per second, and the 429s (in the window; those before it
   are reported too). Target: within 2 % of the setting, no 429.
5. **Claim cost** (`bench/claim.sh`): the same 10,000 due messages
   claimed for one sender, for 1,000 senders with 10 each (another
   database of the same cluster), and for the one sender beside 5,000,000
   finished messages (19 in 20 sent, 1 in 20 dead, with their attempts and
   dead letters, written by INSERT ... SELECT generate_series); tables
   VACUUMed, ANALYZEd and checkpointed, autovacuum off.  (a) The claim
   statement, read out of `src/queue.c`'s `outbox_claim()` at run time
   (`bench/claim_sql.py`), prepared with the dispatcher's parameter types
   and run as the dispatcher runs it at claim_batch 200 (every sender of
   the account with max_n 200 and budget Infinity, an account room of
   200), each execution committed, until all 10,000 are claimed: the sum of
   the executions' times (`EXPLAIN (ANALYZE, BUFFERS)`), median of 3
   sweeps, with the custom plan and with the generic plan.  (b) End to end
   against nginx: from `start_worker()` until the 10,000 are recorded, and
   the dispatcher's CPU time meanwhile, median of 3.  Targets: many senders
   within 1.2x of one, history within 1.2x of none, for (a).
6. **CPU per 1,000 messages against `claim_batch`** (`bench/batch.sh`): the
   dispatch benchmark (50,000 messages, 4 accounts x 5 senders, without its
   ceilings) at `twilio_outbox.claim_batch` 200, 1,000 and 2,000, each on
   its own cluster, with `max_in_flight` equal to the batch, each account's
   `max_concurrency` its share of that (100 to 1,000), and the cluster's
   open files limit raised to `max_in_flight` + 1,024 (a socket per
   request).  Target: the CPU per 1,000 at 2,000 within 1.2x of that at 200.
7. **Memory over a long drain** (`bench/memory.sh`): 1,000,000 messages
   enqueued in chunks of 50,000, each drained by the running dispatcher
   before the next (autovacuum on); its local memory (as in 2.) and RSS
   sampled every 0.25 s, reported at 10, 50 and 100 % drained (then, and
   the peak so far).  Target: flat, read as at most 1.1x from 10 % to 100 %.

Each run also notes the machine's load: the load average, how busy the CPUs
were in the second before it started, a CPU probe (the best of 5 timings of
a fixed single-threaded Python loop, in ms: lower is faster; it shows a
slower machine that nothing inside it explains), and the share of the
machine's CPU that other processes (not the benchmark's own tree, cluster or
nginx) used while it ran, and the steal time the hypervisor reported (this
is a virtual machine; its neighbours on the host are invisible otherwise).
The machine is shared with people running tests; a run with a high share is
marked.
"""

# (key, label, aggregate, target): target is (op, value) or None.
FIGURES = [
    ("enqueue", "1. Enqueue cost", [
        ("enqueue_insert_ratio", "enqueue / INSERT latency, synchronous_commit on", "median", ("<=", 1.3)),
        ("enqueue_insert_ratio_async", "enqueue / INSERT latency, synchronous_commit off", "median", ("<=", 1.3)),
        ("enqueue_tps", "enqueue TPS, sync on", "median", None),
        ("insert_tps", "INSERT TPS, sync on", "median", None),
        ("enqueue_latency_ms", "enqueue latency (ms), sync on", "median", None),
        ("insert_latency_ms", "INSERT latency (ms), sync on", "median", None),
        ("enqueue_tps_async", "enqueue TPS, sync off", "median", None),
        ("insert_tps_async", "INSERT TPS, sync off", "median", None),
    ]),
    ("instructions", "1b. Instructions (callgrind)", [
        ("enqueue_insert_instructions_ratio", "enqueue / plain INSERT, instructions per transaction", "median", ("<=", 1.3)),
        ("enqueue_insert_fk_instructions_ratio", "enqueue / plain INSERT with the foreign key to accounts", "median", ("<=", 1.3)),
        ("enqueue_nofk_insert_instructions_ratio", "enqueue without the messages table's foreign key / plain INSERT", "median", None),
        ("enqueue_instructions", "enqueue, instructions per transaction", "median", None),
        ("enqueue_nofk_instructions", "enqueue without the foreign key, instructions per transaction", "median", None),
        ("insert_instructions", "plain INSERT, instructions per transaction", "median", None),
        ("insert_fk_instructions", "plain INSERT with the foreign key, instructions per transaction", "median", None),
        ("dispatcher_instructions_per_message", "dispatcher, instructions per message sent to nginx", "median", None),
    ]),
    ("dispatch", "2. Dispatch throughput", [
        ("drain_msgs_per_s", "messages/s, start_worker() to last outcome (dispatchers_per_database as noted; make bench: 2)", "median", (">=", 20000)),
        ("dispatcher_cpu_s_per_1000", "dispatcher CPU s per 1,000 messages (summed over the dispatchers)", "median", None),
        ("drain_share_of_pg_1conn", "messages/s / PostgreSQL's ceiling for the same writes, 1 connection", "median", None),
        ("drain_share_of_pg_2conn", "messages/s / PostgreSQL's ceiling for the same writes, 2 connections", "median", None),
        ("drain_share_of_nginx", "messages/s / nginx's ceiling (wrk requests/s)", "median", None),
        ("pg_ceiling_rows_per_s_1conn", "PostgreSQL ceiling: messages claimed + recorded/s, 1 connection (pgbench)", "median", None),
        ("pg_ceiling_rows_per_s_2conn", "PostgreSQL ceiling: messages claimed + recorded/s, 2 connections (pgbench)", "median", None),
        ("nginx_wrk_requests_per_s", "nginx ceiling: wrk requests/s", "median", None),
        ("dispatcher_cpu_share", "dispatchers' CPU share while draining (1 = one core)", "median", None),
        ("attempts_per_message", "attempts per message", "max", None),
        ("dispatcher_peak_rss_kb", "dispatcher peak RSS (kB)", "median", None),
        ("dispatcher_peak_local_kb", "dispatcher peak local memory (kB)", "median", None),
        ("dispatcher_end_local_kb", "dispatcher local memory at the end (kB)", "median", None),
    ]),
    ("dispatch1", "2b. Dispatch throughput, one dispatcher (reference)", [
        ("drain_msgs_per_s", "messages/s, start_worker() to last outcome", "median", None),
        ("dispatcher_cpu_s_per_1000", "dispatcher CPU s per 1,000 messages", "median", None),
        ("dispatcher_cpu_share", "dispatcher CPU share while draining (1 = one core)", "median", None),
        ("attempts_per_message", "attempts per message", "max", None),
        ("dispatcher_peak_local_kb", "dispatcher peak local memory (kB)", "median", None),
    ]),
    ("row_versions", "8. Row versions per message", [
        ("heap_tuples_per_message", "heap tuples written per message", "median", ("<=", 1.5)),
        ("index_entries_per_message", "B-tree entries written per message (WAL leaf inserts)", "median", None),
        ("updates_per_message", "updates per message (all tables)", "median", None),
        ("hot_updates_per_message", "of them HOT", "median", None),
        ("attempt_rows_per_message", "attempt rows per message", "median", None),
        ("brin_records_per_message", "BRIN records per message", "median", None),
        ("wal_bytes_per_message", "WAL bytes per message", "median", None),
        ("row_versions_dispatcher_cpu_s_per_1000", "dispatcher CPU s per 1,000 messages", "median", None),
    ]),
    ("latency", "3. Latency, commit to arrival", [
        ("latency_p50_ms", "p50 (ms)", "median", ("<", 10)),
        ("latency_p99_ms", "p99 (ms)", "median", ("<", 100)),
        ("latency_mean_ms", "mean (ms)", "median", None),
        ("latency_max_ms", "max (ms)", "median", None),
        ("latency_over_100ms", "messages over 100 ms", "max", None),
    ]),
    ("rate", "4. Rate accuracy", [
        ("rate_fast_per_s", "sender at 10/s: observed 201s/s", "median", ("within%", 10, 2)),
        ("rate_slow_per_s", "sender at 3/s: observed 201s/s", "median", ("within%", 3, 2)),
        ("rate_fast_late_per_s", "sender at 10/s: 201s/s over the window's last two thirds", "median", None),
        ("rate_slow_late_per_s", "sender at 3/s: 201s/s over the window's last two thirds", "median", None),
        ("rate_fast_429_in_window", "sender at 10/s: 429s in the window (worst run)", "max", ("==", 0)),
        ("rate_slow_429_in_window", "sender at 3/s: 429s in the window (worst run)", "max", ("==", 0)),
        ("rate_fast_429_total", "sender at 10/s: 429s over the whole run (worst run)", "max", None),
        ("rate_slow_429_total", "sender at 3/s: 429s over the whole run (worst run)", "max", None),
    ]),
    ("claim", "5. Claim cost", [
        ("claim_custom_ratio_many", "(a) claiming the due messages, many senders / one, custom plan", "median", ("<=", 1.2)),
        ("claim_generic_ratio_many", "(a) claiming the due messages, many senders / one, generic plan", "median", ("<=", 1.2)),
        ("claim_custom_ratio_history", "(a) claiming the due messages, beside history / none, custom plan", "median", ("<=", 1.2)),
        ("claim_generic_ratio_history", "(a) claiming the due messages, beside history / none, generic plan", "median", ("<=", 1.2)),
        ("drain_cpu_ratio_many", "(b) dispatcher CPU draining them, many senders / one", "median", None),
        ("drain_cpu_ratio_history", "(b) dispatcher CPU draining them, beside history / none", "median", None),
        ("drain_ms_ratio_many", "(b) drain time, many senders / one", "median", None),
        ("drain_ms_ratio_history", "(b) drain time, beside history / none", "median", None),
        ("claim_custom_ms_one", "(a) claim executions (ms, sum), custom plan, one sender", "median", None),
        ("claim_custom_ms_many", "(a) claim executions (ms, sum), custom plan, many senders", "median", None),
        ("claim_custom_ms_history", "(a) claim executions (ms, sum), custom plan, one sender, history", "median", None),
        ("claim_generic_ms_one", "(a) claim executions (ms, sum), generic plan, one sender", "median", None),
        ("claim_generic_ms_many", "(a) claim executions (ms, sum), generic plan, many senders", "median", None),
        ("claim_generic_ms_history", "(a) claim executions (ms, sum), generic plan, one sender, history", "median", None),
        ("claim_custom_buffers_one", "(a) claim buffers (sum), custom plan, one sender", "median", None),
        ("claim_custom_buffers_many", "(a) claim buffers (sum), custom plan, many senders", "median", None),
        ("claim_custom_buffers_history", "(a) claim buffers (sum), custom plan, one sender, history", "median", None),
        ("drain_ms_one", "(b) drain (ms), one sender", "median", None),
        ("drain_ms_many", "(b) drain (ms), many senders", "median", None),
        ("drain_ms_history", "(b) drain (ms), one sender, history", "median", None),
        ("drain_cpu_ms_one", "(b) dispatcher CPU (ms), one sender", "median", None),
        ("drain_cpu_ms_many", "(b) dispatcher CPU (ms), many senders", "median", None),
        ("drain_cpu_ms_history", "(b) dispatcher CPU (ms), one sender, history", "median", None),
    ]),
    ("batch", "6. CPU per 1,000 messages against claim_batch", [
        ("batch_cpu_ratio", "dispatcher CPU per 1,000 messages, largest claim_batch / smallest", "median", ("<=", 1.2)),
    ] + [(f"{k}_b{b}", f"claim_batch {b:,}: {label}", "median", None)
         for b in (200, 1000, 2000)
         for k, label in (("dispatcher_cpu_s_per_1000", "dispatcher CPU s per 1,000 messages"),
                          ("drain_msgs_per_s", "messages/s"),
                          ("batch_max_in_flight", "max_in_flight"),
                          ("attempts_per_message", "attempts per message"),
                          ("dispatcher_peak_local_kb", "dispatcher peak local memory (kB)"))]),
    ("memory", "7. Memory over a long drain", [
        ("memory_local_growth_ratio", "dispatcher local memory, 100 % drained / 10 %", "median", ("<=", 1.1)),
        ("memory_peak_local_growth_ratio", "dispatcher peak local memory, up to 100 % / up to 10 %", "median", None),
    ] + [(f"{k}_p{p}", f"{label}, {p} % drained", "median", None)
         for k, label in (("memory_local_kb", "local memory (kB)"),
                          ("memory_peak_local_kb", "peak local memory so far (kB)"),
                          ("memory_peak_rss_kb", "peak RSS so far (kB)"))
         for p in (10, 50, 100)] + [
        ("memory_cpu_s_per_1000", "dispatcher CPU s per 1,000 messages over the run", "median", None),
    ]),
]

# Issue 14's goals, each with its figure, what stands beside it (the
# machine's own ceilings measured in the same run, or the figures the ratio
# is made of) and a verdict: met, not met, reported (a goal that asks only
# for the figure), not measured (no run gave it), or failed (a run of its
# benchmark failed: its figures are not to be trusted).
# (goal, benchmark, key, target, unit, [(benchmark, key, label, ratio_of_figure)])
GOALS = [
    ("Dispatch of 50,000 messages to nginx, every outcome committed (synchronous_commit on), "
     "the README's configuration (2 dispatchers on 2 cores)",
     "dispatch", "drain_msgs_per_s", (">=", 20000), "messages/s", [
         ("dispatch", "pg_ceiling_rows_per_s_1conn", "PostgreSQL's ceiling for the same writes, 1 connection (rows/s)", True),
         ("dispatch", "pg_ceiling_rows_per_s_2conn", "the same, 2 connections", True),
         ("dispatch", "nginx_wrk_requests_per_s", "nginx's ceiling (wrk requests/s)", True),
         ("dispatch", "dispatcher_cpu_s_per_1000", "CPU s per 1,000 messages, both dispatchers", False),
         ("dispatch1", "drain_msgs_per_s", "one dispatcher (messages/s; figure / it: what the second one adds)", True),
         ("dispatch1", "dispatcher_cpu_s_per_1000", "one dispatcher, CPU s per 1,000 messages", False),
     ]),
    ("CPU per 1,000 messages flat in the batch: claim_batch 2,000 against 200",
     "batch", "batch_cpu_ratio", ("<=", 1.2), "x", [
         ("batch", "dispatcher_cpu_s_per_1000_b200", "CPU s per 1,000 at 200", False),
         ("batch", "dispatcher_cpu_s_per_1000_b2000", "at 2,000", False),
     ]),
    ("Instructions per dispatched message (callgrind, repeatable under load)",
     "instructions", "dispatcher_instructions_per_message", None, "instructions", []),
    ("Claim cost, 1,000 senders against one sender, the same messages (the dispatcher's generic plan)",
     "claim", "claim_generic_ratio_many", ("<=", 1.2), "x", [
         ("claim", "claim_generic_ms_one", "one sender (ms)", False),
         ("claim", "claim_generic_ms_many", "1,000 senders (ms)", False),
         ("claim", "drain_cpu_ratio_many", "end to end, the dispatcher's CPU (x)", False),
     ]),
    ("Claim cost beside 5,000,000 finished rows against none (the dispatcher's generic plan)",
     "claim", "claim_generic_ratio_history", ("<=", 1.2), "x", [
         ("claim", "claim_generic_ms_one", "no history (ms)", False),
         ("claim", "claim_generic_ms_history", "beside the history (ms)", False),
         ("claim", "drain_cpu_ratio_history", "end to end, the dispatcher's CPU (x)", False),
     ]),
    ("Enqueue against a plain INSERT of the same row, instructions per transaction",
     "instructions", "enqueue_insert_instructions_ratio", ("<=", 1.3), "x", [
         ("instructions", "enqueue_instructions", "enqueue", False),
         ("instructions", "insert_instructions", "plain INSERT", False),
         ("instructions", "enqueue_insert_fk_instructions_ratio", "against the INSERT with the foreign key (x)", False),
     ]),
    ("Memory flat over 1,000,000 messages: local memory at 100 % drained against 10 %",
     "memory", "memory_local_growth_ratio", ("<=", 1.1), "x", [
         ("memory", "memory_local_kb_p10", "at 10 % (kB)", False),
         ("memory", "memory_local_kb_p100", "at 100 % (kB)", False),
     ]),
    # 0.1 wrote 3 heap tuples per message sent at its first attempt (the
    # claim's update, the record's update, an attempt row) and 9 B-tree
    # entries: half is 1.5 and 4.5
    ("Row versions per message: half of 0.1's (3 heap tuples, 9 index entries)",
     "row_versions", "heap_tuples_per_message", ("<=", 1.5), "heap tuples per message", [
         ("row_versions", "index_entries_per_message", "index entries per message (half: 4.5)", False),
         ("row_versions", "wal_bytes_per_message", "WAL bytes per message", False),
     ]),
]

HIGH_FOREIGN_PCT = 20     # another process's share of the CPU that marks a run


def load_runs(results, name):
    runs = []
    pattern = re.compile(re.escape(name) + r"\.(\d+)$")
    for f in sorted(os.listdir(results), key=lambda f: (len(f), f)):
        m = pattern.match(f)
        if not m:
            continue
        values, notes = {}, []
        for line in open(os.path.join(results, f)):
            key, _, value = line.rstrip("\n").partition(" ")
            if key.startswith("note:"):
                notes.append((key[5:], value))
            else:
                values[key] = value
        status_file = os.path.join(results, f + ".status")
        status = open(status_file).read().strip() if os.path.exists(status_file) else "?"
        runs.append({"run": int(m.group(1)), "values": values, "notes": notes, "status": status})
    return runs


def fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 1000 or x == int(x):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:g}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.4g}"


def target_text(t):
    if t is None:
        return ""
    if t[0] == "within%":
        return f"{t[1]} ± {t[2]} %"
    return {"<=": "≤", ">=": "≥", ">": ">", "<": "<", "==": "="}[t[0]] + " " + fmt(t[1])


def met(t, v):
    if t is None or v is None:
        return ""
    op, ref = t[0], t[1]
    if op == "within%":
        ok = abs(v - ref) <= ref * t[2] / 100
    else:
        ok = {"<=": v <= ref, ">=": v >= ref, "<": v < ref, ">": v > ref, "==": v == ref}[op]
    return "yes" if ok else "**no**"


def median_of(runs, key):
    vals = [float(r["values"][key]) for r in runs if key in r["values"]]
    return statistics.median(vals) if vals else None


def goals_table(results):
    """Issue 14's goals: (markdown lines, plain lines)."""
    md = ["| issue 14's goal | target | figure | beside it (the machine's ceilings in the same run; the parts) | verdict |",
          "|---|---|---|---|---|"]
    plain = []
    cache = {}

    def runs_of(name):
        if name not in cache:
            cache[name] = load_runs(results, name)
        return cache[name]

    for goal, bench, key, target, unit, beside in GOALS:
        runs = runs_of(bench)
        v = median_of(runs, key)
        failed = [r["run"] for r in runs if r["status"] != "0"]
        parts = []
        for b, k, label, ratio in beside:
            x = median_of(runs_of(b), k)
            if x is None:
                continue
            text = f"{label} {fmt(x)}"
            if ratio and v is not None and x > 0:
                text += f" (figure / it: {fmt(v / x)})"
            parts.append(text)
        if failed:
            verdict = f"**failed** (run {', '.join(map(str, failed))} of {bench})"
        elif v is None:
            verdict = "not measured"
        elif target is None:
            verdict = "reported"
        else:
            verdict = "met" if met(target, v) == "yes" else "**not met**"
        figure = "-" if v is None else f"{fmt(v)} {unit}"
        md.append(f"| {goal} | {target_text(target) or '(report it)'} | {figure} | {'; '.join(parts)} | {verdict} |")
        plain.append(f"- {goal}\n    target {target_text(target) or '(report it)'}; figure {figure}; "
                     f"verdict {verdict.replace('*', '')}" + (f"\n    beside it: {'; '.join(parts)}" if parts else ""))
    return md, plain


def foreign_pct(text):
    m = re.search(r"used (\d+) %", text)
    return int(m.group(1)) if m else 0


def main():
    results, facts_file = sys.argv[1], sys.argv[2]
    out = sys.argv[3] if len(sys.argv) > 3 else None
    facts = {}
    for line in open(facts_file):
        k, _, v = line.rstrip("\n").partition(": ")
        facts[k] = v

    md = [f"\n## Run of {facts.get('date', '?')}\n"]
    md.append("| machine | |\n|---|---|")
    for k in ("nproc", "CPU", "memory", "PostgreSQL", "libcurl", "nginx", "commit", "sizes"):
        if k in facts:
            md.append(f"| {k} | {facts[k]} |")
    md.append("")
    goals_md, goals_plain = goals_table(results)
    md += goals_md
    md.append("")
    md.append("| benchmark | figure | median (or worst) | runs | target | met |")
    md.append("|---|---|---|---|---|---|")
    summary, load_lines, other_notes, failures = [], [], [], []
    for name, title, figures in FIGURES:
        runs = load_runs(results, name)
        if not runs:
            continue
        for r in runs:
            if r["status"] != "0":
                failures.append(f"{title}: run {r['run']} failed (exit status {r['status']})")
            for key, text in r["notes"]:
                if key in ("load", "foreign_cpu"):
                    continue
                other_notes.append(f"{title}, run {r['run']}: {key}: {text}")
            load = "; ".join(t for k, t in r["notes"] if k == "load")
            foreign = "; ".join(t for k, t in r["notes"] if k == "foreign_cpu")
            mark = " **(busy machine)**" if foreign_pct(foreign) >= HIGH_FOREIGN_PCT else ""
            load_lines.append(f"- {title}, run {r['run']}: {load}; {foreign}{mark}")
        known = {f[0] for f in figures}
        extra = sorted({k for r in runs for k in r["values"] if k not in known})
        for key, label, agg, target in figures + [(k, k, "median", None) for k in extra]:
            vals = [float(r["values"][key]) for r in runs if key in r["values"]]
            if not vals:
                continue
            v = statistics.median(vals) if agg == "median" else max(vals)
            each = ", ".join(fmt(x) for x in vals)
            md.append(f"| {title} | {label} | {fmt(v)} | {each} | {target_text(target)} | {met(target, v)} |")
            summary.append(f"{label:<62} {fmt(v):>10}  [{each}]  {target_text(target)} {met(target, v).replace('*', '')}".rstrip())
        summary.append("")
    md.append("")
    if failures:
        md.append("Failed runs:\n")
        md += [f"- {f}" for f in failures]
        md.append("")
    md.append("Load on the machine (the load average includes the benchmark's own earlier runs; "
              f"runs where other processes used {HIGH_FOREIGN_PCT} % of the CPU or more are marked):\n")
    md += load_lines
    if other_notes:
        md.append("\nNotes from the runs:\n")
        md += [f"- {n}" for n in other_notes]
    md.append("")

    print("\n== issue 14's goals (medians; a failed run fails its goal)")
    print("\n".join(goals_plain))
    print("\n== summary (median of the runs [each run], target, met)")
    print("\n".join(summary))
    if failures:
        print("\n".join(failures))
    if out:
        if not os.path.exists(out):
            with open(out, "w") as f:
                f.write(HEADER)
        with open(out, "a") as f:
            f.write("\n".join(md) + "\n")
        print(f"appended to {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
