# Quiet hours end to end, with the account's window set around now (the
# recipients' zone is the account's default, UTC): a marketing message
# waits, uncharged and unsent, while a transactional one goes; a message
# claimed in the window (a retry, or one whose window came since it was
# enqueued) is put back without an attempt; the window ends -> it is sent;
# one that expires inside the window is dead-lettered as expired, never sent.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('quiet');
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# +61 has no prefix in number_time_zones: the account's default zone (UTC).
sub window_around_now
{
	my ($before, $after) = @_;
	OutboxTest::query($node, qq{
		UPDATE twilio_outbox.accounts SET default_time_zone = 'UTC',
			quiet_start = ((now() AT TIME ZONE 'UTC') - interval '$before')::time,
			quiet_end = ((now() AT TIME ZONE 'UTC') + interval '$after')::time});
	return;
}

# --- in the window: marketing waits, transactional goes -------------------
window_around_now('1 hour', '1 hour');
my ($mkt, $otp) = split /\n/, OutboxTest::query($node, q{
	SELECT twilio_enqueue('+61255500001', 'Sale!', traffic_class => 'marketing');
	SELECT twilio_enqueue('+61255500002', 'Your code is 1234');});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $otp",
	'the transactional message is sent in quiet hours');
is(OutboxTest::query($node, qq{
		SELECT state, attempts, failures, quiet_zone,
			next_attempt_at BETWEEN now() + interval '50 minutes' AND now() + interval '61 minutes'
		FROM twilio_outbox.messages WHERE id = $mkt}),
	'queued|0|0|UTC|t',
	'the marketing message waits queued, no attempt, due at the end of the window');
is(scalar @{ $standin->requests(to => '+61255500001') }, 0,
	'the marketing message never reached Twilio');

# --- claimed in the window: put back, uncharged ---------------------------
# Enqueued with no quiet hours, due in 3 seconds; the window is set before
# it comes due, so the dispatcher finds it in quiet hours at claim time.
OutboxTest::query($node, q{
	UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL;});
my $late = OutboxTest::query($node, q{
	SELECT twilio_enqueue('+61255500003', 'Sale!', traffic_class => 'marketing',
		send_after => now() + interval '3 seconds')});
is(OutboxTest::query($node, "SELECT quiet_zone FROM twilio_outbox.messages WHERE id = $late"),
	'UTC', 'a marketing message stores its zone even with no window now');
window_around_now('1 hour', '1 hour');
OutboxTest::wait_until($node, qq{
	SELECT next_attempt_at > now() + interval '50 minutes'
	FROM twilio_outbox.messages WHERE id = $late},
	'claimed in quiet hours: put back until the window ends');
is(OutboxTest::query($node, qq{
		SELECT state, attempts, failures, lease_until IS NULL, worker_pid IS NULL,
			(SELECT count(*) FROM twilio_outbox.attempt_rows a WHERE a.message_id = m.id)
		FROM twilio_outbox.messages m WHERE id = $late}),
	'queued|0|0|t|t|0', 'put back queued with no attempt counted or recorded');
is(scalar @{ $standin->requests(to => '+61255500003') }, 0, 'and nothing sent');

# --- the window ends: sent ------------------------------------------------
# A window that ends in 3 seconds: the message waits for its end, then goes.
window_around_now('1 hour', '3 seconds');
my $opens = OutboxTest::query($node, q{
	SELECT twilio_enqueue('+61255500004', 'Sale!', traffic_class => 'marketing')});
my $end = OutboxTest::query($node,
	"SELECT next_attempt_at FROM twilio_outbox.messages WHERE id = $opens");
ok(OutboxTest::query($node, "SELECT '$end'::timestamptz > now()") eq 't',
	'enqueued in the window: due at its end');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $opens",
	'the window ends: the marketing message is sent');
is(OutboxTest::query($node, qq{
		SELECT attempts, failures, sent_at >= '$end'::timestamptz
		FROM twilio_outbox.messages WHERE id = $opens}),
	'1|0|t', 'one attempt, the send, made after the window ended');
is(scalar @{ $standin->requests(to => '+61255500004') }, 1, 'one request');

# --- expires inside the window --------------------------------------------
window_around_now('1 hour', '1 hour');
my $exp = OutboxTest::query($node, q{
	SELECT twilio_enqueue('+61255500005', 'Sale!', traffic_class => 'marketing',
		expires_at => now() + interval '2 seconds')});
OutboxTest::wait_until($node,
	"SELECT state = 'dead' FROM twilio_outbox.messages WHERE id = $exp",
	'a message expiring inside the window is dead-lettered');
is(OutboxTest::query($node, qq{
		SELECT d.reason, m.attempts FROM twilio_outbox.dead_letters d
		JOIN twilio_outbox.messages m ON m.id = d.message_id WHERE m.id = $exp}),
	'expired|0', 'as expired, never attempted');
is(scalar @{ $standin->requests(to => '+61255500005') }, 0, 'and never sent');

# --- a campaign's own window replaces the account's, at claim too ---------
# The account has none; the campaign's is set around now after the enqueue:
# the claim reads the campaign's window and puts the message back.
OutboxTest::query($node, q{
	UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL;
	SELECT twilio_outbox.create_campaign('night');});
my $camp = OutboxTest::query($node, q{
	SELECT twilio_enqueue('+61255500006', 'Sale!', traffic_class => 'marketing',
		campaign => 'night', send_after => now() + interval '3 seconds')});
OutboxTest::query($node, q{
	UPDATE twilio_outbox.campaigns SET
		quiet_start = ((now() AT TIME ZONE 'UTC') - interval '1 hour')::time,
		quiet_end = ((now() AT TIME ZONE 'UTC') + interval '1 hour')::time
	WHERE name = 'night'});
OutboxTest::wait_until($node, qq{
	SELECT next_attempt_at > now() + interval '50 minutes'
	FROM twilio_outbox.messages WHERE id = $camp},
	'claimed in its campaign\'s quiet hours: put back until they end');
is(OutboxTest::query($node, qq{
		SELECT state, attempts FROM twilio_outbox.messages WHERE id = $camp}),
	'queued|0', 'put back queued, no attempt');
is(scalar @{ $standin->requests(to => '+61255500006') }, 0, 'and nothing sent');
# The account's window around now, the campaign's two hours away: the
# campaign's applies at enqueue and at claim, so the message goes.
window_around_now('1 hour', '1 hour');
OutboxTest::query($node, q{
	SELECT twilio_outbox.create_campaign('day',
		quiet_start => ((now() AT TIME ZONE 'UTC') + interval '2 hours')::time,
		quiet_end => ((now() AT TIME ZONE 'UTC') + interval '3 hours')::time)});
my $day = OutboxTest::query($node, q{
	SELECT twilio_enqueue('+61255500007', 'Sale!', traffic_class => 'marketing',
		campaign => 'day')});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $day",
	'a campaign whose own window is elsewhere is sent in the account\'s quiet hours');

# The waiting ones still wait.
is(OutboxTest::query($node, qq{
		SELECT string_agg(state::text, ',' ORDER BY id) FROM twilio_outbox.messages
		WHERE id IN ($mkt, $late, $camp)}),
	'queued,queued,queued', 'the others still wait for the end of the window');

$node->stop;
done_testing();
