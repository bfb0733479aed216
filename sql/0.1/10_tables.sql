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

