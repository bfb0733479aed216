# Status callbacks end to end with the dispatcher: an account with a
# status_callback_url makes every message it sends carry StatusCallback with
# its own outbox_id (a message's own status_callback wins); a message whose
# 201 was lost (the stand-in resets the connection after reading the
# request; on_ambiguous = hold) gets its SID and its final state from the
# signed callback that names its outbox_id, and is never sent again.
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
my $node = OutboxTest::node('callbacks', "twilio_outbox.on_ambiguous = hold\n");
OutboxTest::add_account($node, $standin);
$node->safe_psql('postgres', q{
	UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/twilio/status' WHERE name = 'main';
});
$standin->script('+14155550301', { reset => 1 });

my $plain = OutboxTest::enqueue_to($node, '+14155550300');
my $own = $node->safe_psql('postgres',
	q{SELECT twilio_enqueue('+14155550302', 'own callback', status_callback => 'https://app.example.com/cb')});
my $lost = OutboxTest::enqueue_to($node, '+14155550301');
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	"SELECT count(*) = 3 FROM twilio_outbox.messages WHERE state IN ('sent', 'ambiguous')");

sub callback_of
{
	my ($to) = @_;
	my $reqs = $standin->requests(to => $to);
	my $form = $reqs->[-1]{form};
	my $v = $form->{StatusCallback};
	return ref $v ? $v->[0] : $v;
}
is(callback_of('+14155550300'), "https://hooks.example.com/twilio/status?outbox_id=$plain",
	"the account's callback URL with the message's outbox_id");
is(callback_of('+14155550302'), 'https://app.example.com/cb',
	"a message's own status_callback is sent as it is");
is(callback_of('+14155550301'), "https://hooks.example.com/twilio/status?outbox_id=$lost",
	'the message whose 201 was lost was sent with its outbox_id too');
is($node->safe_psql('postgres', "SELECT state || '|' || coalesce(twilio_sid, '-') FROM twilio_outbox.messages WHERE id = $lost"),
	'ambiguous|-', 'its outcome is unknown: ambiguous, no SID');

# Twilio's callbacks for it, signed with the account's auth token (the
# server's TWILIO_TEST_AUTH_TOKEN), out of order and one twice.
my $sid = 'SM' . ('ab' x 16);
sub receive
{
	my ($status) = @_;
	my $url = "https://hooks.example.com/twilio/status?outbox_id=$lost";
	my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&From=%2B15005550006&MessageSid=$sid"
	  . "&MessageStatus=$status&To=%2B14155550301&ApiVersion=2010-04-01";
	return $node->safe_psql('postgres', qq{
		SELECT twilio_outbox.receive_status('$url', '$body',
			twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', '$url', '$body'))});
}
is(receive('delivered'), 'applied', 'delivered, before sent: applied');
is(receive('sent'), 'stale', 'sent, after delivered: recorded, not applied');
is(receive('delivered'), 'duplicate', 'delivered again: a duplicate, nothing changes');
is($node->safe_psql('postgres',
		"SELECT state || '|' || twilio_sid || '|' || twilio_status FROM twilio_outbox.messages WHERE id = $lost"),
	"delivered|$sid|delivered", 'the lost message has its SID from the callback, and is delivered');
is($node->safe_psql('postgres',
		"SELECT string_agg(message_status || ':' || verdict, ',' ORDER BY id) FROM twilio_outbox.status_events WHERE message_id = $lost"),
	'delivered:applied,sent:stale', 'one status event per status, with what it did');

# The dispatcher never sends it again (it is no longer ambiguous or queued).
$node->safe_psql('postgres', 'SELECT twilio_outbox.stop_worker()');
is(scalar @{ $standin->requests(to => '+14155550301') }, 1, 'the lost message was sent once');

$node->stop;
$standin->stop;
done_testing();
