# OutboxTest: what the TAP tests of twilio_outbox share.
#
# A throwaway cluster with pg_cron and twilio_outbox preloaded, the
# extension created in database postgres, and one account ("main") whose
# base URL is a TwilioStandIn on 127.0.0.1, with a default long-code sender.
#
#   my $standin = TwilioStandIn->start;
#   my $node = OutboxTest::node('name', "extra = 'conf'\n");
#   OutboxTest::add_account($node, $standin);
#   $node->safe_psql('postgres', "SELECT twilio_outbox.start_worker()");
#   OutboxTest::wait_until($node, "SELECT count(*) = 1 FROM ...");
package OutboxTest;

use strict;
use FindBin;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our $ACCOUNT_SID = 'AC' . ('0123456789abcdef' x 2);
our $AUTH_TOKEN  = 'test-auth-token-not-a-secret';
our $FROM        = '+15005550006';

# Settings that keep the tests short: fast backoff, short timeouts, and a
# poll interval long enough that only a wake-up can explain a quick send.
my $BASE_CONF = <<'CONF';
shared_preload_libraries = 'pg_cron,twilio_outbox'
cron.database_name = 'postgres'
max_worker_processes = 16
twilio_outbox.allow_insecure_http = on
twilio_outbox.poll_interval = '30s'
twilio_outbox.backoff_base = '300ms'
twilio_outbox.backoff_max = '5s'
twilio_outbox.connect_timeout = '2s'
twilio_outbox.request_timeout = '2s'
CONF

# initdb's options for every test cluster: UTF-8 whatever the caller's
# locale (a bare machine's C locale would give SQL_ASCII).
our @INITDB = (extra => [ '--encoding=UTF8', '--locale=C' ]);

sub node
{
	my ($name, $extra_conf, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	# The secret reaches the server through its environment, never a statement.
	$ENV{TWILIO_TEST_AUTH_TOKEN} = $AUTH_TOKEN;
	# allows_streaming: a primary that a standby can stream from (029_failover)
	$node->init(@INITDB, $opt{allows_streaming} ? (allows_streaming => $opt{allows_streaming}) : ());
	$node->append_conf('postgresql.conf', $BASE_CONF . ($extra_conf // ''));
	$node->start;
	$node->safe_psql('postgres',
		'CREATE EXTENSION pg_cron; CREATE EXTENSION twilio_outbox'
		  . (defined $opt{version} ? " VERSION '$opt{version}'" : '') . ';');
	return $node;
}

# The account "main" pointing at the stand-in, with its default sender
# (options: max_concurrency, rate in segments per second).
sub add_account
{
	my ($node, $standin, %opt) = @_;
	my $concurrency = $opt{max_concurrency} // 25;
	# Unlimited unless a test is about rates (a long code's default is 1/s).
	my $rate = defined $opt{rate} ? "'$opt{rate}'" : "'Infinity'";
	my $base = $standin->base_url;
	$node->safe_psql('postgres', qq{
		INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default, max_concurrency)
			VALUES ('main', '$ACCOUNT_SID', '$base', true, $concurrency);
		INSERT INTO twilio_outbox.account_credentials (account, secret_env)
			VALUES ('main', 'TWILIO_TEST_AUTH_TOKEN');
		INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
			VALUES ('main', '$FROM', 'long_code', true, $rate);
	});
	return;
}

# The thin receiver: $TWILIO_OUTBOX_RECEIVER, else the installed one (make
# install puts it in pg_config --bindir, which installcheck puts first in
# PATH), else the one built in this tree.
sub receiver_bin
{
	return $ENV{TWILIO_OUTBOX_RECEIVER} if $ENV{TWILIO_OUTBOX_RECEIVER};
	for my $d (split /:/, $ENV{PATH}, -1)
	{
		return "$d/twilio_outbox_receiver" if $d ne '' && -x "$d/twilio_outbox_receiver";
	}
	return "$FindBin::RealBin/../../receiver/twilio_outbox_receiver";
}

# Poll a boolean query until it returns 't'; fail the test on timeout.
sub wait_until
{
	my ($node, $sql, $what) = @_;
	my $ok = $node->poll_query_until('postgres', $sql);
	ok($ok, $what // "reached: $sql");
	return $ok;
}

sub query
{
	my ($node, $sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# Enqueue one message to $to (body defaults to 'hello') in its own
# transaction; returns the message id.
sub enqueue_to
{
	my ($node, $to, $body) = @_;
	$body //= 'hello';
	return $node->safe_psql('postgres',
		"SELECT twilio_enqueue('$to', '$body')");
}

# Columns of the (latest) message to $to, '|'-separated as psql prints them.
sub message_row
{
	my ($node, $to, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM twilio_outbox.messages WHERE to_number = '$to' ORDER BY id DESC LIMIT 1");
}

1;
