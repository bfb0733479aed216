/* webhooks from Twilio: status callbacks and inbound opt-outs (src/callback.c) */

/*
 * The role a webhook endpoint (the thin receiver, or the application's own)
 * connects as: it may call the receive_* functions and nothing else, not
 * even read the tables they write.
 */
DO $role$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'twilio_outbox_webhook') THEN
		CREATE ROLE twilio_outbox_webhook NOLOGIN;
	END IF;
END
$role$;

/*
 * The auth token that validates the account's webhooks.  Twilio signs with
 * the account's auth token even when the outbox sends with an API key, so
 * such an account names it here, the same three ways as the secret (inline,
 * server environment variable, file in twilio_outbox.secrets_dir) and, like
 * the secret, readable by no role (the admin role may read the env and
 * file names).  With none of the three, an account that sends with its auth
 * token (no api_key_sid) validates with its secret.
 */
ALTER TABLE twilio_outbox.account_credentials
	ADD COLUMN auth_token text
		CONSTRAINT account_credentials_auth_token_printable
		CHECK (auth_token OPERATOR(pg_catalog.<>) '' AND auth_token OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
	ADD COLUMN auth_token_env text
		CONSTRAINT account_credentials_auth_token_env_twilio_name
		CHECK (auth_token_env OPERATOR(pg_catalog.~) '^TWILIO_[A-Z0-9_]+$'),
	ADD COLUMN auth_token_file text
		CONSTRAINT account_credentials_auth_token_file_plain_name
		CHECK (auth_token_file OPERATOR(pg_catalog.~) '^[A-Za-z0-9_-][A-Za-z0-9._-]*$'),
	ADD CONSTRAINT account_credentials_one_auth_token
		CHECK (pg_catalog.num_nonnulls(auth_token, auth_token_env, auth_token_file) OPERATOR(pg_catalog.<=) 1);
COMMENT ON COLUMN twilio_outbox.account_credentials.auth_token_env IS 'server environment variable holding the auth token that validates webhooks (needed when sending with an API key)';
COMMENT ON COLUMN twilio_outbox.account_credentials.auth_token_file IS 'file in twilio_outbox.secrets_dir holding the auth token that validates webhooks';

/*
 * Where Twilio should post the account's status callbacks.  When set, the
 * dispatcher sends StatusCallback = this URL plus outbox_id=<message id>
 * for every message enqueued without a status_callback of its own: Twilio
 * signs the whole URL, so a callback names our row even when the 201 that
 * carried the SID never arrived.  https, or http to a loopback address.
 */
ALTER TABLE twilio_outbox.accounts
	ADD COLUMN status_callback_url text
		CONSTRAINT accounts_status_callback_url_form CHECK (
			pg_catalog.length(status_callback_url) OPERATOR(pg_catalog.<=) 1900
			AND status_callback_url OPERATOR(pg_catalog.~) '^https?://[A-Za-z0-9.:\[\]-]+(/[^[:space:][:cntrl:]"<>\\^`{|}#]*)?$'
			AND (status_callback_url OPERATOR(pg_catalog.~) '^https://'
				 OR status_callback_url OPERATOR(pg_catalog.~) '^http://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]+)?(/|$)'));
COMMENT ON COLUMN twilio_outbox.accounts.status_callback_url IS 'base URL of the status callback the outbox sets itself (with ?outbox_id=<id>) on messages that name none';

/*
 * The StatusCallback a message is sent with: its own, else the account's
 * base URL with the message id.  The claim query writes the same rule out
 * in its own SQL (src/queue.c): a call of this function per message, with
 * its pinned search_path, cost the dispatcher 17 % of its CPU.
 */
CREATE FUNCTION twilio_outbox.status_callback_for(status_callback text, account text, message_id bigint)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT COALESCE($1, (
		SELECT a.status_callback_url
			OPERATOR(pg_catalog.||) CASE WHEN pg_catalog.strpos(a.status_callback_url, '?') OPERATOR(pg_catalog.>) 0 THEN '&' ELSE '?' END
			OPERATOR(pg_catalog.||) 'outbox_id='
			OPERATOR(pg_catalog.||) $3::text
		FROM twilio_outbox.accounts a WHERE a.name OPERATOR(pg_catalog.=) $2))
$$;

/* A message undelivered per its delivery error and the error policy. */
ALTER TABLE twilio_outbox.dead_letters DROP CONSTRAINT dead_letters_reason_known;
ALTER TABLE twilio_outbox.dead_letters ADD CONSTRAINT dead_letters_reason_known CHECK (
	reason OPERATOR(pg_catalog.=) ANY (ARRAY['expired', 'rejected', 'attempts_exhausted',
		'suppressed', 'sender_missing', 'account_missing', 'invalid_message', 'undelivered']));

/* Delivery errors of the callbacks that 0.1's policy did not list. */
INSERT INTO twilio_outbox.error_policy (source, code, action, description) VALUES
	('twilio', 30003, 'dead', 'unreachable destination handset'),
	('twilio', 30008, 'dead', 'unknown delivery error')
ON CONFLICT DO NOTHING;

/*
 * Status events: what each callback did, and one row per (MessageSid,
 * MessageStatus): Twilio retries callbacks, the same pair twice changes
 * nothing.  0.1 never wrote this table; rows an application wrote are
 * deduplicated, the earliest of each pair kept.
 */
ALTER TABLE twilio_outbox.status_events
	ADD COLUMN account text,
	ADD COLUMN message_id bigint,
	ADD COLUMN signature_verified boolean,
	ADD COLUMN verdict text;
COMMENT ON COLUMN twilio_outbox.status_events.verdict IS 'what the callback did: applied, stale (a status of the same or lower rank came first), unknown_status, unmatched (no such message), not_sent, other_sid (a second message Twilio created for this row), finished (the message is dead or canceled)';
COMMENT ON COLUMN twilio_outbox.status_events.payload IS 'every field of the callback as received; a repeated name''s values as an array';
DO $dedupe$
DECLARE
	n bigint;
BEGIN
	DELETE FROM twilio_outbox.status_events e
	WHERE EXISTS (SELECT 1 FROM twilio_outbox.status_events f
				  WHERE f.message_sid OPERATOR(pg_catalog.=) e.message_sid
					AND f.message_status OPERATOR(pg_catalog.=) e.message_status
					AND f.id OPERATOR(pg_catalog.<) e.id);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n OPERATOR(pg_catalog.>) 0 THEN
		RAISE NOTICE 'twilio_outbox: % duplicate status events removed (same MessageSid and MessageStatus; the earliest kept)', n;
	END IF;
END
$dedupe$;
DROP INDEX twilio_outbox.status_events_sid;
/*
 * Keyed by account too, like every table that grows with traffic (see
 * 12_distribution.sql): rows an application wrote under 0.1 take the
 * account of the message with their SID, else '(unknown)'.
 */
UPDATE twilio_outbox.status_events e SET account = m.account
FROM twilio_outbox.messages m
WHERE e.account IS NULL AND m.twilio_sid OPERATOR(pg_catalog.=) e.message_sid;
UPDATE twilio_outbox.status_events SET account = '(unknown)' WHERE account IS NULL;
ALTER TABLE twilio_outbox.status_events ALTER COLUMN account SET NOT NULL;
ALTER TABLE twilio_outbox.status_events DROP CONSTRAINT status_events_pkey;
ALTER TABLE twilio_outbox.status_events ADD CONSTRAINT status_events_pkey PRIMARY KEY (id, account);
ALTER TABLE twilio_outbox.status_events
	ADD CONSTRAINT status_events_sid_status UNIQUE (message_sid, message_status, account);

/* An opt-out dead-letters the recipient's queued messages: found by this index, not a scan. */
CREATE INDEX messages_queued_to ON twilio_outbox.messages (to_number)
	WHERE state OPERATOR(pg_catalog.=) 'queued';

/*
 * The rank of a message status: a callback never moves a message to a
 * lower or equal rank, whatever order callbacks arrive in.  NULL: a status
 * this version does not know (recorded, not applied).
 */
CREATE FUNCTION twilio_outbox.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE $1
		WHEN 'accepted' THEN 1 WHEN 'scheduled' THEN 1 WHEN 'queued' THEN 1
		WHEN 'sending' THEN 2
		WHEN 'sent' THEN 3
		WHEN 'delivered' THEN 4 WHEN 'undelivered' THEN 4 WHEN 'failed' THEN 4 WHEN 'canceled' THEN 4
		WHEN 'read' THEN 5
		/* a call's (fallback chains, 45_fallback.sql) */
		WHEN 'initiated' THEN 1 WHEN 'ringing' THEN 2 WHEN 'in-progress' THEN 3
		WHEN 'completed' THEN 4 WHEN 'busy' THEN 4 WHEN 'no-answer' THEN 4
	END
$$;
COMMENT ON FUNCTION twilio_outbox.status_rank(text) IS 'accepted, scheduled, queued 1 < sending 2 < sent 3 < delivered, undelivered, failed, canceled 4 < read 5; a call''s queued, initiated 1 < ringing 2 < in-progress 3 < completed, busy, no-answer, failed, canceled 4; NULL for any other status';

/* The C side: signature check, a test signer, the counters. */
CREATE FUNCTION twilio_outbox.webhook_verify(url text, body text, signature text, required text[],
	OUT account text, OUT params jsonb)
RETURNS record
LANGUAGE c
AS 'MODULE_PATHNAME', 'twilio_outbox_webhook_verify';
COMMENT ON FUNCTION twilio_outbox.webhook_verify(text, text, text, text[]) IS 'Check a webhook''s X-Twilio-Signature with its account''s auth token; the account and every field received.  Internal: reads credentials, executable by no role';

CREATE FUNCTION twilio_outbox.webhook_signature(auth_token text, url text, body text) RETURNS text
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'twilio_outbox_webhook_signature';
COMMENT ON FUNCTION twilio_outbox.webhook_signature(text, text, text) IS 'The X-Twilio-Signature Twilio sends for this URL and raw form body under this auth token (for testing an endpoint)';

CREATE FUNCTION twilio_outbox.webhook_counters(OUT verdict text, OUT webhooks bigint, OUT last_refused_at timestamptz)
RETURNS SETOF record
LANGUAGE c
AS 'MODULE_PATHNAME', 'twilio_outbox_webhook_counters';
COMMENT ON FUNCTION twilio_outbox.webhook_counters() IS 'Webhooks accepted and refused (bad_signature, unknown_account, no_auth_token, malformed) since the server started, whole cluster; no rows unless the library is preloaded';

/*
 * Suppress a recipient for every account of one Twilio account (the same
 * AccountSid), and dead-letter what is queued to it there as 'suppressed'.
 */
CREATE FUNCTION twilio_outbox.suppress_recipient(account_sid text, recipient text,
	reason text, twilio_code integer, message_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	INSERT INTO twilio_outbox.suppressed_recipients (account, to_number, reason, twilio_code, message_id)
	SELECT a.name, recipient, suppress_recipient.reason, suppress_recipient.twilio_code, suppress_recipient.message_id
	FROM twilio_outbox.accounts a
	WHERE pg_catalog.lower(a.account_sid) OPERATOR(pg_catalog.=) pg_catalog.lower(suppress_recipient.account_sid)
	ON CONFLICT DO NOTHING;
	WITH dead AS (
		UPDATE twilio_outbox.messages m
		SET state = 'dead', finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
			last_error_message = 'the recipient is suppressed: ' OPERATOR(pg_catalog.||) suppress_recipient.reason
		WHERE m.to_number OPERATOR(pg_catalog.=) recipient
		  AND m.state OPERATOR(pg_catalog.=) 'queued'
		  AND m.account OPERATOR(pg_catalog.=) ANY (ARRAY(
				SELECT a.name FROM twilio_outbox.accounts a
				WHERE pg_catalog.lower(a.account_sid) OPERATOR(pg_catalog.=) pg_catalog.lower(suppress_recipient.account_sid)))
		RETURNING m.id, m.account, m.to_number, m.attempts)
	INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason, twilio_code, error_message, attempts)
	SELECT d.id, d.account, d.to_number, 'suppressed', suppress_recipient.twilio_code,
		'the recipient is suppressed: ' OPERATOR(pg_catalog.||) suppress_recipient.reason, d.attempts
	FROM dead d;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

/*
 * twilio_outbox.apply_status(...): what a status report does to its
 * message, whoever reported it: a signed status callback (receive_status)
 * or the dispatcher's own lookup of a message whose callback never came
 * (source 'poll', src/lookup.c).  Recorded once per (MessageSid, status)
 * in status_events with its source and account (the name); the message is found by its SID among
 * the accounts of account_sid, else by outbox_id; statuses are ranked and
 * a message never moves back; a delivery error goes through the error
 * policy (suppress, dead letter 'undelivered').  Every transition is
 * guarded by what was read under the row lock.  Returns the verdict
 * (status_events.verdict, or 'duplicate').  Internal: executable by no role.
 */
CREATE FUNCTION twilio_outbox.apply_status(account text, account_sid text, sid text, st text, err_code integer,
	err_message text, outbox_id bigint, payload jsonb, source text, signature_verified boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ev bigint;
BEGIN
	/* Twilio retries: the same pair again changes nothing */
	INSERT INTO twilio_outbox.status_events (message_sid, message_status, error_code, payload,
		account, signature_verified, source)
	VALUES (sid, st, err_code, payload, apply_status.account, signature_verified, source)
	ON CONFLICT ON CONSTRAINT status_events_sid_status DO NOTHING
	RETURNING id INTO ev;
	IF ev IS NULL THEN
		RETURN 'duplicate';
	END IF;

	RETURN twilio_outbox.apply_event(ev, account_sid, sid, st, err_code, err_message, outbox_id, true);
END
$$;
COMMENT ON FUNCTION twilio_outbox.apply_status(text, text, text, text, integer, text, bigint, jsonb, text, boolean) IS 'A status report (callback or poll) applied to its message: recorded once per (MessageSid, status), forward only, delivery errors through the error policy; returns the verdict.  Internal';

/*
 * The advisory lock (one bigint key) that orders a status report found by
 * neither its SID nor an outbox_id (apply_event, exclusive) against the
 * dispatchers' records of SIDs in progress (apply_early_statuses, shared:
 * dispatchers never wait for each other on it).
 */
CREATE FUNCTION twilio_outbox.early_status_lock() RETURNS bigint
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 7419864310251863857::bigint $$;

/*
 * twilio_outbox.apply_event(ev, ...): what the status event ev (just
 * recorded, or recorded before as unmatched) does to its message: the
 * body of apply_status after its dedupe.  wait_for_records: whether an
 * event found by neither its SID nor an outbox_id waits for the records
 * in progress (apply_status; not apply_early_statuses, which is one of
 * them).  Sets the event's verdict and message; returns the verdict.
 * Internal: executable by no role.
 */
CREATE FUNCTION twilio_outbox.apply_event(ev bigint, account_sid text, sid text, st text, err_code integer,
	err_message text, outbox_id bigint, wait_for_records boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m record;
	accounts text[];
	r_new integer;
	r_old integer;
	outcome text;
	new_state twilio_outbox.message_state;
	act twilio_outbox.error_action;
	err_text text := pg_catalog.left(COALESCE(err_message,
		'delivery error ' OPERATOR(pg_catalog.||) err_code::text), 1023);
BEGIN
	/* the message: by its SID, else by our own id in the URL Twilio signed */
	accounts := ARRAY(SELECT a.name FROM twilio_outbox.accounts a
					  WHERE pg_catalog.lower(a.account_sid) OPERATOR(pg_catalog.=) pg_catalog.lower(apply_event.account_sid));
	SELECT * INTO m FROM twilio_outbox.messages x
	WHERE x.twilio_sid OPERATOR(pg_catalog.=) sid AND x.account OPERATOR(pg_catalog.=) ANY (accounts)
	ORDER BY x.id LIMIT 1
	FOR UPDATE;
	/*
	 * Never a SID another message holds (reconciliation: never adopt one
	 * twice).  The message itself may hold it by now: its record committed
	 * after the lookup above (each statement reads a new snapshot).
	 */
	IF NOT FOUND AND outbox_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM twilio_outbox.messages o
			WHERE o.twilio_sid OPERATOR(pg_catalog.=) sid
			  AND o.id OPERATOR(pg_catalog.<>) outbox_id) THEN
		SELECT * INTO m FROM twilio_outbox.messages x
		WHERE x.id OPERATOR(pg_catalog.=) outbox_id AND x.account OPERATOR(pg_catalog.=) ANY (accounts)
		FOR UPDATE;
	END IF;
	/*
	 * Found by neither: its SID may be in a dispatcher's record that has
	 * not committed yet (Twilio's callback overtook the 201, and the URL
	 * it signed names no outbox_id: the message's own status_callback).
	 * Wait for the records in progress, then look again: a record that
	 * starts later waits for this transaction instead and applies this
	 * event itself (apply_early_statuses).
	 */
	IF m.id IS NULL AND outbox_id IS NULL AND wait_for_records THEN
		PERFORM pg_catalog.pg_advisory_xact_lock(twilio_outbox.early_status_lock());
		SELECT * INTO m FROM twilio_outbox.messages x
		WHERE x.twilio_sid OPERATOR(pg_catalog.=) sid AND x.account OPERATOR(pg_catalog.=) ANY (accounts)
		ORDER BY x.id LIMIT 1
		FOR UPDATE;
	END IF;

	r_new := twilio_outbox.status_rank(st);
	IF m.id IS NULL THEN
		outcome := 'unmatched';
	ELSIF m.twilio_sid IS NOT NULL AND m.twilio_sid OPERATOR(pg_catalog.<>) sid THEN
		/* an ambiguous attempt did create a message, and a resend another */
		outcome := 'other_sid';
	ELSIF r_new IS NULL THEN
		outcome := 'unknown_status';
	ELSIF m.state OPERATOR(pg_catalog.=) ANY (ARRAY['dead', 'canceled']::twilio_outbox.message_state[]) THEN
		outcome := 'finished';
	ELSIF m.state OPERATOR(pg_catalog.=) 'queued' AND m.attempts OPERATOR(pg_catalog.=) 0 THEN
		outcome := 'not_sent';
	ELSE
		r_old := COALESCE(twilio_outbox.status_rank(m.twilio_status), 0);
		IF r_new OPERATOR(pg_catalog.<=) r_old THEN
			outcome := 'stale';
			UPDATE twilio_outbox.messages x SET twilio_sid = sid, updated_at = pg_catalog.now()
			WHERE x.id OPERATOR(pg_catalog.=) m.id AND x.twilio_sid IS NULL;
		ELSE
			outcome := 'applied';
			new_state := CASE st
				WHEN 'delivered' THEN 'delivered' WHEN 'read' THEN 'delivered'
				WHEN 'undelivered' THEN 'undelivered' WHEN 'failed' THEN 'failed'
				WHEN 'canceled' THEN 'canceled'
				/* a call: completed counts as delivered, busy and no-answer as undelivered */
				WHEN 'completed' THEN 'delivered'
				WHEN 'busy' THEN 'undelivered' WHEN 'no-answer' THEN 'undelivered'
				ELSE 'sent' END;
			/*
			 * Guarded by what was read under the lock.  A message still
			 * 'sending' (the 201 not recorded yet, or lost) or 'queued' /
			 * 'ambiguous' after an attempt whose outcome was unknown: Twilio
			 * has it, so it is never sent again; the dispatcher's own
			 * record of that attempt then finds the row changed and keeps
			 * the attempt only.  A final status ends polling: the next
			 * lookup, if any, is a deletion counted from now.  An ambiguous
			 * message adopts the SID: reconciliation (reconcile_at, a lookup
			 * in flight included: its record finds the row changed) is over,
			 * and an attempt row says how it was found.
			 */
			UPDATE twilio_outbox.messages x SET
				state = new_state,
				twilio_status = st,
				twilio_sid = COALESCE(x.twilio_sid, sid),
				last_error_code = COALESCE(err_code, x.last_error_code),
				last_error_message = CASE WHEN err_code IS NOT NULL THEN err_text
					ELSE x.last_error_message END,
				lease_until = NULL, worker_pid = NULL,
				sent_at = COALESCE(x.sent_at, pg_catalog.now()),
				finished_at = CASE WHEN r_new OPERATOR(pg_catalog.>=) 4 OR x.finished_at IS NULL
					THEN pg_catalog.now() ELSE x.finished_at END,
				next_lookup_at = CASE WHEN r_new OPERATOR(pg_catalog.>=) 4 THEN NULL
					ELSE x.next_lookup_at END,
				reconcile_at = NULL, reconcile_candidates = NULL,
				updated_at = pg_catalog.now()
			WHERE x.id OPERATOR(pg_catalog.=) m.id
			  AND x.state OPERATOR(pg_catalog.=) m.state
			  AND x.twilio_status IS NOT DISTINCT FROM m.twilio_status;
			IF FOUND AND m.state OPERATOR(pg_catalog.=) 'ambiguous' THEN
				INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at,
					outcome, ambiguous, twilio_sid)
				VALUES (m.id, m.attempts, m.account, pg_catalog.now(),
					'found', false, sid);
			END IF;

			/* a delivery error goes through the error policy */
			IF err_code IS NOT NULL AND st OPERATOR(pg_catalog.=) ANY (ARRAY['undelivered', 'failed']) THEN
				SELECT e.action INTO act FROM twilio_outbox.error_policy e
				WHERE e.source OPERATOR(pg_catalog.=) 'twilio' AND e.code OPERATOR(pg_catalog.=) err_code;
				IF act OPERATOR(pg_catalog.=) 'suppress' THEN
					PERFORM twilio_outbox.suppress_recipient(account_sid, m.to_number,
						'delivery error ' OPERATOR(pg_catalog.||) err_code::text, err_code, m.id);
				END IF;
				IF act OPERATOR(pg_catalog.=) ANY (ARRAY['dead', 'suppress']::twilio_outbox.error_action[]) THEN
					INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason,
						twilio_code, error_message, attempts)
					VALUES (m.id, m.account, m.to_number, 'undelivered', err_code, err_text, m.attempts);
				END IF;
			END IF;

			/* fallback chains (45_fallback.sql): the next step, or the end of the chain's timers */
			IF m.chain_step IS NOT NULL THEN
				IF new_state OPERATOR(pg_catalog.=) 'delivered' THEN
					PERFORM twilio_outbox.chain_delivered(m.account, m.id);
				ELSIF new_state OPERATOR(pg_catalog.=) ANY (ARRAY['undelivered', 'failed']::twilio_outbox.message_state[]) THEN
					PERFORM twilio_outbox.chain_escalate(m.account, m.id, 'status');
				END IF;
			END IF;
		END IF;
	END IF;
	UPDATE twilio_outbox.status_events e SET message_id = m.id, verdict = outcome
	WHERE e.id OPERATOR(pg_catalog.=) ev;
	RETURN outcome;
END
$$;
COMMENT ON FUNCTION twilio_outbox.apply_event(bigint, text, text, text, integer, text, bigint, boolean) IS 'A recorded status event applied to its message: forward only, delivery errors through the error policy; sets and returns the verdict.  Internal';

/*
 * Status events still unmatched, by when they came: the dispatcher's
 * record looks here for events that overtook its 201 (apply_early_statuses).
 * Only unmatched events are in it (few: callbacks of messages sent by other
 * means in the same Twilio account, and the early ones until adopted).
 */
CREATE INDEX status_events_unmatched ON twilio_outbox.status_events (received_at)
	WHERE verdict OPERATOR(pg_catalog.=) 'unmatched';

/*
 * twilio_outbox.apply_early_statuses(since, sids): called by the
 * dispatcher in the transaction that records the SIDs sids, whose requests
 * started at since or later.  A status callback that came before the SID
 * was recorded, and names no outbox_id, was kept as unmatched: it is
 * applied now, lower ranks first.  The shared advisory lock makes a
 * callback that is being found unmatched right now finish first (see
 * apply_event), so that none slips between the two.  Cost when there is
 * nothing to adopt: one probe of the (small) partial index above.
 * Returns how many events it applied.  Internal: executable by no role.
 */
CREATE FUNCTION twilio_outbox.apply_early_statuses(since timestamptz, sids text[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e record;
	n integer := 0;
BEGIN
	PERFORM pg_catalog.pg_advisory_xact_lock_shared(twilio_outbox.early_status_lock());
	IF NOT EXISTS (SELECT FROM twilio_outbox.status_events x
				   WHERE x.verdict OPERATOR(pg_catalog.=) 'unmatched'
					 AND x.received_at OPERATOR(pg_catalog.>=) since) THEN
		RETURN 0;
	END IF;
	FOR e IN
		SELECT x.id, x.message_sid, x.message_status, x.error_code, x.payload
		FROM twilio_outbox.status_events x
		WHERE x.verdict OPERATOR(pg_catalog.=) 'unmatched'
		  AND x.received_at OPERATOR(pg_catalog.>=) since
		  AND x.message_sid OPERATOR(pg_catalog.=) ANY (sids)
		ORDER BY twilio_outbox.status_rank(x.message_status) NULLS LAST, x.id
	LOOP
		PERFORM twilio_outbox.apply_event(e.id, e.payload OPERATOR(pg_catalog.->>) 'AccountSid',
			e.message_sid, e.message_status, e.error_code,
			e.payload OPERATOR(pg_catalog.->>) 'ErrorMessage', NULL, false);
		n := n OPERATOR(pg_catalog.+) 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION twilio_outbox.apply_early_statuses(timestamptz, text[]) IS 'Status events that came before their SID was recorded (unmatched, no outbox_id), applied by the record that gives the SID.  Internal';

/*
 * twilio_outbox.apply_early_statuses_of(message_id): the same for one
 * message whose SID an operator has just recorded (resolve_ambiguous), in
 * the caller's transaction.  SECURITY DEFINER so that the admin role, which
 * may not read status_events' payloads nor call apply_event, can have the
 * callbacks Twilio already signed applied; it applies nothing else.
 */
CREATE FUNCTION twilio_outbox.apply_early_statuses_of(message_id bigint)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT twilio_outbox.apply_early_statuses(m.created_at, ARRAY[m.twilio_sid])
	FROM twilio_outbox.messages m
	WHERE m.id OPERATOR(pg_catalog.=) message_id AND m.twilio_sid IS NOT NULL
$$;
COMMENT ON FUNCTION twilio_outbox.apply_early_statuses_of(bigint) IS 'Unmatched status events of one message''s SID, applied once an operator recorded it (resolve_ambiguous).  Internal';

/*
 * twilio_outbox.receive_status(url, body, signature): one status callback,
 * in the caller's one short transaction.  url is the full URL Twilio called
 * (query string included), body the raw form body, signature the
 * X-Twilio-Signature header.  Refusals raise (see webhook_verify) and record
 * nothing but a counter.  Returns what the callback did (status_events.verdict,
 * or 'duplicate' when that MessageSid and MessageStatus came before).
 */
CREATE FUNCTION twilio_outbox.receive_status(url text, body text, signature text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
	p jsonb;
	sid text;
	st text;
	code_text text;
	is_call boolean;
BEGIN
	/* a call's callback (a voice step of a fallback chain) names CallSid and CallStatus */
	is_call := body OPERATOR(pg_catalog.~) '(^|&)CallSid=' AND body OPERATOR(pg_catalog.!~) '(^|&)MessageSid=';
	SELECT * INTO v FROM twilio_outbox.webhook_verify(url, body, signature,
		CASE WHEN is_call THEN ARRAY['CallSid', 'CallStatus'] ELSE ARRAY['MessageSid', 'MessageStatus'] END);
	p := v.params;
	sid := p OPERATOR(pg_catalog.->>) CASE WHEN is_call THEN 'CallSid' ELSE 'MessageSid' END;
	st := pg_catalog.lower(p OPERATOR(pg_catalog.->>) CASE WHEN is_call THEN 'CallStatus' ELSE 'MessageStatus' END);
	code_text := NULLIF(p OPERATOR(pg_catalog.->>) 'ErrorCode', '');
	IF sid OPERATOR(pg_catalog.!~) '^[A-Z]{2}[0-9a-fA-F]{32}$' THEN
		RAISE EXCEPTION 'invalid % "%" in status callback', CASE WHEN is_call THEN 'CallSid' ELSE 'MessageSid' END, twilio_outbox.clip_input(sid)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF st OPERATOR(pg_catalog.!~) '^[a-z_-]{1,32}$' THEN
		RAISE EXCEPTION 'invalid % "%" in status callback', CASE WHEN is_call THEN 'CallStatus' ELSE 'MessageStatus' END, twilio_outbox.clip_input(st)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF code_text OPERATOR(pg_catalog.!~) '^[0-9]{1,9}$' THEN
		RAISE EXCEPTION 'invalid ErrorCode "%" in status callback', twilio_outbox.clip_input(code_text)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN twilio_outbox.apply_status(v.account, p OPERATOR(pg_catalog.->>) 'AccountSid', sid, st, code_text::integer,
		p OPERATOR(pg_catalog.->>) 'ErrorMessage',
		pg_catalog."substring"(url, '[?&]outbox_id=([0-9]{1,18})(?:[&#]|$)')::bigint,
		p, 'callback', true);
END
$$;
COMMENT ON FUNCTION twilio_outbox.receive_status(text, text, text) IS 'A status callback: full URL Twilio called, raw form body, X-Twilio-Signature.  Validates, records it once per (MessageSid, MessageStatus), moves the message forward only; returns what it did';

/*
 * twilio_outbox.receive_inbound(url, body, signature): an incoming message
 * (the number's or Messaging Service's messaging webhook).  An opt-out
 * (Advanced Opt-Out's OptOutType STOP, or without it a body that is one of
 * STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT) suppresses the sender for
 * the account and dead-letters what is queued to it; an opt-in (START, or
 * START, YES, UNSTOP) releases it; HELP and anything else change nothing.
 * Returns the TwiML to answer with: an empty response (Twilio itself
 * answers the keywords).
 */
CREATE FUNCTION twilio_outbox.receive_inbound(url text, body text, signature text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
	p jsonb;
	sender text;
	opt text;
	keyword text;
BEGIN
	SELECT * INTO v FROM twilio_outbox.webhook_verify(url, body, signature, ARRAY['From']);
	p := v.params;
	sender := p OPERATOR(pg_catalog.->>) 'From';
	IF pg_catalog.jsonb_typeof(p OPERATOR(pg_catalog.->) 'From') OPERATOR(pg_catalog.<>) 'string'
	   OR NOT COALESCE(sender OPERATOR(pg_catalog.~) '^(whatsapp:)?\+[1-9][0-9]{1,14}$', false) THEN
		RAISE EXCEPTION 'invalid From "%" in inbound message', twilio_outbox.clip_input(sender)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	opt := pg_catalog.upper(NULLIF(p OPERATOR(pg_catalog.->>) 'OptOutType', ''));
	keyword := pg_catalog.upper(pg_catalog.btrim(COALESCE(p OPERATOR(pg_catalog.->>) 'Body', ''), E' \t\r\n.!'));
	IF opt OPERATOR(pg_catalog.=) 'STOP'
	   OR (opt IS NULL AND keyword OPERATOR(pg_catalog.=) ANY (ARRAY['STOP', 'STOPALL', 'UNSUBSCRIBE', 'CANCEL', 'END', 'QUIT'])) THEN
		PERFORM twilio_outbox.suppress_recipient(p OPERATOR(pg_catalog.->>) 'AccountSid', sender,
			'opted out (' OPERATOR(pg_catalog.||) COALESCE(opt, keyword) OPERATOR(pg_catalog.||) ')', NULL, NULL);
	ELSIF opt OPERATOR(pg_catalog.=) 'START'
	   OR (opt IS NULL AND keyword OPERATOR(pg_catalog.=) ANY (ARRAY['START', 'YES', 'UNSTOP'])) THEN
		DELETE FROM twilio_outbox.suppressed_recipients r
		WHERE r.to_number OPERATOR(pg_catalog.=) sender
		  AND r.account OPERATOR(pg_catalog.=) ANY (ARRAY(
				SELECT a.name FROM twilio_outbox.accounts a
				WHERE pg_catalog.lower(a.account_sid) OPERATOR(pg_catalog.=) pg_catalog.lower(p OPERATOR(pg_catalog.->>) 'AccountSid')));
	END IF;
	RETURN '<?xml version="1.0" encoding="UTF-8"?><Response/>';
END
$$;
COMMENT ON FUNCTION twilio_outbox.receive_inbound(text, text, text) IS 'An incoming message: full URL Twilio called, raw form body, X-Twilio-Signature.  STOP-type keywords suppress the sender, START-type release it; returns the TwiML to answer with';

/*
 * Twilio's debugger webhook: the account's errors and warnings at Twilio
 * (a Messaging Service misconfiguration, 30001 queue overflow, ...), one
 * row per event Sid (Twilio retries), beside the outbox's own.
 */
CREATE TABLE twilio_outbox.debugger_events (
	id				bigint GENERATED ALWAYS AS IDENTITY,
	sid				text NOT NULL,
	account			text NOT NULL,
	level			text,
	error_code		integer,
	payload			jsonb,
	params			jsonb NOT NULL,
	occurred_at		timestamptz,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (id, account),
	UNIQUE (sid, account)
);
CREATE INDEX debugger_events_received ON twilio_outbox.debugger_events (received_at);
COMMENT ON TABLE twilio_outbox.debugger_events IS 'Events of Twilio''s debugger webhook (receive_debugger), one per Sid; params as received, payload the parsed Payload when it is JSON';

/*
 * twilio_outbox.receive_debugger(url, body, signature): one debugger event.
 * Returns 'recorded' or 'duplicate'.  Refusals as receive_status.
 */
CREATE FUNCTION twilio_outbox.receive_debugger(url text, body text, signature text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
	p jsonb;
	payload jsonb;
	occurred timestamptz;
	new_id bigint;
BEGIN
	SELECT * INTO v FROM twilio_outbox.webhook_verify(url, body, signature, ARRAY['Sid']);
	p := v.params;
	IF pg_catalog.jsonb_typeof(p OPERATOR(pg_catalog.->) 'Sid') OPERATOR(pg_catalog.<>) 'string'
	   OR pg_catalog.length(p OPERATOR(pg_catalog.->>) 'Sid') OPERATOR(pg_catalog.>) 64 THEN
		RAISE EXCEPTION 'invalid Sid "%" in debugger event', twilio_outbox.clip_input(p OPERATOR(pg_catalog.->>) 'Sid')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	/* Payload is JSON text by PayloadType; kept raw in params when it is not */
	BEGIN
		payload := (p OPERATOR(pg_catalog.->>) 'Payload')::jsonb;
	EXCEPTION WHEN invalid_text_representation THEN
		payload := NULL;
	END;
	BEGIN
		occurred := (p OPERATOR(pg_catalog.->>) 'Timestamp')::timestamptz;
	EXCEPTION WHEN OTHERS THEN
		occurred := NULL;
	END;
	INSERT INTO twilio_outbox.debugger_events (sid, account, level, error_code, payload, params, occurred_at)
	VALUES (p OPERATOR(pg_catalog.->>) 'Sid', v.account, pg_catalog.left(p OPERATOR(pg_catalog.->>) 'Level', 32),
		CASE WHEN payload OPERATOR(pg_catalog.->>) 'error_code' OPERATOR(pg_catalog.~) '^[0-9]{1,9}$'
			 THEN (payload OPERATOR(pg_catalog.->>) 'error_code')::integer END,
		payload, p, occurred)
	ON CONFLICT (sid, account) DO NOTHING
	RETURNING id INTO new_id;
	RETURN CASE WHEN new_id IS NULL THEN 'duplicate' ELSE 'recorded' END;
END
$$;
COMMENT ON FUNCTION twilio_outbox.receive_debugger(text, text, text) IS 'Twilio''s debugger webhook: full URL, raw form body, X-Twilio-Signature.  Validates and records the event once per Sid';

/* The debugger's events, newest first, for psql. */
CREATE VIEW twilio_outbox.twilio_errors AS
SELECT e.received_at, e.occurred_at, e.account, e.level, e.error_code,
	e.payload OPERATOR(pg_catalog.->>) 'more_info' AS more_info,
	e.payload OPERATOR(pg_catalog.->) 'webhook' OPERATOR(pg_catalog.->) 'request' OPERATOR(pg_catalog.->>) 'url' AS request_url,
	e.sid
FROM twilio_outbox.debugger_events e
ORDER BY e.received_at DESC;
COMMENT ON VIEW twilio_outbox.twilio_errors IS 'Errors and warnings Twilio''s debugger webhook reported, newest first';
