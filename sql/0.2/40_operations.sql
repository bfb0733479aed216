/* operator functions and procedures, supervision */

/* ---------- the dispatcher: start, stop, hold; pg_cron jobs ---------- */

/*
 * start_worker(supervisor => true) is what the pg_cron job calls: it
 * respects a stop_worker(hold => ...) and is remembered (worker view,
 * health hint).  An operator's start_worker() ends a hold.
 */
DROP FUNCTION twilio_outbox.start_worker();
CREATE FUNCTION twilio_outbox.start_worker(supervisor boolean DEFAULT false) RETURNS integer
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'twilio_outbox_start_worker';
COMMENT ON FUNCTION twilio_outbox.start_worker(boolean) IS 'Start this database''s dispatcher unless it runs; returns its pid.  An operator''s call ends a hold; the supervisor''s (supervisor => true) respects it and returns NULL while it lasts';

DROP FUNCTION twilio_outbox.stop_worker();
CREATE FUNCTION twilio_outbox.stop_worker(hold interval DEFAULT NULL) RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'twilio_outbox_stop_worker';
COMMENT ON FUNCTION twilio_outbox.stop_worker(interval) IS 'Stop this database''s dispatcher and wait for it to exit (false if none ran); with hold, the supervisor does not start it again for that long (start_worker() does, and ends the hold)';

/*
 * Argument checks of the pg_cron functions, at the call rather than as an
 * internal error from pg_cron.  The job's name: job_name, or
 * twilio_outbox_<kind>_<database>; pg_cron keeps names of at most 63 bytes.
 */
CREATE FUNCTION twilio_outbox.cron_job_name(database text, job_name text, kind text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	name text;
BEGIN
	IF database IS NULL THEN
		RAISE EXCEPTION 'database must not be NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Leave it out for the current database.';
	END IF;
	IF database = '' OR database ~ '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'invalid database name "%"', database
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = database) THEN
		RAISE EXCEPTION 'database "%" does not exist', database
			USING ERRCODE = 'invalid_catalog_name';
	END IF;
	name := coalesce(job_name, 'twilio_outbox_' || kind || '_' || database);
	IF name = '' OR name ~ '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'invalid job name "%"', name
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF pg_catalog.octet_length(name) > 63 THEN
		RAISE EXCEPTION 'job name "%" is longer than 63 bytes', name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'pg_cron keeps job names of at most 63 bytes: give a shorter job_name.';
	END IF;
	RETURN name;
END
$$;

/*
 * A cron schedule pg_cron 1.4 accepts: five fields (minute, hour, day of
 * month, month, day of week), each a list of *, n or n-m, each optionally
 * /step, with month and day names; or @hourly, @daily, @weekly, @monthly,
 * @yearly.
 */
CREATE FUNCTION twilio_outbox.check_cron_schedule(schedule text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	fields	text[];
	lo		integer[] := ARRAY[0, 0, 1, 1, 0];
	hi		integer[] := ARRAY[59, 23, 31, 12, 7];
	names	text[];
	item	text;
	m		text[];
	i		integer;
	j		integer;
	ok		boolean := true;
BEGIN
	IF schedule IS NULL THEN
		RAISE EXCEPTION 'schedule must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF schedule ~* '^\s*@(yearly|annually|monthly|weekly|daily|midnight|hourly)\s*$' THEN
		RETURN;
	END IF;
	fields := pg_catalog.regexp_split_to_array(pg_catalog.btrim(schedule), '\s+');
	IF pg_catalog.array_length(fields, 1) IS DISTINCT FROM 5 THEN
		ok := false;
	END IF;
	i := 1;
	WHILE ok AND i <= 5 LOOP
		names := CASE i WHEN 4 THEN ARRAY['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec']
						WHEN 5 THEN ARRAY['sun','mon','tue','wed','thu','fri','sat'] END;
		FOREACH item IN ARRAY pg_catalog.string_to_array(pg_catalog.lower(fields[i]), ',') LOOP
			/* month and day names stand for their numbers */
			FOR j IN 1 .. coalesce(pg_catalog.array_length(names, 1), 0) LOOP
				item := pg_catalog.replace(item, names[j], (j - 1 + CASE i WHEN 4 THEN 1 ELSE 0 END)::text);
			END LOOP;
			m := pg_catalog.regexp_match(item, '^(\*|([0-9]{1,2})(-([0-9]{1,2}))?)(/([0-9]{1,2}))?$');
			IF m IS NULL
			   OR m[2]::integer NOT BETWEEN lo[i] AND hi[i]
			   OR m[4]::integer NOT BETWEEN m[2]::integer AND hi[i]
			   OR m[6]::integer = 0 THEN
				ok := false;
				EXIT;
			END IF;
		END LOOP;
		i := i + 1;
	END LOOP;
	IF NOT ok THEN
		RAISE EXCEPTION 'invalid cron schedule "%"', schedule
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A schedule has five fields: minute (0-59), hour (0-23), day of the month (1-31), month (1-12) and day of the week (0-7), each *, a number, a range a-b or a list of them, optionally /step; or @hourly, @daily, @weekly, @monthly, @yearly.';
	END IF;
END
$$;

/*
 * Schedule (or update) a pg_cron job where pg_cron keeps its jobs, which
 * must be this database; elsewhere a refusal whose hint is the exact
 * statement to run in pg_cron's database (what sql_function returns).  The
 * job runs as the caller (session_user), so it can do no more than the
 * caller could.  Called by the SECURITY DEFINER schedule_supervisor() and
 * schedule_purge(): pg_cron lets only a superuser name the job's user.
 */
CREATE FUNCTION twilio_outbox.cron_schedule(job_name text, schedule text, command text,
	database text, statement text, sql_function text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cron_db	text := pg_catalog.current_setting('cron.database_name', true);
	job		bigint;
BEGIN
	IF pg_catalog.to_regproc('cron.schedule_in_database') IS NULL THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', pg_catalog.current_database()
			USING ERRCODE = 'undefined_object',
				  HINT = CASE
					WHEN cron_db IS NULL THEN pg_catalog.format(
						'pg_cron is not loaded: add pg_cron to shared_preload_libraries, set cron.database_name to the database pg_cron keeps its jobs in (postgres, say), restart the server and run CREATE EXTENSION pg_cron in that database. Then run there, as a superuser: %s', statement)
					WHEN cron_db = pg_catalog.current_database() THEN
						'This is pg_cron''s database (cron.database_name): run CREATE EXTENSION pg_cron; here, then call this function again.'
					ELSE pg_catalog.format(
						'pg_cron keeps its jobs in database "%s" (cron.database_name). Run there, as a superuser: %s (twilio_outbox.%s() returns this statement; if pg_cron is not created there yet, run CREATE EXTENSION pg_cron; there first).',
						cron_db, statement, sql_function)
				  END;
	END IF;
	EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4, $5)'
		INTO job USING job_name, schedule, command, database, SESSION_USER::text;
	/* pg_cron 1.4 keeps an existing job's database and activity: set them again. */
	EXECUTE 'SELECT cron.alter_job(job_id => $1, schedule => $2, command => $3, database => $4, active => true)'
		USING job, schedule, command, database;
	RETURN job;
END
$$;

/* The statements to run in pg_cron's database, for a database without pg_cron. */
CREATE FUNCTION twilio_outbox.schedule_supervisor_sql(
	database	text DEFAULT pg_catalog.current_database(),
	job_name	text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN pg_catalog.format('SELECT cron.schedule_in_database(%L, %L, %L, %L);',
		twilio_outbox.cron_job_name(database, job_name, 'supervisor'), '* * * * *',
		'SELECT twilio_outbox.start_worker(supervisor => true)', database);
END
$$;
COMMENT ON FUNCTION twilio_outbox.schedule_supervisor_sql(text, text) IS 'The statement that schedules the supervisor job, to run in pg_cron''s database (cron.database_name) when that is another database';

CREATE FUNCTION twilio_outbox.schedule_purge_sql(older_than interval DEFAULT '30 days',
	schedule text DEFAULT '17 3 * * *',
	database text DEFAULT pg_catalog.current_database(),
	job_name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF older_than IS NULL THEN
		RAISE EXCEPTION 'older_than must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF older_than < interval '0' THEN
		RAISE EXCEPTION 'older_than must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM twilio_outbox.check_cron_schedule(schedule);
	RETURN pg_catalog.format('SELECT cron.schedule_in_database(%L, %L, %L, %L);',
		twilio_outbox.cron_job_name(database, job_name, 'purge'), schedule,
		pg_catalog.format('CALL twilio_outbox.purge(%L)', older_than), database);
END
$$;
COMMENT ON FUNCTION twilio_outbox.schedule_purge_sql(interval, text, text, text) IS 'The statement that schedules the nightly purge, to run in pg_cron''s database (cron.database_name) when that is another database';

/*
 * pg_cron supervision: one named job, every minute, that starts the worker
 * unless it runs or is held.  Where pg_cron lives in this database this
 * schedules it; elsewhere it refuses with the statement to run in pg_cron's
 * database (schedule_supervisor_sql() returns it).  SECURITY DEFINER so that
 * an admin needs no grant on pg_cron: the command is fixed and the job runs
 * as the caller.
 */
CREATE OR REPLACE FUNCTION twilio_outbox.schedule_supervisor(
	database	text DEFAULT pg_catalog.current_database(),
	job_name	text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN twilio_outbox.cron_schedule(
		twilio_outbox.cron_job_name(database, job_name, 'supervisor'), '* * * * *',
		'SELECT twilio_outbox.start_worker(supervisor => true)', database,
		twilio_outbox.schedule_supervisor_sql(database, job_name), 'schedule_supervisor_sql');
END
$$;
COMMENT ON FUNCTION twilio_outbox.schedule_supervisor(text, text) IS 'Create or update the pg_cron job that starts the dispatcher every minute unless it runs or is held; where pg_cron keeps its jobs in another database, the error''s hint is the statement to run there';

CREATE OR REPLACE FUNCTION twilio_outbox.schedule_purge(older_than interval DEFAULT '30 days',
	schedule text DEFAULT '17 3 * * *',
	database text DEFAULT pg_catalog.current_database(),
	job_name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	statement text := twilio_outbox.schedule_purge_sql(older_than, schedule, database, job_name);
BEGIN
	RETURN twilio_outbox.cron_schedule(
		twilio_outbox.cron_job_name(database, job_name, 'purge'), schedule,
		pg_catalog.format('CALL twilio_outbox.purge(%L)', older_than), database,
		statement, 'schedule_purge_sql');
END
$$;
COMMENT ON FUNCTION twilio_outbox.schedule_purge(interval, text, text, text) IS 'Create or update the pg_cron job that runs purge(older_than) on a schedule (nightly by default); where pg_cron keeps its jobs in another database, the error''s hint is the statement to run there';
