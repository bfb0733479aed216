/*
 * twilio_outbox 0.1: schema, roles, the enqueue entry point and the
 * dispatcher's control functions.
 *
 * Everything lives in the schema twilio_outbox, owned by the extension, except
 * twilio_enqueue(), which is created in the extension's schema (the first
 * schema of the search_path at CREATE EXTENSION time, normally public) so that
 * applications can call it unqualified.  Every name below is qualified.
 */

\echo Use "CREATE EXTENSION twilio_outbox" to load this file. \quit

/*
 * Resolve every operator and type of this script in pg_catalog only; the
 * extension's own objects are always named with their schema.  SET LOCAL:
 * CREATE EXTENSION restores the caller's search_path when the script ends.
 */
SET LOCAL search_path = pg_catalog, pg_temp;

/*
 * Roles are cluster-wide, so they may already exist from another database.
 * twilio_outbox_enqueue: may call twilio_enqueue() and nothing else of note.
 * twilio_outbox_monitor: may read the tables and views, never a credential.
 * twilio_outbox_admin:   operates the outbox (accounts, senders, policy,
 *                        worker), writes credentials but cannot read them.
 */
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_enqueue') THEN
		CREATE ROLE twilio_outbox_enqueue NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_monitor') THEN
		CREATE ROLE twilio_outbox_monitor NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_admin') THEN
		CREATE ROLE twilio_outbox_admin NOLOGIN;
	END IF;
END
$roles$;
GRANT twilio_outbox_monitor TO twilio_outbox_admin;

CREATE SCHEMA twilio_outbox;
REVOKE ALL ON SCHEMA twilio_outbox FROM PUBLIC;
GRANT USAGE ON SCHEMA twilio_outbox TO twilio_outbox_monitor, twilio_outbox_admin;
COMMENT ON SCHEMA twilio_outbox IS 'Transactional outbox for Twilio messages';

CREATE TYPE twilio_outbox.message_state AS ENUM (
	'queued',		/* waiting for its next attempt */
	'sending',		/* claimed by the worker, request in flight */
	'sent',			/* Twilio answered 201 */
	'delivered',	/* status callback: delivered */
	'undelivered',	/* status callback: undelivered */
	'failed',		/* status callback: failed */
	'ambiguous',	/* Twilio may or may not have created it; held for an operator */
	'dead',			/* given up: see twilio_outbox.dead_letters */
	'canceled'		/* canceled by an operator before it was sent */
);

CREATE TYPE twilio_outbox.sender_kind AS ENUM (
	'long_code', 'toll_free', 'short_code', 'messaging_service',
	'whatsapp', 'alphanumeric'
);

CREATE TYPE twilio_outbox.error_action AS ENUM (
	'retry',			/* back off and try again */
	'dead',				/* dead-letter the message */
	'pause_account',	/* stop the whole account until an operator resumes it */
	'suppress'			/* dead-letter and never send to this recipient again */
);

CREATE TYPE twilio_outbox.attempt_outcome AS ENUM (
	'sent',			/* 201 */
	'retry',		/* failed, will be retried */
	'dead',			/* failed, dead-lettered */
	'suppressed',	/* failed, dead-lettered, recipient suppressed */
	'paused',		/* account paused; the attempt is not charged to the message */
	'rate_limited',	/* 429; not charged to the message */
	'held',			/* outcome unknown, message held as ambiguous */
	'lost'			/* the worker died with the request in flight */
);

/* Accounts: where to send and how much at once.  No secret in here. */
CREATE TABLE twilio_outbox.accounts (
	name			text PRIMARY KEY
		CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.-]{1,63}$'),
	account_sid		text NOT NULL
		CHECK (account_sid OPERATOR(pg_catalog.~) '^AC[0-9a-fA-F]{32}$'),
	base_url		text NOT NULL DEFAULT 'https://api.twilio.com'
		CHECK (base_url OPERATOR(pg_catalog.~) '^https?://[^[:space:][:cntrl:]/?#]+$'),
	is_default		boolean NOT NULL DEFAULT false,
	max_concurrency integer NOT NULL DEFAULT 25
		CHECK (max_concurrency OPERATOR(pg_catalog.>=) 1 AND max_concurrency OPERATOR(pg_catalog.<=) 1000),
	paused_until	timestamptz,
	pause_reason	text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE UNIQUE INDEX accounts_one_default ON twilio_outbox.accounts (is_default) WHERE is_default;
COMMENT ON TABLE twilio_outbox.accounts IS 'Twilio accounts the outbox sends through; credentials live in account_credentials';
COMMENT ON COLUMN twilio_outbox.accounts.paused_until IS 'no message of this account is claimed before this time; infinity = until resume_account()';

/*
 * Credentials, apart so that no role but the superuser can read the secret:
 * the admin role may write rows and read everything but the secret column.
 * The secret itself can stay out of the database (and out of every
 * statement log): name an environment variable of the server (TWILIO_*) or
 * a file in the directory twilio_outbox.secrets_dir instead.
 */
CREATE TABLE twilio_outbox.account_credentials (
	account			text PRIMARY KEY
		REFERENCES twilio_outbox.accounts (name) ON UPDATE CASCADE ON DELETE CASCADE,
	api_key_sid		text
		CHECK (api_key_sid OPERATOR(pg_catalog.~) '^SK[0-9a-fA-F]{32}$'),
	secret			text
		CHECK (secret OPERATOR(pg_catalog.<>) '' AND secret OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
	secret_env		text
		CHECK (secret_env OPERATOR(pg_catalog.~) '^TWILIO_[A-Z0-9_]+$'),
	secret_file		text
		CHECK (secret_file OPERATOR(pg_catalog.~) '^[A-Za-z0-9_-][A-Za-z0-9._-]*$'),
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (pg_catalog.num_nonnulls(secret, secret_env, secret_file) OPERATOR(pg_catalog.=) 1)
);
COMMENT ON TABLE twilio_outbox.account_credentials IS 'HTTP Basic credentials: the Account SID and auth token, or an API key SID (api_key_sid) and its secret; the secret given inline, by environment variable or by file';

/* Senders: a from-number (or WhatsApp/alphanumeric sender) or a Messaging Service. */
CREATE TABLE twilio_outbox.senders (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	account			text NOT NULL
		REFERENCES twilio_outbox.accounts (name) ON UPDATE CASCADE,
	from_number		text,
	messaging_service_sid text
		CHECK (messaging_service_sid OPERATOR(pg_catalog.~) '^MG[0-9a-fA-F]{32}$'),
	kind			twilio_outbox.sender_kind NOT NULL,
	rate			numeric CHECK (rate OPERATOR(pg_catalog.>) 0),
	burst			numeric CHECK (burst OPERATOR(pg_catalog.>=) 1),
	is_default		boolean NOT NULL DEFAULT false,
	paused_until	timestamptz,
	pause_reason	text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK ((from_number IS NULL) OPERATOR(pg_catalog.<>) (messaging_service_sid IS NULL)),
	CHECK ((kind OPERATOR(pg_catalog.=) 'messaging_service') OPERATOR(pg_catalog.=) (messaging_service_sid IS NOT NULL)),
	CHECK (from_number OPERATOR(pg_catalog.~) '^(\+[1-9][0-9]{1,14}|whatsapp:\+[1-9][0-9]{1,14}|[0-9]{3,8}|[A-Za-z0-9 ]{1,11})$'),
	UNIQUE (account, from_number),
	UNIQUE (account, messaging_service_sid)
);
CREATE UNIQUE INDEX senders_one_default ON twilio_outbox.senders (account) WHERE is_default;
COMMENT ON TABLE twilio_outbox.senders IS 'From-numbers and Messaging Services; rate is in segments per second (NULL: the default for its kind; ''Infinity'': unlimited), burst the most sent at once (NULL: one segment)';

/* The outbox itself. */
CREATE TABLE twilio_outbox.messages (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	account			text NOT NULL,
	sender_id		bigint NOT NULL,
	to_number		text NOT NULL,
	from_number		text,
	messaging_service_sid text,
	body			text,
	media_urls		text[],
	content_sid		text,
	content_variables jsonb,
	status_callback text,
	params			jsonb,
	encoding		text NOT NULL,
	segments		integer NOT NULL,
	idempotency_key uuid NOT NULL,
	dedupe_key		text,
	state			twilio_outbox.message_state NOT NULL DEFAULT 'queued',
	attempts		integer NOT NULL DEFAULT 0,
	failures		integer NOT NULL DEFAULT 0,
	ambiguous_attempts integer NOT NULL DEFAULT 0,
	send_after		timestamptz,
	expires_at		timestamptz,
	next_attempt_at timestamptz NOT NULL,
	lease_until		timestamptz,
	worker_pid		integer,
	twilio_sid		text,
	twilio_status	text,
	twilio_segments integer,
	last_http_status integer,
	last_error_code integer,
	last_error_message text,
	enqueued_by		name NOT NULL DEFAULT SESSION_USER,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	sent_at			timestamptz,
	finished_at		timestamptz
);
COMMENT ON TABLE twilio_outbox.messages IS 'One row per message; attempts counts HTTP attempts, failures those charged against twilio_outbox.max_attempts';

/*
 * The claim path, per sender in due order: only queued rows are in it,
 * however much history piles up.
 */
CREATE INDEX messages_due ON twilio_outbox.messages (sender_id, next_attempt_at, id)
	WHERE state OPERATOR(pg_catalog.=) 'queued';
CREATE INDEX messages_expiring ON twilio_outbox.messages (expires_at)
	WHERE state OPERATOR(pg_catalog.=) 'queued' AND expires_at IS NOT NULL;
CREATE INDEX messages_in_flight ON twilio_outbox.messages (lease_until)
	WHERE state OPERATOR(pg_catalog.=) 'sending';
CREATE INDEX messages_ambiguous ON twilio_outbox.messages (id)
	WHERE state OPERATOR(pg_catalog.=) 'ambiguous';
CREATE UNIQUE INDEX messages_dedupe ON twilio_outbox.messages (account, dedupe_key)
	WHERE dedupe_key IS NOT NULL;
CREATE INDEX messages_twilio_sid ON twilio_outbox.messages (twilio_sid)
	WHERE twilio_sid IS NOT NULL;
CREATE INDEX messages_finished ON twilio_outbox.messages (finished_at)
	WHERE finished_at IS NOT NULL;

/* One row per HTTP attempt, whatever came of it. */
CREATE TABLE twilio_outbox.attempts (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_id		bigint NOT NULL,
	attempt			integer NOT NULL,
	account			text NOT NULL,
	started_at		timestamptz NOT NULL,
	duration_ms		double precision,
	http_status		integer,
	twilio_code		integer,
	twilio_message	text,
	transport_error text,
	retry_after		text,
	delay			interval,
	outcome			twilio_outbox.attempt_outcome NOT NULL,
	ambiguous		boolean NOT NULL DEFAULT false,
	twilio_sid		text,
	request_id		text,
	concurrent_requests integer,
	request_duration double precision,
	worker_pid		integer
);
CREATE INDEX attempts_message ON twilio_outbox.attempts (message_id, attempt);
CREATE INDEX attempts_started ON twilio_outbox.attempts (started_at);
COMMENT ON COLUMN twilio_outbox.attempts.ambiguous IS 'the request may have reached Twilio: it may have created the message although no 201 came back';
COMMENT ON COLUMN twilio_outbox.attempts.delay IS 'the delay chosen before the next attempt (retry) or the account pause (429)';
COMMENT ON COLUMN twilio_outbox.attempts.request_duration IS 'Twilio-Request-Duration, in seconds';

/* Messages given up on, for a human. */
CREATE TABLE twilio_outbox.dead_letters (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_id		bigint NOT NULL,
	account			text NOT NULL,
	to_number		text NOT NULL,
	reason			text NOT NULL CHECK (reason OPERATOR(pg_catalog.=) ANY (ARRAY[
		'expired', 'rejected', 'attempts_exhausted', 'suppressed',
		'sender_missing', 'account_missing'])),
	http_status		integer,
	twilio_code		integer,
	error_message	text,
	attempts		integer NOT NULL,
	dead_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	requeued_at		timestamptz,
	requeued_by		name
);
CREATE INDEX dead_letters_message ON twilio_outbox.dead_letters (message_id);
CREATE INDEX dead_letters_open ON twilio_outbox.dead_letters (dead_at)
	WHERE requeued_at IS NULL;

/*
 * What to do with an error: looked up by Twilio code first, then by HTTP
 * status; with neither, 5xx and transport errors retry and other 4xx die.
 */
CREATE TABLE twilio_outbox.error_policy (
	source			text NOT NULL CHECK (source OPERATOR(pg_catalog.=) ANY (ARRAY['twilio', 'http'])),
	code			integer NOT NULL,
	action			twilio_outbox.error_action NOT NULL,
	description		text,
	PRIMARY KEY (source, code)
);
INSERT INTO twilio_outbox.error_policy (source, code, action, description) VALUES
	('http', 400, 'dead', 'bad request'),
	('http', 401, 'pause_account', 'authentication failed: fix the credentials, then resume the account'),
	('http', 403, 'dead', 'forbidden'),
	('http', 404, 'dead', 'not found'),
	('http', 429, 'retry', 'too many requests: the request was not processed'),
	('http', 500, 'retry', 'internal server error'),
	('http', 502, 'retry', 'bad gateway'),
	('http', 503, 'retry', 'service unavailable'),
	('http', 504, 'retry', 'gateway timeout'),
	('twilio', 20003, 'pause_account', 'permission denied: authentication failed'),
	('twilio', 20429, 'retry', 'too many requests'),
	('twilio', 21211, 'dead', 'invalid To phone number'),
	('twilio', 21408, 'dead', 'permission to send to this region not enabled'),
	('twilio', 21602, 'dead', 'message body is required'),
	('twilio', 21604, 'dead', 'To phone number is required'),
	('twilio', 21606, 'dead', 'From number is not a valid message-capable number'),
	('twilio', 21610, 'suppress', 'recipient unsubscribed (replied STOP)'),
	('twilio', 21612, 'dead', 'To number cannot be reached from this From'),
	('twilio', 21614, 'dead', 'To number is not a valid mobile number'),
	('twilio', 21617, 'dead', 'body exceeds the 1600 character limit'),
	('twilio', 30004, 'dead', 'message blocked'),
	('twilio', 30005, 'dead', 'unknown destination handset'),
	('twilio', 30006, 'dead', 'landline or unreachable carrier'),
	('twilio', 30007, 'dead', 'carrier violation (filtered)'),
	('twilio', 30034, 'dead', 'message from an unregistered number (A2P 10DLC)');

/* Recipients never to send to again, per account (opt-outs, 21610). */
CREATE TABLE twilio_outbox.suppressed_recipients (
	account			text NOT NULL
		REFERENCES twilio_outbox.accounts (name) ON UPDATE CASCADE ON DELETE CASCADE,
	to_number		text NOT NULL,
	reason			text,
	twilio_code		integer,
	message_id		bigint,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (account, to_number)
);

/* Status callbacks received from Twilio, as they came. */
CREATE TABLE twilio_outbox.status_events (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message_sid		text NOT NULL,
	message_status	text NOT NULL,
	error_code		integer,
	payload			jsonb,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX status_events_sid ON twilio_outbox.status_events (message_sid);

/* A sender that live messages still name cannot be deleted. */
CREATE FUNCTION twilio_outbox.senders_guard_delete() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM twilio_outbox.messages m
			   WHERE m.sender_id OPERATOR(pg_catalog.=) OLD.id
				 AND m.state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending', 'ambiguous']::twilio_outbox.message_state[])) THEN
		RAISE EXCEPTION 'cannot delete sender % while messages are waiting to be sent from it', OLD.id
			USING ERRCODE = 'foreign_key_violation',
				  HINT = 'Cancel or send those messages first.';
	END IF;
	RETURN OLD;
END
$$;
CREATE TRIGGER senders_guard_delete BEFORE DELETE ON twilio_outbox.senders
	FOR EACH ROW EXECUTE FUNCTION twilio_outbox.senders_guard_delete();

/* The entry point for applications. */
CREATE FUNCTION @extschema@.twilio_enqueue(
	to_number			text,
	body				text DEFAULT NULL,
	from_number			text DEFAULT NULL,
	messaging_service_sid text DEFAULT NULL,
	media_urls			text[] DEFAULT NULL,
	status_callback		text DEFAULT NULL,
	send_after			timestamptz DEFAULT NULL,
	expires_at			timestamptz DEFAULT NULL,
	dedupe_key			text DEFAULT NULL,
	account				text DEFAULT NULL,
	content_sid			text DEFAULT NULL,
	content_variables	jsonb DEFAULT NULL,
	params				jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'twilio_enqueue';
/* No SET search_path clause: the C function pins its own (pg_catalog only) for its queries. */
COMMENT ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb)
	IS 'Queue a Twilio message in the caller''s transaction; returns the message id';

/* The dispatcher. */
CREATE FUNCTION twilio_outbox.start_worker() RETURNS integer
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_start_worker';
COMMENT ON FUNCTION twilio_outbox.start_worker() IS 'Start this database''s dispatcher unless it runs; returns its pid';

CREATE FUNCTION twilio_outbox.stop_worker() RETURNS boolean
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_stop_worker';
COMMENT ON FUNCTION twilio_outbox.stop_worker() IS 'Stop this database''s dispatcher and wait for it to exit; false if none ran';

CREATE FUNCTION twilio_outbox.worker_pid() RETURNS integer
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_worker_pid';
COMMENT ON FUNCTION twilio_outbox.worker_pid() IS 'The pid of this database''s dispatcher, NULL if none runs';

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

/* Privileges: nothing for PUBLIC, then each role what it needs. */
REVOKE ALL ON ALL TABLES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb)
	TO twilio_outbox_enqueue, twilio_outbox_admin;

GRANT SELECT ON twilio_outbox.accounts, twilio_outbox.senders, twilio_outbox.attempts,
	twilio_outbox.dead_letters, twilio_outbox.error_policy,
	twilio_outbox.suppressed_recipients, twilio_outbox.status_events
	TO twilio_outbox_monitor;
/* Message contents (one-time codes, personal data) are not for monitoring. */
GRANT SELECT (id, account, sender_id, to_number, from_number, messaging_service_sid,
	encoding, segments, dedupe_key, state, attempts, failures, ambiguous_attempts,
	send_after, expires_at, next_attempt_at, lease_until, worker_pid, twilio_sid,
	twilio_status, twilio_segments, last_http_status, last_error_code,
	last_error_message, enqueued_by, created_at, updated_at, sent_at, finished_at)
	ON twilio_outbox.messages TO twilio_outbox_monitor;

GRANT SELECT, INSERT, UPDATE, DELETE ON twilio_outbox.accounts, twilio_outbox.senders,
	twilio_outbox.error_policy, twilio_outbox.suppressed_recipients,
	twilio_outbox.messages, twilio_outbox.dead_letters
	TO twilio_outbox_admin;
GRANT DELETE ON twilio_outbox.attempts, twilio_outbox.status_events TO twilio_outbox_admin;
GRANT INSERT, UPDATE, DELETE ON twilio_outbox.account_credentials TO twilio_outbox_admin;
GRANT SELECT (account, api_key_sid, secret_env, secret_file, updated_at) ON twilio_outbox.account_credentials TO twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.start_worker(), twilio_outbox.stop_worker(),
	twilio_outbox.worker_pid(), twilio_outbox.wake_worker(),
	twilio_outbox.schedule_supervisor(text, text),
	twilio_outbox.pause_account(text, timestamptz, text),
	twilio_outbox.resume_account(text)
	TO twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.worker_pid(), twilio_outbox.worker_status(),
	twilio_outbox.worker_accounts()
	TO twilio_outbox_monitor;
GRANT SELECT ON twilio_outbox.backlog, twilio_outbox.dead_letter_queue, twilio_outbox.attempt_log,
	twilio_outbox.stats, twilio_outbox.health, twilio_outbox.worker,
	twilio_outbox.worker_accounts
	TO twilio_outbox_monitor;
GRANT EXECUTE ON FUNCTION twilio_outbox.pause_sender(bigint, timestamptz, text),
	twilio_outbox.resume_sender(bigint), twilio_outbox.cancel(bigint),
	twilio_outbox.requeue(bigint[], integer, text, text, timestamptz, timestamptz),
	twilio_outbox.resolve_ambiguous(bigint, text),
	twilio_outbox.schedule_purge(interval, text, text, text)
	TO twilio_outbox_admin;
GRANT EXECUTE ON PROCEDURE twilio_outbox.purge(interval, integer) TO twilio_outbox_admin;
