# The basic promise: a committed enqueue is sent once, exactly as Twilio's
# API wants it; a rolled-back one never is.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('send');
OutboxTest::add_account($node, $standin);
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, 'start_worker returns the dispatcher pid');
is(OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()'),
	$pid, 'start_worker while it runs returns the same pid');

# Rolled back: never sent.  Committed: sent once.
OutboxTest::query($node, q{
	BEGIN;
	SELECT twilio_enqueue('+14155550100', 'rolled back');
	ROLLBACK;
	BEGIN;
	SELECT twilio_enqueue('+14155550101', 'Your code is 481516 & more',
		status_callback => 'https://app.example.com/cb?x=1');
	COMMIT;
});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550101'",
	'committed message is sent');
my $reqs = $standin->requests;
is(scalar @$reqs, 1, 'exactly one request reached Twilio');
is(scalar @{ $standin->requests(to => '+14155550100') }, 0,
	'the rolled-back message was never sent');

my $r = $reqs->[0];
is($r->{method}, 'POST', 'POST');
is($r->{path}, "/2010-04-01/Accounts/$OutboxTest::ACCOUNT_SID/Messages.json",
	'path names the account');
is($r->{auth_user}, $OutboxTest::ACCOUNT_SID, 'basic auth user is the Account SID');
is($r->{auth_password}, $OutboxTest::AUTH_TOKEN, 'basic auth password is the token');
is_deeply($r->{form}, {
		To => ['+14155550101'],
		From => [$OutboxTest::FROM],
		Body => ['Your code is 481516 & more'],
		StatusCallback => ['https://app.example.com/cb?x=1'] },
	'form fields exactly as in the API');
like($r->{headers}{'content-type'}, qr{^application/x-www-form-urlencoded},
	'form-encoded body');
like($r->{headers}{'user-agent'}, qr{^twilio_outbox/\d}, 'user agent names the extension');
my $key = OutboxTest::query($node,
	"SELECT idempotency_key FROM twilio_outbox.messages WHERE to_number = '+14155550101'");
is($r->{headers}{'idempotency-key'}, $key, 'idempotency key header carries the stored key');

my $row = OutboxTest::query($node, q{
	SELECT m.twilio_sid ~ '^SM[0-9a-f]{32}$', m.twilio_status, m.attempts,
	       a.http_status, a.outcome, a.request_id ~ '^RQ', a.twilio_sid = m.twilio_sid
	FROM twilio_outbox.messages m JOIN twilio_outbox.attempt_rows a ON a.message_id = m.id
	WHERE m.to_number = '+14155550101'});
is($row, 't|queued|1|201|sent|t|t', 'SID, status and attempt recorded');

# The token appears in no log line.
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$OutboxTest::AUTH_TOKEN\E/, 'auth token never logged');

$node->stop;
$standin->stop;
done_testing();
