/* priorities, traffic classes and campaigns (issue 12, claim side) */

/*
 * The traffic class of a message: 'transactional' (one-time codes, receipts:
 * the default, as every 0.1 message was) or 'marketing'.  Quiet hours
 * (42_guards.sql) hold marketing traffic; the definition is shared with that
 * piece word for word.
 */
ALTER TABLE twilio_outbox.messages ADD COLUMN traffic_class text NOT NULL DEFAULT 'transactional' CONSTRAINT messages_traffic_class_known CHECK (traffic_class IN ('transactional','marketing'));
COMMENT ON COLUMN twilio_outbox.messages.traffic_class IS 'transactional (the default) or marketing: marketing traffic waits out quiet hours';

/*
 * Priorities.  A message's priority is one of three levels, stored as a
 * small number so that the due index orders by it: 0 'high', 1 'normal'
 * (the default: every 0.1 message and every call without priority), 2
 * 'low'.  Within a sender the claim takes every due message of a level
 * before any of the next, oldest first within a level.  A constant default
 * adds the column without rewriting the table.
 */
ALTER TABLE twilio_outbox.messages ADD COLUMN priority smallint NOT NULL DEFAULT 1
	CONSTRAINT messages_priority_known CHECK (priority OPERATOR(pg_catalog.>=) 0 AND priority OPERATOR(pg_catalog.<=) 2);
COMMENT ON COLUMN twilio_outbox.messages.priority IS '0 high, 1 normal (the default), 2 low: within a sender, due messages are claimed by level first, then oldest first';

/*
 * The claim asks each sender for its due messages one priority level at a
 * time (account, sender, level, next_attempt_at <= now(), ordered by
 * next_attempt_at, id): three range scans of this index, each stopping at
 * the batch size, whatever waits at other levels or later.  Rebuilt here
 * (the upgrade's existing rows are all level 1).
 */
DROP INDEX twilio_outbox.messages_due;
CREATE INDEX messages_due ON twilio_outbox.messages (account, sender_id, priority, next_attempt_at, id)
	WHERE state OPERATOR(pg_catalog.=) 'queued';

/* Names of the levels, for views and documentation. */
CREATE FUNCTION twilio_outbox.priority_name(level smallint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT (ARRAY['high', 'normal', 'low'])[level OPERATOR(pg_catalog.+) 1]
$$;
COMMENT ON FUNCTION twilio_outbox.priority_name(smallint) IS 'The name of a priority level: 0 high, 1 normal, 2 low';
