# messages has no foreign key to accounts (sql/0.2/48_enqueue_cost.sql):
# an account can be deleted while messages of it wait, committed or still
# in an open enqueueing transaction.  Such a message is never sent: the
# dispatcher dead-letters it as account_missing, and the other accounts'
# messages go on.  An unknown account is still refused at enqueue.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run ();
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('account_deleted', "twilio_outbox.poll_interval = '1s'\n");
OutboxTest::add_account($node, $standin);
my $base = $standin->base_url;

sub run { return OutboxTest::query($node, $_[0]) }

is(run(q{SELECT count(*) FROM pg_constraint WHERE conrelid = 'twilio_outbox.messages'::regclass
	AND contype = 'f'}), '0', 'messages has no foreign key');

# A second account with its own sender: its messages outlive it.
run(qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url)
		VALUES ('gone', '$OutboxTest::ACCOUNT_SID', '$base');
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('gone', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
		VALUES ('gone', '+15005550007', 'long_code', true, 'Infinity');
});
my $queued = run(q{SELECT twilio_enqueue('+14155550801', 'queued, then its account deleted', account => 'gone')});

# An enqueue still open while the account is deleted: without the key
# nothing locks the account's row, so the delete does not wait for it, and
# the enqueue commits a message whose account is gone.
my ($stdout, $stderr) = ('', '');
my $open = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \my $in, '>', \$stdout, '2>', \$stderr, IPC::Run::timeout(120));
$in = "BEGIN;\nSELECT twilio_enqueue('+14155550802', 'enqueued while its account was deleted', account => 'gone');\n";
$open->pump until $stdout =~ /^(\d+)$/m;
my $racing = $1;
run(q{
	DELETE FROM twilio_outbox.senders WHERE account = 'gone';
	DELETE FROM twilio_outbox.accounts WHERE name = 'gone';
});
is(run(q{SELECT count(*) FROM twilio_outbox.accounts WHERE name = 'gone'}), '0',
	'the account is deleted with its messages queued and an enqueue open');
$in .= "COMMIT;\n";
$open->finish;
is($stderr, '', 'the open enqueue commits');
is(run("SELECT count(*) FROM twilio_outbox.messages WHERE id IN ($queued, $racing) AND account = 'gone'"),
	'2', 'both messages name the deleted account');

# An unknown account is refused at enqueue all the same.
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT twilio_enqueue('+14155550803', 'no such account', account => 'gone')});
like($err, qr/account "gone" does not exist/, 'enqueue with the deleted account is refused');

my $ok = run(q{SELECT twilio_enqueue('+14155550804', 'the other account goes on')});
run('SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	"SELECT count(*) = 2 FROM twilio_outbox.messages WHERE id IN ($queued, $racing) AND state = 'dead'",
	'both messages of the deleted account are dead');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $ok",
	'the message of the remaining account is sent');
for my $id ($queued, $racing)
{
	is(run("SELECT reason || '|' || error_message FROM twilio_outbox.dead_letters WHERE message_id = $id"),
		'account_missing|its account "gone" does not exist',
		"message $id: dead letter account_missing");
}
is(scalar @{ $standin->requests(to => $_) }, 0, "no request for $_")
  for ('+14155550801', '+14155550802');
is(scalar @{ $standin->requests(to => '+14155550804') }, 1, 'one request for the other account');

run('SELECT twilio_outbox.stop_worker()');
$node->stop;
$standin->stop;
done_testing();
