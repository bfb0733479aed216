# Where the dispatcher is willing to send: https always; plain http only
# when twilio_outbox.allow_insecure_http is on, and then only to loopback.
# A refused account is reported and its messages wait, unsent.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('transport');
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# http to an address that is not loopback (0.0.0.0 stays on this machine
# should the check ever fail): the table refuses it ...
my $port = $standin->port;
my ($rc, $out, $err) = $node->psql('postgres',
	"UPDATE twilio_outbox.accounts SET base_url = 'http://0.0.0.0:$port' WHERE name = 'main'");
like($err, qr/violates check constraint "accounts_base_url_http_only_to_loopback"/,
	'the table refuses plain http to a host that is not loopback');
# ... and so does the dispatcher, when a superuser writes around the table.
OutboxTest::query($node,
	'ALTER TABLE twilio_outbox.accounts DROP CONSTRAINT accounts_base_url_http_only_to_loopback');
OutboxTest::query($node,
	"UPDATE twilio_outbox.accounts SET base_url = 'http://0.0.0.0:$port' WHERE name = 'main'");
sleep 1.5;
OutboxTest::query($node, q{SELECT twilio_enqueue('+14155550901', 'not over plain http to the network')});
sleep 2;    # the dispatcher was woken by the commit and had time to act
is(scalar @{ $standin->requests }, 0, 'no request was made');
is(OutboxTest::query($node, q{SELECT state FROM twilio_outbox.messages WHERE to_number = '+14155550901'}),
	'queued', 'the message waits');
like(slurp_file($node->logfile), qr/account "main" cannot be used: plain http is allowed to loopback addresses only/,
	'the server log says why');

# Loopback, but allow_insecure_http off: refused too.
OutboxTest::query($node, "UPDATE twilio_outbox.accounts SET base_url = '" . $standin->base_url . "' WHERE name = 'main'");
OutboxTest::query($node, 'ALTER SYSTEM SET twilio_outbox.allow_insecure_http = off');
OutboxTest::query($node, 'SELECT pg_reload_conf()');
sleep 2;
is(scalar @{ $standin->requests }, 0, 'with allow_insecure_http off, still no request');
like(slurp_file($node->logfile), qr/plain http and twilio_outbox.allow_insecure_http is off/,
	'the server log says why');

# Allowed again: the waiting message goes.
OutboxTest::query($node, 'ALTER SYSTEM SET twilio_outbox.allow_insecure_http = on');
OutboxTest::query($node, 'SELECT pg_reload_conf()');
OutboxTest::wait_until($node,
	q{SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550901'},
	'once allowed, the waiting message is sent');

$node->stop;
$standin->stop;
done_testing();
