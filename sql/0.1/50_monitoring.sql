/* ---------- monitoring ---------- */

CREATE FUNCTION twilio_outbox.worker_status(
	OUT pid integer, OUT started_at timestamptz, OUT in_flight integer,
	OUT sent bigint, OUT dead bigint, OUT last_error text, OUT last_error_at timestamptz)
RETURNS SETOF record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_status';

/* What is waiting, per account and sender.  Reads only the partial indexes' rows. */
CREATE VIEW twilio_outbox.backlog AS
WITH live AS (
	SELECT m.account, m.sender_id, m.state, m.attempts, m.next_attempt_at
	FROM twilio_outbox.messages m WHERE m.state = 'queued'
	UNION ALL
	SELECT m.account, m.sender_id, m.state, m.attempts, m.next_attempt_at
	FROM twilio_outbox.messages m WHERE m.state = 'sending'
	UNION ALL
	SELECT m.account, m.sender_id, m.state, m.attempts, m.next_attempt_at
	FROM twilio_outbox.messages m WHERE m.state = 'ambiguous'
)
SELECT l.account,
	coalesce(s.from_number, s.messaging_service_sid) AS sender,
	pg_catalog.count(*) FILTER (WHERE l.state = 'queued'
		AND l.next_attempt_at <= pg_catalog.now()) AS due_now,
	pg_catalog.count(*) FILTER (WHERE l.state = 'queued'
		AND l.next_attempt_at > pg_catalog.now() AND l.attempts = 0) AS scheduled,
	pg_catalog.count(*) FILTER (WHERE l.state = 'queued'
		AND l.next_attempt_at > pg_catalog.now() AND l.attempts > 0) AS retrying,
	pg_catalog.sum(l.attempts) FILTER (WHERE l.state = 'queued'
		AND l.next_attempt_at > pg_catalog.now() AND l.attempts > 0) AS retry_attempts_so_far,
	pg_catalog.min(l.next_attempt_at) FILTER (WHERE l.state = 'queued'
		AND l.next_attempt_at > pg_catalog.now() AND l.attempts > 0) AS next_retry_at,
	pg_catalog.count(*) FILTER (WHERE l.state = 'sending') AS in_flight,
	pg_catalog.count(*) FILTER (WHERE l.state = 'ambiguous') AS ambiguous,
	pg_catalog.date_trunc('second', pg_catalog.now() - pg_catalog.min(l.next_attempt_at)
		FILTER (WHERE l.state = 'queued'
			AND l.next_attempt_at <= pg_catalog.now())) AS oldest_due_age,
	CASE WHEN GREATEST(a.paused_until, s.paused_until) > pg_catalog.now()
		 THEN GREATEST(a.paused_until, s.paused_until) END AS paused_until
FROM live l
LEFT JOIN twilio_outbox.senders s ON s.id = l.sender_id
LEFT JOIN twilio_outbox.accounts a ON a.name = l.account
GROUP BY l.account, s.from_number, s.messaging_service_sid, a.paused_until, s.paused_until;
COMMENT ON VIEW twilio_outbox.backlog IS 'Messages waiting, per account and sender: due now (retries included), scheduled for later, waiting for a retry, in flight, ambiguous; paused_until when the account or sender is paused';

/* Dead letters with what they were about (never the body). */
CREATE VIEW twilio_outbox.dead_letter_queue AS
SELECT d.message_id, d.account, d.to_number,
	CASE WHEN m.id IS NULL THEN NULL
		 WHEN m.content_sid IS NOT NULL THEN 'template'
		 WHEN m.media_urls IS NOT NULL THEN 'MMS'
		 ELSE 'SMS' END AS kind,
	m.segments, d.reason, d.http_status, d.twilio_code, d.error_message, d.attempts,
	d.dead_at, d.requeued_at, d.requeued_by, m.state AS message_state
FROM twilio_outbox.dead_letters d
LEFT JOIN twilio_outbox.messages m ON m.id = d.message_id;
COMMENT ON VIEW twilio_outbox.dead_letter_queue IS 'Dead letters: to whom, why, after how many attempts, and whether re-queued';

CREATE VIEW twilio_outbox.attempt_log AS
SELECT a.message_id, a.attempt, a.account, m.to_number, a.started_at, a.duration_ms,
	a.http_status, a.twilio_code, a.twilio_message, a.transport_error, a.outcome,
	a.ambiguous, a.delay, a.retry_after, a.twilio_sid, a.request_id,
	a.concurrent_requests, a.request_duration
FROM twilio_outbox.attempts a
LEFT JOIN twilio_outbox.messages m ON m.id = a.message_id;
COMMENT ON VIEW twilio_outbox.attempt_log IS 'Every HTTP attempt: outcome, Twilio code, delay chosen, duration, Twilio-* headers';

/* Throughput and errors over the last minute, five minutes and hour. */
CREATE VIEW twilio_outbox.stats AS
WITH w(name, span) AS (
	VALUES ('1 min', interval '1 minute'), ('5 min', interval '5 minutes'), ('1 hour', interval '1 hour')
)
SELECT w.name AS "window",
	pg_catalog.count(a.id) AS attempts,
	pg_catalog.count(a.id) FILTER (WHERE a.outcome = 'sent') AS sent,
	pg_catalog.count(a.id) FILTER (WHERE a.outcome = 'retry') AS retries,
	(SELECT pg_catalog.count(*) FROM twilio_outbox.dead_letters d
	 WHERE d.dead_at >= pg_catalog.now() - w.span) AS dead_letters,
	pg_catalog.count(a.id) FILTER (WHERE a.http_status = 429) AS rate_limited,
	pg_catalog.round(coalesce(pg_catalog.count(a.id) FILTER (WHERE a.http_status = 429)::numeric
		/ NULLIF(pg_catalog.count(a.id), 0), 0), 4) AS rate_limited_share,
	pg_catalog.round(coalesce(pg_catalog.count(a.id) FILTER (WHERE a.http_status >= 500)::numeric
		/ NULLIF(pg_catalog.count(a.id), 0), 0), 4) AS server_error_share,
	pg_catalog.round(pg_catalog.count(a.id) FILTER (WHERE a.outcome = 'sent')::numeric
		/ pg_catalog.date_part('epoch', w.span)::numeric, 3) AS sent_per_second,
	pg_catalog.round((pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY a.request_duration)
		* 1000)::numeric, 1) AS p50_twilio_ms,
	pg_catalog.round((pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY a.request_duration)
		* 1000)::numeric, 1) AS p95_twilio_ms,
	pg_catalog.round((pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms))::numeric, 1) AS p95_round_trip_ms
FROM w
LEFT JOIN twilio_outbox.attempts a ON a.started_at >= pg_catalog.now() - w.span
GROUP BY w.name, w.span
ORDER BY w.span;
COMMENT ON VIEW twilio_outbox.stats IS 'Attempts, sends, retries, dead letters, 429 and 5xx shares, rate and Twilio latency over 1 min, 5 min, 1 hour';

/*
 * One row per check, with the threshold it is held to (settings
 * twilio_outbox.health_*) and what to do about it.
 */
CREATE VIEW twilio_outbox.health AS
WITH settings AS (
	SELECT coalesce(pg_catalog.current_setting('twilio_outbox.health_rate_limited_share', true), '0.05')::numeric AS rl,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_failure_share', true), '0.02')::numeric AS fail,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_due_age', true), '300s')::interval AS due_age
), recent AS (
	SELECT pg_catalog.count(*) AS attempts,
		   pg_catalog.count(*) FILTER (WHERE a.http_status = 429) AS limited
	FROM twilio_outbox.attempts a
	WHERE a.started_at >= pg_catalog.now() - interval '5 minutes'
), finished AS (
	SELECT pg_catalog.count(*) AS total,
		   pg_catalog.count(*) FILTER (WHERE m.state = ANY (ARRAY['dead', 'undelivered', 'failed']::twilio_outbox.message_state[])) AS failed
	FROM twilio_outbox.messages m
	WHERE m.finished_at >= pg_catalog.now() - interval '1 hour'
	  AND m.state <> 'canceled'
), depth AS (
	/* depth 5 and 2.5 minutes ago and now: created, due (send_after) and not yet finished */
	SELECT t.at, pg_catalog.count(m.id) AS n
	FROM (VALUES (pg_catalog.now() - interval '5 minutes'),
				 (pg_catalog.now() - interval '150 seconds'),
				 (pg_catalog.now())) AS t(at)
	LEFT JOIN (
		SELECT m.id, m.created_at, m.send_after, m.finished_at FROM twilio_outbox.messages m
		WHERE m.state = 'queued'
		UNION ALL
		SELECT m.id, m.created_at, m.send_after, m.finished_at FROM twilio_outbox.messages m
		WHERE m.state = 'sending'
		UNION ALL
		SELECT m.id, m.created_at, m.send_after, m.finished_at FROM twilio_outbox.messages m
		WHERE m.finished_at > pg_catalog.now() - interval '5 minutes'
	) m ON m.created_at <= t.at
		AND (m.send_after IS NULL OR m.send_after <= t.at)
		AND (m.finished_at IS NULL OR m.finished_at > t.at)
	GROUP BY t.at
), growth AS (
	SELECT pg_catalog.array_agg(d.n ORDER BY d.at) AS n FROM depth d
), oldest AS (
	SELECT pg_catalog.now() - pg_catalog.min(m.next_attempt_at) AS age
	FROM twilio_outbox.messages m
	WHERE m.state = 'queued' AND m.next_attempt_at <= pg_catalog.now()
), paused AS (
	SELECT pg_catalog.count(*) AS n,
		   pg_catalog.string_agg(p.what || ' until ' || p.paused_until::text ||
				coalesce(' (' || p.pause_reason || ')', ''), '; ' ORDER BY p.what) AS which
	FROM (SELECT 'account ' || a.name AS what, a.paused_until, a.pause_reason
		  FROM twilio_outbox.accounts a WHERE a.paused_until > pg_catalog.now()
		  UNION ALL
		  SELECT 'sender ' || s.id || ' ' || coalesce(s.from_number, s.messaging_service_sid),
				 s.paused_until, s.pause_reason
		  FROM twilio_outbox.senders s WHERE s.paused_until > pg_catalog.now()) p
)
SELECT 'worker_running'::text AS "check",
	CASE WHEN twilio_outbox.worker_pid() IS NULL THEN 'critical' ELSE 'ok' END AS status,
	coalesce(twilio_outbox.worker_pid()::text, 'not running') AS value,
	'running'::text AS threshold,
	CASE WHEN twilio_outbox.worker_pid() IS NULL
		 THEN 'SELECT twilio_outbox.start_worker(); and supervise it with schedule_supervisor() or twilio_outbox.databases' END AS hint
UNION ALL
SELECT 'rate_limited_share', 
	CASE WHEN r.attempts = 0 THEN 'ok'
		 WHEN r.limited::numeric / r.attempts > 2 * s.rl THEN 'critical'
		 WHEN r.limited::numeric / r.attempts > s.rl THEN 'warning'
		 ELSE 'ok' END,
	pg_catalog.round(coalesce(r.limited::numeric / NULLIF(r.attempts, 0), 0), 4)::text,
	s.rl::text,
	CASE WHEN r.attempts > 0 AND r.limited::numeric / r.attempts > s.rl
		 THEN 'Over 5 minutes Twilio answered 429 too often: lower the senders'' rates or the accounts'' max_concurrency.' END
FROM recent r, settings s
UNION ALL
SELECT 'failure_share',
	CASE WHEN f.total = 0 THEN 'ok'
		 WHEN f.failed::numeric / f.total > 2 * s.fail THEN 'critical'
		 WHEN f.failed::numeric / f.total > s.fail THEN 'warning'
		 ELSE 'ok' END,
	pg_catalog.round(coalesce(f.failed::numeric / NULLIF(f.total, 0), 0), 4)::text,
	s.fail::text,
	CASE WHEN f.total > 0 AND f.failed::numeric / f.total > s.fail
		 THEN 'Too many messages finished dead, undelivered or failed in the last hour: see twilio_outbox.dead_letter_queue, and messages in state undelivered or failed.' END
FROM finished f, settings s
UNION ALL
SELECT 'queue_growing',
	CASE WHEN g.n[1] < g.n[2] AND g.n[2] < g.n[3] THEN 'warning' ELSE 'ok' END,
	pg_catalog.array_to_string(g.n, ' -> '),
	'not growing for 5 minutes',
	CASE WHEN g.n[1] < g.n[2] AND g.n[2] < g.n[3]
		 THEN 'Messages arrive faster than they leave: see twilio_outbox.backlog for paused accounts, rate limits or retries.' END
FROM growth g
UNION ALL
SELECT 'oldest_due_age',
	CASE WHEN o.age > 2 * s.due_age THEN 'critical'
		 WHEN o.age > s.due_age THEN 'warning' ELSE 'ok' END,
	coalesce(pg_catalog.date_trunc('second', o.age)::text, 'none due'),
	s.due_age::text,
	CASE WHEN o.age > s.due_age
		 THEN 'A message has been due too long: is the worker running, its account or sender paused, or capacity too low?' END
FROM oldest o, settings s
UNION ALL
SELECT 'paused',
	CASE WHEN p.n > 0 THEN 'warning' ELSE 'ok' END,
	p.n::text,
	'0',
	CASE WHEN p.n > 0 THEN 'Paused: ' || p.which ||
		'. Resume with twilio_outbox.resume_account(name) or resume_sender(id) once the cause is fixed.' END
FROM paused p;
COMMENT ON VIEW twilio_outbox.health IS 'One row per health check: status ok, warning or critical, the value, its threshold and a hint';

CREATE FUNCTION twilio_outbox.worker_accounts(
	OUT account text, OUT max_concurrency integer, OUT current_cap integer,
	OUT in_flight integer, OUT paused_until timestamptz)
RETURNS SETOF record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_accounts';

/* Per account, what the dispatcher holds it to right now. */
CREATE VIEW twilio_outbox.worker_accounts AS
SELECT * FROM twilio_outbox.worker_accounts();
COMMENT ON VIEW twilio_outbox.worker_accounts IS 'Per account: max_concurrency, the cap in use now (halved by a 429, regained with successes), requests in flight, pause';

/* The dispatcher as operators see it. */
CREATE VIEW twilio_outbox.worker AS
SELECT w.pid, w.started_at, a.state, a.wait_event, w.in_flight, w.sent AS sent_since_start,
	w.dead AS dead_since_start, w.last_error, w.last_error_at,
	(SELECT pg_catalog.string_agg(x.name || ' until ' || x.paused_until::text, '; ' ORDER BY x.name)
	 FROM twilio_outbox.accounts x WHERE x.paused_until > pg_catalog.now()) AS paused_accounts
FROM twilio_outbox.worker_status() w
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = w.pid;
COMMENT ON VIEW twilio_outbox.worker IS 'The dispatcher: pid, state, requests in flight, sent since start, last error, paused accounts';

