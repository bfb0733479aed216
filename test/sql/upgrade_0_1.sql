-- The 0.1 -> 0.2 update on a database with rows the new constraints and
-- keys refuse: live messages of a deleted account are dead-lettered
-- (account_missing), senders' NaN and out-of-range rates and bursts are
-- brought into range, and a constraint existing rows break is kept for new
-- rows only, with a warning saying how to validate it.  messages gets no
-- key to accounts (48_enqueue_cost.sql): a finished orphan stays.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS outbox_upgrade;
CREATE DATABASE outbox_upgrade;
\c outbox_upgrade
SET client_min_messages = warning;
CREATE EXTENSION twilio_outbox VERSION '0.1';
RESET client_min_messages;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default) VALUES
	('main', 'AC0123456789abcdef0123456789abcdef', 'https://api.twilio.com', true),
	('odd', 'AC0123456789abcdef0123456789abcdef', 'http://0.0.0.0:8080', false);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate, burst) VALUES
	('main', '+15005550006', 'long_code', true, 'NaN', 'NaN'),
	('main', '+15005550007', 'long_code', false, 1e10, 1e10),
	('main', '+15005550008', 'long_code', false, 'Infinity', 5);
SELECT twilio_enqueue('+14155550100', 'queued, account deleted') AS queued_orphan \gset
SELECT twilio_enqueue('+14155550101', 'sent, account deleted') AS sent_orphan \gset
SELECT twilio_enqueue('+14155550102', 'fine') AS fine \gset
UPDATE twilio_outbox.messages SET state = 'sent', finished_at = now() WHERE id = :sent_orphan;
-- 0.1 had no key from messages to accounts
UPDATE twilio_outbox.messages SET account = 'gone' WHERE id IN (:queued_orphan, :sent_orphan);

ALTER EXTENSION twilio_outbox UPDATE TO '0.2';

SELECT id = :queued_orphan AS queued_orphan, state, last_error_message FROM twilio_outbox.messages ORDER BY id;
SELECT message_id = :queued_orphan AS queued_orphan, account, reason, error_message FROM twilio_outbox.dead_letters;
SELECT from_number, rate, burst FROM twilio_outbox.senders ORDER BY from_number;
SELECT conname, convalidated FROM pg_constraint
WHERE conname IN ('accounts_base_url_form', 'accounts_base_url_http_only_to_loopback',
	'senders_rate_range', 'senders_burst_range')
ORDER BY conname;
-- messages has no foreign key (48_enqueue_cost.sql): the finished orphan stays as it is
SELECT count(*) AS message_keys FROM pg_constraint
WHERE conrelid = 'twilio_outbox.messages'::regclass AND contype = 'f';
-- New rows are checked all the same.
\set VERBOSITY terse
UPDATE twilio_outbox.accounts SET base_url = 'http://api.twilio.com' WHERE name = 'main';
\set VERBOSITY default
-- Once the rows are fixed, the hint's statement validates.
UPDATE twilio_outbox.accounts SET base_url = 'http://127.0.0.1:8080' WHERE name = 'odd';
ALTER TABLE twilio_outbox.accounts VALIDATE CONSTRAINT accounts_base_url_http_only_to_loopback;
SELECT conname, convalidated FROM pg_constraint
WHERE conname IN ('accounts_base_url_http_only_to_loopback') ORDER BY conname;

