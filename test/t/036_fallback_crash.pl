# A fallback chain across a crash of the dispatcher (issue 13): the SMS's
# refusal (21211) is in flight when the dispatcher is killed with kill -9.
# Its failure and its fallback step are written in one transaction, so the
# crash leaves neither: the next dispatcher takes the SMS back (lost),
# sends it again, records the refusal and the one voice step together.
# Exactly one step results, and one call, whatever else asks for it again
# afterwards (a duplicate failure status, the record path again).
use strict;
use warnings;

use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
# PostgreSQL::Test::Cluster turns restart_after_crash off; this test needs it.
my $node = OutboxTest::node('fallback_crash', "restart_after_crash = on\n");
OutboxTest::add_account($node, $standin);
my $TO = '+14155550360';
# The first answer comes late (the dispatcher dies meanwhile), the second at once.
$standin->script($TO, { status => 400, code => 21211, delay => 5 }, { status => 400, code => 21211 });
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
my $head = OutboxTest::query($node,
	q{SELECT twilio_enqueue('+14155550360', 'code 360', fallback => '[{"channel": "voice"}]')});
$standin->wait_requests(1, to => $TO, timeout => 60);
is(OutboxTest::query($node, "SELECT state FROM twilio_outbox.messages WHERE id = $head"), 'sending',
	'the SMS is in flight');

my $log_offset = -s $node->logfile;
ok(kill('KILL', $pid), 'kill -9 the dispatcher with the refusal on its way');
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
	'the postmaster restarts after the crash');
ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'the server is back');
is(OutboxTest::query($node,
		"SELECT state || '|' || (SELECT count(*) FROM twilio_outbox.messages WHERE chain_head = $head) FROM twilio_outbox.messages WHERE id = $head"),
	'sending|0', 'neither the failure nor a fallback step was written');

OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE chain_head = $head",
	'the next dispatcher sends the SMS again, dead-letters it and makes the call');
is(OutboxTest::query($node, qq{
		SELECT string_agg(outcome::text, ',' ORDER BY attempt) FROM twilio_outbox.attempt_rows WHERE message_id = $head}),
	'lost,not_found,dead', 'the SMS: one lost attempt (the crash), reconciled (not at Twilio), then the refusal');

# What else may ask for the same step again makes nothing.
my $sid = 'SM' . ('cd' x 16);
OutboxTest::query($node, "UPDATE twilio_outbox.messages SET twilio_sid = '$sid' WHERE id = $head");
my $url = "https://hooks.example.com/twilio/status?outbox_id=$head";
my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&MessageSid=$sid&MessageStatus=failed&ErrorCode=30003";
OutboxTest::query($node, qq{SELECT twilio_outbox.receive_status('$url', '$body',
	twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', '$url', '$body'))});
is(OutboxTest::query($node, "SELECT twilio_outbox.chain_escalate('main', $head, 'dead') IS NULL"), 't',
	'the record path asking again makes no second step');
is(OutboxTest::query($node, "SELECT count(*) FROM twilio_outbox.messages WHERE chain_head = $head"), '1',
	'exactly one fallback step');
is(OutboxTest::query($node, "SELECT outcome || '|' || steps_made FROM twilio_outbox.chains WHERE head_id = $head"),
	'in_progress|2', 'the chain: the call is under way');
OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()');
my @calls = grep { $_->{path} =~ /Calls\.json$/ } @{ $standin->requests(to => $TO) };
is(scalar @calls, 1, 'one call was made');

$node->stop;
$standin->stop;
done_testing();
