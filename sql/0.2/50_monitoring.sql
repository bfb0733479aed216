/* views and the functions behind them */

/*
 * The dispatcher's views.  worker_status() and worker_accounts() change
 * their columns and health renames "check" to check_name: views and
 * functions are dropped and created again (CREATE OR REPLACE cannot rename
 * or drop columns), and granted again in 90_privileges.sql.
 */
DROP VIEW twilio_outbox.health;
DROP VIEW twilio_outbox.worker;
DROP VIEW twilio_outbox.worker_accounts;
DROP FUNCTION twilio_outbox.worker_status();
DROP FUNCTION twilio_outbox.worker_accounts();

/*
 * Always one row: whether the database's dispatchers run (all
 * twilio_outbox.dispatchers_per_database of them), and their figures
 * summed, of the running ones or, for one that does not run, of its last
 * run since the server started (NULL when none ran); pid is the first
 * one's that runs.  worker_dispatchers() shows each.
 */
CREATE FUNCTION twilio_outbox.worker_status(
	OUT running boolean, OUT pid integer, OUT library_version text,
	OUT started_at timestamptz, OUT stopped_at timestamptz,
	OUT held_until timestamptz, OUT supervised_at timestamptz,
	OUT in_flight integer, OUT sent bigint, OUT dead bigint,
	OUT last_error text, OUT last_error_at timestamptz,
	OUT accounts integer, OUT accounts_unusable integer,
	OUT dispatchers integer, OUT dispatchers_running integer)
RETURNS SETOF record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_status_0_2';

CREATE FUNCTION twilio_outbox.worker_accounts(
	OUT account text, OUT max_concurrency integer, OUT current_cap integer,
	OUT in_flight integer, OUT paused_until timestamptz, OUT problem text)
RETURNS SETOF record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_accounts_0_2';

/* Per account, what the dispatcher holds it to right now, and why it cannot use it. */
CREATE VIEW twilio_outbox.worker_accounts AS
SELECT * FROM twilio_outbox.worker_accounts();
COMMENT ON VIEW twilio_outbox.worker_accounts IS 'Per account the running dispatcher knows: max_concurrency, the cap in use now (halved by a 429, regained with successes), requests in flight, pause, and the problem that keeps it from using the account (NULL when it can)';

/* The dispatcher as operators see it: always one row. */
CREATE VIEW twilio_outbox.worker AS
SELECT w.running, w.pid, w.library_version, e.extversion AS extension_version,
	w.started_at, w.stopped_at, w.held_until, w.supervised_at AS supervisor_seen_at,
	a.state, a.wait_event, w.in_flight, w.sent AS sent_since_start,
	w.dead AS dead_since_start, w.last_error, w.last_error_at,
	w.accounts, w.accounts_unusable,
	(SELECT pg_catalog.string_agg(x.name || ' until ' || x.paused_until::text, '; ' ORDER BY x.name)
	 FROM twilio_outbox.accounts x WHERE x.paused_until > pg_catalog.now()) AS paused_accounts,
	w.dispatchers, w.dispatchers_running
FROM twilio_outbox.worker_status() w
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = w.pid
LEFT JOIN pg_catalog.pg_extension e ON e.extname = 'twilio_outbox';
COMMENT ON VIEW twilio_outbox.worker IS 'The dispatchers of this database, always one row: running (all of twilio_outbox.dispatchers_per_database), pid (the first that runs), the library version beside the extension version installed, hold, the supervisor''s last call, requests in flight, sent and dead since started_at (summed over the dispatchers; of the last run when none runs), last error, accounts they cannot use, dispatchers configured and running (worker_dispatchers shows each)';

/*
 * One row per dispatcher place of the database
 * (twilio_outbox.dispatchers_per_database): dispatcher k sends for the
 * senders whose id modulo their number is k.
 */
CREATE FUNCTION twilio_outbox.worker_dispatchers(
	OUT dispatcher integer, OUT running boolean, OUT pid integer,
	OUT library_version text, OUT started_at timestamptz,
	OUT stopped_at timestamptz, OUT senders integer, OUT in_flight integer,
	OUT sent bigint, OUT dead bigint, OUT last_error text,
	OUT last_error_at timestamptz)
RETURNS SETOF record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_dispatchers_0_2';

CREATE VIEW twilio_outbox.worker_dispatchers AS
SELECT d.dispatcher, d.running, d.pid, d.library_version, d.started_at, d.stopped_at,
	a.state, a.wait_event, d.senders, d.in_flight, d.sent AS sent_since_start,
	d.dead AS dead_since_start, d.last_error, d.last_error_at
FROM twilio_outbox.worker_dispatchers() d
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = d.pid;
COMMENT ON VIEW twilio_outbox.worker_dispatchers IS 'Each dispatcher of this database (twilio_outbox.dispatchers_per_database; dispatcher k sends for the senders whose id modulo that number is k): running, pid, activity, how many senders it sends for, requests in flight, sent and dead since started_at, last error';

/*
 * pg_cron's database (cron.database_name), NULL when pg_cron is not loaded.
 * pg_cron lets only superusers read its settings; the health view's hint
 * names this database for every monitor.
 */
CREATE FUNCTION twilio_outbox.cron_database_name()
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_setting('cron.database_name', true) $$;

/*
 * The last run of this database's supervisor job, where pg_cron keeps its
 * jobs in this database and the caller may read it (pg_cron shows each
 * role its own jobs); NULL otherwise.
 */
CREATE FUNCTION twilio_outbox.supervisor_last_run()
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	run text;
BEGIN
	IF pg_catalog.to_regclass('cron.job_run_details') IS NULL
	   OR pg_catalog.to_regclass('cron.job') IS NULL
	   OR NOT pg_catalog.has_table_privilege('cron.job_run_details', 'SELECT')
	   OR NOT pg_catalog.has_table_privilege('cron.job', 'SELECT') THEN
		RETURN NULL;
	END IF;
	EXECUTE $q$
		SELECT pg_catalog.format('job %s (%s%s) %s at %s%s', j.jobid, j.jobname,
			CASE WHEN NOT j.active THEN ', inactive' ELSE '' END, d.status,
			pg_catalog.date_trunc('second', d.start_time), coalesce(': ' || d.return_message, ''))
		FROM cron.job_run_details d
		JOIN cron.job j ON j.jobid = d.jobid
		WHERE j.database = pg_catalog.current_database()
		  AND j.command LIKE '%twilio_outbox.start_worker%'
		ORDER BY d.runid DESC LIMIT 1 $q$
		INTO run;
	RETURN run;
END
$$;

/*
 * One row per check, with the threshold it is held to (settings
 * twilio_outbox.health_*) and what to do about it.  Shares are judged only
 * over at least health_min_count attempts or messages.
 */
CREATE VIEW twilio_outbox.health AS
WITH settings AS (
	SELECT coalesce(pg_catalog.current_setting('twilio_outbox.health_rate_limited_share', true), '0.05')::numeric AS rl,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_failure_share', true), '0.02')::numeric AS fail,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_due_age', true), '300s')::interval AS due_age,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_min_count', true), '20')::bigint AS min_count,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_final_status_after', true), '1h')::interval AS final_after,
		   coalesce(pg_catalog.current_setting('twilio_outbox.health_reconcile_age', true), '10min')::interval AS reconcile_age,
		   twilio_outbox.cron_database_name() AS cron_db
), w AS (
	SELECT * FROM twilio_outbox.worker_status()
), recent AS (
	SELECT pg_catalog.count(*) AS attempts,
		   pg_catalog.count(*) FILTER (WHERE a.http_status = 429) AS limited
	FROM (SELECT x.http_status FROM twilio_outbox.attempts x
		  WHERE x.started_at >= pg_catalog.now() - interval '5 minutes'
		  UNION ALL	/* first attempts kept on their messages (47_row_versions.sql) */
		  SELECT m.first_http_status FROM twilio_outbox.messages m
		  WHERE m.finished_at >= pg_catalog.now() - interval '5 minutes'
			AND m.first_started_at >= pg_catalog.now() - interval '5 minutes') a
), finished AS (
	/*
	 * Messages that ended in the last hour: dead (the POST refused, retries
	 * exhausted, expired, suppressed) or, from status callbacks, undelivered
	 * or failed, against all that ended (sent and delivered included).  A
	 * delivered message's finished_at is when its callback came.
	 */
	SELECT pg_catalog.count(*) AS total,
		   pg_catalog.count(*) FILTER (WHERE m.state = 'dead') AS dead,
		   pg_catalog.count(*) FILTER (WHERE m.state = 'undelivered') AS undelivered,
		   pg_catalog.count(*) FILTER (WHERE m.state = 'failed') AS failed
	FROM twilio_outbox.messages m
	WHERE m.finished_at >= pg_catalog.now() - interval '1 hour'
	  AND m.state <> 'canceled'
), unconfirmed AS (
	/*
	 * Messages sent in the hour before health_final_status_after ago whose
	 * status callbacks the outbox asked for itself (the account has a
	 * status_callback_url, the message no status_callback of its own), and
	 * those of them still without a final status.  finished_at (never
	 * before sent_at) bounds the scan to its index.
	 */
	SELECT pg_catalog.count(*) AS total,
		   pg_catalog.count(*) FILTER (WHERE m.state = 'sent') AS waiting,
		   pg_catalog.min(m.sent_at) FILTER (WHERE m.state = 'sent') AS oldest
	FROM settings s
	JOIN twilio_outbox.messages m
	  ON s.final_after > interval '0'
	 AND m.finished_at >= pg_catalog.now() - s.final_after - interval '1 hour'
	 AND m.sent_at >= pg_catalog.now() - s.final_after - interval '1 hour'
	 AND m.sent_at < pg_catalog.now() - s.final_after
	JOIN twilio_outbox.accounts a ON a.name = m.account
	WHERE m.status_callback IS NULL AND a.status_callback_url IS NOT NULL
), hooks AS (
	/* webhook_counters(): whole cluster, since the server started; no rows without the preload */
	SELECT pg_catalog.count(*) AS n,
		   coalesce(pg_catalog.sum(c.webhooks) FILTER (WHERE c.verdict <> 'accepted'), 0) AS refused,
		   coalesce(pg_catalog.sum(c.webhooks) FILTER (WHERE c.verdict = 'accepted'), 0) AS accepted,
		   pg_catalog.string_agg(c.verdict || ' ' || c.webhooks, ', ' ORDER BY c.ord)
				FILTER (WHERE c.verdict <> 'accepted') AS which,
		   pg_catalog.max(c.last_refused_at) AS last_refused_at
	FROM twilio_outbox.webhook_counters() WITH ORDINALITY AS c(verdict, webhooks, last_refused_at, ord)
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
), ambiguous AS (
	/* left for an operator: no lookup will settle them (reconcile_at NULL) */
	SELECT pg_catalog.count(*) AS n, pg_catalog.min(m.updated_at) AS since,
		   (SELECT pg_catalog.string_agg(f.id::text, ', ' ORDER BY f.id)
			FROM (SELECT x.id FROM twilio_outbox.messages x WHERE x.state = 'ambiguous'
				  AND x.reconcile_at IS NULL ORDER BY x.id LIMIT 10) f) AS ids
	FROM twilio_outbox.messages m
	WHERE m.state = 'ambiguous' AND m.reconcile_at IS NULL
), reconciling AS (
	/* waiting for the dispatcher to look them up at Twilio (src/reconcile.c) */
	SELECT pg_catalog.count(*) AS n,
		   pg_catalog.count(*) FILTER (WHERE coalesce(m.ambiguous_since, m.updated_at)
				< pg_catalog.now() - s.reconcile_age) AS late,
		   pg_catalog.min(coalesce(m.ambiguous_since, m.updated_at)) AS since
	FROM settings s
	JOIN twilio_outbox.messages m ON m.state = 'ambiguous' AND m.reconcile_at IS NOT NULL
), unusable AS (
	SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s)', wa.account, wa.problem), '; ' ORDER BY wa.account) AS which,
		   pg_catalog.count(*) AS listed
	FROM twilio_outbox.worker_accounts() wa
	WHERE wa.problem IS NOT NULL
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
), version AS (
	SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'twilio_outbox'
)
SELECT 'worker_running'::text AS check_name,
	CASE WHEN w.running THEN 'ok' WHEN w.held_until IS NOT NULL THEN 'warning' ELSE 'critical' END AS status,
	CASE WHEN w.running THEN w.pid::text
		 WHEN w.held_until IS NOT NULL THEN 'held until ' || w.held_until::text
		 ELSE 'not running' END AS value,
	'running'::text AS threshold,
	CASE WHEN w.running THEN NULL
		 WHEN w.held_until IS NOT NULL THEN
			'Stopped with stop_worker(hold => ...): the supervisor does not start it before then; twilio_outbox.start_worker() starts it now and ends the hold.'
		 ELSE 'No dispatcher runs in this database: start it with twilio_outbox.start_worker(). '
			|| CASE WHEN w.supervised_at > pg_catalog.now() - interval '3 minutes'
						 AND w.stopped_at > w.supervised_at
					THEN pg_catalog.format('It stopped at %s; the supervisor (last call at %s) starts it again within a minute, unless held with stop_worker(hold => ...).', pg_catalog.date_trunc('second', w.stopped_at), pg_catalog.date_trunc('second', w.supervised_at))
					WHEN w.supervised_at > pg_catalog.now() - interval '3 minutes'
					THEN pg_catalog.format('The supervisor called start_worker() at %s, yet none runs: see the server log (max_worker_processes, twilio_outbox.max_databases).', pg_catalog.date_trunc('second', w.supervised_at))
					WHEN w.supervised_at IS NOT NULL
					THEN pg_catalog.format('The supervisor last called start_worker() at %s: its pg_cron job no longer runs, or fails.', pg_catalog.date_trunc('second', w.supervised_at))
					ELSE 'No supervisor has called start_worker(supervisor => true) since the server started: schedule one with twilio_outbox.schedule_supervisor() or, where pg_cron keeps its jobs in another database, run there the statement twilio_outbox.schedule_supervisor_sql() returns; or list this database in twilio_outbox.databases.' END
			|| coalesce(' Last run of the supervisor job: ' || twilio_outbox.supervisor_last_run() || '.',
				pg_catalog.format(' If the job exists, see its runs in database %s: SELECT status, return_message, start_time FROM cron.job_run_details WHERE jobid IN (SELECT jobid FROM cron.job WHERE database = %L) ORDER BY runid DESC LIMIT 5.',
					coalesce(s.cron_db, '(cron.database_name)'), pg_catalog.current_database()))
			|| ' A run that failed to connect (password authentication failed, connection refused) needs cron.use_background_workers = on, or a .pgpass for pg_cron''s connection to localhost.'
	END AS hint
FROM w, settings s
UNION ALL
SELECT 'accounts_unusable',
	CASE WHEN w.running AND w.accounts_unusable > 0 THEN 'critical' ELSE 'ok' END,
	CASE WHEN w.running THEN w.accounts_unusable::text ELSE 'no dispatcher' END,
	'0',
	CASE WHEN w.running AND w.accounts_unusable > 0 THEN
		'The dispatcher cannot use ' || coalesce(u.which, '') ||
		CASE WHEN w.accounts_unusable > u.listed
			 THEN pg_catalog.format(' and %s more', w.accounts_unusable - u.listed) ELSE '' END ||
		'. Their messages stay queued. Fix twilio_outbox.accounts or account_credentials (read again within a second), or the server''s environment (read at server start: restart it) or the file in twilio_outbox.secrets_dir; see twilio_outbox.worker_accounts.'
	END
FROM w, unusable u
UNION ALL
SELECT 'rate_limited_share',
	CASE WHEN r.attempts = 0 OR r.attempts < s.min_count THEN 'ok'
		 WHEN r.limited::numeric / r.attempts > 2 * s.rl THEN 'critical'
		 WHEN r.limited::numeric / r.attempts > s.rl THEN 'warning'
		 ELSE 'ok' END,
	pg_catalog.round(coalesce(r.limited::numeric / NULLIF(r.attempts, 0), 0), 4)::text
		|| pg_catalog.format(' (%s of %s)', r.limited, r.attempts),
	s.rl::text || pg_catalog.format(' of at least %s attempts', s.min_count),
	CASE WHEN r.attempts > 0 AND r.attempts >= s.min_count AND r.limited::numeric / r.attempts > s.rl
		 THEN 'Over 5 minutes Twilio answered 429 too often: lower the senders'' rates or the accounts'' max_concurrency.' END
FROM recent r, settings s
UNION ALL
SELECT 'failure_share',
	CASE WHEN f.total = 0 OR f.total < s.min_count THEN 'ok'
		 WHEN (f.dead + f.undelivered + f.failed)::numeric / f.total > 2 * s.fail THEN 'critical'
		 WHEN (f.dead + f.undelivered + f.failed)::numeric / f.total > s.fail THEN 'warning'
		 ELSE 'ok' END,
	pg_catalog.round(coalesce((f.dead + f.undelivered + f.failed)::numeric / NULLIF(f.total, 0), 0), 4)::text
		|| pg_catalog.format(' (%s of %s: %s dead, %s undelivered, %s failed)',
			f.dead + f.undelivered + f.failed, f.total, f.dead, f.undelivered, f.failed),
	s.fail::text || pg_catalog.format(' of at least %s messages', s.min_count),
	CASE WHEN f.total > 0 AND f.total >= s.min_count AND (f.dead + f.undelivered + f.failed)::numeric / f.total > s.fail
		 THEN pg_catalog.format('In the last hour %s of %s finished messages failed: %s dead (refused or given up before Twilio took them: twilio_outbox.dead_letter_queue), %s undelivered and %s failed (delivery errors from status callbacks)',
			f.dead + f.undelivered + f.failed, f.total, f.dead, f.undelivered, f.failed)
			|| coalesce('; most frequent codes: ' || (
				SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s)', c.code, c.n), ', ' ORDER BY c.n DESC, c.code)
				FROM (SELECT coalesce(m.last_error_code::text, 'no code') AS code, pg_catalog.count(*) AS n
					  FROM twilio_outbox.messages m
					  WHERE m.finished_at >= pg_catalog.now() - interval '1 hour'
						AND m.state = ANY (ARRAY['dead', 'undelivered', 'failed']::twilio_outbox.message_state[])
					  GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3) c), '')
			|| '. By state and code: SELECT state, last_error_code, count(*) FROM twilio_outbox.messages WHERE finished_at > now() - interval ''1 hour'' AND state IN (''dead'', ''undelivered'', ''failed'') GROUP BY 1, 2 ORDER BY 3 DESC;' END
FROM finished f, settings s
UNION ALL
SELECT 'no_final_status',
	CASE WHEN s.final_after <= interval '0' OR u.total = 0 OR u.total < s.min_count THEN 'ok'
		 WHEN u.waiting::numeric / u.total > 2 * s.fail THEN 'critical'
		 WHEN u.waiting::numeric / u.total > s.fail THEN 'warning'
		 ELSE 'ok' END,
	CASE WHEN s.final_after <= interval '0' THEN 'off'
		 ELSE pg_catalog.round(coalesce(u.waiting::numeric / NULLIF(u.total, 0), 0), 4)::text
			|| pg_catalog.format(' (%s of %s)', u.waiting, u.total) END,
	CASE WHEN s.final_after <= interval '0' THEN 'off (twilio_outbox.health_final_status_after = 0)'
		 ELSE s.fail::text || pg_catalog.format(' of at least %s messages, %s after sending', s.min_count, s.final_after) END,
	CASE WHEN s.final_after > interval '0' AND u.total > 0 AND u.total >= s.min_count AND u.waiting::numeric / u.total > s.fail
		 THEN pg_catalog.format('%s of the %s messages sent between %s and %s ago with the account''s status_callback_url have no final status yet (still sent, the oldest since %s): their status callbacks did not arrive. Does status_callback_url reach the endpoint from the internet, does the endpoint call twilio_outbox.receive_status (see the webhooks_refused check), is the receiver running? Some carriers never confirm delivery: then raise twilio_outbox.health_final_status_after, or set it to 0 to turn this check off. The messages: SELECT id, account, twilio_sid, sent_at FROM twilio_outbox.messages WHERE state = ''sent'' AND sent_at < now() - interval %L ORDER BY sent_at LIMIT 20;',
			u.waiting, u.total, s.final_after + interval '1 hour', s.final_after,
			pg_catalog.date_trunc('second', u.oldest), s.final_after::text) END
FROM unconfirmed u, settings s
UNION ALL
SELECT 'webhooks_refused',
	CASE WHEN h.refused > 0 AND h.last_refused_at > pg_catalog.now() - interval '1 hour' THEN 'warning'
		 ELSE 'ok' END,
	CASE WHEN h.n = 0 THEN 'no counters (twilio_outbox is not in shared_preload_libraries)'
		 ELSE pg_catalog.format('%s refused (%s), %s accepted since the server started', h.refused, h.which, h.accepted)
			|| coalesce(', the last refusal at ' || pg_catalog.date_trunc('second', h.last_refused_at)::text, '') END,
	'none refused in the last hour',
	CASE WHEN h.refused > 0 AND h.last_refused_at > pg_catalog.now() - interval '1 hour'
		 THEN pg_catalog.format('Webhooks were refused, the last at %s (%s; counted for the whole server since it started, nothing else of them is recorded). bad_signature: the URL passed to receive_status is not the one Twilio signed (a proxy changed the scheme, host, port or query: pass the public URL), the account''s auth token is not the one Twilio signs with (account_credentials.auth_token_env or auth_token_file for an API-key account), or someone else posts to the endpoint. unknown_account: no account has the callback''s AccountSid. no_auth_token: the account has no token to check with, or it cannot be read (server log). malformed: not a Twilio form (the endpoint''s log). The counters: SELECT * FROM twilio_outbox.webhook_counters();',
			pg_catalog.date_trunc('second', h.last_refused_at), h.which) END
FROM hooks h
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
		 THEN 'A message has been due too long: is the worker running, its account or sender paused or unusable, or capacity too low?' END
FROM oldest o, settings s
UNION ALL
SELECT 'ambiguous',
	CASE WHEN am.n = 0 THEN 'ok'
		 WHEN am.since < pg_catalog.now() - interval '1 hour' THEN 'critical'
		 ELSE 'warning' END,
	am.n::text,
	'0 (critical after 1 hour)',
	CASE WHEN am.n > 0 THEN pg_catalog.format(
		'%s message(s) wait in state ambiguous for an operator since %s (ids %s): Twilio may have created them. See twilio_outbox.ambiguous_messages (reconcile_candidates: the SIDs reconciliation found); look each up in the Twilio console by recipient and time, then twilio_outbox.resolve_ambiguous(id, ''SM...'') if Twilio has it, or twilio_outbox.requeue(message_ids => ARRAY[id]) to send it again (or twilio_outbox.cancel(id)).',
		am.n, pg_catalog.date_trunc('second', am.since),
		CASE WHEN am.n > 10 THEN am.ids || ', ...' ELSE am.ids END) END
FROM ambiguous am
UNION ALL
SELECT 'reconcile',
	CASE WHEN rc.late = 0 THEN 'ok'
		 WHEN rc.since < pg_catalog.now() - 2 * s.reconcile_age THEN 'critical'
		 ELSE 'warning' END,
	pg_catalog.format('%s waiting, %s longer than the threshold', rc.n, rc.late),
	s.reconcile_age::text || ' (critical at twice)',
	CASE WHEN rc.late > 0 THEN pg_catalog.format(
		'%s message(s) wait to be looked up at Twilio since %s: is the dispatcher running, its account paused or unusable, its lookups rate limited (lookups_per_second, 429s)? See twilio_outbox.ambiguous_messages (last_error_message says what the last lookup found).',
		rc.late, pg_catalog.date_trunc('second', rc.since)) END
FROM reconciling rc, settings s
UNION ALL
SELECT 'paused',
	CASE WHEN p.n > 0 THEN 'warning' ELSE 'ok' END,
	p.n::text,
	'0',
	CASE WHEN p.n > 0 THEN 'Paused: ' || p.which ||
		'. Resume with twilio_outbox.resume_account(name) or resume_sender(id) once the cause is fixed.' END
FROM paused p
UNION ALL
/* H5: enqueue anomalies, twilio_outbox.anomalies() (42_guards.sql) */
SELECT 'anomaly',
	CASE WHEN an.n > 0 THEN 'warning' ELSE 'ok' END,
	an.n::text,
	pg_catalog.format('0 findings (rate or one country: > %s x the norm and >= %s in 5 minutes; one 1,000-number block: >= %s numbers)',
		coalesce(pg_catalog.current_setting('twilio_outbox.health_anomaly_factor', true), '10'),
		coalesce(pg_catalog.current_setting('twilio_outbox.health_anomaly_min_count', true), '100'),
		coalesce(pg_catalog.current_setting('twilio_outbox.health_anomaly_range_count', true), '20')),
	CASE WHEN an.n > 0 THEN 'Unusual enqueues in the last 5 minutes: ' || an.which ||
		'. Look for SMS pumping (one-time codes requested for premium-rate numbers) or a misbehaving client; stop it with accounts.allowed_country_codes, max_per_recipient_hour or pause_account(). The figures: SELECT * FROM twilio_outbox.anomalies();' END
FROM (SELECT pg_catalog.count(*) AS n,
			 pg_catalog.string_agg(CASE x.kind
				WHEN 'rate' THEN pg_catalog.format('account %s enqueued %s messages, its norm at this hour is %s per 5 minutes (threshold %s)',
					x.account, x.last_5min, x.norm_5min, x.threshold)
				WHEN 'country' THEN pg_catalog.format('account %s enqueued %s messages to %s, its norm there at this hour is %s per 5 minutes (threshold %s)',
					x.account, x.last_5min, x.subject, x.norm_5min, x.threshold)
				ELSE pg_catalog.format('account %s enqueued to %s different numbers of %s (threshold %s)',
					x.account, x.last_5min, x.subject, x.threshold) END, '; ') AS which
	  FROM twilio_outbox.anomalies() x) an
UNION ALL
SELECT 'library_version',
	CASE WHEN w.running AND w.library_version IS DISTINCT FROM v.extversion THEN 'warning' ELSE 'ok' END,
	coalesce(w.library_version, 'no dispatcher') || ' / ' || coalesce(v.extversion, '?'),
	'the dispatcher''s library = the extension''s version',
	CASE WHEN w.running AND w.library_version IS DISTINCT FROM v.extversion THEN pg_catalog.format(
		'The dispatcher runs library %s but the extension in this database is %s: a preloaded library is replaced only by a server restart (stop_worker() and start_worker() keep the old one). Restart the server.',
		w.library_version, v.extversion) END
FROM w LEFT JOIN version v ON true;
COMMENT ON VIEW twilio_outbox.health IS 'One row per health check (check_name): status ok, warning or critical, the value, its threshold and a hint';

/*
 * stats gains what status callbacks report: per window, the messages whose
 * delivery (delivered, or read with no delivered before it), undelivered
 * or failed status a callback applied in it, and the time from sent_at
 * (when the 201 was recorded, or the first callback if it came first) to
 * the arrival of the delivered callback.  Columns are only added at the
 * end: CREATE OR REPLACE keeps the view's grants and the 0.1 columns.
 */
CREATE OR REPLACE VIEW twilio_outbox.stats AS
WITH w(name, span) AS (
	VALUES ('1 min', interval '1 minute'), ('5 min', interval '5 minutes'), ('1 hour', interval '1 hour')
), outcome AS (
	SELECT e.received_at,
		   CASE WHEN e.message_status = 'read' THEN 'delivered' ELSE e.message_status END AS status,
		   GREATEST(pg_catalog.date_part('epoch', e.received_at - m.sent_at), 0) AS after_s
	FROM twilio_outbox.status_events e
	LEFT JOIN twilio_outbox.messages m ON m.id = e.message_id
	WHERE e.received_at >= pg_catalog.now() - interval '1 hour'
	  AND e.verdict = 'applied'
	  AND e.message_status = ANY (ARRAY['delivered', 'undelivered', 'failed', 'read'])
	  AND NOT (e.message_status = 'read' AND EXISTS (
			SELECT FROM twilio_outbox.status_events d
			WHERE d.message_sid = e.message_sid AND d.message_status = 'delivered' AND d.verdict = 'applied'))
)
SELECT w.name AS "window",
	pg_catalog.count(a.started_at) AS attempts,
	pg_catalog.count(a.started_at) FILTER (WHERE a.outcome = 'sent') AS sent,
	pg_catalog.count(a.started_at) FILTER (WHERE a.outcome = 'retry') AS retries,
	(SELECT pg_catalog.count(*) FROM twilio_outbox.dead_letters d
	 WHERE d.dead_at >= pg_catalog.now() - w.span) AS dead_letters,
	pg_catalog.count(a.started_at) FILTER (WHERE a.http_status = 429) AS rate_limited,
	pg_catalog.round(coalesce(pg_catalog.count(a.started_at) FILTER (WHERE a.http_status = 429)::numeric
		/ NULLIF(pg_catalog.count(a.started_at), 0), 0), 4) AS rate_limited_share,
	pg_catalog.round(coalesce(pg_catalog.count(a.started_at) FILTER (WHERE a.http_status >= 500)::numeric
		/ NULLIF(pg_catalog.count(a.started_at), 0), 0), 4) AS server_error_share,
	pg_catalog.round(pg_catalog.count(a.started_at) FILTER (WHERE a.outcome = 'sent')::numeric
		/ pg_catalog.date_part('epoch', w.span)::numeric, 3) AS sent_per_second,
	pg_catalog.round((pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY a.request_duration)
		* 1000)::numeric, 1) AS p50_twilio_ms,
	pg_catalog.round((pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY a.request_duration)
		* 1000)::numeric, 1) AS p95_twilio_ms,
	pg_catalog.round((pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms))::numeric, 1) AS p95_round_trip_ms,
	(SELECT pg_catalog.count(*) FROM outcome o
	 WHERE o.status = 'delivered' AND o.received_at >= pg_catalog.now() - w.span) AS delivered,
	(SELECT pg_catalog.count(*) FROM outcome o
	 WHERE o.status = 'undelivered' AND o.received_at >= pg_catalog.now() - w.span) AS undelivered,
	(SELECT pg_catalog.count(*) FROM outcome o
	 WHERE o.status = 'failed' AND o.received_at >= pg_catalog.now() - w.span) AS failed,
	(SELECT pg_catalog.round(pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY o.after_s)::numeric, 3)
	 FROM outcome o
	 WHERE o.status = 'delivered' AND o.received_at >= pg_catalog.now() - w.span) AS p50_delivery_s,
	(SELECT pg_catalog.round(pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY o.after_s)::numeric, 3)
	 FROM outcome o
	 WHERE o.status = 'delivered' AND o.received_at >= pg_catalog.now() - w.span) AS p95_delivery_s,
	/* reconciliation (37_reconcile.sql: the values are compared as text) */
	pg_catalog.count(a.started_at) FILTER (WHERE a.outcome::text = 'found') AS reconciled_found,
	pg_catalog.count(a.started_at) FILTER (WHERE a.outcome::text = 'not_found') AS reconciled_resent,
	pg_catalog.count(a.started_at) FILTER (WHERE a.outcome::text = 'for_operator') AS left_for_operator
FROM w
/*
 * the window's attempts: its attempt rows and the first attempts kept on
 * their messages (47_row_versions.sql), found through messages_finished
 */
LEFT JOIN LATERAL (
	SELECT x.started_at, x.outcome, x.http_status, x.request_duration, x.duration_ms
	FROM twilio_outbox.attempts x
	WHERE x.started_at >= pg_catalog.now() - w.span
	UNION ALL
	SELECT m.first_started_at, 'sent'::twilio_outbox.attempt_outcome, m.first_http_status,
		m.first_request_duration, m.first_duration_ms
	FROM twilio_outbox.messages m
	WHERE m.finished_at >= pg_catalog.now() - w.span
	  AND m.first_started_at >= pg_catalog.now() - w.span
) a ON true
GROUP BY w.name, w.span
ORDER BY w.span;
COMMENT ON VIEW twilio_outbox.stats IS 'Over 1 min, 5 min, 1 hour: attempts, sends, retries, dead letters, 429 and 5xx shares, rate and Twilio latency; from status callbacks, messages delivered, undelivered and failed, and p50/p95 seconds from sent to the delivered callback; reconciliation of ambiguous sends: found at Twilio, resent after none was found, left for an operator';

/*
 * The outbox's figures for Prometheus, one row per sample: metric (a
 * Prometheus name: twilio_outbox_..., units in the name, counters end in
 * _total), labels (a JSON object of label names and values) and value.
 * Every branch names its metric as a literal, so a query for some metrics
 * (WHERE metric = ... / IN (...), as contrib/prometheus/queries.yaml does)
 * is planned without the others: their views are never run.
 */
CREATE VIEW twilio_outbox.metrics AS
WITH b AS (
	SELECT * FROM twilio_outbox.backlog
), st AS (
	SELECT CASE s."window" WHEN '1 min' THEN '1m' WHEN '5 min' THEN '5m' ELSE '1h' END AS win, s.*
	FROM twilio_outbox.stats s
), w AS (
	SELECT * FROM twilio_outbox.worker_status()
)
/* backlog, per account and sender: what waits, by state */
SELECT 'twilio_outbox_backlog_messages'::text AS metric,
	pg_catalog.jsonb_build_object('account', b.account, 'sender', coalesce(b.sender, ''), 'state', x.state) AS labels,
	x.n::float8 AS value
FROM b CROSS JOIN LATERAL (VALUES ('due', b.due_now), ('scheduled', b.scheduled), ('retrying', b.retrying),
	('in_flight', b.in_flight), ('ambiguous', b.ambiguous)) AS x(state, n)
UNION ALL
SELECT 'twilio_outbox_backlog_oldest_due_age_seconds',
	pg_catalog.jsonb_build_object('account', b.account, 'sender', coalesce(b.sender, '')),
	pg_catalog.date_part('epoch', b.oldest_due_age)
FROM b WHERE b.oldest_due_age IS NOT NULL
UNION ALL
/* over all senders: how long the longest-waiting due message has waited (0: none due) */
SELECT 'twilio_outbox_oldest_due_age_seconds', '{}'::jsonb,
	coalesce(pg_catalog.date_part('epoch', pg_catalog.now() - pg_catalog.min(m.next_attempt_at)), 0)
FROM twilio_outbox.messages m
WHERE m.state = 'queued' AND m.next_attempt_at <= pg_catalog.now()
UNION ALL
SELECT 'twilio_outbox_dead_letters_open', '{}'::jsonb, pg_catalog.count(*)::float8
FROM twilio_outbox.dead_letters d WHERE d.requeued_at IS NULL
UNION ALL
/* the dispatcher: sent and dead count since started_at (a restart starts them at 0) */
SELECT 'twilio_outbox_worker_up', '{}'::jsonb, CASE WHEN w.running THEN 1 ELSE 0 END FROM w
UNION ALL
SELECT 'twilio_outbox_worker_in_flight_requests', '{}'::jsonb, coalesce(w.in_flight, 0) FROM w
UNION ALL
SELECT 'twilio_outbox_worker_sent_total', '{}'::jsonb, coalesce(w.sent, 0) FROM w
UNION ALL
SELECT 'twilio_outbox_worker_dead_total', '{}'::jsonb, coalesce(w.dead, 0) FROM w
UNION ALL
/* stats, per window (1m, 5m, 1h) */
SELECT 'twilio_outbox_stats_attempts', pg_catalog.jsonb_build_object('window', st.win), st.attempts FROM st
UNION ALL
SELECT 'twilio_outbox_stats_sent', pg_catalog.jsonb_build_object('window', st.win), st.sent FROM st
UNION ALL
SELECT 'twilio_outbox_stats_retries', pg_catalog.jsonb_build_object('window', st.win), st.retries FROM st
UNION ALL
SELECT 'twilio_outbox_stats_dead_letters', pg_catalog.jsonb_build_object('window', st.win), st.dead_letters FROM st
UNION ALL
SELECT 'twilio_outbox_stats_rate_limited', pg_catalog.jsonb_build_object('window', st.win), st.rate_limited FROM st
UNION ALL
SELECT 'twilio_outbox_stats_rate_limited_ratio', pg_catalog.jsonb_build_object('window', st.win), st.rate_limited_share FROM st
UNION ALL
SELECT 'twilio_outbox_stats_server_error_ratio', pg_catalog.jsonb_build_object('window', st.win), st.server_error_share FROM st
UNION ALL
SELECT 'twilio_outbox_stats_sent_per_second', pg_catalog.jsonb_build_object('window', st.win), st.sent_per_second FROM st
UNION ALL
SELECT 'twilio_outbox_stats_delivered', pg_catalog.jsonb_build_object('window', st.win), st.delivered FROM st
UNION ALL
SELECT 'twilio_outbox_stats_undelivered', pg_catalog.jsonb_build_object('window', st.win), st.undelivered FROM st
UNION ALL
SELECT 'twilio_outbox_stats_failed', pg_catalog.jsonb_build_object('window', st.win), st.failed FROM st
UNION ALL
/* latencies, per window and quantile; none when the window has no sample */
SELECT 'twilio_outbox_stats_twilio_duration_seconds',
	pg_catalog.jsonb_build_object('window', st.win, 'quantile', x.q), x.ms / 1000
FROM st CROSS JOIN LATERAL (VALUES ('0.5', st.p50_twilio_ms), ('0.95', st.p95_twilio_ms)) AS x(q, ms)
WHERE x.ms IS NOT NULL
UNION ALL
SELECT 'twilio_outbox_stats_round_trip_seconds',
	pg_catalog.jsonb_build_object('window', st.win, 'quantile', '0.95'), st.p95_round_trip_ms / 1000
FROM st WHERE st.p95_round_trip_ms IS NOT NULL
UNION ALL
SELECT 'twilio_outbox_stats_delivery_seconds',
	pg_catalog.jsonb_build_object('window', st.win, 'quantile', x.q), x.s
FROM st CROSS JOIN LATERAL (VALUES ('0.5', st.p50_delivery_s), ('0.95', st.p95_delivery_s)) AS x(q, s)
WHERE x.s IS NOT NULL
UNION ALL
/* health, per check: 0 ok, 1 warning, 2 critical */
SELECT 'twilio_outbox_health_status', pg_catalog.jsonb_build_object('check', h.check_name),
	CASE h.status WHEN 'ok' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END
FROM twilio_outbox.health h
UNION ALL
/* webhooks by verdict, whole server since it started (none without the preload) */
SELECT 'twilio_outbox_webhooks_total', pg_catalog.jsonb_build_object('verdict', c.verdict), c.webhooks
FROM twilio_outbox.webhook_counters() c;
COMMENT ON VIEW twilio_outbox.metrics IS 'The figures of backlog, stats, health, worker and webhook counters as Prometheus samples: metric name, labels (jsonb), value; see contrib/prometheus/queries.yaml';

/*
 * twilio_outbox_metrics: what a metrics exporter logs in as (a member of
 * it), reading the metrics view and nothing else: no phone number, no
 * error text, no table.  twilio_outbox_monitor is a member of it.
 */
DO $role$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_metrics') THEN
		CREATE ROLE twilio_outbox_metrics NOLOGIN;
	END IF;
END
$role$;
GRANT twilio_outbox_metrics TO twilio_outbox_monitor;
