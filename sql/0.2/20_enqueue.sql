/* twilio_enqueue and what it reads */

/*
 * Which roles may enqueue with which account.  An account with no row here
 * may be used by every role that may call twilio_enqueue (as in 0.1); once
 * an account has rows, only those roles and their members may use it, and
 * any other role gets 42501 before anything about the account (its
 * senders, suppressions or dedupe keys) is looked at.  Maintained by the
 * admin role.  role is a regrole: a role dropped later grants nothing.
 */
CREATE TABLE twilio_outbox.account_roles (
	account		text NOT NULL
		REFERENCES twilio_outbox.accounts (name) ON DELETE CASCADE,
	role		regrole NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (account, role)
);
/*
 * twilio_enqueue caches, per backend, whether account_roles has any row (no
 * lookup at all while it has none); every change to its rows tells every
 * backend at commit, through a relcache invalidation of the table.
 */
CREATE FUNCTION twilio_outbox.account_roles_changed() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'twilio_outbox_account_roles_changed';
CREATE TRIGGER account_roles_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON twilio_outbox.account_roles
	FOR EACH STATEMENT EXECUTE FUNCTION twilio_outbox.account_roles_changed();
COMMENT ON TABLE twilio_outbox.account_roles IS 'Roles (and their members) that may enqueue with an account; an account without rows is open to every enqueueing role';

/*
 * User input quoted in an error message: at most 64 characters, "..." when
 * cut, control characters shown as '?'.  The C code's outbox_clip, for
 * PL/pgSQL.
 */
CREATE FUNCTION twilio_outbox.clip_input(value text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.regexp_replace(
		CASE WHEN pg_catalog.length(value) OPERATOR(pg_catalog.<=) 64 THEN value
			 ELSE pg_catalog.left(value, 64) OPERATOR(pg_catalog.||) '...' END,
		'[[:cntrl:]]', '?', 'g')
$$;
COMMENT ON FUNCTION twilio_outbox.clip_input(text) IS 'User input fit to quote in an error: at most 64 characters and "...", control characters as ?';

/*
 * 0.2's twilio_enqueue: the 0.1 parameters, in the same order with the same
 * names and defaults (every 0.1 call, positional or by name, still
 * resolves), then, by name: priority, traffic_class, campaign and time_zone
 * (bulk sending, issue 12) and fallback (fallback chains, issue 13).
 */
DROP FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb);
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
	params				jsonb DEFAULT NULL,
	priority			text DEFAULT NULL,
	traffic_class		text DEFAULT NULL,
	campaign			text DEFAULT NULL,
	time_zone			text DEFAULT NULL,
	fallback			jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'twilio_enqueue';
/* No SET search_path clause: the C function pins its own (pg_catalog only) for its queries. */
COMMENT ON FUNCTION @extschema@.twilio_enqueue(text, text, text, text, text[], text, timestamptz, timestamptz, text, text, text, jsonb, jsonb, text, text, text, text, jsonb)
	IS 'Queue a Twilio message in the caller''s transaction; returns the message id';
