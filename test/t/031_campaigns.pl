# Campaigns (issue 12): a paced campaign's bucket never lets more than
# pace x time + burst through (on top of an unlimited sender); pause holds
# its messages and resume releases them; cancel cancels what is queued and
# lets what is in flight finish; what has not gone by not_after is
# dead-lettered as expired.  Behaviour, not speed: every assertion compares
# the dispatcher with its own settings.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('campaigns');
# an unlimited sender: only the campaign's pace holds it
OutboxTest::add_account($node, $standin);
# quiet hours are 032's subject: off here, so that what is due does not
# depend on the time of day in the recipients' zone
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# Arrival times at the stand-in of the requests to numbers starting with $prefix.
sub arrivals
{
	my ($prefix) = @_;
	return [ sort { $a <=> $b } map { $_->{t} }
		  grep { index($_->{form}{To}[0], $prefix) == 0 } @{ $standin->requests } ];
}

sub count_where
{
	my ($campaign, $cond) = @_;
	return OutboxTest::query($node,
		"SELECT count(*) FROM twilio_outbox.messages WHERE campaign = '$campaign' AND $cond");
}

# ---------- pace: never more than pace x time + burst ----------
# 16 messages at 4 a second, burst 3, on a sender that would send them all
# at once.
OutboxTest::query($node, q{SELECT twilio_outbox.create_campaign('paced', pace => 4, burst => 3)});
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415100' || lpad(n::text, 4, '0'), 'paced ' || n, campaign => 'paced',
		traffic_class => 'marketing')
	FROM generate_series(1, 16) n});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 16 FROM twilio_outbox.messages WHERE campaign = 'paced' AND state = 'sent'},
	'the paced campaign is sent');
my $t = arrivals('+1415100');
is(scalar @$t, 16, 'one request per message, none put back twice at Twilio');
my ($worst, $worst_at) = (0, '');
for my $i (0 .. $#$t)
{
	for my $j ($i .. $#$t)
	{
		# 50 ms of slack for the time between our claim and its arrival
		my $allowed = 4 * ($t->[$j] - $t->[$i] + 0.05) + 3;
		my $excess = ($j - $i + 1) - $allowed;
		($worst, $worst_at) = ($excess, "requests $i..$j") if $excess > $worst;
	}
}
ok($worst <= 0, 'in every window, messages sent <= pace x window + burst')
  or diag("exceeded by $worst messages over $worst_at");
my $span = $t->[-1] - $t->[0];
ok($span >= (16 - 3) / 4 * 0.9,
	sprintf('16 messages at 4/s with burst 3 take their time (%.1f s)', $span));
is(OutboxTest::query($node, q{SELECT max(attempts), sum(failures) FROM twilio_outbox.messages WHERE campaign = 'paced'}),
	'1|0', 'a message put back by the pace is not charged an attempt');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.attempt_rows a
	JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.campaign = 'paced'}),
	'16', 'and leaves no attempt row');

# Re-paced at run time: faster.
OutboxTest::query($node, q{SELECT twilio_outbox.set_campaign_pace('paced', 50, burst => 50)});
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415101' || lpad(n::text, 4, '0'), 'repaced ' || n, campaign => 'paced')
	FROM generate_series(1, 20) n});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 36 FROM twilio_outbox.messages WHERE campaign = 'paced' AND state = 'sent'},
	'after set_campaign_pace, the next 20 are sent');
$t = arrivals('+1415101');
ok($t->[-1] - $t->[0] < (20 - 3) / 4 * 0.9,
	sprintf('at the new pace: 20 messages in %.1f s, less than the old pace allowed', $t->[-1] - $t->[0]));

# Re-paced while the old pace has put messages off: they come due again
# and go at the new pace (at 0.2/s the last would wait 45 s).
OutboxTest::query($node, q{SELECT twilio_outbox.create_campaign('slow', pace => 0.2, burst => 1)});
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415106' || lpad(n::text, 4, '0'), 'slow ' || n, campaign => 'slow')
	FROM generate_series(1, 10) n});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 1 FROM twilio_outbox.messages WHERE campaign = 'slow' AND state = 'sent'},
	'the slow campaign sent its first');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.messages
	WHERE campaign = 'slow' AND state = 'queued' AND next_attempt_at > now()}),
	'9', 'the others are put off to the campaign\'s slots');
OutboxTest::query($node, q{SELECT twilio_outbox.set_campaign_pace('slow', 100, burst => 10)});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 10 FROM twilio_outbox.messages WHERE campaign = 'slow' AND state = 'sent'},
	'after set_campaign_pace the slow campaign is sent');
$t = arrivals('+1415106');
ok($t->[-1] - $t->[1] < 9 / 0.2 * 0.5,
	sprintf('the nine put off went at the new pace (in %.1f s, not about 45)', $t->[-1] - $t->[1]));

# ---------- pause and resume ----------
OutboxTest::query($node, q{SELECT twilio_outbox.create_campaign('held')});
OutboxTest::query($node, q{SELECT twilio_outbox.pause_campaign('held')});
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415102' || lpad(n::text, 4, '0'), 'held ' || n, campaign => 'held')
	FROM generate_series(1, 5) n});
# a message enqueued after them, outside the campaign, goes: the
# dispatcher had its chance at the held ones
OutboxTest::enqueue_to($node, '+14151039999', 'not in a campaign');
OutboxTest::wait_until($node,
	q{SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14151039999'},
	'a later message outside the campaign is sent');
is(count_where('held', "state = 'queued'"), '5', 'the paused campaign\'s messages wait');
is(scalar @{ arrivals('+1415102') }, 0, 'none reached Twilio');
is(OutboxTest::query($node, q{SELECT twilio_outbox.resume_campaign('held')}), '5', 'resume releases five');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 5 FROM twilio_outbox.messages WHERE campaign = 'held' AND state = 'sent'},
	'after resume they are sent');

# ---------- cancel: queued ones canceled, in-flight ones finish ----------
OutboxTest::query($node, q{SELECT twilio_outbox.create_campaign('doomed', pace => 1)});
# the first request answers after 1.5 s: it is in flight when the campaign is canceled
$standin->script('+14151040001', { status => 201, delay => 1.5 });
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415104' || lpad(n::text, 4, '0'), 'doomed ' || n, campaign => 'doomed')
	FROM generate_series(1, 10) n});
OutboxTest::wait_until($node,
	q{SELECT state = 'sending' FROM twilio_outbox.messages WHERE to_number = '+14151040001'},
	'the first message of the campaign is in flight');
my $canceled = OutboxTest::query($node, q{SELECT twilio_outbox.cancel_campaign('doomed')});
cmp_ok($canceled, '>=', 8, "cancel_campaign canceled the queued ones ($canceled)");
OutboxTest::wait_until($node,
	q{SELECT count(*) = 0 FROM twilio_outbox.messages WHERE campaign = 'doomed' AND state IN ('queued', 'sending')},
	'nothing of the canceled campaign is left to send');
is(OutboxTest::query($node, q{SELECT state FROM twilio_outbox.messages WHERE to_number = '+14151040001'}),
	'sent', 'the message in flight finished');
is(count_where('doomed', "state = 'canceled'"), $canceled, 'the others are canceled');
is(scalar @{ arrivals('+1415104') }, 10 - $canceled, 'and never reached Twilio');

# ---------- not_after: what has not gone is dead-lettered as expired ----------
# one a second from a window of about three seconds: most cannot go in time
OutboxTest::query($node, q{SELECT twilio_outbox.create_campaign('brief', pace => 1, burst => 1,
	not_after => clock_timestamp() + interval '3 seconds')});
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415105' || lpad(n::text, 4, '0'), 'brief ' || n, campaign => 'brief')
	FROM generate_series(1, 20) n});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 0 FROM twilio_outbox.messages WHERE campaign = 'brief' AND state IN ('queued', 'sending')},
	'the campaign\'s window closed and nothing of it waits');
my ($sent, $expired) = split /\|/, OutboxTest::query($node, q{
	SELECT count(*) FILTER (WHERE m.state = 'sent'),
		count(*) FILTER (WHERE m.state = 'dead' AND d.reason = 'expired')
	FROM twilio_outbox.messages m LEFT JOIN twilio_outbox.dead_letters d ON d.message_id = m.id
	WHERE m.campaign = 'brief'});
is($sent + $expired, 20, "each was sent ($sent) or dead-lettered as expired ($expired)");
cmp_ok($sent, '>=', 1, 'the first went at once: a new bucket is full');
cmp_ok($expired, '>=', 10, 'most could not go in time at one a second');

# ---------- the overview ----------
is(OutboxTest::query($node, q{SELECT campaign, state, queued, sent, canceled, dead
	FROM twilio_outbox.campaigns_overview WHERE campaign IN ('paced', 'held', 'doomed') ORDER BY campaign}),
	"doomed|canceled|0|" . (10 - $canceled) . "|$canceled|0\nheld|active|0|5|0|0\npaced|active|0|36|0|0",
	'campaigns_overview counts each campaign\'s messages');

OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()');
$node->stop;
done_testing();
