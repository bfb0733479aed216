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
AS 'MODULE_PATHNAME', 'twilio_outbox_start_worker_0_2';
COMMENT ON FUNCTION twilio_outbox.start_worker(boolean) IS 'Start this database''s dispatcher unless it runs; returns its pid.  An operator''s call ends a hold; the supervisor''s (supervisor => true) respects it and returns NULL while it lasts';

DROP FUNCTION twilio_outbox.stop_worker();
CREATE FUNCTION twilio_outbox.stop_worker(hold interval DEFAULT NULL) RETURNS boolean
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'twilio_outbox_stop_worker_0_2';
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


/* ---------- H2: purge and the operator functions (begin) ---------- */

/*
 * Operator functions check their arguments at the call: NULL where a value
 * is needed is 22004 (null_value_not_allowed), a value that makes no sense
 * (a negative id, a pause already over, an unknown reason) 22023
 * (invalid_parameter_value), an unknown account, sender or message 42704.
 * Quoted input goes through clip_input().
 */

CREATE OR REPLACE FUNCTION twilio_outbox.pause_account(account text, until timestamptz DEFAULT 'infinity', reason text DEFAULT 'paused by operator')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF account IS NULL OR until IS NULL OR reason IS NULL THEN
		RAISE EXCEPTION '% must not be null',
			CASE WHEN account IS NULL THEN 'account' WHEN until IS NULL THEN 'until' ELSE 'reason' END
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Leave until out to pause until resume_account(); resume_account() ends a pause.';
	END IF;
	IF until OPERATOR(pg_catalog.<=) pg_catalog.now() THEN
		RAISE EXCEPTION 'until is already past'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'resume_account() ends a pause.';
	END IF;
	IF pg_catalog.length(reason) OPERATOR(pg_catalog.>) 1000 THEN
		RAISE EXCEPTION 'reason is too long' USING ERRCODE = 'string_data_right_truncation',
			DETAIL = 'A pause reason has at most 1000 characters.';
	END IF;
	IF reason OPERATOR(pg_catalog.~) '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'reason must not contain control characters' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE twilio_outbox.accounts a SET paused_until = until, pause_reason = reason
	WHERE a.name OPERATOR(pg_catalog.=) account;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'account "%" does not exist', twilio_outbox.clip_input(account)
			USING ERRCODE = 'undefined_object';
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION twilio_outbox.resume_account(account text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF account IS NULL THEN
		RAISE EXCEPTION 'account must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	UPDATE twilio_outbox.accounts a SET paused_until = NULL, pause_reason = NULL
	WHERE a.name OPERATOR(pg_catalog.=) account;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'account "%" does not exist', twilio_outbox.clip_input(account)
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM twilio_outbox.wake_worker();
END
$$;

CREATE OR REPLACE FUNCTION twilio_outbox.pause_sender(sender bigint, until timestamptz DEFAULT 'infinity', reason text DEFAULT 'paused by operator')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF sender IS NULL OR until IS NULL OR reason IS NULL THEN
		RAISE EXCEPTION '% must not be null',
			CASE WHEN sender IS NULL THEN 'sender' WHEN until IS NULL THEN 'until' ELSE 'reason' END
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Leave until out to pause until resume_sender(); resume_sender() ends a pause.';
	END IF;
	IF sender OPERATOR(pg_catalog.<) 1 THEN
		RAISE EXCEPTION 'invalid sender id %', sender
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Sender ids are positive.';
	END IF;
	IF until OPERATOR(pg_catalog.<=) pg_catalog.now() THEN
		RAISE EXCEPTION 'until is already past'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'resume_sender() ends a pause.';
	END IF;
	IF pg_catalog.length(reason) OPERATOR(pg_catalog.>) 1000 THEN
		RAISE EXCEPTION 'reason is too long' USING ERRCODE = 'string_data_right_truncation',
			DETAIL = 'A pause reason has at most 1000 characters.';
	END IF;
	IF reason OPERATOR(pg_catalog.~) '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'reason must not contain control characters' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE twilio_outbox.senders s SET paused_until = until, pause_reason = reason
	WHERE s.id OPERATOR(pg_catalog.=) sender;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sender % does not exist', sender USING ERRCODE = 'undefined_object';
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION twilio_outbox.resume_sender(sender bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF sender IS NULL THEN
		RAISE EXCEPTION 'sender must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF sender OPERATOR(pg_catalog.<) 1 THEN
		RAISE EXCEPTION 'invalid sender id %', sender
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Sender ids are positive.';
	END IF;
	UPDATE twilio_outbox.senders s SET paused_until = NULL, pause_reason = NULL
	WHERE s.id OPERATOR(pg_catalog.=) sender;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sender % does not exist', sender USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM twilio_outbox.wake_worker();
END
$$;

/*
 * Cancel a message that has not been sent: queued (waiting, scheduled or
 * between retries) or held as ambiguous.  A message in flight cannot be
 * canceled: its request may already be at Twilio.
 */
CREATE OR REPLACE FUNCTION twilio_outbox.cancel(message_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	current twilio_outbox.message_state;
BEGIN
	IF message_id IS NULL THEN
		RAISE EXCEPTION 'message_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF message_id OPERATOR(pg_catalog.<) 1 THEN
		RAISE EXCEPTION 'invalid message id %', message_id
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Message ids are positive.';
	END IF;
	SELECT m.state INTO current FROM twilio_outbox.messages m
	WHERE m.id OPERATOR(pg_catalog.=) message_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'message % does not exist', message_id USING ERRCODE = 'undefined_object';
	END IF;
	IF current OPERATOR(pg_catalog.<>) ALL (ARRAY['queued', 'ambiguous']::twilio_outbox.message_state[]) THEN
		RAISE EXCEPTION 'cannot cancel message % in state %', message_id, current
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only queued or ambiguous messages can be canceled.';
	END IF;
	UPDATE twilio_outbox.messages m
	SET state = 'canceled', finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
		last_error_message = 'canceled by ' OPERATOR(pg_catalog.||) SESSION_USER
	WHERE m.id OPERATOR(pg_catalog.=) message_id AND m.state OPERATOR(pg_catalog.=) current;
END
$$;

/*
 * Send dead or ambiguous messages again, with a fresh attempt budget and the
 * same idempotency key: by id, or every open dead letter matching all the
 * filters given.  Messages already expired, and recipients suppressed since,
 * are left alone.  Returns how many were re-queued.
 */
CREATE OR REPLACE FUNCTION twilio_outbox.requeue(message_ids bigint[] DEFAULT NULL,
	twilio_code integer DEFAULT NULL, account text DEFAULT NULL,
	reason text DEFAULT NULL, dead_after timestamptz DEFAULT NULL,
	dead_before timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	IF message_ids IS NULL AND twilio_code IS NULL AND account IS NULL
	   AND reason IS NULL AND dead_after IS NULL AND dead_before IS NULL THEN
		RAISE EXCEPTION 'requeue needs message ids or at least one filter'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'To re-queue every dead letter, say so: dead_before => now().';
	END IF;
	IF pg_catalog.array_position(message_ids, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'message_ids must not contain NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.unnest(message_ids) AS i(id) WHERE i.id OPERATOR(pg_catalog.<) 1) THEN
		RAISE EXCEPTION 'message_ids must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF twilio_code OPERATOR(pg_catalog.<) 1 THEN
		RAISE EXCEPTION 'invalid Twilio error code %', twilio_code
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Twilio error codes are positive.';
	END IF;
	IF reason OPERATOR(pg_catalog.<>) ALL (ARRAY['expired', 'rejected', 'attempts_exhausted',
			'suppressed', 'sender_missing', 'account_missing']) THEN
		RAISE EXCEPTION 'invalid dead letter reason "%"', twilio_outbox.clip_input(reason)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A reason is one of expired, rejected, attempts_exhausted, suppressed, sender_missing, account_missing.';
	END IF;
	IF dead_after OPERATOR(pg_catalog.>=) dead_before THEN
		RAISE EXCEPTION 'dead_after must be earlier than dead_before' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF account IS NOT NULL AND NOT EXISTS (SELECT 1 FROM twilio_outbox.accounts a
			WHERE a.name OPERATOR(pg_catalog.=) requeue.account) THEN
		RAISE EXCEPTION 'account "%" does not exist', twilio_outbox.clip_input(account)
			USING ERRCODE = 'undefined_object';
	END IF;
	WITH candidates AS (
		SELECT m.id
		FROM twilio_outbox.messages m
		WHERE m.state OPERATOR(pg_catalog.=) ANY (ARRAY['dead', 'ambiguous']::twilio_outbox.message_state[])
		  AND (message_ids IS NULL OR m.id OPERATOR(pg_catalog.=) ANY (message_ids))
		  AND (m.expires_at IS NULL OR m.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
		  AND NOT EXISTS (SELECT 1 FROM twilio_outbox.suppressed_recipients r
						  WHERE r.account OPERATOR(pg_catalog.=) m.account
							AND r.to_number OPERATOR(pg_catalog.=) m.to_number)
		  AND (m.state OPERATOR(pg_catalog.=) 'ambiguous' OR EXISTS (
				SELECT 1 FROM twilio_outbox.dead_letters d
				WHERE d.message_id OPERATOR(pg_catalog.=) m.id AND d.requeued_at IS NULL
				  AND (requeue.twilio_code IS NULL OR d.twilio_code OPERATOR(pg_catalog.=) requeue.twilio_code)
				  AND (requeue.account IS NULL OR d.account OPERATOR(pg_catalog.=) requeue.account)
				  AND (requeue.reason IS NULL OR d.reason OPERATOR(pg_catalog.=) requeue.reason)
				  AND (dead_after IS NULL OR d.dead_at OPERATOR(pg_catalog.>=) dead_after)
				  AND (dead_before IS NULL OR d.dead_at OPERATOR(pg_catalog.<) dead_before)))
		  AND (m.state OPERATOR(pg_catalog.=) 'dead' OR message_ids IS NOT NULL)
		FOR UPDATE OF m
	), requeued AS (
		UPDATE twilio_outbox.messages m
		SET state = 'queued', failures = 0, next_attempt_at = pg_catalog.now(),
			finished_at = NULL, updated_at = pg_catalog.now(),
			reconcile_at = NULL, reconcile_candidates = NULL
		FROM candidates c WHERE m.id OPERATOR(pg_catalog.=) c.id
		RETURNING m.id
	), marked AS (
		UPDATE twilio_outbox.dead_letters d
		SET requeued_at = pg_catalog.now(), requeued_by = SESSION_USER
		FROM requeued r
		WHERE d.message_id OPERATOR(pg_catalog.=) r.id AND d.requeued_at IS NULL
	)
	SELECT pg_catalog.count(*) INTO n FROM requeued;
	IF n OPERATOR(pg_catalog.>) 0 THEN
		PERFORM twilio_outbox.wake_worker();
	END IF;
	RETURN n;
END
$$;

/*
 * An operator found out what became of an ambiguous message (in the Twilio
 * console, by recipient and time): record it as sent, with its SID if known.
 */
CREATE OR REPLACE FUNCTION twilio_outbox.resolve_ambiguous(message_id bigint, twilio_sid text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF message_id IS NULL THEN
		RAISE EXCEPTION 'message_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF message_id OPERATOR(pg_catalog.<) 1 THEN
		RAISE EXCEPTION 'invalid message id %', message_id
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Message ids are positive.';
	END IF;
	IF twilio_sid IS NOT NULL AND twilio_sid OPERATOR(pg_catalog.!~) '^(SM|MM)[0-9a-fA-F]{32}$' THEN
		RAISE EXCEPTION 'invalid message SID "%"', twilio_outbox.clip_input(twilio_sid)
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A message SID is SM or MM followed by 32 hexadecimal digits.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM twilio_outbox.messages m WHERE m.id OPERATOR(pg_catalog.=) message_id) THEN
		RAISE EXCEPTION 'message % does not exist', message_id USING ERRCODE = 'undefined_object';
	END IF;
	UPDATE twilio_outbox.messages m
	SET state = 'sent', twilio_sid = coalesce(resolve_ambiguous.twilio_sid, m.twilio_sid),
		sent_at = pg_catalog.now(), finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
		reconcile_at = NULL, reconcile_candidates = NULL,
		last_error_message = 'resolved as sent by ' OPERATOR(pg_catalog.||) SESSION_USER
	WHERE m.id OPERATOR(pg_catalog.=) message_id AND m.state OPERATOR(pg_catalog.=) 'ambiguous';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'message % is not ambiguous', message_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	/* callbacks for that SID that came before it was known (no outbox_id) */
	PERFORM twilio_outbox.apply_early_statuses_of(message_id);
END
$$;

/*
 * purge: a procedure in C (src/operations.c) that checks its arguments and
 * its call context, then calls the batch functions below until each is
 * done, committing after every batch.  A procedure with a SET clause cannot
 * commit, so the search path is pinned one level down: every batch
 * function pins it, and the procedure itself runs no SQL but calls of them
 * by qualified name with typed parameters.
 */

/* The purge cutoff: now() - older_than, which must be non-negative and in range. */
CREATE FUNCTION twilio_outbox.purge_cutoff(older_than interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF older_than IS NULL THEN
		RAISE EXCEPTION 'older_than must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF older_than OPERATOR(pg_catalog.<) interval '0' THEN
		RAISE EXCEPTION 'older_than must not be negative'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('It was %s.', older_than);
	END IF;
	RETURN pg_catalog.now() OPERATOR(pg_catalog.-) older_than;
EXCEPTION WHEN datetime_field_overflow THEN
	RAISE EXCEPTION 'older_than is too large'
		USING ERRCODE = 'invalid_parameter_value',
			  DETAIL = pg_catalog.format('now() - %s is out of the range of timestamps.', older_than);
END
$$;

/* One batch: finished messages before cutoff, with their attempts and dead letters. */
CREATE FUNCTION twilio_outbox.purge_messages_batch(cutoff timestamptz, batch_size integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	WITH doomed AS (
		SELECT m.id FROM twilio_outbox.messages m
		WHERE m.finished_at OPERATOR(pg_catalog.<) cutoff
		  AND m.state OPERATOR(pg_catalog.<>) ALL (ARRAY['queued', 'sending', 'ambiguous']::twilio_outbox.message_state[])
		ORDER BY m.finished_at LIMIT batch_size
		FOR UPDATE SKIP LOCKED
	), gone AS (
		DELETE FROM twilio_outbox.messages m USING doomed d
		WHERE m.id OPERATOR(pg_catalog.=) d.id RETURNING m.id
	), attempts_gone AS (
		DELETE FROM twilio_outbox.attempts a USING gone g
		WHERE a.message_id OPERATOR(pg_catalog.=) g.id
	), letters_gone AS (
		DELETE FROM twilio_outbox.dead_letters l USING gone g
		WHERE l.message_id OPERATOR(pg_catalog.=) g.id
	)
	SELECT pg_catalog.count(*) INTO n FROM gone;
	RETURN n;
END
$$;

/* One batch of attempts started before cutoff, whatever their message. */
CREATE FUNCTION twilio_outbox.purge_attempts_batch(cutoff timestamptz, batch_size integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	DELETE FROM twilio_outbox.attempts a WHERE a.id OPERATOR(pg_catalog.=) ANY (ARRAY(
		SELECT x.id FROM twilio_outbox.attempts x
		WHERE x.started_at OPERATOR(pg_catalog.<) cutoff LIMIT batch_size));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

/* One batch of status events received before cutoff. */
CREATE FUNCTION twilio_outbox.purge_status_events_batch(cutoff timestamptz, batch_size integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	DELETE FROM twilio_outbox.status_events e WHERE e.id OPERATOR(pg_catalog.=) ANY (ARRAY(
		SELECT x.id FROM twilio_outbox.status_events x
		WHERE x.received_at OPERATOR(pg_catalog.<) cutoff LIMIT batch_size));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

/*
 * Delete finished messages (sent, delivered, undelivered, failed, dead,
 * canceled) older than older_than, with their attempts and dead letters,
 * and attempts and status events older than that, batch_size rows at a
 * time, committing between batches.  CALL it on its own (not in a
 * transaction block: 25001), or schedule it with schedule_purge().
 */
CREATE OR REPLACE PROCEDURE twilio_outbox.purge(older_than interval DEFAULT '30 days', batch_size integer DEFAULT 10000)
LANGUAGE c
AS 'MODULE_PATHNAME', 'twilio_outbox_purge';
COMMENT ON PROCEDURE twilio_outbox.purge(interval, integer) IS 'Delete finished messages, attempts and status events older than older_than, in batches, committing between them; CALL outside a transaction block';

/* ---------- H2: purge and the operator functions (end) ---------- */
