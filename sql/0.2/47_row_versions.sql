/* fewer row versions per message (issue 14; src/queue.c outbox_record) */

/*
 * A message sent at its first attempt (the common case) used to cost three
 * heap tuples: the claim's update, the record's update and an attempt row
 * (with its three index entries).  The record rewrites the message row
 * anyway, so such a first attempt is kept on the message instead, in the
 * columns below, and twilio_outbox.attempts gets no row for it.  Only an
 * attempt that is all that can be implied is kept so: attempt 1, outcome
 * sent, not ambiguous, with a SID and no Twilio code, message, transport
 * error, Retry-After or delay.  Its twilio_sid is the message's, its outcome
 * sent, its attempt 1.  Every other attempt (a retried message's, a failed
 * one's, a lost one's, reconciliation's) is an attempt row as before.
 *
 * The columns are nullable and without default, so adding them to a live
 * 0.1 table is instant and its rows keep NULL: their attempts are already
 * rows of twilio_outbox.attempts and are shown once.
 *
 * Readers see both through twilio_outbox.attempt_log (below) and the
 * windowed views (stats, health: 50_monitoring.sql), which read the
 * message's first_started_at through messages_finished (a first attempt
 * starts before its message finishes, and finished_at only moves later).
 */
ALTER TABLE twilio_outbox.messages
	ADD COLUMN first_started_at timestamptz,
	ADD COLUMN first_duration_ms double precision,
	ADD COLUMN first_http_status integer,
	ADD COLUMN first_request_id text,
	ADD COLUMN first_concurrent_requests integer,
	ADD COLUMN first_request_duration double precision,
	ADD COLUMN first_worker_pid integer;

COMMENT ON COLUMN twilio_outbox.messages.first_started_at IS 'set when attempt 1 sent the message and is kept here rather than in twilio_outbox.attempts (twilio_outbox.attempt_rows shows both)';

/*
 * Every attempt, with twilio_outbox.attempts's columns: its rows, and the
 * first attempts kept on their messages (id NULL: they have no attempt
 * row).  A filter on message_id reaches the messages by their key.
 */
CREATE VIEW twilio_outbox.attempt_rows AS
SELECT a.id, a.message_id, a.attempt, a.account, a.started_at, a.duration_ms,
	a.http_status, a.twilio_code, a.twilio_message, a.transport_error,
	a.retry_after, a.delay, a.outcome, a.ambiguous, a.twilio_sid,
	a.request_id, a.concurrent_requests, a.request_duration, a.worker_pid
FROM twilio_outbox.attempts a
UNION ALL
SELECT NULL::bigint, m.id, 1, m.account, m.first_started_at, m.first_duration_ms,
	m.first_http_status, NULL::integer, NULL::text, NULL::text,
	NULL::text, NULL::interval, 'sent'::twilio_outbox.attempt_outcome, false, m.twilio_sid,
	m.first_request_id, m.first_concurrent_requests, m.first_request_duration, m.first_worker_pid
FROM twilio_outbox.messages m
WHERE m.first_started_at IS NOT NULL;
COMMENT ON VIEW twilio_outbox.attempt_rows IS 'Every HTTP attempt with twilio_outbox.attempts''s columns: its rows and the first attempts kept on their messages (id NULL)';

/* 0.1's columns and meaning: every attempt once. */
CREATE OR REPLACE VIEW twilio_outbox.attempt_log AS
SELECT a.message_id, a.attempt, a.account, m.to_number, a.started_at, a.duration_ms,
	a.http_status, a.twilio_code, a.twilio_message, a.transport_error, a.outcome,
	a.ambiguous, a.delay, a.retry_after, a.twilio_sid, a.request_id,
	a.concurrent_requests, a.request_duration
FROM twilio_outbox.attempts a
LEFT JOIN twilio_outbox.messages m ON m.id OPERATOR(pg_catalog.=) a.message_id
UNION ALL
SELECT m.id, 1, m.account, m.to_number, m.first_started_at, m.first_duration_ms,
	m.first_http_status, NULL::integer, NULL::text, NULL::text,
	'sent'::twilio_outbox.attempt_outcome, false, NULL::interval, NULL::text,
	m.twilio_sid, m.first_request_id, m.first_concurrent_requests, m.first_request_duration
FROM twilio_outbox.messages m
WHERE m.first_started_at IS NOT NULL;
