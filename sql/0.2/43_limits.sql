/*
 * Staying under Twilio's limits (issue 12).
 *
 * A Messaging Service sends from a pool of numbers, and Twilio queues at
 * most about four hours of the pool's throughput before it refuses more
 * (429, or error 30001 queue overflow).  A Messaging Service sender without
 * a rate was unlimited in 0.1; from 0.2 its rate is the sum of its pool's
 * throughput when its pool is described: one segment per second per long
 * code, three per toll-free number, a hundred per short code (Twilio's
 * figures for US numbers, as in DESIGN.md: "Understanding Twilio Rate
 * Limits and Message Queues" and the Messaging Services pages of Twilio's
 * documentation).  An explicit rate still wins; a pool not described keeps
 * 0.1's behaviour (held only by the account's concurrency).
 *
 * Existing rows get NULL pool columns, which every new check allows, so
 * the checks are validated at once.
 */
ALTER TABLE twilio_outbox.senders
	ADD COLUMN pool_long_codes integer,
	ADD COLUMN pool_toll_free integer,
	ADD COLUMN pool_short_codes integer;
ALTER TABLE twilio_outbox.senders ADD CONSTRAINT senders_pool_range CHECK (
	COALESCE(pool_long_codes, 0) OPERATOR(pg_catalog.>=) 0 AND COALESCE(pool_long_codes, 0) OPERATOR(pg_catalog.<=) 10000 AND
	COALESCE(pool_toll_free, 0) OPERATOR(pg_catalog.>=) 0 AND COALESCE(pool_toll_free, 0) OPERATOR(pg_catalog.<=) 10000 AND
	COALESCE(pool_short_codes, 0) OPERATOR(pg_catalog.>=) 0 AND COALESCE(pool_short_codes, 0) OPERATOR(pg_catalog.<=) 10000);
/* the enum compared as text: the same script may add values to sender_kind */
ALTER TABLE twilio_outbox.senders ADD CONSTRAINT senders_pool_messaging_service CHECK (
	(pool_long_codes IS NULL AND pool_toll_free IS NULL AND pool_short_codes IS NULL)
	OR kind::text OPERATOR(pg_catalog.=) 'messaging_service');
COMMENT ON COLUMN twilio_outbox.senders.pool_long_codes IS 'Messaging Service: long codes in its pool (1 segment/s each); with the other pool columns, its rate when rate is NULL';
COMMENT ON COLUMN twilio_outbox.senders.pool_toll_free IS 'Messaging Service: toll-free numbers in its pool (3 segments/s each)';
COMMENT ON COLUMN twilio_outbox.senders.pool_short_codes IS 'Messaging Service: short codes in its pool (100 segments/s each)';

/*
 * A pool's throughput in segments per second, within what senders_rate_range
 * allows; NULL when the pool is not described (or empty).  The dispatcher
 * reads senders' rates through this function, so the view below and the
 * buckets agree.
 */
CREATE FUNCTION twilio_outbox.pool_rate(long_codes integer, toll_free integer, short_codes integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE
	WHEN COALESCE(long_codes, 0) OPERATOR(pg_catalog.+) COALESCE(toll_free, 0)
		OPERATOR(pg_catalog.+) COALESCE(short_codes, 0) OPERATOR(pg_catalog.>) 0
	THEN LEAST(10000::numeric,
		/* OPERATOR() forms all bind alike, left to right: parenthesized */
		GREATEST(COALESCE(long_codes, 0), 0)::numeric
		OPERATOR(pg_catalog.+) (3::numeric OPERATOR(pg_catalog.*) GREATEST(COALESCE(toll_free, 0), 0)::numeric)
		OPERATOR(pg_catalog.+) (100::numeric OPERATOR(pg_catalog.*) GREATEST(COALESCE(short_codes, 0), 0)::numeric))
END;
COMMENT ON FUNCTION twilio_outbox.pool_rate(integer, integer, integer) IS 'A Messaging Service pool''s throughput in segments per second: 1 per long code, 3 per toll-free number, 100 per short code, at most 10000; NULL when no number is given';

/* Each sender's effective rate and where it comes from. */
CREATE VIEW twilio_outbox.sender_rates AS
SELECT s.id, s.account, s.from_number, s.messaging_service_sid, s.kind,
	s.rate AS configured_rate,
	s.pool_long_codes, s.pool_toll_free, s.pool_short_codes,
	CASE
		WHEN s.rate IS NOT NULL AND s.rate OPERATOR(pg_catalog.<>) 'NaN' THEN s.rate
		WHEN s.kind::text OPERATOR(pg_catalog.=) 'messaging_service' THEN
			COALESCE(twilio_outbox.pool_rate(s.pool_long_codes, s.pool_toll_free, s.pool_short_codes), 'Infinity')
		WHEN s.kind::text OPERATOR(pg_catalog.=) ANY (ARRAY['long_code', 'alphanumeric']) THEN 1
		WHEN s.kind::text OPERATOR(pg_catalog.=) 'toll_free' THEN 3
		WHEN s.kind::text OPERATOR(pg_catalog.=) 'short_code' THEN 100
		WHEN s.kind::text OPERATOR(pg_catalog.=) 'whatsapp' THEN 80
		ELSE 'Infinity'
	END AS effective_rate,
	CASE
		WHEN s.rate IS NOT NULL AND s.rate OPERATOR(pg_catalog.<>) 'NaN' THEN 'configured'
		WHEN s.kind::text OPERATOR(pg_catalog.<>) 'messaging_service' THEN 'kind'
		WHEN twilio_outbox.pool_rate(s.pool_long_codes, s.pool_toll_free, s.pool_short_codes) IS NOT NULL THEN 'pool'
		ELSE 'unlimited'
	END AS rate_source
FROM twilio_outbox.senders s;
COMMENT ON VIEW twilio_outbox.sender_rates IS 'Each sender''s rate in segments per second as the dispatcher applies it: configured (senders.rate), from its kind, from its Messaging Service pool, or unlimited (a Messaging Service whose pool is not described)';

/*
 * Twilio-Concurrent-Requests: Twilio's limit on an account's requests in
 * flight at once, over every client of the account.  When it is set, the
 * dispatcher keeps what Twilio reports at or under 80% of it; when NULL,
 * the header is only recorded, as in 0.1.  See
 * outbox_concurrency_reported() in src/ratelimit.c.
 */
ALTER TABLE twilio_outbox.accounts
	ADD COLUMN twilio_concurrency_limit integer;
ALTER TABLE twilio_outbox.accounts ADD CONSTRAINT accounts_twilio_concurrency_limit_range CHECK (
	twilio_concurrency_limit OPERATOR(pg_catalog.>=) 1 AND twilio_concurrency_limit OPERATOR(pg_catalog.<=) 10000);
COMMENT ON COLUMN twilio_outbox.accounts.twilio_concurrency_limit IS 'Twilio''s concurrency limit for the account (all its clients together); the dispatcher slows down when Twilio-Concurrent-Requests reports more than 80% of it (NULL: the header is only recorded)';
