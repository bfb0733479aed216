# Rows the dispatcher must survive: whatever an operator (or a superuser
# writing around keys, triggers and constraints) puts in the tables, one
# bad row is dead-lettered or clamped, the others are sent, and the
# dispatcher never crashes (so never crash-loops on a row left `sending`).
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
# Pauses and hand-written rows are noticed at the next poll: poll often.
my $node = OutboxTest::node('hostile_rows', "twilio_outbox.poll_interval = '1s'\n");
OutboxTest::add_account($node, $standin);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.worker_pid()');
my $base = $standin->base_url;

sub run { return OutboxTest::query($node, $_[0]) }

sub dead_letter
{
	my ($id) = @_;
	return run("SELECT reason || '|' || error_message FROM twilio_outbox.dead_letters WHERE message_id = $id");
}

# Hold the account so that rows can be changed before they are claimed
# (the dispatcher reads pauses about once a second).
run("SELECT twilio_outbox.pause_account('main')");
OutboxTest::wait_until($node,
	"SELECT paused_until IS NOT NULL FROM twilio_outbox.worker_accounts WHERE account = 'main'",
	'the dispatcher holds the paused account');

# --- rename_account() carries its queued messages along -------------------
my $renamed = run(q{SELECT twilio_enqueue('+14155550501', 'sent after the rename')});
run("SELECT twilio_outbox.rename_account('main', 'main2')");
is(run("SELECT account FROM twilio_outbox.messages WHERE id = $renamed"), 'main2',
	'rename: the queued message follows its account');

# --- rows a superuser wrote around the keys and triggers ---------------------
my $ok1 = run(q{SELECT twilio_enqueue('+14155550502', 'a good neighbour')});
my $ghost = run(q{SELECT twilio_enqueue('+14155550503', 'account gone')});
my $ghost_sending = run(q{SELECT twilio_enqueue('+14155550504', 'account gone while in flight')});
my $empty_to = run(q{SELECT twilio_enqueue('+14155550505', 'no recipient')});
my $maxed = run(q{SELECT twilio_enqueue('+14155550508', 'counters at their maximum')});
run("UPDATE twilio_outbox.messages SET attempts = 2147483647, failures = 2147483647,
	ambiguous_attempts = 2147483647, segments = 2147483647 WHERE id = $maxed");
run(qq{
	SET session_replication_role = replica;
	UPDATE twilio_outbox.messages SET account = 'ghost' WHERE id = $ghost;
	-- as a dispatcher killed with the request in flight leaves it
	UPDATE twilio_outbox.messages SET account = 'ghost', state = 'sending', attempts = 1,
		worker_pid = NULL, lease_until = now() - interval '1 hour' WHERE id = $ghost_sending;
	UPDATE twilio_outbox.messages SET to_number = '' WHERE id = $empty_to;
});

# A second account, whose sender a message of main2 is pointed at.
run(qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url)
		VALUES ('other', '$OutboxTest::ACCOUNT_SID', '$base');
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('other', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
		VALUES ('other', '+15005550007', 'long_code', 'Infinity');
});
my $other_sender = run("SELECT id FROM twilio_outbox.senders WHERE from_number = '+15005550007'");
my $crossed = run(q{SELECT twilio_enqueue('+14155550506', 'sender of another account')});
run("UPDATE twilio_outbox.messages SET sender_id = $other_sender WHERE id = $crossed");

# A sender deleted with its messages still queued (a plain DELETE is
# allowed: no trigger on senders; delete_sender() is the guarded way).
run(q{INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
	VALUES ('main2', '+15005550008', 'long_code', 'Infinity')});
my $orphan = run(q{SELECT twilio_enqueue('+14155550507', 'sender gone', from_number => '+15005550008')});
run(q{DELETE FROM twilio_outbox.senders WHERE from_number = '+15005550008'});

# Restart the dispatcher: it takes back the `sending` row first (where the
# crash loop began), then everything is claimed at once.
run('SELECT twilio_outbox.stop_worker()');
run('SELECT twilio_outbox.start_worker()');
$pid = run('SELECT twilio_outbox.worker_pid()');
run("SELECT twilio_outbox.resume_account('main2')");

OutboxTest::wait_until($node,
	"SELECT count(*) = 3 FROM twilio_outbox.messages WHERE id IN ($renamed, $ok1, $maxed) AND state = 'sent'",
	'the renamed account\'s message, its neighbour, and a row with counters at their maximum are sent');
OutboxTest::wait_until($node,
	"SELECT count(*) = 5 FROM twilio_outbox.messages WHERE id IN ($ghost, $ghost_sending, $empty_to, $crossed, $orphan) AND state = 'dead'",
	'every unusable row is dead');
like(dead_letter($ghost), qr/^account_missing\|its account "ghost" does not exist/,
	'account gone: dead letter account_missing');
like(dead_letter($ghost_sending), qr/^account_missing\|/,
	'account gone while in flight: taken back, then dead letter account_missing');
like(dead_letter($empty_to), qr/^invalid_message\|/, 'no recipient: dead letter invalid_message');
like(dead_letter($crossed), qr/^sender_missing\|its sender $other_sender belongs to account "other", not to its account "main2"/,
	'sender of another account: dead letter sender_missing');
like(dead_letter($orphan), qr/^sender_missing\|its sender \d+ does not exist/,
	'sender deleted: dead letter sender_missing');
is(scalar @{ $standin->requests(to => $_) }, 0, "no request for $_")
  for ('+14155550503', '+14155550504', '+14155550506', '+14155550507');
is(run("SELECT count(*) FROM twilio_outbox.attempt_rows WHERE message_id = $empty_to AND outcome = 'dead'"),
	'1', 'the refused claim is recorded as a dead attempt');
# A row whose account or sender does not fit is never claimed (each claim
# names one account and asks for that account's senders): the orphan sweep
# dead-letters it without an attempt.
is(run("SELECT count(*) FROM twilio_outbox.attempt_rows WHERE message_id IN ($ghost, $crossed, $orphan)"),
	'0', 'rows that cannot be claimed are dead-lettered without an attempt');

# --- a `sending` row written by hand, with no lease: taken back and sent,
# without waiting for a restart -------------------------------------------------
my $no_lease = run(q{
	INSERT INTO twilio_outbox.messages (account, sender_id, to_number, body, encoding,
		segments, idempotency_key, next_attempt_at, state, attempts)
	SELECT 'main2', id, '+14155550509', 'sending, no lease', 'GSM-7', 1, gen_random_uuid(),
		now(), 'sending', 1 FROM twilio_outbox.senders WHERE from_number = '+15005550006'
	RETURNING id});
run('SELECT twilio_outbox.wake_worker()');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' AND attempts = 2 FROM twilio_outbox.messages WHERE id = $no_lease",
	'a sending row without a lease is taken back (attempt lost) and sent');

# --- a sender whose burst or rate no dispatcher can use -----------------------
# The table refuses them (senders_rate_range, senders_burst_range); a
# superuser can drop the constraints.  Each bad sender is clamped; none
# stops the others.
run(q{ALTER TABLE twilio_outbox.senders DROP CONSTRAINT senders_burst_range;
	ALTER TABLE twilio_outbox.senders DROP CONSTRAINT senders_rate_range;
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate, burst) VALUES
		('main2', '+15005550011', 'long_code', 100, 'Infinity'),
		('main2', '+15005550012', 'long_code', 100, 1e10),
		('main2', '+15005550013', 'long_code', 'NaN', 'NaN'),
		('main2', '+15005550014', 'long_code', 1e400, 1e400),
		('main2', '+15005550015', 'long_code', -5, -5)});
# pick the new senders up at once
run('SELECT twilio_outbox.stop_worker()');
run('SELECT twilio_outbox.start_worker()');
$pid = run('SELECT twilio_outbox.worker_pid()');
my @tos;
for my $i (1 .. 5)
{
	my $to = "+1415555060$i";
	push @tos, $to;
	run("SELECT twilio_enqueue('$to', 'from a hostile sender', from_number => '+1500555001$i')");
}
run(q{SELECT twilio_enqueue('+14155550610', 'from the default sender')});
OutboxTest::wait_until($node,
	"SELECT count(*) = 6 FROM twilio_outbox.messages WHERE to_number IN ('"
	  . join("', '", @tos, '+14155550610') . "') AND state = 'sent'",
	'hostile senders: every message is sent, the default sender\'s too');
unlike(slurp_file($node->logfile), qr/LIMIT must not be negative|out of range/,
	'no claim failed on a hostile bucket');

# --- the dispatcher never died -----------------------------------------------
is(run('SELECT twilio_outbox.worker_pid()'), $pid, 'the same dispatcher ran throughout');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process was terminated by a signal');

$node->stop;
$standin->stop;
done_testing();
