-- Abuse guards: countries allowed by calling code, most messages per
-- recipient per hour and per day (TW002, TW003), and the anomaly check.
\set db outbox_guards
\i test/sql/include/fresh_database.sql
SET timezone = 'UTC';

INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true),
	       ('other', 'ACfedcba9876543210fedcba9876543210', false);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default) VALUES
	('main', '+15005550006', 'long_code', true),
	('main', 'whatsapp:+15005550007', 'whatsapp', false),
	('other', '+15005550009', 'long_code', true);

-- Calling codes: the form is checked.
SELECT c, twilio_outbox.calling_code(c) AS code FROM unnest(ARRAY['+14155550100',
	'+447700900123', '+353861234567', '+79161234567', 'whatsapp:+2348031234567',
	'+201001234567', '+212612345678', '+861012345678', 'alice']) AS c;
SELECT try($$UPDATE twilio_outbox.accounts SET allowed_country_codes = '{01}'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET allowed_country_codes = '{1,abc}'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET allowed_country_codes = '{1,NULL}'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET allowed_country_codes = '{{1},{44}}'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET allowed_country_codes = '{1234}'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET max_per_recipient_hour = 0$$);
SELECT try($$UPDATE twilio_outbox.accounts SET max_per_recipient_day = -1$$);

-- Countries: only +1 and +44 for main; other is unrestricted (NULL).
UPDATE twilio_outbox.accounts SET allowed_country_codes = '{1,44}' WHERE name = 'main';
SELECT try($$SELECT twilio_enqueue('+14155550100', 'us')$$) AS us,
	try($$SELECT twilio_enqueue('+447700900123', 'uk')$$) AS uk,
	try($$SELECT twilio_enqueue('whatsapp:+447700900124', 'uk', from_number => 'whatsapp:+15005550007')$$) AS uk_whatsapp;
SELECT try($$SELECT twilio_enqueue('+33612345678', 'fr')$$);
SELECT try($$SELECT twilio_enqueue('whatsapp:+33612345678', 'fr', from_number => 'whatsapp:+15005550007')$$);
-- 4 is not 44: a prefix of the code is not the code.
SELECT try($$SELECT twilio_enqueue('+4312345678', 'at')$$);
SELECT try($$SELECT twilio_enqueue('+33612345678', 'fr', account => 'other')$$) AS other_account;
-- The error in full.
\set VERBOSITY default
SELECT twilio_enqueue('+33612345678', 'fr');
\set VERBOSITY default
-- An empty list allows no country.
UPDATE twilio_outbox.accounts SET allowed_country_codes = '{}' WHERE name = 'main';
SELECT try($$SELECT twilio_enqueue('+14155550100', 'us')$$);
UPDATE twilio_outbox.accounts SET allowed_country_codes = NULL WHERE name = 'main';

-- No per-recipient limit: no counting at all.
SELECT count(*) AS counts FROM twilio_outbox.recipient_counts;

-- At most 3 per recipient per hour.
UPDATE twilio_outbox.accounts SET max_per_recipient_hour = 3 WHERE name = 'main';
SELECT twilio_enqueue('+14155550200', 'one') > 0 AS one,
	twilio_enqueue('+14155550200', 'two') > 0 AS two,
	twilio_enqueue('+14155550200', 'three') > 0 AS three;
SELECT try($$SELECT twilio_enqueue('+14155550200', 'four')$$);
\set VERBOSITY default
SELECT twilio_enqueue('+14155550200', 'four');
\set VERBOSITY default
-- The refused one left no count; others are not held back.
SELECT account, to_number, hour = date_trunc('hour', now()) AS this_hour, n
FROM twilio_outbox.recipient_counts ORDER BY account, to_number;
SELECT try($$SELECT twilio_enqueue('+14155550201', 'another recipient')$$) AS another,
	try($$SELECT twilio_enqueue('+14155550200', 'another account', account => 'other')$$) AS other_account;
-- A rolled-back enqueue does not count; a dedupe key seen before neither.
UPDATE twilio_outbox.accounts SET max_per_recipient_hour = 5 WHERE name = 'main';
BEGIN;
SELECT twilio_enqueue('+14155550200', 'rolled back') > 0 AS enqueued;
ROLLBACK;
SELECT twilio_enqueue('+14155550200', 'four', dedupe_key => 'k4') AS k4 \gset
SELECT twilio_enqueue('+14155550200', 'four', dedupe_key => 'k4') = :k4 AS same_message;
SELECT n FROM twilio_outbox.recipient_counts WHERE account = 'main' AND to_number = '+14155550200';
SELECT count(*) AS messages_to_200 FROM twilio_outbox.messages WHERE account = 'main' AND to_number = '+14155550200';

-- Per day: the last 24 clock hours.  Counts from earlier hours (written
-- here by hand) add up; those older than a day are dropped as it goes.
UPDATE twilio_outbox.accounts SET max_per_recipient_hour = NULL, max_per_recipient_day = 6 WHERE name = 'main';
INSERT INTO twilio_outbox.recipient_counts VALUES
	('main', '+14155550300', date_trunc('hour', now()) - interval '3 hours', 2),
	('main', '+14155550300', date_trunc('hour', now()) - interval '23 hours', 2),
	('main', '+14155550300', date_trunc('hour', now()) - interval '24 hours', 50),
	('main', '+14155550399', date_trunc('hour', now()) - interval '30 hours', 7);
SELECT twilio_enqueue('+14155550300', 'five') > 0 AS five,
	twilio_enqueue('+14155550300', 'six') > 0 AS six;
SELECT try($$SELECT twilio_enqueue('+14155550300', 'seven')$$);
SELECT to_number, date_trunc('hour', now()) - hour AS hours_ago, n FROM twilio_outbox.recipient_counts
WHERE to_number IN ('+14155550300', '+14155550399')
ORDER BY to_number, hour;
-- The rest goes with purge_recipient_counts().
SELECT twilio_outbox.purge_recipient_counts() AS purged;
SELECT count(*) AS left_for_399 FROM twilio_outbox.recipient_counts WHERE to_number = '+14155550399';
-- Deleting the account deletes its counts.
UPDATE twilio_outbox.accounts SET max_per_recipient_day = NULL;

-- The anomaly check: nothing unusual yet.
SELECT * FROM twilio_outbox.anomalies();
SELECT check_name, status, value FROM twilio_outbox.health WHERE check_name = 'anomaly';
-- A burst: 120 messages to +44 numbers in one transaction, 25 of them to
-- different numbers of one 1,000-number block, with no history: the rate,
-- the country and the block all stand out.
SELECT count(twilio_enqueue('+447' || lpad((i * 1237)::text, 9, '0'), 'code ' || i)) AS burst
FROM generate_series(1, 95) AS i;
SELECT count(twilio_enqueue('+447911123' || lpad(i::text, 3, '0'), 'code ' || i)) AS block
FROM generate_series(1, 25) AS i;
SELECT * FROM twilio_outbox.anomalies();
SELECT check_name, status, value, threshold, hint FROM twilio_outbox.health WHERE check_name = 'anomaly' \gx
-- With a history (the same hour of the 7 days before: 1,260 messages to
-- +44, a norm of 15 per 5 minutes), 120 is no longer 10 times the norm.
INSERT INTO twilio_outbox.messages (account, sender_id, to_number, body, encoding, segments,
	idempotency_key, next_attempt_at, created_at)
SELECT 'main', (SELECT id FROM twilio_outbox.senders WHERE from_number = '+15005550006'),
	'+447700' || lpad(i::text, 6, '0'), 'old', 'GSM-7', 1, gen_random_uuid(),
	now() - make_interval(days => 1 + i % 7),
	now() - make_interval(days => 1 + i % 7) - make_interval(mins => i % 50 - 25)
FROM generate_series(1, 1260) AS i;
SELECT * FROM twilio_outbox.anomalies();
