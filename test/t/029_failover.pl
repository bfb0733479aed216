# Failover (issue 11): a primary and a streaming standby.  The dispatcher
# never runs on the standby (nor does pg_cron, nor start_worker()); the
# standby's replication is cut while the primary's dispatcher sends, so
# that claims and outcomes the primary commits never reach it; the primary
# dies (immediate stop) with requests in flight; the standby is promoted.
# Its dispatcher starts by itself (twilio_outbox.databases), finds the new
# timeline, and marks for reconciliation every message Twilio may have
# created without the new primary knowing: those left 'sending', and those
# still 'queued' here whose claim was lost.  None of them is sent again
# blindly: the reconciliation looks each up at Twilio and adopts it or
# sends it, so the stand-in creates every message exactly once; messages
# the standby already knew as sent are left alone, and new messages go out.
#
# Then synchronous replication with failover_window = 0: only what was in
# flight is marked; the queued messages are sent by a dispatcher the
# replicated pg_cron supervisor job starts on the new primary; each
# message is created once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use FindBin;
use lib "$FindBin::RealBin/../perl";
use OutboxTest;
use TwilioStandIn;

my $standin = TwilioStandIn->start;

# Run $sql expecting an error: its SQLSTATE.
sub sql_error
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	my ($state) = ($err // '') =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return $ret == 0 ? 'no error' : $state // "unparsed: $err";
}

sub backends
{
	my ($node, $type) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = '$type'");
}

# Enqueue $n messages to +1415<prefix>NNNN in one transaction.
sub enqueue
{
	my ($node, $prefix, $n, $body) = @_;
	$node->safe_psql('postgres', qq{
		SELECT count(twilio_enqueue('+1415$prefix' || lpad(i::text, 4, '0'), '$body ' || i))
		FROM generate_series(1, $n) i});
	return;
}

# Requests the stand-in received, per recipient, for recipients starting with $prefix.
sub requests_by_to
{
	my ($prefix) = @_;
	my %n;
	for my $r (@{ $standin->requests })
	{
		my $to = $r->{form}{To}[0] // '';
		$n{$to}++ if index($to, "+1415$prefix") == 0;
	}
	return \%n;
}

# ---------- asynchronous replication ----------

my $primary = OutboxTest::node('primary', '', allows_streaming => 1);
OutboxTest::add_account($primary, $standin, max_concurrency => 4);
$primary->backup('async');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'async', has_streaming => 1);
# The dispatcher registered with the server: it must wait for a promotion.
# Two of them: one handles the promotion, the other waits for it, then joins.
$standby->append_conf('postgresql.conf',
	"twilio_outbox.databases = 'postgres'\ntwilio_outbox.dispatchers_per_database = 2\n");
$standby->start;

# Batch 1: sent, and known as sent on the standby.
$standin->steady({ status => 201 });
ok(OutboxTest::query($primary, 'SELECT twilio_outbox.start_worker()') > 0,
	'the primary runs a dispatcher');
enqueue($primary, '100', 10, 'before');
OutboxTest::wait_until($primary,
	q{SELECT count(*) = 10 FROM twilio_outbox.messages WHERE state = 'sent'},
	'batch 1 sent on the primary');
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is(backends($standby, 'twilio_outbox dispatcher'), '0',
	'no dispatcher on the standby, though twilio_outbox.databases names the database');
is(backends($primary, 'pg_cron launcher'), '1', 'pg_cron runs on the primary');
is(backends($standby, 'pg_cron launcher'), '0', 'pg_cron does not run on the standby');
is(sql_error($standby, 'SELECT twilio_outbox.start_worker()'), '55000',
	'start_worker() on the standby: object_not_in_prerequisite_state');
is(sql_error($standby, 'SELECT twilio_outbox.start_worker(false)'), '55000',
	'start_worker(false) on the standby too');
is($standby->safe_psql('postgres',
		'SELECT twilio_outbox.start_worker(supervisor => true) IS NULL'), 't',
	'the supervisor\'s start_worker(supervisor => true) on the standby does nothing');
is(backends($standby, 'twilio_outbox dispatcher'), '0', 'still no dispatcher on the standby');
is($standby->safe_psql('postgres', 'SELECT timeline FROM twilio_outbox.failover'), '1',
	'the primary\'s dispatcher recorded timeline 1, replicated');

# Batch 2: slow answers (within the 2 s request timeout: no attempt times
# out); four in flight at a time.
OutboxTest::query($primary, q{SELECT twilio_outbox.stop_worker(hold => '1 hour')});
$standin->steady({ status => 201, delay => 1.5 });
enqueue($primary, '200', 20, 'during');
OutboxTest::query($primary, 'SELECT twilio_outbox.start_worker()');
$standin->wait_requests(14, timeout => 30);
OutboxTest::wait_until($primary,
	q{SELECT count(*) = 4 FROM twilio_outbox.messages WHERE state = 'sending'},
	'four claimed on the primary');
$primary->wait_for_catchup($standby);
my $sending_replicated = $standby->safe_psql('postgres',
	q{SELECT count(*) FROM twilio_outbox.messages WHERE state = 'sending'});
ok($sending_replicated > 0, "$sending_replicated claims replicated to the standby");

# Cut replication: what the primary commits from now on is lost.
$standby->append_conf('postgresql.conf', "primary_conninfo = ''\n");
$standby->reload;
ok($standby->poll_query_until('postgres', 'SELECT count(*) = 0 FROM pg_stat_wal_receiver'),
	'the standby no longer receives WAL');
# Claims (and outcomes) the standby never sees: the next waves go out.
$standin->wait_requests(10 + 12, timeout => 60);
OutboxTest::wait_until($primary,
	q{SELECT count(*) >= 4 FROM twilio_outbox.messages WHERE state = 'sent' AND to_number LIKE '+1415200%'},
	'the primary recorded outcomes the standby does not have');

my $log_offset = -s $standby->logfile;
$primary->stop('immediate');
my $sent_at_standin = requests_by_to('200');
my $nsent = scalar keys %$sent_at_standin;
ok($nsent >= 8, "$nsent messages of batch 2 reached the stand-in before the primary died");
my $queued_but_sent = 0;
for my $to (keys %$sent_at_standin)
{
	$queued_but_sent++ if $standby->safe_psql('postgres',
		"SELECT state FROM twilio_outbox.messages WHERE to_number = '$to'") eq 'queued';
}
ok($queued_but_sent > 0,
	"$queued_but_sent messages the stand-in received are still 'queued' on the standby (their claim was lost)");

$standby->promote;
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f', 'the standby is promoted');
OutboxTest::wait_until($standby,
	q{SELECT timeline = 2 AND promotion_timeline IS NULL AND promotions = 1 FROM twilio_outbox.failover},
	'the new primary\'s dispatcher handled the promotion and recorded timeline 2');
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'twilio_outbox dispatcher'},
	'the two dispatchers run on the new primary by themselves');
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'},
	'pg_cron runs on the new primary');
like(slurp_file($standby->logfile, $log_offset),
	qr/this server was promoted \(WAL timeline 2, the outbox last ran on timeline 1\)/,
	'the promotion is logged');

# Every message the stand-in received in batch 2 is marked, none is queued
# or in flight again (it would be sent blindly), each with a lost attempt.
my @unsafe;
my (%was);
for my $to (sort keys %$sent_at_standin)
{
	my $row = $standby->safe_psql('postgres', qq{
		SELECT m.state, m.reconcile_at IS NOT NULL, m.ambiguous_since IS NOT NULL,
		       (SELECT string_agg(substring(a.transport_error from 'with the message (\\w+)'), ',')
		        FROM twilio_outbox.attempt_rows a
		        WHERE a.message_id = m.id AND a.outcome = 'lost' AND a.ambiguous
		          AND a.transport_error LIKE 'the server was promoted (WAL timeline 2)%')
		FROM twilio_outbox.messages m WHERE m.to_number = '$to'});
	my ($state, $rec, $since, $was) = split /\|/, $row;
	# marked: ambiguous until the reconciliation (after the grace) decides
	push @unsafe, "$to: $row"
	  unless (($state eq 'ambiguous' && $rec eq 't') || $state eq 'sent') && $since eq 't' && $was;
	$was{$was}++ if $was;
}
is_deeply(\@unsafe, [], 'every message of batch 2 the stand-in received waits for reconciliation');
ok(($was{sending} // 0) > 0, ($was{sending} // 0) . " of them were left 'sending'");
ok(($was{queued} // 0) > 0, ($was{queued} // 0) . " of them were 'queued', their claim lost");
is($standby->safe_psql('postgres', q{
		SELECT count(*) FROM twilio_outbox.messages m
		WHERE m.to_number LIKE '+1415200%' AND NOT EXISTS (SELECT FROM twilio_outbox.attempt_rows a
			WHERE a.message_id = m.id AND a.transport_error LIKE 'the server was promoted%')}), '0',
	'every message of batch 2 is marked (all were enqueued within the window)');
is($standby->safe_psql('postgres', q{
		SELECT count(*) || '|' || count(*) FILTER (WHERE state = 'sent')
		       || '|' || count(a.id)
		FROM twilio_outbox.messages m
		LEFT JOIN twilio_outbox.attempt_rows a ON a.message_id = m.id AND a.outcome = 'lost'
		WHERE m.to_number LIKE '+1415100%'}), '10|10|0',
	'batch 1, sent before the replication was cut, is left alone');
is($standby->safe_psql('postgres', q{
		SELECT count(*) FROM (SELECT message_id FROM twilio_outbox.attempt_rows
			WHERE transport_error LIKE 'the server was promoted%'
			GROUP BY message_id HAVING count(*) > 1) x}), '0',
	'two dispatchers: each message marked once');
is($standby->safe_psql('postgres', q{
		SELECT last_promotion_marked = (SELECT count(*) FROM twilio_outbox.attempt_rows
		                               WHERE transport_error LIKE 'the server was promoted%')
		FROM twilio_outbox.failover}), 't', 'the failover row counts the marked messages');

# The new primary sends what is enqueued now; nothing was sent twice.
$standin->steady({ status => 201 });
enqueue($standby, '300', 5, 'after');
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 5 FROM twilio_outbox.messages WHERE state = 'sent' AND to_number LIKE '+1415300%'},
	'messages enqueued on the new primary are sent');
# The reconciliation (after twilio_outbox.reconcile_grace) looks each
# marked message up at Twilio: the ones the old primary sent are adopted,
# the others sent now.
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 20 FROM twilio_outbox.messages WHERE state = 'sent' AND to_number LIKE '+1415200%'},
	'every message of batch 2 ends sent');
my $created = $standin->created;
my @keys = split /\n/, $standby->safe_psql('postgres',
	q{SELECT idempotency_key FROM twilio_outbox.messages WHERE to_number LIKE '+1415200%' ORDER BY id});
is_deeply([ grep { ($created->{by_key}{$_} // 0) != 1 } @keys ], [],
	'the stand-in created each message of batch 2 exactly once: none lost, none twice');
is($standby->safe_psql('postgres', q{
		SELECT count(*) FROM twilio_outbox.messages m
		WHERE m.to_number LIKE '+1415200%' AND m.twilio_sid IS NULL}), '0',
	'each has its Twilio SID');

# A restart on the same timeline is no promotion.
$standby->restart;
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'twilio_outbox dispatcher'},
	'the dispatchers start again after a restart');
is($standby->safe_psql('postgres', 'SELECT timeline || \'|\' || promotions FROM twilio_outbox.failover'),
	'2|1', 'a restart is not taken for a promotion');

# A crash in the middle of the handling: the row still says a promotion is
# being handled, as the first batches leave it.  The next dispatcher
# resumes it with the cutoff recorded: what changed after it was changed
# on this server and is not marked.
OutboxTest::query($standby, q{SELECT twilio_outbox.stop_worker(hold => '1 hour')});
enqueue($standby, '500', 3, 'resume');
OutboxTest::query($standby, q{
	UPDATE twilio_outbox.messages SET state = 'sending', worker_pid = 999999,
		lease_until = now() + interval '1 hour', attempts = 1
	WHERE to_number = '+14155000001'});
OutboxTest::query($standby, q{
	UPDATE twilio_outbox.failover SET timeline = 1, promotion_timeline = 2,
		promotion_cutoff = now(), promotion_window = '5 min', promotion_marked = 7});
enqueue($standby, '600', 2, 'later');
OutboxTest::query($standby, 'SELECT twilio_outbox.start_worker()');
OutboxTest::wait_until($standby,
	q{SELECT timeline = 2 AND promotion_timeline IS NULL AND promotions = 2 FROM twilio_outbox.failover},
	'a half-handled promotion is finished by the next dispatcher');
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 2 FROM twilio_outbox.messages WHERE state = 'sent' AND to_number LIKE '+1415600%'},
	'messages enqueued after the cutoff are sent');
is($standby->safe_psql('postgres', q{
		SELECT string_agg(a.attempt || ':' || substring(a.transport_error from 'with the message (\w+)'),
			',' ORDER BY m.to_number)
		FROM twilio_outbox.messages m JOIN twilio_outbox.attempt_rows a ON a.message_id = m.id
		WHERE m.to_number LIKE '+1415500%' AND a.transport_error LIKE 'the server was promoted%'}),
	'1:sending,1:queued,1:queued',
	'the messages before the cutoff are marked, each with one lost attempt');
is($standby->safe_psql('postgres', 'SELECT last_promotion_marked FROM twilio_outbox.failover'),
	'10', 'the count goes on from where the crash left it');
OutboxTest::wait_until($standby,
	q{SELECT count(*) = 3 FROM twilio_outbox.messages WHERE state = 'sent' AND to_number LIKE '+1415500%'},
	'not found at Twilio, they are sent');

$standby->stop;

# ---------- synchronous replication, failover_window = 0 ----------

my $primary2 = OutboxTest::node('primary2', '', allows_streaming => 1);
# pg_cron runs jobs over libpq, to this server's own socket
$primary2->append_conf('postgresql.conf',
	"cron.host = '" . $primary2->host . "'\nsynchronous_standby_names = '*'\n");
OutboxTest::add_account($primary2, $standin, max_concurrency => 4);
$primary2->restart;
$primary2->backup('sync');
my $standby2 = PostgreSQL::Test::Cluster->new('standby2');
$standby2->init_from_backup($primary2, 'sync', has_streaming => 1);
# The copied configuration names synchronous standbys: once promoted,
# without a standby of its own, every commit would wait for one forever.
$standby2->append_conf('postgresql.conf',
	"twilio_outbox.failover_window = 0\nsynchronous_standby_names = ''\n");
$standby2->start;
# The supervisor job replicates with cron.job; on the standby it does not run.
like(OutboxTest::query($primary2, 'SELECT twilio_outbox.schedule_supervisor()'), qr/^\d+$/,
	'the supervisor job is scheduled on the primary');
$standin->steady({ status => 201, delay => 1.5 });
ok(OutboxTest::query($primary2, 'SELECT twilio_outbox.start_worker()') > 0,
	'the primary runs a dispatcher');
enqueue($primary2, '400', 12, 'sync');
$standin->wait_requests(scalar(@{ $standin->requests }) + 4, timeout => 30);
OutboxTest::wait_until($primary2,
	q{SELECT count(*) = 4 FROM twilio_outbox.messages WHERE state = 'sending'},
	'four in flight on the primary');
is($primary2->safe_psql('postgres',
		q{SELECT sync_state FROM pg_stat_replication}), 'sync', 'the standby is synchronous');
is(backends($standby2, 'twilio_outbox dispatcher'), '0', 'no dispatcher on the standby');
$primary2->stop('immediate');
my $sync_sent = requests_by_to('400');
$standby2->promote;
# pg_cron runs a job over libpq to the port it was scheduled on (cron.job's
# nodeport): a real pair listens on one port on two hosts, these two
# servers share a socket directory and cannot.
$standby2->safe_psql('postgres', 'UPDATE cron.job SET nodeport = ' . $standby2->port);
# pg_cron fires on a minute boundary: up to a minute and a bit.
ok($standby2->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'twilio_outbox dispatcher'}),
	'the supervisor job starts the dispatcher on the new primary');
$standin->steady({ status => 201 });
OutboxTest::wait_until($standby2,
	q{SELECT count(*) = 12 FROM twilio_outbox.messages
	  WHERE to_number LIKE '+1415400%' AND state = 'sent'},
	'every message of the synchronous case ends sent');
my $marked = $standby2->safe_psql('postgres', q{
	SELECT string_agg(m.to_number, ',' ORDER BY m.to_number) FROM twilio_outbox.messages m
	WHERE EXISTS (SELECT FROM twilio_outbox.attempt_rows a
		WHERE a.message_id = m.id AND a.transport_error LIKE 'the server was promoted%with the message sending%')});
my @marked = split /,/, $marked;
ok(@marked > 0, scalar(@marked) . ' messages in flight marked for reconciliation');
is_deeply([ grep { !$sync_sent->{$_} } @marked ], [],
	'each of them had reached the stand-in before the primary died');
is($standby2->safe_psql('postgres', q{
		SELECT count(*) FROM twilio_outbox.attempt_rows WHERE transport_error LIKE '%with the message queued%'}),
	'0', 'no queued message is marked');
$created = $standin->created;
@keys = split /\n/, $standby2->safe_psql('postgres',
	q{SELECT idempotency_key FROM twilio_outbox.messages WHERE to_number LIKE '+1415400%' ORDER BY id});
is_deeply([ grep { ($created->{by_key}{$_} // 0) != 1 } @keys ], [],
	'the stand-in created each message of the synchronous case exactly once');

$standby2->stop;
$standin->stop;
done_testing();
