/*
 * pg_cron supervision: one named job, every minute, that starts the worker if
 * it is not running.  pg_cron lives in one database (cron.database_name); run
 * this there, naming the database the outbox is in, or in the outbox's own
 * database when pg_cron is installed in it.
 */
CREATE FUNCTION twilio_outbox.schedule_supervisor(
	database	text DEFAULT pg_catalog.current_database(),
	job_name	text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	name	text := coalesce(job_name, 'twilio_outbox_supervisor_' OPERATOR(pg_catalog.||) database);
	command	text := 'SELECT twilio_outbox.start_worker()';
	job		bigint;
BEGIN
	IF pg_catalog.to_regnamespace('cron') IS NULL
	   OR pg_catalog.to_regproc('cron.schedule_in_database') IS NULL THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', pg_catalog.current_database()
			USING ERRCODE = 'undefined_object',
				  HINT = pg_catalog.format('Install pg_cron 1.4 or later (shared_preload_libraries = ''pg_cron''), then in the database named by cron.database_name run: %s',
					pg_catalog.format('SELECT cron.schedule_in_database(%L, %L, %L, %L)',
						name, '* * * * *', command, database));
	END IF;
	/* schedule_in_database keeps an existing job's database: set it again. */
	EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
		INTO job USING name, '* * * * *', command, database;
	EXECUTE 'SELECT cron.alter_job(job_id => $1, schedule => $2, command => $3, database => $4, active => true)'
		USING job, '* * * * *', command, database;
	RETURN job;
END
$$;
COMMENT ON FUNCTION twilio_outbox.schedule_supervisor(text, text) IS 'Create or update the pg_cron job that starts the dispatcher every minute if it is not running';

/* Operator functions. */
CREATE FUNCTION twilio_outbox.pause_account(account text, until timestamptz DEFAULT 'infinity', reason text DEFAULT 'paused by operator')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE twilio_outbox.accounts a SET paused_until = until, pause_reason = reason
	WHERE a.name OPERATOR(pg_catalog.=) account;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'account "%" does not exist', account USING ERRCODE = 'undefined_object';
	END IF;
END
$$;

CREATE FUNCTION twilio_outbox.resume_account(account text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM twilio_outbox.pause_account(account, NULL, NULL);
	PERFORM twilio_outbox.wake_worker();
END
$$;

CREATE FUNCTION twilio_outbox.wake_worker() RETURNS void
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_wake_worker';
COMMENT ON FUNCTION twilio_outbox.wake_worker() IS 'Wake the dispatcher when the current transaction commits';

CREATE FUNCTION twilio_outbox.pause_sender(sender bigint, until timestamptz DEFAULT 'infinity', reason text DEFAULT 'paused by operator')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE twilio_outbox.senders s SET paused_until = until, pause_reason = reason
	WHERE s.id = sender;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sender % does not exist', sender USING ERRCODE = 'undefined_object';
	END IF;
END
$$;

CREATE FUNCTION twilio_outbox.resume_sender(sender bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM twilio_outbox.pause_sender(sender, NULL, NULL);
	PERFORM twilio_outbox.wake_worker();
END
$$;

/*
 * Cancel a message that has not been sent: queued (waiting, scheduled or
 * between retries) or held as ambiguous.  A message in flight cannot be
 * canceled: its request may already be at Twilio.
 */
CREATE FUNCTION twilio_outbox.cancel(message_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	current twilio_outbox.message_state;
BEGIN
	SELECT m.state INTO current FROM twilio_outbox.messages m
	WHERE m.id = message_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'message % does not exist', message_id USING ERRCODE = 'undefined_object';
	END IF;
	IF current <> ALL (ARRAY['queued', 'ambiguous']::twilio_outbox.message_state[]) THEN
		RAISE EXCEPTION 'cannot cancel message % in state %', message_id, current
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only queued or ambiguous messages can be canceled.';
	END IF;
	UPDATE twilio_outbox.messages m
	SET state = 'canceled', finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
		last_error_message = 'canceled by ' || SESSION_USER
	WHERE m.id = message_id AND m.state = current;
END
$$;

/*
 * Send dead or ambiguous messages again, with a fresh attempt budget and the
 * same idempotency key: by id, or every open dead letter matching all the
 * filters given.  Messages already expired, and recipients suppressed since,
 * are left alone.  Returns how many were re-queued.
 */
CREATE FUNCTION twilio_outbox.requeue(message_ids bigint[] DEFAULT NULL,
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
	WITH candidates AS (
		SELECT m.id
		FROM twilio_outbox.messages m
		WHERE m.state = ANY (ARRAY['dead', 'ambiguous']::twilio_outbox.message_state[])
		  AND (message_ids IS NULL OR m.id = ANY (message_ids))
		  AND (m.expires_at IS NULL OR m.expires_at > pg_catalog.now())
		  AND NOT EXISTS (SELECT 1 FROM twilio_outbox.suppressed_recipients r
						  WHERE r.account = m.account
							AND r.to_number = m.to_number)
		  AND (m.state = 'ambiguous' OR EXISTS (
				SELECT 1 FROM twilio_outbox.dead_letters d
				WHERE d.message_id = m.id AND d.requeued_at IS NULL
				  AND (requeue.twilio_code IS NULL OR d.twilio_code = requeue.twilio_code)
				  AND (requeue.account IS NULL OR d.account = requeue.account)
				  AND (requeue.reason IS NULL OR d.reason = requeue.reason)
				  AND (dead_after IS NULL OR d.dead_at >= dead_after)
				  AND (dead_before IS NULL OR d.dead_at < dead_before)))
		  AND (m.state = 'dead' OR message_ids IS NOT NULL)
		FOR UPDATE OF m
	), requeued AS (
		UPDATE twilio_outbox.messages m
		SET state = 'queued', failures = 0, next_attempt_at = pg_catalog.now(),
			finished_at = NULL, updated_at = pg_catalog.now()
		FROM candidates c WHERE m.id = c.id
		RETURNING m.id
	), marked AS (
		UPDATE twilio_outbox.dead_letters d
		SET requeued_at = pg_catalog.now(), requeued_by = SESSION_USER
		FROM requeued r
		WHERE d.message_id = r.id AND d.requeued_at IS NULL
	)
	SELECT pg_catalog.count(*) INTO n FROM requeued;
	IF n > 0 THEN
		PERFORM twilio_outbox.wake_worker();
	END IF;
	RETURN n;
END
$$;

/*
 * An operator found out what became of an ambiguous message (in the Twilio
 * console, by recipient and time): record it as sent, with its SID if known.
 */
CREATE FUNCTION twilio_outbox.resolve_ambiguous(message_id bigint, twilio_sid text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF twilio_sid IS NOT NULL AND twilio_sid !~ '^(SM|MM)[0-9a-fA-F]{32}$' THEN
		RAISE EXCEPTION 'invalid message SID "%"', twilio_sid USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM twilio_outbox.messages m WHERE m.id = message_id) THEN
		RAISE EXCEPTION 'message % does not exist', message_id USING ERRCODE = 'undefined_object';
	END IF;
	UPDATE twilio_outbox.messages m
	SET state = 'sent', twilio_sid = coalesce(resolve_ambiguous.twilio_sid, m.twilio_sid),
		sent_at = pg_catalog.now(), finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
		last_error_message = 'resolved as sent by ' || SESSION_USER
	WHERE m.id = message_id AND m.state = 'ambiguous';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'message % is not ambiguous', message_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
END
$$;

/*
 * Delete finished messages (sent, delivered, undelivered, failed, dead,
 * canceled) older than older_than, with their attempts and dead letters,
 * and attempts and status events older than that, batch_size rows at a
 * time, committing between batches so that no long transaction holds
 * vacuum back.  CALL it, or schedule it with schedule_purge().  (No SET
 * search_path clause: a procedure with one cannot commit.  It runs with the
 * caller's rights and names every object with its schema.)
 */
CREATE PROCEDURE twilio_outbox.purge(older_than interval DEFAULT '30 days', batch_size integer DEFAULT 10000)
LANGUAGE plpgsql
AS $$
DECLARE
	cutoff timestamptz := pg_catalog.now() - older_than;
	n bigint;
	total bigint := 0;
BEGIN
	IF older_than < interval '0' OR batch_size < 1 THEN
		RAISE EXCEPTION 'purge needs a non-negative interval and a positive batch size'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	LOOP
		WITH doomed AS (
			SELECT m.id FROM twilio_outbox.messages m
			WHERE m.finished_at < cutoff
			  AND m.state <> ALL (ARRAY['queued', 'sending', 'ambiguous']::twilio_outbox.message_state[])
			ORDER BY m.finished_at LIMIT batch_size
			FOR UPDATE SKIP LOCKED
		), gone AS (
			DELETE FROM twilio_outbox.messages m USING doomed d
			WHERE m.id = d.id RETURNING m.id
		), attempts_gone AS (
			DELETE FROM twilio_outbox.attempts a USING gone g
			WHERE a.message_id = g.id
		), letters_gone AS (
			DELETE FROM twilio_outbox.dead_letters l USING gone g
			WHERE l.message_id = g.id
		)
		SELECT pg_catalog.count(*) INTO n FROM gone;
		total := total + n;
		COMMIT;
		EXIT WHEN n < batch_size;
	END LOOP;
	LOOP
		DELETE FROM twilio_outbox.attempts a WHERE a.id = ANY (ARRAY(
			SELECT x.id FROM twilio_outbox.attempts x
			WHERE x.started_at < cutoff LIMIT batch_size));
		GET DIAGNOSTICS n = ROW_COUNT;
		COMMIT;
		EXIT WHEN n < batch_size;
	END LOOP;
	LOOP
		DELETE FROM twilio_outbox.status_events e WHERE e.id = ANY (ARRAY(
			SELECT x.id FROM twilio_outbox.status_events x
			WHERE x.received_at < cutoff LIMIT batch_size));
		GET DIAGNOSTICS n = ROW_COUNT;
		COMMIT;
		EXIT WHEN n < batch_size;
	END LOOP;
	RAISE NOTICE 'purged % finished messages older than %', total, cutoff;
END
$$;
CREATE INDEX status_events_received ON twilio_outbox.status_events (received_at);

CREATE FUNCTION twilio_outbox.schedule_purge(older_than interval DEFAULT '30 days',
	schedule text DEFAULT '17 3 * * *',
	database text DEFAULT pg_catalog.current_database(),
	job_name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	name	text := coalesce(job_name, 'twilio_outbox_purge_' || database);
	command	text := pg_catalog.format('CALL twilio_outbox.purge(%L)', older_than);
	job		bigint;
BEGIN
	IF pg_catalog.to_regproc('cron.schedule_in_database') IS NULL THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', pg_catalog.current_database()
			USING ERRCODE = 'undefined_object',
				  HINT = pg_catalog.format('In the database named by cron.database_name run: SELECT cron.schedule_in_database(%L, %L, %L, %L)',
						name, schedule, command, database);
	END IF;
	EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
		INTO job USING name, schedule, command, database;
	EXECUTE 'SELECT cron.alter_job(job_id => $1, schedule => $2, command => $3, database => $4, active => true)'
		USING job, schedule, command, database;
	RETURN job;
END
$$;

