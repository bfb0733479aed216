/* requests other than create: polling and deletion at Twilio (src/lookup.c) */

/*
 * Whether at is inside the daily window [window_start, window_end), in UTC;
 * a window whose end is before its start wraps past midnight; no window
 * (NULL) is the whole day.  The dispatcher's deletion claim asks this.
 */
CREATE FUNCTION twilio_outbox.in_delete_window(window_start time, window_end time, at timestamptz)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT $1 IS NULL OR $2 IS NULL OR CASE
		WHEN $1 OPERATOR(pg_catalog.<) $2
			THEN t OPERATOR(pg_catalog.>=) $1 AND t OPERATOR(pg_catalog.<) $2
		ELSE t OPERATOR(pg_catalog.>=) $1 OR t OPERATOR(pg_catalog.<) $2 END
	FROM (SELECT ($3 AT TIME ZONE 'UTC')::time AS t) n
$$;
COMMENT ON FUNCTION twilio_outbox.in_delete_window(time, time, timestamptz) IS 'Whether a time falls in a daily deletion window given in UTC (end before start: it wraps past midnight; NULL: always)';

/*
 * Per account with polling or retention: what waits for a lookup, what
 * polling gave up on (still sent after max_polls lookups, or unknown to
 * Twilio: an operator's health concern), what waits for deletion at
 * Twilio, and what was deleted.  Counted through the claims' partial
 * indexes.
 */
CREATE VIEW twilio_outbox.lookups AS
SELECT a.name AS account, a.poll_after, a.max_polls, a.twilio_retention,
	a.delete_window_start, a.delete_window_end, a.lookups_per_second,
	(SELECT pg_catalog.count(*) FROM twilio_outbox.messages m
	 WHERE m.account OPERATOR(pg_catalog.=) a.name AND m.state OPERATOR(pg_catalog.=) 'sent'
	   AND m.twilio_sid IS NOT NULL AND a.poll_after IS NOT NULL
	   AND (m.next_lookup_at OPERATOR(pg_catalog.<=) pg_catalog.now()
			OR (m.next_lookup_at IS NULL AND m.sent_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) a.poll_after)))) AS polls_due,
	(SELECT pg_catalog.count(*) FROM twilio_outbox.messages m
	 WHERE m.account OPERATOR(pg_catalog.=) a.name AND m.state OPERATOR(pg_catalog.=) 'sent'
	   AND m.twilio_sid IS NOT NULL AND m.next_lookup_at OPERATOR(pg_catalog.=) 'infinity') AS polls_given_up,
	(SELECT pg_catalog.count(*) FROM twilio_outbox.messages m
	 WHERE m.account OPERATOR(pg_catalog.=) a.name
	   AND m.state OPERATOR(pg_catalog.=) ANY (ARRAY['delivered', 'undelivered', 'failed', 'canceled']::twilio_outbox.message_state[])
	   AND m.twilio_sid IS NOT NULL AND m.deleted_at_twilio IS NULL AND a.twilio_retention IS NOT NULL
	   AND m.finished_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) a.twilio_retention)) AS deletions_due,
	twilio_outbox.in_delete_window(a.delete_window_start, a.delete_window_end, pg_catalog.now()) AS in_delete_window
FROM twilio_outbox.accounts a
WHERE a.poll_after IS NOT NULL OR a.twilio_retention IS NOT NULL;
COMMENT ON VIEW twilio_outbox.lookups IS 'Per account with polling or retention at Twilio: polls due, polls given up (still sent after max_polls lookups, or unknown to Twilio), deletions due';
