# What the benchmarks know about the outbox tables' columns, in one place:
# sourced (after lib.sh) by drain.sh, claim.sh and memory.sh.  When the
# messages, attempts or dead_letters tables change shape, adapt the two
# functions here and nothing else:
#
#   gen_messages   rows written straight into the tables (as the superuser,
#                  INSERT ... SELECT generate_series, no twilio_enqueue), in
#                  the states the dispatcher would leave them in;
#   ceiling_script the pgbench script of the dispatcher's writes (claim, then
#                  record with its attempt row) that drain.sh runs to measure
#                  PostgreSQL's own ceiling.
#
# SHAPE_FIRST_SUCCESS_ATTEMPT_ROW=0 (the default): a message sent at its
# first attempt has no attempts row, as the dispatcher writes it since
# sql/0.2/47_row_versions.sql (its first attempt is kept on the message);
# 1 gives 0.1's shape (an attempts row each), for comparisons with it.

SHAPE_FIRST_SUCCESS_ATTEMPT_ROW=${SHAPE_FIRST_SUCCESS_ATTEMPT_ROW:-0}

# gen_messages KIND COUNT SENDERS_SQL
#
# COUNT messages spread round-robin over the senders SENDERS_SQL selects (a
# query returning sender ids; each message gets its sender's account and
# number), in the current database ($BENCH_DB).  KIND:
#   due       queued and due now, in id order, never attempted: what
#             twilio_enqueue() leaves (one segment, GSM-7);
#   finished  history: 19 in 20 sent at their first attempt (a Twilio SID,
#             201), 1 in 20 dead after one attempt (HTTP 400, code 21211,
#             a dead letter), finished over the last 30 days; each with
#             its attempts row (the sent ones only if
#             SHAPE_FIRST_SUCCESS_ATTEMPT_ROW=1, else their first attempt
#             kept on the row).
# One statement, so one transaction; no VACUUM or ANALYZE (the caller's
# business).
gen_messages()
{
	local kind=$1 count=$2 senders=$3 attempt_rows=true kept=false
	if [ "$SHAPE_FIRST_SUCCESS_ATTEMPT_ROW" != 1 ]; then
		attempt_rows="m.state <> 'sent'"
		kept=true		# the sent ones keep their first attempt on the row
	fi
	case $kind in
	due)
		psql_b <<SQL
WITH s AS (SELECT (row_number() OVER (ORDER BY q.id)) - 1 AS k, q.id, x.account, x.from_number,
		count(*) OVER () AS n
	FROM ($senders) q(id) JOIN twilio_outbox.senders x ON x.id = q.id)
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, from_number, body,
	encoding, segments, idempotency_key, state, attempts, next_attempt_at, created_at, updated_at)
SELECT s.account, s.id, '+1415' || lpad((i % 10000000)::text, 7, '0'), s.from_number,
	'Benchmark message ' || i, 'GSM-7', 1, gen_random_uuid(), 'queued', 0, t, t, t
FROM generate_series(0, $count - 1) i
	JOIN s ON s.k = i % s.n,
	LATERAL (SELECT now() - interval '1 minute' + i * interval '1 microsecond') x(t);
SQL
		;;
	finished)
		psql_b <<SQL
WITH s AS (SELECT (row_number() OVER (ORDER BY q.id)) - 1 AS k, q.id, x.account, x.from_number,
		count(*) OVER () AS n
	FROM ($senders) q(id) JOIN twilio_outbox.senders x ON x.id = q.id),
h AS (INSERT INTO twilio_outbox.messages AS m (account, sender_id, to_number, from_number, body,
		encoding, segments, idempotency_key, state, attempts, failures, next_attempt_at,
		twilio_sid, twilio_status, twilio_segments, last_http_status, last_error_code,
		last_error_message, created_at, updated_at, sent_at, finished_at,
		first_started_at, first_duration_ms, first_http_status)
	SELECT s.account, s.id, '+1415' || lpad((i % 10000000)::text, 7, '0'), s.from_number,
		'Historic message ' || i, 'GSM-7', 1, gen_random_uuid(), x.state, 1,
		CASE WHEN x.dead THEN 1 ELSE 0 END, t,
		CASE WHEN NOT x.dead THEN 'SM' || md5(i::text) END,
		CASE WHEN NOT x.dead THEN 'queued' END,
		CASE WHEN NOT x.dead THEN 1 END,
		CASE WHEN x.dead THEN 400 ELSE 201 END,
		CASE WHEN x.dead THEN 21211 END,
		CASE WHEN x.dead THEN 'Invalid ''To'' Phone Number' END,
		t, t + interval '1 s', CASE WHEN NOT x.dead THEN t + interval '1 s' END, t + interval '1 s',
		CASE WHEN $kept AND NOT x.dead THEN t + interval '0.5 s' END,
		CASE WHEN $kept AND NOT x.dead THEN 120 END,
		CASE WHEN $kept AND NOT x.dead THEN 201 END
	FROM generate_series(0, $count - 1) i
		JOIN s ON s.k = i % s.n,
		LATERAL (SELECT now() - interval '30 days' + i * (interval '29 days' / $count),
			i % 20 = 19) y(t, dead),
		LATERAL (SELECT CASE WHEN y.dead THEN 'dead' ELSE 'sent' END::twilio_outbox.message_state,
			y.dead) x(state, dead)
	RETURNING m.id, m.account, m.to_number, m.state, m.twilio_sid, m.last_http_status,
		m.last_error_code, m.last_error_message, m.created_at),
a AS (INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at,
		duration_ms, http_status, twilio_code, twilio_message, outcome, twilio_sid)
	SELECT m.id, 1, m.account, m.created_at + interval '0.5 s', 120, m.last_http_status,
		m.last_error_code, m.last_error_message, m.state::text::twilio_outbox.attempt_outcome,
		m.twilio_sid
	FROM h m WHERE $attempt_rows),
d AS (INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason,
		http_status, twilio_code, error_message, attempts, dead_at)
	SELECT m.id, m.account, m.to_number, 'rejected', m.last_http_status, m.last_error_code,
		m.last_error_message, 1, m.created_at + interval '1 s'
	FROM h m WHERE m.state = 'dead')
SELECT count(*) FROM h;
SQL
		;;
	*)
		echo "gen_messages: unknown kind $kind (due, finished)" >&2
		return 2
		;;
	esac
}

# ceiling_script BATCH FILE
#
# The pgbench script (for -M prepared) of the dispatcher's writes for one
# batch of BATCH messages, as two transactions like the dispatcher's: the
# claim (UPDATE to sending of the oldest due messages of one sender, FOR
# UPDATE SKIP LOCKED; client n takes the (n+1)-th sender of acct1, so that
# clients never wait for each other), then the record (a BATCH-row UPDATE
# ... FROM unnest of what the claim returned, guarded by state and attempt
# number like the dispatcher's, to sent with a SID and a 201, plus the
# attempt rows).  Each statement names the account and guards the state
# with a cast the planner cannot fold, as src/queue.c does.  The claim names
# the priority level (gen_messages writes the default, 1), as each of the
# dispatcher's range scans of messages_due (account, sender, priority,
# next_attempt_at, id) does: without it, every batch sorted all of the
# sender's due rows (O(rows) per batch of 200, the 4,315 rows/s "ceiling" of
# the run of 2026-11-29 12:44, below the dispatcher's own 11,917/s).  Each message is one row claimed and recorded, so rows/s
# compares with the dispatcher's messages/s.
ceiling_script()
{
	local batch=$1 file=$2 attempts_where=true first_kept=
	# without an attempt row, the first attempt is kept on the message
	# (sql/0.2/47_row_versions.sql), as the dispatcher does
	if [ "$SHAPE_FIRST_SUCCESS_ATTEMPT_ROW" != 1 ]; then
		attempts_where=false
		first_kept="first_started_at = now(), first_duration_ms = 1.5, first_http_status = 201,
		first_request_id = 'RQ00000000000000000000000000000000', first_concurrent_requests = 1,
		first_request_duration = 0.001, first_worker_pid = pg_backend_pid(),"
	fi
	cat >"$file" <<SQL
WITH k AS (SELECT m.id FROM twilio_outbox.messages m
		WHERE m.state = 'queued' AND m.account = 'acct1' AND m.next_attempt_at <= now()
		AND m.sender_id = (SELECT id FROM twilio_outbox.senders WHERE account = 'acct1'
			ORDER BY id OFFSET :client_id LIMIT 1)
		AND m.priority = 1
		ORDER BY m.next_attempt_at, m.id LIMIT $batch FOR UPDATE SKIP LOCKED),
c AS (UPDATE twilio_outbox.messages m SET state = 'sending', attempts = m.attempts + 1,
		lease_until = now() + interval '300 s', worker_pid = pg_backend_pid(), updated_at = now()
	FROM k WHERE m.id = k.id AND m.account = 'acct1'
		AND m.state = 'queued'::text::twilio_outbox.message_state
	RETURNING m.id, m.attempts, m.account)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempts), '{}') AS atts,
	coalesce(array_agg(account), '{}') AS accts,
	coalesce(array_agg('SM' || lpad(to_hex(id), 32, '0')), '{}') AS sids FROM c
\gset
WITH u AS (UPDATE twilio_outbox.messages m SET state = 'sent',
		lease_until = NULL, worker_pid = NULL, twilio_sid = r.sid, twilio_status = 'queued',
		twilio_segments = 1, last_http_status = 201, last_error_code = NULL,
		last_error_message = NULL, $first_kept updated_at = now(), sent_at = now(), finished_at = now()
	FROM unnest(:ids::int8[], :atts::int4[], :accts::text[], :sids::text[]) AS r(id, attempt, account, sid)
	WHERE m.id = r.id AND m.account = 'acct1'
		AND m.state = 'sending'::text::twilio_outbox.message_state AND m.attempts = r.attempt
	RETURNING m.id),
a AS (INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at,
		duration_ms, http_status, outcome, twilio_sid, request_id, concurrent_requests,
		request_duration, worker_pid)
	SELECT id, attempt, account, now(), 1.5, 201, 'sent', sid,
		'RQ00000000000000000000000000000000', 1, 0.001, pg_backend_pid()
	FROM unnest(:ids::int8[], :atts::int4[], :accts::text[], :sids::text[]) AS r(id, attempt, account, sid)
	WHERE $attempts_where)
SELECT count(*) FROM u;
SQL
}
