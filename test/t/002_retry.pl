# Retries: exponential backoff with jitter on 5xx, the attempt budget, the
# same idempotency key on every attempt, ambiguous outcomes (5xx, timeout
# after sending, connection reset) and the on_ambiguous = hold policy.
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
# This file is about the retry and hold policies: on_ambiguous = reconcile
# (the default) is 025_reconcile.pl's.
my $node = OutboxTest::node('retry', "twilio_outbox.on_ambiguous = retry\n");
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# One line per attempt row of the message to $to, in attempt order.
sub attempts_of
{
	my ($to, $cols) = @_;
	return OutboxTest::query($node, qq{
		SELECT $cols FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$to' ORDER BY a.attempt});
}

# The same, joined with commas.
sub attempt_list
{
	my ($to, $cols) = @_;
	return join(',', split(/\n/, attempts_of($to, $cols)));
}

# --- five 500s: dead after exactly five requests, with growing gaps --------
my $dead = '+14155550200';
$standin->script($dead, ({ status => 500 }) x 5, { status => 201 });
OutboxTest::enqueue_to($node, $dead);
OutboxTest::wait_until($node,
	"SELECT state = 'dead' FROM twilio_outbox.messages WHERE to_number = '$dead'",
	'five 500s: the message is dead');
sleep 1;    # a sixth request, if any, would show up now
my $reqs = $standin->requests(to => $dead);
is(scalar @$reqs, 5, 'exactly five requests, none after the budget is spent');
is(OutboxTest::message_row($node, $dead,
		'attempts, failures, ambiguous_attempts, last_http_status'),
	'5|5|5|500', 'attempts, failures and ambiguous attempts all 5, last status 500');
is(OutboxTest::query($node, qq{
		SELECT d.reason, d.http_status, d.attempts FROM twilio_outbox.dead_letters d
		JOIN twilio_outbox.messages m ON m.id = d.message_id WHERE m.to_number = '$dead'}),
	'attempts_exhausted|500|5', 'dead letter: attempts_exhausted after 5 attempts');

for my $i (1 .. 4)
{
	last unless @$reqs >= $i + 1;
	my $gap = $reqs->[$i]{t} - $reqs->[ $i - 1 ]{t};
	my $nominal = 0.3 * 2**($i - 1);
	my ($lo, $hi) = (0.8 * $nominal - 0.05, 1.2 * $nominal + 1.5);
	ok($gap >= $lo && $gap <= $hi,
		sprintf('gap %d is %.3f s, within [%.3f, %.3f]', $i, $gap, $lo, $hi))
	  or diag('delays recorded in twilio_outbox.attempt_rows: '
		  . attempt_list($dead, "coalesce(round(extract(epoch FROM a.delay), 3)::text, '-')"));
}

# Same key on every attempt, the stored one; attempts numbered 1..5.
my $key = OutboxTest::message_row($node, $dead, 'idempotency_key');
is_deeply([ map { $_->{headers}{'idempotency-key'} // '' } @$reqs ],
	[ ($key) x 5 ], 'every attempt carries the stored Idempotency-Key');
is(attempt_list($dead, "a.attempt || ':' || a.outcome || ':' || a.ambiguous"),
	'1:retry:true,2:retry:true,3:retry:true,4:retry:true,5:dead:true',
	'attempt rows 1..5: four retries then dead, all ambiguous (5xx)');
is(attempt_list($dead, "a.http_status || '/' || a.twilio_code"),
	join(',', ('500/20500') x 5), 'every attempt row has HTTP 500 and code 20500');
is(attempt_list($dead, "CASE WHEN a.delay IS NULL THEN 'null' ELSE 'set' END"),
	'set,set,set,set,null', 'a retry delay is recorded on each retry, none on the last');

# --- ambiguous outcomes that end in a send ---------------------------------
my %case = (
	'+14155550201' => [ '503', { status => 503 } ],
	'+14155550202' => [ 'hang', { hang => 5 } ],
	'+14155550203' => [ 'reset', { reset => 1 } ],
);
for my $to (sort keys %case)
{
	$standin->script($to, $case{$to}[1], { status => 201 });
	OutboxTest::enqueue_to($node, $to);
}
for my $to (sort keys %case)
{
	my $what = $case{$to}[0];
	OutboxTest::wait_until($node,
		"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$to'",
		"$what then 201: sent");
	is(scalar @{ $standin->requests(to => $to) }, 2, "$what then 201: two requests");
	is(OutboxTest::message_row($node, $to,
			"attempts, failures, ambiguous_attempts, twilio_sid ~ '^SM[0-9a-f]{32}\$'"),
		'2|1|1|t', "$what then 201: 2 attempts, 1 charged, 1 ambiguous, SID kept");
	is(attempt_list($to, "a.attempt || ':' || a.outcome || ':' || a.ambiguous"),
		'1:retry:true,2:sent:false', "$what then 201: attempt 1 ambiguous retry, attempt 2 sent");
	my $keys = $standin->requests(to => $to);
	is($keys->[0]{headers}{'idempotency-key'}, $keys->[1]{headers}{'idempotency-key'},
		"$what then 201: the retry carries the same key");
}
is(attempts_of('+14155550201', 'a.http_status'), "503\n201",
	'503 recorded with its status');
my $hang = attempts_of('+14155550202',
	"a.http_status IS NULL, a.transport_error <> '', a.duration_ms BETWEEN 1500 AND 4000");
is((split /\n/, $hang)[0], 't|t|t',
	'hang: no status, a transport error, cut at about the 2 s timeout');
is((split /\n/, attempts_of('+14155550203',
		"a.http_status IS NULL AND a.transport_error <> ''"))[0],
	't', 'reset: no status, a transport error');

# --- 201 with a malformed body: sent, never resent --------------------------
my $mal = '+14155550204';
$standin->script($mal, { malformed => 1 }, { status => 201 });
OutboxTest::enqueue_to($node, $mal);
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$mal'",
	'malformed 201: sent');
sleep 1.5;
is(scalar @{ $standin->requests(to => $mal) }, 1, 'malformed 201: one request, never resent');
is(OutboxTest::message_row($node, $mal,
		"state, twilio_sid IS NULL, attempts, failures, last_error_message <> ''"),
	'sent|t|1|0|t', 'malformed 201: sent, no SID, not charged, explained');

# --- on_ambiguous = hold: a 500 parks the message ----------------------------
OutboxTest::query($node, q{
	ALTER SYSTEM SET twilio_outbox.on_ambiguous = 'hold';
	SELECT pg_reload_conf();
});
sleep 1;    # the dispatcher rereads the configuration on its next loop
my $held = '+14155550205';
$standin->script($held, { status => 500 }, { status => 201 });
OutboxTest::enqueue_to($node, $held);
OutboxTest::wait_until($node,
	"SELECT state = 'ambiguous' FROM twilio_outbox.messages WHERE to_number = '$held'",
	'hold: a 500 leaves the message ambiguous');
sleep 1.5;
is(scalar @{ $standin->requests(to => $held) }, 1, 'hold: one request only');
is(attempts_of($held, 'a.outcome, a.ambiguous'), 'held|t', 'hold: the attempt is held and ambiguous');
is(OutboxTest::message_row($node, $held, 'ambiguous_attempts, next_attempt_at IS NOT NULL'),
	'1|t', 'hold: ambiguous_attempts counted');

$node->stop;
$standin->stop;
done_testing();
