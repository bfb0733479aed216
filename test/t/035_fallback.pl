# Fallback chains end to end with the dispatcher and the stand-in (issue
# 13): an SMS reported undelivered escalates to WhatsApp, which is
# delivered; an SMS Twilio refuses (21211, dead letter) escalates to a
# voice call (POST .../Calls.json, the body read out by <Say>, XML-escaped),
# which completes; an SMS not confirmed within "after" escalates to a call
# by the timer, and its late "delivered" is recorded and makes no further
# step; a recipient who opted out (21610) gets no fallback.  The chain view
# gives each chain's steps and outcome.  Status callbacks come in through
# receive_status, signed, as the receiver would pass them.
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
my $node = OutboxTest::node('fallback');
OutboxTest::add_account($node, $standin);
my $CB = 'https://hooks.example.com/twilio/status';
OutboxTest::query($node, qq{
	UPDATE twilio_outbox.accounts SET status_callback_url = '$CB' WHERE name = 'main';
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
		VALUES ('main', 'whatsapp:+15005550009', 'whatsapp', 'Infinity');
});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# A signed status callback for the message or call $sid (outbox_id $id).
sub receive
{
	my ($kind, $id, $sid, $status, $extra) = @_;
	my $url = "$CB?outbox_id=$id";
	my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&${kind}Sid=$sid&${kind}Status=$status"
	  . ($extra // '');
	return OutboxTest::query($node, qq{
		SELECT twilio_outbox.receive_status('$url', '$body',
			twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', '$url', '$body'))});
}

sub steps
{
	my ($head) = @_;
	return OutboxTest::query($node, qq{
		SELECT string_agg(step || ':' || channel || ':' || to_number || ':' || state, ' ' ORDER BY step)
		FROM twilio_outbox.chain_steps WHERE head_id = $head});
}

sub outcome
{
	my ($head) = @_;
	return OutboxTest::query($node, qq{
		SELECT outcome || '|' || coalesce(delivered_channel, '-') || '|' || steps_made
		FROM twilio_outbox.chains WHERE head_id = $head});
}

sub row
{
	my ($sql) = @_;
	return OutboxTest::query($node, $sql);
}

# 1. SMS undelivered -> WhatsApp delivered.
my $h1 = row(q{SELECT twilio_enqueue('+14155550350', 'code 350', fallback => '[{"channel": "whatsapp"}]')});
OutboxTest::wait_until($node, "SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $h1");
is(outcome($h1), 'in_progress|-|1', 'sent, no status yet: the chain is in progress');
my $sid1 = row("SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $h1");
is(receive('Message', $h1, $sid1, 'undelivered', '&ErrorCode=30003'), 'applied', 'undelivered applied');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE chain_head = $h1 AND chain_step = 1",
	'the WhatsApp step is created and sent');
my $wa = $standin->requests(to => 'whatsapp:+14155550350');
is(scalar @$wa, 1, 'one WhatsApp request');
is($wa->[0]{form}{From}[0], 'whatsapp:+15005550009', 'from the WhatsApp sender');
is($wa->[0]{form}{Body}[0], 'code 350', 'with the same body');
like($wa->[0]{path}, qr{/Messages\.json$}, 'to Messages.json');
my ($w1, $wsid1) = split /\|/, row("SELECT id || '|' || twilio_sid FROM twilio_outbox.messages WHERE chain_head = $h1");
is(receive('Message', $w1, $wsid1, 'delivered'), 'applied', 'WhatsApp delivered');
is(steps($h1), '0:sms:+14155550350:undelivered 1:whatsapp:whatsapp:+14155550350:delivered',
	'the chain view: SMS undelivered, WhatsApp delivered');
is(outcome($h1), 'delivered|whatsapp|2', 'the chain outcome: delivered on WhatsApp');

# 2. SMS dead (21211) -> a voice call, completed.
$standin->script('+14155550351', { status => 400, code => 21211 });
my $h2 = row(q{SELECT twilio_enqueue('+14155550351', 'Code <351> & "more"',
	fallback => '[{"channel": "voice", "voice": "alice", "language": "en-US"}]')});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE chain_head = $h2 AND chain_step = 1",
	'the SMS is dead-lettered and the call is made');
is(row("SELECT state || '|' || reason FROM twilio_outbox.messages m JOIN twilio_outbox.dead_letters d ON d.message_id = m.id WHERE m.id = $h2"),
	'dead|rejected', 'the SMS is a dead letter (rejected)');
my @reqs = @{ $standin->requests(to => '+14155550351') };
is(scalar @reqs, 2, 'two requests to the number: the SMS, then the call');
like($reqs[1]{path}, qr{^/2010-04-01/Accounts/$OutboxTest::ACCOUNT_SID/Calls\.json$}, 'the call goes to Calls.json');
my $c2 = row("SELECT id FROM twilio_outbox.messages WHERE chain_head = $h2");
is_deeply($reqs[1]{form}, {
		To => ['+14155550351'], From => [$OutboxTest::FROM],
		Twiml => ['<Response><Say voice="alice" language="en-US">Code &lt;351&gt; &amp; &quot;more&quot;</Say></Response>'],
		StatusCallback => ["$CB?outbox_id=$c2"], StatusCallbackEvent => ['completed'] },
	'To, From, Twiml with the body XML-escaped, the status callback for completion');
my $csid = row("SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $c2");
like($csid, qr/^CA[0-9a-f]{32}$/, 'the call has its CA sid');
is(receive('Call', $c2, $csid, 'completed', '&CallDuration=7'), 'applied', 'the call completed');
is(steps($h2), '0:sms:+14155550351:dead 1:voice:+14155550351:delivered', 'the chain view: SMS dead, call delivered');
is(outcome($h2), 'delivered|voice|2', 'the chain outcome: delivered by voice');

# 3. SMS not confirmed within after -> a call by the timer; the late SMS
#    delivered is recorded and makes no further step.
my $h3 = row(q{SELECT twilio_enqueue('+14155550352', 'code 352',
	fallback => '[{"channel": "voice", "after": "2 seconds"}, {"channel": "whatsapp", "after": "1 hour"}]')});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE chain_head = $h3 AND chain_step = 1",
	'no status within 2 seconds: the timer makes the call');
is(row("SELECT state FROM twilio_outbox.messages WHERE id = $h3"), 'sent', 'the SMS is still sent, no final status');
my $sid3 = row("SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $h3");
is(receive('Message', $h3, $sid3, 'delivered'), 'applied', 'the late delivered is recorded');
is(row("SELECT count(*) || '|' || count(*) FILTER (WHERE fallback_at IS NOT NULL) FROM twilio_outbox.messages WHERE chain_head = $h3"),
	'1|0', 'no further step, and no timer left to make one');
is(outcome($h3), 'delivered|sms|2', 'the chain outcome: delivered by SMS (the first delivered)');
is(scalar @{ $standin->requests(to => 'whatsapp:+14155550352') }, 0, 'no WhatsApp message');

# 4. A recipient who opted out (21610): suppressed, no fallback.
$standin->script('+14155550353', { status => 400, code => 21610 });
my $h4 = row(q{SELECT twilio_enqueue('+14155550353', 'code 353', fallback => '[{"channel": "voice"}]')});
OutboxTest::wait_until($node, "SELECT state = 'dead' FROM twilio_outbox.messages WHERE id = $h4");
is(row("SELECT count(*) FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550353'"), '1',
	'the recipient is suppressed');
is(steps($h4), '0:sms:+14155550353:dead', 'the chain view: the SMS alone, dead');
is(outcome($h4), 'stopped|-|1', 'the chain outcome: stopped, no fallback to someone who opted out');
is(scalar @{ $standin->requests(to => '+14155550353') }, 1, 'nothing but the SMS was sent to them');

$node->stop;
$standin->stop;
done_testing();
