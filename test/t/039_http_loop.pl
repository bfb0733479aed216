# The dispatcher's HTTP loop on libcurl's socket interface (issue 14): the
# sockets with activity come from an epoll set, libcurl's timers from
# curl_multi_timeout(), and the wait is on the latch and that set at once.
# What the old loop (curl_multi_perform over every transfer) did by walking
# everything must still happen:
#  - a transfer stalled mid-body ends at the request timeout (a timer of
#    libcurl's, which no socket activity drives), while the others on the
#    account finish and are recorded;
#  - more sockets ready at once than one turn takes (256) all finish: a
#    level-triggered socket not taken this turn is taken at the next;
#  - transfers finish while committed enqueues keep setting the latch: none
#    is lost or sent twice.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
# request_timeout 2 s (OutboxTest); on_ambiguous = retry: nothing here
# should be ambiguous, and a retry would show as a second attempt.
my $node = OutboxTest::node('http_loop',
	"twilio_outbox.on_ambiguous = retry\ntwilio_outbox.max_in_flight = 400\n");
OutboxTest::add_account($node, $standin, max_concurrency => 400);
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');

# Messages to $prefix . n for n in 1 .. $count, all 'sent', one attempt and
# one request each.
sub all_sent_once
{
	my ($prefix, $count, $what) = @_;
	OutboxTest::wait_until($node, qq{
		SELECT count(*) FILTER (WHERE state = 'sent') = $count
		FROM twilio_outbox.messages WHERE to_number LIKE '$prefix%'},
		"$what: all $count sent");
	is(OutboxTest::query($node, qq{
		SELECT count(*) FILTER (WHERE attempts = 1), count(DISTINCT to_number)
		FROM twilio_outbox.messages WHERE to_number LIKE '$prefix%'}),
		"$count|$count", "$what: one attempt each, every recipient once");
	my %per;
	$per{ $_->{form}{To}[0] }++
	  for grep { ($_->{form}{To}[0] // '') =~ /^\Q$prefix\E/ } @{ $standin->requests };
	is(scalar(grep { $_ == 1 } values %per) . '/' . scalar(keys %per), "$count/$count",
		"$what: the stand-in saw exactly one request per recipient");
	return;
}

# ---------- a transfer stalled mid-body, others finishing beside it ----------
my $stalled = '+14155550390';
$standin->steady({ status => 201, delay => 0.3 });
$standin->script($stalled, { stall_body => 6 });
OutboxTest::query($node, qq{
	SELECT twilio_enqueue('$stalled', 'stalls');
	SELECT twilio_enqueue('+1415555100' || n, 'beside it') FROM generate_series(0, 29) n;
});
all_sent_once('+1415555100', 30, 'beside a stalled transfer');
# Its 201 had arrived: created, whatever the body says (retry.c), so sent,
# with no SID, the transport's error recorded beside it.
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '$stalled'",
	'stalled mid-body: sent (its 201 had arrived)');
my @att = split /\n/, OutboxTest::query($node, qq{
	SELECT a.attempt || '|' || a.outcome || '|' || a.http_status || '|' || coalesce(a.transport_error, '')
	FROM twilio_outbox.attempts a JOIN twilio_outbox.messages m ON m.id = a.message_id
	WHERE m.to_number = '$stalled' ORDER BY a.attempt});
is(scalar @att, 1, 'stalled mid-body: one attempt');
like($att[0] // '', qr/^1\|sent\|201\|.*timed out/i,
	'the attempt: HTTP 201, cut by the request timeout');
my ($got, $of) = ($att[0] // '') =~ /with (\d+) out of (\d+) bytes received/;
ok(defined $got && $got > 0 && $got < $of,
	'the attempt: cut mid-body (' . ($got // '?') . ' of ' . ($of // '?') . ' bytes)');
is(OutboxTest::message_row($node, $stalled, 'twilio_sid IS NULL, attempts'), 't|1',
	'stalled mid-body: no SID (the body never came whole), one attempt');
is(scalar @{ $standin->requests(to => $stalled) }, 1, 'stalled mid-body: one request, never resent');

# ---------- more sockets ready at once than one turn takes ----------
# 300 requests in flight together, answered after the same delay: their
# answers arrive within moments of each other.
$standin->steady({ status => 201, delay => 1 });
OutboxTest::query($node, q{
	SELECT twilio_enqueue('+1415556' || lpad(n::text, 4, '0'), 'together')
	FROM generate_series(1, 300) n;
});
all_sent_once('+1415556', 300, '300 at once');

# ---------- transfers finishing while the latch keeps being set ----------
# 80 enqueues, each its own transaction (each commit sets the dispatcher's
# latch), while the earlier ones' requests finish.
$standin->steady({ status => 201, delay => 0.2 });
OutboxTest::query($node,
	join('', map { "SELECT twilio_enqueue('+1415557" . sprintf('%04d', $_) . "', 'latch');\n" } 1 .. 80));
all_sent_once('+1415557', 80, 'enqueued while others finish');

# Nothing left in flight, nothing in the dispatcher's published count.
OutboxTest::wait_until($node,
	"SELECT in_flight = 0 FROM twilio_outbox.worker_dispatchers WHERE running",
	'nothing left in flight');

$node->stop;
done_testing();
