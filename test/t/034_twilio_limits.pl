# Staying under Twilio's limits (issue 12): a Messaging Service sender
# without a rate sends at its pool's throughput, and
# Twilio-Concurrent-Requests slows an account down before Twilio's
# concurrency limit answers 429.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('limits');
OutboxTest::add_account($node, $standin, max_concurrency => 10);
my $service = 'MG' . ('0123456789abcdef' x 2);

# --- the pool's rate ---------------------------------------------------------
# One long code (1/s) and one toll-free number (3/s): 4 segments a second.
OutboxTest::query($node, qq{
	INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind, pool_long_codes, pool_toll_free)
		VALUES ('main', '$service', 'messaging_service', 1, 1)});
is(OutboxTest::query($node, qq{
	SELECT effective_rate, rate_source FROM twilio_outbox.sender_rates
	WHERE messaging_service_sid = '$service'}),
	'4|pool', 'the service\'s rate is its pool\'s: 1 long code + 1 toll-free = 4/s');

# Twilio's own bucket for the service, a little looser than ours, so that
# only a dispatcher ignoring the pool gets 429s from it.
$standin->config({ rates => { $service => 5 }, burst => 2 });
my $n = 16;
OutboxTest::query($node, qq{
	SELECT twilio_enqueue('+1415555' || lpad(i::text, 4, '0'), 'pool ' || i,
		messaging_service_sid => '$service')
	FROM generate_series(1, $n) i});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	qq{SELECT count(*) = $n FROM twilio_outbox.messages WHERE messaging_service_sid = '$service' AND state = 'sent'},
	'every message of the service is sent');
is(OutboxTest::query($node, qq{
	SELECT count(*) FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.messaging_service_sid = '$service' AND a.outcome <> 'sent'}),
	'0', 'no attempt of the service was refused (no 429 from the pool\'s bucket)');

# Its token bucket (4/s, burst 1): between any two requests i < j, at most
# 4 x (t_j - t_i) + 1 requests; a small allowance for the stand-in's clock.
my @t = sort { $a <=> $b } map { $_->{t} } grep {
	($_->{form}{MessagingServiceSid} // [''])->[0] eq $service
} @{ $standin->requests };
is(scalar @t, $n, "$n requests through the service");
my $worst = 0;
for my $i (0 .. $#t)
{
	for my $j ($i + 1 .. $#t)
	{
		my $excess = ($j - $i + 1) - (4 * ($t[$j] - $t[$i]) + 1);
		$worst = $excess if $excess > $worst;
	}
}
ok($worst <= 1, "no window let more than 4/s x its length + the burst through (worst excess $worst)");
ok($t[-1] - $t[0] >= ($n - 1 - 1) / 4 - 0.1,
	sprintf('%d requests took %.2f s: paced by the pool, not all at once', $n, $t[-1] - $t[0]));

# Editable: a short code more is 100/s more; an explicit rate wins.
OutboxTest::query($node, qq{UPDATE twilio_outbox.senders SET pool_short_codes = 1 WHERE messaging_service_sid = '$service'});
is(OutboxTest::query($node, qq{SELECT effective_rate FROM twilio_outbox.sender_rates WHERE messaging_service_sid = '$service'}),
	'104', 'a short code added to the pool: 104/s');
OutboxTest::query($node, qq{UPDATE twilio_outbox.senders SET rate = 2 WHERE messaging_service_sid = '$service'});
is(OutboxTest::query($node, qq{SELECT effective_rate, rate_source FROM twilio_outbox.sender_rates WHERE messaging_service_sid = '$service'}),
	'2|configured', 'an explicit rate wins over the pool');

# --- Twilio-Concurrent-Requests ------------------------------------------------
# Twilio's limit for the account is 10; the dispatcher may have 10 in flight
# (max_concurrency), and keeps what Twilio reports at or under 8 (80%).
# Every answer takes 0.4 s, so requests pile up to the cap.
$standin->reset;
$standin->steady({ status => 201, delay => 0.4 });
$standin->concurrency(0, 10);
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET twilio_concurrency_limit = 10 WHERE name = 'main'});
# the worker reads accounts about once a second
sleep 2;

my $round = 0;
my $sent = 0;

# Enqueue $count messages on the long code and wait until they are sent;
# returns the stand-in's records of them.
sub wave
{
	my ($count) = @_;
	$round++;
	OutboxTest::query($node, qq{
		SELECT twilio_enqueue('+1650555' || lpad(i::text, 4, '0'), 'wave $round')
		FROM generate_series(1, $count) i});
	$sent += $count;
	OutboxTest::wait_until($node,
		qq{SELECT count(*) = $sent FROM twilio_outbox.messages WHERE to_number LIKE '+1650555%' AND state = 'sent'},
		"wave $round: all $count sent");
	return [ grep { ($_->{form}{Body} // [''])->[0] eq "wave $round" } @{ $standin->requests } ];
}

sub most
{
	my ($reqs, $skip) = @_;
	my @c = map { $_->{concurrent} } sort { $a->{seq} <=> $b->{seq} } @$reqs;
	splice(@c, 0, $skip);
	my ($max) = sort { $b <=> $a } @c;
	return $max // -1;
}

# Alone: the first 10 go out at once (Twilio reports up to 10); from the
# answers on, at most 8.
my $w = wave(40);
is(most($w, 0), 10, 'alone: the first requests fill max_concurrency (10 in flight at Twilio)');
ok(most($w, 12) <= 8, 'alone: once Twilio reported more than 80% of its limit, at most 8 in flight (' . most($w, 12) . ')');

# Other clients of the account take 2, then 4, then 6 of Twilio's 10: each
# time the dispatcher's share comes down by as much, and Twilio never has
# more than its limit (the stand-in would answer 429).
for my $others (2, 4, 6)
{
	$standin->concurrency($others, 10);
	my $reqs = wave(30);
	my $ours = most($reqs, 12) - $others;
	ok($ours <= 8 - $others,
		"others take $others: ours come down to at most " . (8 - $others) . " (saw $ours)");
}
is(OutboxTest::query($node, q{
	SELECT count(*) FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.to_number LIKE '+1650555%' AND a.outcome = 'rate_limited'}),
	'0', 'Twilio never answered 429: the header slowed the account first');
ok(OutboxTest::query($node, q{
	SELECT count(*) > 0 FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.to_number LIKE '+1650555%' AND a.concurrent_requests >= 8}) eq 't',
	'the reported counts are recorded per attempt');
is(OutboxTest::query($node, q{SELECT current_cap FROM twilio_outbox.worker_accounts WHERE account = 'main'}),
	'2', 'worker_accounts shows the cap brought down to 2 (8 less the others\' 6)');

# The others leave: the cap grows back, one step per cap's worth of answers.
$standin->concurrency(0, 10);
my $back = wave(60);
ok(most($back, 40) > 2, 'the others gone, the cap grows again (' . most($back, 40) . ' in flight)');
ok(most($back, 0) <= 8, 'and still never above 80% of the limit (' . most($back, 0) . ')');

$node->stop;
$standin->stop;
done_testing();
