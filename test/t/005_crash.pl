# A dispatcher killed with requests in flight: the postmaster restarts the
# cluster, the next dispatcher takes the messages left in 'sending' back as
# lost (ambiguous) attempts and sends them again with the same idempotency
# key.  Nothing is lost; a message goes out twice only where an attempt of
# it was ambiguous.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $N = 40;
my $standin = TwilioStandIn->start;
# PostgreSQL::Test::Cluster turns restart_after_crash off; this test needs it.
# The retry policy's take-back (sent again with the same key); reconcile
# (the default) looks them up first: 026_reconcile_crash.pl.
my $node = OutboxTest::node('crash', "restart_after_crash = on\ntwilio_outbox.on_ambiguous = retry\n");
OutboxTest::add_account($node, $standin);
# Slow answers: requests stay in flight when the dispatcher dies.
$standin->steady({ status => 201, delay => 1.5 });
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, "dispatcher runs (pid $pid)");

OutboxTest::query($node, qq{
	BEGIN;
	SELECT count(twilio_enqueue('+141555505' || lpad(i::text, 2, '0'), 'crash ' || i))
	FROM generate_series(1, $N) i;
	COMMIT;
});
my $before = $standin->wait_requests(5, timeout => 30);
ok(@$before >= 5, scalar(@$before) . ' requests in flight before the kill');

my $log_offset = -s $node->logfile;
ok(kill('KILL', $pid), 'kill -9 the dispatcher');
# The postmaster treats it as a crash: every backend goes, shared memory is
# reinitialized, the server accepts connections again.
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
	'the postmaster restarts after the crash');
ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'),
	'the server accepts queries again');

is(OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid() IS NULL'), 't',
	'no dispatcher after the crash restart');
my $sending = OutboxTest::query($node,
	"SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sending'");
ok($sending > 0, "$sending messages left in 'sending' by the dead dispatcher");

$standin->steady({ status => 201 });
my $pid2 = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid2 > 0 && $pid2 != $pid, 'a new dispatcher starts');
OutboxTest::wait_until($node,
	"SELECT count(*) = $N FROM twilio_outbox.messages WHERE state IN ('sent', 'dead', 'canceled', 'ambiguous')",
	'all messages reach a final state');

is(OutboxTest::query($node,
		"SELECT state || ':' || count(*) FROM twilio_outbox.messages GROUP BY state"),
	"sent:$N", "all $N sent");
my $lost = OutboxTest::query($node, q{
	SELECT count(*) || '|' || count(*) FILTER (WHERE ambiguous AND http_status IS NULL)
	FROM twilio_outbox.attempt_rows WHERE outcome = 'lost'});
my ($nlost, $nlost_ambiguous) = split /\|/, $lost;
is($nlost, $sending, 'one lost attempt per message taken back');
is($nlost_ambiguous, $nlost, 'lost attempts are ambiguous, with no HTTP status');
is(OutboxTest::query($node, q{
		SELECT count(*) FROM twilio_outbox.messages m
		WHERE EXISTS (SELECT FROM twilio_outbox.attempt_rows a WHERE a.message_id = m.id AND a.outcome = 'lost')
		  AND m.ambiguous_attempts < 1}),
	'0', 'every message with a lost attempt counts it in ambiguous_attempts');
like(slurp_file($node->logfile, $log_offset),
	qr/twilio_outbox took back \d+ messages left in flight/, 'the take-back is logged');

# Requests per message, by idempotency key.
my %msg;    # to => [key, ambiguous attempts, failures]
for my $line (split /\n/, OutboxTest::query($node, q{
	SELECT m.to_number, m.idempotency_key,
	       (SELECT count(*) FROM twilio_outbox.attempt_rows a WHERE a.message_id = m.id AND a.ambiguous)
	FROM twilio_outbox.messages m}))
{
	my ($to, $key, $amb) = split /\|/, $line;
	$msg{$to} = [ $key, $amb ];
}
my (%by_key, %keys_of_to);
for my $r (@{ $standin->requests })
{
	my $key = $r->{headers}{'idempotency-key'} // '';
	$by_key{$key}++;
	$keys_of_to{ $r->{form}{To}[0] }{$key} = 1;
}
my (@dupes_unexplained, @key_mismatch, @never);
my $resent = 0;
for my $to (sort keys %msg)
{
	my ($key, $amb) = @{ $msg{$to} };
	my $n = $by_key{$key} // 0;
	push @never, $to if $n == 0;
	push @dupes_unexplained, "$to ($n requests)" if $n > 1 && $amb == 0;
	$resent++ if $n > 1;
	my @keys = keys %{ $keys_of_to{$to} // {} };
	push @key_mismatch, $to unless @keys == 1 && $keys[0] eq $key;
}
is_deeply(\@never, [], 'every message reached the stand-in');
is_deeply(\@dupes_unexplained, [],
	'a message was requested more than once only if it has an ambiguous attempt');
is_deeply(\@key_mismatch, [], 'all requests of a message carry its stored idempotency key');
note("$resent messages were sent twice after the crash (their first request was in flight)");
is(scalar(keys %by_key), $N, 'no request with an unknown key');

$node->stop;
$standin->stop;
done_testing();
