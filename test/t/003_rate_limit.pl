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
		SELECT $cols FROM twilio_outbox.attempts a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$to' AND a.attempt = 1});
}

sub rate_limited_recorded
{
	my ($to) = @_;
	return qq{SELECT EXISTS (SELECT FROM twilio_outbox.attempts a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$to' AND a.outcome = 'rate_limited')};
}

# --- 429 with Retry-After: 2 ----------------------------------------------
my $a = '+14155550300';
$standin->script($a, { status => 429, retry_after => '2' }, { status => 201 });
OutboxTest::enqueue_to($node, $a);
OutboxTest::wait_until($node, rate_limited_recorded($a), '429: attempt recorded');
is(OutboxTest::query($node, q{
		SELECT pause_reason LIKE '%429%', paused_until > now()
		FROM twilio_outbox.accounts WHERE name = 'main'}),
	't|t', '429: the account is paused, its pause_reason names the 429');
is(OutboxTest::message_row($node, $a, 'state, failures'), 'queued|0',
	'429: the message is back in the queue, not charged');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$a'",
	'429 then 201: sent');
my $reqs = $standin->requests(to => $a);
is(scalar @$reqs, 2, '429 then 201: two requests');
my $gap = @$reqs >= 2 ? $reqs->[1]{t} - $reqs->[0]{t} : -1;
ok($gap >= 2.0, sprintf('the retry came %.3f s after the 429 (Retry-After: 2)', $gap));
ok($gap <= 2.0 + 1.0 + 1.5, sprintf('and not much later than Retry-After plus jitter (%.3f s)', $gap));
is(OutboxTest::message_row($node, $a, 'attempts, failures, ambiguous_attempts'), '2|0|0',
	'429 then 201: two attempts, none charged, none ambiguous');
is(first_attempt($a,
		"a.outcome, a.retry_after, a.http_status, a.twilio_code, a.ambiguous,"
		. " a.delay BETWEEN interval '2 s' AND interval '3 s'"),
	'rate_limited|2|429|20429|f|t',
	'the 429 attempt: rate_limited, Retry-After kept raw, delay 2 s plus up to 1 s jitter');

# --- 429 without Retry-After ------------------------------------------------
my $b = '+14155550301';
$standin->script($b, { status => 429 }, { status => 201 });
OutboxTest::enqueue_to($node, $b);
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$b'",
	'429 without Retry-After then 201: sent');
is(scalar @{ $standin->requests(to => $b) }, 2, 'two requests');
is(OutboxTest::message_row($node, $b, 'attempts, failures'), '2|0', 'not charged');
is(first_attempt($b, 'a.outcome, a.retry_after IS NULL, a.delay > interval 0'),
	'rate_limited|t|t', 'rate_limited, no Retry-After, a delay of its own');

# --- the pause is the account's: another message waits for it too ----------
my $c = '+14155550302';
my $d = '+14155550303';
$standin->script($c, { status => 429, retry_after => '3' }, { status => 201 });
OutboxTest::enqueue_to($node, $c);
OutboxTest::wait_until($node, rate_limited_recorded($c), 'Retry-After 3: 429 recorded');
my $paused_until = OutboxTest::query($node,
	"SELECT extract(epoch FROM paused_until) FROM twilio_outbox.accounts WHERE name = 'main'");
OutboxTest::enqueue_to($node, $d);
OutboxTest::wait_until($node,
	"SELECT count(*) = 2 FROM twilio_outbox.messages WHERE to_number IN ('$c', '$d') AND state = 'sent'",
	'both messages sent after the pause');
my $c_reqs = $standin->requests(to => $c);
my $d_reqs = $standin->requests(to => $d);
is(scalar @$d_reqs, 1, 'the other message was sent once');
if (@$d_reqs && @$c_reqs)
{
	ok($d_reqs->[0]{t} >= $c_reqs->[0]{t} + 3.0,
		sprintf('the other message went out %.3f s after the 429 (Retry-After: 3)',
			$d_reqs->[0]{t} - $c_reqs->[0]{t}));
	ok($d_reqs->[0]{t} >= $paused_until - 0.01,
		sprintf('and not before the account paused_until (%.3f s after it)',
			$d_reqs->[0]{t} - $paused_until));
}
is(OutboxTest::message_row($node, $d, 'attempts, failures'), '1|0',
	'the other message: one attempt, no rate-limited attempt of its own');

$node->stop;
$standin->stop;
done_testing();
