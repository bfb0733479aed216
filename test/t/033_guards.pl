# Abuse guards end to end (issue 12): a per-recipient cap and the allowed
# countries refuse at enqueue (TW002, TW003) while what they let through is
# sent by the dispatcher; the health view's anomaly check is 'ok' until a
# burst and then warns with its figures in the hint.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
# the anomaly check's thresholds low enough for a test: 10 messages in 5
# minutes, more than twice the norm (none: a new cluster has no history);
# the 1,000-number block check out of the way (its own regress case)
my $node = OutboxTest::node('guards', <<'CONF');
twilio_outbox.health_anomaly_min_count = 10
twilio_outbox.health_anomaly_factor = 2
twilio_outbox.health_anomaly_range_count = 1000
CONF
OutboxTest::add_account($node, $standin);
# quiet hours are 032's subject: off here, so that what is due does not
# depend on the time of day in the recipients' zone
OutboxTest::query($node, q{UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL,
	max_per_recipient_hour = 2, allowed_country_codes = '{1}'});
# An enqueue's outcome: 'ok' or the SQLSTATE it was refused with (a
# refused one rolls back alone, its count with it).
OutboxTest::query($node, q{
	CREATE FUNCTION try_enqueue(to_number text, body text) RETURNS text
	LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM twilio_enqueue(to_number, body);
		RETURN 'ok';
	EXCEPTION WHEN OTHERS THEN
		RETURN SQLSTATE;
	END $$});

is(OutboxTest::query($node,
	q{SELECT status || ' ' || value FROM twilio_outbox.health WHERE check_name = 'anomaly'}),
	'ok 0', 'the anomaly check is ok before any traffic');

# Three to one number in one transaction (one clock hour, whatever the
# time): the third is refused.
is(OutboxTest::query($node, q{
	SELECT string_agg(try_enqueue('+14155550101', 'cap ' || g), ', ' ORDER BY g)
	FROM generate_series(1, 3) g}),
	'ok, ok, TW002', 'the third message to one number in the hour is refused with TW002');
# A country not allowed is refused, an allowed one accepted.
is(OutboxTest::query($node, q{
	SELECT try_enqueue('+447700900123', 'uk') || ', ' || try_enqueue('+14155550102', 'us')}),
	'TW003, ok', 'a number of a country not allowed is refused with TW003, an allowed one accepted');
is(OutboxTest::query($node, q{SELECT count(*) FROM twilio_outbox.messages}), '3',
	'only the accepted messages are in the outbox');

OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 3 FROM twilio_outbox.messages WHERE state = 'sent'},
	'the accepted messages are sent');
is(OutboxTest::query($node, q{
	SELECT string_agg(to_number || ' ' || body, ', ' ORDER BY id) FROM twilio_outbox.messages}),
	'+14155550101 cap 1, +14155550101 cap 2, +14155550102 us', 'the two capped and the allowed one went');
my @to = map { $_->{form}{To}[0] } @{ $standin->requests };
is(join(',', sort @to), '+14155550101,+14155550101,+14155550102',
	'the stand-in got exactly those, nothing to the refused numbers');
is(OutboxTest::query($node,
	q{SELECT status FROM twilio_outbox.health WHERE check_name = 'anomaly'}),
	'ok', 'three messages in 5 minutes are no anomaly');

# A burst: 20 more to different numbers of the allowed country, 23 in the
# last 5 minutes against a norm of none.
OutboxTest::query($node, q{
	SELECT count(twilio_enqueue('+1212555' || lpad(g::text, 4, '0'), 'burst ' || g))
	FROM generate_series(1, 20) g});
my $row = OutboxTest::query($node, q{
	SELECT status || '|' || value || '|' || hint FROM twilio_outbox.health WHERE check_name = 'anomaly'});
my ($status, $value, $hint) = split /\|/, $row, 3;
is($status, 'warning', 'the anomaly check warns after the burst');
is($value, '2', 'two findings: the account\'s rate and the one country');
like($hint, qr/account main enqueued 23 messages, its norm at this hour is 0\.0 per 5 minutes \(threshold 10\.0\)/,
	'the hint gives the rate figures');
like($hint, qr/account main enqueued 23 messages to \+1, its norm there at this hour is 0\.0 per 5 minutes \(threshold 10\.0\)/,
	'the hint gives the country figures');
is(OutboxTest::query($node, q{
	SELECT string_agg(kind || ' ' || subject || ' ' || last_5min, ', ' ORDER BY kind)
	FROM twilio_outbox.anomalies()}),
	'country +1 23, rate all recipients 23', 'anomalies() lists both');

OutboxTest::query($node, 'SELECT twilio_outbox.stop_worker()');
$node->stop;
done_testing();
