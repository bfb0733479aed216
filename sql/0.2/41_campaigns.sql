/* priorities, traffic classes and campaigns (issue 12, claim side) */

/*
 * The traffic class of a message: 'transactional' (one-time codes, receipts:
 * the default, as every 0.1 message was) or 'marketing'.  Quiet hours
 * (42_guards.sql) hold marketing traffic; the definition is shared with that
 * piece word for word.
 */
ALTER TABLE twilio_outbox.messages ADD COLUMN traffic_class text NOT NULL DEFAULT 'transactional' CONSTRAINT messages_traffic_class_known CHECK (traffic_class IN ('transactional','marketing'));
COMMENT ON COLUMN twilio_outbox.messages.traffic_class IS 'transactional (the default) or marketing: marketing traffic waits out quiet hours';

/*
 * Priorities.  A message's priority is one of three levels, stored as a
 * small number so that the due index orders by it: 0 'high', 1 'normal'
 * (the default: every 0.1 message and every call without priority), 2
 * 'low'.  Within a sender the claim takes every due message of a level
 * before any of the next, oldest first within a level.  A constant default
 * adds the column without rewriting the table.
 */
ALTER TABLE twilio_outbox.messages ADD COLUMN priority smallint NOT NULL DEFAULT 1
	CONSTRAINT messages_priority_known CHECK (priority OPERATOR(pg_catalog.>=) 0 AND priority OPERATOR(pg_catalog.<=) 2);
COMMENT ON COLUMN twilio_outbox.messages.priority IS '0 high, 1 normal (the default), 2 low: within a sender, due messages are claimed by level first, then oldest first';

/*
 * The claim asks each sender for its due messages one priority level at a
 * time (account, sender, level, next_attempt_at <= now(), ordered by
 * next_attempt_at, id): three range scans of this index, each stopping at
 * the batch size, whatever waits at other levels or later.  Rebuilt here
 * (the upgrade's existing rows are all level 1).
 */
DROP INDEX twilio_outbox.messages_due;
CREATE INDEX messages_due ON twilio_outbox.messages (account, sender_id, priority, next_attempt_at, id)
	WHERE state OPERATOR(pg_catalog.=) 'queued';

/* Names of the levels, for views and documentation. */
CREATE FUNCTION twilio_outbox.priority_name(level integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT (ARRAY['high', 'normal', 'low'])[level OPERATOR(pg_catalog.+) 1]
$$;
COMMENT ON FUNCTION twilio_outbox.priority_name(integer) IS 'The name of a priority level: 0 high, 1 normal, 2 low';

/*
 * Campaigns.  A campaign is a name on messages (twilio_enqueue's campaign
 * argument) with a row of its own, keyed by account like everything that
 * grows with traffic (distributable by account with messages, issue 14; no
 * trigger).  The row is created on first use (INSERT ... ON CONFLICT DO
 * NOTHING in twilio_enqueue) or beforehand by create_campaign(), which is
 * the way to give it a pace or a window.
 *
 *   pace        messages per second over all its senders (NULL: unpaced),
 *               a token bucket in the dispatcher on top of the senders'
 *   burst       the most it sends at once (the bucket's size)
 *   not_before  its messages are due no earlier (set at enqueue)
 *   not_after   its messages expire then (expires_at at enqueue, so the
 *               dispatcher's expiry dead-letters them as 'expired')
 *   state       active, paused (its queued messages wait: due at
 *               'infinity' until resumed) or canceled (its queued messages
 *               canceled, no more enqueued)
 */
CREATE TABLE twilio_outbox.campaigns (
	account		text NOT NULL
		REFERENCES twilio_outbox.accounts (name) ON DELETE CASCADE,
	name		text NOT NULL
		CONSTRAINT campaigns_name_valid CHECK (pg_catalog.length(name) OPERATOR(pg_catalog.<=) 64
			AND name OPERATOR(pg_catalog.<>) '' AND name OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
	pace		numeric
		CONSTRAINT campaigns_pace_range CHECK (pace OPERATOR(pg_catalog.>) 0 AND pace OPERATOR(pg_catalog.<=) 1000000),
	burst		numeric NOT NULL DEFAULT 1
		CONSTRAINT campaigns_burst_range CHECK (burst OPERATOR(pg_catalog.>=) 1 AND burst OPERATOR(pg_catalog.<=) 1000000),
	not_before	timestamptz,
	not_after	timestamptz,
	state		text NOT NULL DEFAULT 'active'
		CONSTRAINT campaigns_state_known CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'paused', 'canceled'])),
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	/*
	 * The campaign's own quiet hours (local time of the recipient, as the
	 * account's in 42_guards.sql); both NULL: the account's apply.
	 */
	quiet_start	time,
	quiet_end	time,
	PRIMARY KEY (account, name),
	CONSTRAINT campaigns_window_order CHECK (not_before OPERATOR(pg_catalog.<) not_after),
	CONSTRAINT campaigns_quiet_hours_both_or_neither
		CHECK ((quiet_start IS NULL) OPERATOR(pg_catalog.=) (quiet_end IS NULL)
			   AND (quiet_start IS NULL
					OR (quiet_start OPERATOR(pg_catalog.<>) quiet_end
						AND quiet_start OPERATOR(pg_catalog.<) '24:00'
						AND quiet_end OPERATOR(pg_catalog.<) '24:00')))
);
COMMENT ON TABLE twilio_outbox.campaigns IS 'Campaigns by account: pace (messages/s over all its senders, NULL unpaced), burst, window (not_before, not_after) and state (active, paused, canceled); created on first use or by create_campaign()';

ALTER TABLE twilio_outbox.messages ADD COLUMN campaign text;
COMMENT ON COLUMN twilio_outbox.messages.campaign IS 'the campaign (of the message''s account) the message belongs to, NULL for none';
/* pause, resume, cancel and the overview read a campaign's messages by state */
CREATE INDEX messages_campaign ON twilio_outbox.messages (account, campaign, state)
	WHERE campaign IS NOT NULL;

/*
 * The campaign row an operator function acts on, locked: the named
 * account's, or the default account's when account is NULL.  42704 when
 * there is none.
 */
CREATE FUNCTION twilio_outbox.campaign_row(campaign text, account text)
RETURNS twilio_outbox.campaigns
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r twilio_outbox.campaigns;
	acct text := account;
BEGIN
	IF campaign IS NULL THEN
		RAISE EXCEPTION 'campaign must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF acct IS NULL THEN
		SELECT a.name INTO acct FROM twilio_outbox.accounts a WHERE a.is_default;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'no default account'
				USING ERRCODE = 'undefined_object', HINT = 'Name the account.';
		END IF;
	END IF;
	SELECT c.* INTO r FROM twilio_outbox.campaigns c
	WHERE c.account OPERATOR(pg_catalog.=) acct AND c.name OPERATOR(pg_catalog.=) campaign
	FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'campaign "%" of account "%" does not exist',
			twilio_outbox.clip_input(campaign), twilio_outbox.clip_input(acct)
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN r;
END
$$;
COMMENT ON FUNCTION twilio_outbox.campaign_row(text, text) IS 'The campaign row an operator function acts on, locked (the default account''s when account is NULL); 42704 when none';

CREATE FUNCTION twilio_outbox.create_campaign(campaign text, account text DEFAULT NULL,
	pace numeric DEFAULT NULL, burst numeric DEFAULT NULL,
	not_before timestamptz DEFAULT NULL, not_after timestamptz DEFAULT NULL,
	quiet_start time DEFAULT NULL, quiet_end time DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	acct text := account;
BEGIN
	IF campaign IS NULL THEN
		RAISE EXCEPTION 'campaign must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF campaign OPERATOR(pg_catalog.=) '' OR pg_catalog.length(campaign) OPERATOR(pg_catalog.>) 64
	   OR campaign OPERATOR(pg_catalog.~) '[[:cntrl:]]' THEN
		RAISE EXCEPTION 'invalid campaign name "%"', twilio_outbox.clip_input(campaign)
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A campaign name has 1 to 64 characters, without control characters.';
	END IF;
	IF pace IS NOT NULL AND NOT (pace OPERATOR(pg_catalog.>) 0 AND pace OPERATOR(pg_catalog.<=) 1000000) THEN
		RAISE EXCEPTION 'invalid pace %', pace
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A pace is in messages per second, more than 0 and at most 1000000; NULL for none.';
	END IF;
	IF burst IS NOT NULL AND NOT (burst OPERATOR(pg_catalog.>=) 1 AND burst OPERATOR(pg_catalog.<=) 1000000) THEN
		RAISE EXCEPTION 'invalid burst %', burst
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A burst is a number of messages, at least 1.';
	END IF;
	IF not_before IS NOT NULL AND not_after IS NOT NULL AND not_before OPERATOR(pg_catalog.>=) not_after THEN
		RAISE EXCEPTION 'not_before must be earlier than not_after' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF (quiet_start IS NULL) OPERATOR(pg_catalog.<>) (quiet_end IS NULL)
	   OR quiet_start OPERATOR(pg_catalog.=) quiet_end
	   OR quiet_start OPERATOR(pg_catalog.>=) '24:00' OR quiet_end OPERATOR(pg_catalog.>=) '24:00' THEN
		RAISE EXCEPTION 'invalid quiet hours'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give quiet_start and quiet_end both (two different times of day before 24:00), or neither for the account''s.';
	END IF;
	IF not_after IS NOT NULL AND not_after OPERATOR(pg_catalog.<=) pg_catalog.now() THEN
		RAISE EXCEPTION 'not_after is already past' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF acct IS NULL THEN
		SELECT a.name INTO acct FROM twilio_outbox.accounts a WHERE a.is_default;
	ELSE
		SELECT a.name INTO acct FROM twilio_outbox.accounts a WHERE a.name OPERATOR(pg_catalog.=) acct;
	END IF;
	IF acct IS NULL THEN
		RAISE EXCEPTION 'account "%" does not exist', twilio_outbox.clip_input(coalesce(account, '(default)'))
			USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO twilio_outbox.campaigns AS c (account, name, pace, burst, not_before, not_after,
		quiet_start, quiet_end)
	VALUES (acct, campaign, pace, coalesce(burst, 1), not_before, not_after, quiet_start, quiet_end)
	ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'campaign "%" of account "%" already exists',
			twilio_outbox.clip_input(campaign), acct
			USING ERRCODE = 'duplicate_object',
				  HINT = 'A campaign''s window is set when it is created; set_campaign_pace() changes its pace.';
	END IF;
END
$$;
COMMENT ON FUNCTION twilio_outbox.create_campaign(text, text, numeric, numeric, timestamptz, timestamptz, time, time) IS 'Create a campaign with its pace, burst, window and quiet hours (NULL: the account''s) before its first message (42710 if it exists)';
COMMENT ON COLUMN twilio_outbox.campaigns.quiet_start IS 'start of the campaign''s quiet hours, recipient''s local time (NULL with quiet_end: the account''s apply)';
COMMENT ON COLUMN twilio_outbox.campaigns.quiet_end IS 'end of the campaign''s quiet hours; may be earlier than quiet_start (the window wraps past midnight)';

/* Pause: its queued messages wait (due at infinity) until resumed; in-flight ones finish. */
CREATE FUNCTION twilio_outbox.pause_campaign(campaign text, account text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c twilio_outbox.campaigns := twilio_outbox.campaign_row(campaign, account);
	n bigint;
BEGIN
	IF c.state OPERATOR(pg_catalog.=) 'canceled' THEN
		RAISE EXCEPTION 'campaign "%" is canceled', twilio_outbox.clip_input(campaign)
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	UPDATE twilio_outbox.campaigns x SET state = 'paused', updated_at = pg_catalog.now()
	WHERE x.account OPERATOR(pg_catalog.=) c.account AND x.name OPERATOR(pg_catalog.=) c.name;
	UPDATE twilio_outbox.messages m SET next_attempt_at = 'infinity', updated_at = pg_catalog.now()
	WHERE m.account OPERATOR(pg_catalog.=) c.account AND m.campaign OPERATOR(pg_catalog.=) c.name
	  AND m.state OPERATOR(pg_catalog.=) 'queued'
	  AND m.next_attempt_at OPERATOR(pg_catalog.<>) 'infinity';
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION twilio_outbox.pause_campaign(text, text) IS 'Pause a campaign: its queued messages wait until resume_campaign(); returns how many were held';

CREATE FUNCTION twilio_outbox.resume_campaign(campaign text, account text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c twilio_outbox.campaigns := twilio_outbox.campaign_row(campaign, account);
	n bigint;
BEGIN
	IF c.state OPERATOR(pg_catalog.=) 'canceled' THEN
		RAISE EXCEPTION 'campaign "%" is canceled', twilio_outbox.clip_input(campaign)
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	UPDATE twilio_outbox.campaigns x SET state = 'active', updated_at = pg_catalog.now()
	WHERE x.account OPERATOR(pg_catalog.=) c.account AND x.name OPERATOR(pg_catalog.=) c.name;
	UPDATE twilio_outbox.messages m
	SET next_attempt_at = GREATEST(pg_catalog.now(), m.send_after, c.not_before),
		updated_at = pg_catalog.now()
	WHERE m.account OPERATOR(pg_catalog.=) c.account AND m.campaign OPERATOR(pg_catalog.=) c.name
	  AND m.state OPERATOR(pg_catalog.=) 'queued'
	  AND m.next_attempt_at OPERATOR(pg_catalog.=) 'infinity';
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM twilio_outbox.wake_worker();
	RETURN n;
END
$$;
COMMENT ON FUNCTION twilio_outbox.resume_campaign(text, text) IS 'Resume a paused campaign: its held messages are due again; returns how many';

CREATE FUNCTION twilio_outbox.cancel_campaign(campaign text, account text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c twilio_outbox.campaigns := twilio_outbox.campaign_row(campaign, account);
	n bigint;
BEGIN
	UPDATE twilio_outbox.campaigns x SET state = 'canceled', updated_at = pg_catalog.now()
	WHERE x.account OPERATOR(pg_catalog.=) c.account AND x.name OPERATOR(pg_catalog.=) c.name;
	UPDATE twilio_outbox.messages m
	SET state = 'canceled', finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
		last_error_message = 'campaign canceled by ' OPERATOR(pg_catalog.||) SESSION_USER
	WHERE m.account OPERATOR(pg_catalog.=) c.account AND m.campaign OPERATOR(pg_catalog.=) c.name
	  AND m.state OPERATOR(pg_catalog.=) 'queued';
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION twilio_outbox.cancel_campaign(text, text) IS 'Cancel a campaign: its queued messages are canceled (in-flight ones finish) and no more can be enqueued; returns how many were canceled';

CREATE FUNCTION twilio_outbox.set_campaign_pace(campaign text, pace numeric,
	burst numeric DEFAULT NULL, account text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c twilio_outbox.campaigns := twilio_outbox.campaign_row(campaign, account);
BEGIN
	IF pace IS NOT NULL AND NOT (pace OPERATOR(pg_catalog.>) 0 AND pace OPERATOR(pg_catalog.<=) 1000000) THEN
		RAISE EXCEPTION 'invalid pace %', pace
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A pace is in messages per second, more than 0 and at most 1000000; NULL for none.';
	END IF;
	IF burst IS NOT NULL AND NOT (burst OPERATOR(pg_catalog.>=) 1 AND burst OPERATOR(pg_catalog.<=) 1000000) THEN
		RAISE EXCEPTION 'invalid burst %', burst
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A burst is a number of messages, at least 1.';
	END IF;
	UPDATE twilio_outbox.campaigns x
	SET pace = set_campaign_pace.pace, burst = coalesce(set_campaign_pace.burst, x.burst),
		updated_at = pg_catalog.now()
	WHERE x.account OPERATOR(pg_catalog.=) c.account AND x.name OPERATOR(pg_catalog.=) c.name;
	/*
	 * The messages the old pace put off (never attempted, due later than
	 * their own send_after and the campaign's start) are due again now, so
	 * that the dispatcher spaces them at the new pace.  Held (paused) and
	 * retrying messages keep their times.
	 */
	IF c.state OPERATOR(pg_catalog.=) 'active' THEN
		UPDATE twilio_outbox.messages m
		SET next_attempt_at = GREATEST(pg_catalog.now(), m.send_after, c.not_before),
			updated_at = pg_catalog.now()
		WHERE m.account OPERATOR(pg_catalog.=) c.account AND m.campaign OPERATOR(pg_catalog.=) c.name
		  AND m.state OPERATOR(pg_catalog.=) 'queued' AND m.attempts OPERATOR(pg_catalog.=) 0
		  AND m.next_attempt_at OPERATOR(pg_catalog.<>) 'infinity'
		  AND m.next_attempt_at OPERATOR(pg_catalog.>) GREATEST(pg_catalog.now(), m.send_after, c.not_before);
	END IF;
	PERFORM twilio_outbox.wake_worker();
END
$$;
COMMENT ON FUNCTION twilio_outbox.set_campaign_pace(text, numeric, numeric, text) IS 'Change a campaign''s pace (NULL: unpaced) and burst at run time; the messages the old pace put off are due again';

/*
 * Per campaign: its settings, its messages by outcome, the rate it sends
 * at (over the last minute), and when it should be done: its queued
 * messages over the slower of its pace and the sum of the rates of the
 * senders they wait on (a sender's rate as the dispatcher takes it: NULL is
 * its kind's default; a Messaging Service without one counts as unlimited),
 * or over the current rate when neither limits it, from now or from its
 * not_before if later.  NULL while paused or
 * when nothing says.  Reads each campaign's messages through
 * messages_campaign.
 */
CREATE VIEW twilio_outbox.campaigns_overview AS
SELECT c.account, c.name AS campaign, c.state, c.pace, c.burst, c.not_before, c.not_after,
	s.queued, s.sending, s.sent, s.delivered, s.failed, s.suppressed, s.dead, s.canceled,
	pg_catalog.round(s.sent_last_minute OPERATOR(pg_catalog./) 60.0, 3) AS rate_per_second,
	CASE WHEN s.queued OPERATOR(pg_catalog.=) 0 THEN NULL
		 WHEN c.state OPERATOR(pg_catalog.<>) 'active' THEN NULL
		 ELSE GREATEST(pg_catalog.now(), c.not_before) OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs =>
			(s.queued::float8 OPERATOR(pg_catalog./) NULLIF(
				CASE WHEN LEAST(coalesce(c.pace::float8, 'Infinity'), coalesce(r.rate, 'Infinity'))
						OPERATOR(pg_catalog.<) 'Infinity'
					 THEN LEAST(coalesce(c.pace::float8, 'Infinity'), coalesce(r.rate, 'Infinity'))
					 ELSE s.sent_last_minute OPERATOR(pg_catalog./) 60.0 END, 0))::numeric(20, 3)::float8)
	END AS estimated_completion
FROM twilio_outbox.campaigns c
CROSS JOIN LATERAL (
	SELECT pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'queued') AS queued,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'sending') AS sending,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'sent') AS sent,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'delivered') AS delivered,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) ANY (ARRAY['failed', 'undelivered']::twilio_outbox.message_state[])) AS failed,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'dead' AND d.suppressed) AS suppressed,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'dead' AND NOT d.suppressed) AS dead,
		pg_catalog.count(*) FILTER (WHERE m.state OPERATOR(pg_catalog.=) 'canceled') AS canceled,
		pg_catalog.count(*) FILTER (WHERE m.sent_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 minute')) AS sent_last_minute
	FROM twilio_outbox.messages m
	LEFT JOIN LATERAL (SELECT EXISTS (SELECT FROM twilio_outbox.dead_letters l
			WHERE l.message_id OPERATOR(pg_catalog.=) m.id AND l.account OPERATOR(pg_catalog.=) m.account
			  AND l.reason OPERATOR(pg_catalog.=) 'suppressed') AS suppressed
		WHERE m.state OPERATOR(pg_catalog.=) 'dead') d ON true
	WHERE m.account OPERATOR(pg_catalog.=) c.account AND m.campaign OPERATOR(pg_catalog.=) c.name) s
CROSS JOIN LATERAL (
	SELECT pg_catalog.sum(CASE WHEN x.rate IS NOT NULL THEN x.rate::float8
		WHEN x.kind OPERATOR(pg_catalog.=) ANY (ARRAY['long_code', 'alphanumeric']::twilio_outbox.sender_kind[]) THEN 1
		WHEN x.kind OPERATOR(pg_catalog.=) 'toll_free' THEN 3
		WHEN x.kind OPERATOR(pg_catalog.=) 'short_code' THEN 100
		WHEN x.kind OPERATOR(pg_catalog.=) 'whatsapp' THEN 80
		ELSE 'Infinity'::float8 END) AS rate
	FROM twilio_outbox.senders x
	WHERE x.id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT DISTINCT m.sender_id FROM twilio_outbox.messages m
		WHERE m.account OPERATOR(pg_catalog.=) c.account AND m.campaign OPERATOR(pg_catalog.=) c.name
		  AND m.state OPERATOR(pg_catalog.=) 'queued'))) r;
COMMENT ON VIEW twilio_outbox.campaigns_overview IS 'Per campaign: state, pace, window, messages queued/sending/sent/delivered/failed/suppressed/dead/canceled, the rate over the last minute, and the estimated completion from its pace and its senders'' rates';

/* Privileges: the operator functions for the admin role, the table and view for monitoring too. */
REVOKE ALL ON FUNCTION twilio_outbox.priority_name(integer),
	twilio_outbox.campaign_row(text, text),
	twilio_outbox.create_campaign(text, text, numeric, numeric, timestamptz, timestamptz, time, time),
	twilio_outbox.pause_campaign(text, text), twilio_outbox.resume_campaign(text, text),
	twilio_outbox.cancel_campaign(text, text),
	twilio_outbox.set_campaign_pace(text, numeric, numeric, text)
	FROM PUBLIC;
REVOKE ALL ON twilio_outbox.campaigns, twilio_outbox.campaigns_overview FROM PUBLIC;
GRANT EXECUTE ON FUNCTION twilio_outbox.priority_name(integer) TO twilio_outbox_monitor, twilio_outbox_admin;
GRANT EXECUTE ON FUNCTION twilio_outbox.campaign_row(text, text),
	twilio_outbox.create_campaign(text, text, numeric, numeric, timestamptz, timestamptz, time, time),
	twilio_outbox.pause_campaign(text, text), twilio_outbox.resume_campaign(text, text),
	twilio_outbox.cancel_campaign(text, text),
	twilio_outbox.set_campaign_pace(text, numeric, numeric, text)
	TO twilio_outbox_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON twilio_outbox.campaigns TO twilio_outbox_admin;
GRANT SELECT ON twilio_outbox.campaigns, twilio_outbox.campaigns_overview TO twilio_outbox_monitor;
GRANT SELECT (priority, traffic_class, campaign) ON twilio_outbox.messages TO twilio_outbox_monitor;
