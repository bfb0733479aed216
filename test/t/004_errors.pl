# Errors that retrying cannot fix: a rejected recipient is dead-lettered at
# once, an unsubscribed one is also suppressed, and refused credentials pause
# the account until an operator resumes it.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('errors');
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

sub attempts_of
{
	my ($to, $cols) = @_;
	return OutboxTest::query($node, qq{
		SELECT $cols FROM twilio_outbox.attempt_rows a
		JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$to' ORDER BY a.attempt});
}

sub dead_letter_of
{
	my ($to, $cols) = @_;
	return OutboxTest::query($node, qq{
		SELECT $cols FROM twilio_outbox.dead_letters d
		JOIN twilio_outbox.messages m ON m.id = d.message_id
		WHERE m.to_number = '$to'});
}

# --- 21211 (invalid To) and 21610 (unsubscribed), side by side -------------
my $invalid = '+14155550400';
my $stopped = '+14155550401';
$standin->script($invalid, { status => 400, code => 21211 }, { status => 201 });
$standin->script($stopped, { status => 400, code => 21610, message => 'Attempt to send to unsubscribed recipient' },
	{ status => 201 });
OutboxTest::enqueue_to($node, $invalid);
OutboxTest::enqueue_to($node, $stopped);
OutboxTest::wait_until($node,
	"SELECT count(*) = 2 FROM twilio_outbox.messages WHERE to_number IN ('$invalid', '$stopped') AND state = 'dead'",
	'21211 and 21610: both dead');
sleep 1.5;    # a retry, if any, would arrive now

is(scalar @{ $standin->requests(to => $invalid) }, 1, '21211: one request, never retried');
is(OutboxTest::message_row($node, $invalid,
		'state, attempts, failures, ambiguous_attempts, last_http_status, last_error_code, finished_at IS NOT NULL'),
	'dead|1|0|0|400|21211|t', '21211: dead after one attempt, status and code kept');
is(attempts_of($invalid, 'a.outcome, a.ambiguous, a.http_status, a.twilio_code'),
	'dead|f|400|21211', '21211: the attempt is dead, not ambiguous');
is(dead_letter_of($invalid, 'd.reason, d.http_status, d.twilio_code, d.attempts, d.error_message <> \'\''),
	'rejected|400|21211|1|t', '21211: dead letter, reason rejected, 400/21211');

is(scalar @{ $standin->requests(to => $stopped) }, 1, '21610: one request, never retried');
is(OutboxTest::message_row($node, $stopped, 'state, attempts, last_error_code'),
	'dead|1|21610', '21610: dead after one attempt');
is(attempts_of($stopped, 'a.outcome, a.ambiguous'), 'suppressed|f',
	'21610: the attempt outcome is suppressed');
is(dead_letter_of($stopped, 'd.reason, d.http_status, d.twilio_code, d.attempts'),
	'suppressed|400|21610|1', '21610: dead letter, reason suppressed');
is(OutboxTest::query($node, qq{
		SELECT s.account, s.twilio_code, s.message_id = m.id
		FROM twilio_outbox.suppressed_recipients s
		JOIN twilio_outbox.messages m ON m.to_number = s.to_number
		WHERE s.to_number = '$stopped'}),
	'main|21610|t', '21610: the recipient is suppressed in account main');

my ($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT twilio_enqueue('$stopped', 'again')");
isnt($rc, 0, 'enqueue to a suppressed recipient fails');
like($err, qr/ERROR:\s+TW001:/, 'with SQLSTATE TW001');
is(OutboxTest::query($node,
		"SELECT count(*) FROM twilio_outbox.messages WHERE to_number = '$stopped'"),
	'1', 'and inserts nothing');
# Also visible to PL/pgSQL code that traps it.
is(OutboxTest::query($node, qq{
		CREATE FUNCTION pg_temp.try() RETURNS text LANGUAGE plpgsql AS \$\$
		BEGIN
			PERFORM twilio_enqueue('$stopped', 'again');
			RETURN 'no error';
		EXCEPTION WHEN OTHERS THEN
			RETURN SQLSTATE;
		END \$\$;
		SELECT pg_temp.try();}),
	'TW001', 'SQLSTATE TW001 as seen by an exception handler');

# --- 401 / 20003: the account is paused until resumed ------------------------
my $auth1 = '+14155550402';
my $auth2 = '+14155550403';
$standin->script($auth1, { status => 401, code => 20003 }, { status => 201 });
OutboxTest::enqueue_to($node, $auth1);
OutboxTest::wait_until($node, q{
	SELECT paused_until = 'infinity' FROM twilio_outbox.accounts WHERE name = 'main'},
	'401: the account is paused until further notice');
OutboxTest::wait_until($node, qq{
	SELECT EXISTS (SELECT FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$auth1' AND a.outcome = 'paused')},
	'401: the attempt is recorded as paused');
is(OutboxTest::message_row($node, $auth1, 'state, attempts, failures, last_http_status, last_error_code'),
	'queued|1|0|401|20003', '401: the message is queued again, not charged');
like(OutboxTest::query($node, "SELECT pause_reason FROM twilio_outbox.accounts WHERE name = 'main'"),
	qr/401/, '401: pause_reason says why');

OutboxTest::enqueue_to($node, $auth2);
sleep 2;
is(scalar @{ $standin->requests(to => $auth2) }, 0, 'paused: a new message gets no request');
is(scalar @{ $standin->requests(to => $auth1) }, 1, 'paused: the refused message is not retried');
is(OutboxTest::message_row($node, $auth2, 'state, attempts'), 'queued|0',
	'paused: the new message waits in the queue');

OutboxTest::query($node, "SELECT twilio_outbox.resume_account('main')");
OutboxTest::wait_until($node,
	"SELECT count(*) = 2 FROM twilio_outbox.messages WHERE to_number IN ('$auth1', '$auth2') AND state = 'sent'",
	'after resume_account both are sent');
is(scalar @{ $standin->requests(to => $auth1) }, 2, 'the refused message: one more request');
is(scalar @{ $standin->requests(to => $auth2) }, 1, 'the waiting message: one request');
is(OutboxTest::message_row($node, $auth1, 'attempts, failures'), '2|0',
	'the refused message: two attempts, none charged');
is(OutboxTest::query($node,
		"SELECT paused_until IS NULL AND pause_reason IS NULL FROM twilio_outbox.accounts WHERE name = 'main'"),
	't', 'the account is no longer paused');

$node->stop;
$standin->stop;
done_testing();
