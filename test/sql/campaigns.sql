-- Campaigns (issue 12): created on first use or explicitly, the window
-- and state applied at enqueue, the operator functions, the overview, and
-- their errors.  Its own database and fixtures: this file depends on no other.
\set db outbox_campaigns
\i test/sql/include/fresh_database.sql

INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true),
	       ('other', 'ACfedcba9876543210fedcba9876543210', false);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default) VALUES
	('main', '+15005550006', 'long_code', true),
	('other', '+15005550009', 'long_code', true);
-- Quiet hours are quiet_hours.sql's subject: off here, so that what is due
-- does not depend on the time of day in the recipients' zone.
UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL;

-- First use creates the row (active, unpaced, no window); later uses share it.
SELECT twilio_enqueue('+14155552671', 'Sale!', campaign => 'black-friday', traffic_class => 'marketing') IS NOT NULL AS queued;
SELECT twilio_enqueue('+14155552672', 'Sale!', campaign => 'black-friday', priority => 'low') IS NOT NULL AS queued;
-- the same name in another account is another campaign
SELECT twilio_enqueue('+14155552673', 'Sale!', campaign => 'black-friday', account => 'other') IS NOT NULL AS queued;
SELECT account, name, pace, burst, not_before, not_after, state FROM twilio_outbox.campaigns ORDER BY account, name;
SELECT to_number, account, campaign, traffic_class, priority, expires_at, next_attempt_at = created_at AS due_at_once
FROM twilio_outbox.messages ORDER BY id;

-- A query's worth at once: one row, every message in it, and all of it
-- rolled back with the caller's transaction (the campaign row too).
SELECT count(twilio_enqueue('+1415555' || lpad(g::text, 4, '0'), 'bulk ' || g, campaign => 'bulk'))
FROM generate_series(1, 500) g;
SELECT count(*) FROM twilio_outbox.messages WHERE campaign = 'bulk';
BEGIN;
SELECT count(twilio_enqueue('+1415556' || lpad(g::text, 4, '0'), 'doomed', campaign => 'doomed'))
FROM generate_series(1, 100) g;
ROLLBACK;
SELECT count(*) AS doomed_messages, (SELECT count(*) FROM twilio_outbox.campaigns WHERE name = 'doomed') AS doomed_rows
FROM twilio_outbox.messages WHERE campaign = 'doomed';

-- Bad names: 22023 before anything is written.
SELECT try($$SELECT twilio_enqueue('+14155552679', 'x', campaign => '')$$);
SELECT try($$SELECT twilio_enqueue('+14155552679', 'x', campaign => repeat('c', 65))$$);
SELECT try($$SELECT twilio_enqueue('+14155552679', 'x', campaign => E'tab\there')$$);
SELECT twilio_enqueue('+14155552679', 'x', campaign => repeat('c', 64)) IS NOT NULL AS sixty_four_is_fine;

-- create_campaign: pace, burst, window; then its errors.
SELECT twilio_outbox.create_campaign('spring', pace => 2, burst => 5,
	not_before => now() + interval '1 hour', not_after => now() + interval '1 day');
SELECT name, pace, burst, not_before - created_at AS starts_after, not_after - created_at AS ends_after, state
FROM twilio_outbox.campaigns WHERE name = 'spring';
SELECT try($$SELECT twilio_outbox.create_campaign('spring')$$);
SELECT try($$SELECT twilio_outbox.create_campaign('x', pace => 0)$$);
SELECT try($$SELECT twilio_outbox.create_campaign('x', pace => -1)$$);
SELECT try($$SELECT twilio_outbox.create_campaign('x', burst => 0.5)$$);
SELECT try($$SELECT twilio_outbox.create_campaign('x', not_before => now() + interval '2 h', not_after => now() + interval '1 h')$$);
SELECT try($$SELECT twilio_outbox.create_campaign('x', not_after => now() - interval '1 s')$$);
SELECT try($$SELECT twilio_outbox.create_campaign('x', account => 'nobody')$$);
SELECT try($$SELECT twilio_outbox.create_campaign('')$$);
SELECT try($$SELECT twilio_outbox.create_campaign(NULL)$$);
SELECT count(*) AS no_x FROM twilio_outbox.campaigns WHERE name = 'x';

-- Its window at enqueue: due no earlier than not_before, expiring at
-- not_after (or at the message's own earlier expiry).
SELECT twilio_enqueue('+14155552680', 'spring 1', campaign => 'spring') IS NOT NULL AS queued;
SELECT twilio_enqueue('+14155552681', 'spring 2', campaign => 'spring', expires_at => now() + interval '2 hours') IS NOT NULL AS queued;
SELECT m.body, m.next_attempt_at = c.not_before AS due_at_start,
	m.expires_at = c.not_after AS expires_at_end,
	m.expires_at = m.created_at + interval '2 hours' AS its_own_expiry
FROM twilio_outbox.messages m JOIN twilio_outbox.campaigns c ON c.account = m.account AND c.name = m.campaign
WHERE m.campaign = 'spring' ORDER BY m.id;
SELECT try($$SELECT twilio_enqueue('+14155552682', 'too late', campaign => 'spring', send_after => now() + interval '2 days')$$);

-- pause: queued messages held (due at infinity), new ones too; resume: due again.
SELECT twilio_outbox.pause_campaign('black-friday') AS held;
SELECT twilio_enqueue('+14155552683', 'while paused', campaign => 'black-friday') IS NOT NULL AS queued;
SELECT to_number, next_attempt_at FROM twilio_outbox.messages
WHERE campaign = 'black-friday' AND account = 'main' ORDER BY id;
SELECT state FROM twilio_outbox.campaigns WHERE account = 'main' AND name = 'black-friday';
SELECT count(*) AS other_account_untouched FROM twilio_outbox.messages
WHERE campaign = 'black-friday' AND account = 'other' AND next_attempt_at < 'infinity';
SELECT twilio_outbox.resume_campaign('black-friday') AS released;
SELECT to_number, next_attempt_at <= now() AS due FROM twilio_outbox.messages
WHERE campaign = 'black-friday' AND account = 'main' ORDER BY id;
-- resuming spring's messages keeps them to its not_before
SELECT twilio_outbox.pause_campaign('spring') AS held, twilio_outbox.resume_campaign('spring') AS released;
SELECT count(*) FILTER (WHERE m.next_attempt_at = c.not_before) AS at_start
FROM twilio_outbox.messages m JOIN twilio_outbox.campaigns c ON c.account = m.account AND c.name = m.campaign
WHERE m.campaign = 'spring';

-- set_campaign_pace at run time; errors.
SELECT twilio_outbox.set_campaign_pace('black-friday', 0.5);
-- a message the old pace put off (never attempted, due later) is due
-- again, to be spaced at the new pace; a retrying one keeps its time
UPDATE twilio_outbox.messages SET next_attempt_at = now() + interval '1 hour'
WHERE account = 'other' AND campaign = 'black-friday';
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, body, encoding, segments,
	idempotency_key, attempts, failures, next_attempt_at, campaign)
SELECT 'other', id, '+14155552690', 'retrying', 'GSM-7', 1, gen_random_uuid(), 1, 1,
	now() + interval '1 hour', 'black-friday'
FROM twilio_outbox.senders WHERE account = 'other';
SELECT twilio_outbox.set_campaign_pace('black-friday', 10, burst => 20, account => 'other');
SELECT body, next_attempt_at <= now() AS due_now FROM twilio_outbox.messages
WHERE account = 'other' AND campaign = 'black-friday' ORDER BY id;
SELECT account, name, pace, burst FROM twilio_outbox.campaigns WHERE name = 'black-friday' ORDER BY account;
SELECT twilio_outbox.set_campaign_pace('black-friday', NULL);
SELECT pace FROM twilio_outbox.campaigns WHERE account = 'main' AND name = 'black-friday';
SELECT try($$SELECT twilio_outbox.set_campaign_pace('black-friday', 0)$$);
SELECT try($$SELECT twilio_outbox.set_campaign_pace('black-friday', 1, burst => 0)$$);
SELECT try($$SELECT twilio_outbox.set_campaign_pace('no-such', 1)$$);
SELECT try($$SELECT twilio_outbox.pause_campaign('no-such')$$);
SELECT try($$SELECT twilio_outbox.pause_campaign('black-friday', 'nobody')$$);

-- cancel: queued messages canceled, in-flight ones left to finish; no
-- more enqueued; no pause or resume after.
UPDATE twilio_outbox.messages SET state = 'sending' WHERE to_number = '+14155552671';
SELECT twilio_outbox.cancel_campaign('black-friday') AS canceled;
SELECT to_number, state, last_error_message LIKE 'campaign canceled by %' AS says_why
FROM twilio_outbox.messages WHERE campaign = 'black-friday' ORDER BY id;
SELECT try($$SELECT twilio_enqueue('+14155552684', 'after cancel', campaign => 'black-friday')$$);
SELECT try($$SELECT twilio_outbox.pause_campaign('black-friday')$$);
SELECT try($$SELECT twilio_outbox.resume_campaign('black-friday')$$);
UPDATE twilio_outbox.messages SET state = 'sent', sent_at = now() WHERE to_number = '+14155552671';

-- A campaign whose end has passed takes no more messages.
UPDATE twilio_outbox.campaigns SET not_before = NULL, not_after = now() - interval '1 minute' WHERE name = 'bulk';
SELECT try($$SELECT twilio_enqueue('+14155552685', 'too late', campaign => 'bulk')$$);

-- The overview: one row per campaign.
SELECT account, left(campaign, 12) AS campaign, state, pace, queued, sending, sent, delivered, failed, suppressed, dead, canceled,
	rate_per_second, estimated_completion IS NOT NULL AS has_eta
FROM twilio_outbox.campaigns_overview ORDER BY account, campaign;
-- spring: 2 queued at a pace of 2/s on a 1/s long code (the sender is
-- the slower), from its start
SELECT estimated_completion - not_before AS after_its_start
FROM twilio_outbox.campaigns_overview WHERE campaign = 'spring';

-- Privileges: monitoring reads the overview and the table, only the
-- admin role runs the functions, PUBLIC nothing.
SELECT has_table_privilege('twilio_outbox_monitor', 'twilio_outbox.campaigns_overview', 'SELECT') AS monitor_view,
	has_table_privilege('twilio_outbox_monitor', 'twilio_outbox.campaigns', 'UPDATE') AS monitor_update,
	has_function_privilege('twilio_outbox_admin', 'twilio_outbox.cancel_campaign(text, text)', 'EXECUTE') AS admin_cancel,
	has_function_privilege('twilio_outbox_enqueue', 'twilio_outbox.cancel_campaign(text, text)', 'EXECUTE') AS enqueue_cancel,
	has_function_privilege('public', 'twilio_outbox.pause_campaign(text, text)', 'EXECUTE') AS public_pause;
