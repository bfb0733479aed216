# The claim reads what it needs of an account once per claim statement (one
# statement per account, each naming it), and a message's campaign only when
# it has one: with several accounts due in the same claim, each message must
# still get its own account's status callback URL and its own account's
# campaign state, never another account's (a value of the first account
# carried into the second's statement, or a campaign looked up by name
# alone, would show here).
use strict;
use warnings;

use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('claim_per_account');
OutboxTest::add_account($node, $standin);
my $base = $standin->base_url;
$node->safe_psql('postgres', qq{
	UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/main' WHERE name = 'main';
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, status_callback_url)
		VALUES ('second', '$OutboxTest::ACCOUNT_SID', '$base', 'https://hooks.example.com/second?tenant=2'),
		       ('third', '$OutboxTest::ACCOUNT_SID', '$base', NULL);
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('second', 'TWILIO_TEST_AUTH_TOKEN'), ('third', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate, is_default)
		VALUES ('second', '+15005550007', 'long_code', 'Infinity', true),
		       ('third', '+15005550008', 'long_code', 'Infinity', true);
});

sub enqueue
{
	my ($to, $account, $campaign) = @_;
	my $c = defined $campaign ? ", campaign => '$campaign'" : '';
	return $node->safe_psql('postgres',
		"SELECT twilio_enqueue('$to', 'per account', account => '$account'$c)");
}

# Due together before the dispatcher starts, so that one claim takes them all.
my %id;
$id{main} = enqueue('+14155550400', 'main');
$id{second} = enqueue('+14155550401', 'second');
$id{third} = enqueue('+14155550402', 'third');
# the same campaign name in two accounts: paused in main only
$id{main_promo} = enqueue('+14155550403', 'main', 'promo');
$id{second_promo} = enqueue('+14155550404', 'second', 'promo');
# paused in its row alone (pause_campaign() would also move its messages'
# next_attempt_at, and the claim would never see them): the claim's own
# campaign check must hold it back
$node->safe_psql('postgres',
	q{UPDATE twilio_outbox.campaigns SET state = 'paused' WHERE account = 'main' AND name = 'promo'});

$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	"SELECT count(*) >= 4 FROM twilio_outbox.messages WHERE state = 'sent'",
	'every message but the paused campaign\'s is sent');

sub callback_of
{
	my ($to) = @_;
	my $reqs = $standin->requests(to => $to);
	return '(not sent)' unless @$reqs;
	my $v = $reqs->[-1]{form}{StatusCallback};
	return ref $v ? $v->[0] : ($v // '(none)');
}
is(callback_of('+14155550400'), "https://hooks.example.com/main?outbox_id=$id{main}",
	"account main's message: main's callback URL with its outbox_id");
is(callback_of('+14155550401'), "https://hooks.example.com/second?tenant=2&outbox_id=$id{second}",
	"account second's message: second's callback URL, the outbox_id after '&'");
is(callback_of('+14155550402'), '(none)',
	'account third has no callback URL: none is sent, not another account\'s');
is(callback_of('+14155550404'), "https://hooks.example.com/second?tenant=2&outbox_id=$id{second_promo}",
	"second's campaign promo is active: its message is sent");
is(callback_of('+14155550403'), '(not sent)',
	"main's campaign promo is paused: its message is not sent");
is($node->safe_psql('postgres',
	"SELECT state || '|' || attempts FROM twilio_outbox.messages WHERE id = $id{main_promo}"),
	'queued|0', "main's promo message waits, queued, its claim undone");

$node->safe_psql('postgres', 'SELECT twilio_outbox.stop_worker()');
$node->stop;
$standin->stop;
done_testing();
