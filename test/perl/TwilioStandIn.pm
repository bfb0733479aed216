# TwilioStandIn.pm - Perl side of the local Twilio Messages API stand-in.
#
# This module owns starting, scripting, inspecting and stopping the stand-in
# server implemented in test/twilio_standin.py (which owns the HTTP behaviour).
# Core Perl modules only.  See the POD at the end for the API.

package TwilioStandIn;

use strict;
use warnings;

use Cwd ();
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

my $STARTUP_TIMEOUT = 10;
my $POLL_INTERVAL   = 0.1;
my $SCRIPT_PATH     = File::Spec->catfile(
	Cwd::abs_path(File::Spec->catdir(dirname(__FILE__), File::Spec->updir)),
	'twilio_standin.py');

my $JSON = JSON::PP->new->canonical->allow_nonref;

sub start
{
	my ($class) = @_;
	my $dir = tempdir('twilio_standin_XXXXXX', TMPDIR => 1, CLEANUP => 1);
	my $self = bless {
		port_file => File::Spec->catfile($dir, 'port'),
		owner     => $$,
		http      => HTTP::Tiny->new(timeout => 10, keep_alive => 1),
	}, $class;
	$self->{pid} = _spawn($self->{port_file});
	$self->_await_ready;
	return $self;
}

sub port     { return $_[0]->{port} }
sub base_url { return 'http://127.0.0.1:' . $_[0]->{port} }

sub script
{
	my ($self, $to, @actions) = @_;
	return $self->_post('/_script', { to => $to, actions => \@actions });
}

sub script_default
{
	my ($self, @actions) = @_;
	return $self->_post('/_script', { default => \@actions });
}

sub steady
{
	my ($self, $action) = @_;
	return $self->_post('/_script', { steady => $action });
}

sub config
{
	my ($self, $cfg) = @_;
	return $self->_post('/_config', $cfg);
}

# Twilio-Concurrent-Requests reports $others more than the stand-in's own
# requests in progress; with $limit, creates beyond it are answered 429.
sub concurrency
{
	my ($self, $others, $limit) = @_;
	return $self->_post('/_concurrency', { others => $others + 0, limit => (defined $limit ? $limit + 0 : undef) });
}

sub reset
{
	my ($self) = @_;
	return $self->_post('/_reset', {});
}

sub requests
{
	my ($self, %opts) = @_;
	my $url = $self->base_url . '/_requests';
	$url .= '?' . $self->{http}->www_form_urlencode({ to => $opts{to} })
	  if defined $opts{to};
	return $self->_check($self->{http}->get($url), 'GET /_requests');
}

sub wait_requests
{
	my ($self, $n, %opts) = @_;
	my $deadline = time + ($opts{timeout} // 30);
	my $seen = [];
	while (1)
	{
		my $got = eval { $self->requests(to => $opts{to}) };
		$seen = $got if $got;
		return $seen if @$seen >= $n || time >= $deadline;
		sleep $POLL_INTERVAL;
	}
}

# Fetches and deletions of single messages (GET/DELETE .../Messages/{Sid}.json).
sub lookups
{
	my ($self) = @_;
	return $self->_check($self->{http}->get($self->base_url . '/_lookups'), 'GET /_lookups');
}

# What a fetch of the message $sid answers from now on.
sub message_status
{
	my ($self, $sid, $status, %opt) = @_;
	my %spec = (sid => $sid, status => $status, error_code => $opt{error_code},
		error_message => $opt{error_message});
	# date_sent => undef: not sent yet (no DateSent filter finds it).
	$spec{date_sent} = $opt{date_sent} if exists $opt{date_sent};
	return $self->_post('/_message_status', \%spec);
}

# Error answers for the next fetches or deletions, whatever their SID.
sub lookup_script
{
	my ($self, @actions) = @_;
	return $self->_post('/_lookup_script', { actions => \@actions });
}

# Every fetch and deletion answers $seconds late (0: at once).
sub lookup_delay
{
	my ($self, $seconds) = @_;
	return $self->_post('/_lookup_script', { delay => $seconds });
}

# --- reconciliation: the list resource, faults, counters ------------------

# GET .../Accounts/$account_sid/Messages.json with these query parameters (a
# hashref, or a path and query as next_page_uri gives it): the HTTP status
# and the decoded body.
sub list_messages
{
	my ($self, $account_sid, $query) = @_;
	my $url = ref $query
	  ? $self->base_url . "/2010-04-01/Accounts/$account_sid/Messages.json"
	  . (%$query ? '?' . $self->{http}->www_form_urlencode($query) : '')
	  : $self->base_url . $query;
	my $res = $self->{http}->get($url);
	die "TwilioStandIn: GET $url failed: $res->{content}\n" if $res->{status} == 599;
	return ($res->{status}, $JSON->decode($res->{content}));
}

# A message created "at Twilio" without a request of ours: { account_sid, to,
# from, messaging_service_sid, body, status, date_created, date_sent (undef:
# queued), idempotency_key, outbox_id }.  Returns its SID.
sub create_message
{
	my ($self, $spec) = @_;
	return $self->_post('/_messages', $spec)->{sid};
}

# The next $n creates to $to meet the fault $mode (create_500, create_hang,
# create_close, close_early, 429, 503); options hang => $s, callbacks => 0.
sub fault
{
	my ($self, $to, $mode, $n, %opt) = @_;
	my %action = (fault => $mode, %opt);
	$action{callbacks} = $action{callbacks} ? JSON::PP::true : JSON::PP::false
	  if exists $action{callbacks};
	return $self->script($to, map { {%action} } 1 .. ($n // 1));
}

# The next create to $to meets Twilio's status callbacks first: the message
# is created, each callback of \@statuses ({status => 'delivered'}, {status
# => 'undelivered', error_code => 30003}, ...) is posted to its
# StatusCallback signed with $auth_token, and the create is answered with
# then => \%action (default {status => 201}) once the last callback was
# answered, or with gate => $name once open_gate($name) was called (the
# callbacks then go out in the background).
sub callback_first
{
	my ($self, $to, $auth_token, $statuses, %opt) = @_;
	return $self->script($to, { callback_first => $statuses, auth_token => $auth_token, %opt });
}

sub open_gate
{
	my ($self, $name) = @_;
	return $self->_post('/_gate', { name => $name });
}

# Random faults for creates no script answers: { rate => 0.1, mix =>
# { create_500 => 1, ... }, hang => $s, seed => $n }; faults() reads the
# configuration and how many of each were injected.
sub set_faults
{
	my ($self, $cfg) = @_;
	return $self->_post('/_faults', $cfg);
}

sub faults
{
	my ($self) = @_;
	return $self->_check($self->{http}->get($self->base_url . '/_faults'), 'GET /_faults');
}

# How many messages were created: { total, by_key => {key => n},
# by_outbox_id => {id => n}, sids_by_key => {key => [sid, ...]},
# sids_by_outbox_id => {id => [sid, ...]} }.
sub created
{
	my ($self) = @_;
	return $self->_check($self->{http}->get($self->base_url . '/_created'), 'GET /_created');
}

# Error actions answering the next list requests, in order.
sub list_script
{
	my ($self, @actions) = @_;
	return $self->_post('/_list_script', { actions => \@actions });
}

# The recorded list requests: each { t, account_sid, query, auth_user, status, count }.
sub lists
{
	my ($self) = @_;
	return $self->_check($self->{http}->get($self->base_url . '/_lists'), 'GET /_lists');
}

sub stop
{
	my ($self) = @_;
	my $pid = delete $self->{pid} or return;
	local $?;    # keep the test's exit status intact
	kill 'TERM', $pid;
	waitpid($pid, 0);
	return;
}

sub DESTROY
{
	my ($self) = @_;
	# A forked child inherits the object; only the process that started the
	# server may stop it.
	$self->stop if $self->{pid} && $self->{owner} == $$;
	return;
}

# A raw action from byte strings: the stand-in answers exactly these bytes
# (invalid UTF-8, control characters and all).
sub raw
{
	my ($status, $headers, $body) = @_;
	require MIME::Base64;
	return {
		raw => {
			status      => $status,
			headers_b64 => [ map { MIME::Base64::encode_base64($_, '') } @$headers ],
			body_b64    => MIME::Base64::encode_base64($body // '', ''),
		}
	};
}

# --- internals ----------------------------------------------------------

sub _spawn
{
	my ($port_file) = @_;
	my $pid = fork() // die "TwilioStandIn: fork failed: $!";
	return $pid if $pid;
	# Child: keep the TAP stream on stdout clean and detach stdin.
	open(STDIN,  '<',  File::Spec->devnull) or POSIX::_exit(127);
	open(STDOUT, '>&', \*STDERR)            or POSIX::_exit(127);
	exec('python3', $SCRIPT_PATH, '--port', '0', '--port-file', $port_file, '--quiet')
	  or POSIX::_exit(127);    # perl has already warned "Can't exec"
}

sub _await_ready
{
	my ($self) = @_;
	my $deadline = time + $STARTUP_TIMEOUT;
	while (time < $deadline)
	{
		$self->_fail_startup('exited with status ' . ($? >> 8))
		  if waitpid($self->{pid}, WNOHANG) == $self->{pid};
		return if $self->_read_port && $self->_healthy;
		sleep $POLL_INTERVAL;
	}
	$self->_fail_startup("not ready after ${STARTUP_TIMEOUT}s");
}

sub _fail_startup
{
	my ($self, $why) = @_;
	my $pid = delete $self->{pid};
	if (kill 0, $pid)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
	die "TwilioStandIn: $SCRIPT_PATH $why\n";
}

sub _read_port
{
	my ($self) = @_;
	return 1 if $self->{port};
	open(my $fh, '<', $self->{port_file}) or return 0;
	my $line = <$fh>;
	close $fh;
	return 0 unless defined $line && $line =~ /^(\d+)$/;
	$self->{port} = $1;
	return 1;
}

sub _healthy
{
	my ($self) = @_;
	my $res = HTTP::Tiny->new(timeout => 1)->get($self->base_url . '/_health');
	return $res->{status} == 200;
}

sub _post
{
	my ($self, $path, $body) = @_;
	my $res = $self->{http}->post(
		$self->base_url . $path,
		{
			headers => { 'Content-Type' => 'application/json' },
			content => $JSON->encode($body),
		});
	return $self->_check($res, "POST $path");
}

sub _check
{
	my ($self, $res, $what) = @_;
	die "TwilioStandIn: $what failed: $res->{status} $res->{reason}: $res->{content}\n"
	  unless $res->{success};
	return $JSON->decode($res->{content});
}

1;

__END__

=head1 NAME

TwilioStandIn - drive the local Twilio Messages API stand-in from TAP tests

=head1 SYNOPSIS

  use lib 'test/perl';
  use TwilioStandIn;

  my $tw = TwilioStandIn->start();        # dies if not ready within 10 s
  my $url = $tw->base_url;                # "http://127.0.0.1:PORT"

  $tw->script('+14155550100', { status => 429, retry_after => '2' }, { status => 201 });
  $tw->script_default({ status => 500 });
  $tw->steady({ status => 201, delay => 0.2 });
  $tw->config({ rates => { '+15005550006' => 1 }, burst => 1 });

  my $reqs = $tw->wait_requests(2, timeout => 30, to => '+14155550100');
  is($reqs->[0]{form}{Body}[0], 'hello');

  $tw->reset;
  $tw->stop;                              # also done by DESTROY

=head1 METHODS

=over

=item C<< TwilioStandIn->start() >>

Spawns C<python3 test/twilio_standin.py --port 0 --port-file TMP --quiet>
(the child's stdout goes to stderr so the TAP stream stays clean), waits up
to 10 s for the port file and a 200 from C</_health>, and dies otherwise.

=item C<< $s->port >>, C<< $s->base_url >>

The bound port and C<http://127.0.0.1:PORT>.  Point the extension's Twilio
base URL here; messages go to C</2010-04-01/Accounts/{AccountSid}/Messages.json>.

=item C<< $s->script($to, @actions) >>

Appends actions (hashrefs) to the FIFO for requests whose C<To> is C<$to>.

=item C<< $s->script_default(@actions) >>

Appends actions to the FIFO used when the recipient has no scripted action.

=item C<< $s->steady(\%action) >>

Replaces the action used when both FIFOs are empty (initially C<{status =E<gt> 201}>).

=item C<< $s->config(\%cfg) >>

Sets per-sender token-bucket rate limits:
C<< { rates => { $from_or_messaging_service_sid => $per_second }, burst => $n } >>.
A request over the limit gets 429 / code 20429 without Retry-After and is
recorded with action C<< { status => 429, rate_limited => 1 } >>.

=item C<< $s->reset >>

Clears scripts, recorded requests, rate limits and the steady action.

=item C<< $s->requests(to => $to) >>, C<< $s->requests() >>

Arrayref of recorded requests (decoded JSON), each
C<< { seq, t, method, path, account_sid, headers => {lc name => value},
form => {key => [values]}, auth_user, auth_password, action } >>.

=item C<< $s->wait_requests($n, timeout => 30, to => $to) >>

Polls every 0.1 s until at least C<$n> requests are recorded; returns the
arrayref (possibly shorter on timeout).  Never dies.

=item C<< $s->lookups >>

The recorded fetches and deletions of single messages, oldest first: each
C<{t, method, sid, account_sid, status, auth_user, concurrent}>, concurrent
being how many fetches and deletions were in progress when it arrived.

=item C<< $s->message_status($sid, $status, error_code => $n, error_message => $text) >>

What fetching the message C<$sid> (one the stand-in created) answers from now on.

=item C<< $s->lookup_script(@actions) >>

Error actions (C<< {status => 429, retry_after => '1'} >>, ...) answering the next
fetches or deletions, in order, whatever their SID.

=item C<< $s->lookup_delay($seconds) >>

Every fetch and deletion from now on answers that many seconds late.

=item C<< $s->list_messages($account_sid, \%query) >>, C<< $s->list_messages(undef, $next_page_uri) >>

C<GET .../Messages.json>: C<($status, $decoded_body)>.  Query keys: C<To>,
C<From>, C<DateSent>, C<< DateSent< >>, C<< DateSent> >>, C<PageSize>, C<Page>,
C<PageToken>.

=item C<< $s->create_message(\%spec) >>

Creates a message "at Twilio" directly (a second candidate, or one an old
page holds): C<{account_sid, to, from, messaging_service_sid, body, status,
date_created, date_sent, idempotency_key, outbox_id}>; returns its SID.

=item C<< $s->fault($to, $mode, $n, hang => $s, callbacks => 0) >>

The next C<$n> creates to C<$to> meet fault C<$mode>: C<create_500>,
C<create_hang>, C<create_close> (the message is created, the answer lost),
C<close_early>, C<429>, C<503> (not created).

=item C<< $s->callback_first($to, $auth_token, \@statuses, then => \%action, gate => $name) >>, C<< $s->open_gate($name) >>

The next create to C<$to> creates its message, posts its status callbacks
(C<@statuses>: C<< {status => 'delivered'} >>, C<< {status => 'undelivered',
error_code => 30003} >>, ...) to the request's C<StatusCallback>, signed with
C<$auth_token>, one after the other, and only then answers with C<then>
(default C<< {status => 201} >> with that message's SID; an error status,
C<< {reset => 1} >> or a fault C<create_500>, C<create_close>,
C<create_hang>).  With C<gate>, the callbacks go out in the background and
the answer waits until C<open_gate($name)>.  The recorded request carries
C<< callbacks => [{status, http, body}] >>: each callback's answer.

=item C<< $s->set_faults({rate => $r, mix => {...}, hang => $s, seed => $n}) >>, C<< $s->faults >>

Random faults for creates no script answers; C<faults> returns the
configuration and C<injected> counts per mode.

=item C<< $s->created >>

C<{total, by_key => {...}, by_outbox_id => {...}, sids_by_key => {...},
sids_by_outbox_id => {...}}>: messages created, per idempotency key and per
outbox id (from the StatusCallback URL), and their SIDs in order of creation.

=item C<< $s->list_script(@actions) >>, C<< $s->lists >>

Error answers for the next list requests; the recorded list requests.

=item C<< $s->stop >>

Sends SIGTERM and reaps the server.  Preserves C<$?>.

=back

=head1 ACTIONS

  { status => 201, twilio_status => 'accepted'|'queued', delay => $s }
  { status => 400, code => 21211, message => '...' }   # any status >= 400
  { status => 429, retry_after => '2' }                # adds Retry-After
  { hang => $s }          # sleep $s, then 201 (client should time out first)
  { stall_body => $s }    # create it, send 201's headers and half the body,
                          # sleep $s, close (a transfer stalled mid-body)
  { reset => 1 }          # read the request, close with RST, no response
  { malformed => 1 }      # 201 with a truncated JSON body
  { fault => 'create_500'|'create_hang'|'create_close'|'close_early'|'429'|'503',
    hang => $s, callbacks => JSON::PP::false }
                          # see fault(); create_* create the message first
  { callback_first => [{status => 'delivered'}, ...], auth_token => $t,
    then => \%action, gate => $name }
                          # see callback_first()
  { raw => { status => 400, headers_b64 => [...], body_b64 => '...' } }
                          # exactly these bytes (base64: header lines without
                          # CRLF, and the body); Content-Length is added.
                          # TwilioStandIn::raw(400, \@header_lines, $body) builds it.

Error codes default to 21211 (400), 20003 (401), 20404 (404), 20429 (429)
and 20500 (5xx).  Unknown keys or impossible actions make the call die.

=cut
