-- Fallback chains (issue 13): twilio_enqueue's fallback argument and its
-- SQLSTATEs, then the chain's rules without a dispatcher: the "sent" state
-- is written by hand, status callbacks (messages and calls) come through
-- receive_status, and the dispatcher's two entry points, a dead letter and
-- a timer, through chain_escalate() as it calls it.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_fallback
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC11111111111111111111111111111111', true);
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'fb-auth-token');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default) VALUES
	('main', '+15005550006', 'long_code', true),
	('main', 'whatsapp:+15005550007', 'whatsapp', false),
	('main', 'OUTBOX', 'alphanumeric', false);
-- an account with no WhatsApp sender
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('plain', 'AC22222222222222222222222222222222');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('plain', '+15005550106', 'long_code', true);
RESET client_min_messages;

-- The shape: an array of 1 to 5 objects, known keys, string values.
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '{"channel": "voice"}')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "sms"}, {"channel": "sms"}, {"channel": "sms"}, {"channel": "sms"}, {"channel": "sms"}, {"channel": "sms"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '["voice"]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "when": "later"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "after": 120}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "fax"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"after": "1 minute"}]')$$);
-- voice options, and a call needs text to read out
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "whatsapp", "voice": "alice"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "voice": "<alice>"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "language": "english please"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', content_sid => 'HX0123456789abcdef0123456789abcdef', fallback => '[{"channel": "voice"}]')$$);
-- after: an interval from 1 second to 7 days
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "after": "soon"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "after": "0 seconds"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "after": "8 days"}]')$$);
-- senders: named ones must exist and fit the channel; else the account needs one
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "from": "+15005550999"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "from": "whatsapp:+15005550007"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "voice", "from": "OUTBOX"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', fallback => '[{"channel": "sms", "from": "whatsapp:+15005550007"}]')$$);
SELECT try($$SELECT twilio_enqueue('+14155550100', 'code 1', account => 'plain', fallback => '[{"channel": "whatsapp"}]')$$);
-- nothing was enqueued by any of them
SELECT count(*) AS messages FROM twilio_outbox.messages;

-- A chain: the head carries the steps as resolved, and the first timer.
SELECT twilio_enqueue('+14155550100', 'Your code is 1 & 2 <3>',
	fallback => '[{"channel": "whatsapp"}, {"channel": "voice", "after": "2 minutes", "voice": "alice", "language": "en-US"}]') AS head1 \gset
SELECT channel, chain_head, chain_step, fallback, fallback_at
FROM twilio_outbox.messages WHERE id = :head1;
-- with an after on the first step, the head's timer runs from when it is due
SELECT twilio_enqueue('+14155550101', 'code 2', send_after => now() + interval '1 hour',
	fallback => '[{"channel": "voice", "after": "30 seconds", "from": "+15005550006"}]') AS head2 \gset
SELECT fallback_at - send_after AS timer FROM twilio_outbox.messages WHERE id = :head2;
-- a plain message has no chain
SELECT twilio_enqueue('+14155550102', 'plain') AS plain \gset
SELECT channel, chain_step, fallback, fallback_at FROM twilio_outbox.messages WHERE id = :plain;

-- Callbacks, signed with the account's token; "sent" by hand, as the dispatcher would.
CREATE FUNCTION sent(id bigint, sid text) RETURNS void LANGUAGE sql AS $$
	UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1, twilio_sid = sid,
		twilio_status = 'queued', sent_at = now() WHERE messages.id = sent.id $$;
CREATE FUNCTION cb(kind text, sid text, status text, extra text DEFAULT '') RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	url text := 'https://hooks.example.com/twilio/status';
	body text := 'AccountSid=AC11111111111111111111111111111111&' || kind || 'Sid=' || sid
		|| '&' || kind || 'Status=' || status || extra;
BEGIN
	RETURN twilio_outbox.receive_status(url, body, twilio_outbox.webhook_signature('fb-auth-token', url, body));
END
$$;
CREATE VIEW steps AS
	SELECT head_id, step, channel, to_number, state, twilio_status, fallback_at IS NOT NULL AS timer
	FROM twilio_outbox.chain_steps;

-- SMS undelivered: the WhatsApp step, to the same person's WhatsApp address.
SELECT sent(:head1, 'SM' || repeat('1', 32));
SELECT cb('Message', 'SM' || repeat('1', 32), 'undelivered', '&ErrorCode=30003');
SELECT * FROM steps WHERE head_id = :head1 ORDER BY step;
SELECT m.sender_id = s.id AS from_whatsapp_sender, m.from_number, m.body, m.voice_options
FROM twilio_outbox.messages m, twilio_outbox.senders s
WHERE m.chain_head = :head1 AND m.chain_step = 1 AND s.from_number = 'whatsapp:+15005550007';
-- the same failure again (Twilio retries, or a poll): no second step
SELECT cb('Message', 'SM' || repeat('1', 32), 'failed');
SELECT twilio_outbox.chain_escalate('main', :head1, 'status') AS again;
SELECT count(*) AS steps FROM twilio_outbox.messages WHERE chain_head = :head1;
-- WhatsApp failed too: the call, with its voice options, and no timer (last step)
SELECT id AS wa1 FROM twilio_outbox.messages WHERE chain_head = :head1 AND chain_step = 1 \gset
SELECT sent(:wa1, 'SM' || repeat('2', 32));
SELECT cb('Message', 'SM' || repeat('2', 32), 'failed', '&ErrorCode=63016');
SELECT * FROM steps WHERE head_id = :head1 ORDER BY step;
SELECT voice_options, segments, media_urls FROM twilio_outbox.messages WHERE chain_head = :head1 AND chain_step = 2;
SELECT outcome, delivered_channel FROM twilio_outbox.chains WHERE head_id = :head1;
-- the call: ringing, then completed (a call's callback: CallSid, CallStatus)
SELECT id AS call1 FROM twilio_outbox.messages WHERE chain_head = :head1 AND chain_step = 2 \gset
SELECT sent(:call1, 'CA' || repeat('3', 32));
SELECT cb('Call', 'CA' || repeat('3', 32), 'ringing');
SELECT cb('Call', 'CA' || repeat('3', 32), 'completed');
SELECT cb('Call', 'CA' || repeat('3', 32), 'in-progress');
SELECT state, twilio_status FROM twilio_outbox.messages WHERE id = :call1;
SELECT outcome, delivered_channel, delivered_step, steps_made, steps_planned, finished_at IS NOT NULL AS finished
FROM twilio_outbox.chains WHERE head_id = :head1;

-- A call busy or unanswered fails its step: the next one, if any.
SELECT twilio_enqueue('+14155550103', 'code 3',
	fallback => '[{"channel": "voice"}, {"channel": "sms", "from": "OUTBOX"}]') AS head3 \gset
SELECT sent(:head3, 'SM' || repeat('4', 32));
SELECT cb('Message', 'SM' || repeat('4', 32), 'failed');
SELECT id AS call3 FROM twilio_outbox.messages WHERE chain_head = :head3 AND chain_step = 1 \gset
SELECT sent(:call3, 'CA' || repeat('5', 32));
SELECT cb('Call', 'CA' || repeat('5', 32), 'busy');
SELECT * FROM steps WHERE head_id = :head3 ORDER BY step;
-- its last step dead-letters (as the dispatcher records a rejection): exhausted
SELECT id AS sms3 FROM twilio_outbox.messages WHERE chain_head = :head3 AND chain_step = 2 \gset
UPDATE twilio_outbox.messages SET state = 'dead', attempts = 1, last_error_code = 21211 WHERE id = :sms3;
SELECT twilio_outbox.chain_escalate('main', :sms3, 'dead') AS none_left;
SELECT outcome, delivered_channel, steps_made, steps_planned FROM twilio_outbox.chains WHERE head_id = :head3;

-- The timer: a head not delivered in time makes the next step; its late
-- "delivered" is recorded, cancels the step not yet sent, and makes no other.
SELECT twilio_enqueue('+14155550104', 'code 4',
	fallback => '[{"channel": "voice", "after": "1 minute"}, {"channel": "whatsapp", "after": "1 minute"}]') AS head4 \gset
SELECT sent(:head4, 'SM' || repeat('6', 32));
SELECT twilio_outbox.chain_escalate('main', :head4, 'timer') IS NOT NULL AS fired;
SELECT twilio_outbox.chain_escalate('main', :head4, 'timer') IS NOT NULL AS fired_twice;
SELECT * FROM steps WHERE head_id = :head4 ORDER BY step;
SELECT outcome FROM twilio_outbox.chains WHERE head_id = :head4;
SELECT cb('Message', 'SM' || repeat('6', 32), 'delivered');
SELECT * FROM steps WHERE head_id = :head4 ORDER BY step;
SELECT last_error_message FROM twilio_outbox.messages WHERE chain_head = :head4 AND chain_step = 1;
SELECT outcome, delivered_channel, delivered_step FROM twilio_outbox.chains WHERE head_id = :head4;
-- the head's failure after that makes nothing either
SELECT twilio_outbox.chain_escalate('main', :head4, 'status') AS after_delivery;

-- Never to someone who must not be contacted: 21610 (STOP) suppresses, no step.
SELECT twilio_enqueue('+14155550105', 'code 5', fallback => '[{"channel": "voice"}]') AS head5 \gset
SELECT sent(:head5, 'SM' || repeat('7', 32));
SELECT cb('Message', 'SM' || repeat('7', 32), 'undelivered', '&ErrorCode=21610');
SELECT * FROM steps WHERE head_id = :head5 ORDER BY step;
SELECT outcome FROM twilio_outbox.chains WHERE head_id = :head5;
-- nor for an expired message or a canceled one, even when its timer is due
SELECT twilio_enqueue('+14155550106', 'code 6', fallback => '[{"channel": "voice", "after": "1 second"}]') AS head6 \gset
SELECT twilio_outbox.cancel(:head6);
SELECT twilio_outbox.chain_escalate('main', :head6, 'timer') AS canceled_timer;
SELECT twilio_enqueue('+14155550107', 'code 7', fallback => '[{"channel": "voice"}]') AS head7 \gset
UPDATE twilio_outbox.messages SET state = 'dead', expires_at = now() - interval '1 second' WHERE id = :head7;
INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason, attempts)
	VALUES (:head7, 'main', '+14155550107', 'expired', 0);
SELECT twilio_outbox.chain_escalate('main', :head7, 'dead') AS expired;
SELECT head_id = :head6 AS canceled_head, outcome, steps_made FROM twilio_outbox.chains
WHERE head_id IN (:head6, :head7) ORDER BY head_id;
-- a recipient suppressed meanwhile (an opt-out by SMS) gets no call either
SELECT twilio_enqueue('+14155550108', 'code 8', fallback => '[{"channel": "voice"}]') AS head8 \gset
SELECT sent(:head8, 'SM' || repeat('8', 32));
INSERT INTO twilio_outbox.suppressed_recipients (account, to_number, reason) VALUES ('main', '+14155550108', 'STOP');
SELECT cb('Message', 'SM' || repeat('8', 32), 'undelivered', '&ErrorCode=30003');
SELECT count(*) AS steps FROM twilio_outbox.messages WHERE chain_head = :head8;

-- Who sees chains: the monitor role, never the content.
SET ROLE twilio_outbox_monitor;
SELECT outcome, count(*) FROM twilio_outbox.chains GROUP BY outcome ORDER BY outcome;
SELECT try('SELECT body FROM twilio_outbox.messages LIMIT 1');
SELECT try($$SELECT twilio_outbox.chain_escalate('main', 1, 'timer')$$);
RESET ROLE;
SET ROLE twilio_outbox_enqueue;
SELECT try('SELECT * FROM twilio_outbox.chains');
RESET ROLE;
