# A dispatcher killed (kill -9) with requests in flight that Twilio had
# already acted on (the stand-in creates each message, then never answers):
# with on_ambiguous = reconcile (the default) the next dispatcher takes the
# rows left in 'sending' back as lost, ambiguous attempts, looks each up in
# Twilio's message list, and adopts what it finds.  Counted at the
# stand-in: every message created exactly once, none lost, none twice.
use strict;
use warnings;

use FindBin;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $N = 30;
my $standin = TwilioStandIn->start;
# PostgreSQL::Test::Cluster turns restart_after_crash off; this test needs it.
my $node = OutboxTest::node('reconcile_crash',
	"restart_after_crash = on\ntwilio_outbox.reconcile_grace = '2s'\n"
	  . "twilio_outbox.request_timeout = '30s'\n");
OutboxTest::add_account($node, $standin);
$node->safe_psql('postgres',
	q{UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/s', lookups_per_second = 100});
# Every create is created at once, then hangs: in flight when the dispatcher dies.
$standin->set_faults({ rate => 1.0, mix => { create_hang => 1 }, hang => 60 });
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, "dispatcher runs (pid $pid)");

OutboxTest::query($node, qq{
	SELECT count(twilio_enqueue('+141555506' || lpad(i::text, 2, '0'), 'crash ' || i))
	FROM generate_series(1, $N) i});
my $before = $standin->wait_requests(10, timeout => 30);
ok(@$before >= 10, scalar(@$before) . ' requests in flight before the kill');

my $log_offset = -s $node->logfile;
ok(kill('KILL', $pid), 'kill -9 the dispatcher');
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
	'the postmaster restarts after the crash');
ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'),
	'the server accepts queries again');
my $sending = OutboxTest::query($node,
	"SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sending'");
ok($sending >= 10, "$sending messages left in 'sending' by the dead dispatcher");

# From now on Twilio answers.
$standin->set_faults({ rate => 0 });
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	"SELECT count(*) = $N FROM twilio_outbox.messages WHERE state = 'sent'",
	'every message sent after the restart');

my $created = $standin->created;
my @not_once = grep { ($created->{by_outbox_id}{$_} // 0) != 1 }
  split /\n/, OutboxTest::query($node, 'SELECT id FROM twilio_outbox.messages ORDER BY id');
is_deeply(\@not_once, [], 'the stand-in created each message exactly once');
is($created->{total}, $N, "$N messages created at the stand-in in all");
is(OutboxTest::query($node, q{
		SELECT count(*) FROM twilio_outbox.messages m
		WHERE EXISTS (SELECT FROM twilio_outbox.attempt_rows a WHERE a.message_id = m.id AND a.outcome = 'lost')
		  AND NOT EXISTS (SELECT FROM twilio_outbox.attempt_rows a WHERE a.message_id = m.id AND a.outcome::text = 'found')}),
	'0', 'every message taken back was found at Twilio, not sent again');
is(OutboxTest::query($node, q{
		SELECT count(*) FROM twilio_outbox.messages m
		WHERE m.twilio_sid IS NULL OR m.ambiguous_since IS NULL AND m.ambiguous_attempts > 0}),
	'0', 'each has its SID, and ambiguous_since where an attempt was ambiguous');
is(OutboxTest::query($node,
		q{SELECT count(*) = count(DISTINCT twilio_sid) FROM twilio_outbox.messages}),
	't', 'no SID adopted twice');

$node->stop;
$standin->stop;
done_testing();
