# Requests other than create (src/lookup.c), end to end with the dispatcher
# and the stand-in, with no status callback ever sent:
#   - polling (accounts.poll_after): a message still sent is looked up with
#     GET .../Messages/{Sid}.json and its status applied as a callback's
#     would be (delivered; undelivered 30003 dead-lettered, 21610
#     suppressed), recorded as coming from a poll; one Twilio still reports
#     as queued is polled again later and later, max_polls times, then left
#     for an operator (twilio_outbox.lookups);
#   - lookups_per_second bounds what the stand-in sees, and sends enqueued
#     during a lookup backlog are sent at once;
#   - lookups take the account's concurrency slots, at most half of them;
#   - a 429 on a lookup pauses lookups for its Retry-After, not the account;
#   - retention (accounts.twilio_retention): outside the deletion window
#     nothing is deleted; inside it every final message is deleted at Twilio
#     (204, or 404: already gone) and deleted_at_twilio says when.
use strict;
use warnings;

use FindBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('polling');
OutboxTest::add_account($node, $standin);
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');

sub sql { return OutboxTest::query($node, $_[0]) }

# Settings are read when the dispatcher wakes (every poll_interval, 30 s
# here): wake it after each change.
sub wake { sql('SELECT twilio_outbox.wake_worker()'); return }

# Enqueue to each number, wait until all are sent; their ids and SIDs.
sub send_all
{
	my (@to) = @_;
	my %id = map { $_ => OutboxTest::enqueue_to($node, $_) } @to;
	my $ids = join(',', values %id);
	OutboxTest::wait_until($node,
		"SELECT count(*) = " . scalar(@to) . " FROM twilio_outbox.messages WHERE id IN ($ids) AND state = 'sent'",
		scalar(@to) . ' messages sent');
	my %sid = map { $_ => sql("SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $id{$_}") } @to;
	return (\%id, \%sid);
}

sub gets_of
{
	my ($sid, $method) = @_;
	return [ grep { $_->{sid} eq $sid && $_->{method} eq ($method // 'GET') } @{ $standin->lookups } ];
}

# --- polling: delivered, undelivered by the error policy, still queued ------
my ($id, $sid) = send_all('+14155550401', '+14155550402', '+14155550403', '+14155550404');
is(scalar @{ $standin->lookups }, 0, 'polling is off by default: no lookup at all');
$standin->message_status($sid->{'+14155550401'}, 'delivered');
$standin->message_status($sid->{'+14155550402'}, 'undelivered', error_code => 30003,
	error_message => 'Unreachable destination handset');
$standin->message_status($sid->{'+14155550404'}, 'undelivered', error_code => 21610);
# +14155550403 stays as Twilio created it: queued
sql(q{UPDATE twilio_outbox.accounts SET poll_after = '1 second', max_polls = 3, lookups_per_second = 50 WHERE name = 'main'});
wake();

OutboxTest::wait_until($node,
	"SELECT state = 'delivered' FROM twilio_outbox.messages WHERE id = $id->{'+14155550401'}",
	'no callback: the poll found it delivered');
is(sql("SELECT twilio_status || '|' || polls || '|' || (finished_at IS NOT NULL) || '|' || coalesce(next_lookup_at::text, '-')
		FROM twilio_outbox.messages WHERE id = $id->{'+14155550401'}"),
	'delivered|1|true|-', 'delivered after one poll, finished, no further lookup planned');
is(sql("SELECT source || '|' || message_status || '|' || verdict || '|' || (signature_verified IS NULL)
		FROM twilio_outbox.status_events WHERE message_id = $id->{'+14155550401'}"),
	'poll|delivered|applied|true', 'its status event says it came from a poll');
my $get = gets_of($sid->{'+14155550401'});
is(scalar @$get, 1, 'one GET of its SID at the stand-in');
is($get->[0]{auth_user}, $OutboxTest::ACCOUNT_SID, 'with the account\'s credentials');
is($get->[0]{account_sid}, $OutboxTest::ACCOUNT_SID, 'under its account');

OutboxTest::wait_until($node,
	"SELECT state = 'undelivered' FROM twilio_outbox.messages WHERE id = $id->{'+14155550402'}",
	'undelivered with 30003 applied');
is(sql("SELECT reason || '|' || twilio_code || '|' || error_message FROM twilio_outbox.dead_letters
		WHERE message_id = $id->{'+14155550402'}"),
	'undelivered|30003|Unreachable destination handset',
	'30003: dead-lettered as undelivered, as the error policy says');
is(sql("SELECT last_error_code FROM twilio_outbox.messages WHERE id = $id->{'+14155550402'}"),
	'30003', 'the message carries the delivery error');
OutboxTest::wait_until($node,
	"SELECT state = 'undelivered' FROM twilio_outbox.messages WHERE id = $id->{'+14155550404'}",
	'undelivered with 21610 applied');
is(sql("SELECT count(*) FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550404' AND twilio_code = 21610"),
	'1', '21610: the recipient is suppressed, as the error policy says');
is(sql("SELECT reason FROM twilio_outbox.dead_letters WHERE message_id = $id->{'+14155550404'}"),
	'undelivered', 'and the message dead-lettered');

# Still queued at Twilio: polled again, later each time, max_polls times.
my $q3 = $id->{'+14155550403'};
OutboxTest::wait_until($node,
	"SELECT polls = 3 AND next_lookup_at = 'infinity' FROM twilio_outbox.messages WHERE id = $q3",
	'still queued at Twilio: polled max_polls (3) times, then no more');
is(sql("SELECT state FROM twilio_outbox.messages WHERE id = $q3"), 'sent', 'it stays sent');
$get = gets_of($sid->{'+14155550403'});
is(scalar @$get, 3, 'three GETs of its SID at the stand-in');
if (@$get == 3)
{
	my ($g1, $g2) = ($get->[1]{t} - $get->[0]{t}, $get->[2]{t} - $get->[1]{t});
	ok($g1 >= 1.0, sprintf('the second poll came poll_after (1 s) or more after the first (%.2f s)', $g1));
	ok($g2 >= 2.0, sprintf('the third twice as long or more after the second (%.2f s)', $g2));
}
is(sql("SELECT polls_given_up FROM twilio_outbox.lookups WHERE account = 'main'"), '1',
	'the lookups view shows the message polling gave up on');

# --- lookups_per_second, and sends during a lookup backlog -----------------
sql(q{UPDATE twilio_outbox.accounts SET poll_after = NULL WHERE name = 'main'});
wake();
my @many = map { sprintf('+1415555%04d', 500 + $_) } 1 .. 20;
my ($mid, $msid) = send_all(@many);
$standin->message_status($msid->{$_}, 'delivered') for @many;
my $before = scalar @{ $standin->lookups };
sql(q{UPDATE twilio_outbox.accounts SET poll_after = '1 second', lookups_per_second = 2 WHERE name = 'main'});
wake();
OutboxTest::wait_until($node,
	"SELECT polls_due > 0 FROM twilio_outbox.lookups WHERE account = 'main'", 'a backlog of polls');
my @sends = map { sprintf('+1415555%04d', 600 + $_) } 1 .. 5;
my ($send_ids, $send_sids) = send_all(@sends);
ok(sql("SELECT polls_due FROM twilio_outbox.lookups WHERE account = 'main'") > 0,
	'the sends enqueued during the lookup backlog went out while polls were still due');
$standin->message_status($send_sids->{$_}, 'delivered') for @sends;
my $many_ids = join(',', values %$mid);
OutboxTest::wait_until($node,
	"SELECT count(*) = 20 FROM twilio_outbox.messages WHERE id IN ($many_ids) AND state = 'delivered'",
	'all 20 polled and delivered');
my $send_list = join(',', values %$send_ids);
OutboxTest::wait_until($node,
	"SELECT count(*) = 5 FROM twilio_outbox.messages WHERE id IN ($send_list) AND state = 'delivered'",
	'the 5 sends polled and delivered too');
my @all = @{ $standin->lookups };
@all = @all[$before .. $#all];
my %many_sid = map { $msid->{$_} => 1 } @many;
is(scalar(grep { $many_sid{ $_->{sid} } } @all), 20, 'one GET for each of the twenty');
my @t = map { $_->{t} } @all;
my $worst = 0;
for my $i (0 .. $#t)
{
	# a request is counted when claimed, a little before it arrives: 0.25 s of slack
	my $allowed = 2 + 2 * ($t[$i] - $t[0] + 0.25);
	$worst = $i + 1 - $allowed if $i + 1 - $allowed > $worst;
}
is($worst, 0, sprintf('at no moment more lookups than lookups_per_second (2) times the time elapsed plus the burst (2) (%d in %.1f s)',
	scalar @t, @t ? $t[-1] - $t[0] : 0));

# --- lookups take concurrency slots: at most half the account's ----------
sql(q{UPDATE twilio_outbox.accounts SET poll_after = NULL, max_concurrency = 4, lookups_per_second = 100 WHERE name = 'main'});
wake();
my @slow = map { sprintf('+1415555%04d', 650 + $_) } 1 .. 8;
my ($slow_ids, $slow_sids) = send_all(@slow);
$standin->message_status($slow_sids->{$_}, 'delivered') for @slow;
$standin->lookup_delay(0.5);
sql(q{UPDATE twilio_outbox.accounts SET poll_after = '1 second' WHERE name = 'main'});
wake();
my $slow_list = join(',', values %$slow_ids);
OutboxTest::wait_until($node,
	"SELECT count(*) = 8 FROM twilio_outbox.messages WHERE id IN ($slow_list) AND state = 'delivered'",
	'8 slow lookups (0.5 s each) done');
my %slow_sid = map { $slow_sids->{$_} => 1 } @slow;
my ($most) = sort { $b <=> $a } map { $_->{concurrent} } grep { $slow_sid{ $_->{sid} } } @{ $standin->lookups };
is($most, 2, 'with max_concurrency 4, at most 2 lookups (half the slots) were ever in flight at once');
$standin->lookup_delay(0);
sql(q{UPDATE twilio_outbox.accounts SET max_concurrency = 25 WHERE name = 'main'});
wake();

# --- a 429 on a lookup pauses lookups, not the account ---------------------
sql(q{UPDATE twilio_outbox.accounts SET poll_after = NULL, lookups_per_second = 50 WHERE name = 'main'});
wake();
my ($rid, $rsid) = send_all('+14155550701');
my $r = $rsid->{'+14155550701'};
$standin->message_status($r, 'delivered');
$standin->lookup_script({ status => 429, retry_after => '3' });
sql(q{UPDATE twilio_outbox.accounts SET poll_after = '1 second' WHERE name = 'main'});
wake();
OutboxTest::wait_until($node,
	"SELECT state = 'delivered' FROM twilio_outbox.messages WHERE id = $rid->{'+14155550701'}",
	'429 then 200: delivered');
$get = gets_of($r);
is(scalar @$get, 2, 'two GETs: the 429 and the retry');
is($get->[0]{status}, 429, 'the first answered 429');
my $gap = @$get == 2 ? $get->[1]{t} - $get->[0]{t} : -1;
ok($gap >= 3.0, sprintf('the retry came Retry-After (3 s) or more later (%.2f s)', $gap));
is(sql("SELECT polls || '|' || coalesce(lookup_error, '-') FROM twilio_outbox.messages WHERE id = $rid->{'+14155550701'}"),
	'1|-', 'the 429 was not counted as a poll; no error left once it succeeded');
is(sql(q{SELECT paused_until IS NULL FROM twilio_outbox.accounts WHERE name = 'main'}), 't',
	'the account itself (its sends) was never paused by it');

# --- retention: nothing outside the window, everything inside it ----------
sql(q{UPDATE twilio_outbox.accounts SET twilio_retention = '1 second',
	delete_window_start = ((now() AT TIME ZONE 'UTC')::time + interval '2 hours'),
	delete_window_end = ((now() AT TIME ZONE 'UTC')::time + interval '3 hours') WHERE name = 'main'});
wake();
# A poll after the change shows the dispatcher has read it (one claim does both).
my ($wid, $wsid) = send_all('+14155550801');
$standin->message_status($wsid->{'+14155550801'}, 'delivered');
OutboxTest::wait_until($node,
	"SELECT state = 'delivered' FROM twilio_outbox.messages WHERE id = $wid->{'+14155550801'}",
	'a poll after the window was set');
is(sql(q{SELECT deletions_due > 0 AND NOT in_delete_window FROM twilio_outbox.lookups WHERE account = 'main'}),
	't', 'deletions are due, outside the window');
is(scalar(grep { $_->{method} eq 'DELETE' } @{ $standin->lookups }), 0, 'outside the window: no DELETE');
is(sql(q{SELECT count(*) FROM twilio_outbox.messages WHERE deleted_at_twilio IS NOT NULL}), '0',
	'outside the window: nothing marked deleted');

my $finals = sql(q{SELECT count(*) FROM twilio_outbox.messages
	WHERE state IN ('delivered', 'undelivered', 'failed', 'canceled') AND twilio_sid IS NOT NULL});
# The first deletion finds the message already gone.
$standin->lookup_script({ status => 404 });
sql(q{UPDATE twilio_outbox.accounts SET
	delete_window_start = ((now() AT TIME ZONE 'UTC')::time - interval '1 hour'),
	delete_window_end = ((now() AT TIME ZONE 'UTC')::time + interval '1 hour') WHERE name = 'main'});
wake();
OutboxTest::wait_until($node,
	q{SELECT count(*) = 0 FROM twilio_outbox.messages
	  WHERE state IN ('delivered', 'undelivered', 'failed', 'canceled') AND twilio_sid IS NOT NULL
	  AND deleted_at_twilio IS NULL},
	"inside the window: all $finals final messages deleted at Twilio");
my @del = grep { $_->{method} eq 'DELETE' } @{ $standin->lookups };
is(scalar @del, $finals, 'one DELETE per final message');
is(join(',', sort { $a <=> $b } map { $_->{status} } @del), join(',', (204) x ($finals - 1), 404),
	'answered 204, and one 404 (already gone: also done)');
is(sql(q{SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sent' AND deleted_at_twilio IS NOT NULL}), '0',
	'a message without a final status is never deleted');
my %del_sids = map { $_->{sid} => 1 } @del;
ok(!$del_sids{ $sid->{'+14155550403'} }, 'the message polling gave up on (still sent) was not deleted');
is(sql(q{SELECT deletions_due FROM twilio_outbox.lookups WHERE account = 'main'}), '0', 'no deletion due any more');
is(scalar @{ gets_of($sid->{'+14155550403'}) }, 3, 'the message polling gave up on was never polled a fourth time');

$node->safe_psql('postgres', 'SELECT twilio_outbox.stop_worker()');
$node->stop;
$standin->stop;
done_testing();
