-- pg_cron supervision from a database without pg_cron (pg_cron keeps its
-- jobs in database postgres here): a refusal whose hint is the exact
-- statement to run there, the same statement schedule_supervisor_sql()
-- returns.  (Scheduling itself, and the job's runs, are TAP tests.)
-- Its own database and fixtures: this file depends on no other.
\set db outbox_supervisor
\i test/sql/include/fresh_database.sql
SELECT twilio_outbox.schedule_supervisor();
SELECT twilio_outbox.schedule_supervisor(job_name => 'app_supervisor');
SELECT twilio_outbox.schedule_supervisor_sql();
SELECT twilio_outbox.schedule_supervisor_sql(job_name => 'app_supervisor');
SELECT twilio_outbox.schedule_purge_sql();
SELECT twilio_outbox.schedule_purge_sql('7 days', '0 4 * * sun', job_name => 'app_purge');
-- No dispatcher runs here.
SELECT twilio_outbox.worker_pid() IS NULL AS no_worker;

-- Arguments are checked at the call, whether or not pg_cron is here:
-- NULL is 22004, nonsense 22023, a database that does not exist 3D000.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_outbox.schedule_supervisor(NULL)$$),
	($$SELECT twilio_outbox.schedule_supervisor('')$$),
	($$SELECT twilio_outbox.schedule_supervisor('no_such_db')$$),
	($$SELECT twilio_outbox.schedule_supervisor(job_name => '')$$),
	($$SELECT twilio_outbox.schedule_supervisor(job_name => repeat('j', 64))$$),
	($$SELECT twilio_outbox.schedule_supervisor_sql(NULL)$$),
	($$SELECT twilio_outbox.schedule_purge(NULL)$$),
	($$SELECT twilio_outbox.schedule_purge('-1 day')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => NULL)$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => 'nightly')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '* * * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '* * * * * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '60 3 * * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '0 24 * * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '0 3 0 * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '0 3 * 13 *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '0 3 * * 8')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '*/0 * * * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '5-2 * * * *')$$),
	($$SELECT twilio_outbox.schedule_purge(schedule => '0 3 * * funday')$$),
	($$SELECT twilio_outbox.schedule_purge(database => NULL)$$),
	($$SELECT twilio_outbox.schedule_purge(database => 'no_such_db')$$),
	($$SELECT twilio_outbox.schedule_purge_sql(NULL)$$),
	($$SELECT twilio_outbox.schedule_purge_sql(schedule => '61 * * * *')$$)
) AS t(sql);
-- Schedules pg_cron accepts pass (the error is then only the missing pg_cron).
SELECT try(pg_catalog.format('SELECT twilio_outbox.schedule_purge_sql(schedule => %L)', s)) AS result, s AS schedule
FROM (VALUES ('17 3 * * *'), ('*/5 * * * *'), ('0 0-23/2 * * mon-fri'), ('0,30 8,20 1,15 jan,jul 0'),
	('59 23 31 12 7'), ('@daily'), (' @hourly '), ('0 3 * * SUN')) AS t(s);

-- start_worker and stop_worker: NULL and nonsense refused at the call.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_outbox.start_worker(NULL)$$),
	($$SELECT twilio_outbox.stop_worker(hold => '-1 hour')$$),
	($$SELECT twilio_outbox.stop_worker(hold => '0')$$),
	($$SELECT twilio_outbox.stop_worker(hold => '1 day -1 hour')$$)
) AS t(sql);
-- Stopping without a dispatcher and without a hold: false.
SELECT twilio_outbox.stop_worker() AS stopped, twilio_outbox.stop_worker(NULL) AS stopped_null;

-- The pg_cron functions run as their owner (pg_cron lets only a superuser
-- schedule a job as another role, the caller); the helpers are the admin's.
SELECT p.proname, p.prosecdef, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'twilio_outbox'::regnamespace
  AND p.proname IN ('schedule_supervisor', 'schedule_purge', 'schedule_supervisor_sql',
	'schedule_purge_sql', 'cron_schedule', 'cron_job_name', 'check_cron_schedule',
	'start_worker', 'stop_worker')
ORDER BY p.proname;
SELECT r.rolname, p.proname
FROM pg_catalog.pg_proc p
CROSS JOIN (VALUES ('twilio_outbox_admin'), ('twilio_outbox_monitor'), ('twilio_outbox_enqueue')) r(rolname)
WHERE p.pronamespace = 'twilio_outbox'::regnamespace
  AND p.proname IN ('schedule_supervisor', 'schedule_purge', 'schedule_supervisor_sql',
	'schedule_purge_sql', 'cron_schedule', 'start_worker', 'stop_worker')
  AND pg_catalog.has_function_privilege(r.rolname, p.oid, 'EXECUTE')
ORDER BY r.rolname, p.proname;
SELECT pg_catalog.has_function_privilege('public', 'twilio_outbox.cron_schedule(text, text, text, text, text, text)', 'EXECUTE') AS public_may_cron_schedule;
