# pg_cron supervision: schedule_supervisor() keeps one job per name that
# runs twilio_outbox.start_worker() every minute, in the database pg_cron
# lives in or, named, in another; the job really brings a stopped
# dispatcher back.  Without the preload, start_worker() refuses cleanly and
# enqueueing still works.
#
# The cron job fires on a minute boundary: this test waits up to 150 s.
use strict;
use warnings;

use FindBin;
use Time::HiRes qw(sleep time);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;

my $JOB_COMMAND = 'SELECT twilio_outbox.start_worker(supervisor => true)';

# Run $sql in $db, expecting an error: returns (sqlstate, full stderr).
sub sql_error
{
	my ($node, $db, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($db, $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	my ($state) = ($err // '') =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($ret == 0 ? 'no error' : $state // "unparsed: $err", $err // '');
}

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

# ---------- scheduling ----------

my $node = OutboxTest::node('supervisor');
# pg_cron runs jobs over libpq (the default), by default to localhost over
# TCP; this throwaway server listens on its own socket only.
$node->append_conf('postgresql.conf', "cron.host = '" . $node->host . "'\n");
$node->restart;

my $job = OutboxTest::query($node, 'SELECT twilio_outbox.schedule_supervisor()');
like($job, qr/^\d+$/, 'schedule_supervisor() returns a job id');
is(OutboxTest::query($node, 'SELECT twilio_outbox.schedule_supervisor()'),
	$job, 'a second call returns the same job');
is(OutboxTest::query($node, q{
		SELECT count(*), min(jobid), min(schedule), min(command), min(database), bool_and(active)
		FROM cron.job WHERE jobname = 'twilio_outbox_supervisor_postgres'}),
	"1|$job|* * * * *|$JOB_COMMAND|postgres|t",
	'exactly one job twilio_outbox_supervisor_postgres: every minute, start_worker(), in postgres');

# A database without pg_cron: a refusal that says what to run, and where.
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', 'CREATE EXTENSION twilio_outbox');
my ($state, $err) = sql_error($node, 'app', 'SELECT twilio_outbox.schedule_supervisor()');
is($state, '42704', 'schedule_supervisor() without pg_cron: undefined_object');
like($err, qr/^HINT:.*cron\.schedule_in_database\(.*'app'\)/m,
	'the hint gives the cron.schedule_in_database call for database app');
is(OutboxTest::query($node, 'SELECT count(*) FROM cron.job'), '1',
	'the failed call scheduled nothing');

# From pg_cron's database, for the other one, with the default job name:
# a job for app, and postgres's own job stays as it was.
my $pos_job = OutboxTest::query($node, q{SELECT twilio_outbox.schedule_supervisor('app')});
like($pos_job, qr/^\d+$/, "schedule_supervisor('app') returns a job id");
is(OutboxTest::query($node, qq{
		SELECT schedule, command, database FROM cron.job WHERE jobid = $pos_job}),
	"* * * * *|$JOB_COMMAND|app",
	"schedule_supervisor('app') schedules start_worker() in database app")
  or diag("cron.job:\n" . OutboxTest::query($node,
	'SELECT jobid, jobname, database, command FROM cron.job ORDER BY jobid'));
is(OutboxTest::query($node, qq{SELECT database FROM cron.job WHERE jobid = $job}),
	'postgres', "postgres's own supervisor job is still there, still for postgres");

# And with a job name of its own.
my $app_job = OutboxTest::query($node, q{
	SELECT twilio_outbox.schedule_supervisor(database => 'app',
		job_name => 'app_supervisor')});
like($app_job, qr/^\d+$/, 'schedule_supervisor(database => app, job_name => ...) returns a job id');
is(OutboxTest::query($node, q{
		SELECT jobid, schedule, command, database FROM cron.job
		WHERE jobname = 'app_supervisor'}),
	"$app_job|* * * * *|$JOB_COMMAND|app", 'that job runs start_worker() in app');
is(OutboxTest::query($node, qq{SELECT jobname, database FROM cron.job WHERE jobid = $job}),
	'twilio_outbox_supervisor_postgres|postgres', "postgres's own job is untouched");

# An admin who is not a superuser needs no grant on pg_cron: the function
# schedules for it, and the job runs as that admin, with no more rights.
$node->safe_psql('postgres', 'CREATE ROLE ops LOGIN; GRANT twilio_outbox_admin TO ops;');
my ($r, $o, $e) = $node->psql('postgres',
	q{SELECT cron.schedule_in_database('x', '* * * * *', 'SELECT 1', 'postgres')},
	extra_params => [ '-U', 'ops' ]);
like($e, qr/permission denied for (schema cron|function schedule_in_database)/,
	'ops has no grant on pg_cron itself');
my $ops_job = $node->safe_psql('postgres',
	q{SELECT twilio_outbox.schedule_supervisor(job_name => 'ops_supervisor')},
	extra_params => [ '-U', 'ops' ]);
like($ops_job, qr/^\d+$/, 'yet schedule_supervisor() as ops returns a job id');
is(OutboxTest::query($node, qq{SELECT username, database, command FROM cron.job WHERE jobid = $ops_job}),
	"ops|postgres|$JOB_COMMAND", 'the job runs start_worker(supervisor => true) as ops');
($r, $o, $e) = $node->psql('postgres',
	q{SELECT twilio_outbox.schedule_purge('-1 day')}, extra_params => [ '-U', 'ops' ]);
like($e, qr/older_than must not be negative/, 'schedule_purge refuses a negative interval at the call');
my $purge_job = $node->safe_psql('postgres',
	q{SELECT twilio_outbox.schedule_purge('7 days', '0 4 * * sun')}, extra_params => [ '-U', 'ops' ]);
is(OutboxTest::query($node, qq{SELECT jobname, schedule, username FROM cron.job WHERE jobid = $purge_job}),
	'twilio_outbox_purge_postgres|0 4 * * sun|ops', 'schedule_purge as ops: the nightly job, run as ops');

# One job per database for what follows.
OutboxTest::query($node, qq{
	SELECT cron.unschedule(jobid) FROM cron.job WHERE jobid NOT IN ($job, $app_job)});
is(OutboxTest::query($node, q{
		SELECT string_agg(jobname || '=' || database, ',' ORDER BY jobname) FROM cron.job}),
	'app_supervisor=app,twilio_outbox_supervisor_postgres=postgres',
	'one supervisor job per database');

# ---------- the jobs really start the dispatchers ----------

my $old_pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($old_pid > 0, 'dispatcher of postgres started by hand');
is(OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()'), 't', 'and stopped');
is(OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid() IS NULL'), 't',
	'no dispatcher runs in postgres');
is($node->safe_psql('app', 'SELECT twilio_outbox.worker_pid() IS NULL'), 't',
	'no dispatcher runs in app');
my $since = OutboxTest::query($node, 'SELECT now()');

my $t0 = time;
my $back = wait_for($node, 'postgres',
	'SELECT twilio_outbox.worker_pid() IS NOT NULL', 150);
ok($back, 'the cron job brought the dispatcher of postgres back');
note(sprintf('after %.0f s', time - $t0));
ok(wait_for($node, 'app', 'SELECT twilio_outbox.worker_pid() IS NOT NULL',
		$back ? 60 : 1),
	'the cron job started the dispatcher of app');

for my $case ([ 'twilio_outbox_supervisor_postgres', 'postgres' ],
	[ 'app_supervisor', 'app' ])
{
	my ($name, $db) = @$case;
	ok(wait_for($node, 'postgres', qq{
			SELECT count(*) > 0 FROM cron.job_run_details d
			JOIN cron.job j ON j.jobid = d.jobid
			WHERE j.jobname = '$name' AND d.database = '$db'
			  AND d.status = 'succeeded' AND d.start_time >= '$since'}, 30),
		"cron.job_run_details: a succeeded run of $name")
	  or diag(OutboxTest::query($node, q{
			SELECT jobid, database, status, return_message, start_time
			FROM cron.job_run_details ORDER BY runid}));
}

# Started by a cron session that has since ended, the dispatcher lives on.
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid()');
isnt($pid, $old_pid, 'a new dispatcher process');
sleep 2;
is(OutboxTest::query($node, qq{
		SELECT twilio_outbox.worker_pid() = $pid AND count(*) = 1
		FROM pg_stat_activity WHERE pid = $pid AND backend_type = 'twilio_outbox dispatcher'}),
	't', 'it keeps running after the job that started it');
is(OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()'), $pid,
	'start_worker() now returns the running one');

# With pg_cron in this database, health's hint reads the job's last run
# (here with the job switched off, so that nothing starts it again).
OutboxTest::query($node, "SELECT cron.alter_job($job, active => false)");
is(OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()'), 't', 'stopped, job off');
my $hint = OutboxTest::query($node,
	"SELECT status || ': ' || hint FROM twilio_outbox.health WHERE check_name = 'worker_running'");
like($hint, qr/^critical: .*It stopped at .*the supervisor \(last call at /,
	'health: it stopped after the supervisor\'s last call');
like($hint, qr/Last run of the supervisor job: job $job \(twilio_outbox_supervisor_postgres, inactive\) succeeded at /,
	'health: the hint quotes the job\'s last run from cron.job_run_details');
is(OutboxTest::query($node, q{
		SELECT running, pid IS NULL, stopped_at > started_at, supervisor_seen_at IS NOT NULL
		FROM twilio_outbox.worker}),
	'f|t|t|t', 'worker: one row, not running, stopped after it started, supervised');

$node->stop;

# ---------- without twilio_outbox in shared_preload_libraries ----------

my $plain = PostgreSQL::Test::Cluster->new('no_preload');
$plain->init(@OutboxTest::INITDB);
$plain->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
});
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION pg_cron');
my ($ret, $out);
($ret, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION twilio_outbox');
is($ret, 0, 'CREATE EXTENSION twilio_outbox without the preload')
  or diag($err);
SKIP:
{
	skip 'twilio_outbox could not be created without the preload', 7 if $ret != 0;

	($state, $err) = sql_error($plain, 'postgres', 'SELECT twilio_outbox.start_worker()');
	is($state, '55000', 'start_worker() without the preload: object_not_in_prerequisite_state');
	like($err, qr/^HINT:.*shared_preload_libraries/m, 'the hint names shared_preload_libraries');
	($state, $err) = sql_error($plain, 'postgres', 'SELECT twilio_outbox.stop_worker()');
	is($state, '55000', 'stop_worker() likewise');
	is($plain->safe_psql('postgres', 'SELECT twilio_outbox.worker_pid() IS NULL'), 't',
		'worker_pid() is NULL, not an error');

	# Enqueueing does not need the dispatcher: the outbox fills up until one
	# runs.  (This base URL is never reached: no dispatcher can run here.)
	$plain->safe_psql('postgres', qq{
		INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
			VALUES ('main', '$OutboxTest::ACCOUNT_SID', 'https://127.0.0.1:9', true);
		INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
			VALUES ('main', '$OutboxTest::FROM', 'long_code', true, 'Infinity');
	});
	my ($eret, $id, $eerr) = $plain->psql('postgres',
		q{SELECT twilio_enqueue('+14155550301', 'queued without a dispatcher')});
	like($id, qr/^\d+$/, 'twilio_enqueue() works without the preload') or diag($eerr);
	is($plain->safe_psql('postgres',
			"SELECT state, to_number FROM twilio_outbox.messages WHERE to_number = '+14155550301'"),
		'queued|+14155550301', 'the message waits, queued');
	unlike(slurp_file($plain->logfile), qr/FATAL|PANIC|server process .* terminated/,
		'no session or server died');
}
$plain->stop;

done_testing();
