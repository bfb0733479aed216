# Rate limits: a 429 is never charged to the message, waits Retry-After (or
# an exponential delay without it) and pauses the whole account.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('ratelimit');
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

sub first_attempt
{
	my ($to, $cols) = @_;
	return OutboxTest::query($node, qq{
		SELECT $cols FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$to' AND a.attempt = 1});
}

sub rate_limited_recorded
{
	my ($to) = @_;
	return qq{SELECT EXISTS (SELECT FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$to' AND a.outcome = 'rate_limited')};
}

# --- 429 with Retry-After: 2 ----------------------------------------------
my $to1 = '+14155550300';
$standin->script($to1, { status => 429, retry_after => '2' }, { status => 201 });
OutboxTest::enqueue_to($node, $to1);
OutboxTest::wait_until($node, rate_limited_recorded($to1), '429: attempt recorded');
is(OutboxTest::query($node, q{
		SELECT pause_reason LIKE '%429%', paused_until > now()
		FROM twilio_outbox.accounts WHERE name = 'main'}),
	't|t', '429: the account is paused, its pause_reason names the 429');
is(OutboxTest::message_row($node, $to1, 'state, failures'), 'queued|0',
	'429: the message is back in the queue, not charged');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$to1'",
	'429 then 201: sent');
my $reqs = $standin->requests(to => $to1);
is(scalar @$reqs, 2, '429 then 201: two requests');
my $gap = @$reqs >= 2 ? $reqs->[1]{t} - $reqs->[0]{t} : -1;
ok($gap >= 2.0, sprintf('the retry came %.3f s after the 429 (Retry-After: 2)', $gap));
ok($gap <= 2.0 + 1.0 + 1.5, sprintf('and not much later than Retry-After plus jitter (%.3f s)', $gap));
is(OutboxTest::message_row($node, $to1, 'attempts, failures, ambiguous_attempts'), '2|0|0',
	'429 then 201: two attempts, none charged, none ambiguous');
is(first_attempt($to1,
		"a.outcome, a.retry_after, a.http_status, a.twilio_code, a.ambiguous,"
		. " a.delay BETWEEN interval '2 s' AND interval '3 s'"),
	'rate_limited|2|429|20429|f|t',
	'the 429 attempt: rate_limited, Retry-After kept raw, delay 2 s plus up to 1 s jitter');

# --- 429 without Retry-After ------------------------------------------------
my $to2 = '+14155550301';
$standin->script($to2, { status => 429 }, { status => 201 });
OutboxTest::enqueue_to($node, $to2);
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$to2'",
	'429 without Retry-After then 201: sent');
is(scalar @{ $standin->requests(to => $to2) }, 2, 'two requests');
is(OutboxTest::message_row($node, $to2, 'attempts, failures'), '2|0', 'not charged');
is(first_attempt($to2, q{a.outcome, a.retry_after IS NULL, a.delay > interval '0 s'}),
	'rate_limited|t|t', 'rate_limited, no Retry-After, a delay of its own');

# --- the pause is the account's: another message waits for it too ----------
my $to3 = '+14155550302';
my $to4 = '+14155550303';
$standin->script($to3, { status => 429, retry_after => '3' }, { status => 201 });
OutboxTest::enqueue_to($node, $to3);
OutboxTest::wait_until($node, rate_limited_recorded($to3), 'Retry-After 3: 429 recorded');
my $paused_until = OutboxTest::query($node,
	"SELECT extract(epoch FROM paused_until) FROM twilio_outbox.accounts WHERE name = 'main'");
OutboxTest::enqueue_to($node, $to4);
OutboxTest::wait_until($node,
	"SELECT count(*) = 2 FROM twilio_outbox.messages WHERE to_number IN ('$to3', '$to4') AND state = 'sent'",
	'both messages sent after the pause');
my $reqs3 = $standin->requests(to => $to3);
my $reqs4 = $standin->requests(to => $to4);
is(scalar @$reqs4, 1, 'the other message was sent once');
if (@$reqs4 && @$reqs3)
{
	ok($reqs4->[0]{t} >= $reqs3->[0]{t} + 3.0,
		sprintf('the other message went out %.3f s after the 429 (Retry-After: 3)',
			$reqs4->[0]{t} - $reqs3->[0]{t}));
	ok($reqs4->[0]{t} >= $paused_until - 0.01,
		sprintf('and not before the account paused_until (%.3f s after it)',
			$reqs4->[0]{t} - $paused_until));
}
is(OutboxTest::message_row($node, $to4, 'attempts, failures'), '1|0',
	'the other message: one attempt, no rate-limited attempt of its own');

$node->stop;
$standin->stop;
done_testing();
