# The manual, followed as a user on an existing server would: pg_cron keeps
# its jobs in database postgres, the application has a database of its own
# (appdb), the auth token reaches the server only through its environment
# (as Debian's /etc/postgresql/15/main/environment passes it), and the
# dispatcher is started by the documented supervisor, not by hand.  Then the
# stuck states the README promises to show: accounts the dispatcher cannot
# use, a hold for maintenance, a stopped dispatcher's row.
#
# Deviations from the README, for a test: the account's base URL is the
# local Twilio stand-in (so twilio_outbox.allow_insecure_http is on), and
# the server listens on a Unix socket only.
#
# pg_cron 1.4 runs jobs on the minute: this test waits up to twice 150 s.
use strict;
use warnings;

use FindBin;
use IPC::Run;
use Time::HiRes qw(sleep time);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $SID   = $OutboxTest::ACCOUNT_SID;
my $TOKEN = 'manual-setup-token-not-a-secret';

# Poll a boolean query in $db once a second for up to $secs seconds.
sub wait_for
{
	my ($node, $db, $sql, $secs) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		return 1 if $node->safe_psql($db, $sql) eq 't';
		sleep 1;
	}
	return 0;
}

# Run $sql in $db, expecting an error: returns (sqlstate, full stderr).
sub sql_error
{
	my ($node, $db, $sql, @opts) = @_;
	my ($ret, $out, $err) = $node->psql($db, $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose', @opts ]);
	my ($state) = ($err // '') =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($ret == 0 ? 'no error' : $state // "unparsed: $err", $err // '');
}

my $standin = TwilioStandIn->start;

# ---------- Install: postgresql.conf, restart, CREATE EXTENSION ----------

my $node = PostgreSQL::Test::Cluster->new('manual');
$node->init(@OutboxTest::INITDB);
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'pg_cron,twilio_outbox'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
twilio_outbox.allow_insecure_http = on
});
{
	# Only the server gets the token, at its start (Debian: the cluster's
	# environment file, read by pg_ctlcluster at start).
	local $ENV{TWILIO_AUTH_TOKEN} = $TOKEN;
	$node->start;
}
ok(!defined $ENV{TWILIO_AUTH_TOKEN}, 'the token is in the server\'s environment only');

$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');
$node->safe_psql('postgres', 'CREATE DATABASE appdb');
$node->safe_psql('appdb', 'CREATE EXTENSION twilio_outbox');

# ---------- Quick start, in appdb ----------

my $base = $standin->base_url;
$node->safe_psql('appdb', qq{
	CREATE ROLE ops LOGIN;
	GRANT twilio_outbox_admin TO ops;
	CREATE ROLE app LOGIN;
	GRANT twilio_outbox_enqueue TO app;
});
# As the admin role, not a superuser.
$node->safe_psql('appdb', qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
		VALUES ('main', '$SID', '$base', true);
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('main', 'TWILIO_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
		VALUES ('main', '+15005550006', 'long_code', true);
	INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind)
		VALUES ('main', 'MG' || repeat('0123456789abcdef', 2), 'messaging_service');
	INSERT INTO twilio_outbox.senders (account, from_number, kind)
		VALUES ('main', 'whatsapp:+15005550006', 'whatsapp');
}, extra_params => [ '-U', 'ops' ]);

# schedule_supervisor() in appdb cannot reach pg_cron's jobs: the refusal
# names the database and the statement to run there.
my ($state, $err) = sql_error($node, 'appdb', 'SELECT twilio_outbox.schedule_supervisor()',
	'-U', 'ops');
is($state, '42704', 'schedule_supervisor() in appdb: pg_cron is not here (undefined_object)');
like($err, qr/^HINT:.*jobs in database "postgres".*cron\.schedule_in_database\('twilio_outbox_supervisor_appdb'/m,
	'the hint names pg_cron\'s database and the statement to run there');

# The documented call: the statement from appdb, run in postgres.
#   psql -d appdb -XAtc 'SELECT twilio_outbox.schedule_supervisor_sql()' | psql -d postgres -X
my ($out, $perr) = ('', '');
my $ok = IPC::Run::run(
	[ 'psql', '-XAt', '-U', 'ops', '-d', $node->connstr('appdb'),
		'-c', 'SELECT twilio_outbox.schedule_supervisor_sql()' ],
	'|', [ 'psql', '-X', '-d', $node->connstr('postgres') ],
	'>', \$out, '2>', \$perr);
ok($ok, 'the documented pipeline schedules the supervisor') or diag($perr);
like($out, qr/^\s*schedule_in_database\s*\n-+\n\s*\d+\s*\n/, 'pg_cron answered with a job id')
  or diag($out);
is($node->safe_psql('postgres', q{
		SELECT count(*), min(schedule), min(command), min(database)
		FROM cron.job WHERE jobname = 'twilio_outbox_supervisor_appdb'}),
	'1|* * * * *|SELECT twilio_outbox.start_worker(supervisor => true)|appdb',
	'one job, every minute, start_worker(supervisor => true) in appdb');

# The application enqueues; nobody starts the dispatcher by hand.
my $id = $node->safe_psql('appdb',
	q{SELECT twilio_enqueue(to_number => '+14155550140', body => 'Order 1001 confirmed')},
	extra_params => [ '-U', 'app' ]);
like($id, qr/^\d+$/, 'the application role enqueues');
is($node->safe_psql('appdb', 'SELECT running, pid IS NULL FROM twilio_outbox.worker'), 'f|t',
	'no dispatcher yet: one worker row, running false');

# ---------- the supervisor starts it; the message goes out ----------

my $t0 = time;
ok(wait_for($node, 'appdb', 'SELECT running FROM twilio_outbox.worker', 150),
	'the pg_cron job started the dispatcher of appdb')
  or diag($node->safe_psql('postgres',
	'SELECT status, return_message FROM cron.job_run_details ORDER BY runid'));
note(sprintf('after %.0f s', time - $t0));
ok(wait_for($node, 'appdb',
		"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id", 30),
	'the message is sent');
my $reqs = $standin->requests(to => '+14155550140');
is(scalar @$reqs, 1, 'one request reached Twilio');
is($reqs->[0]{auth_password}, $TOKEN, 'with the token from the server\'s environment');
is($node->safe_psql('postgres', q{
		SELECT d.status FROM cron.job_run_details d JOIN cron.job j USING (jobid)
		WHERE j.jobname = 'twilio_outbox_supervisor_appdb' ORDER BY d.runid LIMIT 1}),
	'succeeded', 'cron.job_run_details: the job\'s run succeeded (background worker, no TCP login)');
is($node->safe_psql('appdb', q{
		SELECT running, library_version = extension_version, extension_version,
			supervisor_seen_at IS NOT NULL, held_until IS NULL
		FROM twilio_outbox.worker}),
	't|t|0.2|t|t', 'worker: running the library of the installed version, supervised, not held');
is($node->safe_psql('appdb', q{
		SELECT string_agg(check_name || '=' || status, ',' ORDER BY check_name)
		FROM twilio_outbox.health WHERE status <> 'ok'}),
	'', 'health: every check ok');

# ---------- accounts the dispatcher cannot use ----------

$node->safe_psql('appdb', qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url)
		VALUES ('nosecret', '$SID', '$base'), ('faraway', '$SID', 'https://example.com');
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('nosecret', 'TWILIO_OTHER_TOKEN'), ('faraway', 'TWILIO_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
		VALUES ('nosecret', '+15005550007', 'long_code', true),
		       ('faraway', '+15005550008', 'long_code', true);
}, extra_params => [ '-U', 'ops' ]);
my $stuck = $node->safe_psql('appdb',
	q{SELECT twilio_enqueue('+14155550141', 'stuck', account => 'nosecret')});
ok(wait_for($node, 'appdb',
		q{SELECT count(*) = 2 FROM twilio_outbox.worker_accounts WHERE problem IS NOT NULL}, 30),
	'worker_accounts shows both unusable accounts');
my %problem = map { split /\|/, $_, 2 } split /\n/, $node->safe_psql('appdb',
	q{SELECT account, problem FROM twilio_outbox.worker_accounts WHERE problem IS NOT NULL});
like($problem{nosecret}, qr/TWILIO_OTHER_TOKEN/, 'nosecret: the missing variable is named');
like($problem{faraway}, qr/host "example.com" is not in twilio_outbox.allowed_hosts/,
	'faraway: a host credentials may not go to');
is($node->safe_psql('appdb', q{
		SELECT status, value, hint LIKE '%nosecret (%' AND hint LIKE '%faraway (%'
			AND hint LIKE '%restart%'
		FROM twilio_outbox.health WHERE check_name = 'accounts_unusable'}),
	'critical|2|t', 'health: accounts_unusable is critical, names both and how to fix');
is($node->safe_psql('appdb', 'SELECT accounts, accounts_unusable FROM twilio_outbox.worker'),
	'3|2', 'worker: 3 accounts known, 2 unusable');
is($node->safe_psql('appdb', "SELECT state FROM twilio_outbox.messages WHERE id = $stuck"),
	'queued', 'the unusable account\'s message stays queued');
# More accounts than the dispatcher publishes (32): the unusable ones are
# listed first, and the totals count them all.
$node->safe_psql('appdb', qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url)
		SELECT 'extra' || n, '$SID', '$base' FROM generate_series(1, 32) n;
	INSERT INTO twilio_outbox.account_credentials (account, secret)
		SELECT 'extra' || n, 'x' FROM generate_series(1, 32) n;
});
ok(wait_for($node, 'appdb', 'SELECT accounts = 35 FROM twilio_outbox.worker', 30),
	'worker: 35 accounts known');
is($node->safe_psql('appdb', q{
		SELECT count(*), count(problem), (SELECT accounts_unusable FROM twilio_outbox.worker)
		FROM twilio_outbox.worker_accounts}),
	'32|2|2', 'worker_accounts: 32 listed, both unusable ones among them');
$node->safe_psql('appdb', q{DELETE FROM twilio_outbox.accounts WHERE name LIKE 'extra%'});
$node->safe_psql('appdb', q{
	DELETE FROM twilio_outbox.messages WHERE account IN ('nosecret', 'faraway');
	DELETE FROM twilio_outbox.senders WHERE account IN ('nosecret', 'faraway');
	DELETE FROM twilio_outbox.accounts WHERE name IN ('nosecret', 'faraway');
});
ok(wait_for($node, 'appdb', q{
		SELECT status = 'ok' FROM twilio_outbox.health WHERE check_name = 'accounts_unusable'}, 30),
	'fixed (removed), the check is ok again');

# ---------- maintenance: a hold the supervisor respects ----------

my $pid = $node->safe_psql('appdb', 'SELECT pid FROM twilio_outbox.worker');
is($node->safe_psql('appdb', q{SELECT twilio_outbox.stop_worker(hold => '1 hour')},
		extra_params => [ '-U', 'ops' ]),
	't', 'stop_worker(hold => 1 hour) stops it');
is($node->safe_psql('appdb', q{
		SELECT running, pid IS NULL, held_until > now() + interval '59 minutes',
			stopped_at IS NOT NULL, sent_since_start, started_at IS NOT NULL
		FROM twilio_outbox.worker}),
	'f|t|t|t|1|t',
	'one row: not running, held an hour, stopped_at set, the last run\'s count kept');
is($node->safe_psql('appdb', q{
		SELECT status, value LIKE 'held until %', hint LIKE '%start_worker()%'
		FROM twilio_outbox.health WHERE check_name = 'worker_running'}),
	'warning|t|t', 'health: worker_running warns that it is held');
my $seen = $node->safe_psql('appdb', 'SELECT supervisor_seen_at FROM twilio_outbox.worker');
ok(wait_for($node, 'appdb',
		"SELECT supervisor_seen_at > '$seen' FROM twilio_outbox.worker", 150),
	'the supervisor ran again');
is($node->safe_psql('appdb', 'SELECT running FROM twilio_outbox.worker'), 'f',
	'and left the held dispatcher stopped');

my $new = $node->safe_psql('appdb', 'SELECT twilio_outbox.start_worker()',
	extra_params => [ '-U', 'ops' ]);
ok($new > 0 && $new != $pid, 'start_worker() by an operator starts a new dispatcher');
is($node->safe_psql('appdb', 'SELECT running, held_until IS NULL, stopped_at IS NULL FROM twilio_outbox.worker'),
	't|t|t', 'and ends the hold');

# (A plain stop_worker() is undone by the supervisor within a minute:
# test/t/011_supervisor.pl.)

# ---------- a server restart ----------

# Without the job, so that nothing starts it after the restart.
$node->safe_psql('postgres', q{SELECT cron.unschedule('twilio_outbox_supervisor_appdb')});
{
	local $ENV{TWILIO_AUTH_TOKEN} = $TOKEN;
	$node->restart;
}
is($node->safe_psql('appdb', q{
		SELECT count(*), bool_and(NOT running), bool_and(started_at IS NULL)
		FROM twilio_outbox.worker}),
	'1|t|t', 'after a restart: still exactly one worker row, not running, no figures');

unlike(slurp_file($node->logfile), qr/\Q$TOKEN\E/, 'the token is never logged');
$node->stop;
$standin->stop;
done_testing();
