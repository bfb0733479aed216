# Priorities (issue 12): a one-time code enqueued behind 10,000 due
# marketing messages on a 1/s sender is the next message claimed, and
# within a sender a higher level goes before a lower one whatever their
# ages.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('priorities');
# one segment a second, a bucket of one: one claim at a time
OutboxTest::add_account($node, $standin, rate => 1);
OutboxTest::query($node, q{UPDATE twilio_outbox.senders SET burst = 1});
# quiet hours are 032's subject: off here, so that what is due does not
# depend on the time of day in the recipients' zone
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL});

# 10,000 marketing messages, due since a minute ago (older than anything
# enqueued below).
OutboxTest::query($node, q{
	SELECT count(twilio_enqueue('+1415' || lpad(g::text, 7, '0'), 'Sale ' || g,
		send_after => now() - interval '1 minute', priority => 'low',
		traffic_class => 'marketing'))
	FROM generate_series(1, 10000) g});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	q{SELECT count(*) >= 2 FROM twilio_outbox.messages
	  WHERE traffic_class = 'marketing' AND state = 'sent'},
	'the marketing messages are being sent, one a second');

# Which marketing messages the dispatcher had taken (sent or in flight)
# when the code was enqueued, counted in the enqueue's transaction.  A
# claim running at that moment cannot see the code: at most that one claim
# (one message: the bucket holds one) may still go before it.
my $before = OutboxTest::query($node, q{
	BEGIN;
	SELECT twilio_enqueue('+14155559999', 'Your code is 481516', priority => 'high');
	SELECT count(*) FROM twilio_outbox.messages
	WHERE traffic_class = 'marketing' AND state <> 'queued';
	COMMIT;});
$before = (split /\n/, $before)[-1];
OutboxTest::wait_until($node,
	q{SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155559999'},
	'the code is sent');
my $after = OutboxTest::query($node, q{
	SELECT count(*) FROM twilio_outbox.attempt_rows a
	JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.traffic_class = 'marketing'
	AND a.started_at < (SELECT a2.started_at FROM twilio_outbox.attempt_rows a2
		JOIN twilio_outbox.messages m2 ON m2.id = a2.message_id
		WHERE m2.to_number = '+14155559999')});
cmp_ok($after, '<=', $before + 1,
	"the code went next: $before marketing messages taken when it was enqueued, $after sent before it");
cmp_ok(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.messages
	WHERE traffic_class = 'marketing' AND state = 'queued'}), '>', 9000,
	'thousands of older marketing messages still wait');

# Within a sender, level first: a normal message enqueued before a high
# one goes after it; both before the low ones (older than both).
OutboxTest::query($node, q{
	BEGIN;
	SELECT twilio_enqueue('+14155559998', 'receipt', send_after => now() - interval '1 hour');
	SELECT twilio_enqueue('+14155559997', 'second code', priority => 'high');
	COMMIT;});
OutboxTest::wait_until($node,
	q{SELECT count(*) = 2 FROM twilio_outbox.messages
	  WHERE to_number IN ('+14155559998', '+14155559997') AND state = 'sent'},
	'the normal and the high message are sent');
is(OutboxTest::query($node, q{
	SELECT string_agg(m.body, ', ' ORDER BY a.started_at)
	FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.to_number IN ('+14155559998', '+14155559997')}),
	'second code, receipt', 'the high message went before the older normal one');
cmp_ok(OutboxTest::query($node, q{
	SELECT count(*) FROM twilio_outbox.attempt_rows a
	JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.traffic_class = 'marketing'
	AND a.started_at > (SELECT a2.started_at FROM twilio_outbox.attempt_rows a2
		JOIN twilio_outbox.messages m2 ON m2.id = a2.message_id
		WHERE m2.to_number = '+14155559997')
	AND a.started_at < (SELECT a2.started_at FROM twilio_outbox.attempt_rows a2
		JOIN twilio_outbox.messages m2 ON m2.id = a2.message_id
		WHERE m2.to_number = '+14155559998')}), '==', 0,
	'no low message went between them');

OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()');
$node->stop;
done_testing();
