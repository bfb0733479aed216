# Two dispatchers per database (twilio_outbox.dispatchers_per_database = 2):
# each sends for its own senders (id modulo 2), every message goes out
# exactly once, an account's max_concurrency holds across both (counted at
# the stand-in, which answers slowly), a sender's rate holds, a 429 pauses
# the account for both, a dispatcher
# that starts never takes back the rows another live one has in flight, and
# after a kill -9 the rows left in flight are taken back as they always were.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

# How far the busiest window of the sorted times @$t exceeds
# rate x (window + slack) + burst (0: never): the bound a token bucket of
# that rate and burst keeps, slack covering the time between a claim and
# its arrival.
sub worst_excess
{
	my ($t, $rate, $burst, $slack) = @_;
	my $worst = 0;
	for my $i (0 .. $#$t)
	{
		for my $j ($i + 1 .. $#$t)
		{
			my $excess = ($j - $i + 1) - ($rate * ($t->[$j] - $t->[$i] + $slack) + $burst);
			$worst = $excess if $excess > $worst;
		}
	}
	return $worst;
}

my $standin = TwilioStandIn->start;
# restart_after_crash: the kill -9 below (PostgreSQL::Test::Cluster turns it off).
# A request timeout long enough that a hanging request stays in flight
# through the middle part.
my $node = OutboxTest::node('dispatchers', <<'CONF');
twilio_outbox.dispatchers_per_database = 2
restart_after_crash = on
twilio_outbox.request_timeout = '60s'
CONF
OutboxTest::add_account($node, $standin, max_concurrency => 3);
# Senders 2..4 beside the default one (id 1): ids 1 and 3 are dispatcher 1's,
# 2 and 4 dispatcher 0's.
OutboxTest::query($node, q{
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
	SELECT 'main', '+1500555001' || n, 'long_code', 'Infinity' FROM generate_series(2, 4) n});
is(OutboxTest::query($node, q{
		SELECT string_agg(id || ':' || from_number, ',' ORDER BY id) FROM twilio_outbox.senders}),
	'1:+15005550006,2:+15005550012,3:+15005550013,4:+15005550014',
	'four senders, ids 1 to 4');

my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, "start_worker() returns the first dispatcher's pid ($pid)");
OutboxTest::wait_until($node,
	q{SELECT count(*) = 2 FROM twilio_outbox.worker_dispatchers WHERE running},
	'start_worker() starts both dispatchers');
is(OutboxTest::query($node, q{
		SELECT running || '|' || dispatchers || '|' || dispatchers_running FROM twilio_outbox.worker}),
	'true|2|2', 'the worker view: one row, running, 2 of 2 dispatchers');
is(OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()'), $pid,
	'start_worker() again starts nothing more');

my %pid_of = map { split /\|/ } split /\n/,
  OutboxTest::query($node, q{SELECT dispatcher, pid FROM twilio_outbox.worker_dispatchers});

# ---------- exactly once, concurrency shared, partition kept ----------
# A slow Twilio: three requests at most in flight for account main overall,
# though each dispatcher alone would allow three.
$standin->steady({ status => 201, delay => 0.3 });
my $N = 40;
OutboxTest::query($node, qq{
	SELECT count(twilio_enqueue('+141555520' || lpad(i::text, 2, '0'), 'two ' || i,
		from_number => (ARRAY['+15005550006', '+15005550012', '+15005550013', '+15005550014'])[1 + i % 4]))
	FROM generate_series(1, $N) i});
# (polled in the database: a poll of the stand-in would count as a request in flight)
OutboxTest::wait_until($node,
	qq{SELECT count(*) = $N FROM twilio_outbox.messages WHERE state = 'sent'},
	"all $N sent");
my $reqs = $standin->requests;
my %per_key;
$per_key{ $_->{headers}{'idempotency-key'} // '' }++ for @$reqs;
is(scalar @$reqs, $N, "the stand-in got $N requests");
is(scalar(grep { $_ == 1 } values %per_key), $N, 'one request per message (idempotency key)');
my $peak = OutboxTest::query($node, q{
	SELECT max(concurrent_requests) FROM twilio_outbox.attempt_rows});
ok($peak <= 3, "at most max_concurrency (3) requests in flight at the stand-in (peak $peak)");
is(OutboxTest::query($node, q{
		SELECT count(DISTINCT a.worker_pid) FROM twilio_outbox.attempt_rows a}),
	'2', 'both dispatchers sent');
is(OutboxTest::query($node, qq{
		SELECT count(*) FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE a.worker_pid <> CASE m.sender_id % 2 WHEN 0 THEN $pid_of{0} ELSE $pid_of{1} END}),
	'0', 'each dispatcher sent only for its own senders (id modulo 2)');
is(OutboxTest::query($node, q{
		SELECT string_agg(dispatcher || ':' || senders || ':' || sent_since_start, ',' ORDER BY dispatcher)
		FROM twilio_outbox.worker_dispatchers}),
	'0:2:20,1:2:20', 'worker_dispatchers: two senders and 20 messages each');
is(OutboxTest::query($node, q{SELECT sent_since_start FROM twilio_outbox.worker}),
	$N, 'the worker view sums what they sent');

# ---------- a sender's rate holds ----------
# Sender 3 (dispatcher 1's) at 4 segments/s, burst 1.
$standin->reset;
OutboxTest::query($node, q{
	UPDATE twilio_outbox.senders SET rate = 4, burst = 1 WHERE id = 3});
sleep 1.5;    # every dispatcher reads the senders again within a second
OutboxTest::query($node, q{
	SELECT count(twilio_enqueue('+141555530' || lpad(i::text, 2, '0'), 'rate ' || i,
		from_number => '+15005550013'))
	FROM generate_series(1, 8) i});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 48 FROM twilio_outbox.messages WHERE state = 'sent'},
	'the rated sender drained');
my @t = sort { $a <=> $b } map { $_->{t} } @{ $standin->requests };
is(scalar @t, 8, 'eight requests of the rated sender');
# 50 ms of slack for the time between a claim and its arrival
my $worst = worst_excess(\@t, 4, 1, 0.05);
ok($worst <= 0, 'in every window, requests <= rate x window + burst')
  or diag("exceeded by $worst");

# ---------- a starting dispatcher spares the other's requests in flight ----------
# Requests of dispatcher 0's senders hang; dispatcher 1 has nothing in flight,
# stops, and starts again: its start must not take those rows back.
$standin->reset;
$standin->steady({ hang => 120 });
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET max_concurrency = 10 WHERE name = 'main'});
sleep 1.5;    # both dispatchers see the new max_concurrency
OutboxTest::query($node, q{
	SELECT count(twilio_enqueue('+141555540' || i, 'hang ' || i,
		from_number => CASE WHEN i % 2 = 0 THEN '+15005550012' ELSE '+15005550014' END))
	FROM generate_series(1, 4) i});
OutboxTest::wait_until($node,
	qq{SELECT count(*) = 4 FROM twilio_outbox.messages WHERE state = 'sending' AND worker_pid = $pid_of{0}},
	'dispatcher 0 has the four in flight');
$standin->wait_requests(4, timeout => 30);

OutboxTest::query($node, "SELECT pg_terminate_backend($pid_of{1})");
OutboxTest::wait_until($node,
	q{SELECT NOT running FROM twilio_outbox.worker_dispatchers WHERE dispatcher = 1},
	'dispatcher 1 stopped');
is(OutboxTest::query($node, q{SELECT running || '|' || dispatchers_running FROM twilio_outbox.worker}),
	'false|1', 'the worker view: not all running, 1 of 2');
my $log_offset = -s $node->logfile;
is(OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()'), $pid_of{0},
	'start_worker() starts the missing one, returns the first one\'s pid');
ok($node->wait_for_log(qr/twilio_outbox dispatcher 1 of 2 started/, $log_offset),
	'dispatcher 1 started again');
my $new1 = OutboxTest::query($node,
	q{SELECT pid FROM twilio_outbox.worker_dispatchers WHERE dispatcher = 1});
# its start (the take-back included) is committed once it is idle or waiting
OutboxTest::wait_until($node,
	qq{SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $new1},
	'the new dispatcher 1 finished its start');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.attempt_rows WHERE outcome = 'lost'}),
	'0', 'it took back none of dispatcher 0\'s rows');
is(OutboxTest::query($node,
		qq{SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sending' AND worker_pid = $pid_of{0}}),
	'4', 'they are still dispatcher 0\'s, in flight');
is(scalar @{ $standin->requests }, 4, 'and were requested once each');

# ---------- kill -9 mid-flight: taken back as always ----------
$log_offset = -s $node->logfile;
ok(kill('KILL', $pid_of{0}), 'kill -9 dispatcher 0 with four requests in flight');
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
	'the postmaster restarts after the crash');
ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'),
	'the server accepts queries again');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sending'}),
	'4', 'the four are left in sending');
$standin->steady({ status => 201 });
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 52 FROM twilio_outbox.messages WHERE state = 'sent'},
	'all sent after the restart');
is(OutboxTest::query($node, q{
		SELECT count(*) || '|' || count(DISTINCT message_id) FROM twilio_outbox.attempt_rows
		WHERE outcome = 'lost' AND ambiguous}),
	'4|4', 'one lost, ambiguous attempt each: taken back once');
my %keys;
$keys{ $_->{headers}{'idempotency-key'} // '' }++ for @{ $standin->requests };
is(join(',', sort values %keys), '2,2,2,2',
	'each was requested again once, with its idempotency key');

# ---------- a 429 pauses the account for both dispatchers ----------
# (After the restart: a 429 halves the cap of the dispatcher that got it,
# which the part above must not inherit.)  The 429 comes to a message of
# sender 2 (dispatcher 0's); messages of
# sender 3 (dispatcher 1's) enqueued once the pause is published wait for
# Retry-After too.
$standin->reset;
$standin->script('+14155550500', { status => 429, retry_after => '3' });
OutboxTest::query($node,
	q{SELECT twilio_enqueue('+14155550500', 'limited', from_number => '+15005550012')});
OutboxTest::wait_until($node,
	q{SELECT paused_until IS NOT NULL FROM twilio_outbox.worker_accounts WHERE account = 'main'},
	'the 429 paused account main in dispatcher 0');
my $paused_at = $standin->requests(to => '+14155550500')->[0]{t};
OutboxTest::query($node, q{
	SELECT count(twilio_enqueue('+141555506' || i, 'paused', from_number => '+15005550013'))
	FROM generate_series(10, 12) i});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 56 FROM twilio_outbox.messages WHERE state = 'sent'},
	'all sent after the pause');
my @other = map { $_->{t} } grep { $_->{form}{From}[0] eq '+15005550013' } @{ $standin->requests };
is(scalar @other, 3, 'dispatcher 1 sent its three');
is(scalar(grep { $_ - $paused_at < 3 } @other), 0,
	'dispatcher 1 sent nothing for the paused account before Retry-After');

# ---------- lookups_per_second holds for both together ----------
# Both dispatchers look up for every account: polls of 24 sent messages of
# account second (senders of both dispatchers) at lookups_per_second = 4
# must reach the stand-in at 4 a second and a burst of 4 over both, not 4
# each.
OutboxTest::query($node, qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, max_concurrency)
		SELECT 'second', account_sid, base_url, 10 FROM twilio_outbox.accounts WHERE name = 'main';
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('second', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
		VALUES ('second', '+15005550021', 'long_code', 'Infinity'),
		       ('second', '+15005550022', 'long_code', 'Infinity')});
is(OutboxTest::query($node, q{
		SELECT string_agg(DISTINCT (id % 2)::text, ',') FROM twilio_outbox.senders WHERE account = 'second'}),
	'0,1', "account second's senders belong to both dispatchers");
OutboxTest::query($node, 'SELECT twilio_outbox.wake_worker()');
sleep 1.5;    # every dispatcher reads the accounts and senders again within a second
OutboxTest::query($node, q{
	SELECT count(twilio_enqueue('+141555507' || lpad(i::text, 2, '0'), 'polled ' || i, account => 'second',
		from_number => CASE WHEN i % 2 = 0 THEN '+15005550021' ELSE '+15005550022' END))
	FROM generate_series(1, 24) i});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 24 FROM twilio_outbox.messages WHERE account = 'second' AND state = 'sent'},
	"account second's 24 sent");
is(OutboxTest::query($node, q{
		SELECT count(DISTINCT a.worker_pid) FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.account = 'second'}),
	'2', 'by both dispatchers');
$standin->message_status($_, 'delivered') for split /\n/, OutboxTest::query($node,
	q{SELECT twilio_sid FROM twilio_outbox.messages WHERE account = 'second'});
my $lookups_before = scalar @{ $standin->lookups };
OutboxTest::query($node, q{
	UPDATE twilio_outbox.accounts SET poll_after = '1 second', lookups_per_second = 4 WHERE name = 'second'});
OutboxTest::query($node, 'SELECT twilio_outbox.wake_worker()');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 24 FROM twilio_outbox.messages WHERE account = 'second' AND state = 'delivered'},
	'all 24 polled and delivered');
my @gets = @{ $standin->lookups };
@gets = @gets[$lookups_before .. $#gets];
is(scalar @gets, 24, 'one GET each');
my @gt = sort { $a <=> $b } map { $_->{t} } @gets;
# a lookup is counted when claimed, a little before it arrives: 0.25 s of slack
my $lworst = worst_excess(\@gt, 4, 4, 0.25);
ok($lworst <= 0, sprintf('in every window, lookups <= lookups_per_second (4) x window + 4 over both dispatchers (%d in %.1f s)',
		scalar @gt, $gt[-1] - $gt[0]))
  or diag("exceeded by $lworst");

# ---------- calls_per_second holds for both together ----------
# Eight SMS refused (21211), each falling back to a voice call from its own
# sender: the calls of both dispatchers together start at most
# calls_per_second (2) a second, with a burst of 2, not 2 each.
OutboxTest::query($node, q{
	UPDATE twilio_outbox.accounts SET poll_after = NULL, calls_per_second = 2 WHERE name = 'second'});
OutboxTest::query($node, 'SELECT twilio_outbox.wake_worker()');
sleep 1.5;    # every dispatcher reads the accounts again within a second
my @callees = map { sprintf('+14155508%02d', $_) } 1 .. 8;
$standin->script($_, { status => 400, code => 21211 }) for @callees;
OutboxTest::query($node, join(';', map {
	sprintf(q{SELECT twilio_enqueue('%s', 'call %d', account => 'second', from_number => '%s',
		fallback => '[{"channel": "voice"}]')}, $callees[$_], $_, $_ % 2 ? '+15005550021' : '+15005550022')
} 0 .. $#callees));
OutboxTest::wait_until($node,
	q{SELECT count(*) = 8 FROM twilio_outbox.messages WHERE account = 'second' AND channel = 'voice' AND state = 'sent'},
	'the eight calls made');
my %callee = map { $_ => 1 } @callees;
my @calls = grep { $callee{ $_->{form}{To}[0] // '' } && $_->{path} =~ m{/Calls\.json$} } @{ $standin->requests };
is(scalar @calls, 8, 'eight requests to Calls.json');
is(scalar(keys %{ { map { $_->{form}{From}[0] => 1 } @calls } }), 2, 'from both senders, so both dispatchers');
my @ct = sort { $a <=> $b } map { $_->{t} } @calls;
my $cworst = worst_excess(\@ct, 2, 2, 0.25);
ok($cworst <= 0, sprintf('in every window, calls <= calls_per_second (2) x window + 2 over both dispatchers (%d in %.1f s)',
		scalar @ct, $ct[-1] - $ct[0]))
  or diag("exceeded by $cworst");

# ---------- stop_worker stops both ----------
is(OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()'), 't', 'stop_worker()');
is(OutboxTest::query($node, q{
		SELECT count(*) FILTER (WHERE running) FROM twilio_outbox.worker_dispatchers}),
	'0', 'both stopped');

$node->stop;
$standin->stop;
done_testing();
