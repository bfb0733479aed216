# The stand-in's parts that reconciliation of ambiguous sends relies on
# (issue 11), checked over plain HTTP so that a regression in the stand-in
# itself is caught before it hides or invents one in the dispatcher:
#   - the Messages list resource: newest first, PageSize (default 50, at most
#     1000), next_page_uri / previous_page_uri paging by PageToken that holds
#     its place while new messages arrive, the To / From / DateSent filters
#     with Twilio's semantics (a date, compared with date_sent's UTC date; a
#     message not sent yet never matches one), 400s for invalid parameters,
#     a scripted 429;
#   - faults on create: create_500, create_hang and create_close create the
#     message and lose the answer; close_early, 429 and 503 create nothing;
#     random faults by rate and mix;
#   - the counters of created messages per idempotency key and outbox id,
#     and, with the dispatcher, a message created twice under one outbox id
#     (a blind retry after create_500) shows as 2.
use strict;
use warnings;

use FindBin;
use HTTP::Tiny;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;
my $AC      = $OutboxTest::ACCOUNT_SID;
my $OTHER   = 'AC' . ('fedcba9876543210' x 2);
my $TO      = '+14155550231';

sub list { return $standin->list_messages($AC, {@_}) }

sub bodies { return join ',', map { $_->{body} } @{ $_[0]{messages} } }

# --- the list resource: order and paging -------------------------------------
# Five messages to $TO on five days (m1 oldest), one to another number, one
# under another account.
my %sid;
for my $i (1 .. 5)
{
	$sid{"m$i"} = $standin->create_message({
		account_sid  => $AC, to => $TO, from => '+15005550006', body => "m$i",
		date_created => "2026-03-0${i}T12:00:00Z" });
}
$standin->create_message({ account_sid => $AC, to => '+14155550232', from => '+15005550007',
	body => 'other-to', date_created => '2026-03-03T12:00:00Z' });
$standin->create_message({ account_sid => $OTHER, to => $TO, from => '+15005550006',
	body => 'other-account', date_created => '2026-03-03T12:00:00Z' });

my ($st, $p) = list(To => $TO);
is($st, 200, 'list: 200');
is(bodies($p), 'm5,m4,m3,m2,m1', 'list: the account\'s messages to To, newest first, no other account\'s');
is($p->{page_size}, 50, 'PageSize defaults to 50');
is($p->{next_page_uri}, undef, 'one page: next_page_uri is null');
is($p->{previous_page_uri}, undef, 'page 0: previous_page_uri is null');
is($p->{page}, 0, 'page 0');

my $entry = $p->{messages}[0];
is_deeply([ sort keys %$entry ], [ sort qw(account_sid api_version body date_created date_sent
	date_updated direction error_code error_message from messaging_service_sid num_media
	num_segments price price_unit sid status subresource_uris to uri) ],
	'an entry has the create answer\'s fields');
is($entry->{direction}, 'outbound-api', 'direction outbound-api');
is($entry->{date_created}, 'Thu, 05 Mar 2026 12:00:00 +0000', 'date_created in RFC 2822, as Twilio writes it');
is($entry->{uri}, "/2010-04-01/Accounts/$AC/Messages/$sid{m5}.json", 'uri of the message');

# Pages of 2, following next_page_uri; a message created meanwhile (newer
# than all) does not shift the pages already under way.
($st, $p) = list(To => $TO, PageSize => 2);
is(bodies($p), 'm5,m4', 'page 0 of 2');
like($p->{next_page_uri}, qr{^/2010-04-01/Accounts/$AC/Messages\.json\?To=%2B14155550231&PageSize=2&Page=1&PageToken=PA\Q$sid{m4}\E$},
	'next_page_uri: same filters, Page 1, a PageToken');
is($p->{first_page_uri}, "/2010-04-01/Accounts/$AC/Messages.json?To=%2B14155550231&PageSize=2&Page=0",
	'first_page_uri');
is($p->{uri}, $p->{first_page_uri}, 'uri of page 0');
$standin->create_message({ account_sid => $AC, to => $TO, from => '+15005550006', body => 'm6',
	date_created => '2026-03-06T12:00:00Z' });
($st, my $p1) = $standin->list_messages(undef, $p->{next_page_uri});
is(bodies($p1), 'm3,m2', 'page 1: the next two, whatever arrived since');
is($p1->{page}, 1, 'page 1 says so');
is($p1->{start}, 2, 'start of page 1');
($st, my $back) = $standin->list_messages(undef, $p1->{previous_page_uri});
is(bodies($back), 'm5,m4', 'previous_page_uri of page 1 gives page 0 back');
($st, my $p2) = $standin->list_messages(undef, $p1->{next_page_uri});
is(bodies($p2), 'm1', 'page 2: the last one');
is($p2->{next_page_uri}, undef, 'last page: next_page_uri is null');

# A page size of exactly the number of messages: no further page.
($st, $p) = list(To => $TO, PageSize => 6);
is(bodies($p), 'm6,m5,m4,m3,m2,m1', 'PageSize 6 of 6');
is($p->{next_page_uri}, undef, 'no empty page after a full last page');

# Default 50 and maximum 1000 with 60 messages on one number.
$standin->create_message({ account_sid => $AC, to => '+14155550233', body => "n$_" }) for 1 .. 60;
($st, $p) = list(To => '+14155550233');
is(scalar @{ $p->{messages} }, 50, 'default page: 50 messages');
ok(defined $p->{next_page_uri}, 'and a next page');
($st, $p) = list(To => '+14155550233', PageSize => 1000);
is(scalar @{ $p->{messages} }, 60, 'PageSize 1000: all 60');

# --- filters -----------------------------------------------------------------
($st, $p) = list(From => '+15005550007');
is(bodies($p), 'other-to', 'From filters by sender');
($st, $p) = list(To => $TO, DateSent => '2026-03-03');
is(bodies($p), 'm3', 'DateSent: that day only (its date, not a time)');
($st, $p) = list(To => $TO, 'DateSent<' => '2026-03-02');
is(bodies($p), 'm2,m1', 'DateSent<: on or before');
($st, $p) = list(To => $TO, 'DateSent>' => '2026-03-05');
is(bodies($p), 'm6,m5', 'DateSent>: on or after');

$standin->message_status($sid{m4}, 'queued', date_sent => undef);
($st, $p) = list(To => $TO, 'DateSent>' => '2026-03-01');
is(bodies($p), 'm6,m5,m3,m2,m1', 'a message with no date_sent (queued) matches no DateSent filter');
($st, $p) = list(To => $TO);
like(bodies($p), qr/\bm4\b/, 'but is listed without one');
is((grep { $_->{body} eq 'm4' } @{ $p->{messages} })[0]{date_sent}, undef, 'with date_sent null');

# --- invalid parameters: 400 in Twilio's error shape -----------------------------
for my $case ([ { PageSize => 1001 }, qr/PageSize/ ], [ { PageSize => 0 }, qr/PageSize/ ],
	[ { PageSize => 'ten' }, qr/PageSize/ ], [ { Page => 1 }, qr/PageToken/ ],
	[ { PageToken => 'garbage' }, qr/PageToken/ ], [ { DateSent => '2026-3-1' }, qr/DateSent/ ],
	[ { 'DateSent<' => '2026-02-30' }, qr/DateSent</ ])
{
	my ($q, $re) = @$case;
	($st, $p) = $standin->list_messages($AC, $q);
	my $what = join '=', %$q;
	is($st, 400, "$what: 400");
	is($p->{code}, 20001, "$what: code 20001");
	like($p->{message}, $re, "$what: message names the parameter");
	ok(defined $p->{more_info} && $p->{status} == 400, "$what: Twilio's error shape");
}

# --- a scripted 429 on a list --------------------------------------------------
$standin->list_script({ status => 429, retry_after => '2' });
my $raw = HTTP::Tiny->new->get($standin->base_url . "/2010-04-01/Accounts/$AC/Messages.json");
is($raw->{status}, 429, 'scripted list answer: 429');
is($raw->{headers}{'retry-after'}, '2', 'with Retry-After');
($st, $p) = list(To => $TO);
is($st, 200, 'the script used up: the next list answers 200');
my @lists = @{ $standin->lists };
is_deeply([ map { $_->{status} } @lists[-2, -1] ], [ 429, 200 ], 'list requests are recorded with their status');

# --- faults on create --------------------------------------------------------------
my $base = $standin->base_url;
my $create_url = "$base/2010-04-01/Accounts/$AC/Messages.json";

# A create carrying an idempotency key and an outbox id as the dispatcher's do.
sub create
{
	my ($to, $key, $outbox_id, $timeout) = @_;
	my $http = HTTP::Tiny->new(timeout => $timeout // 5);
	return $http->post_form($create_url,
		{ To => $to, From => '+15005550006', Body => "fault $key",
		  StatusCallback => "http://127.0.0.1:1/twilio/status?outbox_id=$outbox_id" },
		{ headers => { 'Idempotency-Key' => $key } });
}

sub created_for { return $standin->created->{by_key}{ $_[0] } // 0 }

my $FT = '+14155550240';
$standin->fault($FT, 'create_500');
my $res = create($FT, 'key-500', 500);
is($res->{status}, 500, 'create_500: answers 500');
like($res->{content}, qr/"code": 20500/, 'with code 20500');
is(created_for('key-500'), 1, 'create_500: the message was created');
is($standin->created->{by_outbox_id}{500}, 1, 'counted under the outbox id of its StatusCallback');
($st, $p) = list(To => $FT);
is(bodies($p), 'fault key-500', 'and is listed');

$standin->fault($FT, 'create_close');
$res = create($FT, 'key-close', 501);
is($res->{status}, 599, 'create_close: no answer');
like($res->{content}, qr/closed|reset|EOF|Unexpected end/i, 'the connection closed');
is(created_for('key-close'), 1, 'create_close: the message was created');

$standin->fault($FT, 'create_hang', 1, hang => 5);
$res = create($FT, 'key-hang', 502, 1);
is($res->{status}, 599, 'create_hang: the client times out');
like($res->{content}, qr/timed out|timeout/i, 'a timeout');
is(created_for('key-hang'), 1, 'create_hang: created before the client gave up');

$standin->fault($FT, 'close_early');
$res = create($FT, 'key-early', 503);
is($res->{status}, 599, 'close_early (scripted): no answer');
is(created_for('key-early'), 0, 'close_early: nothing created');

$standin->fault($FT, '429');
$res = create($FT, 'key-429', 504);
is($res->{status}, 429, '429: answered');
like($res->{content}, qr/"code": 20429/, 'code 20429');
is(created_for('key-429'), 0, '429: nothing created');

$standin->fault($FT, '503');
$res = create($FT, 'key-503', 505);
is($res->{status}, 503, '503: answered');
is(created_for('key-503'), 0, '503: nothing created');

$res = create($FT, 'key-ok', 506);
is($res->{status}, 201, 'script used up: 201');
is(created_for('key-ok'), 1, 'created once');

my $inj = $standin->faults->{injected};
is_deeply($inj, { map { $_ => 1 } qw(create_500 create_close create_hang close_early 429 503) },
	'each fault counted once');

eval { $standin->fault($FT, 'create_404') };
like($@, qr/400/, 'an unknown fault mode is refused');

# Random close_early happens before the body is read: a request whose body
# never comes is closed on, not waited for.
$standin->set_faults({ rate => 1, mix => { close_early => 1 } });
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $standin->port, Timeout => 5)
  or die "connect: $!";
print $sock "POST /2010-04-01/Accounts/$AC/Messages.json HTTP/1.1\r\nHost: x\r\n"
  . "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n";
my $got = '';
my $n = eval {
	local $SIG{ALRM} = sub { die "alarm\n" };
	alarm 5;
	my $r = sysread($sock, $got, 1024);
	alarm 0;
	$r;
};
ok(defined $n && $n == 0 || !defined $n && $@ eq '' , 'random close_early: closed before the body was sent, no answer')
  or diag("read: " . ($@ || $got));
close $sock;
is($standin->faults->{injected}{close_early}, 2, 'counted');

# Random faults by rate: every create meets one of the mix, none a 201.
my $before = $standin->created->{total};
$standin->set_faults({ rate => 1, mix => { create_500 => 1, 503 => 1 }, seed => 7 });
my %seen;
$seen{ create('+14155550241', "rnd-$_", 600 + $_)->{status} }++ for 1 .. 20;
is(($seen{500} // 0) + ($seen{503} // 0), 20, 'rate 1: every create meets a fault');
ok($seen{500} && $seen{503}, 'both modes of the mix occur');
is($standin->created->{total} - $before, $seen{500}, 'only create_500 created messages');
$standin->set_faults({ rate => 0 });
is(create('+14155550241', 'rnd-off', 700)->{status}, 201, 'rate 0: no fault');

# --- with the dispatcher: a blind retry shows as created twice ---------------------
$standin->reset;
is($standin->created->{total}, 0, 'reset clears the counters');
my $node = OutboxTest::node('standin_list', "twilio_outbox.on_ambiguous = 'retry'\n");
OutboxTest::add_account($node, $standin);
# The account's status callback puts outbox_id in each create (the stand-in
# posts no callbacks: /_callbacks is not configured).
$node->safe_psql('postgres',
	"UPDATE twilio_outbox.accounts SET status_callback_url = 'http://127.0.0.1:1/twilio/status'");
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');
$standin->fault('+14155550250', 'create_500', 1, callbacks => 0);
my $id = OutboxTest::enqueue_to($node, '+14155550250');
OutboxTest::wait_until($node, "SELECT state = 'sent' FROM twilio_outbox.messages WHERE id = $id",
	'the message is sent after the 500');
my $key = OutboxTest::query($node, "SELECT idempotency_key FROM twilio_outbox.messages WHERE id = $id");
is($standin->created->{by_outbox_id}{$id}, 2, 'created twice under its outbox id (retry after create_500)');
is($standin->created->{by_key}{$key}, 2, 'and twice under its idempotency key');
($st, $p) = list(To => '+14155550250');
is(scalar @{ $p->{messages} }, 2, 'both are in the list');

$node->stop;
$standin->stop;
done_testing();
