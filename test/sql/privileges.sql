-- Roles: the enqueueing role enqueues and nothing else of note; the
-- monitoring role reads, never a secret or a message body; the admin role
-- writes credentials but cannot read them back.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_privileges
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true) ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true) ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.account_credentials (account, secret)
	VALUES ('main', 'super-secret-token') ON CONFLICT DO NOTHING;
DROP ROLE IF EXISTS app_user;
DROP ROLE IF EXISTS ops_viewer;
DROP ROLE IF EXISTS ops_admin;
RESET client_min_messages;
CREATE ROLE app_user LOGIN IN ROLE twilio_outbox_enqueue;
CREATE ROLE ops_viewer LOGIN IN ROLE twilio_outbox_monitor;
CREATE ROLE ops_admin LOGIN IN ROLE twilio_outbox_admin;

-- The application role.
SET ROLE app_user;
SELECT try(sql) AS app_user, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'from the app')$$),
	($$SELECT secret FROM twilio_outbox.account_credentials$$),
	($$SELECT * FROM twilio_outbox.account_credentials$$),
	($$SELECT body FROM twilio_outbox.messages$$),
	($$SELECT count(*) FROM twilio_outbox.accounts$$),
	($$UPDATE twilio_outbox.error_policy SET action = 'retry' WHERE code = 21211$$),
	($$INSERT INTO twilio_outbox.messages (account, sender_id, to_number, encoding, segments, idempotency_key, next_attempt_at) VALUES ('main', 1, '+1415', 'GSM-7', 1, gen_random_uuid(), now())$$),
	($$DELETE FROM twilio_outbox.suppressed_recipients$$),
	($$SELECT twilio_outbox.start_worker()$$),
	($$SELECT twilio_outbox.pause_account('main')$$)
) AS t(sql);
RESET ROLE;
SELECT enqueued_by FROM twilio_outbox.messages WHERE body = 'from the app';

-- The monitoring role.
SET ROLE ops_viewer;
SELECT try(sql) AS ops_viewer, sql FROM (VALUES
	($$SELECT count(*) FROM twilio_outbox.attempts$$),
	($$SELECT count(*) FROM twilio_outbox.dead_letters$$),
	($$SELECT name, account_sid, paused_until FROM twilio_outbox.accounts$$),
	($$SELECT id, state, to_number, attempts, last_error_message FROM twilio_outbox.messages$$),
	($$SELECT body FROM twilio_outbox.messages$$),
	($$SELECT secret FROM twilio_outbox.account_credentials$$),
	($$SELECT account FROM twilio_outbox.account_credentials$$),
	($$UPDATE twilio_outbox.error_policy SET action = 'retry' WHERE code = 21211$$),
	($$SELECT twilio_enqueue('+14155552671', 'x')$$),
	($$SELECT twilio_outbox.worker_pid()$$)
) AS t(sql);
RESET ROLE;

-- The admin role.
SET ROLE ops_admin;
SELECT try(sql) AS ops_admin, sql FROM (VALUES
	($$UPDATE twilio_outbox.account_credentials SET secret = 'rotated-token' WHERE account = 'main'$$),
	($$SELECT account, api_key_sid, updated_at FROM twilio_outbox.account_credentials$$),
	($$SELECT secret FROM twilio_outbox.account_credentials$$),
	($$UPDATE twilio_outbox.error_policy SET action = 'dead' WHERE source = 'twilio' AND code = 30007$$),
	($$SELECT twilio_outbox.pause_account('main', now() + interval '1 minute', 'maintenance')$$),
	($$SELECT twilio_outbox.resume_account('main')$$),
	($$SELECT twilio_outbox.resume_account('nope')$$)
) AS t(sql);
RESET ROLE;
SELECT secret FROM twilio_outbox.account_credentials WHERE account = 'main';

-- Credentials: exactly one way to give the secret, names checked.
SELECT try(sql) AS credentials, sql FROM (VALUES
	($$UPDATE twilio_outbox.account_credentials SET secret_env = 'TWILIO_TOKEN'$$),
	($$UPDATE twilio_outbox.account_credentials SET secret = NULL, secret_env = 'PATH'$$),
	($$UPDATE twilio_outbox.account_credentials SET secret = NULL, secret_file = '../../etc/passwd'$$),
	($$UPDATE twilio_outbox.account_credentials SET secret = NULL, secret_env = 'TWILIO_TOKEN'$$)
) AS t(sql);

-- account_roles: an account with rows there is only for those roles and
-- their members; a role of another account learns nothing about it (not
-- its senders, suppressions or dedupe keys: 42501 comes first), and an
-- account without rows stays open to every enqueueing role.
SET client_min_messages = warning;
DROP ROLE IF EXISTS app_b, app_b_member, app_gone;
RESET client_min_messages;
CREATE ROLE app_b LOGIN IN ROLE twilio_outbox_enqueue;
CREATE ROLE app_b_member LOGIN IN ROLE app_b;
CREATE ROLE app_gone;
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('acct_b', 'AC0000000000000000000000000000000b'), ('acct_gone', 'AC0000000000000000000000000000000c');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('acct_b', '+15005550010', 'long_code', true), ('acct_gone', '+15005550011', 'long_code', true);
INSERT INTO twilio_outbox.suppressed_recipients (account, to_number) VALUES ('acct_b', '+14155550999');
INSERT INTO twilio_outbox.account_roles (account, role) VALUES ('acct_b', 'app_b'), ('acct_gone', 'app_gone');
DROP ROLE app_gone;
SET ROLE app_b;
SELECT twilio_enqueue('+14155552671', 'b secret', account => 'acct_b', dedupe_key => 'b-1') > 0 AS b_enqueued;
RESET ROLE;
SET ROLE app_user;
SELECT try(sql) AS app_user_on_acct_b, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'b secret', account => 'acct_b', dedupe_key => 'b-1')$$),
	($$SELECT twilio_enqueue('+14155552671', 'other', account => 'acct_b', dedupe_key => 'b-1')$$),
	($$SELECT twilio_enqueue('+14155550999', 'x', account => 'acct_b')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'acct_b', from_number => '+15005550099')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'acct_b', from_number => '+15005550010')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'acct_gone')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'no_such_account')$$),
	($$SELECT twilio_enqueue('+14155552671', 'open account', dedupe_key => 'b-1')$$),
	($$SELECT count(*) FROM twilio_outbox.account_roles$$)
) AS t(sql);
RESET ROLE;
SET ROLE app_b_member;
SELECT try(sql) AS member_of_app_b, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'b secret', account => 'acct_b', dedupe_key => 'b-1')$$),
	($$SELECT twilio_enqueue('+14155550999', 'x', account => 'acct_b')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'acct_gone')$$)
) AS t(sql);
RESET ROLE;
-- What went in, and by whom: nothing of app_user in acct_b.
SELECT account, body, enqueued_by FROM twilio_outbox.messages
WHERE account IN ('acct_b', 'acct_gone') OR body = 'open account' ORDER BY id;
SET ROLE ops_viewer;
SELECT account, role FROM twilio_outbox.account_roles WHERE account = 'acct_b' ORDER BY 1, 2;
RESET ROLE;
SET ROLE ops_admin;
SELECT try($$DELETE FROM twilio_outbox.account_roles WHERE account = 'acct_gone'$$) AS admin_maintains_roles;
RESET ROLE;

-- No table or function of the extension is open to PUBLIC.
SELECT c.relname, c.relacl::text LIKE '%=%/%' AND c.relacl::text ~ '(^|,|\{)=' AS public_has_rights
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'twilio_outbox' AND c.relkind IN ('r', 'S', 'v')
ORDER BY 1;
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute,
	p.prosecdef AS security_definer, p.proconfig
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'twilio_outbox'
ORDER BY 1;

-- A caller's search_path cannot lend twilio_enqueue, which runs as its
-- owner, an operator or a type of the caller's: with a schema that shadows
-- = and text first in the path, enqueueing works and checks as usual.
CREATE SCHEMA evil;
CREATE FUNCTION evil.always(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always);
CREATE DOMAIN evil.text AS pg_catalog.text CHECK (false);
SET ROLE app_user;
SET search_path = evil, pg_catalog, public;
SELECT try($$SELECT twilio_enqueue('+14155552671', 'hijack?', account => 'nope')$$) AS unknown_account,
	try($$SELECT twilio_enqueue('+14155552671', 'not hijacked')$$) AS enqueued;
-- twilio_enqueue pins its own lookups (src/compat.h: an override path on
-- 15, a GUC nest level on 17 and 18) and hands the caller's path back,
-- after an error too.
SHOW search_path;
RESET search_path;
RESET ROLE;
SELECT count(*) AS rows_from_hostile_path FROM twilio_outbox.messages WHERE body = 'not hijacked';
DROP SCHEMA evil CASCADE;

DELETE FROM twilio_outbox.account_roles;
DROP OWNED BY app_user, ops_viewer, ops_admin, app_b, app_b_member;
DROP ROLE app_user, ops_viewer, ops_admin, app_b, app_b_member;
