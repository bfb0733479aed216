-- Staying under Twilio's limits (issue 12): what the new columns refuse
-- (a pool only on a Messaging Service, its sizes in range; Twilio's
-- concurrency limit in range), the rate a pool gives, and where each
-- sender's rate comes from (sender_rates).
\set db outbox_limits
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('l_acct', 'AC0123456789abcdef0123456789abcdef');
INSERT INTO twilio_outbox.senders (account, from_number, kind)
	VALUES ('l_acct', '+15005550100', 'long_code');
RESET client_min_messages;

-- the pool's throughput: 1/s per long code, 3/s toll-free, 100/s short code, at most 10000
SELECT twilio_outbox.pool_rate(NULL, NULL, NULL) AS undescribed,
	twilio_outbox.pool_rate(0, 0, 0) AS empty,
	twilio_outbox.pool_rate(5, NULL, NULL) AS five_long,
	twilio_outbox.pool_rate(2, 3, NULL) AS mixed,
	twilio_outbox.pool_rate(10, 2, 1) AS with_short,
	twilio_outbox.pool_rate(10000, 10000, 10000) AS clamped;

-- a pool only on a Messaging Service
SELECT try($$INSERT INTO twilio_outbox.senders (account, from_number, kind, pool_long_codes)
	VALUES ('l_acct', '+15005550101', 'long_code', 3)$$);
SELECT try($$UPDATE twilio_outbox.senders SET pool_short_codes = 1 WHERE from_number = '+15005550100'$$);
-- sizes in range
SELECT try($$INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind, pool_long_codes)
	VALUES ('l_acct', 'MG0123456789abcdef0123456789abcdef', 'messaging_service', -1)$$);
SELECT try($$INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind, pool_toll_free)
	VALUES ('l_acct', 'MG0123456789abcdef0123456789abcdef', 'messaging_service', 10001)$$);
SELECT try($$INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind, pool_long_codes, pool_toll_free)
	VALUES ('l_acct', 'MG0123456789abcdef0123456789abcdef', 'messaging_service', 20, 2)$$);
SELECT try($$INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind)
	VALUES ('l_acct', 'MG00000000000000000000000000000000', 'messaging_service')$$);
SELECT try($$INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind, rate, pool_short_codes)
	VALUES ('l_acct', 'MG11111111111111111111111111111111', 'messaging_service', 7, 2)$$);

-- each sender's rate and its source: kind, pool, unlimited (no pool), configured
SELECT coalesce(from_number, messaging_service_sid) AS sender, kind, configured_rate,
	pool_long_codes, pool_toll_free, pool_short_codes, effective_rate, rate_source
FROM twilio_outbox.sender_rates ORDER BY id;

-- the pool is editable, and the rate follows it
UPDATE twilio_outbox.senders SET pool_short_codes = 1
	WHERE messaging_service_sid = 'MG0123456789abcdef0123456789abcdef';
SELECT effective_rate, rate_source FROM twilio_outbox.sender_rates
	WHERE messaging_service_sid = 'MG0123456789abcdef0123456789abcdef';

-- Twilio's concurrency limit for the account: 1 to 10000, or NULL
SELECT try($$UPDATE twilio_outbox.accounts SET twilio_concurrency_limit = 0$$);
SELECT try($$UPDATE twilio_outbox.accounts SET twilio_concurrency_limit = 10001$$);
SELECT try($$UPDATE twilio_outbox.accounts SET twilio_concurrency_limit = 100$$);
SELECT name, max_concurrency, twilio_concurrency_limit FROM twilio_outbox.accounts;

-- who may read sender_rates: the monitor and the admin roles
SELECT has_table_privilege('twilio_outbox_monitor', 'twilio_outbox.sender_rates', 'SELECT') AS monitor,
	has_table_privilege('twilio_outbox_admin', 'twilio_outbox.sender_rates', 'SELECT') AS admin,
	has_table_privilege('public', 'twilio_outbox.sender_rates', 'SELECT') AS public;
