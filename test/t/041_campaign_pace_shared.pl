# A campaign's pace holds for the sum of its database's dispatchers
# (twilio_outbox.dispatchers_per_database = 2): its token bucket lives in
# shared memory, so a campaign whose messages go from senders of both
# dispatchers is sent at its pace, not at twice its pace.  When the shared
# table of buckets is full (twilio_outbox.max_paced_campaigns, 1 here), a
# campaign that finds no bucket is still paced: at pace / N and burst / N
# by each dispatcher, never unpaced.  Behaviour, not speed: every
# assertion compares what was sent with the campaign's own settings.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('campaign_pace_shared', <<'CONF');
twilio_outbox.dispatchers_per_database = 2
twilio_outbox.max_paced_campaigns = 1
CONF
# unlimited senders: only the campaign's pace holds them back
OutboxTest::add_account($node, $standin);
# quiet hours are 032's subject: off, so that nothing depends on the time of day
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL});
# a second sender (id 2) beside the default one (id 1): one for each dispatcher
OutboxTest::query($node, q{
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
	VALUES ('main', '+15005550012', 'long_code', 'Infinity')});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 2 AND bool_and(running) AND bool_and(senders = 1)
	  FROM twilio_outbox.worker_dispatchers},
	'two dispatchers run, one sender each');

my $PACE = 4;
my $BURST = 2;

# Enqueue $n messages of $campaign, every other one from each sender.
sub enqueue_campaign
{
	my ($campaign, $prefix, $n) = @_;
	return qq{
	SELECT count(twilio_enqueue('$prefix' || lpad(i::text, 4, '0'), '$campaign ' || i,
		campaign => '$campaign', traffic_class => 'marketing',
		from_number => (ARRAY['+15005550006', '+15005550012'])[1 + i % 2]))
	FROM generate_series(1, $n) i};
}

# The start times of the campaign's attempts (to numbers starting with
# $prefix), in seconds, sorted.
sub starts
{
	my ($campaign, $prefix, $db) = @_;
	$prefix //= '+';
	return [ split /\n/, $node->safe_psql($db // 'postgres', qq{
		SELECT extract(epoch FROM a.started_at) FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.campaign = '$campaign' AND starts_with(m.to_number, '$prefix') ORDER BY 1}) ];
}

# The most by which any window of the attempts' start times holds more than
# burst + pace x window sends (<= 0: the pace held), and where.  200 ms of
# slack for the time between the claim that admitted a message and the start
# of its request; twice the pace would exceed the bound by far more.
sub worst_window
{
	my ($t, $pace, $burst) = @_;
	$pace //= $PACE;
	$burst //= $BURST;
	my ($worst, $where) = (0, 'nowhere');
	for my $i (0 .. $#$t)
	{
		for my $j ($i .. $#$t)
		{
			my $allowed = $pace * ($t->[$j] - $t->[$i] + 0.2) + $burst;
			my $excess = ($j - $i + 1) - $allowed;
			($worst, $where) = ($excess, sprintf('sends %d..%d (%.2f s)', $i, $j, $t->[$j] - $t->[$i]))
			  if $excess > $worst;
		}
	}
	return ($worst, $where);
}

# Which dispatchers sent the campaign's messages.
sub dispatchers_used
{
	my ($campaign) = @_;
	return OutboxTest::query($node, qq{
		SELECT count(DISTINCT a.worker_pid) FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.campaign = '$campaign'});
}

# ---------- one bucket for both dispatchers ----------
OutboxTest::query($node,
	qq{SELECT twilio_outbox.create_campaign('both', pace => $PACE, burst => $BURST)});
OutboxTest::query($node, enqueue_campaign('both', '+1415200', 40));
OutboxTest::wait_until($node,
	q{SELECT count(*) = 40 FROM twilio_outbox.messages WHERE campaign = 'both' AND state = 'sent'},
	'the campaign is sent');
my $t = starts('both');
is(scalar @$t, 40, 'one attempt per message: none sent twice, none put back at Twilio');
is(dispatchers_used('both'), '2', 'both dispatchers sent messages of the campaign');
my ($worst, $where) = worst_window($t);
ok($worst <= 0, "in every window, sends <= burst + pace x window over both dispatchers")
  or diag("exceeded by $worst over $where");
is(OutboxTest::query($node, q{SELECT max(attempts), sum(failures) FROM twilio_outbox.messages WHERE campaign = 'both'}),
	'1|0', 'a message put back by the pace is not charged an attempt');

# ---------- the bucket outlives the dispatchers ----------
# Re-paced slower, its burst spent, then both dispatchers stopped and
# started again, and more messages due at once: the new dispatchers find
# the bucket as it was (about as many tokens as seconds since), not a new
# full burst.
OutboxTest::query($node, q{SELECT twilio_outbox.set_campaign_pace('both', 1, burst => 4)});
OutboxTest::query($node, enqueue_campaign('both', '+1415203', 5));
OutboxTest::wait_until($node,
	q{SELECT count(*) = 5 FROM twilio_outbox.messages
	  WHERE campaign = 'both' AND starts_with(to_number, '+1415203') AND state = 'sent'},
	'the burst and one paced message are sent');
is(OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()'), 't', 'stop_worker() stops both');
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::query($node, enqueue_campaign('both', '+1415204', 5));
OutboxTest::wait_until($node,
	q{SELECT count(*) = 10 FROM twilio_outbox.messages
	  WHERE campaign = 'both' AND substr(to_number, 1, 8) IN ('+1415203', '+1415204') AND state = 'sent'},
	'after the restart the next five are sent');
$t = [ sort { $a <=> $b } @{ starts('both', '+1415203') }, @{ starts('both', '+1415204') } ];
is(scalar @$t, 10, 'one attempt per message across the restart');
($worst, $where) = worst_window($t, 1, 4);
ok($worst <= 0, 'across the restart, sends <= burst + pace x window in every window')
  or diag("exceeded by $worst over $where");

# ---------- the table full: pace / N by each dispatcher ----------
# Two campaigns at once and one bucket in shared memory: the one that
# finds it taken by the other (busy with put-off messages until it ends)
# is paced by each dispatcher at half its pace and burst.
OutboxTest::query($node,
	qq{SELECT twilio_outbox.create_campaign(c, pace => $PACE, burst => $BURST)
	   FROM unnest(ARRAY['left', 'right']) c});
OutboxTest::query($node, 'BEGIN;' . enqueue_campaign('left', '+1415201', 20) . ';'
	  . enqueue_campaign('right', '+1415202', 20) . '; COMMIT');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 40 FROM twilio_outbox.messages WHERE campaign IN ('left', 'right') AND state = 'sent'},
	'both campaigns are sent');
for my $c ('left', 'right')
{
	$t = starts($c);
	is(scalar @$t, 20, "$c: one attempt per message");
	is(dispatchers_used($c), '2', "$c: both dispatchers sent");
	($worst, $where) = worst_window($t);
	ok($worst <= 0, "$c: in every window, sends <= burst + pace x window")
	  or diag("exceeded by $worst over $where");
}
ok($node->log_contains('all twilio_outbox.max_paced_campaigns \(1\) shared campaign buckets are in use'),
	'the dispatcher said once that the table was full');

# ---------- a bucket per database ----------
# The same account and campaign names in another database of the cluster
# name another campaign: the buckets are keyed by database, so the two
# campaigns, sent at the same time, together send more than one bucket
# would allow, each at its own pace.
OutboxTest::query($node, 'CREATE DATABASE other');
my $base = $standin->base_url;
$node->safe_psql('other', qq{
	CREATE EXTENSION twilio_outbox;
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default, max_concurrency,
		quiet_start, quiet_end)
		VALUES ('main', '$OutboxTest::ACCOUNT_SID', '$base', true, 25, NULL, NULL);
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('main', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
		VALUES ('main', '$OutboxTest::FROM', 'long_code', true, 'Infinity'),
		       ('main', '+15005550012', 'long_code', false, 'Infinity');
	SELECT twilio_outbox.start_worker();
});
ok($node->poll_query_until('other',
		q{SELECT count(*) = 2 AND bool_and(running) FROM twilio_outbox.worker_dispatchers}),
	'two dispatchers run in database other');
for my $db ('postgres', 'other')
{
	$node->safe_psql($db, q{SELECT twilio_outbox.create_campaign('twin', pace => 2, burst => 2)});
}
$node->safe_psql('postgres', enqueue_campaign('twin', '+1415205', 12));
$node->safe_psql('other', enqueue_campaign('twin', '+1415206', 12));
for my $db ('postgres', 'other')
{
	ok($node->poll_query_until($db,
			q{SELECT count(*) = 12 FROM twilio_outbox.messages WHERE campaign = 'twin' AND state = 'sent'}),
		"database $db sent its campaign twin");
	($worst, $where) = worst_window(starts('twin', '+', $db), 2, 2);
	ok($worst <= 0, "database $db: its campaign twin kept to its own pace")
	  or diag("exceeded by $worst over $where");
}
$t = [ sort { $a <=> $b } @{ starts('twin', '+', 'postgres') }, @{ starts('twin', '+', 'other') } ];
($worst, $where) = worst_window($t, 2, 2);
ok($worst > 1, "the two databases' campaigns twin have a bucket each (together $where)");

$node->safe_psql('other', 'SELECT twilio_outbox.stop_worker()');
OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()');
$node->stop;
done_testing();
