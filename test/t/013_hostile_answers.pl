# What Twilio (or a broken proxy) may send back, and where credentials may
# go.  Every string from the network reaches the tables as valid UTF-8,
# without control characters and bounded; a Retry-After date years away
# pauses an account for a day at most; credentials go only to allowed
# hosts, parsed as libcurl parses them.
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
my $node = OutboxTest::node('hostile_answers');
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

sub run { return OutboxTest::query($node, $_[0]) }

# Every text column an answer reaches, read back through a conversion that
# validates (as a client in another encoding would): an invalid byte fails
# the statement with 22021.
my $readable = q{
	SELECT count(*) FROM (
		SELECT convert_from(convert_to(concat(a.twilio_message, a.transport_error, a.retry_after,
			a.request_id, a.twilio_sid), 'UTF8'), 'UTF8') FROM twilio_outbox.attempt_rows a
		UNION ALL SELECT convert_from(convert_to(concat(m.last_error_message, m.twilio_status,
			m.twilio_sid), 'UTF8'), 'UTF8') FROM twilio_outbox.messages m
		UNION ALL SELECT convert_from(convert_to(d.error_message, 'UTF8'), 'UTF8')
			FROM twilio_outbox.dead_letters d) x};

# --- invalid UTF-8 and control characters in a body and in headers ------------
my $bad = '+14155550701';
$standin->script($bad, TwilioStandIn::raw(400,
	[ "Content-Type: application/json",
	  "Twilio-Request-Id: RQ\xff\xfe\x01\x7fabc",
	  "Twilio-Concurrent-Requests: 99999999999999999999",
	  "Twilio-Request-Duration: nan" ],
	qq({"code": 21211, "message": "bad \xff\xfe\xc3 bytes, a \\u0000 NUL,\\r\\na new line and \\u00e9", "status": 400})));
OutboxTest::enqueue_to($node, $bad);
OutboxTest::wait_until($node,
	"SELECT state = 'dead' FROM twilio_outbox.messages WHERE to_number = '$bad'",
	'invalid UTF-8 answer: the message is dead (21211)');
my ($rc, $out, $err) = $node->psql('postgres', $readable);
is($rc, 0, 'every stored string is valid UTF-8') or diag $err;
my $msg = run("SELECT a.twilio_message FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.to_number = '$bad'");
like($msg, qr/^bad \?\?\? bytes, a \? NUL, {2}a new line and /, 'invalid bytes and the NUL became ?, CR and LF spaces');
unlike($msg, qr/[\x00-\x1f]/, 'no control character is kept (CR, LF, NUL)');
like(run("SELECT a.request_id FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.to_number = '$bad'"),
	qr/^RQ\?\? {2}abc$/, 'the request id: invalid bytes and control characters replaced');
is(run("SELECT concat(concurrent_requests, '|', request_duration) FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.to_number = '$bad'"),
	'|', 'numbers that are not numbers are not kept');
# Through a client in another encoding, which converts (and so validates).
{
	local $ENV{PGCLIENTENCODING} = 'LATIN1';
	my ($rc2, $out2, $err2) = $node->psql('postgres', 'SELECT * FROM twilio_outbox.attempt_log');
	is($rc2, 0, 'attempt_log is readable by a LATIN1 client') or diag $err2;
}

# --- a JSON \u0000 inside a 201 does not cost the SID ------------------------
my $nul = '+14155550702';
my $sid = 'SM' . ('0123456789abcdef' x 2);
$standin->script($nul, TwilioStandIn::raw(201, ["Content-Type: application/json"],
	qq({"sid": "$sid", "status": "queued\\u0000\\u0007", "body": "a\\u0000b", "num_segments": "1"})));
OutboxTest::enqueue_to($node, $nul);
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$nul'",
	'\u0000 in a 201: sent');
is(OutboxTest::message_row($node, $nul, 'twilio_sid, last_error_message IS NULL'), "$sid|t",
	'\u0000 in a 201: the SID is kept, the body read');

# --- a long error message is bounded -----------------------------------------
my $long = '+14155550703';
$standin->script($long, { status => 400, code => 21211, message => ('x' x 5000) });
OutboxTest::enqueue_to($node, $long);
OutboxTest::wait_until($node,
	"SELECT state = 'dead' FROM twilio_outbox.messages WHERE to_number = '$long'", 'long message: dead');
ok(run("SELECT length(last_error_message) FROM twilio_outbox.messages WHERE to_number = '$long'") < 1024,
	'a 5000-character error message is stored bounded');

# --- Retry-After: an HTTP-date in 2037 pauses the account for a day at most ----
my $date = '+14155550704';
my $far = 'Thu, 01 Jan 2037 00:00:00 GMT';
$standin->script($date, { status => 429, retry_after => $far });
OutboxTest::enqueue_to($node, $date);
OutboxTest::wait_until($node,
	"SELECT paused_until IS NOT NULL FROM twilio_outbox.accounts WHERE name = 'main'",
	'429 with a far HTTP-date: the account is paused');
is(run("SELECT paused_until <= now() + interval '1 day 1 minute' FROM twilio_outbox.accounts WHERE name = 'main'"),
	't', 'for a day at most, not until 2037');
is(run("SELECT a.retry_after FROM twilio_outbox.attempt_rows a JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.to_number = '$date'"),
	$far, 'the raw Retry-After is kept');
# The rate-limited message itself waits as long as the pause: bring both forward.
run("UPDATE twilio_outbox.messages SET next_attempt_at = now() WHERE to_number = '$date'");
run("SELECT twilio_outbox.resume_account('main')");
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$date'", 'resumed: sent');

# --- where credentials may go ------------------------------------------------
my $port = $standin->port;
my $n_before = scalar @{ $standin->requests };

sub refused
{
	my ($url, $why, $what) = @_;
	my $log_at = -s $node->logfile;
	run("UPDATE twilio_outbox.accounts SET base_url = '$url' WHERE name = 'main'");
	run('SELECT twilio_outbox.wake_worker()');
	ok($node->wait_for_log(qr/account "main" cannot be used: \Q$why\E/, $log_at), $what);
	OutboxTest::wait_until($node,
		"SELECT starts_with(problem, \$\$$why\$\$) FROM twilio_outbox.worker_accounts WHERE account = 'main'",
		"$what (worker_accounts.problem says why)");
}

# Forms the table refuses, written by a superuser without the constraints:
# decided on libcurl's parse of the URL, never on a prefix of the string.
run('ALTER TABLE twilio_outbox.accounts DROP CONSTRAINT accounts_base_url_form');
run('ALTER TABLE twilio_outbox.accounts DROP CONSTRAINT accounts_base_url_http_only_to_loopback');
refused('http://localhost@evil.example', 'its base_url has user information', 'userinfo localhost@: refused');
refused("http://127.0.0.1.evil.example:$port", 'plain http is allowed to loopback addresses only, not to host "127.0.0.1.evil.example"',
	'127.0.0.1.evil.example: refused');
refused("http://localhost.evil.example:$port", 'plain http is allowed to loopback addresses only, not to host "localhost.evil.example"',
	'localhost.evil.example: refused');
refused("http://127.0.0.1:$port\@evil.example", 'its base_url has user information', 'userinfo 127.0.0.1:port@: refused');

# An https host not in twilio_outbox.allowed_hosts: the account is not used.
refused('https://evil.example', 'host "evil.example" is not in twilio_outbox.allowed_hosts', 'https to a host not allowed: refused');
refused('https://api.twilio.com.evil.example', 'host "api.twilio.com.evil.example" is not in twilio_outbox.allowed_hosts',
	'a Twilio name as a prefix: refused');
# Loopback over https is allowed only with allow_insecure_http (or when listed).
run('ALTER SYSTEM SET twilio_outbox.allow_insecure_http = off');
run('SELECT pg_reload_conf()');
refused("https://127.0.0.1:$port", 'host "127.0.0.1" is not in twilio_outbox.allowed_hosts',
	'loopback without allow_insecure_http: refused');
run('ALTER SYSTEM RESET twilio_outbox.allow_insecure_http');
run('SELECT pg_reload_conf()');

my $waiting = OutboxTest::enqueue_to($node, '+14155550705');
sleep 1.5;
is(scalar @{ $standin->requests }, $n_before, 'no request (no credentials) went anywhere meanwhile');

# The stand-in's host, once allowed_hosts no longer lists... it is still
# loopback, allowed with allow_insecure_http: the waiting message goes, and
# the credentials arrive where they belong.
run('ALTER SYSTEM SET twilio_outbox.allow_insecure_http = on');
run('SELECT pg_reload_conf()');
run("UPDATE twilio_outbox.accounts SET base_url = '${\ $standin->base_url}' WHERE name = 'main'");
run('SELECT twilio_outbox.wake_worker()');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $waiting", 'back on the stand-in: sent');
is($standin->requests(to => '+14155550705')->[0]{auth_password}, $OutboxTest::AUTH_TOKEN,
	'the credentials went to the allowed host');

# secret_env may name only the variables twilio_outbox.allowed_secret_envs allows.
{
	my $log_at = -s $node->logfile;
	run(q{ALTER SYSTEM SET twilio_outbox.allowed_secret_envs = 'TWILIO_AUTH_TOKEN'});
	run('SELECT pg_reload_conf()');
	run('SELECT twilio_outbox.wake_worker()');
	ok($node->wait_for_log(qr/account "main" cannot be used: its secret_env TWILIO_TEST_AUTH_TOKEN is not in twilio_outbox.allowed_secret_envs/, $log_at),
		'a secret_env outside allowed_secret_envs: refused');
	run('ALTER SYSTEM RESET twilio_outbox.allowed_secret_envs');
	run('SELECT pg_reload_conf()');
}

# The host list is a superuser's: no other role may set it.
my ($rc3, $o3, $e3) = $node->psql('postgres',
	q{SET twilio_outbox.allowed_hosts = 'evil.example'});
like($e3, qr/cannot be changed now/, 'allowed_hosts cannot be set in a session');

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process was terminated by a signal');
$node->stop;
$standin->stop;
done_testing();
