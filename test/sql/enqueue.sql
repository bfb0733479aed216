-- twilio_enqueue(): the happy paths, what the row holds, rollback, dedupe.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_enqueue
\i test/sql/include/fresh_database.sql

INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true),
	       ('other', 'ACfedcba9876543210fedcba9876543210', false);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default) VALUES
	('main', '+15005550006', 'long_code', true),
	('main', '+18005550100', 'toll_free', false),
	('main', 'whatsapp:+15005550007', 'whatsapp', false),
	('other', '+15005550009', 'long_code', true);
INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind)
	VALUES ('main', 'MG0123456789abcdef0123456789abcdef', 'messaging_service');

-- Unqualified, with the default search_path: the account's default sender.
SHOW search_path;
SELECT twilio_enqueue('+14155552671', 'Your code is 481516') AS sms;
-- A named from-number, media (MMS), a Messaging Service, WhatsApp, a template.
SELECT twilio_enqueue(to_number => '+14155552672', body => 'See attached',
	from_number => '+18005550100',
	media_urls => ARRAY['https://example.com/a.png', 'http://example.com/b.jpg']) AS mms;
SELECT twilio_enqueue(to_number => '+14155552673', body => 'Via the pool',
	messaging_service_sid => 'MG0123456789abcdef0123456789abcdef') AS service;
SELECT twilio_enqueue(to_number => 'whatsapp:+14155552674', body => 'Hola',
	from_number => 'whatsapp:+15005550007') AS whatsapp;
SELECT twilio_enqueue(to_number => '+14155552675',
	content_sid => 'HX0123456789abcdef0123456789abcdef',
	content_variables => '{"1": "Ada", "2": "Tuesday"}',
	messaging_service_sid => 'MG0123456789abcdef0123456789abcdef') AS template;
SELECT twilio_enqueue(to_number => '+14155552676', body => 'other account',
	account => 'other', status_callback => 'https://app.example.com/twilio/status',
	params => '{"ValidityPeriod": 600, "SmartEncoded": true, "PersistentAction": ["geo:1,2"]}') AS other;

SELECT id, account, to_number, from_number, messaging_service_sid, body,
	media_urls, content_sid, content_variables, status_callback, params,
	encoding, segments, state, attempts, failures, enqueued_by = session_user AS by_caller,
	idempotency_key::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS uuid_v4,
	next_attempt_at <= now() AS due_now
FROM twilio_outbox.messages ORDER BY id;

-- Every message gets its own idempotency key.
SELECT count(DISTINCT idempotency_key) = count(*) AS keys_unique FROM twilio_outbox.messages;

-- Scheduling: send_after in the future makes it due then, not now.
SELECT twilio_enqueue('+14155552677', 'later', send_after => now() + interval '1 hour',
	expires_at => now() + interval '2 hours') AS later \gset
SELECT next_attempt_at = send_after AS due_later, expires_at > send_after AS expires_after
FROM twilio_outbox.messages WHERE id = :later;

-- Rolled back: no row.
SELECT count(*) AS before FROM twilio_outbox.messages \gset
BEGIN;
SELECT twilio_enqueue('+14155552678', 'never') > 0 AS enqueued;
ROLLBACK;
SELECT count(*) - :before AS rows_added FROM twilio_outbox.messages;

-- Dedupe key: the same id, in one transaction and across two.
BEGIN;
SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42') AS first \gset
SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42') = :first AS same_in_txn;
COMMIT;
SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42') = :first AS same_later;
SELECT count(*) AS rows_with_key FROM twilio_outbox.messages WHERE dedupe_key = 'order-42';
-- Keys are per account.
SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42', account => 'other') <> :first AS other_account_new;
-- A key is an idempotency key: the same call again (its times may differ,
-- a retry computes now() + interval anew) gets the same id; the same key
-- for a different message is an error, never a silent drop of the new one.
SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42',
	expires_at => now() + interval '1 hour') = :first AS same_with_other_expiry;
SELECT try(sql) AS reused_key, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552679', 'twice', dedupe_key => 'order-42')$$),
	($$SELECT twilio_enqueue('+14155552600', 'once', dedupe_key => 'order-42')$$),
	($$SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42', from_number => '+18005550100')$$),
	($$SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42', media_urls => ARRAY['https://example.com/a.png'])$$),
	($$SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42', status_callback => 'https://app.example.com/cb')$$),
	($$SELECT twilio_enqueue('+14155552679', 'once', dedupe_key => 'order-42', params => '{"ValidityPeriod": 60}')$$)
) AS t(sql);
SELECT twilio_enqueue('+14155552679', 'twice', dedupe_key => 'order-42');
SELECT count(*) AS rows_with_key FROM twilio_outbox.messages WHERE dedupe_key = 'order-42';
-- A rolled-back dedupe key is free again.
BEGIN;
SELECT twilio_enqueue('+14155552680', 'x', dedupe_key => 'order-43') > 0 AS enqueued;
ROLLBACK;
SELECT twilio_enqueue('+14155552680', 'x', dedupe_key => 'order-43') > 0 AS enqueued_again;
SELECT count(*) AS rows_with_key FROM twilio_outbox.messages WHERE dedupe_key = 'order-43';

-- A sender with live messages cannot be deleted with delete_sender().
\set VERBOSITY terse
SELECT twilio_outbox.delete_sender(id) FROM twilio_outbox.senders WHERE from_number = '+18005550100';
\set VERBOSITY default
