/* priorities, traffic classes and campaigns (issue 12, claim side) */

/*
 * The traffic class of a message: 'transactional' (one-time codes, receipts:
 * the default, as every 0.1 message was) or 'marketing'.  Quiet hours
 * (42_guards.sql) hold marketing traffic; the definition is shared with that
 * piece word for word.
 */
ALTER TABLE twilio_outbox.messages ADD COLUMN traffic_class text NOT NULL DEFAULT 'transactional' CONSTRAINT messages_traffic_class_known CHECK (traffic_class IN ('transactional','marketing'));
COMMENT ON COLUMN twilio_outbox.messages.traffic_class IS 'transactional (the default) or marketing: marketing traffic waits out quiet hours';
