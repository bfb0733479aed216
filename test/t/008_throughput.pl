# Throughput control: a token bucket per sender (in segments), a concurrency
# cap per account that a 429 halves, a pause on 429 that holds only its
# account, rate changes taken up at once, and fairness between senders.
# Behaviour, not speed: every assertion compares the dispatcher with its own
# settings or with itself.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('throughput');
OutboxTest::add_account($node, $standin);
my $base = $standin->base_url;
OutboxTest::query($node, qq{
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate, burst)
		VALUES ('main', '+15005550011', 'long_code', 4, 4),
		       ('main', '+15005550012', 'long_code', 2, NULL),
		       ('main', '+15005550013', 'long_code', 2, NULL),
		       ('main', '+15005550014', 'long_code', 1, NULL);
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, max_concurrency)
		VALUES ('second', 'AC' || repeat('1', 32), '$base', 25);
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('second', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate, is_default)
		VALUES ('second', '+15005550021', 'short_code', 'Infinity', true);
});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# Arrival times (and segments) of the requests from one sender.
sub arrivals
{
	my ($from) = @_;
	return [ map { [ $_->{t}, length($_->{form}{Body}[0]) > 160 ? 2 : 1 ] }
		  grep { $_->{form}{From}[0] eq $from } @{ $standin->requests } ];
}

sub all_final
{
	my ($what) = @_;
	OutboxTest::wait_until($node,
		"SELECT count(*) = 0 FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')",
		$what);
}

# ---------- the bucket: never more than rate x time + burst ----------
# 16 one-segment and 4 two-segment messages: 24 segments at 4 a second,
# burst 4.
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415555' || lpad(n::text, 4, '0'),
		CASE WHEN n % 5 = 0 THEN repeat('x', 200) ELSE 'one segment' END,
		from_number => '+15005550011')
	FROM generate_series(1, 20) n});
all_final('the bucket test drained');
my $bucket = arrivals('+15005550011');
is(scalar @$bucket, 20, 'all 20 requests of the rate-4 sender arrived');
my ($worst, $worst_at) = (0, '');
for my $i (0 .. $#$bucket)
{
	my $segments = 0;
	for my $j ($i .. $#$bucket)
	{
		$segments += $bucket->[$j][1];
		# 50 ms of slack for the time between our claim and its arrival
		my $allowed = 4 * ($bucket->[$j][0] - $bucket->[$i][0] + 0.05) + 4;
		my $excess = $segments - $allowed;
		($worst, $worst_at) = ($excess, "requests $i..$j") if $excess > $worst;
	}
}
ok($worst <= 0, 'in every window, segments sent <= rate x window + burst')
  or diag("exceeded by $worst segments over $worst_at");
my $span = $bucket->[-1][0] - $bucket->[0][0];
ok($span >= (24 - 4) / 4 * 0.9,
	sprintf('24 segments at 4/s with burst 4 take their time (%.1f s)', $span));

# ---------- fairness: a big backlog does not starve another sender ----------
# Sender 12 has 30 messages queued first; sender 13 (same rate) gets one
# after: it goes out long before sender 12's backlog is through.
$standin->reset;
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415556' || lpad(n::text, 4, '0'), 'backlog', from_number => '+15005550012')
	FROM generate_series(1, 30) n});
OutboxTest::query($node, q{SELECT twilio_enqueue('+14155570001', 'me too', from_number => '+15005550013')});
$standin->wait_requests(1, to => '+14155570001', timeout => 30);
my $big = arrivals('+15005550012');
my $small = arrivals('+15005550013');
is(scalar @$small, 1, 'the other sender was served');
ok(scalar(@$big) < 15,
	sprintf('while the big backlog was still draining (%d of 30 sent)', scalar @$big));
# Within one account: concurrency 1, both senders unlimited, a slow Twilio.
OutboxTest::query($node, q{
	UPDATE twilio_outbox.senders SET rate = 'Infinity' WHERE from_number IN ('+15005550012', '+15005550013');
	UPDATE twilio_outbox.accounts SET max_concurrency = 1 WHERE name = 'main'});
all_final('the backlog drained');
$standin->reset;
$standin->steady({ status => 201, delay => 0.1 });
sleep 1.5;    # the dispatcher sees the new settings within a second
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415558' || lpad(n::text, 4, '0'), 'backlog', from_number => '+15005550012')
	FROM generate_series(1, 20) n});
OutboxTest::query($node, q{SELECT twilio_enqueue('+14155590001', 'me too', from_number => '+15005550013')});
all_final('the account drained');
my @order = map { $_->{form}{From}[0] } @{ $standin->requests };
my ($pos) = grep { $order[$_] eq '+15005550013' } 0 .. $#order;
ok(defined $pos && $pos <= 3,
	'an account shares its room round-robin: the other sender\'s message went out among the first'
	  . (defined $pos ? " (position $pos of " . scalar(@order) . ")" : ''));
$standin->steady({ status => 201 });
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET max_concurrency = 25 WHERE name = 'main'});

# ---------- a rate change is taken up without a restart ----------
$standin->reset;
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415560' || lpad(n::text, 4, '0'), 'slow then fast', from_number => '+15005550014')
	FROM generate_series(1, 30) n});
$standin->wait_requests(4, timeout => 30);
OutboxTest::query($node, q{UPDATE twilio_outbox.senders SET rate = 50, burst = 1 WHERE from_number = '+15005550014'});
all_final('the changed sender drained');
my @t = map { $_->[0] } @{ arrivals('+15005550014') };
is(scalar @t, 30, 'all 30 sent');
my @gaps = map { $t[$_] - $t[ $_ - 1 ] } 1 .. $#t;
my @early = sort { $a <=> $b } @gaps[ 1 .. 2 ];
my @late = sort { $a <=> $b } @gaps[ -10 .. -1 ];
ok($late[5] * 5 < $early[0],
	sprintf('after the change the gaps shrank (before %.2f s, after %.3f s)', $early[0], $late[5]));

# ---------- a 429 pauses its account only, and halves its cap ----------
$standin->reset;
$standin->script('+14155561000', { status => 429, retry_after => '3' });
OutboxTest::query($node, q{SELECT twilio_enqueue('+14155561000', 'limited')});
$standin->wait_requests(1, to => '+14155561000', timeout => 30);
OutboxTest::wait_until($node,
	q{SELECT paused_until > now() FROM twilio_outbox.accounts WHERE name = 'main'},
	'the 429 paused account main');
my $paused_at = $standin->requests(to => '+14155561000')->[0]{t};
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415556' || n, 'main, paused', account => 'main')
	FROM generate_series(2001, 2003) n;
	SELECT twilio_enqueue('+1415557' || n, 'second, not paused', account => 'second')
	FROM generate_series(2001, 2003) n});
all_final('both accounts drained');
my @second = map { $_->{t} } grep { $_->{form}{From}[0] eq '+15005550021' } @{ $standin->requests };
my @main = map { $_->{t} } grep { $_->{form}{To}[0] =~ /^\+14155562/ } @{ $standin->requests };
is(scalar @second, 3, 'account second sent its three');
ok((grep { $_ - $paused_at < 3 } @second) == 3, 'account second sent during main\'s pause');
ok((grep { $_ - $paused_at >= 3 } @main) == 3, 'account main sent nothing before Retry-After');
my $cap = OutboxTest::query($node,
	q{SELECT current_cap < max_concurrency FROM twilio_outbox.worker_accounts WHERE account = 'main'});
is($cap, 't', 'the 429 lowered main\'s concurrency cap (twilio_outbox.worker_accounts)');

$node->stop;
$standin->stop;
done_testing();
