# Webhook signatures against an independent oracle: Twilio's official Node
# SDK (npm package twilio, pinned in test/twilio_sdk/package.json) computes
# the signature of each request with getExpectedTwilioSignature and judges
# each one with validateRequest; twilio_outbox must agree on every one:
# the same signature from webhook_signature(), accepted by webhook_verify()
# where the SDK accepts, refused (28000) where it refuses, including every
# tampered copy.  Cases: query strings, default and other ports, repeated
# names, every field of a status callback, UTF-8, empty values, '+'.
use strict;
use warnings;

use Cwd ();
use File::Temp ();
use FindBin;
use JSON::PP;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;

my $testdir = Cwd::abs_path("$FindBin::RealBin/..");

# Node itself is optional (the suite skips without it); the SDK is a test
# dependency installed by test/setup.sh (install_twilio_sdk).
plan skip_all => 'node is not installed' if system('node --version >/dev/null 2>&1') != 0;
my $sdk = $ENV{TWILIO_OUTBOX_TWILIO_SDK};
unless ($sdk && -f "$sdk/twilio/lib/webhooks/webhooks.js")
{
	for my $cache ($ENV{TWILIO_OUTBOX_CACHE}, '/var/cache/twilio_outbox',
		($ENV{HOME} // '/nonexistent') . '/.cache/twilio_outbox')
	{
		next unless $cache;
		for my $d (glob("$cache/twilio_sdk-*/node_modules"))
		{
			$sdk = $d if -f "$d/twilio/lib/webhooks/webhooks.js";
		}
	}
}
unless ($sdk && -f "$sdk/twilio/lib/webhooks/webhooks.js")
{
	fail('Twilio Node SDK available');
	diag('run test/run_some.sh tap (it installs it), or set TWILIO_OUTBOX_TWILIO_SDK to its node_modules');
	done_testing();
	exit 1;
}

my $token = 'oracle-auth-token-0123456789abcdef';
my $sid = 'AC0123456789abcdef0123456789abcdef';

# Every field Twilio sends on a status callback, and one it added later.
my $callback = join('&',
	"AccountSid=$sid", 'ApiVersion=2010-04-01',
	'ErrorCode=30003', 'ErrorMessage=Unreachable+destination+handset',
	'From=%2B15005550006', 'MessageSid=SM0123456789abcdef0123456789abcdef',
	'MessageStatus=undelivered', 'MessagingServiceSid=MG0123456789abcdef0123456789abcdef',
	'RawDlrDoneDate=2611291230', 'SmsSid=SM0123456789abcdef0123456789abcdef',
	'SmsStatus=undelivered', 'To=%2B14155552671');
my @cases = (
	[ 'https://hooks.example.com/twilio/status?outbox_id=42', $callback ],
	[ 'https://hooks.example.com/twilio/status', $callback ],
	[ 'https://hooks.example.com:443/twilio/status?outbox_id=7', $callback ],
	[ 'https://hooks.example.com:8443/status', $callback ],
	[ 'http://127.0.0.1:8080/status?a=1&b=%2F&c=', $callback ],
	[ 'https://hooks.example.com/sms', "AccountSid=$sid&MediaUrl=https%3A%2F%2Fb&MediaUrl=https%3A%2F%2Fa&MediaUrl=https%3A%2F%2Fb&From=%2B14155552671" ],
	[ 'https://hooks.example.com/sms', "AccountSid=$sid&Body=caf%C3%A9+%F0%9F%98%80+%E2%82%AC&From=%2B14155552671" ],
	[ 'https://hooks.example.com/sms', "AccountSid=$sid&Body=a+b%2Bc%26d%3De&Empty=&From=%2B14155552671" ],
	[ 'https://hooks.example.com/sms', "From=%2B14155552671&AccountSid=$sid&zeta=1&Alpha=2&alpha=3&_x=4" ],
);

# Ask the oracle about a list of {token, url, body, header?, check_url?}.
sub oracle
{
	my @q = @_;
	my $in = File::Temp->new;
	print $in encode_json($_), "\n" for @q;
	close $in;
	local $ENV{NODE_PATH} = $sdk;
	my @out = `node "$testdir/twilio_sdk/oracle.js" < "$in"`;
	die "the oracle failed" if $? != 0 || @out != @q;
	return map { decode_json($_) } @out;
}

my $node = OutboxTest::node('oracle');
$node->safe_psql('postgres', qq{
	INSERT INTO twilio_outbox.accounts (name, account_sid) VALUES ('o', '$sid');
	INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('o', '$token');
});

sub lit { my $s = shift; $s =~ s/'/''/g; return "'$s'"; }

# What twilio_outbox says of one request: 'ok' or the SQLSTATE.
sub verify
{
	my ($url, $body, $sig) = @_;
	my ($rc, $out, $err) = $node->psql('postgres',
		'SELECT account FROM twilio_outbox.webhook_verify(' . lit($url) . ', ' . lit($body) . ', '
		  . lit($sig) . ', NULL)',
		extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	return $rc == 0 ? 'ok' : ($err =~ /ERROR:\s+([0-9A-Z]{5})/ ? $1 : $err);
}

for my $c (@cases)
{
	my ($url, $body) = @$c;
	my ($o) = oracle({ token => $token, url => $url, body => $body });
	ok($o->{valid}, "oracle accepts its own signature: $url");
	my $ours = $node->safe_psql('postgres',
		'SELECT twilio_outbox.webhook_signature(' . lit($token) . ', ' . lit($url) . ', ' . lit($body) . ')');
	is($ours, $o->{signature}, "same signature as the SDK: $url " . substr($body, 0, 40));
	is(verify($url, $body, $o->{signature}), 'ok', "accepted: $url");

	# the URL with and without its port, as the SDK tries both
	(my $bare = $url) =~ s{^(https?://[^/:?#]+):\d+}{$1};
	(my $default = $bare) =~ s{^(https?)://([^/?#]+)}{"$1://$2:" . ($1 eq 'https' ? 443 : 80)}e;
	for my $variant ($bare, $default)
	{
		next if $variant eq $url;
		my ($v) = oracle({ token => $token, url => $variant, body => $body,
				check_url => $url });
		is(verify($url, $body, $v->{signature}), $v->{valid} ? 'ok' : '28000',
			"signed over $variant, received at $url: as the SDK says (" . ($v->{valid} ? 'valid' : 'invalid') . ')');
	}

	# tampered copies: the SDK refuses each, and so must we
	my @tampered = (
		[ $url, "$body&Extra=1" ],
		[ $url, join('&', grep { !/^From=/ } split(/&/, $body)) ],
		[ $url, $body =~ s/%2B1/%2B2/r ],
		[ $url =~ s{/(\w+)(\?|$)}{/x$1$2}r, $body ],
		[ $url . ($url =~ /\?/ ? '&' : '?') . 'outbox_id=1', $body ],
	);
	for my $t (@tampered)
	{
		my ($tu, $tb) = @$t;
		next if $tu eq $url && $tb eq $body;
		my ($v) = oracle({ token => $token, url => $tu, body => $tb,
				header => $o->{signature} });
		ok(!$v->{valid}, "oracle refuses a tampered copy of $url");
		is(verify($tu, $tb, $o->{signature}), '28000', "refused, 28000: tampered $tu " . substr($tb, 0, 30));
	}
	# the right request under another token
	my ($w) = oracle({ token => 'another-token', url => $url, body => $body });
	is(verify($url, $body, $w->{signature}), '28000', "another token's signature refused: $url");
}

$node->stop;
done_testing();
