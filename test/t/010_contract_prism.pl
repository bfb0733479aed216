# Contract test: every kind of request the dispatcher sends conforms to
# Twilio's own OpenAPI description of Messages create.  The account's base
# URL points at Prism (@stoplight/prism-cli, pinned in test/package.json),
# which mocks the API from twilio_api_v2010.json and answers 422 to any
# request that violates the spec (required fields, patterns, types, formats,
# enums, Basic auth).  Each message must come back 201 from Prism.
use strict;
use warnings;

use Cwd ();
use Digest::SHA;
use File::Spec;
use FindBin;
use IO::Socket::INET;
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64 ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;

my $testdir = Cwd::abs_path("$FindBin::RealBin/..");

# Prism and Twilio's spec are test dependencies of the project: missing
# either is a failure.  make test and test/run_some.sh install both into a
# cache (test/setup.sh: install_prism, fetch_twilio_spec) and pass their
# paths in TWILIO_OUTBOX_PRISM and TWILIO_OPENAPI_SPEC; without those (make
# installcheck by hand), the caches test/setup.sh uses are looked in.
sub missing
{
	my ($what, $hint) = @_;
	fail($what);
	diag($hint);
	done_testing();
	exit 1;
}

my $user_cache = $ENV{XDG_CACHE_HOME} // ($ENV{HOME} ? "$ENV{HOME}/.cache" : undef);
my @caches = grep { defined } ($ENV{TWILIO_OUTBOX_CACHE},
	defined $user_cache ? "$user_cache/twilio_outbox" : undef,
	'/var/cache/twilio_outbox');

# Prism: in the cache, under the hash of test/package.json and its lock file.
my $prism_key = substr(Digest::SHA::sha256_hex(
		slurp_file("$testdir/package.json") . slurp_file("$testdir/package-lock.json")), 0, 16);
my @prisms = ($ENV{TWILIO_OUTBOX_PRISM} // (),
	(map { "$_/prism-$prism_key/node_modules/.bin/prism" } @caches),
	"$testdir/node_modules/.bin/prism");
my ($prism) = grep { -x $_ } @prisms;
missing('Prism is installed',
	"looked for @prisms; make test and test/run_some.sh install it "
	  . '(test/setup.sh, install_prism), or set TWILIO_OUTBOX_PRISM')
  unless defined $prism;

# The spec: exactly the file pinned (package, path, sha256) in
# test/twilio_openapi.pin, wherever it was fetched to.
my %pin = slurp_file("$testdir/twilio_openapi.pin") =~ /^(\w+)=(\S+)$/mg;
die "test/twilio_openapi.pin: no sha256" unless $pin{sha256};
my @specs = ($ENV{TWILIO_OPENAPI_SPEC} // (),
	map { "$_/twilio_api_v2010.$pin{sha256}.json" } @caches);
my ($spec) = grep { -r $_ } @specs;
missing("Twilio's OpenAPI spec ($pin{file} of $pin{package}) was fetched",
	"looked for @specs; make test and test/run_some.sh fetch it "
	  . '(test/setup.sh, fetch_twilio_spec), or set TWILIO_OPENAPI_SPEC')
  unless defined $spec;
my $spec_sha256 = Digest::SHA->new(256)->addfile($spec, 'b')->hexdigest;
missing("the spec $spec is the one pinned in test/twilio_openapi.pin",
	"its sha256 is $spec_sha256, the pin says $pin{sha256}")
  unless $spec_sha256 eq $pin{sha256};
note("Prism: $prism; spec: $spec ($pin{file} of $pin{package})");

# Prism reads a form body's repeated keys (MediaUrl=a&MediaUrl=b, which is
# how Twilio takes a list) as one value that overrides the previous, and then
# rejects it as "must be array" (stoplightio/prism issue 2473).  So in a
# copy of the spec, each array field of Messages create also accepts a
# single item: every value Prism sees is still checked against the item
# schema.  Nothing else is changed.
# The same for Calls create (a voice step of a fallback chain sends
# StatusCallbackEvent, an array field, as one value).
my $messages_path = '/2010-04-01/Accounts/{AccountSid}/Messages.json';
my $calls_path = '/2010-04-01/Accounts/{AccountSid}/Calls.json';
my $json = JSON::PP->new->utf8->canonical;
my $doc = $json->decode(slurp_file($spec));
my @relaxed;
for my $path ($messages_path, $calls_path)
{
	my $form = $doc->{paths}{$path}{post}{requestBody}{content}
	  {'application/x-www-form-urlencoded'}{schema};
	die "no form schema for $path in $spec" unless $form->{properties};
	for my $field (sort keys %{ $form->{properties} })
	{
		my $prop = $form->{properties}{$field};
		next unless ($prop->{type} // '') eq 'array';
		$form->{properties}{$field} = {
			description => $prop->{description},
			anyOf => [ $prop->{items}, $prop ] };
		push @relaxed, $field;
	}
}
note("array fields that also take one item: @relaxed");
my $prism_spec = PostgreSQL::Test::Utils::tempdir() . '/twilio_api_v2010.json';
open(my $fh, '>', $prism_spec) or die "$prism_spec: $!";
print $fh $json->encode($doc);
close($fh) or die "$prism_spec: $!";

# ---------- Prism ----------

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $prism_log = "$PostgreSQL::Test::Utils::log_path/prism.log";
my $prism_pid = fork();
die "fork: $!" unless defined $prism_pid;
if ($prism_pid == 0)
{
	# Its own process group, so that stopping it stops node and its children.
	POSIX::setsid();
	open(STDIN, '<', '/dev/null');
	open(STDOUT, '>', $prism_log) or POSIX::_exit(126);
	open(STDERR, '>&', \*STDOUT);
	$ENV{NO_COLOR} = '1';
	$ENV{SCARF_ANALYTICS} = 'false';
	# --errors: a violation is an error response, never a logged warning only.
	exec($prism, 'mock', $prism_spec, '-h', '127.0.0.1', '-p', $port, '--errors')
	  or POSIX::_exit(127);
}

sub stop_prism
{
	return unless $prism_pid;
	kill 'TERM', -$prism_pid;
	my $deadline = time + 10;
	while (waitpid($prism_pid, WNOHANG) == 0)
	{
		if (time > $deadline)
		{
			kill 'KILL', -$prism_pid;
			waitpid($prism_pid, 0);
			last;
		}
		sleep 0.1;
	}
	$prism_pid = undef;
	return;
}
END { stop_prism() if $prism_pid && $$ != $prism_pid; }

# Startup parses a 1.8 MB spec: allow up to 60 s.
my $listening = 0;
my $started = time;
while (time - $started < 60)
{
	if (waitpid($prism_pid, WNOHANG) != 0)
	{
		$prism_pid = undef;
		last;
	}
	my $sock = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $port,
		Proto => 'tcp',
		Timeout => 1);
	if ($sock)
	{
		close $sock;
		$listening = 1;
		last;
	}
	sleep 0.25;
}
unless (ok($listening, "Prism listens on 127.0.0.1:$port"))
{
	my $log = -e $prism_log ? slurp_file($prism_log) : '(no log)';
	diag('Prism log, last lines:');
	diag(join("\n", (split /\n/, $log)[-20 .. -1]));
	stop_prism();
	done_testing();
	exit 1;
}
note(sprintf('Prism up after %.1f s', time - $started));

my $base = "http://127.0.0.1:$port";
my $messages_url =
  "$base/2010-04-01/Accounts/$OutboxTest::ACCOUNT_SID/Messages.json";

# POST a form straight to Prism with curl; returns (http status, body).
sub curl_post
{
	my (@fields) = @_;
	my ($out, $err) = run_command([
		'curl', '-sS', '-m', '20', '-w', '\n%{http_code}',
		'-u', "$OutboxTest::ACCOUNT_SID:$OutboxTest::AUTH_TOKEN",
		(map { ('--data-urlencode', $_) } @fields),
		$messages_url ]);
	my ($body, $code) = $out =~ /\A(.*)\n(\d{3})\z/s;
	diag("curl: $err") if $err;
	return ($code // 0, $body // $out);
}

# ---------- the outbox, pointed at Prism ----------

my $node = OutboxTest::node('contract');
my $service = 'MG' . ('a' x 32);
OutboxTest::query($node, qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
		VALUES ('main', '$OutboxTest::ACCOUNT_SID', '$base', true);
	INSERT INTO twilio_outbox.account_credentials (account, secret_env)
		VALUES ('main', 'TWILIO_TEST_AUTH_TOKEN');
	INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default, rate)
		VALUES ('main', '$OutboxTest::FROM', 'long_code', true, 'Infinity');
	INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind)
		VALUES ('main', '$service', 'messaging_service');
});

# One message per kind of request, each to its own number.
my %cases = (
	'+14155550201' => [ 'SMS from the default sender',
		q{body => 'Your code is 481516 & more'} ],
	'+14155550202' => [ 'SMS through a Messaging Service',
		qq{body => 'via service', messaging_service_sid => '$service'} ],
	'+14155550203' => [ 'MMS with two media URLs',
		q{body => 'look', media_urls => ARRAY['https://example.com/a.jpg',
			'https://example.com/b.png?size=large&v=2']} ],
	'+14155550211' => [ 'MMS with one media URL and no body',
		q{media_urls => ARRAY['https://example.com/c.gif']} ],
	'+14155550204' => [ 'Content template with variables',
		q{content_sid => 'HX' || repeat('b', 32),
			content_variables => '{"1": "Ada", "2": "10:30 & \"soon\""}'::jsonb} ],
	'+14155550205' => [ 'status callback',
		q{body => 'with callback',
			status_callback => 'https://app.example.com/twilio/status?tenant=7'} ],
	'+14155550206' => [ 'ValidityPeriod in params',
		q{body => 'valid ten minutes', params => '{"ValidityPeriod": 600}'} ],
	'+14155550207' => [ 'scheduled send (ScheduleType fixed, SendAt)',
		qq{body => 'tomorrow', messaging_service_sid => '$service',
			params => jsonb_build_object('ScheduleType', 'fixed', 'SendAt',
				to_char((now() + interval '1 day') AT TIME ZONE 'UTC',
					'YYYY-MM-DD"T"HH24:MI:SS"Z"'))} ],
	'+14155550208' => [ 'expires_at (the worker adds ValidityPeriod)',
		q{body => 'expires in an hour', expires_at => now() + interval '1 hour'} ],
	'+14155550209' => [ 'UCS-2 body',
		q{body => 'Grüße, 你好 👍'} ],
	'+14155550210' => [ 'several optional params at once',
		q{body => 'options', params => '{"SmartEncoded": true, "ShortenUrls": false,
			"RiskCheck": "disable", "Attempt": 1, "AddressRetention": "retain",
			"ContentRetention": "discard", "ProvideFeedback": true}'} ],
	'+14155550212' => [ 'PersistentAction as repeated fields, MaxPrice, SendAsMms',
		q{body => 'here we are', params => '{"PersistentAction": ["geo:37.787890,-122.391664|375 Beale St",
			"mailto:ops@example.com"], "MaxPrice": 0.75, "SendAsMms": true, "TrafficType": "free"}'} ],
	'+14155550213' => [ 'FallbackFrom and ShortenUrls through a Messaging Service',
		qq{body => 'see https://example.com', messaging_service_sid => '$service',
			params => '{"FallbackFrom": "+15005550006", "ShortenUrls": true, "ForceDelivery": false}'} ],
);

my $pid = OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
ok($pid > 0, 'dispatcher started');

OutboxTest::query($node, join("\n",
	map { "SELECT twilio_enqueue(to_number => '$_', $cases{$_}[1]);" }
	  sort keys %cases));
my $n = scalar keys %cases;
is(OutboxTest::query($node, 'SELECT count(*) FROM twilio_outbox.messages'),
	$n, "$n messages enqueued");

OutboxTest::wait_until($node,
	"SELECT count(*) = 0 FROM twilio_outbox.messages WHERE state IN ('queued', 'sending')",
	'the dispatcher has finished with every message');

my $failed = 0;
for my $to (sort keys %cases)
{
	my $row = OutboxTest::query($node, qq{
		SELECT m.state, m.attempts, a.http_status, a.outcome, m.twilio_sid
		FROM twilio_outbox.messages m
		LEFT JOIN twilio_outbox.attempt_rows a ON a.message_id = m.id
		WHERE m.to_number = '$to' ORDER BY a.attempt});
	is($row, "sent|1|201|sent|SM" . ('a' x 32),
		"$cases{$to}[0]: accepted by Prism (201) on the first attempt")
	  or $failed++;
}
if ($failed)
{
	diag("attempts:\n" . OutboxTest::query($node, q{
		SELECT m.to_number, m.state, a.attempt, a.http_status, a.outcome,
		       a.twilio_code, a.twilio_message, a.transport_error
		FROM twilio_outbox.messages m
		LEFT JOIN twilio_outbox.attempt_rows a ON a.message_id = m.id
		ORDER BY m.to_number, a.attempt}));
	diag("messages:\n" . OutboxTest::query($node, q{
		SELECT to_number, state, last_http_status, last_error_code, last_error_message
		FROM twilio_outbox.messages ORDER BY to_number}));
}

# A voice call (a fallback chain's voice step, fired by its timer: Prism
# sends no status callback) with Twiml, voice options and a status
# callback: accepted as Calls create.
OutboxTest::query($node, q{
	UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/twilio/status';
	SELECT twilio_enqueue('+14155550220', 'Your code is <4 8 1> & "5 1 6"',
		fallback => '[{"channel": "voice", "after": "1 second", "voice": "Polly.Joanna", "language": "en-US"}]')});
OutboxTest::wait_until($node,
	"SELECT state = 'sent' FROM twilio_outbox.messages WHERE to_number = '+14155550220' AND channel = 'voice'",
	'the voice step of a chain is sent');
like(OutboxTest::query($node, q{
		SELECT m.attempts || '|' || a.http_status || '|' || a.outcome || '|' || m.twilio_sid
		FROM twilio_outbox.messages m JOIN twilio_outbox.attempt_rows a ON a.message_id = m.id
		WHERE m.to_number = '+14155550220' AND m.channel = 'voice'}),
	qr/^1\|201\|sent\|CA[0-9a-fA-F]{32}$/, 'a call: accepted by Prism (201) on the first attempt, its CA sid kept');

# Prism saw each of them and found no violation.
my $log = slurp_file($prism_log);
my $calls = () = $log =~ m{\[HTTP SERVER\] post /2010-04-01/Accounts/\Q$OutboxTest::ACCOUNT_SID\E/Calls\.json \S+\s+info\s+Request received}g;
is($calls, 1, 'Prism received one Calls request');
# the chain's head was one more message
$n++;
my $received = () = $log =~ m{\[HTTP SERVER\] post /2010-04-01/Accounts/\Q$OutboxTest::ACCOUNT_SID\E/Messages\.json \S+\s+info\s+Request received}g;
my $passed = () = $log =~ /The request passed the validation rules/g;
my @violations = $log =~ /\[VALIDATOR\] \S+\s+(?:error|warning)\s+(.*)/g;
is($received, $n, "Prism received exactly $n Messages requests");
is($passed, $n + $calls, 'each passed Prism\'s validation');
is(scalar @violations, 0, 'Prism reported no violation')
  or diag(join("\n", @violations));

# Prism does validate: a valid request straight from curl is accepted, the
# same without To, with a malformed SID or SendAt, is rejected.
my ($code, $body) = curl_post("To=+14155550299", "From=$OutboxTest::FROM", 'Body=ok');
is($code, 201, 'a valid request sent with curl: 201');
($code, $body) = curl_post("From=$OutboxTest::FROM", 'Body=no recipient');
is($code, 422, 'a request without To: 422');
like($body, qr/required property 'To'/, 'Prism names the missing To');
($code, $body) = curl_post('To=+14155550299', 'MessagingServiceSid=MG123', 'Body=x');
is($code, 422, 'a malformed MessagingServiceSid: 422');
($code, $body) = curl_post('To=+14155550299', "MessagingServiceSid=$service",
	'Body=x', 'ScheduleType=fixed', 'SendAt=tomorrow at noon');
is($code, 422, 'a SendAt that is not ISO 8601: 422');
($code, $body) = curl_post('To=+14155550299', "From=$OutboxTest::FROM",
	'Body=x', 'ValidityPeriod=ten');
is($code, 422, 'a ValidityPeriod that is not an integer: 422');
($code, $body) = curl_post('To=+14155550299', "From=$OutboxTest::FROM",
	'MediaUrl=https://example.com/a.jpg', 'MediaUrl=not a URL');
is($code, 422, 'a MediaUrl that is not a URI: 422');

$node->stop;
stop_prism();

# ---------- the stand-in's answers against Twilio's response schemas ----------
# Issue 11's reconciliation reads the Messages list resource, and its tests
# read it from test/twilio_standin.py: Prism in proxy mode (--errors) in
# front of the stand-in checks each answer against the spec's response
# schema.  One known disagreement is allowed: the spec gives the paging
# fields (uri, first_page_uri, next_page_uri, previous_page_uri) format
# "uri", an absolute URI, while Twilio answers paths relative to its host
# (/2010-04-01/...), as the stand-in does and the outbox expects.
{
	require TwilioStandIn;
	my $standin = TwilioStandIn->start;
	my $ac = $OutboxTest::ACCOUNT_SID;
	for my $day (1 .. 3)
	{
		$standin->create_message({ account_sid => $ac, to => '+14155550290',
			from => $OutboxTest::FROM, body => "listed $day",
			date_created => "2026-02-0${day}T08:00:00Z" });
	}
	# One created through the create endpoint, with its answer as the dispatcher gets it.
	my $created = HTTP::Tiny->new->post_form($standin->base_url . "/2010-04-01/Accounts/$ac/Messages.json",
		{ To => '+14155550290', MessagingServiceSid => $service, Body => 'via service' });
	is($created->{status}, 201, 'stand-in: a create answers 201');
	my $sid = $json->decode($created->{content})->{sid};

	my $proxy_port = PostgreSQL::Test::Cluster::get_free_port();
	my $proxy_log = "$PostgreSQL::Test::Utils::log_path/prism_proxy.log";
	$prism_pid = fork();
	die "fork: $!" unless defined $prism_pid;
	if ($prism_pid == 0)
	{
		POSIX::setsid();
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $proxy_log) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT);
		$ENV{NO_COLOR} = '1';
		$ENV{SCARF_ANALYTICS} = 'false';
		exec($prism, 'proxy', $prism_spec, $standin->base_url, '-h', '127.0.0.1',
			'-p', $proxy_port, '--errors') or POSIX::_exit(127);
	}
	my $up = 0;
	my $t0 = time;
	while (!$up && time - $t0 < 60 && waitpid($prism_pid, WNOHANG) == 0)
	{
		my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $proxy_port,
			Proto => 'tcp', Timeout => 1);
		$up = 1, close $sock if $sock;
		sleep 0.25 unless $up;
	}
	ok($up, "Prism proxies to the stand-in on 127.0.0.1:$proxy_port") or diag(slurp_file($proxy_log));

	my $http = HTTP::Tiny->new(timeout => 20);
	my $auth = { headers => { Authorization => 'Basic '
		  . MIME::Base64::encode_base64("$ac:$OutboxTest::AUTH_TOKEN", '') } };
	my $proxied = "http://127.0.0.1:$proxy_port";
	my $paging = qr/^(?:uri|first_page_uri|next_page_uri|previous_page_uri)$/;
	# The violations Prism found in an answer other than the paging fields' format.
	my $other_violations = sub {
		my ($res) = @_;
		return [] if $res->{status} == 200;
		my $err = eval { $json->decode($res->{content}) } // {};
		return [ "HTTP $res->{status}: $res->{content}" ] unless ref $err->{validation} eq 'ARRAY';
		return [ map { "@{ $_->{location} }: $_->{message}" }
			  grep { !($_->{code} eq 'format' && $_->{location}[0] eq 'response'
					   && ($_->{location}[2] // '') =~ $paging && @{ $_->{location} } == 3) }
			  @{ $err->{validation} } ];
	};
	for my $page ([ 'first page of 2', '?To=%2B14155550290&PageSize=2' ],
		[ 'a whole list', '?PageSize=50' ],
		[ 'filtered by DateSent', '?To=%2B14155550290&DateSent%3C=2026-02-02' ])
	{
		my $res = $http->get("$proxied/2010-04-01/Accounts/$ac/Messages.json$page->[1]", $auth);
		my $bad = $other_violations->($res);
		is(scalar @$bad, 0, "list, $page->[0]: the stand-in's answer matches Twilio's schema")
		  or diag(join("\n", @$bad));
	}
	my $res = $http->get("$proxied/2010-04-01/Accounts/$ac/Messages/$sid.json", $auth);
	is($res->{status}, 200, 'fetch of a message through Prism: 200, no violation')
	  or diag($res->{content});
	# Prism does check the answers: a create answered with a num_segments
	# that is a number, where the schema says string, is a violation.
	$standin->script('+14155550291', TwilioStandIn::raw(201, [ 'Content-Type: application/json' ],
		'{"sid": "SM' . ('c' x 32) . '", "status": "queued", "num_segments": 1}'));
	$res = $http->post_form("$proxied/2010-04-01/Accounts/$ac/Messages.json",
		{ To => '+14155550291', From => $OutboxTest::FROM, Body => 'bad answer' }, $auth);
	my $bad = $other_violations->($res);
	ok(scalar(grep { /num_segments/ } @$bad), 'an answer against the schema is a violation')
	  or diag("$res->{status} $res->{content}");
	$standin->stop;
	stop_prism();
}
done_testing();
