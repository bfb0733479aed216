# The dispatcher's life: woken by a commit, started and stopped on demand,
# gone when its extension or its database is dropped, and a clean server
# stop that leaves nothing half-sent.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
# An hour between polls: only a wake-up can explain a prompt send.
my $node = OutboxTest::node('lifecycle', "twilio_outbox.poll_interval = '1h'\n");
OutboxTest::add_account($node, $standin);

sub dispatchers_in
{
	my ($db) = @_;
	return OutboxTest::query($node, qq{
		SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'twilio_outbox dispatcher' AND datname = '$db'});
}

# Poll $sql (returning t/f) for up to $secs seconds.
sub within
{
	my ($secs, $sql) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		return 1 if OutboxTest::query($node, $sql) eq 't';
		sleep 0.2;
	}
	return 0;
}

# --- woken by the enqueueing commit ----------------------------------------
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, 'dispatcher started');
sleep 2;    # idle now, waiting for an hour
my $to = '+14155550600';
my $t0 = time;
OutboxTest::enqueue_to($node, $to);
my $reqs = $standin->wait_requests(1, to => $to, timeout => 15);
is(scalar @$reqs, 1, 'the commit woke the dispatcher: request within 15 s');
note(sprintf('request arrived %.3f s after the enqueue', $reqs->[0]{t} - $t0)) if @$reqs;
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$to'",
	'and the message is sent');

# An account created while the dispatcher runs: its first message is sent
# on the commit's wake-up too, even right after the dispatcher's last look
# at the accounts.
OutboxTest::query($node, qq{
	SELECT twilio_enqueue('+14155550603', 'warm up');
	SELECT pg_sleep(0.3);
	BEGIN;
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url)
		VALUES ('second', '$OutboxTest::ACCOUNT_SID', '${\ $standin->base_url}');
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('second', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
		VALUES ('second', '$OutboxTest::FROM', 'long_code', true, 'Infinity');
	SELECT twilio_enqueue('+14155550604', 'new account', account => 'second');
	COMMIT;
});
$reqs = $standin->wait_requests(1, to => '+14155550604', timeout => 15);
is(scalar @$reqs, 1, 'a message of a just-created account is sent on the wake-up');

# A rolled-back enqueue wakes nothing up and sends nothing.
OutboxTest::query($node, "BEGIN; SELECT twilio_enqueue('+14155550601', 'no'); ROLLBACK;");

# --- start and stop ---------------------------------------------------------
is(OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()'), $pid,
	'start_worker again: the same pid');
is(OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid()'), $pid,
	'worker_pid() names it');
is(OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()'), 't',
	'stop_worker() returns true');
is(OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid() IS NULL'), 't',
	'worker_pid() is NULL once it stopped');
ok(!kill(0, $pid), 'the process is gone');
is(OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()'), 'f',
	'stop_worker() with none running returns false');
my $pid2 = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid2 > 0 && $pid2 != $pid, 'start_worker again starts a new one');
is(OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid()'), $pid2,
	'worker_pid() names the new one');
is(scalar @{ $standin->requests(to => '+14155550601') }, 0, 'the rolled-back message was never sent');

# --- DROP EXTENSION while the dispatcher runs -------------------------------
# The dispatcher notices a dropped extension when it next wakes up; nothing
# wakes it on DROP EXTENSION, so from here on poll at the default 1 s.
OutboxTest::query($node, q{
	ALTER SYSTEM SET twilio_outbox.poll_interval = '1s';
	SELECT pg_reload_conf();
});
sleep 0.5;
my ($rc, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '30s'; DROP EXTENSION twilio_outbox;");
is($rc, 0, 'DROP EXTENSION completes while the dispatcher runs') or diag($err);
ok(within(10, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'twilio_outbox dispatcher'"),
	'and the dispatcher exits')
  or diag('still running: ' . dispatchers_in('postgres'));
($rc, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '30s'; CREATE EXTENSION twilio_outbox;");
is($rc, 0, 'CREATE EXTENSION again works') or diag($err);
OutboxTest::add_account($node, $standin);
my $pid3 = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid3 > 0 && $pid3 != $pid2, 'a new dispatcher starts in the new extension');
$to = '+14155550602';
OutboxTest::enqueue_to($node, $to);
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$to'",
	'and sends');

# --- a second database, dropped while its dispatcher runs --------------------
OutboxTest::query($node, 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION twilio_outbox');
my $other_pid = $node->safe_psql('other', 'SELECT twilio_outbox.start_worker()');
ok($other_pid > 0 && $other_pid != $pid3, 'a dispatcher runs in database other');
is(dispatchers_in('other'), '1', 'pg_stat_activity shows it');
($rc, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '30s'; DROP DATABASE other;");
is($rc, 0, 'DROP DATABASE other succeeds while its dispatcher runs') or diag($err);
ok(!kill(0, $other_pid), 'its dispatcher is gone');
is(OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid()'), $pid3,
	'the dispatcher of database postgres still runs');

# --- a clean stop with requests in flight -----------------------------------
# Back to the suite's 30 s poll: the stop must not wait for it.
OutboxTest::query($node, q{
	ALTER SYSTEM SET twilio_outbox.poll_interval = '30s';
	SELECT pg_reload_conf();
});
sleep 0.5;
my $N = 10;
$standin->steady({ status => 201, delay => 1 });
OutboxTest::query($node, qq{
	SELECT count(twilio_enqueue('+141555506' || lpad(i::text, 2, '0'), 'stop ' || i))
	FROM generate_series(10, 9 + $N) i});
my %stop_to = map { sprintf('+141555506%02d', $_) => 1 } 10 .. 9 + $N;
my $in_flight = 0;
for (my $deadline = time + 15; time < $deadline; sleep 0.1)
{
	$in_flight = grep { $stop_to{ $_->{form}{To}[0] } } @{ $standin->requests };
	last if $in_flight >= 3;
}
ok($in_flight >= 3, "$in_flight requests in flight at the stop");
my $log_offset = -s $node->logfile;
my $t_stop = time;
my $stopped = do { local $ENV{PGCTLTIMEOUT} = 45; $node->stop('fast', fail_ok => 1) };
$t_stop = time - $t_stop;
ok($stopped && $t_stop < 10,
	sprintf('pg_ctl stop -m fast with requests in flight takes %.1f s (< 10 s)', $t_stop));
$node->stop('immediate') unless $stopped;
$node->start;
is(OutboxTest::query($node,
		"SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sending'"),
	'0', "after a clean stop no message is left in 'sending'");
like(slurp_file($node->logfile, $log_offset), qr/twilio_outbox dispatcher stopped/,
	'the dispatcher stopped cleanly');
$standin->steady({ status => 201 });
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node, q{
	SELECT count(*) = 0 FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')},
	'after restart and start_worker everything is sent');
is(OutboxTest::query($node, q{
		SELECT count(*) FROM twilio_outbox.messages
		WHERE to_number LIKE '+141555506%' AND to_number >= '+14155550610' AND state = 'sent'}),
	$N, "all $N sent");
is(OutboxTest::query($node, "SELECT count(*) FROM twilio_outbox.attempt_rows WHERE outcome = 'lost'"),
	'0', 'no attempt lost');
my %per_to;
$per_to{ $_->{form}{To}[0] }++ for @{ $standin->requests };
is_deeply([ grep { ($per_to{$_} // 0) != 1 } sort keys %stop_to ],
	[], 'each message was requested exactly once');

$node->stop;
$standin->stop;
done_testing();
