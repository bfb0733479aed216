# twilio_outbox.databases: the dispatcher of a listed database starts with
# the server, sends, and comes back by itself after a crash of the server.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('preload',
	"twilio_outbox.databases = 'postgres'\nrestart_after_crash = on\n");
OutboxTest::add_account($node, $standin);

OutboxTest::wait_until($node, 'SELECT twilio_outbox.worker_pid() IS NOT NULL',
	'the dispatcher started with the server, without start_worker()');
OutboxTest::query($node, q{SELECT twilio_enqueue('+14155550170', 'hello')});
OutboxTest::wait_until($node,
	q{SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550170'},
	'and it sends');
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid()');
is(OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()'), $pid,
	'start_worker() finds it running');

# A crash (SIGKILL of the dispatcher restarts the whole server): it is back
# without anyone calling start_worker().
kill 'KILL', $pid;
OutboxTest::wait_until($node,
	"SELECT twilio_outbox.worker_pid() IS NOT NULL AND twilio_outbox.worker_pid() <> $pid",
	'after a crash the server restarts it');
OutboxTest::query($node, q{SELECT twilio_enqueue('+14155550171', 'hello again')});
OutboxTest::wait_until($node,
	q{SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550171'},
	'and it sends again');

$node->stop;
$standin->stop;
done_testing();
