# Fewer row versions per message (issue 14): a message the dispatcher sends
# at its first attempt keeps that attempt on its own row (first_* columns)
# and writes no twilio_outbox.attempts row; a retried message keeps all its
# attempt rows.  The attempt log still shows every request the stand-in
# answered, once, with the fields the dispatcher read from its answer.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
# a 500 is retried (not reconciled) here: the retried message is this
# file's, reconciliation is 025_reconcile.pl's
my $node = OutboxTest::node('row_versions', "twilio_outbox.on_ambiguous = retry\n");
OutboxTest::add_account($node, $standin);
my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, 'dispatcher started');

my $n = 30;
my $retried = '+14155550399';
$standin->script($retried, { status => 500 }, { status => 201 });
OutboxTest::query($node, qq{
	BEGIN;
	SELECT twilio_enqueue('+1415555' || lpad(i::text, 4, '0'), 'row versions ' || i)
	FROM generate_series(1, $n) i;
	SELECT twilio_enqueue('$retried', 'retried once');
	COMMIT;
});
OutboxTest::wait_until($node,
	"SELECT count(*) = $n + 1 FROM twilio_outbox.messages WHERE state = 'sent'",
	'every message is sent');

# --- what was written --------------------------------------------------------
is(OutboxTest::query($node, qq{
		SELECT count(*) FROM twilio_outbox.attempts a
		JOIN twilio_outbox.messages m ON m.id = a.message_id WHERE m.to_number <> '$retried'}),
	'0', 'no attempt row for a message sent at its first attempt');
is(OutboxTest::query($node, qq{
		SELECT count(*) FROM twilio_outbox.messages
		WHERE first_started_at IS NOT NULL AND to_number <> '$retried'}),
	$n, 'each of them keeps its first attempt on its row');
is(OutboxTest::query($node, qq{
		SELECT string_agg(a.attempt || ':' || a.outcome || ':' || coalesce(a.http_status::text, '-'),
			',' ORDER BY a.attempt)
		FROM twilio_outbox.attempts a JOIN twilio_outbox.messages m ON m.id = a.message_id
		WHERE m.to_number = '$retried'}),
	'1:retry:500,2:sent:201', 'the retried message keeps both its attempt rows');
is(OutboxTest::message_row($node, $retried, 'first_started_at IS NULL, attempts'),
	't|2', 'and keeps no first attempt on its row');

# --- what readers see --------------------------------------------------------
my $reqs = $standin->requests;
is(OutboxTest::query($node, 'SELECT count(*) FROM twilio_outbox.attempt_log'),
	scalar @$reqs, 'attempt_log: one line per request the stand-in answered');
is(OutboxTest::query($node, q{
		SELECT count(*) FROM (SELECT message_id, attempt FROM twilio_outbox.attempt_log
		GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'no attempt shown twice');
my $created = $standin->created;
is(OutboxTest::query($node, q{
		SELECT count(DISTINCT twilio_sid) FROM twilio_outbox.attempt_log WHERE outcome = 'sent'}),
	$created->{total}, 'the SIDs of the sent attempts are the messages the stand-in created');
is(OutboxTest::query($node, qq{
		SELECT count(*) FROM twilio_outbox.attempt_log l JOIN twilio_outbox.messages m ON m.id = l.message_id
		WHERE m.to_number <> '$retried' AND l.attempt = 1 AND l.outcome = 'sent'
		  AND l.http_status = 201 AND l.twilio_sid = m.twilio_sid AND l.request_id ~ '^RQ[0-9a-f]{32}\$'
		  AND l.concurrent_requests >= 1 AND l.request_duration >= 0 AND l.duration_ms > 0
		  AND l.started_at <= m.sent_at AND NOT l.ambiguous AND l.twilio_code IS NULL
		  AND l.transport_error IS NULL AND l.delay IS NULL AND l.retry_after IS NULL}),
	$n, 'attempt_log shows each kept attempt with the fields of its answer');
is(OutboxTest::query($node, qq{
		SELECT count(*) FROM twilio_outbox.attempt_rows WHERE worker_pid = $pid}),
	scalar @$reqs, 'attempt_rows: every attempt names the dispatcher that made it');
is(OutboxTest::query($node, q{
		SELECT attempts || '|' || sent || '|' || retries FROM twilio_outbox.stats WHERE "window" = '1 hour'}),
	($n + 2) . '|' . ($n + 1) . '|1', 'stats counts every attempt and send once');

$node->stop;
$standin->stop;
done_testing();
