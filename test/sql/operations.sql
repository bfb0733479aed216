-- The operator functions: cancel, requeue, resolve_ambiguous, pause and
-- resume of accounts and senders, purge and schedule_purge.  No dispatcher
-- runs here: messages are inserted in the state a worker would leave them.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_operations
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
TRUNCATE twilio_outbox.messages, twilio_outbox.attempts, twilio_outbox.dead_letters,
	twilio_outbox.suppressed_recipients, twilio_outbox.status_events;
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('ops', 'AC00000000000000000000000000000011'),
	       ('ops2', 'AC00000000000000000000000000000012') ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.senders (id, account, from_number, kind)
	OVERRIDING SYSTEM VALUE VALUES
	(911, 'ops', '+15005550111', 'long_code'),
	(912, 'ops2', '+15005550112', 'long_code')
	ON CONFLICT DO NOTHING;
UPDATE twilio_outbox.accounts SET paused_until = NULL, pause_reason = NULL;
UPDATE twilio_outbox.senders SET paused_until = NULL, pause_reason = NULL;
RESET client_min_messages;
-- Errors show their hint, not the PL/pgSQL line they come from.
\set SHOW_CONTEXT never

-- A message as the dispatcher leaves it; its idempotency key is derived
-- from its id, so that it can be checked after a requeue.  Returns the id.
CREATE FUNCTION pg_temp.msg(id bigint, state twilio_outbox.message_state,
	account text DEFAULT 'ops', attempts integer DEFAULT 0,
	finished_at timestamptz DEFAULT NULL, expires_at timestamptz DEFAULT NULL,
	to_number text DEFAULT '+14155550100', created_at timestamptz DEFAULT now())
RETURNS bigint LANGUAGE sql AS $$
	INSERT INTO twilio_outbox.messages (id, account, sender_id, to_number, body,
		encoding, segments, idempotency_key, state, attempts, failures,
		next_attempt_at, expires_at, created_at, finished_at)
	OVERRIDING SYSTEM VALUE
	SELECT msg.id, msg.account, s.id, msg.to_number, 'hello', 'GSM-7', 1,
		('00000000-0000-4000-8000-' || lpad(msg.id::text, 12, '0'))::uuid, msg.state,
		msg.attempts, msg.attempts, msg.created_at, msg.expires_at, msg.created_at, msg.finished_at
	FROM twilio_outbox.senders s WHERE s.account = msg.account
	RETURNING id;
$$;

-- A dead letter for a dead message.
CREATE FUNCTION pg_temp.dead(id bigint, reason text, dead_ago interval,
	twilio_code integer DEFAULT NULL, account text DEFAULT 'ops',
	to_number text DEFAULT '+14155550100', expires_at timestamptz DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$
	SELECT pg_temp.msg(dead.id, 'dead', dead.account, 5, now() - dead.dead_ago,
		dead.expires_at, dead.to_number);
	INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason,
		http_status, twilio_code, attempts, dead_at)
	VALUES (dead.id, dead.account, dead.to_number, dead.reason,
		CASE WHEN dead.twilio_code IS NULL THEN 500 ELSE 400 END, dead.twilio_code, 5,
		now() - dead.dead_ago)
	RETURNING message_id;
$$;

-- cancel: a message not sent yet (queued, or held as ambiguous) is
-- canceled and finished; one in flight, sent or dead is refused with its
-- state; an unknown id is an error.
SELECT pg_temp.msg(101, 'queued'), pg_temp.msg(102, 'sent', finished_at => now()),
	pg_temp.msg(103, 'sending', attempts => 1), pg_temp.msg(104, 'dead', finished_at => now()),
	pg_temp.msg(105, 'ambiguous', attempts => 1);
SELECT try(sql) AS cancel, sql FROM (VALUES
	($$SELECT twilio_outbox.cancel(101)$$),
	($$SELECT twilio_outbox.cancel(101)$$),
	($$SELECT twilio_outbox.cancel(102)$$),
	($$SELECT twilio_outbox.cancel(103)$$),
	($$SELECT twilio_outbox.cancel(104)$$),
	($$SELECT twilio_outbox.cancel(105)$$),
	($$SELECT twilio_outbox.cancel(999999)$$)
) AS t(sql);
SELECT id, state, finished_at IS NOT NULL AS finished,
	last_error_message = 'canceled by ' || session_user AS says_who
FROM twilio_outbox.messages WHERE id BETWEEN 101 AND 105 ORDER BY id;
SELECT twilio_outbox.cancel(103);

-- requeue: needs ids or a filter; re-queueing everything must be asked for.
SELECT twilio_outbox.requeue();
SELECT twilio_outbox.requeue(message_ids => NULL);

-- Dead letters of both accounts, of several codes, reasons and ages.
SELECT count(*) AS dead_letters FROM (VALUES
	(pg_temp.dead(201, 'attempts_exhausted', '2 hours')),
	(pg_temp.dead(202, 'rejected', '1 hour', 21211)),
	(pg_temp.dead(203, 'rejected', '10 minutes', 21211, 'ops2')),
	(pg_temp.dead(204, 'rejected', '10 minutes', 30007)),
	(pg_temp.dead(205, 'expired', '1 minute', expires_at => now() - interval '1 minute')),
	(pg_temp.dead(206, 'suppressed', '5 minutes', 21610, to_number => '+14155550666')),
	(pg_temp.dead(207, 'rejected', '3 hours', 30007)),
	(pg_temp.dead(208, 'attempts_exhausted', '20 minutes')),
	(pg_temp.msg(209, 'ambiguous', attempts => 1))
) AS t(id);
INSERT INTO twilio_outbox.suppressed_recipients (account, to_number, reason, twilio_code, message_id)
	VALUES ('ops', '+14155550666', 'unsubscribed', 21610, 206);

-- By id: the message is queued again, due now, with a fresh failure budget
-- (its attempt count stays) and the same idempotency key; its dead letter
-- records who re-queued it and when.
SELECT twilio_outbox.requeue(ARRAY[201]) AS requeued;
SELECT id, state, failures, attempts, finished_at IS NULL AS unfinished,
	next_attempt_at <= now() AS due,
	idempotency_key = '00000000-0000-4000-8000-000000000201' AS same_key
FROM twilio_outbox.messages WHERE id = 201;
SELECT message_id, requeued_at IS NOT NULL AS requeued, requeued_by = session_user AS by_caller
FROM twilio_outbox.dead_letters WHERE message_id = 201;
-- Once queued, it is not re-queued again; an unknown id is no error.
SELECT twilio_outbox.requeue(ARRAY[201, 999999]) AS requeued;

-- By filter: only the matching open dead letters, all filters together.
SELECT twilio_outbox.requeue(twilio_code => 21211, account => 'ops') AS code_21211_ops;
SELECT twilio_outbox.requeue(reason => 'rejected', dead_after => now() - interval '30 minutes') AS recent_rejected;
SELECT twilio_outbox.requeue(dead_before => now() - interval '150 minutes') AS older_than_2h30;
-- Account ops still has 205 (expired), 206 (recipient suppressed since),
-- 208 (attempts exhausted) and the ambiguous 209: only 208 goes.
SELECT twilio_outbox.requeue(account => 'ops') AS rest_of_ops;
-- Expired and suppressed stay dead even by id; an ambiguous one is queued
-- by id (never by a filter).
SELECT twilio_outbox.requeue(ARRAY[205, 206]) AS expired_or_suppressed;
SELECT twilio_outbox.requeue(ARRAY[209]) AS ambiguous;
SELECT m.id, m.state, m.failures, d.reason, d.twilio_code, d.account,
	d.requeued_at IS NOT NULL AS requeued
FROM twilio_outbox.messages m LEFT JOIN twilio_outbox.dead_letters d ON d.message_id = m.id
WHERE m.id BETWEEN 201 AND 209 ORDER BY m.id;
-- Nothing left to match: 0, not an error.
SELECT twilio_outbox.requeue(dead_before => now()) AS everything_left;

-- resolve_ambiguous: an operator found the message in the Twilio console.
SELECT pg_temp.msg(301, 'ambiguous', attempts => 1), pg_temp.msg(302, 'ambiguous', attempts => 1),
	pg_temp.msg(303, 'queued');
SELECT twilio_outbox.resolve_ambiguous(301, 'SM0123456789abcdef0123456789abcdef');
SELECT twilio_outbox.resolve_ambiguous(302);
SELECT id, state, twilio_sid, sent_at IS NOT NULL AS sent_at_set, finished_at IS NOT NULL AS finished,
	last_error_message = 'resolved as sent by ' || session_user AS says_who
FROM twilio_outbox.messages WHERE id IN (301, 302) ORDER BY id;
SELECT try(sql) AS resolve_ambiguous, sql FROM (VALUES
	($$SELECT twilio_outbox.resolve_ambiguous(301, 'SM0123456789abcdef0123456789abcdef')$$),
	($$SELECT twilio_outbox.resolve_ambiguous(303)$$),
	($$SELECT twilio_outbox.resolve_ambiguous(303, 'not-a-sid')$$),
	($$SELECT twilio_outbox.resolve_ambiguous(999999)$$)
) AS t(sql);

-- Pausing and resuming: until a time (infinity by default), with a reason;
-- resuming clears both.  Unknown names and ids are errors.
SELECT twilio_outbox.pause_account('ops');
SELECT name, paused_until, pause_reason FROM twilio_outbox.accounts WHERE name = 'ops';
SELECT twilio_outbox.pause_account('ops', now() + interval '1 hour', 'carrier outage');
SELECT name, paused_until > now() AS paused, paused_until < 'infinity' AS ends, pause_reason
FROM twilio_outbox.accounts WHERE name = 'ops';
SELECT twilio_outbox.resume_account('ops');
SELECT name, paused_until, pause_reason FROM twilio_outbox.accounts WHERE name = 'ops';
SELECT twilio_outbox.pause_sender(911, reason => 'number being ported');
SELECT id, paused_until, pause_reason FROM twilio_outbox.senders WHERE id = 911;
SELECT twilio_outbox.resume_sender(911);
SELECT id, paused_until, pause_reason FROM twilio_outbox.senders WHERE id = 911;
SELECT try(sql) AS pause_resume, sql FROM (VALUES
	($$SELECT twilio_outbox.pause_account('nope')$$),
	($$SELECT twilio_outbox.resume_account('nope')$$),
	($$SELECT twilio_outbox.pause_sender(999999)$$),
	($$SELECT twilio_outbox.resume_sender(999999)$$)
) AS t(sql);

-- Arguments are checked at the call: NULL where a value is needed is 22004,
-- nonsense (negative ids, a pause already over, an unknown reason, an
-- empty range) 22023, an unknown account 42704; quoted input is cut short.
SELECT try(sql) AS arguments, sql FROM (VALUES
	($$SELECT twilio_outbox.cancel(NULL)$$),
	($$SELECT twilio_outbox.cancel(-1)$$),
	($$SELECT twilio_outbox.cancel(0)$$),
	($$SELECT twilio_outbox.resolve_ambiguous(NULL)$$),
	($$SELECT twilio_outbox.resolve_ambiguous(-7, 'SM0123456789abcdef0123456789abcdef')$$),
	($$SELECT twilio_outbox.resolve_ambiguous(301, repeat('SM', 500000))$$),
	($$SELECT twilio_outbox.resolve_ambiguous(301, E'SM\r\nX-Evil: 1')$$),
	($$SELECT twilio_outbox.pause_account(NULL)$$),
	($$SELECT twilio_outbox.pause_account('ops', NULL)$$),
	($$SELECT twilio_outbox.pause_account('ops', reason => NULL)$$),
	($$SELECT twilio_outbox.pause_account('ops', now() - interval '1 minute')$$),
	($$SELECT twilio_outbox.pause_account('ops', '-infinity')$$),
	($$SELECT twilio_outbox.pause_account('ops', reason => repeat('r', 1001))$$),
	($$SELECT twilio_outbox.pause_account('ops', reason => E'outage\nX: y')$$),
	($$SELECT twilio_outbox.pause_account(repeat('a', 1000000))$$),
	($$SELECT twilio_outbox.resume_account(NULL)$$),
	($$SELECT twilio_outbox.pause_sender(NULL)$$),
	($$SELECT twilio_outbox.pause_sender(-911)$$),
	($$SELECT twilio_outbox.pause_sender(911, NULL)$$),
	($$SELECT twilio_outbox.pause_sender(911, now() - interval '1 second')$$),
	($$SELECT twilio_outbox.pause_sender(911, reason => NULL)$$),
	($$SELECT twilio_outbox.resume_sender(NULL)$$),
	($$SELECT twilio_outbox.resume_sender(0)$$),
	($$SELECT twilio_outbox.requeue(ARRAY[201, NULL])$$),
	($$SELECT twilio_outbox.requeue(ARRAY[-201])$$),
	($$SELECT twilio_outbox.requeue(twilio_code => -21211)$$),
	($$SELECT twilio_outbox.requeue(reason => 'bored')$$),
	($$SELECT twilio_outbox.requeue(reason => repeat('x', 1000000))$$),
	($$SELECT twilio_outbox.requeue(account => 'nope')$$),
	($$SELECT twilio_outbox.requeue(dead_after => now(), dead_before => now() - interval '1 day')$$),
	-- an empty list of ids re-queues nothing
	($$SELECT twilio_outbox.requeue(ARRAY[]::bigint[])$$)
) AS t(sql);
-- Nothing was paused by those calls.
SELECT count(*) AS paused FROM (SELECT paused_until FROM twilio_outbox.accounts WHERE paused_until IS NOT NULL
	UNION ALL SELECT paused_until FROM twilio_outbox.senders WHERE paused_until IS NOT NULL) p;

-- purge: finished messages older than the cutoff go, with their attempts
-- and dead letters; recent ones and live ones (however old) stay; attempts
-- and status events older than the cutoff go whatever their message.
TRUNCATE twilio_outbox.messages, twilio_outbox.attempts, twilio_outbox.dead_letters,
	twilio_outbox.suppressed_recipients, twilio_outbox.status_events;
SELECT count(*) AS messages FROM (VALUES
	-- old and finished: 5 of them, more than two batches of 2
	(pg_temp.msg(401, 'sent', attempts => 1, finished_at => now() - interval '2 days', created_at => now() - interval '3 days')),
	(pg_temp.msg(402, 'delivered', attempts => 1, finished_at => now() - interval '2 days', created_at => now() - interval '3 days')),
	(pg_temp.msg(403, 'dead', attempts => 1, finished_at => now() - interval '2 days', created_at => now() - interval '3 days')),
	(pg_temp.msg(404, 'canceled', finished_at => now() - interval '2 days', created_at => now() - interval '3 days')),
	(pg_temp.msg(405, 'failed', attempts => 1, finished_at => now() - interval '2 days', created_at => now() - interval '3 days')),
	-- finished recently
	(pg_temp.msg(406, 'sent', attempts => 1, finished_at => now() - interval '1 hour', created_at => now() - interval '3 days')),
	(pg_temp.msg(407, 'dead', attempts => 1, finished_at => now() - interval '1 hour', created_at => now() - interval '3 days')),
	-- old but live
	(pg_temp.msg(408, 'queued', attempts => 3, created_at => now() - interval '3 days')),
	(pg_temp.msg(409, 'sending', attempts => 1, created_at => now() - interval '3 days')),
	(pg_temp.msg(410, 'ambiguous', attempts => 1, created_at => now() - interval '3 days')),
	(pg_temp.msg(411, 'queued', attempts => 5, created_at => now() - interval '3 days'))
) AS t(id);
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, http_status, outcome)
SELECT message_id, attempt, 'ops', now() - ago, 201, 'sent' FROM (VALUES
	(401, 1, interval '2 days'), (402, 1, '2 days'), (403, 1, '2 days'), (405, 1, '2 days'),
	(406, 1, '1 hour'), (407, 1, '1 hour'),
	(408, 1, '2 days'), (408, 2, '2 days'), (408, 3, '1 hour'),
	(409, 1, '2 days'), (410, 1, '2 days'), (411, 5, '2 days')
) AS t(message_id, attempt, ago);
INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason, attempts, dead_at, requeued_at, requeued_by)
VALUES (403, 'ops', '+14155550100', 'rejected', 1, now() - interval '2 days', NULL, NULL),
	(407, 'ops', '+14155550100', 'rejected', 1, now() - interval '1 hour', NULL, NULL),
	-- 411 died two days ago and was re-queued: its dead letter stays with it
	(411, 'ops', '+14155550100', 'attempts_exhausted', 5, now() - interval '2 days', now() - interval '2 days', 'ops_admin');
INSERT INTO twilio_outbox.status_events (account, message_sid, message_status, received_at) VALUES
	('ops', 'SM00000000000000000000000000000401', 'delivered', now() - interval '2 days'),
	('ops', 'SM00000000000000000000000000000406', 'delivered', now() - interval '1 hour');

-- Bad arguments are named first (here try() calls from a function, where
-- purge could not commit: that comes last, 25001).
SELECT try(sql) AS purge, sql FROM (VALUES
	($$CALL twilio_outbox.purge('-1 day')$$),
	($$CALL twilio_outbox.purge('1 day -25 hours')$$),
	($$CALL twilio_outbox.purge('1 day', 0)$$),
	($$CALL twilio_outbox.purge('1 day', -5)$$),
	($$CALL twilio_outbox.purge('1 day', 1000001)$$),
	($$CALL twilio_outbox.purge(NULL)$$),
	($$CALL twilio_outbox.purge('1 day', NULL)$$),
	($$CALL twilio_outbox.purge(batch_size => NULL)$$),
	($$CALL twilio_outbox.purge('1000000 years')$$),
	($$CALL twilio_outbox.purge('1 day', 2)$$)
) AS t(sql);
-- At the top level too: an error at once, not a loop.
CALL twilio_outbox.purge(batch_size => NULL);
CALL twilio_outbox.purge(NULL, 10);
CALL twilio_outbox.purge('-1 second');
-- A caller's search_path cannot lend purge an operator: with a schema
-- before pg_catalog whose operators on purge's types record every call,
-- purge runs as usual and calls none of them.
CREATE SCHEMA evil;
CREATE TABLE evil.calls (op text);
CREATE FUNCTION evil.ts_minus(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql
	AS $$BEGIN INSERT INTO evil.calls VALUES ('-'); RETURN pg_catalog.timestamptz_mi_interval($1, $2); END$$;
CREATE FUNCTION evil.iv_lt(interval, interval) RETURNS boolean LANGUAGE plpgsql
	AS $$BEGIN INSERT INTO evil.calls VALUES ('interval <'); RETURN pg_catalog.interval_lt($1, $2); END$$;
CREATE FUNCTION evil.ts_lt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql
	AS $$BEGIN INSERT INTO evil.calls VALUES ('timestamptz <'); RETURN pg_catalog.timestamptz_lt($1, $2); END$$;
CREATE FUNCTION evil.i8_lt(bigint, integer) RETURNS boolean LANGUAGE plpgsql
	AS $$BEGIN INSERT INTO evil.calls VALUES ('bigint < integer'); RETURN pg_catalog.int84lt($1, $2); END$$;
CREATE FUNCTION evil.i8_pl(bigint, bigint) RETURNS bigint LANGUAGE plpgsql
	AS $$BEGIN INSERT INTO evil.calls VALUES ('bigint +'); RETURN pg_catalog.int8pl($1, $2); END$$;
CREATE FUNCTION evil.i8_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql
	AS $$BEGIN INSERT INTO evil.calls VALUES ('bigint ='); RETURN pg_catalog.int8eq($1, $2); END$$;
CREATE OPERATOR evil.- (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = evil.ts_minus);
CREATE OPERATOR evil.< (LEFTARG = interval, RIGHTARG = interval, FUNCTION = evil.iv_lt);
CREATE OPERATOR evil.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_lt);
CREATE OPERATOR evil.< (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = evil.i8_lt);
CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8_pl);
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8_eq);
-- the hostile operators work when a query does not pin its path:
SET search_path = evil, pg_catalog;
SELECT now() - interval '1 day' < now() AS evil_works;
SELECT op FROM evil.calls ORDER BY op;
TRUNCATE evil.calls;
-- Its notice names the cutoff, a timestamp: not shown here.
SET client_min_messages = warning;
CALL twilio_outbox.purge('1 day', 2);
RESET client_min_messages;
SELECT op AS hostile_operator_called FROM evil.calls;
RESET search_path;
DROP SCHEMA evil CASCADE;
SELECT id, state FROM twilio_outbox.messages ORDER BY id;
SELECT message_id, attempt FROM twilio_outbox.attempts ORDER BY message_id, attempt;
SELECT message_id, reason FROM twilio_outbox.dead_letters ORDER BY message_id;
SELECT message_sid, message_status FROM twilio_outbox.status_events ORDER BY message_sid;
-- Nothing old is left: a second run deletes nothing.
SET client_min_messages = warning;
CALL twilio_outbox.purge('1 day', 2);
RESET client_min_messages;
SELECT count(*) AS messages FROM twilio_outbox.messages;
-- It commits between batches, so not inside a transaction block.
BEGIN;
CALL twilio_outbox.purge('1 day', 2);
ROLLBACK;

-- schedule_purge: pg_cron is not installed in this database; the error
-- says what to run, and where.
SELECT twilio_outbox.schedule_purge();
SELECT twilio_outbox.schedule_purge('7 days', '0 4 * * *', 'app', 'app_purge');
