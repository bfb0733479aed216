-- The schema's shape and the security model, as pgTAP assertions.
BEGIN;
SELECT plan(47);

SELECT has_schema('twilio_outbox');
SELECT tables_are('twilio_outbox', ARRAY['accounts', 'account_credentials', 'senders',
	'messages', 'attempts', 'dead_letters', 'error_policy', 'suppressed_recipients',
	'status_events', 'account_roles', 'debugger_events', 'campaigns', 'failover',
	'number_time_zones', 'recipient_counts']);
SELECT has_function('public', 'twilio_enqueue', 'twilio_enqueue is in the extension''s schema');
SELECT is_definer('public', 'twilio_enqueue',
	ARRAY['text', 'text', 'text', 'text', 'text[]', 'text', 'timestamp with time zone',
		  'timestamp with time zone', 'text', 'text', 'text', 'jsonb', 'jsonb',
		  'text', 'text', 'text', 'text', 'jsonb'],
	'twilio_enqueue runs as its owner');
-- search_path: every function and procedure of the extension written in SQL
-- or PL/pgSQL pins it, and so does every SECURITY DEFINER object.  The C
-- functions run no SQL that a caller's path could redirect, with two
-- exceptions checked by name: twilio_enqueue (SECURITY DEFINER) pushes a
-- pg_catalog-only path in C for its queries, and purge, a procedure that
-- commits and so cannot carry a SET clause, runs nothing but calls of its
-- batch functions by qualified name (they pin it; the regress test
-- operations.sql runs purge under a hostile search_path).
SELECT is(ARRAY(
		SELECT p.oid::regprocedure::text FROM pg_proc p
		JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
		JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'twilio_outbox'
		WHERE p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('sql', 'plpgsql'))
		  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
		ORDER BY 1),
	ARRAY[]::text[],
	'every SQL and PL/pgSQL function and procedure of the extension pins its search_path');
SELECT is(ARRAY(
		SELECT p.oid::regprocedure::text FROM pg_proc p
		JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
		JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'twilio_outbox'
		WHERE p.prosecdef
		  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
		ORDER BY 1),
	ARRAY['twilio_enqueue(text,text,text,text,text[],text,timestamp with time zone,timestamp with time zone,text,text,text,jsonb,jsonb,text,text,text,text,jsonb)'],
	'every SECURITY DEFINER object pins its search_path but twilio_enqueue, which pins it in C');
SELECT is(ARRAY(
		SELECT p.oid::regprocedure::text FROM pg_proc p
		JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
		JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'twilio_outbox'
		WHERE p.prokind = 'p'
		  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
		ORDER BY 1),
	ARRAY['twilio_outbox.purge(interval,integer)'],
	'purge is the only procedure without a pinned search_path (it commits; it calls pinned functions only)');
SELECT is((SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
		   WHERE p.oid = 'twilio_outbox.purge(interval,integer)'::regprocedure),
	'c', 'purge is in C: no expression of its own for a caller''s operator to replace');

-- The claim path: a partial index on queued rows, per sender in due order.
SELECT has_index('twilio_outbox', 'messages', 'messages_due', ARRAY['account', 'sender_id', 'priority', 'next_attempt_at', 'id']);
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
		   WHERE indexrelid = 'twilio_outbox.messages_due'::regclass),
	'(state = ''queued''::twilio_outbox.message_state)',
	'messages_due holds queued rows only');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
		   WHERE indexrelid = 'twilio_outbox.messages_in_flight'::regclass),
	'(state = ''sending''::twilio_outbox.message_state)',
	'messages_in_flight holds rows in flight only');
SELECT index_is_unique('twilio_outbox', 'messages', 'messages_dedupe');

-- Lookups at Twilio (src/lookup.c): off by default, claimed per account
-- through partial indexes that hold only what can be due.
SELECT col_hasnt_default('twilio_outbox', 'accounts', 'poll_after', 'polling is off unless an account sets poll_after');
SELECT col_hasnt_default('twilio_outbox', 'accounts', 'twilio_retention', 'deletion at Twilio is off unless an account sets twilio_retention');
SELECT col_default_is('twilio_outbox', 'accounts', 'lookups_per_second', '5', 'five lookups per second by default');
SELECT has_index('twilio_outbox', 'messages', 'messages_poll_due', ARRAY['account', 'next_lookup_at', 'sent_at']);
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
		   WHERE indexrelid = 'twilio_outbox.messages_poll_due'::regclass),
	'((state = ''sent''::twilio_outbox.message_state) AND (twilio_sid IS NOT NULL))',
	'messages_poll_due holds sent rows with a SID only');
SELECT has_index('twilio_outbox', 'messages', 'messages_delete_due', ARRAY['account', 'finished_at']);
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
		   WHERE indexrelid = 'twilio_outbox.messages_delete_due'::regclass),
	'((state = ANY (ARRAY[''delivered''::twilio_outbox.message_state, ''undelivered''::twilio_outbox.message_state, ''failed''::twilio_outbox.message_state, ''canceled''::twilio_outbox.message_state])) AND (twilio_sid IS NOT NULL) AND (deleted_at_twilio IS NULL))',
	'messages_delete_due holds final rows with a SID not yet deleted at Twilio only');
SELECT ok(NOT has_function_privilege('twilio_outbox_webhook',
		'twilio_outbox.apply_status(text, text, text, text, integer, text, bigint, jsonb, text, boolean)', 'EXECUTE'),
	'the webhook role cannot apply a status without a signed callback');
SELECT enum_has_labels('twilio_outbox', 'message_state', ARRAY['queued', 'sending', 'sent',
	'delivered', 'undelivered', 'failed', 'ambiguous', 'dead', 'canceled']);

-- The error policy is seeded with the codes DESIGN.md names (30003 and 30008, delivery errors of status callbacks, since 0.2).
SELECT results_eq(
	$$SELECT code, action::text FROM twilio_outbox.error_policy
	  WHERE source = 'twilio' ORDER BY code$$,
	$$VALUES (20003, 'pause_account'), (20429, 'retry'), (21211, 'dead'), (21408, 'dead'),
	  (21602, 'dead'), (21604, 'dead'), (21606, 'dead'), (21610, 'suppress'),
	  (21612, 'dead'), (21614, 'dead'), (21617, 'dead'), (30003, 'dead'), (30004, 'dead'), (30005, 'dead'),
	  (30006, 'dead'), (30007, 'dead'), (30008, 'dead'), (30034, 'dead')$$,
	'Twilio codes and their actions');
SELECT results_eq(
	$$SELECT code, action::text FROM twilio_outbox.error_policy
	  WHERE source = 'http' ORDER BY code$$,
	$$VALUES (400, 'dead'), (401, 'pause_account'), (403, 'dead'), (404, 'dead'),
	  (429, 'retry'), (500, 'retry'), (502, 'retry'), (503, 'retry'), (504, 'retry')$$,
	'HTTP statuses and their actions');

-- Roles and what each may do.
SELECT has_role('twilio_outbox_enqueue');
SELECT has_role('twilio_outbox_monitor');
SELECT has_role('twilio_outbox_admin');
SELECT function_privs_are('public', 'twilio_enqueue',
	ARRAY['text', 'text', 'text', 'text', 'text[]', 'text', 'timestamp with time zone',
		  'timestamp with time zone', 'text', 'text', 'text', 'jsonb', 'jsonb',
		  'text', 'text', 'text', 'text', 'jsonb'],
	'twilio_outbox_enqueue', ARRAY['EXECUTE']);
SELECT schema_privs_are('twilio_outbox', 'twilio_outbox_enqueue', ARRAY[]::text[],
	'the enqueueing role cannot even look into the schema');
SELECT schema_privs_are('twilio_outbox', 'public', ARRAY[]::text[]);
SELECT table_privs_are('twilio_outbox', 'account_credentials', 'twilio_outbox_monitor',
	ARRAY[]::text[]);
SELECT table_privs_are('twilio_outbox', 'account_credentials', 'twilio_outbox_admin',
	ARRAY['INSERT', 'UPDATE', 'DELETE']);
SELECT any_column_privs_are('twilio_outbox', 'account_credentials', 'twilio_outbox_admin',
	ARRAY['SELECT', 'INSERT', 'UPDATE']);
SELECT column_privs_are('twilio_outbox', 'account_credentials', 'secret',
	'twilio_outbox_admin', ARRAY['INSERT', 'UPDATE'],
	'the admin role writes the secret but cannot read it');
SELECT column_privs_are('twilio_outbox', 'messages', 'body', 'twilio_outbox_monitor',
	ARRAY[]::text[], 'the monitoring role cannot read message bodies');
SELECT column_privs_are('twilio_outbox', 'messages', 'state', 'twilio_outbox_monitor',
	ARRAY['SELECT']);
SELECT table_privs_are('twilio_outbox', 'error_policy', 'twilio_outbox_monitor', ARRAY['SELECT']);
SELECT table_privs_are('twilio_outbox', 'error_policy', 'twilio_outbox_admin',
	ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']);
SELECT is_member_of('twilio_outbox_monitor', 'twilio_outbox_admin');
-- The metrics exporter's role: the metrics view, no table (0.2).
SELECT has_role('twilio_outbox_metrics');
SELECT is_member_of('twilio_outbox_metrics', 'twilio_outbox_monitor');
SELECT table_privs_are('twilio_outbox', 'metrics', 'twilio_outbox_metrics', ARRAY['SELECT']);
SELECT is(ARRAY(SELECT c.relname::text FROM pg_class c
		   WHERE c.relnamespace = 'twilio_outbox'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
			 AND has_table_privilege('twilio_outbox_metrics', c.oid, 'SELECT')
			 AND NOT pg_has_role('twilio_outbox_metrics', 'twilio_outbox_monitor', 'USAGE')
		   ORDER BY 1),
	ARRAY['metrics'], 'the metrics role reads the metrics view and no other relation');
SELECT column_privs_are('twilio_outbox', 'messages', 'to_number', 'twilio_outbox_metrics',
	ARRAY[]::text[], 'the metrics role cannot read phone numbers');

-- Reconciliation (issue 11): its claim's index, its attempt outcomes, the backlog view.
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
		   WHERE indexrelid = 'twilio_outbox.messages_reconcile_due'::regclass),
	'((state = ''ambiguous''::twilio_outbox.message_state) AND (reconcile_at IS NOT NULL))',
	'messages_reconcile_due holds ambiguous rows to be looked up only');
SELECT enum_has_labels('twilio_outbox', 'attempt_outcome', ARRAY['sent', 'retry', 'dead',
	'suppressed', 'paused', 'rate_limited', 'held', 'lost', 'reconcile', 'found', 'not_found',
	'for_operator']);
SELECT table_privs_are('twilio_outbox', 'ambiguous_messages', 'twilio_outbox_monitor', ARRAY['SELECT'],
	'the monitor reads the ambiguous backlog');
SELECT table_privs_are('twilio_outbox', 'ambiguous_messages', 'twilio_outbox_enqueue', ARRAY[]::text[],
	'the application role does not');

SELECT * FROM finish();
ROLLBACK;
