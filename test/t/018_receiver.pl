# The thin receiver (receiver/twilio_outbox_receiver.c) against a test
# cluster, connected as a login role that is a member of
# twilio_outbox_webhook and nothing else.  Its public URL is
# https://hooks.example.com/twilio while it listens on 127.0.0.1: every
# signature here is computed over the public URL, so each 200 proves the
# URL was rebuilt from the configured base, not from the Host header.
#
# A burst of 500 signed status callbacks over 20 parallel connections (each
# of 100 messages' 'sent' twice and its final status three times, shuffled):
# every one answered 200, each (MessageSid, MessageStatus) recorded once,
# 300 answered 'duplicate', every message in its final state.  Then the
# refusals and their HTTP statuses (bad signature 403 and nothing recorded,
# unknown account 403, malformed 400, oversize 413, GET 405, unknown path
# 404, the database down 503 and back after it), an inbound STOP (TwiML,
# text/xml, a suppression row), a debugger event, a clean SIGTERM, and a log
# without bodies or signatures.
use strict;
use warnings;

use FindBin;
use HTTP::Tiny;
use POSIX ();
use File::Temp ();
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $receiver_bin = OutboxTest::receiver_bin();
ok(-x $receiver_bin, "the receiver is built: $receiver_bin");

my $public = 'https://hooks.example.com/twilio';
my $standin = TwilioStandIn->start;
my $node = OutboxTest::node('receiver');
OutboxTest::add_account($node, $standin);
$node->safe_psql('postgres', q{
	CREATE ROLE twilio_receiver LOGIN IN ROLE twilio_outbox_webhook;
	UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/twilio/status' WHERE name = 'main';
});

# 100 messages sent through the stand-in, so that each has its SID.
my $n = 100;
$node->safe_psql('postgres', qq{
	SELECT count(twilio_enqueue('+1415555' || lpad(i::text, 4, '0'), 'hello ' || i))
	FROM generate_series(1, $n) i;
	SELECT twilio_outbox.start_worker();
});
OutboxTest::wait_until($node,
	"SELECT count(*) = $n FROM twilio_outbox.messages WHERE state = 'sent' AND twilio_sid IS NOT NULL",
	"$n messages sent, each with its SID");
$node->safe_psql('postgres', 'SELECT twilio_outbox.stop_worker()');

# The receiver, as twilio_receiver, on a free port.
my $tmp = File::Temp->newdir;
my $log = "$PostgreSQL::Test::Utils::log_path/018_twilio_outbox_receiver.log";
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $conninfo = $node->connstr('postgres') . ' user=twilio_receiver';

# Start a receiver with these options; its pid once its port file exists.
sub start_receiver
{
	my ($port_file, @opts) = @_;
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log);
		open(STDERR, '>>', $log);
		exec($receiver_bin, '--listen', '127.0.0.1', '--port-file', $port_file,
			'--conninfo', $conninfo, @opts)
		  or POSIX::_exit(127);
	}
	for (1 .. 100) { last if -s $port_file; sleep 0.1; }
	return $pid;
}

# A role it may not take: it refuses to start, and says why.
{
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ $receiver_bin, '--public-url', $public, '--port', 0,
			'--conninfo', $conninfo, '--role', 'twilio_outbox_admin' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	ok(!$ok && $? >> 8 == 1, 'a role it may not SET ROLE to: exit 1');
	like($err, qr/could not set up the database session \(role "twilio_outbox_admin"\)/, '... saying why');
}

my $pid = start_receiver("$tmp/port", '--public-url', $public, '--port', $port, '--pool', 4);
ok(-s "$tmp/port", 'the receiver listens');
my $base = "http://127.0.0.1:$port/twilio";

my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 1);

# (url, body, signature) of a status callback, signed by the SQL signer that
# test/t/016_signature_oracle.pl checks against Twilio's own SDK.
sub signed
{
	my ($path, $body, $token) = @_;
	my $url = "$public$path";
	$token //= $OutboxTest::AUTH_TOKEN;
	my $sig = $node->safe_psql('postgres',
		"SELECT twilio_outbox.webhook_signature('$token', '$url', '$body')");
	return ($path, $body, $sig);
}

sub post
{
	my ($client, $path, $body, $sig, %headers) = @_;
	$headers{'Content-Type'} = 'application/x-www-form-urlencoded';
	$headers{'X-Twilio-Signature'} = $sig if defined $sig;
	return $client->request('POST', "http://127.0.0.1:$port$path",
		{ headers => \%headers, content => $body });
}

sub callback_body
{
	my ($sid, $to, $status, $code) = @_;
	return "AccountSid=$OutboxTest::ACCOUNT_SID&ApiVersion=2010-04-01"
	  . ($code ? "&ErrorCode=$code" : '')
	  . "&From=%2B15005550006&MessageSid=$sid&MessageStatus=$status&SmsSid=$sid&SmsStatus=$status"
	  . '&To=' . ($to =~ s/\+/%2B/r);
}

# The burst: every message's 'sent' twice and its final status three times
# (every fifth undelivered with 30003, a 'dead' code in the error policy),
# shuffled, signed in one query.
my @rows = split /\n/, $node->safe_psql('postgres', q{
	SELECT id, twilio_sid, to_number FROM twilio_outbox.messages ORDER BY id});
my @jobs;
for my $row (@rows)
{
	my ($id, $sid, $to) = split /\|/, $row;
	my $final = $id % 5 == 0 ? 'undelivered' : 'delivered';
	my $code = $final eq 'undelivered' ? 30003 : undef;
	push @jobs, map { [ "/status?outbox_id=$id", callback_body($sid, $to, 'sent') ] } 1 .. 2;
	push @jobs, map { [ "/status?outbox_id=$id", callback_body($sid, $to, $final, $code) ] } 1 .. 3;
}
srand(18);
for (my $i = $#jobs; $i > 0; $i--)
{
	my $j = int(rand($i + 1));
	@jobs[ $i, $j ] = @jobs[ $j, $i ];
}
{
	my $values = join(",\n", map { "($_, '$public$jobs[$_][0]', '$jobs[$_][1]')" } 0 .. $#jobs);
	my %sig = map { split /\|/ } split /\n/, $node->safe_psql('postgres', qq{
		SELECT i, twilio_outbox.webhook_signature('$OutboxTest::AUTH_TOKEN', url, body)
		FROM (VALUES $values) v(i, url, body)});
	push @{ $jobs[$_] }, $sig{$_} for 0 .. $#jobs;
}
is(scalar @jobs, 500, '500 callbacks for 100 messages, 200 distinct');

# 20 children, each with its own keep-alive connection, each sending every
# 20th callback; each writes "status answer" per request to its file.
my $clients = 20;
my @kids;
for my $k (0 .. $clients - 1)
{
	my $kid = fork() // die "fork: $!";
	if ($kid == 0)
	{
		my $c = HTTP::Tiny->new(timeout => 30, keep_alive => 1);
		open(my $out, '>', "$tmp/burst.$k") or POSIX::_exit(1);
		for (my $i = $k; $i < @jobs; $i += $clients)
		{
			my ($path, $body, $sig) = @{ $jobs[$i] };
			my $res = post($c, "/twilio$path", $body, $sig);
			print $out "$res->{status} " . ($res->{content} =~ s/\n//gr) . "\n";
		}
		close $out;
		POSIX::_exit(0);    # no END blocks: the cluster belongs to the parent
	}
	push @kids, $kid;
}
waitpid($_, 0) for @kids;
my %answers;
for my $k (0 .. $clients - 1)
{
	open(my $in, '<', "$tmp/burst.$k") or next;
	while (<$in>) { chomp; $answers{$_}++; }
}
my $ok = 0;
$ok += $answers{$_} for grep { /^200 / } keys %answers;
is($ok, 500, 'every callback of the burst answered 200')
  or diag(explain \%answers);
is($answers{'200 duplicate'} // 0, 300, 'the 300 copies answered duplicate');
is(($answers{'200 applied'} // 0) + ($answers{'200 stale'} // 0), 200,
	'the 200 distinct callbacks applied or stale (a sent after its final status)');
is($node->safe_psql('postgres', q{
	SELECT count(*) || '|' || count(DISTINCT (message_sid, message_status)) || '|' || count(*) FILTER (WHERE verdict IS NULL)
	FROM twilio_outbox.status_events}),
	'200|200|0', 'none lost, none recorded twice: 200 status events, each with its verdict');
is($node->safe_psql('postgres', q{
	SELECT string_agg(state || ':' || n, ',' ORDER BY state)
	FROM (SELECT state::text, count(*) n FROM twilio_outbox.messages GROUP BY state) s}),
	'delivered:80,undelivered:20', 'every message in its final state');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM twilio_outbox.dead_letters WHERE reason = 'undelivered' AND twilio_code = 30003}),
	'20', 'each undelivered message dead-lettered once (30003)');

# Refusals.
my ($sid1, $to1) = (split /\|/, $rows[0])[ 1, 2 ];
my $late = callback_body($sid1, $to1, 'read');
my ($p, $b, $s) = signed('/status', $late);
# Change the first character to one it is not (a fixed replacement would
# leave one signature in 64 unchanged).
my $bad = (substr($s, 0, 1) eq 'A' ? 'B' : 'A') . substr($s, 1);
isnt($bad, $s, 'the tampered signature differs from the good one');
my $res = post($http, "/twilio$p", $b, $bad);
is($res->{status}, 403, 'a bad signature: 403');
$res = post($http, "/twilio$p", $b, undef);
is($res->{status}, 403, 'no signature: 403');
$res = post($http, "/twilio$p", $b, $s);
is("$res->{status} $res->{content}", '200 applied',
	'signed over the public URL, sent to 127.0.0.1: 200 (a read after delivered applies)');
($p, $b, $s) = signed('/status', $late);
$res = post($http, "/twilio$p?outbox_id=1", $b, $s);
is($res->{status}, 403, 'signed for another URL (query string differs): 403');
is($node->safe_psql('postgres', "SELECT count(*) FROM twilio_outbox.status_events"),
	'201', 'the refused callbacks recorded nothing');

my $stranger = $late =~ s/AccountSid=AC\w+/AccountSid=AC${\('9' x 32)}/r;
($p, $b, $s) = signed('/status', $stranger);
is(post($http, "/twilio$p", $b, $s)->{status}, 403, 'an unknown account: 403');
my $nosid = "AccountSid=$OutboxTest::ACCOUNT_SID&MessageStatus=delivered";
($p, $b, $s) = signed('/status', $nosid);
is(post($http, "/twilio$p", $b, $s)->{status}, 400, 'no MessageSid (malformed): 400');
is(post($http, '/twilio/status', 'a=' . ('x' x 70000), $s)->{status}, 413, 'a body over 64 KiB: 413');
$res = $http->request('GET', "$base/status");
is($res->{status}, 405, 'GET: 405');
is($res->{headers}{allow}, 'POST', '... with Allow: POST');
is(post($http, '/twilio/elsewhere', $b, $s)->{status}, 404, 'an unknown path: 404');

# An inbound STOP: suppressed, and TwiML for Twilio.
my $stop = "AccountSid=$OutboxTest::ACCOUNT_SID&Body=STOP&From=%2B14155559999&MessageSid=SM"
  . ('cd' x 16) . '&To=%2B15005550006';
($p, $b, $s) = signed('/inbound', $stop);
$res = post($http, "/twilio$p", $b, $s);
is($res->{status}, 200, 'an inbound STOP: 200');
like($res->{headers}{'content-type'}, qr{^text/xml}, '... as text/xml');
is($res->{content}, '<?xml version="1.0" encoding="UTF-8"?><Response/>', '... with an empty TwiML response');
is($node->safe_psql('postgres',
		"SELECT account || '|' || reason FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155559999'"),
	'main|opted out (STOP)', 'the sender is suppressed');

# A debugger event.
my $dbg = "AccountSid=$OutboxTest::ACCOUNT_SID&Level=ERROR&Payload=%7B%22error_code%22%3A%2230001%22%7D"
  . '&PayloadType=application%2Fjson&Sid=NO' . ('ef' x 16) . '&Timestamp=2026-11-29T10%3A00%3A00Z';
($p, $b, $s) = signed('/debugger', $dbg);
$res = post($http, "/twilio$p", $b, $s);
is("$res->{status} $res->{content}", '200 recorded', 'a debugger event: recorded');

# --trust-host: the URL from Host (HTTP::Tiny sends 127.0.0.1:<port>).
{
	my $tport = PostgreSQL::Test::Cluster::get_free_port();
	my $tpid = start_receiver("$tmp/tport", '--trust-host', '--port', $tport, '--pool', 1);
	my $body = callback_body($sid1, $to1, 'canceled');
	my $sig = $node->safe_psql('postgres', "SELECT twilio_outbox.webhook_signature("
		  . "'$OutboxTest::AUTH_TOKEN', 'http://127.0.0.1:$tport/twilio/status', '$body')");
	my $r = $http->request('POST', "http://127.0.0.1:$tport/twilio/status",
		{ headers => { 'X-Twilio-Signature' => $sig }, content => $body });
	is($r->{status}, 200, '--trust-host: signed over the URL its Host header names: 200');
	($p, $b, $s) = signed('/status', $body);
	$r = $http->request('POST', "http://127.0.0.1:$tport/twilio/status",
		{ headers => { 'X-Twilio-Signature' => $s }, content => $body });
	is($r->{status}, 403, '--trust-host: signed over the configured public URL instead: 403');
	kill 'TERM', $tpid;
	waitpid($tpid, 0);
}

# The database down: 503 (Twilio tries again); back up: the same request
# goes through on a new connection.
$node->stop('fast');
my $again = callback_body($sid1, $to1, 'delivered');
($p, $b) = ('/status', $again);
$res = post($http, "/twilio$p", $b, 'c2lnbmF0dXJl');
is($res->{status}, 503, 'the database down: 503');
$node->start;
($p, $b, $s) = signed('/status', callback_body($sid1, $to1, 'failed'));
my $status;
for (1 .. 30)
{
	$status = post($http, "/twilio$p", $b, $s)->{status};
	last if $status == 200;
	sleep 0.2;    # a failed reconnect waits a second before the next
}
is($status, 200, 'the database back: 200 on a new connection');

# SIGTERM: a clean stop.
kill 'TERM', $pid;
waitpid($pid, 0);
is($?, 0, 'SIGTERM: the receiver exits 0');
my $text = PostgreSQL::Test::Utils::slurp_file($log);
like($text, qr/ stopped$/m, 'it says it stopped');
my $lines = () = $text =~ m{ POST /twilio/status 200 }g;
cmp_ok($lines, '>=', 500, 'one log line per request');
unlike($text, qr/MessageSid|AccountSid|\Q$s\E|$OutboxTest::AUTH_TOKEN|outbox_id|password/,
	'the log holds no body, signature, secret or query string');

$node->stop;
$standin->stop;
done_testing();
