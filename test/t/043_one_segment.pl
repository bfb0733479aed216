# One TCP segment per request (issue 14, src/http.c): libcurl writes a
# POST's headers and its body (handed out by the read callback) with two
# send() calls; the dispatcher corks the socket before libcurl writes and
# uncorks it after, so each request reaches the server as one segment
# instead of two (each segment woke nginx and cost the dispatcher its own
# loopback delivery).
#
# A responder of its own here, on one keep-alive connection (max_concurrency
# 1): after each request it notes the kernel's count of segments with data
# that the connection received (TCP_INFO's tcpi_data_segs_in, Linux 4.6 and
# later). Corked, that is one per request; the first request of a
# connection may go before the dispatcher knows the connection's socket
# (libcurl found it connected at once), so one more is allowed. Uncorked it
# would be two per request. Counts, no timing.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use IO::Socket::INET;
use Socket qw(IPPROTO_TCP);
use File::Temp qw(tempdir);

use constant TCP_INFO => 11;
# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, a __u32 at byte 152
use constant DATA_SEGS_IN_OFFSET => 152;

my $count = 20;
my $dir = tempdir(CLEANUP => 1);
my $log = "$dir/segments";

my $listen = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16, ReuseAddr => 1)
  or die "listen: $!";
my $port = $listen->sockport;

my $pid = fork;
die "fork: $!" unless defined $pid;
if ($pid == 0)
{
	# the responder: one connection at a time, requests in turn
	my $n = 0;
	my $connections = 0;
	while (my $c = $listen->accept)
	{
		my $buf = '';
		$connections++;
		for (;;)
		{
			my $head_end = index($buf, "\r\n\r\n");
			if ($head_end >= 0)
			{
				my ($len) = substr($buf, 0, $head_end) =~ /^content-length:\s*(\d+)/im;
				$len //= 0;
				if (length($buf) >= $head_end + 4 + $len)
				{
					substr($buf, 0, $head_end + 4 + $len) = '';
					$n++;
					my $sid = sprintf('SM%032x', $n);
					my $body = qq({"sid": "$sid", "status": "queued", "num_segments": "1"});
					print $c "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
					  . "Content-Length: " . length($body) . "\r\n\r\n$body";
					$c->flush;
					my $info = getsockopt($c, IPPROTO_TCP, TCP_INFO);
					my $segs = defined $info && length($info) >= DATA_SEGS_IN_OFFSET + 4
					  ? unpack('L', substr($info, DATA_SEGS_IN_OFFSET, 4)) : -1;
					# per connection: its requests so far and its data segments
					open(my $fh, '>>', $log) or die "log: $!";
					print $fh "$connections $n $segs\n";
					close $fh;
					next;
				}
			}
			my $got = sysread($c, $buf, 65536, length $buf);
			last unless $got;
		}
		close $c;
	}
	exit 0;
}
close $listen;

my $node = OutboxTest::node('one_segment', "twilio_outbox.on_ambiguous = retry\n");
OutboxTest::add_account($node, bless({ port => $port }, 'OneSegmentResponder'),
	max_concurrency => 1);
OutboxTest::query($node, qq{
	SELECT twilio_enqueue('+1415555200' || lpad(n::text, 2, '0'), 'one segment ' || n)
	FROM generate_series(1, $count) n});
OutboxTest::query($node, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node, qq{
	SELECT count(*) FILTER (WHERE state = 'sent') = $count FROM twilio_outbox.messages},
	"all $count sent");
is(OutboxTest::query($node, 'SELECT count(*) FROM twilio_outbox.messages WHERE attempts = 1'),
	$count, 'one attempt each');

open(my $fh, '<', $log) or die "no log: $!";
my (%requests, %segments);
while (<$fh>)
{
	my ($conn, $n, $segs) = split;
	push @{ $requests{$conn} }, $n;
	$segments{$conn} = $segs;
}
close $fh;
my $total = 0;
$total += scalar @{ $requests{$_} } for keys %requests;
is($total, $count, "the responder answered $count requests");
my @conns = sort { $a <=> $b } keys %requests;
ok(@conns >= 1, scalar(@conns) . ' connection(s)');
for my $conn (@conns)
{
	my $reqs = scalar @{ $requests{$conn} };
	my $segs = $segments{$conn};
	cmp_ok($segs, '>', 0, "connection $conn: the kernel counts its segments ($segs)");
	cmp_ok($segs, '<=', $reqs + 1,
		"connection $conn: $reqs requests in $segs segments with data (two per request uncorked)");
}

$node->stop;
kill 'TERM', $pid;
waitpid($pid, 0);
done_testing();

package OneSegmentResponder;
sub base_url { return 'http://127.0.0.1:' . $_[0]->{port} }
