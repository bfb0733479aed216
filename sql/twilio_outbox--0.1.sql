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
	burst			integer CHECK (burst OPERATOR(pg_catalog.>=) 1),
	is_default		boolean NOT NULL DEFAULT false,
	paused_until	timestamptz,
	pause_reason	text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK ((from_number IS NULL) OPERATOR(pg_catalog.<>) (messaging_service_sid IS NULL)),
	CHECK ((kind OPERATOR(pg_catalog.=) 'messaging_service') OPERATOR(pg_catalog.=) (messaging_service_sid IS NOT NULL)),
	CHECK (from_number OPERATOR(pg_catalog.~) '^(\+[1-9][0-9]{1,14}|[a-z]+:\+[1-9][0-9]{1,14}|[0-9]{3,8}|[A-Za-z0-9 ]{1,11})$'),
	UNIQUE (account, from_number),
	UNIQUE (account, messaging_service_sid)
);
CREATE UNIQUE INDEX senders_one_default ON twilio_outbox.senders (account) WHERE is_default;
COMMENT ON TABLE twilio_outbox.senders IS 'From-numbers and Messaging Services; rate is in segments per second (NULL: the default for its kind)';

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

/* The claim path: only due rows are in it, however much history piles up. */
CREATE INDEX messages_due ON twilio_outbox.messages (account, next_attempt_at)
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
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'twilio_enqueue';
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
	UPDATE twilio_outbox.accounts a SET paused_until = NULL, pause_reason = NULL
	WHERE a.name OPERATOR(pg_catalog.=) account;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'account "%" does not exist', account USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM twilio_outbox.wake_worker();
END
$$;

CREATE FUNCTION twilio_outbox.wake_worker() RETURNS void
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_wake_worker';
COMMENT ON FUNCTION twilio_outbox.wake_worker() IS 'Wake the dispatcher when the current transaction commits';

/* Privileges: nothing for PUBLIC, then each role what it needs. */
REVOKE ALL ON ALL TABLES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA twilio_outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twilio_outbox FROM PUBLIC;
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
GRANT EXECUTE ON FUNCTION twilio_outbox.worker_pid() TO twilio_outbox_monitor;
