# A status callback racing the dispatcher's record of the create request
# (issues 10, 12, 14), every ordering made deterministic:
#
# 1. The callback overtakes the answer: the stand-in creates the message,
#    posts its signed status callbacks through the thin receiver, and only
#    once they were answered answers the create (callback_first): with a
#    201, a 500 or a dropped connection (ambiguous: the callback already
#    settled it, so it is never sent again); the callbacks final delivered,
#    final undelivered 30003 (the error policy's dead letter, once), or
#    sent only (the later delivered still applies); a chain step whose
#    final failure arrives first escalates once.
# 2. The callback arrives while the record's transaction is open: a test
#    trigger on the messages makes the dispatcher's record wait on an
#    advisory lock the test holds, after its update; the callback then
#    waits on the row lock, and applies on the recorded row.
# 3. The record arrives while the callback's transaction is open: the same
#    trigger holds the receiver's transaction after its update, the stand-in
#    answers the create only then (a gate), the record waits on the row
#    lock and finds the row changed: it keeps the attempt only.
# 4. A message with its own status_callback (no outbox_id in the URL Twilio
#    signs) whose callback overtakes the 201: found by its SID once the
#    record gives it one.
#
# Each checks: final state and status never backwards, sent_at, finished_at
# and twilio_sid set, exactly one attempt in attempt_rows and attempt_log,
# one status_events row per (sid, status), dead letters once, stats, and
# the stand-in's request count (no resend).
use strict;
use warnings;

use FindBin;
use File::Temp ();
use HTTP::Tiny;
use IPC::Run ();
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $receiver_bin = OutboxTest::receiver_bin();

my $standin = TwilioStandIn->start;
# A create the stand-in holds while a callback is applied must not time out.
my $node = OutboxTest::node('callback_race', "twilio_outbox.request_timeout = '120s'\n");
OutboxTest::add_account($node, $standin);

# The receiver on loopback, its public URL the one the account's callbacks
# name, so that the stand-in can post them where Twilio would.
my $rport = PostgreSQL::Test::Cluster::get_free_port();
my $public = "http://127.0.0.1:$rport/twilio";
my $CB = "$public/status";
my $tmp = File::Temp->newdir;
$node->safe_psql('postgres', qq{
	CREATE ROLE twilio_receiver LOGIN IN ROLE twilio_outbox_webhook;
	UPDATE twilio_outbox.accounts SET status_callback_url = '$CB' WHERE name = 'main';
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
		VALUES ('main', 'whatsapp:+15005550009', 'whatsapp', 'Infinity');
});
my $rlog = "$PostgreSQL::Test::Utils::log_path/042_twilio_outbox_receiver.log";
my $rpid = fork() // die "fork: $!";
if ($rpid == 0)
{
	open(STDIN, '<', '/dev/null');
	open(STDOUT, '>>', $rlog);
	open(STDERR, '>>', $rlog);
	exec($receiver_bin, '--listen', '127.0.0.1', '--port', $rport, '--port-file', "$tmp/port",
		'--public-url', $public, '--pool', 4, '--statement-timeout', 300000,
		'--conninfo', $node->connstr('postgres') . ' user=twilio_receiver')
	  or POSIX::_exit(127);
}
for (1 .. 300) { last if -s "$tmp/port"; sleep 0.1; }
ok(-s "$tmp/port", 'the receiver listens');

# The test's hold on either side of the race (parts 2 and 3): after a
# message to a listed number leaves 'sending', the transaction that moved
# it waits for the advisory lock named for its side, the record (the
# dispatcher's session) or the callback (the receiver's session).
$node->safe_psql('postgres', q{
	CREATE TABLE public.race_holds (to_number text, side text, lock_key bigint);
	CREATE FUNCTION public.race_hold() RETURNS trigger
	LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
	BEGIN
		PERFORM pg_advisory_xact_lock(h.lock_key) FROM public.race_holds h
		WHERE h.to_number = NEW.to_number
		  AND h.side = CASE WHEN session_user = 'twilio_receiver' THEN 'callback' ELSE 'record' END;
		RETURN NULL;
	END
	$$;
	CREATE TRIGGER race_hold AFTER UPDATE ON twilio_outbox.messages FOR EACH ROW
		WHEN (OLD.state = 'sending' AND NEW.state <> 'sending')
		EXECUTE FUNCTION public.race_hold();
});
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# What the outbox shows of message $id, as one line.
sub message_of
{
	my ($id) = @_;
	return q1(qq{
		SELECT state || '|' || twilio_status || '|' || (twilio_sid IS NOT NULL)
		  || '|' || (sent_at IS NOT NULL) || '|' || (finished_at IS NOT NULL)
		FROM twilio_outbox.messages WHERE id = $id});
}

# Its attempts: each of attempt_rows and attempt_log, attempt:outcome:ambiguous.
sub attempts_of
{
	my ($id) = @_;
	return q1(qq{
		SELECT (SELECT string_agg(attempt || ':' || outcome || ':' || ambiguous
					|| ':' || coalesce(twilio_sid = m.twilio_sid, false), ',' ORDER BY started_at)
				FROM twilio_outbox.attempt_rows WHERE message_id = $id)
		  || ' / ' || (SELECT count(*) FROM twilio_outbox.attempt_log WHERE message_id = $id)
		FROM twilio_outbox.messages m WHERE m.id = $id});
}

sub events_of
{
	my ($id) = @_;
	return q1(qq{
		SELECT string_agg(message_status || ':' || verdict, ',' ORDER BY id)
		FROM twilio_outbox.status_events e
		WHERE e.message_sid = (SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $id)});
}

sub dead_of
{
	my ($id) = @_;
	return q1(qq{
		SELECT count(*) || coalesce(':' || string_agg(reason || ':' || twilio_code, ','), '')
		FROM twilio_outbox.dead_letters WHERE message_id = $id});
}

# The callbacks' answers the stand-in recorded with the create to $to.
# (posted in the background with a gate: waits for the $n-th answer).
sub answers_to
{
	my ($to, $n) = @_;
	my $got = [];
	for (1 .. 600)
	{
		$got = $standin->requests(to => $to)->[0]{callbacks} // [];
		last if @$got >= ($n // 1);
		sleep 0.1;
	}
	return join ',', map { "$_->{status}:$_->{http}:$_->{body}" } @$got;
}

# A signed callback for $sid through the receiver, as Twilio would post it.
sub post_callback
{
	my ($url, $sid, $to, $status, $code) = @_;
	my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&ApiVersion=2010-04-01"
	  . ($code ? "&ErrorCode=$code" : '')
	  . "&From=%2B15005550006&MessageSid=$sid&MessageStatus=$status&SmsSid=$sid&SmsStatus=$status"
	  . '&To=' . ($to =~ s/\+/%2B/r);
	my $sig = q1("SELECT twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', '$url', '$body')");
	my $res = HTTP::Tiny->new(timeout => 60)->request('POST', $url,
		{ headers => { 'Content-Type' => 'application/x-www-form-urlencoded',
				'X-Twilio-Signature' => $sig }, content => $body });
	return "$res->{status}:$res->{content}";
}

# Enqueue to $to with the stand-in scripted to let $statuses overtake the
# answer $then; wait until the dispatcher recorded the attempt.
sub overtaken
{
	my ($to, $statuses, $then, %opt) = @_;
	$standin->callback_first($to, $OutboxTest::AUTH_TOKEN, $statuses, then => $then);
	my $id = q1("SELECT twilio_enqueue('$to', 'race " . substr($to, -3) . "'"
		  . ($opt{enqueue} // '') . ')');
	OutboxTest::wait_until($node,
		"SELECT count(*) > 0 FROM twilio_outbox.attempt_rows WHERE message_id = $id",
		"$to: the dispatcher recorded its attempt");
	return $id;
}

# --- 1. the callback overtakes the create's answer -----------------------

# 1a. delivered, then the 201
my $a = overtaken('+14155550401', [ { status => 'delivered' } ], { status => 201 });
is(answers_to('+14155550401'), 'delivered:200:applied',
	'1a: the callback was applied while the message was sending');
is(message_of($a), 'delivered|delivered|true|true|true', '1a: delivered, with its SID, sent_at and finished_at');
is_deeply($standin->created->{sids_by_outbox_id}{$a},
	[ q1("SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $a") ],
	'1a: its SID is the one message Twilio created for it');
is(attempts_of($a), '1:sent:false:true / 1', '1a: exactly one attempt, sent, with the SID');
is(events_of($a), 'delivered:applied', '1a: one status event');
is(dead_of($a), '0', '1a: no dead letter');

# 1b. undelivered 30003 (policy dead), then the 201
my $b = overtaken('+14155550402', [ { status => 'undelivered', error_code => 30003 } ], { status => 201 });
is(answers_to('+14155550402'), 'undelivered:200:applied', '1b: the undelivered callback was applied');
is(message_of($b), 'undelivered|undelivered|true|true|true', '1b: undelivered, not moved back by the 201 (queued)');
is(q1("SELECT last_error_code FROM twilio_outbox.messages WHERE id = $b"), '30003', '1b: its error code');
is(dead_of($b), '1:undelivered:30003', '1b: one dead letter, undelivered 30003');
is(attempts_of($b), '1:sent:false:true / 1', '1b: exactly one attempt');
is(events_of($b), 'undelivered:applied', '1b: one status event');

# 1c. sent only, then the 201; the final status comes later
my $c = overtaken('+14155550403', [ { status => 'sent' } ], { status => 201 });
is(answers_to('+14155550403'), 'sent:200:applied', '1c: the sent callback was applied');
is(message_of($c), 'sent|sent|true|true|true', '1c: sent, twilio_status sent (not the 201\'s queued)');
is(attempts_of($c), '1:sent:false:true / 1', '1c: exactly one attempt');
my $csid = q1("SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $c");
is(post_callback("$CB?outbox_id=$c", $csid, '+14155550403', 'delivered'), '200:applied',
	'1c: the later delivered applies');
is(message_of($c), 'delivered|delivered|true|true|true', '1c: then delivered');
is(events_of($c), 'sent:applied,delivered:applied', '1c: one event per status');

# 1d. delivered, then a 500 (ambiguous): settled by the callback, never resent
my $d = overtaken('+14155550404', [ { status => 'delivered' } ], { status => 500 });
is(message_of($d), 'delivered|delivered|true|true|true', '1d: a 500 after the callback: still delivered');
is(attempts_of($d), '1:reconcile:true:false / 1', '1d: exactly one attempt, ambiguous (its answer was a 500)');
is(q1("SELECT ambiguous_attempts || '|' || (reconcile_at IS NULL) FROM twilio_outbox.messages WHERE id = $d"),
	'0|true', '1d: nothing left to reconcile');
is(events_of($d), 'delivered:applied', '1d: one status event');

# 1e. undelivered 30003, then the connection dropped: one dead letter, never resent
my $e = overtaken('+14155550405', [ { status => 'undelivered', error_code => 30003 } ],
	{ fault => 'create_close' });
is(message_of($e), 'undelivered|undelivered|true|true|true', '1e: a dropped connection after the callback: still undelivered');
is(attempts_of($e), '1:reconcile:true:false / 1', '1e: exactly one attempt, ambiguous');
is(dead_of($e), '1:undelivered:30003', '1e: one dead letter');

# 1f. sent, then a reset connection: the message stays sent and is not resent
my $f = overtaken('+14155550406', [ { status => 'sent' } ], { reset => 1 });
is(message_of($f), 'sent|sent|true|true|true', '1f: a reset after the sent callback: sent');
is(attempts_of($f), '1:reconcile:true:false / 1', '1f: exactly one attempt, ambiguous');

# 1g. a chain step's final failure first: one escalation, the SMS stays undelivered
my $g = overtaken('+14155550407', [ { status => 'undelivered', error_code => 30003 } ], { status => 201 },
	enqueue => q{, fallback => '[{"channel": "whatsapp"}]'});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE chain_head = $g AND chain_step = 1",
	'1g: the WhatsApp step is created and sent');
is(q1("SELECT string_agg(step || ':' || channel || ':' || state, ' ' ORDER BY step) FROM twilio_outbox.chain_steps WHERE head_id = $g"),
	'0:sms:undelivered 1:whatsapp:sent', '1g: the SMS undelivered, one WhatsApp step');
is(scalar @{ $standin->requests(to => 'whatsapp:+14155550407') }, 1, '1g: one WhatsApp request');
is(attempts_of($g), '1:sent:false:true / 1', '1g: the SMS has exactly one attempt');
is(dead_of($g), '1:undelivered:30003', '1g: one dead letter');

# --- 2. the callback while the record's transaction is open ---------------

# The test's lock, held in a session of its own until released.
sub hold_lock
{
	my ($key) = @_;
	my %s = (in => '', out => '', err => '');
	$s{h} = IPC::Run::start([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{err}, IPC::Run::timeout(300));
	$s{in} = "SELECT pg_advisory_lock($key);\n\\echo held\n";
	$s{h}->pump until $s{out} =~ /held/;
	return \%s;
}

sub release_lock
{
	my ($s) = @_;
	$s->{in} .= "\\q\n";
	$s->{h}->finish;
	return;
}

my $lock2 = hold_lock(42);
q1("INSERT INTO public.race_holds VALUES ('+14155550410', 'record', 42)");
my $h2 = q1("SELECT twilio_enqueue('+14155550410', 'race 410')");
OutboxTest::wait_until($node,
	q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 42 AND NOT granted},
	'2: the record updated the message and waits, its transaction open');
is(q1("SELECT state FROM twilio_outbox.messages WHERE id = $h2"), 'sending', '2: not committed yet');
my $sid2 = $standin->created->{sids_by_outbox_id}{$h2}[0];
# The callback, from a session of its own: it waits for the record.
my %cb = (in => '', out => '', err => '');
my $cbh = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
	'<', \$cb{in}, '>', \$cb{out}, '2>', \$cb{err}, IPC::Run::timeout(300));
{
	my $url = "$CB?outbox_id=$h2";
	my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&MessageSid=$sid2&MessageStatus=delivered&To=%2B14155550410";
	$cb{in} = "SELECT pg_backend_pid();\nSELECT twilio_outbox.receive_status('$url', '$body',"
	  . " twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', '$url', '$body'));\n";
}
$cbh->pump until $cb{out} =~ /^(\d+)$/m;
my $cbpid = $1;
OutboxTest::wait_until($node,
	qq{SELECT count(*) = 1 FROM pg_stat_activity a
	   WHERE a.pid = ANY (pg_blocking_pids($cbpid)) AND a.backend_type = 'twilio_outbox dispatcher'},
	'2: the callback waits for the dispatcher\'s record');
release_lock($lock2);
$cb{in} .= "\\q\n";
$cbh->finish;
is((split /\n/, $cb{out})[1], 'applied', '2: then the callback applies on the recorded row');
is($cb{err}, '', '2: without error');
is(message_of($h2), 'delivered|delivered|true|true|true', '2: delivered');
is(attempts_of($h2), '1:sent:false:true / 1', '2: exactly one attempt (the first kept on the message)');
is(q1("SELECT first_started_at IS NOT NULL FROM twilio_outbox.messages WHERE id = $h2"), 't',
	'2: the record applied first: the attempt is kept on the message');
is(events_of($h2), 'delivered:applied', '2: one status event');

# --- 3. the record while the callback's transaction is open --------------

my $lock3 = hold_lock(43);
q1("INSERT INTO public.race_holds VALUES ('+14155550411', 'callback', 43)");
$standin->callback_first('+14155550411', $OutboxTest::AUTH_TOKEN,
	[ { status => 'undelivered', error_code => 30003 } ], gate => 'g3');
my $h3 = q1("SELECT twilio_enqueue('+14155550411', 'race 411')");
OutboxTest::wait_until($node,
	q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 43 AND NOT granted},
	'3: the callback updated the message and waits, its transaction open');
$standin->open_gate('g3');
OutboxTest::wait_until($node,
	q{SELECT count(*) = 1 FROM pg_stat_activity a
	  WHERE a.backend_type = 'twilio_outbox dispatcher'
		AND EXISTS (SELECT FROM pg_stat_activity r
					WHERE r.pid = ANY (pg_blocking_pids(a.pid)) AND r.usename = 'twilio_receiver')},
	'3: the stand-in answered 201 and the record waits for the callback');
release_lock($lock3);
OutboxTest::wait_until($node,
	"SELECT count(*) > 0 FROM twilio_outbox.attempt_rows WHERE message_id = $h3",
	'3: the record is done');
is(answers_to('+14155550411'), 'undelivered:200:applied', '3: the callback was applied');
is(message_of($h3), 'undelivered|undelivered|true|true|true', '3: undelivered, not moved back by the record');
is(attempts_of($h3), '1:sent:false:true / 1', '3: exactly one attempt, an attempt row');
is(dead_of($h3), '1:undelivered:30003', '3: one dead letter');
is(events_of($h3), 'undelivered:applied', '3: one status event');

# --- 4. a message's own status_callback: matched by SID only -------------

my $own = overtaken('+14155550420', [ { status => 'delivered' } ], { status => 201 },
	enqueue => ", status_callback => '$public/status?app=1'");
is(message_of($own), 'delivered|delivered|true|true|true',
	'4: its own callback, before the SID was recorded: applied once the record gave it the SID');
is(attempts_of($own), '1:sent:false:true / 1', '4: exactly one attempt');
is(events_of($own), 'delivered:applied', '4: one status event, applied');

# --- no resend, and the counts -------------------------------------------

$node->safe_psql('postgres', 'SELECT twilio_outbox.stop_worker()');
for my $to (map { "+1415555$_" } qw(0401 0402 0403 0404 0405 0406 0407 0410 0411 0420))
{
	is(scalar @{ $standin->requests(to => $to) }, 1, "$to: sent once");
}
is($standin->created->{total}, 11, 'eleven messages created at Twilio (ten SMS, one WhatsApp)');
is(q1(q{SELECT count(*) FROM (SELECT message_sid, message_status FROM twilio_outbox.status_events
		GROUP BY 1, 2 HAVING count(*) > 1) x}), '0', 'no (sid, status) recorded twice');
is(q1(q{SELECT attempts || '|' || dead_letters || '|' || delivered || '|' || undelivered
		FROM twilio_outbox.stats WHERE "window" = '1 hour'}),
	'11|4|5|4', 'stats: 11 attempts, 4 dead letters, 5 delivered, 4 undelivered');

# --- 4b. its own status_callback, and the answer lost: reconciliation ------
# The callback overtakes the create, whose connection then drops: the
# message is ambiguous, and its callback (no outbox_id, no SID recorded yet)
# is kept unmatched.  Reconciliation finds the SID in Twilio's list (after
# reconcile_grace, 10 s by default) and applies the callback then.
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');
my $lost = overtaken('+14155550421', [ { status => 'delivered' } ], { fault => 'create_close' },
	enqueue => ", status_callback => '$public/status?app=2'");
is(answers_to('+14155550421'), 'delivered:200:unmatched',
	'4b: the callback came before anyone knew the SID: kept unmatched');
OutboxTest::wait_until($node,
	"SELECT state = 'delivered' FROM twilio_outbox.messages WHERE id = $lost",
	'4b: reconciliation found it at Twilio and applied the callback');
is(message_of($lost), 'delivered|delivered|true|true|true', '4b: delivered, with the SID reconciliation found');
is(events_of($lost), 'delivered:applied', '4b: its one status event, applied');
is(q1("SELECT string_agg(outcome::text, ',' ORDER BY started_at) FROM twilio_outbox.attempt_rows WHERE message_id = $lost"),
	'reconcile,found', '4b: the ambiguous attempt, then found');
is(scalar @{ $standin->requests(to => '+14155550421') }, 1, '4b: sent once, never again');

kill 'TERM', $rpid;
waitpid($rpid, 0);
$node->stop;
$standin->stop;
done_testing();
