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

-- Polling and retention at Twilio (src/lookup.c): off (NULL) by default;
-- poll_after 1 s to 30 days, max_polls 1 to 100, twilio_retention 1 s to 10
-- years, a deletion window with both ends or none and not empty,
-- lookups_per_second 0.01 to 100 and never NaN.
SELECT poll_after, max_polls, twilio_retention, delete_window_start, delete_window_end, lookups_per_second
FROM twilio_outbox.accounts WHERE name = 'c_acct';
SELECT try(format('UPDATE twilio_outbox.accounts SET %s WHERE name = %L', v, 'c_acct')) AS result, v AS setting
FROM (VALUES ($$poll_after = '1 second'$$), ($$poll_after = '30 days'$$), ($$poll_after = NULL$$),
	($$poll_after = '0.5 seconds'$$), ($$poll_after = '-1 minute'$$), ($$poll_after = '31 days'$$),
	('max_polls = 1'), ('max_polls = 100'), ('max_polls = 0'), ('max_polls = 101'), ('max_polls = NULL'),
	($$twilio_retention = '30 days'$$), ($$twilio_retention = '10 years'$$), ($$twilio_retention = NULL$$),
	($$twilio_retention = '0'$$), ($$twilio_retention = '11 years'$$),
	($$delete_window_start = '01:00', delete_window_end = '05:00'$$),
	($$delete_window_start = '23:00', delete_window_end = '02:00'$$),
	($$delete_window_start = NULL, delete_window_end = NULL$$),
	($$delete_window_start = '01:00'$$), ($$delete_window_end = '05:00'$$),
	($$delete_window_start = '03:00', delete_window_end = '03:00'$$),
	('lookups_per_second = 0.01'), ('lookups_per_second = 100'), ('lookups_per_second = 0'),
	('lookups_per_second = 101'), ($$lookups_per_second = 'NaN'$$), ('lookups_per_second = NULL')
) AS t(v);
-- The window is in UTC; an end before the start wraps past midnight.
SELECT s, e, at, twilio_outbox.in_delete_window(s::time, e::time, at::timestamptz) AS inside
FROM (VALUES ('01:00', '05:00', '2026-01-01 00:59:59+00'), ('01:00', '05:00', '2026-01-01 01:00:00+00'),
	('01:00', '05:00', '2026-01-01 04:59:59+00'), ('01:00', '05:00', '2026-01-01 05:00:00+00'),
	('01:00', '05:00', '2026-01-01 03:00:00+02'), ('23:00', '02:00', '2026-01-01 23:30:00+00'),
	('23:00', '02:00', '2026-01-02 01:30:00+00'), ('23:00', '02:00', '2026-01-01 12:00:00+00'),
	(NULL, NULL, '2026-01-01 12:00:00+00')) AS t(s, e, at);

-- The monitoring role reads the lookups view (and the window function it calls).
UPDATE twilio_outbox.accounts SET poll_after = '1 minute' WHERE name = 'c_acct';
SET ROLE twilio_outbox_monitor;
SELECT account, poll_after, polls_due, polls_given_up, deletions_due, in_delete_window
FROM twilio_outbox.lookups WHERE account = 'c_acct';
RESET ROLE;
UPDATE twilio_outbox.accounts SET poll_after = NULL WHERE name = 'c_acct';

-- No foreign key from messages to accounts (48_enqueue_cost.sql): a row
-- written around twilio_enqueue() may name any account (the dispatcher
-- dead-letters it as account_missing; TAP 038); twilio_enqueue() refuses
-- an unknown account (regress enqueue) ...
SELECT try($$INSERT INTO twilio_outbox.messages (account, sender_id, to_number, encoding, segments, idempotency_key, next_attempt_at)
	VALUES ('no_such_account', 1, '+14155559901', 'GSM-7', 1, gen_random_uuid(), now())$$);
DELETE FROM twilio_outbox.messages WHERE account = 'no_such_account';
-- ... a plain rename of an account in use is refused, for its senders'
-- key (keys do not cascade: a sharding extension could not cascade its
-- distribution column) ...
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
-- An account that still has senders cannot be deleted.
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
	'messages_account_fkey', 'dead_letters_reason_known', 'accounts_poll_after_1s_to_30d',
	'accounts_max_polls_1_to_100', 'accounts_twilio_retention_1s_to_10y',
	'accounts_delete_window_both_or_neither_and_not_empty',
	'accounts_lookups_per_second_0_01_to_100', 'status_events_source_known')
ORDER BY 1, 2;

-- Clean up for the suites that follow.
DELETE FROM twilio_outbox.messages WHERE account = 'c_renamed';
DELETE FROM twilio_outbox.senders WHERE account = 'c_renamed';
DELETE FROM twilio_outbox.accounts WHERE name = 'c_renamed';
