-- A message sent at its first attempt keeps that attempt on its own row
-- (first_* columns, 47_row_versions.sql) rather than in
-- twilio_outbox.attempts.  Every reader still sees each attempt once:
-- attempt_log, attempt_rows, stats, health, and purge takes it with its
-- message.  Attempt rows from 0.1 (first_* NULL) show once after the
-- update.  No dispatcher runs here (TAP 037 drains through the stand-in):
-- the rows it would write are written directly, at times relative to
-- now(), in one transaction per section.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS outbox_row_versions;
CREATE DATABASE outbox_row_versions;
\c outbox_row_versions
SET client_min_messages = warning;
CREATE EXTENSION twilio_outbox VERSION '0.1';
RESET client_min_messages;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default) VALUES
	('main', 'AC0123456789abcdef0123456789abcdef', 'http://127.0.0.1:8080', true);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default) VALUES
	('main', '+15005550006', 'long_code', true);
-- A 0.1 message sent at its first attempt, with its attempt row.
SELECT twilio_enqueue('+14155550100', 'sent under 0.1') AS old_sent \gset
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1,
	twilio_sid = 'SM00000000000000000000000000000001', sent_at = now(), finished_at = now()
WHERE id = :old_sent;
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, duration_ms,
	http_status, outcome, twilio_sid, request_id, concurrent_requests, request_duration, worker_pid)
VALUES (:old_sent, 1, 'main', now() - interval '1 second', 12.5, 201, 'sent',
	'SM00000000000000000000000000000001', 'RQ0001', 3, 0.02, 4242);

ALTER EXTENSION twilio_outbox UPDATE TO '0.2';

-- The new columns are empty on 0.1 rows: the old attempt shows once.
SELECT message_id = :old_sent AS old_sent, attempt, outcome, http_status, twilio_sid, request_id
FROM twilio_outbox.attempt_log;
SELECT count(*) AS attempt_rows, count(id) AS with_attempt_row FROM twilio_outbox.attempt_rows;
SELECT "window", attempts, sent, retries FROM twilio_outbox.stats ORDER BY "window";

-- A message sent at its first attempt as 0.2 records it: the fields on the
-- message, no attempt row.  One transaction, so now() is the rows' time.
BEGIN;
SELECT twilio_enqueue('+14155550101', 'sent at once') AS kept \gset
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1,
	twilio_sid = 'SM00000000000000000000000000000002', sent_at = now(), finished_at = now(),
	first_started_at = now() - interval '5 seconds', first_duration_ms = 40.25,
	first_http_status = 201, first_request_id = 'RQ0002', first_concurrent_requests = 7,
	first_request_duration = 0.035, first_worker_pid = 4343
WHERE id = :kept;
-- A retried message: every attempt is a row, as before.
SELECT twilio_enqueue('+14155550102', 'sent at the second attempt') AS retried \gset
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 2, failures = 1,
	twilio_sid = 'SM00000000000000000000000000000003', sent_at = now(), finished_at = now()
WHERE id = :retried;
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, duration_ms,
	http_status, twilio_code, outcome, delay, request_id, worker_pid)
VALUES (:retried, 1, 'main', now() - interval '20 seconds', 30, 429, 20429, 'rate_limited',
	interval '2 seconds', 'RQ0003', 4343),
	(:retried, 2, 'main', now() - interval '3 seconds', 20, 201, NULL, 'sent',
	NULL, 'RQ0004', 4343);
UPDATE twilio_outbox.attempts SET twilio_sid = 'SM00000000000000000000000000000003'
WHERE message_id = :retried AND attempt = 2;

-- attempt_log: each attempt once, the kept one with all its fields (its
-- SID the message's, outcome sent, nothing else implied).
SELECT message_id - :old_sent AS msg, attempt, account, to_number, started_at = now() - interval '5 seconds' AS started_5s_ago,
	duration_ms, http_status, twilio_code, twilio_message, transport_error, outcome,
	ambiguous, delay, retry_after, twilio_sid, request_id, concurrent_requests, request_duration
FROM twilio_outbox.attempt_log ORDER BY message_id, attempt;
-- attempt_rows: twilio_outbox.attempts's columns, the kept attempt without id.
SELECT message_id - :old_sent AS msg, attempt, id IS NULL AS no_attempt_row, outcome, worker_pid
FROM twilio_outbox.attempt_rows ORDER BY message_id, attempt;
SELECT count(*) AS attempt_table_rows FROM twilio_outbox.attempts;
-- A filter on the message reaches the kept attempt by the messages' key.
SELECT count(*) AS kept_by_id FROM twilio_outbox.attempt_log WHERE message_id = :kept;
-- README's "not the common case" query: the kept attempt is not in it.
SELECT message_id - :old_sent AS msg, attempt, outcome FROM twilio_outbox.attempt_log
WHERE outcome <> 'sent' OR attempt > 1 ORDER BY message_id, attempt;

-- stats: four attempts in the last minute, three sent, one 429; the kept
-- attempt's Twilio and round-trip times count.
SELECT "window", attempts, sent, retries, rate_limited, rate_limited_share,
	p50_twilio_ms, p95_round_trip_ms
FROM twilio_outbox.stats ORDER BY "window";
-- health: one 429 in four attempts (too few to judge below health_min_count).
SELECT check_name, status, value FROM twilio_outbox.health WHERE check_name = 'rate_limited_share';
COMMIT;

-- A kept attempt older than the window is out of it, as an attempt row
-- would be, even though its message finished inside it.
UPDATE twilio_outbox.messages SET first_started_at = now() - interval '2 minutes' WHERE id = :kept;
SELECT "window", attempts, sent FROM twilio_outbox.stats ORDER BY "window";

-- The window reads messages through messages_finished, not every message.
SET enable_seqscan = off;
EXPLAIN (COSTS OFF)
SELECT count(*) FROM twilio_outbox.messages m
WHERE m.finished_at >= now() - interval '5 minutes'
  AND m.first_started_at >= now() - interval '5 minutes';
RESET enable_seqscan;

-- The monitoring role reads the kept attempts, through the views and the
-- message's columns alike.
SET client_min_messages = warning;
DROP ROLE IF EXISTS rv_viewer;
RESET client_min_messages;
CREATE ROLE rv_viewer IN ROLE twilio_outbox_monitor;
SET ROLE rv_viewer;
SELECT count(*) AS logged FROM twilio_outbox.attempt_log;
SELECT count(*) AS rows_seen FROM twilio_outbox.attempt_rows;
SELECT first_request_id FROM twilio_outbox.messages WHERE id = :kept;
RESET ROLE;

-- Purge (the batches twilio_outbox.purge runs): attempt rows older than
-- the cutoff go whatever their message; a kept attempt goes with its
-- message, as do the other attempt rows of a purged message.
SELECT twilio_outbox.purge_attempts_batch(now() - interval '15 seconds', 100) AS old_attempt_rows_purged;
SELECT message_id - :old_sent AS msg, attempt FROM twilio_outbox.attempt_log ORDER BY message_id, attempt;
SELECT twilio_outbox.purge_messages_batch(now() + interval '1 minute', 100) AS messages_purged;
SELECT count(*) AS attempts_left FROM twilio_outbox.attempt_log;
SELECT count(*) AS attempt_table_rows_left FROM twilio_outbox.attempts;

\c postgres
SET client_min_messages = warning;
DROP DATABASE outbox_row_versions;
DROP ROLE rv_viewer;
