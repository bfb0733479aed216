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
		   twilio_outbox.cron_database_name() AS cron_db
), w AS (
	SELECT * FROM twilio_outbox.worker_status()
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
), ambiguous AS (
	SELECT pg_catalog.count(*) AS n, pg_catalog.min(m.updated_at) AS since,
		   (SELECT pg_catalog.string_agg(f.id::text, ', ' ORDER BY f.id)
			FROM (SELECT x.id FROM twilio_outbox.messages x WHERE x.state = 'ambiguous'
				  ORDER BY x.id LIMIT 10) f) AS ids
	FROM twilio_outbox.messages m
	WHERE m.state = 'ambiguous'
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
		 WHEN f.failed::numeric / f.total > 2 * s.fail THEN 'critical'
		 WHEN f.failed::numeric / f.total > s.fail THEN 'warning'
		 ELSE 'ok' END,
	pg_catalog.round(coalesce(f.failed::numeric / NULLIF(f.total, 0), 0), 4)::text
		|| pg_catalog.format(' (%s of %s)', f.failed, f.total),
	s.fail::text || pg_catalog.format(' of at least %s messages', s.min_count),
	CASE WHEN f.total > 0 AND f.total >= s.min_count AND f.failed::numeric / f.total > s.fail
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
		'%s message(s) wait in state ambiguous for an operator since %s (ids %s): Twilio may have created them. Look each up in the Twilio console by recipient and time, then twilio_outbox.resolve_ambiguous(id, ''SM...'') if Twilio has it, or twilio_outbox.requeue(message_ids => ARRAY[id]) to send it again (or twilio_outbox.cancel(id)).',
		am.n, pg_catalog.date_trunc('second', am.since),
		CASE WHEN am.n > 10 THEN am.ids || ', ...' ELSE am.ids END) END
FROM ambiguous am
UNION ALL
SELECT 'paused',
	CASE WHEN p.n > 0 THEN 'warning' ELSE 'ok' END,
	p.n::text,
	'0',
	CASE WHEN p.n > 0 THEN 'Paused: ' || p.which ||
		'. Resume with twilio_outbox.resume_account(name) or resume_sender(id) once the cause is fixed.' END
FROM paused p
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
