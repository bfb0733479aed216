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

/*
 * What reconciliation writes in twilio_outbox.attempts (src/reconcile.c,
 * apply_status): 'reconcile' an ambiguous attempt whose message is looked
 * up at Twilio before anything else; 'found' the message was found there
 * (by a lookup or a status callback carrying our outbox_id) and its SID
 * adopted; 'not_found' a lookup found none and the message was queued
 * again with the same idempotency key; 'for_operator' it was left for an
 * operator (several candidates, or lookups that did not settle it).
 * Values added to an enum cannot be used in the transaction that adds
 * them, which is every install or upgrade script: nothing in these
 * scripts names them as enum values; views compare outcome::text.
 */
ALTER TYPE twilio_outbox.attempt_outcome ADD VALUE IF NOT EXISTS 'reconcile';
ALTER TYPE twilio_outbox.attempt_outcome ADD VALUE IF NOT EXISTS 'found';
ALTER TYPE twilio_outbox.attempt_outcome ADD VALUE IF NOT EXISTS 'not_found';
ALTER TYPE twilio_outbox.attempt_outcome ADD VALUE IF NOT EXISTS 'for_operator';

/*
 * The ambiguous backlog: every message in state ambiguous, whether the
 * dispatcher will look it up (and when) or an operator must decide, with
 * the candidates reconciliation found.  Through messages_ambiguous.
 */
CREATE VIEW twilio_outbox.ambiguous_messages AS
SELECT m.id, m.account, m.sender_id, m.attempts, m.failures, m.ambiguous_attempts,
	m.ambiguous_since,
	pg_catalog.date_trunc('second', pg_catalog.now() OPERATOR(pg_catalog.-)
		coalesce(m.ambiguous_since, m.updated_at)) AS waiting,
	CASE WHEN m.reconcile_at IS NULL THEN 'operator'
		 WHEN m.reconcile_at OPERATOR(pg_catalog.<=) pg_catalog.now() THEN 'lookup due'
		 ELSE 'lookup scheduled' END AS next_step,
	m.reconcile_at, m.reconcile_lookups, m.reconcile_candidates,
	m.last_error_message
FROM twilio_outbox.messages m
WHERE m.state OPERATOR(pg_catalog.=) 'ambiguous';
COMMENT ON VIEW twilio_outbox.ambiguous_messages IS 'Messages Twilio may have created without our knowing: when the dispatcher looks each up next (reconcile_at), or operator when it waits for a human (resolve_ambiguous or requeue), with the candidate SIDs reconciliation found';
