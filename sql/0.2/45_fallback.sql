/* fallback chains and voice calls (issue 13; src/fallback.c, src/call.c) */

/*
 * A chain is a message (its head) enqueued with fallback steps: when the
 * head cannot be delivered, the next step is a new message on another
 * channel (sms, whatsapp, or a voice call that reads the body out), and so
 * on.  Every message of a chain carries its head's id (NULL on the head
 * itself) and its step (0 on the head); the head alone carries the steps
 * still to come, as twilio_enqueue checked and resolved them (each with its
 * sender's id).  fallback_at is a step's timer: when the next step fires if
 * this one is not delivered by then (the next step's "after", counted from
 * when this one became due).  channel is set on the messages of chains
 * only ('voice' makes a message a call); 0.1 rows and plain messages keep
 * NULL, and the dispatcher sends them as before.
 */
ALTER TABLE twilio_outbox.messages
	ADD COLUMN channel text
		CONSTRAINT messages_channel_known
		CHECK (channel OPERATOR(pg_catalog.=) ANY (ARRAY['sms', 'whatsapp', 'voice'])),
	ADD COLUMN voice_options jsonb,
	ADD COLUMN chain_head bigint,
	ADD COLUMN chain_step integer
		CONSTRAINT messages_chain_step_0_to_5
		CHECK (chain_step OPERATOR(pg_catalog.>=) 0 AND chain_step OPERATOR(pg_catalog.<=) 5),
	ADD COLUMN fallback jsonb,
	ADD COLUMN fallback_at timestamptz,
	ADD CONSTRAINT messages_chain_head_is_step_0
		CHECK ((chain_head IS NULL) OPERATOR(pg_catalog.=) (chain_step IS NULL OR chain_step OPERATOR(pg_catalog.=) 0)),
	ADD CONSTRAINT messages_fallback_on_head_only
		CHECK (fallback IS NULL OR chain_step OPERATOR(pg_catalog.=) 0);
COMMENT ON COLUMN twilio_outbox.messages.channel IS 'sms, whatsapp or voice (a call) for the messages of a fallback chain; NULL: a plain message';
COMMENT ON COLUMN twilio_outbox.messages.voice_options IS 'a call''s <Say> attributes: {"voice": ..., "language": ...}';
COMMENT ON COLUMN twilio_outbox.messages.chain_head IS 'the first message of its fallback chain (NULL on that first message)';
COMMENT ON COLUMN twilio_outbox.messages.chain_step IS 'its step in its fallback chain: 0 for the first message; NULL: no chain';
COMMENT ON COLUMN twilio_outbox.messages.fallback IS 'on the first message of a chain: the steps that may follow, as checked at enqueue';
COMMENT ON COLUMN twilio_outbox.messages.fallback_at IS 'the next step of its chain fires at this time unless this message is delivered (or failed) first';

/*
 * Exactly one message per step of a chain: whoever creates a step (the
 * record of a dead letter, a status callback, the timer) inserts it with
 * ON CONFLICT DO NOTHING, so two of them racing make one.  The head's own
 * id stands for its chain_head.  Includes the account (Citus rules).
 */
CREATE UNIQUE INDEX messages_chain_step ON twilio_outbox.messages
	(account, (COALESCE(chain_head, id)), chain_step)
	WHERE chain_step IS NOT NULL;

/* The timers the dispatcher claims, per account, in due order. */
CREATE INDEX messages_fallback_due ON twilio_outbox.messages (account, fallback_at)
	WHERE fallback_at IS NOT NULL;

/* Calls per second: Twilio's default is 1 per account. */
ALTER TABLE twilio_outbox.accounts
	ADD COLUMN calls_per_second numeric NOT NULL DEFAULT 1
		CONSTRAINT accounts_calls_per_second_0_01_to_100
		CHECK (calls_per_second OPERATOR(pg_catalog.<>) 'NaN'
			   AND calls_per_second OPERATOR(pg_catalog.>=) 0.01
			   AND calls_per_second OPERATOR(pg_catalog.<=) 100);
COMMENT ON COLUMN twilio_outbox.accounts.calls_per_second IS 'voice calls (fallback steps) started per second at most, 0.01 to 100 (Twilio''s default: 1); on top of max_concurrency';

/*
 * twilio_outbox.chain_check(account, sender_id, to_number, body, fallback):
 * twilio_enqueue's check of a fallback argument, once the head's account
 * and sender are known.  Returns the steps as stored: each with its
 * channel, the sender it will go from (sender_id and from), its after
 * (interval text) and a call's voice and language.  Raises 22023 for a
 * shape or value it does not accept, 22P02/22007 (from the cast) for an
 * after that is no interval, 42704 for a sender the account does not have.
 * Internal: called by twilio_enqueue only.
 */
CREATE FUNCTION twilio_outbox.chain_check(account text, sender_id bigint, to_number text,
	body text, fallback jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	step jsonb;
	k text;
	ch text;
	frm text;
	aft interval;
	snd record;
	n integer := 0;
	out_steps jsonb := '[]';
BEGIN
	IF pg_catalog.jsonb_typeof(fallback) OPERATOR(pg_catalog.<>) 'array' THEN
		RAISE EXCEPTION 'fallback must be a JSON array of steps'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'For example: [{"channel": "whatsapp"}, {"channel": "voice", "after": "2 minutes"}].';
	END IF;
	IF pg_catalog.jsonb_array_length(fallback) OPERATOR(pg_catalog.<) 1
	   OR pg_catalog.jsonb_array_length(fallback) OPERATOR(pg_catalog.>) 5 THEN
		RAISE EXCEPTION 'fallback must have 1 to 5 steps'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = pg_catalog.format('It has %s.', pg_catalog.jsonb_array_length(fallback)),
				  HINT = 'Leave fallback out (NULL) for a message without fallback.';
	END IF;

	FOR step IN SELECT e FROM pg_catalog.jsonb_array_elements(fallback) e LOOP
		n := n OPERATOR(pg_catalog.+) 1;
		IF pg_catalog.jsonb_typeof(step) OPERATOR(pg_catalog.<>) 'object' THEN
			RAISE EXCEPTION 'fallback step % must be a JSON object', n
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOR k IN SELECT pg_catalog.jsonb_object_keys(step) LOOP
			IF k OPERATOR(pg_catalog.<>) ALL (ARRAY['channel', 'from', 'after', 'voice', 'language']) THEN
				RAISE EXCEPTION 'fallback step % has an unknown key "%"', n, twilio_outbox.clip_input(k)
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = 'A step has channel, and optionally from, after, voice and language.';
			END IF;
			IF pg_catalog.jsonb_typeof(step OPERATOR(pg_catalog.->) k) OPERATOR(pg_catalog.<>) 'string' THEN
				RAISE EXCEPTION 'fallback step %: "%" must be a string', n, k
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END LOOP;
		ch := step OPERATOR(pg_catalog.->>) 'channel';
		IF ch IS NULL OR ch OPERATOR(pg_catalog.<>) ALL (ARRAY['sms', 'whatsapp', 'voice']) THEN
			RAISE EXCEPTION 'fallback step % has no valid channel', n
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = pg_catalog.format('channel is %s; it must be "sms", "whatsapp" or "voice".',
						COALESCE('"' OPERATOR(pg_catalog.||) twilio_outbox.clip_input(ch) OPERATOR(pg_catalog.||) '"', 'missing'));
		END IF;
		IF ch OPERATOR(pg_catalog.<>) 'voice' AND (step OPERATOR(pg_catalog.?) 'voice' OR step OPERATOR(pg_catalog.?) 'language') THEN
			RAISE EXCEPTION 'fallback step %: voice and language are for a voice step', n
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF ch OPERATOR(pg_catalog.=) 'voice' AND body IS NULL THEN
			RAISE EXCEPTION 'fallback step %: a voice step needs a body to read out', n
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Pass body; a call cannot read out media or a template.';
		END IF;
		IF step OPERATOR(pg_catalog.->>) 'voice' OPERATOR(pg_catalog.!~) '^[A-Za-z0-9._-]{1,64}$' THEN
			RAISE EXCEPTION 'fallback step %: invalid voice "%"', n, twilio_outbox.clip_input(step OPERATOR(pg_catalog.->>) 'voice')
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'A voice is a name of Twilio''s <Say> voices, such as alice, man, woman or Polly.Joanna.';
		END IF;
		IF step OPERATOR(pg_catalog.->>) 'language' OPERATOR(pg_catalog.!~) '^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}$' THEN
			RAISE EXCEPTION 'fallback step %: invalid language "%"', n, twilio_outbox.clip_input(step OPERATOR(pg_catalog.->>) 'language')
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'A language is a tag such as en-US or fr-FR.';
		END IF;

		/* when: an interval from 1 second to 7 days (the cast raises 22007 or 22P02) */
		aft := NULL;
		IF step OPERATOR(pg_catalog.?) 'after' THEN
			aft := (step OPERATOR(pg_catalog.->>) 'after')::interval;
			IF aft OPERATOR(pg_catalog.<) '1 second'::interval OR aft OPERATOR(pg_catalog.>) '7 days'::interval THEN
				RAISE EXCEPTION 'fallback step %: after must be from 1 second to 7 days', n
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = pg_catalog.format('after is %s.', aft);
			END IF;
		END IF;

		/* from which sender: the one named, else the best fit the account has */
		frm := step OPERATOR(pg_catalog.->>) 'from';
		snd := NULL;
		IF frm IS NOT NULL THEN
			SELECT s.id, s.from_number INTO snd FROM twilio_outbox.senders s
			WHERE s.account OPERATOR(pg_catalog.=) chain_check.account
			  AND s.from_number OPERATOR(pg_catalog.=) frm;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'fallback step %: sender "%" does not exist in account "%"', n,
					twilio_outbox.clip_input(frm), chain_check.account
					USING ERRCODE = 'undefined_object';
			END IF;
		ELSE
			SELECT s.id, s.from_number INTO snd FROM twilio_outbox.senders s
			WHERE s.account OPERATOR(pg_catalog.=) chain_check.account AND s.from_number IS NOT NULL
			  AND CASE ch
				WHEN 'whatsapp' THEN s.from_number OPERATOR(pg_catalog.~) '^whatsapp:'
				WHEN 'voice' THEN s.from_number OPERATOR(pg_catalog.~) '^\+[1-9][0-9]{1,14}$'
				ELSE s.from_number OPERATOR(pg_catalog.!~) '^whatsapp:' END
			ORDER BY s.id OPERATOR(pg_catalog.=) chain_check.sender_id DESC, s.is_default DESC, s.id
			LIMIT 1;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'fallback step %: account "%" has no % sender', n, chain_check.account, ch
					USING ERRCODE = 'invalid_parameter_value',
						  HINT = CASE ch WHEN 'whatsapp' THEN 'Add a sender whose from_number is whatsapp:+E.164.'
							WHEN 'voice' THEN 'Add a sender whose from_number is a voice-capable E.164 number.'
							ELSE 'Add a from-number sender.' END;
			END IF;
		END IF;
		IF (ch OPERATOR(pg_catalog.=) 'whatsapp') OPERATOR(pg_catalog.<>) (snd.from_number OPERATOR(pg_catalog.~) '^whatsapp:')
		   OR (ch OPERATOR(pg_catalog.=) 'voice' AND snd.from_number OPERATOR(pg_catalog.!~) '^\+[1-9][0-9]{1,14}$') THEN
			RAISE EXCEPTION 'fallback step %: sender "%" cannot send on channel %', n, snd.from_number, ch
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'WhatsApp goes from a whatsapp:+E.164 sender, a call from an E.164 number, SMS from any other sender.';
		END IF;
		out_steps := out_steps OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(pg_catalog.jsonb_strip_nulls(
			pg_catalog.jsonb_build_object('channel', ch, 'sender_id', snd.id, 'from', snd.from_number,
				'after_seconds', pg_catalog.date_part('epoch', aft), 'voice', step OPERATOR(pg_catalog.->>) 'voice',
				'language', step OPERATOR(pg_catalog.->>) 'language')));
	END LOOP;
	RETURN out_steps;
END
$$;
COMMENT ON FUNCTION twilio_outbox.chain_check(text, bigint, text, text, jsonb) IS 'twilio_enqueue''s check of its fallback argument; the steps as stored.  Internal';

/*
 * twilio_outbox.chain_escalate(account, message_id, why): the next step of
 * a message's chain, when its failure (why: 'dead' from the dispatcher's
 * record of a dead letter, 'status' from an undelivered, failed, busy or
 * no-answer status) or its timer ('timer') calls for one.  Runs in the
 * transaction that records the failure, with the message locked.  Never
 * falls back for a message canceled or expired, a recipient suppressed (or
 * whose error the policy suppresses), a chain already delivered, or past
 * its last step; the step's timer is spent either way.  Returns the new
 * message's id, or NULL (none, or another transaction made it already).
 * Internal: the dispatcher and apply_status call it.
 */
CREATE FUNCTION twilio_outbox.chain_escalate(account text, message_id bigint, why text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	m record;
	h record;
	head bigint;
	step jsonb;
	nxt integer;
	bare text;
	target text;
	next_after interval;
	new_id bigint;
BEGIN
	SELECT * INTO m FROM twilio_outbox.messages x
	WHERE x.id OPERATOR(pg_catalog.=) message_id AND x.account OPERATOR(pg_catalog.=) chain_escalate.account
	FOR UPDATE;
	IF NOT FOUND OR m.chain_step IS NULL THEN
		RETURN NULL;
	END IF;
	head := COALESCE(m.chain_head, m.id);
	IF m.fallback_at IS NOT NULL THEN
		UPDATE twilio_outbox.messages x SET fallback_at = NULL
		WHERE x.id OPERATOR(pg_catalog.=) m.id AND x.account OPERATOR(pg_catalog.=) m.account;
	END IF;

	/* what may fall back: a timer only a message not yet final, a failure only a failed one */
	IF why OPERATOR(pg_catalog.=) 'timer' THEN
		IF m.state OPERATOR(pg_catalog.<>) ALL (ARRAY['queued', 'sending', 'sent', 'ambiguous']::twilio_outbox.message_state[]) THEN
			RETURN NULL;
		END IF;
	ELSIF m.state OPERATOR(pg_catalog.<>) ALL (ARRAY['dead', 'undelivered', 'failed']::twilio_outbox.message_state[]) THEN
		RETURN NULL;
	END IF;
	/* never to someone who must not be contacted, nor for a message out of time */
	IF m.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
	   OR EXISTS (SELECT FROM twilio_outbox.dead_letters d
				  WHERE d.message_id OPERATOR(pg_catalog.=) m.id AND d.account OPERATOR(pg_catalog.=) m.account
					AND d.reason OPERATOR(pg_catalog.=) ANY (ARRAY['expired', 'suppressed', 'sender_missing',
						'account_missing', 'invalid_message']))
	   OR EXISTS (SELECT FROM twilio_outbox.error_policy e
				  WHERE e.source OPERATOR(pg_catalog.=) 'twilio' AND e.code OPERATOR(pg_catalog.=) m.last_error_code
					AND e.action OPERATOR(pg_catalog.=) 'suppress'
					AND m.state OPERATOR(pg_catalog.<>) ALL (ARRAY['queued', 'sending', 'sent', 'ambiguous']::twilio_outbox.message_state[])) THEN
		RETURN NULL;
	END IF;

	SELECT x.* INTO h FROM twilio_outbox.messages x
	WHERE x.id OPERATOR(pg_catalog.=) head AND x.account OPERATOR(pg_catalog.=) m.account;
	IF NOT FOUND OR h.fallback IS NULL THEN
		RETURN NULL;
	END IF;
	nxt := m.chain_step OPERATOR(pg_catalog.+) 1;
	IF nxt OPERATOR(pg_catalog.>) pg_catalog.jsonb_array_length(h.fallback) THEN
		RETURN NULL;			/* exhausted */
	END IF;
	step := h.fallback OPERATOR(pg_catalog.->) (nxt OPERATOR(pg_catalog.-) 1);
	bare := pg_catalog.regexp_replace(h.to_number, '^whatsapp:', '');
	target := CASE step OPERATOR(pg_catalog.->>) 'channel' WHEN 'whatsapp' THEN 'whatsapp:' OPERATOR(pg_catalog.||) bare ELSE bare END;
	IF EXISTS (SELECT FROM twilio_outbox.suppressed_recipients r
			   WHERE r.account OPERATOR(pg_catalog.=) m.account
				 AND r.to_number OPERATOR(pg_catalog.=) ANY (ARRAY[m.to_number, bare, target]))
	   OR EXISTS (SELECT FROM twilio_outbox.messages x
				  WHERE x.account OPERATOR(pg_catalog.=) m.account
					AND COALESCE(x.chain_head, x.id) OPERATOR(pg_catalog.=) head
					AND x.chain_step IS NOT NULL
					AND x.state OPERATOR(pg_catalog.=) 'delivered') THEN
		RETURN NULL;
	END IF;

	next_after := pg_catalog.make_interval(secs => (h.fallback OPERATOR(pg_catalog.->) nxt OPERATOR(pg_catalog.->>) 'after_seconds')::float8);
	INSERT INTO twilio_outbox.messages (account, sender_id, to_number, from_number, body,
		media_urls, content_sid, content_variables, status_callback, encoding, segments,
		idempotency_key, expires_at, next_attempt_at, enqueued_by,
		channel, voice_options, chain_head, chain_step, fallback_at, next_lookup_at)
	SELECT m.account, (step OPERATOR(pg_catalog.->>) 'sender_id')::bigint, target, step OPERATOR(pg_catalog.->>) 'from',
		h.body,
		CASE WHEN step OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.<>) 'voice' THEN h.media_urls END,
		CASE WHEN step OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.<>) 'voice' THEN h.content_sid END,
		CASE WHEN step OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.<>) 'voice' THEN h.content_variables END,
		h.status_callback, h.encoding,
		CASE WHEN step OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.=) 'voice' THEN 1 ELSE h.segments END,
		pg_catalog.gen_random_uuid(), h.expires_at, pg_catalog.now(), h.enqueued_by,
		step OPERATOR(pg_catalog.->>) 'channel',
		CASE WHEN step OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.=) 'voice' THEN
			pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('voice', step OPERATOR(pg_catalog.->>) 'voice',
				'language', step OPERATOR(pg_catalog.->>) 'language')) END,
		head, nxt, pg_catalog.now() OPERATOR(pg_catalog.+) next_after,
		/* lookups (src/lookup.c) know Messages only: a call is never polled */
		CASE WHEN step OPERATOR(pg_catalog.->>) 'channel' OPERATOR(pg_catalog.=) 'voice' THEN 'infinity'::timestamptz END
	ON CONFLICT (account, (COALESCE(chain_head, id)), chain_step) WHERE chain_step IS NOT NULL DO NOTHING
	RETURNING id INTO new_id;
	IF new_id IS NOT NULL THEN
		PERFORM twilio_outbox.wake_worker();
	END IF;
	RETURN new_id;
END
$$;
COMMENT ON FUNCTION twilio_outbox.chain_escalate(text, bigint, text) IS 'The next step of a message''s fallback chain after its failure or timer: at most one per step, never for a canceled or expired message or a suppressed recipient; returns its id.  Internal';

/*
 * twilio_outbox.chain_delivered(account, message_id): a message of a chain
 * was delivered (a call completed): the chain's timers stop, and its steps
 * still queued (not gone to Twilio yet) are canceled.  A step already sent
 * runs its course; its failure makes no further step (chain_escalate sees
 * the delivered one).  Internal: apply_status calls it.
 */
CREATE FUNCTION twilio_outbox.chain_delivered(account text, message_id bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	head bigint;
	n integer;
BEGIN
	SELECT COALESCE(x.chain_head, x.id) INTO head FROM twilio_outbox.messages x
	WHERE x.id OPERATOR(pg_catalog.=) message_id AND x.account OPERATOR(pg_catalog.=) chain_delivered.account
	  AND x.chain_step IS NOT NULL;
	IF head IS NULL THEN
		RETURN 0;
	END IF;
	UPDATE twilio_outbox.messages x SET
		state = CASE WHEN x.state OPERATOR(pg_catalog.=) 'queued' THEN 'canceled'::twilio_outbox.message_state ELSE x.state END,
		finished_at = CASE WHEN x.state OPERATOR(pg_catalog.=) 'queued' THEN pg_catalog.now() ELSE x.finished_at END,
		last_error_message = CASE WHEN x.state OPERATOR(pg_catalog.=) 'queued'
			THEN 'canceled: message ' OPERATOR(pg_catalog.||) message_id::text OPERATOR(pg_catalog.||) ' of its fallback chain was delivered'
			ELSE x.last_error_message END,
		fallback_at = NULL, updated_at = pg_catalog.now()
	WHERE x.account OPERATOR(pg_catalog.=) chain_delivered.account
	  AND COALESCE(x.chain_head, x.id) OPERATOR(pg_catalog.=) head AND x.chain_step IS NOT NULL
	  AND x.id OPERATOR(pg_catalog.<>) message_id
	  AND (x.state OPERATOR(pg_catalog.=) 'queued' OR x.fallback_at IS NOT NULL);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE twilio_outbox.messages x SET fallback_at = NULL
	WHERE x.id OPERATOR(pg_catalog.=) message_id AND x.account OPERATOR(pg_catalog.=) chain_delivered.account
	  AND x.fallback_at IS NOT NULL;
	RETURN n;
END
$$;
COMMENT ON FUNCTION twilio_outbox.chain_delivered(text, bigint) IS 'A message of a fallback chain was delivered: its timers stop and its steps not yet sent are canceled.  Internal';

/*
 * Every message of every chain, for the application: one row per step,
 * with the chain's first message's id (head_id), its channel, where it
 * went, its state and times.  No content.
 */
CREATE VIEW twilio_outbox.chain_steps AS
SELECT COALESCE(m.chain_head, m.id) AS head_id, m.account, m.chain_step AS step, m.id AS message_id,
	COALESCE(m.channel, CASE WHEN m.to_number OPERATOR(pg_catalog.~) '^whatsapp:' THEN 'whatsapp' ELSE 'sms' END) AS channel,
	m.to_number, m.state, m.twilio_status, m.twilio_sid, m.last_error_code, m.last_error_message,
	m.created_at, m.sent_at, m.finished_at, m.fallback_at
FROM twilio_outbox.messages m
WHERE m.chain_step IS NOT NULL;
COMMENT ON VIEW twilio_outbox.chain_steps IS 'Each message of each fallback chain: its first message (head_id), step, channel, state and times';

/*
 * One row per chain: its outcome.  delivered: a step was delivered (a call
 * completed), on delivered_channel; in_progress: a step may still be
 * delivered or a timer may still fire; exhausted: every step failed;
 * stopped: it failed where no fallback may follow (a recipient who opted
 * out, a message expired or canceled).
 */
CREATE VIEW twilio_outbox.chains AS
SELECT s.head_id, s.account,
	CASE WHEN d.step IS NOT NULL THEN 'delivered'
		 WHEN pg_catalog.bool_or(s.state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending', 'sent', 'ambiguous']::twilio_outbox.message_state[])
				OR s.fallback_at IS NOT NULL) THEN 'in_progress'
		 WHEN pg_catalog.max(s.step) OPERATOR(pg_catalog.>=) pg_catalog.max(pg_catalog.jsonb_array_length(h.fallback)) THEN 'exhausted'
		 ELSE 'stopped' END AS outcome,
	d.channel AS delivered_channel, d.step AS delivered_step, d.message_id AS delivered_message_id,
	pg_catalog.count(*) AS steps_made,
	pg_catalog.max(pg_catalog.jsonb_array_length(h.fallback)) OPERATOR(pg_catalog.+) 1 AS steps_planned,
	pg_catalog.min(s.created_at) AS created_at,
	CASE WHEN d.step IS NOT NULL THEN d.finished_at
		 WHEN NOT pg_catalog.bool_or(s.state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending', 'sent', 'ambiguous']::twilio_outbox.message_state[])
				OR s.fallback_at IS NOT NULL) THEN pg_catalog.max(s.finished_at) END AS finished_at
FROM twilio_outbox.chain_steps s
JOIN twilio_outbox.messages h ON h.id OPERATOR(pg_catalog.=) s.head_id AND h.account OPERATOR(pg_catalog.=) s.account
LEFT JOIN LATERAL (
	SELECT x.step, x.channel, x.message_id, x.finished_at FROM twilio_outbox.chain_steps x
	WHERE x.head_id OPERATOR(pg_catalog.=) s.head_id AND x.account OPERATOR(pg_catalog.=) s.account
	  AND x.state OPERATOR(pg_catalog.=) 'delivered'
	ORDER BY x.finished_at, x.step LIMIT 1) d ON true
GROUP BY s.head_id, s.account, d.step, d.channel, d.message_id, d.finished_at;
COMMENT ON VIEW twilio_outbox.chains IS 'Each fallback chain by its first message (head_id): delivered (on delivered_channel), in_progress, exhausted or stopped (no fallback allowed)';
