# Reconciliation of ambiguous sends (on_ambiguous = reconcile, the
# default), end to end with the dispatcher and the stand-in, counting at
# the stand-in how many messages each of ours created there:
#   - found by a status callback carrying our outbox_id (no lookup needed);
#   - found by a lookup in Twilio's message list, on its second page;
#   - not found: sent again, once, with the same idempotency key;
#   - two matching messages at Twilio: left for an operator, with both
#     SIDs as candidates, and nothing sent again;
#   - a lookup answered 429: lookups wait, then find the message;
#   - attempts exhausted after an ambiguous one: reconciled before the
#     dead letter (found: sent; not found: dead, never a third create);
#   - a failure before the request went out (429) is not ambiguous.
use strict;
use warnings;

use FindBin;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('reconcile', "twilio_outbox.reconcile_grace = '1h'\n");
OutboxTest::add_account($node, $standin);
my $callback_url = 'https://hooks.example.com/status';
$node->safe_psql('postgres',
	"UPDATE twilio_outbox.accounts SET status_callback_url = '$callback_url', lookups_per_second = 50");
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');

sub sql { return OutboxTest::query($node, $_[0]) }

sub set_grace
{
	my ($grace) = @_;
	sql("ALTER SYSTEM SET twilio_outbox.reconcile_grace = '$grace'");
	sql('SELECT pg_reload_conf()');
	sql('SELECT twilio_outbox.wake_worker()');
	return;
}

# How many messages the stand-in created for our message $id (by the
# outbox_id of its StatusCallback URL).
sub created_for
{
	my ($id) = @_;
	return $standin->created->{by_outbox_id}{$id} // 0;
}

sub outcomes
{
	my ($id) = @_;
	return sql("SELECT string_agg(outcome::text, ',' ORDER BY id NULLS FIRST) FROM twilio_outbox.attempt_rows WHERE message_id = $id");
}

is(sql('SHOW twilio_outbox.on_ambiguous'), 'reconcile', 'reconcile is the default policy');

# --- found by callback ------------------------------------------------------
# The grace is an hour: only the callback can settle it.
my $to = '+14155550501';
$standin->fault($to, 'create_500', 1, callbacks => 0);
my $id = OutboxTest::enqueue_to($node, $to, 'found by callback');
OutboxTest::wait_until($node,
	"SELECT state = 'ambiguous' AND reconcile_at > now() + interval '50 minutes' FROM twilio_outbox.messages WHERE id = $id",
	'a 500 after creating it: ambiguous, to be looked up after the grace');
is(created_for($id), 1, 'the stand-in created it once');
sub listed
{
	my (%query) = @_;
	my (undef, $page) = $standin->list_messages($OutboxTest::ACCOUNT_SID, { PageSize => 1000, %query });
	return @{ $page->{messages} };
}

# The dispatcher's list requests for $to (the test's own carry no credentials).
sub lists_to
{
	my ($to) = @_;
	return grep { ($_->{query}{To} // '') eq $to && defined $_->{auth_user} } @{ $standin->lists };
}

my ($listed) = listed(To => $to);
my $sid = $listed->{sid};
my $url = "$callback_url?outbox_id=$id";
my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&From=%2B15005550006&MessageSid=$sid"
  . "&MessageStatus=sent&To=%2B14155550501";
is(sql("SELECT twilio_outbox.receive_status('$url', '$body',"
		. " twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', '$url', '$body'))"),
	'applied', 'the signed callback with our outbox_id is applied');
is(OutboxTest::message_row($node, $to, "state || '|' || twilio_sid || '|' || (reconcile_at IS NULL)"),
	"sent|$sid|true", 'its SID adopted: sent, reconciliation over');
is(outcomes($id), 'reconcile,found', 'the attempts: ambiguous (reconcile), then found');
is(scalar(lists_to($to)), 0, 'no lookup was needed');

# The lookups from here on: due a second after the ambiguous attempt.
set_grace('1s');

# --- found by lookup, on the second page ------------------------------------
$to = '+14155550502';
# 55 other messages to the same recipient from the same number, dated after
# ours will be: ours is on the list's second page (50 a page)
my $later = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time + 120));
for my $n (1 .. 55)
{
	$standin->create_message({ account_sid => $OutboxTest::ACCOUNT_SID, to => $to,
		from => $OutboxTest::FROM, body => "another message $n", date_created => $later });
}
$standin->fault($to, 'create_500', 1, callbacks => 0);
$id = OutboxTest::enqueue_to($node, $to, 'on page two');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id", 'found by the lookup: sent');
($listed) = grep { $_->{body} eq 'on page two' } listed(To => $to);
is(OutboxTest::message_row($node, $to, 'twilio_sid'), $listed->{sid}, 'with the SID Twilio has');
is(created_for($id), 1, 'created once, never sent again');
my @pages = lists_to($to);
ok(scalar(@pages) >= 2, scalar(@pages) . ' list requests: the next page was followed');
is($pages[0]{query}{From}, $OutboxTest::FROM, 'filtered by From (a from-number sender)');
ok(exists $pages[1]{query}{PageToken}, 'the second by next_page_uri');
is(outcomes($id), 'reconcile,found', 'attempts: reconcile, found');
is(sql("SELECT reconciled_found FROM twilio_outbox.stats WHERE \"window\" = '1 hour'"), '2',
	'stats: two found by reconciliation');

# --- not found: sent again, once --------------------------------------------
$to = '+14155550503';
$standin->fault($to, '503', 1);
$id = OutboxTest::enqueue_to($node, $to, 'not created');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id", 'looked up, not found, sent again');
is(created_for($id), 1, 'the stand-in created exactly one message');
is(outcomes($id), 'reconcile,not_found,sent', 'attempts: reconcile, not_found, sent');
is(scalar(@{ $standin->requests(to => $to) }), 2, 'two creates: the 503 and the resend');
my @keys = map { $_->{headers}{'idempotency-key'} // '' } @{ $standin->requests(to => $to) };
is($keys[0], $keys[1], 'the resend carries the same idempotency key');

# --- two candidates: left for an operator -----------------------------------
$to = '+14155550504';
# the same message, already at Twilio (within the clock-skew margin of the
# attempt), and the attempt creates another
$standin->create_message({ account_sid => $OutboxTest::ACCOUNT_SID, to => $to,
	from => $OutboxTest::FROM, body => 'twice at Twilio' });
$standin->fault($to, 'create_500', 1, callbacks => 0);
$id = OutboxTest::enqueue_to($node, $to, 'twice at Twilio');
OutboxTest::wait_until($node,
	"SELECT reconcile_at IS NULL AND state = 'ambiguous' FROM twilio_outbox.messages WHERE id = $id",
	'two matches: left for an operator');
is(sql("SELECT next_step || '|' || cardinality(reconcile_candidates) FROM twilio_outbox.ambiguous_messages WHERE id = $id"),
	'operator|2', 'the backlog view shows both candidates');
my %at_twilio = map { $_->{sid} => 1 } listed(To => $to);
is(sql("SELECT count(*) FROM twilio_outbox.messages m, unnest(m.reconcile_candidates) c WHERE m.id = $id AND c IN ("
		. join(',', map { "'$_'" } sort keys %at_twilio) . ')'), '2', 'the candidates are the two SIDs at Twilio');
is(scalar(@{ $standin->requests(to => $to) }), 1, 'nothing sent again');
is(sql("SELECT status FROM twilio_outbox.health WHERE check_name = 'ambiguous'"), 'warning',
	'health: a message waits for an operator');
is(outcomes($id), 'reconcile,for_operator', 'attempts: reconcile, for_operator');

# --- a lookup answered 429 ---------------------------------------------------
$to = '+14155550505';
$standin->list_script({ status => 429, retry_after => '1' });
$standin->fault($to, 'create_500', 1, callbacks => 0);
$id = OutboxTest::enqueue_to($node, $to, 'after a 429');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id", 'found after the 429');
@pages = lists_to($to);
is(join(',', map { $_->{status} } @pages[0, 1]), '429,200', 'the lookup was rate limited, then answered');
is(created_for($id), 1, 'created once');
is(sql("SELECT paused_until IS NULL FROM twilio_outbox.accounts WHERE name = 'main'"), 't',
	'a 429 on a lookup does not pause the account\'s sends');

# --- a 429 on the create is not ambiguous -----------------------------------
$to = '+14155550506';
$standin->fault($to, '429', 1);
$id = OutboxTest::enqueue_to($node, $to, 'rate limited');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id", 'sent after the 429');
is(outcomes($id), 'rate_limited,sent', 'never looked up: a 429 was never processed');
is(sql("SELECT ambiguous_since IS NULL FROM twilio_outbox.messages WHERE id = $id"), 't',
	'and never ambiguous');

# --- attempts exhausted after an ambiguous one --------------------------------
sql("ALTER SYSTEM SET twilio_outbox.max_attempts = 2");
set_grace('1s');
# found: the second attempt created it and answered 500
$to = '+14155550507';
$standin->fault($to, '503', 1);
$standin->fault($to, 'create_500', 1, callbacks => 0);
$id = OutboxTest::enqueue_to($node, $to, 'last attempt created it');
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id", 'out of attempts, found: sent');
is(outcomes($id), 'reconcile,not_found,reconcile,found', 'attempts: looked up after each');
is(created_for($id), 1, 'created once');
# not found: dead letter, and no third create
$to = '+14155550508';
$standin->fault($to, '503', 2);
$id = OutboxTest::enqueue_to($node, $to, 'never created');
OutboxTest::wait_until($node,
	"SELECT state = 'dead' FROM twilio_outbox.messages WHERE id = $id", 'out of attempts, not found: dead');
is(sql("SELECT reason FROM twilio_outbox.dead_letters WHERE message_id = $id"), 'attempts_exhausted',
	'dead-lettered attempts_exhausted');
is(outcomes($id), 'reconcile,not_found,reconcile,dead', 'looked up before the dead letter');
is(scalar(@{ $standin->requests(to => $to) }), 2, 'two creates, never a third');
is(sql("SELECT reconciled_resent FROM twilio_outbox.stats WHERE \"window\" = '1 hour'"), '3',
	'stats: three sent again after a lookup found nothing');

$node->stop;
$standin->stop;
done_testing();
