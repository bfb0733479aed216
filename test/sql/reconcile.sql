-- Reconciliation of ambiguous sends (issue 11), what SQL sees of it: the
-- settings, the new attempt outcomes, a status callback adopting the SID
-- of an ambiguous message (also while a lookup holds it, never a SID
-- another message holds, never backwards), the operator functions
-- clearing the reconcile columns, the backlog view, stats and health.
-- The dispatcher's lookups are tested with the stand-in (test/t/025-028).
\set db outbox_reconcile
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default, status_callback_url)
	VALUES ('main', 'AC11111111111111111111111111111111', true, 'https://hooks.example.com/status');
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('main', 'auth-token');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550101', 'long_code', true);
RESET client_min_messages;

-- The settings: reconcile is the default; the grace and the skew margin.
SHOW twilio_outbox.on_ambiguous;
SHOW twilio_outbox.reconcile_grace;
SHOW twilio_outbox.reconcile_clock_skew;
SHOW twilio_outbox.health_reconcile_age;
-- (server-wide settings: ALTER SYSTEM checks the value, and refuses these)
ALTER SYSTEM SET twilio_outbox.on_ambiguous = 'maybe';
ALTER SYSTEM SET twilio_outbox.reconcile_clock_skew = 0;
ALTER SYSTEM SET twilio_outbox.reconcile_grace = '2h';
SELECT enumvals FROM pg_settings WHERE name = 'twilio_outbox.on_ambiguous';

-- The attempt outcomes reconciliation writes.
SELECT e.enumlabel FROM pg_enum e
WHERE e.enumtypid = 'twilio_outbox.attempt_outcome'::regtype ORDER BY e.enumsortorder;

CREATE FUNCTION sign(url text, body text) RETURNS text LANGUAGE sql
	AS $$ SELECT twilio_outbox.webhook_signature('auth-token', url, body) $$;
CREATE FUNCTION cb(id bigint, sid text, status text) RETURNS text LANGUAGE sql AS $$
	SELECT twilio_outbox.receive_status(u, b, sign(u, b))
	FROM (SELECT 'https://hooks.example.com/status?outbox_id=' || id AS u,
				 'AccountSid=AC11111111111111111111111111111111&From=%2B15005550101&MessageSid='
				 || sid || '&MessageStatus=' || status || '&To=%2B14155550100' AS b) x $$;
-- a message as the dispatcher leaves one after an ambiguous attempt
CREATE FUNCTION make_ambiguous(lookup_in interval) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	new_id bigint := twilio_enqueue(to_number => '+14155550100', body => 'hello');
BEGIN
	UPDATE twilio_outbox.messages m SET state = 'ambiguous', attempts = 1, failures = 1,
		ambiguous_attempts = 1, ambiguous_since = now() - interval '1 minute',
		reconcile_at = now() + lookup_in
	WHERE m.id = new_id;
	RETURN new_id;
END $$;

-- A callback carrying our outbox_id adopts the SID of an ambiguous message:
-- sent, reconcile columns cleared, an attempt row 'found'.
SELECT make_ambiguous('10 seconds') AS a1 \gset
SELECT cb(:a1, 'SM' || repeat('a', 32), 'sent') AS verdict;
SELECT state, twilio_sid = 'SM' || repeat('a', 32) AS sid_adopted, reconcile_at, reconcile_candidates
FROM twilio_outbox.messages WHERE id = :a1;
SELECT attempt, outcome, ambiguous, twilio_sid = 'SM' || repeat('a', 32) AS sid
FROM twilio_outbox.attempts WHERE message_id = :a1;
-- a later status moves it on, an earlier one never back
SELECT cb(:a1, 'SM' || repeat('a', 32), 'delivered') AS verdict;
SELECT cb(:a1, 'SM' || repeat('a', 32), 'queued') AS verdict;
SELECT state FROM twilio_outbox.messages WHERE id = :a1;

-- While a lookup holds it (reconcile_at moved into the future as a lease):
-- the callback wins, and the lookup's record will find it no longer ambiguous.
SELECT make_ambiguous('5 minutes') AS a2 \gset
UPDATE twilio_outbox.messages SET reconcile_lookups = reconcile_lookups + 1 WHERE id = :a2;
SELECT cb(:a2, 'SM' || repeat('b', 32), 'delivered') AS verdict;
SELECT state, reconcile_at IS NULL AS lookup_over FROM twilio_outbox.messages WHERE id = :a2;

-- Never a SID another message holds: the callback is for that one.
SELECT make_ambiguous('10 seconds') AS a3 \gset
SELECT cb(:a3, 'SM' || repeat('a', 32), 'read') AS verdict;
SELECT state, twilio_sid IS NULL AS no_sid FROM twilio_outbox.messages WHERE id = :a3;

-- Requeued after a lookup found nothing, then the late callback: sent.
UPDATE twilio_outbox.messages SET state = 'queued', reconcile_at = NULL,
	next_attempt_at = now() + interval '1 hour' WHERE id = :a3;
SELECT cb(:a3, 'SM' || repeat('c', 32), 'sent') AS verdict;
SELECT state, twilio_sid = 'SM' || repeat('c', 32) AS sid_adopted FROM twilio_outbox.messages WHERE id = :a3;

-- The backlog view: one waiting for a lookup, one for an operator.
SELECT make_ambiguous('10 seconds') AS a4 \gset
SELECT make_ambiguous('10 seconds') AS a5 \gset
UPDATE twilio_outbox.messages SET reconcile_at = NULL,
	reconcile_candidates = ARRAY['SM' || repeat('d', 32), 'SM' || repeat('e', 32)] WHERE id = :a5;
SELECT id = :a4 AS is_a4, next_step, reconcile_candidates, waiting >= interval '1 minute' AS waited
FROM twilio_outbox.ambiguous_messages ORDER BY id;

-- Health: the operator's check counts only what no lookup will settle;
-- 'reconcile' warns once a message waits longer than health_reconcile_age.
SELECT check_name, status, value FROM twilio_outbox.health
WHERE check_name IN ('ambiguous', 'reconcile') ORDER BY check_name;
UPDATE twilio_outbox.messages SET ambiguous_since = now() - interval '11 minutes' WHERE id = :a4;
SELECT check_name, status, value, hint IS NOT NULL AS hinted FROM twilio_outbox.health
WHERE check_name = 'reconcile';
UPDATE twilio_outbox.messages SET ambiguous_since = now() - interval '21 minutes' WHERE id = :a4;
SELECT check_name, status FROM twilio_outbox.health WHERE check_name = 'reconcile';

-- resolve_ambiguous and requeue clear the reconcile columns.
SELECT twilio_outbox.resolve_ambiguous(:a5, 'SM' || repeat('d', 32));
SELECT state, reconcile_at, reconcile_candidates FROM twilio_outbox.messages WHERE id = :a5;
SELECT twilio_outbox.requeue(message_ids => ARRAY[:a4]::bigint[]) AS requeued;
SELECT state, reconcile_at, reconcile_candidates FROM twilio_outbox.messages WHERE id = :a4;
SELECT try(format('SELECT twilio_outbox.resolve_ambiguous(%s)', :a4)) AS not_ambiguous;

-- stats: the reconciliation columns, added at the end; counted from attempts.
INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, outcome)
SELECT :a4, 1, 'main', now(), o::twilio_outbox.attempt_outcome
FROM unnest(ARRAY['not_found', 'for_operator', 'for_operator']) o;
SELECT "window", reconciled_found, reconciled_resent, left_for_operator
FROM twilio_outbox.stats ORDER BY 1;
SELECT attname FROM pg_attribute WHERE attrelid = 'twilio_outbox.stats'::regclass AND attnum > 0
ORDER BY attnum DESC LIMIT 4;

-- The monitor reads the backlog view and the columns; the application role does not.
SET ROLE twilio_outbox_monitor;
SELECT count(*) AS monitor_sees FROM twilio_outbox.ambiguous_messages;
SELECT count(reconcile_candidates) AS monitor_columns FROM twilio_outbox.messages;
RESET ROLE;
SET ROLE twilio_outbox_enqueue;
SELECT try('SELECT count(*) FROM twilio_outbox.ambiguous_messages') AS app_refused;
RESET ROLE;

-- A callback naming no outbox_id (the message has a status_callback of its
-- own) that came before anyone knew the SID is kept unmatched; when an
-- operator resolves the message with that SID, it is applied then.
SELECT make_ambiguous('1 hour') AS a7 \gset
SELECT twilio_outbox.receive_status(u, b, sign(u, b)) AS early_verdict
FROM (SELECT 'https://hooks.example.com/own-callback' AS u,
	'AccountSid=AC11111111111111111111111111111111&From=%2B15005550101&MessageSid=SM' || repeat('e', 32)
	|| '&MessageStatus=delivered&To=%2B14155550100' AS b) x;
SET ROLE twilio_outbox_admin;
SELECT twilio_outbox.resolve_ambiguous(:a7, 'SM' || repeat('e', 32));
RESET ROLE;
SELECT state, twilio_status FROM twilio_outbox.messages WHERE id = :a7;
SELECT message_id = :a7 AS matched, message_status, verdict
FROM twilio_outbox.status_events WHERE message_sid = 'SM' || repeat('e', 32);
-- the admin role may call the helper, which applies only signed, unmatched events
SELECT has_function_privilege('twilio_outbox_admin', 'twilio_outbox.apply_early_statuses_of(bigint)', 'EXECUTE') AS admin_may,
	has_function_privilege('twilio_outbox_enqueue', 'twilio_outbox.apply_early_statuses_of(bigint)', 'EXECUTE') AS app_may;
