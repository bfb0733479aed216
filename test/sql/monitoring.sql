-- The monitoring views on known data: backlog, dead_letter_queue,
-- attempt_log, stats, health and worker, and what the monitoring role may
-- read through them.  No dispatcher runs here: the rows a worker would
-- write are inserted directly, at times relative to now().  Each section
-- runs in one transaction, so now() is the same for the rows and the views.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_monitoring
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
TRUNCATE twilio_outbox.messages, twilio_outbox.attempts, twilio_outbox.dead_letters,
	twilio_outbox.suppressed_recipients, twilio_outbox.status_events;
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('mon', 'AC00000000000000000000000000000001'),
	       ('mon2', 'AC00000000000000000000000000000002') ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.senders (id, account, from_number, messaging_service_sid, kind)
	OVERRIDING SYSTEM VALUE VALUES
	(901, 'mon', '+15005550101', NULL, 'long_code'),
	(902, 'mon', '+15005550102', NULL, 'long_code'),
	(903, 'mon2', NULL, 'MG00000000000000000000000000000003', 'messaging_service')
	ON CONFLICT DO NOTHING;
-- No account paused by an earlier test.
UPDATE twilio_outbox.accounts SET paused_until = NULL, pause_reason = NULL;
DROP ROLE IF EXISTS mon_viewer;
DROP ROLE IF EXISTS mon_scraper;
RESET client_min_messages;

-- A message as the dispatcher leaves it, by id, in a given state; returns the id.
CREATE FUNCTION pg_temp.msg(id bigint, sender bigint, state twilio_outbox.message_state,
	attempts integer DEFAULT 0, next_attempt_at timestamptz DEFAULT now(),
	created_at timestamptz DEFAULT now(), finished_at timestamptz DEFAULT NULL,
	media_urls text[] DEFAULT NULL, content_sid text DEFAULT NULL,
	to_number text DEFAULT '+14155550100')
RETURNS bigint LANGUAGE sql AS $$
	INSERT INTO twilio_outbox.messages (id, account, sender_id, to_number, body,
		media_urls, content_sid, encoding, segments, idempotency_key, state,
		attempts, failures, next_attempt_at, created_at, finished_at)
	OVERRIDING SYSTEM VALUE
	SELECT msg.id, s.account, msg.sender, msg.to_number,
		CASE WHEN msg.content_sid IS NULL THEN 'secret code 123456' END,
		msg.media_urls, msg.content_sid, 'GSM-7', 1, gen_random_uuid(), msg.state,
		msg.attempts, msg.attempts, msg.next_attempt_at, msg.created_at, msg.finished_at
	FROM twilio_outbox.senders s WHERE s.id = msg.sender
	RETURNING id;
$$;

-- backlog: one row per account and sender, of what is still to be sent.
-- Sent, dead and canceled messages are not in it.
BEGIN;
SELECT pg_temp.msg(1, 901, 'queued', next_attempt_at => now() - interval '10 minutes'),
	pg_temp.msg(2, 901, 'queued', next_attempt_at => now() - interval '30 seconds'),
	pg_temp.msg(3, 901, 'queued', next_attempt_at => now() + interval '1 hour'),
	pg_temp.msg(4, 901, 'queued', 2, now() + interval '20 seconds'),
	pg_temp.msg(5, 901, 'queued', 3, now() + interval '1 minute'),
	pg_temp.msg(6, 901, 'sending', 1),
	pg_temp.msg(7, 901, 'ambiguous', 1),
	pg_temp.msg(8, 901, 'sent', 1, finished_at => now()),
	pg_temp.msg(9, 901, 'dead', 5, finished_at => now()),
	pg_temp.msg(10, 902, 'queued', 1, now() - interval '5 seconds'),
	pg_temp.msg(11, 902, 'canceled', finished_at => now()),
	pg_temp.msg(12, 903, 'queued', next_attempt_at => now() - interval '2 minutes'),
	pg_temp.msg(13, 903, 'sending', 1);
-- due_now: queued and due (first attempts and retries); scheduled: first
-- attempts not due yet; retrying: waiting for a retry that is not due yet
-- (the three add up to what is queued); oldest_due_age: how long the
-- longest-waiting due message has waited.
SELECT account, sender, due_now, scheduled, retrying, retry_attempts_so_far,
	in_flight, ambiguous, oldest_due_age
FROM twilio_outbox.backlog ORDER BY account, sender;
-- next_retry_at: the earliest retry still to come; none once all are due.
SELECT sender, next_retry_at = now() + interval '20 seconds' AS in_20s,
	next_retry_at = now() - interval '5 seconds' AS due_5s_ago, next_retry_at IS NULL AS none
FROM twilio_outbox.backlog ORDER BY account, sender;
ROLLBACK;
-- Nothing waiting: no rows at all.
SELECT count(*) AS backlog_rows FROM twilio_outbox.backlog;

-- dead_letter_queue: what each dead message was (SMS, MMS or template), why
-- it died, its codes, and whether it was re-queued since.
BEGIN;
SELECT pg_temp.msg(20, 901, 'dead', 1, finished_at => now(), to_number => '+14155550120'),
	pg_temp.msg(21, 901, 'dead', 5, finished_at => now(), to_number => '+14155550121',
		media_urls => ARRAY['https://example.com/a.png']),
	pg_temp.msg(22, 903, 'dead', 1, finished_at => now(), to_number => '+14155550122',
		content_sid => 'HX00000000000000000000000000000022'),
	pg_temp.msg(23, 902, 'queued', 5, to_number => '+14155550123');
INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason,
	http_status, twilio_code, error_message, attempts, dead_at, requeued_at, requeued_by) VALUES
	(20, 'mon', '+14155550120', 'rejected', 400, 21211, 'invalid To phone number', 1, now() - interval '1 minute', NULL, NULL),
	(21, 'mon', '+14155550121', 'attempts_exhausted', 500, NULL, 'internal server error', 5, now() - interval '2 minutes', NULL, NULL),
	(22, 'mon2', '+14155550122', 'suppressed', 400, 21610, 'unsubscribed recipient', 1, now() - interval '3 minutes', NULL, NULL),
	(23, 'mon', '+14155550123', 'attempts_exhausted', 503, NULL, 'service unavailable', 5, now() - interval '1 hour', now(), 'ops_admin');
SELECT message_id, account, to_number, kind, segments, reason, http_status, twilio_code,
	error_message, attempts, now() - dead_at AS dead_for, requeued_at IS NOT NULL AS requeued,
	requeued_by, message_state
FROM twilio_outbox.dead_letter_queue ORDER BY message_id;
ROLLBACK;
-- Its columns: never the body, the media or the template variables.
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'twilio_outbox' AND table_name = 'dead_letter_queue'
ORDER BY ordinal_position;

-- attempt_log: every attempt, with the recipient of its message.
BEGIN;
SELECT pg_temp.msg(30, 901, 'queued', 2, now() + interval '1 minute', to_number => '+14155550130'),
	pg_temp.msg(31, 902, 'sent', 1, finished_at => now(), to_number => '+14155550131');
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, duration_ms,
	http_status, twilio_code, twilio_message, transport_error, retry_after, delay, outcome,
	ambiguous, twilio_sid, request_id, request_duration) VALUES
	(30, 1, 'mon', now() - interval '2 minutes', 30000, NULL, NULL, NULL, 'Timeout was reached', NULL, '2 seconds', 'retry', true, NULL, NULL, NULL),
	(30, 2, 'mon', now() - interval '1 minute', 85, 429, 20429, 'Too Many Requests', NULL, '5', '5 seconds', 'rate_limited', false, NULL, 'RQ01', 0.012),
	(31, 1, 'mon', now() - interval '30 seconds', 120, 201, NULL, NULL, NULL, NULL, NULL, 'sent', false, 'SM00000000000000000000000000000031', 'RQ02', 0.095);
SELECT message_id, attempt, account, to_number, now() - started_at AS ago, duration_ms,
	http_status, twilio_code, twilio_message, transport_error, outcome, ambiguous, delay,
	retry_after, twilio_sid, request_id, request_duration
FROM twilio_outbox.attempt_log ORDER BY message_id, attempt;
ROLLBACK;

-- stats: attempts 30 seconds, 3 minutes, 30 minutes and 2 hours ago fall
-- into the 1 min, 5 min and 1 hour windows accordingly (the windows nest).
BEGIN;
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, duration_ms,
	http_status, outcome, request_duration)
SELECT 100 + n, 1, 'mon', now() - ago, dur * 1000 + 50, status, outcome::twilio_outbox.attempt_outcome, dur
FROM (VALUES
	(1, interval '30 seconds', 201, 'sent', 0.1),
	(2, interval '30 seconds', 201, 'sent', 0.2),
	(3, interval '30 seconds', 429, 'rate_limited', NULL),
	(4, interval '30 seconds', 500, 'retry', NULL),
	(5, interval '3 minutes', 201, 'sent', 0.3),
	(6, interval '3 minutes', 201, 'sent', 0.4),
	(7, interval '3 minutes', 503, 'retry', NULL),
	(8, interval '30 minutes', 201, 'sent', 0.5),
	(9, interval '30 minutes', 201, 'sent', 0.6),
	(10, interval '30 minutes', 201, 'sent', 0.7),
	(11, interval '2 hours', 201, 'sent', 9.0)
) AS t(n, ago, status, outcome, dur);
INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason, attempts, dead_at) VALUES
	(104, 'mon', '+14155550104', 'attempts_exhausted', 5, now() - interval '30 seconds'),
	(107, 'mon', '+14155550107', 'attempts_exhausted', 5, now() - interval '10 minutes');
-- 1 min: 4 attempts, 2 sent (100 and 200 ms at Twilio), one 429, one 500.
-- 5 min: 7 attempts, 4 sent, one 429, two 5xx.
-- 1 hour: 10 attempts, 7 sent; the attempt 2 hours ago is in no window.
SELECT "window", attempts, sent, retries, dead_letters, rate_limited, rate_limited_share,
	server_error_share, sent_per_second, p50_twilio_ms, p95_twilio_ms, p95_round_trip_ms
FROM twilio_outbox.stats;
ROLLBACK;
-- stats from status callbacks: the delivered, undelivered and failed
-- statuses a callback applied in each window (a read with no delivered
-- before it counts as delivered; a stale or unmatched one does not), and
-- p50/p95 seconds from the message's sent_at to its delivered callback.
BEGIN;
SELECT count(pg_temp.msg(n, 901, 'delivered', 1, finished_at => now())) AS messages
FROM generate_series(1, 8) n;
UPDATE twilio_outbox.messages SET sent_at = now() - interval '20 minutes',
	twilio_sid = 'SM' || lpad(id::text, 32, '0');
INSERT INTO twilio_outbox.status_events (message_sid, message_status, account, message_id, verdict, received_at)
SELECT 'SM' || lpad(m::text, 32, '0'), st, 'mon', m, v, now() - ago
FROM (VALUES
	(1, 'delivered', 'applied', interval '30 seconds'),	-- 19.5 min after sent
	(1, 'read', 'applied', interval '20 seconds'),		-- after delivered: not again
	(2, 'read', 'applied', interval '3 minutes'),		-- no delivered: delivered, 17 min
	(2, 'delivered', 'stale', interval '2 minutes'),
	(3, 'delivered', 'applied', interval '10 minutes'),	-- 10 min
	(4, 'delivered', 'applied', interval '2 hours'),		-- in no window
	(5, 'undelivered', 'applied', interval '30 seconds'),
	(6, 'failed', 'applied', interval '4 minutes'),
	(7, 'failed', 'stale', interval '30 seconds'),
	(8, 'sent', 'applied', interval '30 seconds'),
	(9, 'delivered', 'unmatched', interval '30 seconds')
) AS t(m, st, v, ago);
-- 1 min: 1 delivered (19.5 min), 1 undelivered.  5 min: 2 delivered (17
-- and 19.5 min), 1 undelivered, 1 failed.  1 hour: 3 delivered.
SELECT "window", delivered, undelivered, failed, p50_delivery_s, p95_delivery_s
FROM twilio_outbox.stats;
-- Its columns: those of 0.1, then the delivery ones.
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'twilio_outbox' AND table_name = 'stats'
ORDER BY ordinal_position;
ROLLBACK;
-- No attempts: zeros, and no latency rather than a made-up one.
SELECT "window", attempts, sent, rate_limited_share, sent_per_second, p50_twilio_ms
FROM twilio_outbox.stats;

-- health: one row per check.  With nothing going on, only the dispatcher
-- (none runs in this test) is a problem.  (webhooks_refused reads the
-- server's counters, which other tests add to: its section below.)
SELECT check_name, status, value, threshold, hint FROM twilio_outbox.health
WHERE check_name <> 'webhooks_refused';
-- Its columns: check_name, not "check" (a reserved word users had to quote).
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'twilio_outbox' AND table_name = 'health'
ORDER BY ordinal_position;

-- rate_limited_share over the last 5 minutes: above 5 % warns, above 10 %
-- (twice that) is critical.  A 429 older than 5 minutes does not count.
BEGIN;
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, http_status, outcome)
SELECT n, 1, 'mon', now() - interval '1 minute', 201, 'sent' FROM generate_series(1, 100) n;
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, http_status, outcome)
SELECT n, 1, 'mon', now() - interval '6 minutes', 429, 'rate_limited' FROM generate_series(1, 50) n;
CREATE TEMP TABLE shares (limited integer);
INSERT INTO shares VALUES (4), (5), (6), (10), (11);
CREATE FUNCTION pg_temp.rate_limited(k integer) RETURNS TABLE (status text, value text, hinted boolean)
LANGUAGE sql AS $$
	UPDATE twilio_outbox.attempts SET http_status = CASE WHEN message_id <= k THEN 429 ELSE 201 END
	WHERE started_at > now() - interval '5 minutes';
	SELECT status, value, hint IS NOT NULL FROM twilio_outbox.health WHERE check_name = 'rate_limited_share';
$$;
SELECT s.limited AS of_100, h.* FROM shares s, pg_temp.rate_limited(s.limited) h ORDER BY s.limited;
ROLLBACK;

-- failure_share over the last hour: messages finished dead, undelivered or
-- failed against all finished (canceled ones aside); above 2 % warns, above
-- 4 % is critical.  Failures finished more than an hour ago do not count.
BEGIN;
SELECT count(pg_temp.msg(n, 901, 'sent', 1, finished_at => now() - interval '10 minutes')) AS sent
FROM generate_series(1, 100) n;
SELECT count(pg_temp.msg(n, 901, 'dead', 1, finished_at => now() - interval '2 hours')) AS dead_long_ago
FROM generate_series(201, 250) n;
SELECT count(pg_temp.msg(n, 901, 'canceled', finished_at => now() - interval '10 minutes')) AS canceled
FROM generate_series(301, 350) n;
CREATE FUNCTION pg_temp.failures(k integer) RETURNS TABLE (status text, value text, hinted boolean)
LANGUAGE sql AS $$
	UPDATE twilio_outbox.messages
	SET state = CASE WHEN id > k THEN 'sent' WHEN id % 3 = 0 THEN 'dead'
					 WHEN id % 3 = 1 THEN 'undelivered' ELSE 'failed' END::twilio_outbox.message_state
	WHERE id <= 100;
	SELECT status, value, hint IS NOT NULL FROM twilio_outbox.health WHERE check_name = 'failure_share';
$$;
SELECT s.failed AS of_100, h.* FROM (VALUES (0), (2), (3), (4), (5)) s(failed), pg_temp.failures(s.failed) h
ORDER BY s.failed;
ROLLBACK;

-- A share needs twilio_outbox.health_min_count (20) attempts or messages
-- before it alarms: one dead message out of eight is reported, not alarmed.
BEGIN;
SELECT count(pg_temp.msg(n, 901, CASE WHEN n = 1 THEN 'dead' ELSE 'sent' END::twilio_outbox.message_state,
	1, finished_at => now() - interval '10 minutes')) AS finished
FROM generate_series(1, 8) n;
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, http_status, outcome)
SELECT n, 1, 'mon', now() - interval '1 minute', CASE WHEN n <= 3 THEN 429 ELSE 201 END,
	CASE WHEN n <= 3 THEN 'rate_limited' ELSE 'sent' END::twilio_outbox.attempt_outcome
FROM generate_series(1, 19) n;
SELECT check_name, status, value, threshold, hint FROM twilio_outbox.health
WHERE check_name IN ('failure_share', 'rate_limited_share') ORDER BY check_name;
-- The twentieth attempt (a 429 too) makes the 429 share count: 4 of 20.
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, http_status, outcome)
VALUES (20, 1, 'mon', now() - interval '1 minute', 429, 'rate_limited');
SELECT check_name, status, value, hint IS NOT NULL AS hinted FROM twilio_outbox.health
WHERE check_name = 'rate_limited_share';
ROLLBACK;

-- failure_share's hint when it alarms: the split, the most frequent codes
-- and the query to look with.
BEGIN;
SELECT count(pg_temp.msg(n, 901, 'sent', 1, finished_at => now() - interval '10 minutes')) AS sent
FROM generate_series(1, 20) n;
UPDATE twilio_outbox.messages SET state = 'undelivered', last_error_code = 30003 WHERE id IN (1, 2);
UPDATE twilio_outbox.messages SET state = 'failed', last_error_code = 30008 WHERE id = 3;
UPDATE twilio_outbox.messages SET state = 'dead', last_error_code = 21211 WHERE id = 4;
SELECT status, value, hint FROM twilio_outbox.health WHERE check_name = 'failure_share';
ROLLBACK;

-- no_final_status: of the messages sent between 2 hours and 1 hour ago
-- (health_final_status_after) with the account's status_callback_url and
-- no status_callback of their own, those still 'sent'.  Messages sent
-- less than an hour ago, or more than two, and those with their own
-- callback URL or of an account without one, do not count.
BEGIN;
UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/status' WHERE name = 'mon';
SELECT count(pg_temp.msg(n, 901, 'delivered', 1, finished_at => now() - interval '80 minutes')) AS delivered
FROM generate_series(1, 50) n;
UPDATE twilio_outbox.messages SET sent_at = now() - interval '90 minutes';
SELECT count(pg_temp.msg(n + 50, 901, 'sent', 1, finished_at => now() - interval '30 minutes')) AS sent_recently,
	count(pg_temp.msg(n + 100, 901, 'sent', 1, finished_at => now() - interval '3 hours')) AS sent_long_ago,
	count(pg_temp.msg(n + 200, 903, 'sent', 1, finished_at => now() - interval '90 minutes')) AS other_account,
	count(pg_temp.msg(n + 300, 902, 'sent', 1, finished_at => now() - interval '90 minutes')) AS own_callback
FROM generate_series(1, 10) n;
UPDATE twilio_outbox.messages SET sent_at = finished_at WHERE id > 50;
UPDATE twilio_outbox.messages SET status_callback = 'https://app.example.com/cb' WHERE id > 300;
SELECT status, value, threshold, hint FROM twilio_outbox.health WHERE check_name = 'no_final_status';
CREATE FUNCTION pg_temp.unconfirmed(k integer) RETURNS TABLE (status text, value text, hinted boolean)
LANGUAGE sql AS $$
	UPDATE twilio_outbox.messages SET state = CASE WHEN id <= k THEN 'sent' ELSE 'delivered' END::twilio_outbox.message_state
	WHERE id <= 50;
	SELECT status, value, hint IS NOT NULL FROM twilio_outbox.health WHERE check_name = 'no_final_status';
$$;
-- Of 50: above 2 % (1) warns, above 4 % (2) is critical.
SELECT s.k AS still_sent, h.* FROM (VALUES (0), (1), (2), (3), (50)) s(k), pg_temp.unconfirmed(s.k) h ORDER BY s.k;
SELECT replace(hint, date_trunc('second', now() - interval '90 minutes')::text, '<90 minutes ago>') AS hint
FROM twilio_outbox.health WHERE check_name = 'no_final_status';
ROLLBACK;
-- 0 turns it off.
ALTER SYSTEM SET twilio_outbox.health_final_status_after = 0;
SELECT pg_reload_conf();
SELECT 1 AS waited FROM pg_sleep(0.5);
SELECT 1 AS waited FROM pg_sleep(CASE WHEN current_setting('twilio_outbox.health_final_status_after') = '0' THEN 0 ELSE 3 END);
SELECT status, value, threshold, hint FROM twilio_outbox.health WHERE check_name = 'no_final_status';
ALTER SYSTEM RESET twilio_outbox.health_final_status_after;
SELECT pg_reload_conf();
SELECT 1 AS waited FROM pg_sleep(0.5);
SELECT 1 AS waited FROM pg_sleep(CASE WHEN current_setting('twilio_outbox.health_final_status_after') = '1h' THEN 0 ELSE 3 END);
SELECT threshold FROM twilio_outbox.health WHERE check_name = 'no_final_status';

-- webhooks_refused: the server's webhook counters (other tests add to
-- them, so only their form is shown).  A refusal in the last hour warns.
SELECT try($$SELECT twilio_outbox.receive_status('https://hooks.example.com/status',
	'AccountSid=AC000000000000000000000000000000ff&MessageSid=SM00000000000000000000000000000001&MessageStatus=delivered',
	'bm90IGEgc2lnbmF0dXJl')$$) AS refused;
SELECT status, value ~ '^[1-9][0-9]* refused \(bad_signature [0-9]+, unknown_account [1-9][0-9]*, no_auth_token [0-9]+, malformed [0-9]+\), [0-9]+ accepted since the server started, the last refusal at ' AS value_form,
	threshold, hint ~ '^Webhooks were refused, the last at .*bad_signature: the URL passed to receive_status' AS hint_form
FROM twilio_outbox.health WHERE check_name = 'webhooks_refused';

-- queue_growing: the queue's depth 5 minutes ago, 2.5 minutes ago and now,
-- from when messages were created and finished.  Strictly growing warns.
BEGIN;
SELECT pg_temp.msg(1, 901, 'queued', created_at => now() - interval '10 minutes'),
	pg_temp.msg(2, 901, 'queued', created_at => now() - interval '4 minutes'),
	pg_temp.msg(3, 902, 'sending', 1, created_at => now() - interval '1 minute');
SELECT status, value, threshold, hint FROM twilio_outbox.health WHERE check_name = 'queue_growing';
-- Message 2 was sent a minute ago: 1 -> 2 -> 2 is not growing.
UPDATE twilio_outbox.messages SET state = 'sent', finished_at = now() - interval '1 minute' WHERE id = 2;
SELECT status, value, hint FROM twilio_outbox.health WHERE check_name = 'queue_growing';
-- And 1 -> 2 -> 1 neither.
UPDATE twilio_outbox.messages SET state = 'sent', finished_at = now() - interval '30 seconds' WHERE id = 3;
SELECT status, value, hint FROM twilio_outbox.health WHERE check_name = 'queue_growing';
ROLLBACK;

-- oldest_due_age: the longest a due message has waited; above
-- twilio_outbox.health_due_age (5 minutes) warns, above twice that is
-- critical.  A message scheduled for later is not due.
BEGIN;
SELECT pg_temp.msg(1, 901, 'queued', next_attempt_at => now() + interval '1 hour');
SELECT status, value, threshold, hint IS NOT NULL AS hinted
FROM twilio_outbox.health WHERE check_name = 'oldest_due_age';
CREATE FUNCTION pg_temp.due_for(age interval) RETURNS TABLE (status text, value text, hinted boolean)
LANGUAGE sql AS $$
	UPDATE twilio_outbox.messages SET next_attempt_at = now() - age WHERE id = 1;
	SELECT status, value, hint IS NOT NULL FROM twilio_outbox.health WHERE check_name = 'oldest_due_age';
$$;
SELECT a.age AS due_for, h.* FROM (VALUES (interval '90 seconds'), ('4 minutes'), ('5 minutes'),
	('6 minutes'), ('10 minutes'), ('11 minutes')) a(age), pg_temp.due_for(a.age) h
ORDER BY a.age;
SELECT hint FROM twilio_outbox.health WHERE check_name = 'oldest_due_age';
COMMIT;
-- The threshold is a server setting (reloaded, not SET per session).
SET twilio_outbox.health_due_age = '1min';
ALTER SYSTEM SET twilio_outbox.health_due_age = '1min';
SELECT pg_reload_conf();
SELECT 1 AS waited FROM pg_sleep(0.5);
SELECT 1 AS waited FROM pg_sleep(CASE WHEN current_setting('twilio_outbox.health_due_age') = '1min' THEN 0 ELSE 3 END);
SELECT a.age AS due_for, h.* FROM (VALUES (interval '50 seconds'), ('90 seconds'), ('4 minutes')) a(age),
	pg_temp.due_for(a.age) h ORDER BY a.age;
SELECT threshold FROM twilio_outbox.health WHERE check_name = 'oldest_due_age';
ALTER SYSTEM RESET twilio_outbox.health_due_age;
SELECT pg_reload_conf();
SELECT 1 AS waited FROM pg_sleep(0.5);
SELECT 1 AS waited FROM pg_sleep(CASE WHEN current_setting('twilio_outbox.health_due_age') = '5min' THEN 0 ELSE 3 END);
SELECT threshold FROM twilio_outbox.health WHERE check_name = 'oldest_due_age';
TRUNCATE twilio_outbox.messages;

-- ambiguous: messages waiting for an operator's decision warn, naming
-- them and what to do; waiting more than an hour is critical.
SELECT status, value, threshold, hint FROM twilio_outbox.health WHERE check_name = 'ambiguous';
BEGIN;
SELECT pg_temp.msg(41, 901, 'ambiguous', 1), pg_temp.msg(42, 902, 'ambiguous', 1),
	pg_temp.msg(43, 902, 'queued', 1);
UPDATE twilio_outbox.messages SET updated_at = now() - interval '10 minutes' WHERE id IN (41, 42);
SELECT status, value, threshold,
	replace(hint, date_trunc('second', now() - interval '10 minutes')::text, '<10 minutes ago>') AS hint
FROM twilio_outbox.health WHERE check_name = 'ambiguous';
UPDATE twilio_outbox.messages SET updated_at = now() - interval '61 minutes' WHERE id = 41;
SELECT status, value FROM twilio_outbox.health WHERE check_name = 'ambiguous';
ROLLBACK;

-- paused: a paused account (or sender) warns, naming it, until when and why.
-- A pause that has run out does not count.
SELECT twilio_outbox.pause_account('mon', reason => 'carrier outage');
-- (pause_account refuses an end in the past: a pause that ran out is made by hand)
UPDATE twilio_outbox.accounts SET paused_until = now() - interval '1 minute', pause_reason = 'over'
WHERE name = 'mon2';
SELECT status, value, threshold, hint FROM twilio_outbox.health WHERE check_name = 'paused';
SELECT twilio_outbox.resume_account('mon');
SELECT twilio_outbox.resume_account('mon2');
SELECT status, value, hint FROM twilio_outbox.health WHERE check_name = 'paused';

-- worker: always exactly one row; here no dispatcher ever ran, so it is not
-- running and has no figures (a dispatcher that ran and stopped leaves its
-- figures, with running false: a TAP test).  The extension's version is
-- there whether or not a dispatcher runs.
SELECT count(*) AS worker_rows FROM twilio_outbox.worker;
SELECT count(*) AS status_rows FROM twilio_outbox.worker_status();
SELECT running, pid, library_version, extension_version, started_at, stopped_at, held_until,
	supervisor_seen_at, in_flight, sent_since_start, dead_since_start, last_error,
	accounts, accounts_unusable
FROM twilio_outbox.worker;
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'twilio_outbox' AND table_name = 'worker'
ORDER BY ordinal_position;
-- How many dispatchers this database has (twilio_outbox.dispatchers_per_database,
-- 1 here) and how many run; worker_dispatchers: a row for each, here none
-- ever ran (two dispatchers: TAP test 021).
SELECT dispatchers, dispatchers_running FROM twilio_outbox.worker;
SELECT dispatcher, running, pid, library_version, started_at, stopped_at, senders,
	in_flight, sent_since_start, last_error
FROM twilio_outbox.worker_dispatchers;
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'twilio_outbox' AND table_name = 'worker_dispatchers'
ORDER BY ordinal_position;
-- The library this session runs (a dispatcher started now runs the same).
SELECT twilio_outbox.library_version();
-- worker_accounts: per account caps in use and why the dispatcher cannot
-- use an account; none without a dispatcher.
SELECT count(*) AS account_rows FROM twilio_outbox.worker_accounts;
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'twilio_outbox' AND table_name = 'worker_accounts'
ORDER BY ordinal_position;
-- Without a dispatcher, the checks that need one say so and do not alarm
-- twice: worker_running is the critical one.
SELECT check_name, status, value, threshold, hint IS NOT NULL AS hinted FROM twilio_outbox.health
WHERE check_name IN ('worker_running', 'accounts_unusable', 'library_version') ORDER BY check_name;

-- metrics: the same figures as Prometheus samples (metric, labels, value).
BEGIN;
SELECT pg_temp.msg(1, 901, 'queued', next_attempt_at => now() - interval '10 minutes'),
	pg_temp.msg(2, 901, 'queued', next_attempt_at => now() + interval '1 hour'),
	pg_temp.msg(3, 902, 'queued', 2, now() + interval '20 seconds'),
	pg_temp.msg(4, 903, 'sending', 1),
	pg_temp.msg(5, 903, 'ambiguous', 1);
INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason, attempts, dead_at, requeued_at) VALUES
	(6, 'mon', '+14155550106', 'rejected', 1, now() - interval '1 minute', NULL),
	(7, 'mon', '+14155550107', 'rejected', 1, now() - interval '2 hours', NULL),
	(8, 'mon', '+14155550108', 'rejected', 1, now() - interval '3 hours', now());
SELECT metric, labels, value FROM twilio_outbox.metrics
WHERE metric NOT LIKE 'twilio_outbox_health%' AND metric NOT LIKE 'twilio_outbox_webhooks%'
ORDER BY metric, labels::text;
-- One sample per health check, 0 ok, 1 warning, 2 critical, as the view says.
SELECT m.labels ->> 'check' AS check_name, m.value, h.status
FROM twilio_outbox.metrics m JOIN twilio_outbox.health h ON h.check_name = m.labels ->> 'check'
WHERE m.metric = 'twilio_outbox_health_status' AND m.labels ->> 'check' <> 'webhooks_refused' ORDER BY 1;
ROLLBACK;
-- A webhook counter per verdict, counting since the server started.
SELECT labels, value >= 0 AS counted FROM twilio_outbox.metrics
WHERE metric = 'twilio_outbox_webhooks_total' ORDER BY labels::text;
-- Names as Prometheus wants them: the prefix, lower case, counters (and
-- only they) end in _total, and no sample without a value.
SELECT DISTINCT metric FROM twilio_outbox.metrics
WHERE metric !~ '^twilio_outbox_[a-z0-9_]+$' OR value IS NULL OR labels IS NULL;
-- A query for some metrics runs only the views behind them (the exporter
-- asks for one set of labels at a time): whether its plan scans a table or
-- function at run time (the other metrics' parts are never executed).
CREATE FUNCTION pg_temp.reads(q text, rel text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	line text;
BEGIN
	FOR line IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ' || q LOOP
		IF line !~ 'never executed' AND line ~ ('Scan( using \S+)? on ' || rel || '( |$)') THEN
			RETURN true;
		END IF;
	END LOOP;
	RETURN false;
END
$$;
SELECT q, pg_temp.reads(q, 'attempts') AS attempts, pg_temp.reads(q, 'messages') AS messages,
	pg_temp.reads(q, 'dead_letters') AS dead_letters, pg_temp.reads(q, 'worker_status') AS worker_status,
	pg_temp.reads(q, 'webhook_counters') AS webhook_counters
FROM (VALUES
	($$SELECT * FROM twilio_outbox.metrics WHERE metric = 'twilio_outbox_webhooks_total'$$),
	($$SELECT * FROM twilio_outbox.metrics WHERE metric = 'twilio_outbox_backlog_messages'$$),
	($$SELECT * FROM twilio_outbox.metrics WHERE metric IN ('twilio_outbox_worker_up', 'twilio_outbox_dead_letters_open')$$),
	($$SELECT * FROM twilio_outbox.metrics WHERE metric LIKE 'twilio_outbox_stats%'$$),
	($$SELECT * FROM twilio_outbox.metrics$$)
) AS t(q);

-- The monitoring role reads every view, but no message content, no
-- credential, and changes nothing.
CREATE ROLE mon_viewer LOGIN IN ROLE twilio_outbox_monitor;
SET ROLE mon_viewer;
SELECT try(sql) AS mon_viewer, sql FROM (VALUES
	($$SELECT count(*) FROM twilio_outbox.backlog$$),
	($$SELECT count(*) FROM twilio_outbox.dead_letter_queue$$),
	($$SELECT count(*) FROM twilio_outbox.attempt_log$$),
	($$SELECT count(*) FROM twilio_outbox.stats$$),
	($$SELECT count(*) FROM twilio_outbox.health$$),
	($$SELECT count(*) FROM twilio_outbox.worker$$),
	($$SELECT count(*) FROM twilio_outbox.worker_accounts$$),
	($$SELECT count(*) FROM twilio_outbox.worker_status()$$),
	($$SELECT count(*) FROM twilio_outbox.metrics$$),
	($$SELECT twilio_outbox.stop_worker(hold => '1 hour')$$),
	($$SELECT twilio_outbox.schedule_supervisor()$$),
	($$SELECT twilio_outbox.schedule_supervisor_sql()$$),
	($$SELECT body FROM twilio_outbox.messages$$),
	($$SELECT content_variables FROM twilio_outbox.messages$$),
	($$SELECT * FROM twilio_outbox.messages$$),
	($$SELECT secret FROM twilio_outbox.account_credentials$$),
	($$SELECT account FROM twilio_outbox.account_credentials$$),
	($$SELECT twilio_outbox.cancel(1)$$),
	($$SELECT twilio_outbox.requeue(ARRAY[1])$$),
	($$SELECT twilio_outbox.resolve_ambiguous(1)$$),
	($$SELECT twilio_outbox.pause_account('mon')$$),
	($$CALL twilio_outbox.purge()$$),
	($$SELECT twilio_outbox.start_worker()$$)
) AS t(sql);
RESET ROLE;
-- The exporter's role (twilio_outbox_metrics) reads the metrics view and
-- nothing else.
CREATE ROLE mon_scraper LOGIN IN ROLE twilio_outbox_metrics;
SET ROLE mon_scraper;
SELECT try(sql) AS mon_scraper, sql FROM (VALUES
	($$SELECT count(*) > 0 FROM twilio_outbox.metrics$$),
	($$SELECT count(*) FROM twilio_outbox.health$$),
	($$SELECT count(*) FROM twilio_outbox.stats$$),
	($$SELECT count(*) FROM twilio_outbox.backlog$$),
	($$SELECT to_number FROM twilio_outbox.messages$$),
	($$SELECT count(*) FROM twilio_outbox.attempts$$),
	($$SELECT count(*) FROM twilio_outbox.status_events$$),
	($$SELECT name FROM twilio_outbox.accounts$$),
	($$SELECT twilio_outbox.stop_worker()$$)
) AS t(sql);
RESET ROLE;
DROP ROLE mon_scraper;
-- No view has a column for a message body, a secret, template variables or
-- request parameters, and every view of the schema is checked.
SELECT count(*) AS views FROM information_schema.views WHERE table_schema = 'twilio_outbox';
SELECT c.table_name, c.column_name
FROM information_schema.columns c
JOIN information_schema.views v USING (table_schema, table_name)
WHERE c.table_schema = 'twilio_outbox'
  AND c.column_name IN ('body', 'secret', 'secret_env', 'secret_file', 'content_variables', 'params');

DROP ROLE mon_viewer;
