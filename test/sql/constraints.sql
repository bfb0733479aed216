-- What the tables refuse, by constraints named after what they check (a
-- user sees only "violates check constraint <name>"): accounts' base URLs
-- and SIDs, senders' rates and bursts, and messages of accounts that do
-- not exist.  And that renaming an account carries its messages along.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_constraints
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('c_acct', 'AC0123456789abcdef0123456789abcdef');
INSERT INTO twilio_outbox.senders (account, from_number, kind)
	VALUES ('c_acct', '+15005550100', 'long_code');
RESET client_min_messages;

-- base_url: scheme://host[:port], no user, path, query or trailing slash;
-- plain http only to loopback.
SELECT try(format('UPDATE twilio_outbox.accounts SET base_url = %L WHERE name = %L', u, 'c_acct')) AS result, u AS base_url
FROM (VALUES
	('https://api.twilio.com'),
	('https://api.sydney.au1.twilio.com'),
	('https://api.dublin.ie1.twilio.com:443'),
	('http://127.0.0.1:8080'),
	('http://localhost:65535'),
	('http://[::1]:8080'),
	('https://127.0.0.1'),
	('https://api.twilio.com/'),
	('https://api.twilio.com/2010-04-01'),
	('https://api.twilio.com?x=1'),
	('https://api.twilio.com:0'),
	('https://api.twilio.com:65536'),
	('https://api.twilio.com:99999'),
	('https://-api.twilio.com'),
	('https://api..twilio.com'),
	('https://' || repeat('a', 64) || '.twilio.com'),
	('https://' || repeat('abcdefgh.', 30) || 'com'),
	('ftp://api.twilio.com'),
	('api.twilio.com'),
	('http://api.twilio.com'),
	('http://0.0.0.0:8080'),
	('http://localhost@evil.example'),
	('http://127.0.0.1.evil.example'),
	('http://localhost.evil.example'),
	('http://127.0.0.1:8080@evil.example'),
	('https://user:pw@api.twilio.com')
) AS t(u);

-- SIDs: the constraint name says what a SID looks like.
SELECT try($$INSERT INTO twilio_outbox.accounts (name, account_sid) VALUES ('c_x', 'ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx')$$);
SELECT try($$INSERT INTO twilio_outbox.account_credentials (account, api_key_sid, secret) VALUES ('c_acct', 'SKxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', 's')$$);
SELECT try($$UPDATE twilio_outbox.accounts SET max_concurrency = 0 WHERE name = 'c_acct'$$);

-- Rates (segments per second): 0.001 to 10000, or 'Infinity'; bursts 1 to 10000; never NaN.
SELECT try(format('UPDATE twilio_outbox.senders SET rate = %s WHERE from_number = %L', v, '+15005550100')) AS result, v AS rate
FROM (VALUES ('NULL'), ('1'), ('0.001'), ('10000'), ($$'Infinity'$$), ($$'NaN'$$), ('0'), ('-1'),
	('0.0009'), ('10001'), ('1e10'), ($$'-Infinity'$$)) AS t(v);
SELECT try(format('UPDATE twilio_outbox.senders SET burst = %s WHERE from_number = %L', v, '+15005550100')) AS result, v AS burst
FROM (VALUES ('NULL'), ('1'), ('10000'), ($$'NaN'$$), ($$'Infinity'$$), ('1e10'), ('0.5'), ('10000.5')) AS t(v);

-- A message needs its account to exist ...
SELECT try($$INSERT INTO twilio_outbox.messages (account, sender_id, to_number, encoding, segments, idempotency_key, next_attempt_at)
	VALUES ('no_such_account', 1, '+14155559901', 'GSM-7', 1, gen_random_uuid(), now())$$);
-- ... a plain rename of an account in use is refused (keys do not cascade:
-- a sharding extension could not cascade its distribution column) ...
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, encoding, segments, idempotency_key, next_attempt_at)
SELECT 'c_acct', s.id, '+14155559901', 'GSM-7', 1, gen_random_uuid(), now()
FROM twilio_outbox.senders s WHERE s.from_number = '+15005550100';
SELECT try($$UPDATE twilio_outbox.accounts SET name = 'c_renamed' WHERE name = 'c_acct'$$);
-- ... rename_account() carries its senders and messages (queued or not) along
SELECT twilio_outbox.rename_account('c_acct', 'c_renamed');
SELECT try($$SELECT twilio_outbox.rename_account('c_acct', 'c_other')$$);
SELECT try($$SELECT twilio_outbox.rename_account('c_renamed', NULL)$$);
SELECT name FROM twilio_outbox.accounts WHERE name IN ('c_acct', 'c_renamed');
SELECT m.account, m.state, s.account AS sender_account
FROM twilio_outbox.messages m JOIN twilio_outbox.senders s ON s.id = m.sender_id
WHERE m.to_number = '+14155559901';
-- An account still in use (senders, messages) cannot be deleted.
SELECT try($$DELETE FROM twilio_outbox.accounts WHERE name = 'c_renamed'$$);
-- A sender that waiting messages name: delete_sender() refuses; a plain
-- DELETE is allowed (the dispatcher dead-letters them as sender_missing).
SELECT try(format('SELECT twilio_outbox.delete_sender(%s)', id)) FROM twilio_outbox.senders WHERE from_number = '+15005550100';
SELECT try($$SELECT twilio_outbox.delete_sender(-1)$$);

-- The constraints, by name, as a user sees them.
SELECT conrelid::regclass AS "table", conname, convalidated
FROM pg_constraint
WHERE connamespace = 'twilio_outbox'::regnamespace
  AND conname IN ('accounts_base_url_form', 'accounts_base_url_http_only_to_loopback',
	'accounts_account_sid_ac_plus_32_hex_digits', 'account_credentials_api_key_sid_sk_plus_32_hex_digits',
	'accounts_max_concurrency_range', 'senders_rate_range', 'senders_burst_range',
	'messages_account_fkey', 'dead_letters_reason_known')
ORDER BY 1, 2;

-- Clean up for the suites that follow.
DELETE FROM twilio_outbox.messages WHERE account = 'c_renamed';
DELETE FROM twilio_outbox.senders WHERE account = 'c_renamed';
DELETE FROM twilio_outbox.accounts WHERE name = 'c_renamed';
