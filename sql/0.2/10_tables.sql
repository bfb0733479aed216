/* table constraints and columns */

/*
 * Constraints are named after what they check: a user only ever sees
 * "violates check constraint <name>".  The 0.1 names (<table>_<column>_check)
 * said nothing about the accepted form.
 */
ALTER TABLE twilio_outbox.accounts
	RENAME CONSTRAINT accounts_account_sid_check TO accounts_account_sid_ac_plus_32_hex_digits;
ALTER TABLE twilio_outbox.account_credentials
	RENAME CONSTRAINT account_credentials_api_key_sid_check TO account_credentials_api_key_sid_sk_plus_32_hex_digits;
ALTER TABLE twilio_outbox.accounts
	RENAME CONSTRAINT accounts_max_concurrency_check TO accounts_max_concurrency_range;

/*
 * base_url: scheme://host[:port] and nothing else (no user, path, query or
 * trailing slash); a DNS name of labels of at most 63 characters, an IPv4
 * address or [::1]; a port from 1 to 65535.  Plain http only to a loopback
 * address (the dispatcher also wants twilio_outbox.allow_insecure_http on,
 * and checks the host against twilio_outbox.allowed_hosts).
 * A 0.1 row that does not fit keeps the constraint NOT VALID (checked for
 * new writes only) with a warning; the dispatcher refuses such an account.
 */
ALTER TABLE twilio_outbox.accounts DROP CONSTRAINT accounts_base_url_check;
ALTER TABLE twilio_outbox.accounts ADD CONSTRAINT accounts_base_url_form CHECK (
	pg_catalog.length(base_url) OPERATOR(pg_catalog.<=) 270
	AND base_url OPERATOR(pg_catalog.~) ('^https?://'
		'([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[::1\])'
		'(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$')) NOT VALID;
ALTER TABLE twilio_outbox.accounts ADD CONSTRAINT accounts_base_url_http_only_to_loopback CHECK (
	base_url OPERATOR(pg_catalog.!~) '^http://'
	OR base_url OPERATOR(pg_catalog.~) '^http://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]+)?$') NOT VALID;

/*
 * Senders' rates and bursts, in segments per second and segments: finite
 * and positive up to 10,000 per second, or 'Infinity' (unlimited) for the
 * rate; a burst from 1 to 10,000.  NaN passes any comparison-based CHECK
 * (numeric NaN sorts above every number), so it is refused by name.  0.1
 * rows outside these ranges are brought into them (NaN: the default,
 * larger: the largest) with a notice.
 */
DO $senders$
DECLARE
	n bigint;
BEGIN
	UPDATE twilio_outbox.senders SET
		rate = CASE WHEN rate OPERATOR(pg_catalog.=) 'NaN' THEN NULL
					WHEN rate OPERATOR(pg_catalog.=) 'Infinity' THEN rate
					WHEN rate OPERATOR(pg_catalog.>) 10000 THEN 10000
					WHEN rate OPERATOR(pg_catalog.<) 0.001 THEN 0.001
					ELSE rate END,
		burst = CASE WHEN burst OPERATOR(pg_catalog.=) 'NaN' THEN NULL
					 WHEN burst OPERATOR(pg_catalog.>) 10000 THEN 10000
					 ELSE burst END
	WHERE rate OPERATOR(pg_catalog.=) 'NaN' OR burst OPERATOR(pg_catalog.=) 'NaN'
	   OR (rate OPERATOR(pg_catalog.>) 10000 AND rate OPERATOR(pg_catalog.<>) 'Infinity')
	   OR rate OPERATOR(pg_catalog.<) 0.001 OR burst OPERATOR(pg_catalog.>) 10000;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n OPERATOR(pg_catalog.>) 0 THEN
		RAISE NOTICE 'twilio_outbox: % senders had a rate or burst out of range (NaN, or above 10000); they now have the default or the largest allowed', n;
	END IF;
END
$senders$;
ALTER TABLE twilio_outbox.senders DROP CONSTRAINT senders_rate_check;
ALTER TABLE twilio_outbox.senders DROP CONSTRAINT senders_burst_check;
ALTER TABLE twilio_outbox.senders ADD CONSTRAINT senders_rate_range CHECK (
	rate OPERATOR(pg_catalog.<>) 'NaN'
	AND (rate OPERATOR(pg_catalog.=) 'Infinity'
		 OR (rate OPERATOR(pg_catalog.>=) 0.001 AND rate OPERATOR(pg_catalog.<=) 10000)));
ALTER TABLE twilio_outbox.senders ADD CONSTRAINT senders_burst_range CHECK (
	burst OPERATOR(pg_catalog.<>) 'NaN'
	AND burst OPERATOR(pg_catalog.>=) 1 AND burst OPERATOR(pg_catalog.<=) 10000);
COMMENT ON TABLE twilio_outbox.senders IS 'From-numbers and Messaging Services; rate is in segments per second, 0.001 to 10000 (NULL: the default for its kind; ''Infinity'': unlimited), burst the most sent at once, 1 to 10000 (NULL: one segment)';

/*
 * Live messages of accounts that are already gone (0.1 let an account be
 * deleted under its messages) are dead-lettered, as account_missing, which
 * the dispatcher would do anyway.  messages has no foreign key to accounts
 * (48_enqueue_cost.sql says why): twilio_enqueue() checks the account under
 * the snapshot its insert uses, and the dispatcher dead-letters a message
 * whose account went away since.
 */
WITH orphans AS (
	UPDATE twilio_outbox.messages m SET state = 'dead', finished_at = pg_catalog.now(),
		updated_at = pg_catalog.now(), lease_until = NULL, worker_pid = NULL,
		last_error_message = 'its account does not exist'
	WHERE m.state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending', 'ambiguous']::twilio_outbox.message_state[])
	  AND NOT EXISTS (SELECT FROM twilio_outbox.accounts a WHERE a.name OPERATOR(pg_catalog.=) m.account)
	RETURNING m.id, m.account, m.to_number, m.attempts, m.last_http_status, m.last_error_code)
INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason,
	http_status, twilio_code, error_message, attempts)
SELECT id, account, to_number, 'account_missing', last_http_status, last_error_code,
	'its account does not exist', attempts FROM orphans;

DO $validate$
DECLARE
	c text;
BEGIN
	FOREACH c IN ARRAY ARRAY['accounts.accounts_base_url_form',
							 'accounts.accounts_base_url_http_only_to_loopback'] LOOP
		BEGIN
			EXECUTE pg_catalog.format('ALTER TABLE twilio_outbox.%I VALIDATE CONSTRAINT %I',
									  pg_catalog.split_part(c, '.', 1), pg_catalog.split_part(c, '.', 2));
		EXCEPTION WHEN check_violation OR foreign_key_violation THEN
			RAISE WARNING 'twilio_outbox: existing rows do not satisfy constraint %; it holds for new rows only', pg_catalog.split_part(c, '.', 2)
				USING DETAIL = SQLERRM,
					  HINT = pg_catalog.format('Fix those rows, then run: ALTER TABLE twilio_outbox.%I VALIDATE CONSTRAINT %I',
											  pg_catalog.split_part(c, '.', 1), pg_catalog.split_part(c, '.', 2));
		END;
	END LOOP;
END
$validate$;

/* Why a message was dead-lettered: a row the dispatcher cannot send (written around the API) too. */
ALTER TABLE twilio_outbox.dead_letters DROP CONSTRAINT dead_letters_reason_check;
ALTER TABLE twilio_outbox.dead_letters ADD CONSTRAINT dead_letters_reason_known CHECK (
	reason OPERATOR(pg_catalog.=) ANY (ARRAY['expired', 'rejected', 'attempts_exhausted',
		'suppressed', 'sender_missing', 'account_missing', 'invalid_message']));

/*
 * Requests other than create (src/lookup.c): polling a message whose status
 * callback never came, and deleting a message's data at Twilio after a
 * retention.  All off by default (NULL).
 *   poll_after: a message still 'sent' this long after it was sent is looked
 *     up (GET .../Messages/{Sid}.json), then again after twice as long each
 *     time (at most a day apart), max_polls times in all.
 *   twilio_retention: a message with a final status (delivered, undelivered,
 *     failed, canceled) for this long is deleted at Twilio
 *     (DELETE .../Messages/{Sid}.json), only between delete_window_start and
 *     delete_window_end, in UTC (a window may wrap past midnight; without
 *     one, at any time of day).
 *   lookups_per_second: the most of these requests per second for the
 *     account (a token bucket holding one second's worth, at least one);
 *     they also take the account's concurrency slots, only those sends
 *     leave free, and at most half of them.
 */
ALTER TABLE twilio_outbox.accounts
	ADD COLUMN poll_after interval
		CONSTRAINT accounts_poll_after_1s_to_30d
		CHECK (poll_after OPERATOR(pg_catalog.>=) '1 second'::interval
			   AND poll_after OPERATOR(pg_catalog.<=) '30 days'::interval),
	ADD COLUMN max_polls integer NOT NULL DEFAULT 6
		CONSTRAINT accounts_max_polls_1_to_100
		CHECK (max_polls OPERATOR(pg_catalog.>=) 1 AND max_polls OPERATOR(pg_catalog.<=) 100),
	ADD COLUMN twilio_retention interval
		CONSTRAINT accounts_twilio_retention_1s_to_10y
		CHECK (twilio_retention OPERATOR(pg_catalog.>=) '1 second'::interval
			   AND twilio_retention OPERATOR(pg_catalog.<=) '10 years'::interval),
	ADD COLUMN delete_window_start time without time zone,
	ADD COLUMN delete_window_end time without time zone,
	ADD CONSTRAINT accounts_delete_window_both_or_neither_and_not_empty
		CHECK ((delete_window_start IS NULL) OPERATOR(pg_catalog.=) (delete_window_end IS NULL)
			   AND delete_window_start OPERATOR(pg_catalog.<>) delete_window_end),
	ADD COLUMN lookups_per_second numeric NOT NULL DEFAULT 5
		CONSTRAINT accounts_lookups_per_second_0_01_to_100
		CHECK (lookups_per_second OPERATOR(pg_catalog.<>) 'NaN'
			   AND lookups_per_second OPERATOR(pg_catalog.>=) 0.01
			   AND lookups_per_second OPERATOR(pg_catalog.<=) 100);
COMMENT ON COLUMN twilio_outbox.accounts.poll_after IS 'look up a message still sent (no final status) this long after it was sent; NULL: never';
COMMENT ON COLUMN twilio_outbox.accounts.max_polls IS 'lookups of one message at most; then it stays sent (twilio_outbox.lookups shows it)';
COMMENT ON COLUMN twilio_outbox.accounts.twilio_retention IS 'delete a message at Twilio this long after its final status; NULL: never';
COMMENT ON COLUMN twilio_outbox.accounts.delete_window_start IS 'deletions at Twilio only from this time of day (UTC); NULL: any time';
COMMENT ON COLUMN twilio_outbox.accounts.delete_window_end IS 'deletions at Twilio only until this time of day (UTC); before start: the window wraps past midnight';
COMMENT ON COLUMN twilio_outbox.accounts.lookups_per_second IS 'lookups and deletions at Twilio per second at most, 0.01 to 100; they also take concurrency slots that sends leave free';

/*
 * On the message: how often it was polled, when it may be looked up next
 * (also the lease of a lookup in flight; ''infinity'': no more polls), why
 * the last lookup failed, and when Twilio deleted it.
 */
ALTER TABLE twilio_outbox.messages
	ADD COLUMN polls integer NOT NULL DEFAULT 0,
	ADD COLUMN next_lookup_at timestamptz,
	ADD COLUMN lookup_error text,
	ADD COLUMN deleted_at_twilio timestamptz;
COMMENT ON COLUMN twilio_outbox.messages.polls IS 'lookups of its status at Twilio (polling where callbacks went missing)';
COMMENT ON COLUMN twilio_outbox.messages.next_lookup_at IS 'no lookup or deletion at Twilio before this; NULL: when poll_after or twilio_retention says; infinity: polls given up';
COMMENT ON COLUMN twilio_outbox.messages.deleted_at_twilio IS 'when Twilio deleted its data (twilio_retention), or found it already gone';

/*
 * The lookup claims, per account, in due order: only messages still sent
 * (to poll) and final ones not yet deleted (to delete) are in them.
 */
CREATE INDEX messages_poll_due ON twilio_outbox.messages (account, next_lookup_at, sent_at)
	WHERE state OPERATOR(pg_catalog.=) 'sent' AND twilio_sid IS NOT NULL;
CREATE INDEX messages_delete_due ON twilio_outbox.messages (account, finished_at)
	WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['delivered', 'undelivered', 'failed', 'canceled']::twilio_outbox.message_state[])
	  AND twilio_sid IS NOT NULL AND deleted_at_twilio IS NULL;

/* A status event says whether a callback or a poll reported it. */
ALTER TABLE twilio_outbox.status_events
	ADD COLUMN source text NOT NULL DEFAULT 'callback'
		CONSTRAINT status_events_source_known
		CHECK (source OPERATOR(pg_catalog.=) ANY (ARRAY['callback', 'poll']));
