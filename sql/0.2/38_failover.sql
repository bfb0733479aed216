/*
 * Failover (issue 11): the WAL timeline the outbox last ran on.  The row
 * replicates to every physical standby with the rest of the database; a
 * standby promoted since runs on a higher timeline (so does a server
 * restored to a point in time), and its first dispatcher finds out at
 * start: with asynchronous replication the last claims and outcomes of
 * the old primary may be missing here, so it marks the messages whose
 * fate they would have told for reconciliation (src/failover.c) before it
 * claims anything, and records the new timeline.
 *
 * One row.  promotion_*: a promotion being handled (the marking goes in
 * bounded batches, each its own transaction, so a crash in the middle
 * resumes with the same cutoff and window); NULL when none is.
 */
CREATE TABLE twilio_outbox.failover (
	singleton		boolean PRIMARY KEY DEFAULT true
		CONSTRAINT failover_one_row CHECK (singleton),
	timeline		integer
		CONSTRAINT failover_timeline_positive CHECK (timeline OPERATOR(pg_catalog.>=) 1),
	recorded_at		timestamptz,
	promotion_timeline integer
		CONSTRAINT failover_promotion_timeline_positive CHECK (promotion_timeline OPERATOR(pg_catalog.>=) 1),
	promotion_cutoff timestamptz,
	promotion_window interval,
	promotion_marked bigint NOT NULL DEFAULT 0,
	promotions		integer NOT NULL DEFAULT 0,
	last_promotion_at timestamptz,
	last_promotion_marked bigint,
	CONSTRAINT failover_promotion_complete CHECK (
		(promotion_timeline IS NULL) OPERATOR(pg_catalog.=) (promotion_cutoff IS NULL)
		AND (promotion_timeline IS NULL) OPERATOR(pg_catalog.=) (promotion_window IS NULL))
);
INSERT INTO twilio_outbox.failover DEFAULT VALUES;
COMMENT ON TABLE twilio_outbox.failover IS 'The WAL timeline the dispatcher last ran on, and the promotions it handled: after one, messages whose claim or outcome may not have replicated are reconciled with Twilio before they are sent again';
COMMENT ON COLUMN twilio_outbox.failover.timeline IS 'the WAL timeline of the server the dispatcher last ran on (NULL: it never ran)';
COMMENT ON COLUMN twilio_outbox.failover.promotion_timeline IS 'a promotion being handled: the new timeline (NULL when none is)';
COMMENT ON COLUMN twilio_outbox.failover.promotion_cutoff IS 'a promotion being handled: rows changed after this were changed on this server, and are not marked';
COMMENT ON COLUMN twilio_outbox.failover.promotion_window IS 'a promotion being handled: twilio_outbox.failover_window when it began';
COMMENT ON COLUMN twilio_outbox.failover.promotion_marked IS 'a promotion being handled: messages marked for reconciliation so far';
COMMENT ON COLUMN twilio_outbox.failover.last_promotion_marked IS 'messages the last handled promotion marked for reconciliation';

REVOKE ALL ON twilio_outbox.failover FROM PUBLIC;
GRANT SELECT ON twilio_outbox.failover TO twilio_outbox_monitor;
