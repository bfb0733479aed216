# The request body on the wire: every field form-encoded so that no key or
# value can add or change a field, arrays (MediaUrl, PersistentAction) as
# repeated fields, and a row written into the table by hand (bypassing
# twilio_enqueue's checks) sent with only the fields params may carry.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('wire');
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# Through twilio_enqueue: a body and URLs full of form syntax, and params
# of every kind, PersistentAction with two values.
my $body = "a&To=+19999999999&Body=x =%+; \x{e9} \x{1F44D}\nline two";
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+14155550301',
		body => 'a&To=+19999999999&Body=x =%+; ' || U&'\00E9 \+01F44D' || E'\nline two',
		media_urls => ARRAY['https://example.com/a.png?x=1&To=%2B1999', 'https://example.com/b.png'],
		status_callback => 'https://app.example.com/cb?tenant=7&To=+1999',
		params => '{"PersistentAction": ["geo:37.787890,-122.391664|375 Beale St", "mailto:ops@example.com"],
			"ValidityPeriod": 600, "MaxPrice": 0.75, "SmartEncoded": true, "ProvideFeedback": false}');
});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550301'",
	'the enqueued message is sent');
my $reqs = $standin->requests(to => '+14155550301');
is(scalar @$reqs, 1, 'one request');
is_deeply($reqs->[0]{form}, {
		To => ['+14155550301'],
		From => [$OutboxTest::FROM],
		Body => [$body],
		MediaUrl => ['https://example.com/a.png?x=1&To=%2B1999', 'https://example.com/b.png'],
		StatusCallback => ['https://app.example.com/cb?tenant=7&To=+1999'],
		PersistentAction => ['geo:37.787890,-122.391664|375 Beale St', 'mailto:ops@example.com'],
		ValidityPeriod => ['600'],
		MaxPrice => ['0.75'],
		SmartEncoded => ['true'],
		ProvideFeedback => ['false'] },
	'every field arrives as given, PersistentAction as two repeated fields');

# By hand, as an administrator may: params keys that are form syntax, fields
# we set ourselves, an unknown name, nested values; a NULL media element.
my $inserted = eval {
	OutboxTest::query($node, qq{
		INSERT INTO twilio_outbox.messages (account, sender_id, to_number, from_number, body,
			media_urls, status_callback, params, encoding, segments, idempotency_key, next_attempt_at)
		SELECT 'main', s.id, '+14155550302', s.from_number, 'direct & row',
			ARRAY['https://m.example.com/a.png?x=1&To=+1999', NULL],
			'https://cb.example.com/?a=1&To=+1999',
			'{"&To=+19999999999&Body=pwned": "x", "To": "+19999999999", "Body": "pwned",
			  "From": "+19999999998", "Foo": "bar",
			  "PersistentAction": ["ok", {"nested": 1}, ["deep"]], "ValidityPeriod": 60}',
			'GSM-7', 1, gen_random_uuid(), now()
		FROM twilio_outbox.senders s WHERE s.account = 'main';
		SELECT twilio_outbox.wake_worker();
	});
	1;
};
SKIP:
{
	# A table constraint that refuses such a row also keeps it off the wire.
	skip "the messages table refuses the hand-written row: $@", 3
	  unless $inserted || $@ !~ /violates check constraint/;
	ok($inserted, 'a hand-written row with hostile params goes in') or diag($@);
	OutboxTest::wait_until($node,
		"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550302'",
		'the hand-written row is sent, not stalled');
	my $direct = $standin->requests(to => '+14155550302');
	is_deeply($direct->[0]{form}, {
			To => ['+14155550302'],
			From => [$OutboxTest::FROM],
			Body => ['direct & row'],
			MediaUrl => ['https://m.example.com/a.png?x=1&To=+1999'],
			StatusCallback => ['https://cb.example.com/?a=1&To=+1999'],
			PersistentAction => ['ok'],
			ValidityPeriod => ['60'] },
		'only its own fields and the known params reach Twilio, each once');
}
is(scalar @{ $standin->requests(to => '+19999999999') }, 0,
	'no request ever went to the number smuggled in params');

# params that is not an object at all: sent without them.
OutboxTest::query($node, q{
	INSERT INTO twilio_outbox.messages (account, sender_id, to_number, from_number, body,
		params, encoding, segments, idempotency_key, next_attempt_at)
	SELECT 'main', s.id, '+14155550303', s.from_number, 'array params',
		'["To", "+19999999999"]', 'GSM-7', 1, gen_random_uuid(), now()
	FROM twilio_outbox.senders s WHERE s.account = 'main';
	SELECT twilio_outbox.wake_worker();
});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550303'",
	'a row whose params is an array is sent');
is_deeply($standin->requests(to => '+14155550303')->[0]{form}, {
		To => ['+14155550303'], From => [$OutboxTest::FROM], Body => ['array params'] },
	'without its params');

my $log = slurp_file($node->logfile);
like($log, qr/params key "&To=\+19999999999&Body=pwned" is not a field params may carry/,
	'the skipped key is named in the log');
like($log, qr/params of a message is not a JSON object/, 'so is params that is no object');

$node->stop;
$standin->stop;
done_testing();
