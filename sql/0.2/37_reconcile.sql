/*
 * Reconciliation (issue 11): an ambiguous message is looked up at Twilio
 * before it is sent again.  The dispatcher's reconcile claim reads
 * messages_reconcile_due per account (account = $1, O(batch)).
 */
ALTER TABLE twilio_outbox.messages
	ADD COLUMN ambiguous_since timestamptz,
	ADD COLUMN reconcile_at timestamptz,
	ADD COLUMN reconcile_lookups integer NOT NULL DEFAULT 0,
	ADD COLUMN reconcile_candidates text[];
COMMENT ON COLUMN twilio_outbox.messages.ambiguous_since IS 'when the earliest attempt that may have created the message at Twilio without our knowing started';
COMMENT ON COLUMN twilio_outbox.messages.reconcile_at IS 'state ambiguous: when the dispatcher looks the message up at Twilio next (also the lease of a lookup in flight); NULL: it waits for an operator';
COMMENT ON COLUMN twilio_outbox.messages.reconcile_lookups IS 'lookups at Twilio made to reconcile this message';
COMMENT ON COLUMN twilio_outbox.messages.reconcile_candidates IS 'the Twilio SIDs that matched when more than one did (left for an operator)';

CREATE INDEX messages_reconcile_due ON twilio_outbox.messages (account, reconcile_at)
	WHERE state OPERATOR(pg_catalog.=) 'ambiguous' AND reconcile_at IS NOT NULL;
