# Upgrading in place: a database created at 0.1, with messages in every
# state, is updated with ALTER EXTENSION twilio_outbox UPDATE.  Before the
# update the new library's dispatcher refuses to work on the old schema
# (and says why); after it, the schema is the one a fresh install gets, and
# the old messages are claimed, sent and purged like new ones.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('upgrade', undef, version => '0.1');
is(OutboxTest::query($node,
		"SELECT extversion FROM pg_extension WHERE extname = 'twilio_outbox'"),
	'0.1', 'the extension starts at 0.1');
OutboxTest::add_account($node, $standin);

# Messages as 0.1 left them: two queued, one sent and one dead long ago
# (with their attempts and dead letter), one canceled.
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+14155550201', 'queued before the upgrade');
	SELECT twilio_enqueue('+14155550202', 'also queued', dedupe_key => 'k-202');
	SELECT twilio_enqueue('+14155550203', 'sent long ago');
	SELECT twilio_enqueue('+14155550204', 'dead long ago');
	SELECT twilio_enqueue('+14155550205', 'canceled');
	UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1,
		twilio_sid = 'SM' || md5('203'), sent_at = now() - interval '40 days',
		finished_at = now() - interval '40 days'
	WHERE to_number = '+14155550203';
	UPDATE twilio_outbox.messages SET state = 'dead', attempts = 1, failures = 1,
		finished_at = now() - interval '40 days'
	WHERE to_number = '+14155550204';
	INSERT INTO twilio_outbox.attempts (message_id, attempt, account, started_at, http_status, outcome)
		SELECT id, 1, account, now() - interval '40 days', CASE to_number WHEN '+14155550203' THEN 201 ELSE 400 END,
			CASE to_number WHEN '+14155550203' THEN 'sent' ELSE 'dead' END::twilio_outbox.attempt_outcome
		FROM twilio_outbox.messages WHERE to_number IN ('+14155550203', '+14155550204');
	INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number, reason, http_status, attempts, dead_at)
		SELECT id, account, to_number, 'rejected', 400, 1, now() - interval '40 days'
		FROM twilio_outbox.messages WHERE to_number = '+14155550204';
	SELECT twilio_outbox.cancel(id) FROM twilio_outbox.messages WHERE to_number = '+14155550205';
});

# The library is already the new one: its dispatcher must not touch a 0.1
# schema, and must say what to do.
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($node->wait_for_log(qr/database "postgres" has twilio_outbox 0\.1 installed.*ALTER EXTENSION twilio_outbox UPDATE/s),
	'the dispatcher names the installed version and the command to run');
# The 0.1 view, answered by the new library through the 0.1 entry point.
is(OutboxTest::query($node, q{SELECT pid IS NOT NULL
		AND last_error LIKE '%has twilio_outbox 0.1 installed%ALTER EXTENSION twilio_outbox UPDATE%'
	FROM twilio_outbox.worker}),
	't', 'the 0.1 worker view shows the running dispatcher and its refusal as last_error');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.messages WHERE state = 'queued'}),
	'2', 'nothing was claimed from the 0.1 schema');
is(scalar @{ $standin->requests }, 0, 'nothing was sent from the 0.1 schema');

OutboxTest::query($node, 'ALTER EXTENSION twilio_outbox UPDATE');
is(OutboxTest::query($node,
		"SELECT extversion FROM pg_extension WHERE extname = 'twilio_outbox'"),
	'0.2', 'ALTER EXTENSION UPDATE reaches 0.2');

# The updated catalog is the one a fresh install gets: tables, columns,
# constraints, indexes, triggers, types, functions, views, grants, comments.
my $catalog = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'twilio_outbox'),
members AS (
	SELECT classid, objid FROM pg_depend, ext
	WHERE refclassid = 'pg_extension'::regclass AND refobjid = ext.oid AND deptype = 'e'
)
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
	SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '')
		|| ' ' || coalesce(obj_description(c.oid, 'pg_class'), '') AS line
	FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	UNION ALL
	SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		|| ' ' || a.attnotnull || ' ' || a.attidentity::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
		|| ' ' || coalesce(a.attacl::text, '') || ' ' || coalesce(col_description(c.oid, a.attnum), '')
	FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
	UNION ALL
	SELECT 'con ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
		|| ' ' || k.convalidated
	FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	JOIN pg_constraint k ON k.conrelid = c.oid
	UNION ALL
	SELECT 'idx ' || pg_get_indexdef(i.indexrelid)
	FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
	UNION ALL
	SELECT 'trg ' || pg_get_triggerdef(t.oid)
	FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid
	WHERE NOT t.tgisinternal
	UNION ALL
	SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
	FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	WHERE c.relkind = 'v'
	UNION ALL
	SELECT 'fn ' || p.oid::regprocedure::text || ' ' || pg_get_function_result(p.oid)
		|| ' ' || p.prokind::text || ' ' || p.prosecdef || ' ' || p.provolatile::text || ' ' || p.proisstrict
		|| ' ' || coalesce(p.proconfig::text, '') || ' ' || coalesce(p.proacl::text, '')
		|| ' ' || md5(p.prosrc) || ' ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
	FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
	UNION ALL
	SELECT 'type ' || t.typname || ' ' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
		FROM pg_enum e WHERE e.enumtypid = t.oid), '')
	FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	UNION ALL
	SELECT 'schema ' || n.nspname || ' ' || coalesce(n.nspacl::text, '')
	FROM members m JOIN pg_namespace n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid
) lines};
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION twilio_outbox');
my $updated = $node->safe_psql('postgres', $catalog);
my $fresh = $node->safe_psql('fresh', $catalog);
ok(length($fresh) > 1000, 'the catalog description is not empty');
is($updated, $fresh, 'the updated catalog equals a fresh install');
$node->safe_psql('postgres', 'DROP DATABASE fresh');

# The old messages go on as if nothing happened.
OutboxTest::wait_until($node,
	q{SELECT count(*) = 2 FROM twilio_outbox.messages
	  WHERE to_number IN ('+14155550201', '+14155550202') AND state = 'sent'},
	'messages queued under 0.1 are sent after the update');
is(scalar @{ $standin->requests }, 2, 'each was sent once');
is(OutboxTest::query($node, q{SELECT twilio_enqueue('+14155550202', 'also queued', dedupe_key => 'k-202')
		= (SELECT id FROM twilio_outbox.messages WHERE dedupe_key = 'k-202')}),
	't', 'a dedupe key from 0.1 still holds');
is(OutboxTest::query($node, q{SELECT twilio_outbox.requeue(ARRAY(
		SELECT id FROM twilio_outbox.messages WHERE to_number = '+14155550204'))}),
	'1', 'a dead letter from 0.1 can be re-queued');
OutboxTest::wait_until($node,
	q{SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550204'},
	'the re-queued message is sent');
OutboxTest::query($node, q{UPDATE twilio_outbox.messages SET finished_at = now() - interval '40 days'
	WHERE to_number = '+14155550205'});
OutboxTest::query($node, q{CALL twilio_outbox.purge('30 days')});
is(OutboxTest::query($node, q{SELECT string_agg(to_number, ',' ORDER BY to_number)
		FROM twilio_outbox.messages}),
	'+14155550201,+14155550202,+14155550204',
	'purge removes the finished messages older than its cutoff, and only those');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.attempt_rows a
		WHERE NOT EXISTS (SELECT 1 FROM twilio_outbox.messages m WHERE m.id = a.message_id)}),
	'0', 'their attempts went with them');

$node->stop;
$standin->stop;
done_testing();
