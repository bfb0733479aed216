# Metrics for Prometheus end to end: Debian's prometheus-postgres-exporter
# runs contrib/prometheus/queries.yaml against a test cluster as a login
# role that is only a member of twilio_outbox_metrics, and its /metrics
# page has every metric README.md lists, with the values of the metrics
# view and of what happened: messages sent by the dispatcher to the
# stand-in, delivered, undelivered and failed by signed status callbacks,
# one callback refused for its signature, messages scheduled and held by a
# paused sender.  test/setup.sh (test_tools) installs the exporter.
use strict;
use warnings;

use FindBin;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $top     = "$FindBin::RealBin/../..";
my $queries = "$top/contrib/prometheus/queries.yaml";

my ($exporter) = grep { -x $_ }
  map { "$_/prometheus-postgres-exporter" } split /:/, "$ENV{PATH}:/usr/bin";
BAIL_OUT('prometheus-postgres-exporter is not installed: test/setup.sh (test_tools) '
	  . 'installs it with apt-get as root, or apt-get install prometheus-postgres-exporter')
  unless $exporter;

# The metric names README.md lists: the first column of the table in its
# section "Metrics for Prometheus".
sub readme_metrics
{
	open my $fh, '<', "$top/README.md" or die "README.md: $!";
	my ($in, @names) = (0);
	while (my $line = <$fh>)
	{
		if ($line =~ /^#+ /) { $in = $line =~ /^### Metrics for Prometheus/; next; }
		push @names, $1 if $in && $line =~ /^\| `(twilio_outbox_[a-z0-9_]+)`/;
	}
	return @names;
}
my @listed = readme_metrics();
cmp_ok(scalar @listed, '>=', 20, 'README.md lists the metrics');

my $standin = TwilioStandIn->start;
my $node    = OutboxTest::node('metrics');
OutboxTest::add_account($node, $standin);
my $hook = 'https://hooks.example.com/twilio/status';
my $held_from = '+15005550007';
$node->safe_psql('postgres', qq{
	UPDATE twilio_outbox.accounts SET status_callback_url = '$hook' WHERE name = 'main';
	INSERT INTO twilio_outbox.senders (account, from_number, kind, rate)
		VALUES ('main', '$held_from', 'long_code', 'Infinity');
	SELECT twilio_outbox.pause_sender(id, reason => 'held by the test')
	FROM twilio_outbox.senders WHERE from_number = '$held_from';
});

# Five sent now, two scheduled for later, one held by the paused sender.
my @sent = map { OutboxTest::enqueue_to($node, sprintf('+1415555%04d', 1900 + $_)) } 1 .. 5;
$node->safe_psql('postgres', q{
	SELECT twilio_enqueue('+14155551911', 'later', send_after => now() + interval '1 hour');
	SELECT twilio_enqueue('+14155551912', 'later', send_after => now() + interval '1 hour');
});
$node->safe_psql('postgres',
	"SELECT twilio_enqueue('+14155551913', 'held', from_number => '$held_from')");
$node->safe_psql('postgres', 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($node,
	"SELECT count(*) = 5 FROM twilio_outbox.messages WHERE state = 'sent'", 'five messages sent');

# Status callbacks, signed with the account's auth token: three delivered,
# one undelivered and one failed (error policy: dead letters).
sub callback
{
	my ($id, $status, $code, $token) = @_;
	my $sid = $node->safe_psql('postgres', "SELECT twilio_sid FROM twilio_outbox.messages WHERE id = $id");
	my $url = "$hook?outbox_id=$id";
	my $body = "AccountSid=$OutboxTest::ACCOUNT_SID&MessageSid=$sid&MessageStatus=$status"
	  . ($code ? "&ErrorCode=$code" : '');
	$token //= $OutboxTest::AUTH_TOKEN;
	my ($ret, $out, $err) = $node->psql('postgres', qq{
		SELECT twilio_outbox.receive_status('$url', '$body',
			twilio_outbox.webhook_signature('$token', '$url', '$body'))});
	return $ret == 0 ? $out : $err;
}
is(callback($sent[$_], 'delivered'), 'applied', "message $sent[$_] delivered") for 0 .. 2;
is(callback($sent[3], 'undelivered', 30003), 'applied', 'one undelivered');
is(callback($sent[4], 'failed', 30008), 'applied', 'one failed');
like(callback($sent[0], 'read', undef, 'not-the-auth-token'), qr/signature/,
	'a callback signed with another token is refused');

# The exporter's role: a member of twilio_outbox_metrics, nothing more.
$node->safe_psql('postgres', 'CREATE ROLE scraper LOGIN IN ROLE twilio_outbox_metrics');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT to_number FROM twilio_outbox.messages',
	extra_params => [ '-U', 'scraper' ]);
like($err, qr/permission denied/, 'the metrics role cannot read messages');
($ret, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM twilio_outbox.attempt_log',
	extra_params => [ '-U', 'scraper' ]);
like($err, qr/permission denied/, 'nor the attempt log');

# The exporter, on a free loopback port, as that role over the cluster's socket.
# Without the server's own metrics where the version has the flags for it
# (0.11 to 0.19; 0.20 dropped --disable-settings-metrics for
# --no-collector.settings).
my $help = `'$exporter' --help 2>&1`;
my @quiet = grep { $help =~ /\Q$_\E\b/ } qw(--disable-default-metrics --disable-settings-metrics);
push @quiet, '--no-collector.settings' if $help =~ /--\[no-\]collector\.settings/;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $log  = "${PostgreSQL::Test::Utils::tmp_check}/exporter.log";
my $h;
{
	local $ENV{DATA_SOURCE_NAME} = sprintf('host=%s port=%d user=scraper dbname=postgres sslmode=disable',
		$node->host, $node->port);
	$h = IPC::Run::start([ $exporter, "--web.listen-address=127.0.0.1:$port",
			"--extend.query-path=$queries", @quiet ],
		'<', \undef, '>', $log, '2>&1');
}

my $http = HTTP::Tiny->new(timeout => 10);
sub scrape
{
	my $r = $http->get("http://127.0.0.1:$port/metrics");
	return $r->{success} ? $r->{content} : undef;
}
my $page;
for (1 .. 300)
{
	$page = scrape();
	last if defined $page && $page =~ /^twilio_outbox_health_status\{/m;
	sleep 0.1;
}
ok(defined $page && $page =~ /^twilio_outbox_health_status\{/m, 'the exporter serves twilio_outbox metrics')
  or diag(slurp_file($log));

# name => [ { labels }, value ] for every sample of the page.
sub samples
{
	my ($text) = @_;
	my %s;
	for my $line (split /\n/, $text // '')
	{
		next if $line =~ /^#/ || $line !~ /\S/;
		my ($name, $labels, $value) = $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/ or next;
		my %l;
		while (($labels // '') =~ /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g) { $l{$1} = $2; }
		push @{ $s{$name} }, [ \%l, $value + 0 ];
	}
	return \%s;
}
my $s = samples($page);

# The exporter's own verdicts on the query file and the last scrape.
for my $own (qw(pg_exporter_user_queries_load_error pg_exporter_last_scrape_error))
{
	next unless $s->{$own};
	is((grep { $_->[1] != 0 } @{ $s->{$own} }), 0, "$own is 0");
}

ok($s->{$_}, "$_ is exported") for @listed;

# A sample of $name whose labels include %want; its value or undef.
sub value
{
	my ($name, %want) = @_;
	for my $x (@{ $s->{$name} // [] })
	{
		return $x->[1] unless grep { ($x->[0]{$_} // '') ne $want{$_} } keys %want;
	}
	return undef;
}
my %expect = (
	'twilio_outbox_worker_up'                                  => 1,
	'twilio_outbox_worker_sent_total'                          => 5,
	'twilio_outbox_worker_dead_total'                          => 0,
	'twilio_outbox_dead_letters_open'                          => 2,
	'twilio_outbox_stats_attempts window=5m'                   => 5,
	'twilio_outbox_stats_sent window=5m'                       => 5,
	'twilio_outbox_stats_sent window=1h'                       => 5,
	'twilio_outbox_stats_delivered window=5m'                  => 3,
	'twilio_outbox_stats_undelivered window=5m'                => 1,
	'twilio_outbox_stats_failed window=5m'                     => 1,
	'twilio_outbox_stats_dead_letters window=1h'               => 2,
	'twilio_outbox_stats_rate_limited window=5m'               => 0,
	'twilio_outbox_backlog_messages sender=+15005550006 state=scheduled' => 2,
	'twilio_outbox_backlog_messages sender=+15005550007 state=due'       => 1,
	'twilio_outbox_backlog_messages sender=+15005550006 state=due'       => 0,
	'twilio_outbox_webhooks_total verdict=accepted'            => 5,
	'twilio_outbox_webhooks_total verdict=bad_signature'       => 1,
	'twilio_outbox_health_status check=worker_running'         => 0,
	'twilio_outbox_health_status check=webhooks_refused'       => 1,
	'twilio_outbox_health_status check=paused'                 => 1,
	'twilio_outbox_health_status check=failure_share'          => 0,
);
for my $k (sort keys %expect)
{
	my ($name, @l) = split / /, $k;
	is(value($name, map { split /=/, $_, 2 } @l), $expect{$k}, $k);
}
cmp_ok(value('twilio_outbox_backlog_oldest_due_age_seconds', sender => $held_from), '>=', 0,
	'the held message is due: its sender has an oldest due age');
cmp_ok(value('twilio_outbox_oldest_due_age_seconds'), '>=', 0, 'and so has the outbox');
cmp_ok(value('twilio_outbox_stats_delivery_seconds', window => '5m', quantile => '0.5'), '>=', 0,
	'the median time from sent to delivered');
cmp_ok(value('twilio_outbox_stats_round_trip_seconds', window => '5m', quantile => '0.95'), '>', 0,
	'the round trip');

# Every sample of the view (as the exporter's role) is on the page with its
# value, but for those that move with the clock (ages, rates, the 1m window).
my $rows = $node->safe_psql('postgres',
	q{SELECT metric || ' ' || labels::text || ' ' || value FROM twilio_outbox.metrics},
	extra_params => [ '-U', 'scraper' ]);
my ($compared, @wrong) = (0);
for my $row (split /\n/, $rows)
{
	my ($name, $json, $value) = $row =~ /^(\S+) (\{.*\}) (\S+)$/ or next;
	my $labels = decode_json($json);
	next if $name =~ /_age_seconds$|_per_second$/ || ($labels->{window} // '') eq '1m';
	my $got = value($name, %$labels);
	$compared++;
	push @wrong, "$name $json: view $value, exporter " . ($got // 'none')
	  unless defined $got && abs($got - $value) <= 1e-9 * (1 + abs($value));
}
cmp_ok($compared, '>=', 40, "$compared samples of the view compared with the exporter's");
is_deeply(\@wrong, [], 'the exporter exports the view\'s values');

$h->kill_kill;
$node->stop;
$standin->stop;
done_testing();
