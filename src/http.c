/*-------------------------------------------------------------------------
 *
 * http.c
 *		The HTTP transport: Twilio requests in flight over one libcurl multi
 *		handle, with keep-alive connections shared between them; and the
 *		check of where a request (with its credentials) may go.
 *
 * Runs in the dispatcher only, never inside a transaction.  Callbacks copy
 * into buffers allocated before the transfer; they never allocate or throw.
 *
 * Where credentials go: every request's URL is parsed with libcurl's own
 * URL parser, its host checked (twilio_outbox.allowed_hosts, loopback only
 * with allow_insecure_http, never any user information), and the parsed
 * handle itself is given to libcurl (CURLOPT_CURLU), so that the host
 * checked is the host connected to (an account's messages URL is checked
 * again whenever it or those settings change, not at every send: see
 * messages_url()).  Redirects are never followed; only
 * https (and http when allowed) is spoken; plain http never goes through a
 * proxy.
 *
 * Resends by libcurl itself.  libcurl (7.85 to 8.x; lib/transfer.c
 * Curl_retry_request, called from lib/multi.c when a transfer on a
 * connection fails, or when sending on a reused one does) sends a
 * request again on a fresh connection, on its own, in exactly two cases:
 *	 - the connection was reused (conn->bits.reuse) and it died before a
 *	   single byte of the response (status line, header or body) came back;
 *	 - HTTP/2 REFUSED_STREAM, again before any response byte: the server
 *	   says it did not process the stream (RFC 9113, 8.7).
 * If any byte of the request body had been written by then, libcurl must
 * first rewind the body (Curl_readrewind).  The body is handed to libcurl
 * through a read callback with no seek callback, so that rewind fails
 * (CURLE_SEND_FAIL_REWIND) and the transfer fails instead of resending: the
 * attempt is recorded, as ambiguous, by the dispatcher.  So the one request
 * libcurl resends is one whose request line and headers may have reached
 * Twilio but not one byte of its body.  The headers announce a
 * Content-Length: a server cannot act on a form it never received (To,
 * From and Body are all in it), so such a resend cannot create a second
 * message.  Testers saw exactly this: a reused keep-alive connection reset
 * after the request headers were read, the request resent once, one
 * message created.  The cost of refusing even this resend would be
 * CURLOPT_FORBID_REUSE (a TLS handshake per message).
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

#define RESPONSE_BODY_CAP	16384
/*
 * A response body is first read into a buffer of this size inside the
 * pooled request: a message resource of Twilio's is about 1 kB plus its
 * body.  A longer one grows it, once, to RESPONSE_BODY_CAP (the pooled
 * request keeps that), so that the pool of max_in_flight requests does not
 * hold 16 kB each for responses that never need it.
 */
#define SMALL_BODY_CAP		4096
/*
 * libcurl's own buffers for a transfer, allocated when it starts and freed
 * when it is done (7.88): the upload buffer, which the read callback fills,
 * 64 kB by default, and the receive buffer, 16 kB; about 70 kB per request
 * in flight (160-178 MB of the dispatcher's at 2,000 in flight) for forms
 * of a few hundred bytes and answers of one or two kB.  16 kB is the
 * upload buffer's minimum; 4 kB of receive buffer holds a whole answer to
 * a create, fetch or delete, headers included, in one read.  A list page
 * (up to 1 MB) keeps libcurl's default.  curl_easy_reset() puts the
 * defaults back: both are set for every request.
 */
#define UPLOAD_BUFFER_SIZE	16384L
#define RECEIVE_BUFFER_SIZE	4096L
/* a page of Messages.json: 50 messages of up to 1,600 characters, each escaped */
#define LIST_BODY_CAP		(1024 * 1024)
/* Below the idle timeout of Twilio's load balancers, so a reused connection is alive. */
#define MAX_CONNECTION_AGE_S 30L

static CURLM *multi = NULL;
static int	in_flight = 0;
static char user_agent[128];

/*
 * Issue 14: the cost of a turn of the loop is proportional to the transfers
 * with something to do, not to all those in flight.  curl_multi_perform()
 * and curl_multi_poll() walk every easy handle and build a pollfd of every
 * socket at each call (libcurl 7.88): with 2,000 requests in flight, each
 * turn paid for 2,000.  Instead libcurl tells us, through the socket
 * callback, which sockets it waits on and for what, and we keep them in an
 * epoll set of our own (epfd); a turn asks the kernel which of them are
 * ready (epoll_wait, O(ready)) and hands exactly those to
 * curl_multi_socket_action(), plus CURL_SOCKET_TIMEOUT when libcurl's
 * earliest timer (curl_multi_timeout(), the head of its timer tree: new
 * transfers, connect and request timeouts) is due.  The wait itself is a
 * WaitEventSet of the dispatcher's latch, postmaster death and the epoll
 * fd, which is readable while any socket in the set is ready: a committed
 * enqueue or SIGTERM wakes the wait at once.
 */
#define READY_EVENTS_MAX 256
static int	epfd = -1;
static int	socket_errno = 0;	/* an epoll_ctl failure the socket callback saw */
static WaitEventSet *wait_set = NULL;

/*
 * Issue 14: the hot path allocates nothing per message.  A request is made
 * with a pooled handle: a libcurl easy handle (curl_easy_reset() between
 * uses clears every option, so nothing of one request, credentials
 * included, reaches the next; libcurl keeps its buffers, and the multi
 * handle its connections), the request's header list as nodes of its own
 * (libcurl only reads a list), and the response body buffer.  The body is
 * parsed in the done callback, before the handle goes back to the pool.
 * The pool grows to the most requests ever in flight at once
 * (max_in_flight) and is freed at exit.
 */
#define IDEMPOTENCY_HEADER_CAP 256
typedef struct PooledRequest
{
	CURL	   *easy;
	struct PooledRequest *next_free;
	OutboxMessage *m;
	size_t		form_len;
	size_t		form_pos;
	struct curl_slist headers[4];
	char		idempotency[IDEMPOTENCY_HEADER_CAP];
	char	   *body;			/* small_body, or RESPONSE_BODY_CAP bytes malloc'd */
	size_t		body_cap;
	char		small_body[SMALL_BODY_CAP];
} PooledRequest;

static PooledRequest *free_requests = NULL;
static List *all_requests = NIL;

/*
 * One TCP segment per request (issue 14).  libcurl writes a POST's request
 * line and headers with one send() and, the body being handed out by a read
 * callback (see the top of this file: that is what keeps libcurl from ever
 * resending a body), the body with a second: two segments, each delivered
 * to the server and waking it (on loopback, in the dispatcher's own
 * send(): 16 % of its CPU went to the two, bench/drain.sh with perf).  So just before libcurl writes a request
 * (CURLOPT_PREREQFUNCTION) its socket is corked (TCP_CORK: the kernel holds
 * what is written until uncorked, 200 ms at most), and once libcurl has
 * done what it can (drive_ready(), after each curl_multi_socket_action())
 * every socket corked since is uncorked, which sends the headers and the
 * body together.  What libcurl sends and when it gives up are unchanged; a
 * socket closed meanwhile, or a descriptor already reused by another one,
 * only makes the uncork fail or do nothing.
 */
#define CORKED_MAX 64
static int	corked[CORKED_MAX];
static int	ncorked = 0;

static void
uncork_all(void)
{
	int			off = 0;
	int			i;

	for (i = 0; i < ncorked; i++)
		(void) setsockopt(corked[i], IPPROTO_TCP, TCP_CORK, &off, sizeof(off));
	ncorked = 0;
}

/*
 * The socket of each local port, noted when libcurl first waits on a
 * socket (on_socket()): libcurl tells the callback below the connection's
 * local port, not its socket.  port_noted says for which sockets (by
 * number, below PORT_MAP_SIZE) it is noted already; on_sockopt() clears it
 * when libcurl opens a socket, whose number may be a closed one's.
 */
#define PORT_MAP_SIZE 65536
static int *port_socket = NULL;
static bool *port_noted = NULL;

/* libcurl opened socket s: its number may have been another socket's */
static int
on_sockopt(void *clientp, curl_socket_t s, curlsocktype purpose)
{
	if (port_noted != NULL && s >= 0 && s < PORT_MAP_SIZE)
		port_noted[s] = false;
	return CURL_SOCKOPT_OK;
}

/* A socket new to the epoll set: note its local port for on_prereq(). */
static void
note_port(curl_socket_t s)
{
	struct sockaddr_storage local;
	socklen_t	len = sizeof(local);
	int			port = -1;

	if (port_socket == NULL || s < 0 || s >= PORT_MAP_SIZE || port_noted[s] ||
		getsockname(s, (struct sockaddr *) &local, &len) != 0)
		return;
	port_noted[s] = true;
	if (local.ss_family == AF_INET)
		port = ntohs(((struct sockaddr_in *) &local)->sin_port);
	else if (local.ss_family == AF_INET6)
		port = ntohs(((struct sockaddr_in6 *) &local)->sin6_port);
	if (port > 0 && port < PORT_MAP_SIZE)
		port_socket[port] = s;
}

static int
on_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
	int			s;
	int			on = 1;

	if (port_socket == NULL || local_port <= 0 || local_port >= PORT_MAP_SIZE)
		return CURL_PREREQFUNC_OK;
	s = port_socket[local_port];
	/* full: those corked so far go now, this one joins the next round */
	if (ncorked == CORKED_MAX)
		uncork_all();
	if (s >= 0 && setsockopt(s, IPPROTO_TCP, TCP_CORK, &on, sizeof(on)) == 0)
		corked[ncorked++] = s;
	return CURL_PREREQFUNC_OK;
}

/* libcurl reads header lists and never writes them: constant text is safe */
static char accept_header[] = "Accept: application/json";
static char form_header[] = "Content-Type: application/x-www-form-urlencoded";
static char no_expect_header[] = "Expect:";

/*
 * libcurl's socket callback: socket s is now waited on for what (or no
 * longer).  Keeps the epoll set equal to what libcurl waits on.  Never
 * throws; a failure is kept in socket_errno and reported by the poll (the
 * transfers on that socket then end at their timeouts).  Level-triggered:
 * a socket libcurl did not drain stays ready for the next turn.
 */
static int
on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;
	static char in_set;			/* socketp of a socket in the set: its address */

	if (what == CURL_POLL_REMOVE)
	{
		/* an fd already closed has left the set by itself */
		(void) epoll_ctl(epfd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		ev.events |= EPOLLIN;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		ev.events |= EPOLLOUT;

	/*
	 * libcurl keeps socketp for us until it removes the socket: set, it
	 * says the socket is in the set already (one system call per change,
	 * not a failed MOD before each ADD).  EEXIST or ENOENT (a number
	 * reused behind our back) fall back to the other operation.
	 */
	if (socketp == &in_set)
	{
		if (epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev) != 0 &&
			(errno != ENOENT || epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev) != 0))
			socket_errno = errno;
	}
	else if (epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev) != 0 &&
			 (errno != EEXIST || epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev) != 0))
		socket_errno = errno;
	else
	{
		note_port(s);
		curl_multi_assign(multi, s, &in_set);
	}
	return 0;
}

void
outbox_http_init(void)
{
	curl_version_info_data *v;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
	multi = curl_multi_init();
	if (multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) Max(outbox_max_in_flight, 8));
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not create an epoll set for the dispatcher's connections: %m")));
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	port_socket = malloc(sizeof(int) * PORT_MAP_SIZE);
	port_noted = calloc(PORT_MAP_SIZE, sizeof(bool));
	if (port_socket == NULL || port_noted == NULL)
	{
		/* no corking: requests go as two segments, as before */
		free(port_socket);
		free(port_noted);
		port_socket = NULL;
		port_noted = NULL;
	}
	else
		memset(port_socket, 0xff, sizeof(int) * PORT_MAP_SIZE);
	wait_set = outbox_create_wait_event_set(3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, epfd, NULL, NULL);
	v = curl_version_info(CURLVERSION_NOW);
	snprintf(user_agent, sizeof(user_agent), "twilio_outbox/%s (PostgreSQL %s) libcurl/%s",
			 OUTBOX_VERSION, PG_MAJORVERSION, v->version);
}

/* IPv4 127.0.0.0/8 in dotted decimal (libcurl normalizes other forms), localhost, [::1]. */
static bool
is_loopback(const char *host)
{
	int			octets = 0;
	const char *p = host;

	if (pg_strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
		return true;
	if (strncmp(host, "127.", 4) != 0)
		return false;
	while (*p)
	{
		int			v = 0;
		int			digits = 0;

		while (*p >= '0' && *p <= '9' && digits < 4)
			v = v * 10 + (*p++ - '0'), digits++;
		if (digits == 0 || digits > 3 || v > 255)
			return false;
		octets++;
		if (*p == '.' && octets < 4)
			p++;
		else if (*p != '\0')
			return false;
	}
	return octets == 4;
}

/* One pattern of allowed_hosts: equal labels, '*' standing for exactly one label. */
static bool
host_matches(const char *pattern, const char *host)
{
	const char *p = pattern;
	const char *h = host;

	for (;;)
	{
		size_t		plen = strcspn(p, ".");
		size_t		hlen = strcspn(h, ".");

		if (hlen == 0)
			return false;
		if (plen == 1 && p[0] == '*')
		{
			size_t		i;

			for (i = 0; i < hlen; i++)
				if (!(isalnum((unsigned char) h[i]) || h[i] == '-'))
					return false;
		}
		else if (plen != hlen || pg_strncasecmp(p, h, hlen) != 0)
			return false;
		p += plen;
		h += hlen;
		if (*p == '\0' || *h == '\0')
			return *p == '\0' && *h == '\0';
		p++, h++;
	}
}

static bool
host_allowed(const char *host)
{
	char	   *list = pstrdup(outbox_allowed_hosts ? outbox_allowed_hosts : "");
	List	   *items;
	ListCell   *lc;

	if (!SplitGUCList(list, ',', &items))
		return false;
	foreach(lc, items)
	{
		if (host_matches(lfirst(lc), host))
			return true;
	}
	return false;
}

/*
 * Whether a request with credentials may go to url.  NULL when it may, else
 * why not (allocated in CurrentMemoryContext).  With parsed non-NULL and the
 * URL allowed, *parsed is libcurl's parse of it (a CURLU *, for the caller
 * to hand to libcurl and free): the decision is made on what libcurl will
 * connect to, never on the string.
 */
const char *
outbox_url_refusal(const char *url, void **parsed)
{
	CURLU	   *u = curl_url();
	CURLUcode	rc;
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *part = NULL;
	const char *why = NULL;
	bool		http;

	if (u == NULL)
		return "out of memory parsing its URL";
	rc = curl_url_set(u, CURLUPART_URL, url, 0);
	if (rc != CURLUE_OK)
	{
		why = psprintf("its base_url is not a URL libcurl accepts (%s)", curl_url_strerror(rc));
		goto done;
	}
	if (curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_OPTIONS, &part, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_ZONEID, &part, 0) == CURLUE_OK)
	{
		why = "its base_url has user information (or a zone id) before or in its host, which is never allowed";
		goto done;
	}
	if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
	{
		why = "its base_url has no scheme or no host";
		goto done;
	}
	http = pg_strcasecmp(scheme, "http") == 0;
	if (http && !outbox_allow_insecure_http)
		why = "its base_url is plain http and twilio_outbox.allow_insecure_http is off";
	else if (http && !is_loopback(host))
		why = psprintf("plain http is allowed to loopback addresses only, not to host \"%.255s\"", host);
	else if (!http && pg_strcasecmp(scheme, "https") != 0)
		why = psprintf("its base_url scheme \"%.32s\" is neither https nor http", scheme);
	else if (!http && !(outbox_allow_insecure_http && is_loopback(host)) && !host_allowed(host))
		why = psprintf("host \"%.255s\" is not in twilio_outbox.allowed_hosts, so no credentials may go there", host);

done:
	curl_free(part);
	curl_free(scheme);
	curl_free(host);
	if (why == NULL && parsed != NULL)
		*parsed = u;
	else
		curl_url_cleanup(u);
	return why;
}

static size_t
on_read(char *buffer, size_t size, size_t nitems, void *userdata)
{
	PooledRequest *t = userdata;
	size_t		n = Min(size * nitems, t->form_len - t->form_pos);

	memcpy(buffer, t->m->form + t->form_pos, n);
	t->form_pos += n;
	t->m->resp.form_handed_out = t->form_pos >= t->form_len;
	return n;
}

static size_t
on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	PooledRequest *t = userdata;
	OutboxResponse *r = &t->m->resp;
	size_t		n = size * nmemb;
	size_t		room;
	size_t		copy;

	/*
	 * The pooled buffer is too small: grow it to the cap, with malloc (a
	 * callback never throws; out of memory, the body is cut where it is,
	 * as at the cap).  Kept by the pooled request, freed at exit.
	 */
	if (r->body == t->body && t->body_cap < RESPONSE_BODY_CAP &&
		r->body_len + n >= r->body_cap)
	{
		char	   *big = malloc(RESPONSE_BODY_CAP);

		if (big != NULL)
		{
			memcpy(big, r->body, r->body_len + 1);
			t->body = r->body = big;
			t->body_cap = r->body_cap = RESPONSE_BODY_CAP;
		}
	}
	room = r->body_cap - 1 - r->body_len;
	copy = Min(n, room);

	if (copy < n)
		r->body_truncated = true;
	memcpy(r->body + r->body_len, ptr, copy);
	r->body_len += copy;
	r->body[r->body_len] = '\0';
	return n;
}

static size_t
on_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
	outbox_parse_header(userdata, buffer, size * nitems);
	return size * nitems;
}

/*
 * An account's messages URL as checked by outbox_url_refusal() and parsed
 * by libcurl, kept for its sends while what the check depends on stays the
 * same: the URL, twilio_outbox.allowed_hosts and allow_insecure_http,
 * compared at every send, so a reload that changes them is checked at the
 * next send as before.  libcurl only reads a CURLOPT_CURLU handle, so the
 * requests in flight of an account share it; a handle replaced while some
 * may still use it is freed once none is in flight.  A lookup's URL (a SID
 * in it) is still parsed and checked for each request.
 */
typedef struct CheckedUrl
{
	const OutboxAccount *account;	/* accounts are never freed (registry.c) */
	char	   *url;
	char	   *hosts;
	bool		insecure;
	CURLU	   *parsed;			/* NULL: none */
} CheckedUrl;

static List *checked_urls = NIL;
static List *retired_urls = NIL;

static void
retire_url(CheckedUrl *c)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	if (c->parsed != NULL)
		retired_urls = lappend(retired_urls, c->parsed);
	c->parsed = NULL;
	MemoryContextSwitchTo(old);
}

static CURLU *
messages_url(OutboxAccount *a, const char **refusal)
{
	const char *hosts = outbox_allowed_hosts ? outbox_allowed_hosts : "";
	CheckedUrl *c = NULL;
	ListCell   *lc;
	void	   *u = NULL;
	MemoryContext old;

	foreach(lc, checked_urls)
	{
		if (((CheckedUrl *) lfirst(lc))->account == a)
		{
			c = lfirst(lc);
			break;
		}
	}
	if (c != NULL && c->parsed != NULL && c->insecure == outbox_allow_insecure_http &&
		strcmp(c->url, a->messages_url) == 0 && strcmp(c->hosts, hosts) == 0)
		return c->parsed;

	*refusal = outbox_url_refusal(a->messages_url, &u);
	if (c != NULL)
		retire_url(c);
	if (*refusal != NULL)
		return NULL;
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (c == NULL)
	{
		c = palloc0(sizeof(CheckedUrl));
		c->account = a;
		checked_urls = lappend(checked_urls, c);
	}
	else
	{
		pfree(c->url);
		pfree(c->hosts);
	}
	c->url = pstrdup(a->messages_url);
	c->hosts = pstrdup(hosts);
	c->insecure = outbox_allow_insecure_http;
	c->parsed = u;
	MemoryContextSwitchTo(old);
	return u;
}

/* A pooled request (reset when given back); NULL when out of memory. */
static PooledRequest *
take_request(void)
{
	PooledRequest *r = free_requests;

	if (r != NULL)
	{
		free_requests = r->next_free;
		return r;
	}
	r = MemoryContextAllocExtended(TopMemoryContext, sizeof(PooledRequest), MCXT_ALLOC_NO_OOM);
	if (r == NULL)
		return NULL;
	r->easy = curl_easy_init();
	if (r->easy == NULL)
	{
		pfree(r);
		return NULL;
	}
	r->body = r->small_body;
	r->body_cap = SMALL_BODY_CAP;
	all_requests = lappend(all_requests, r);
	return r;
}

/*
 * Reset at once: a handle in the pool holds no option of its last request,
 * neither its credentials nor a pointer into its message, which the batch
 * frees.  After a transfer that failed (failed: its result was not
 * CURLE_OK) the handle itself is replaced by a new one: curl_easy_reset()
 * does not clear all of a transfer's state in every libcurl, and libcurl
 * 8.14 (Debian trixie) kept a failed rewind's ("necessary data rewind was
 * not possible") on the handle, so that every later request on it failed
 * at once, unsent.  Failures are rare: the pool's saving is in the
 * successes.
 */
static void
give_back_request(PooledRequest *r, bool failed)
{
	CURL	   *fresh = failed ? curl_easy_init() : NULL;

	if (fresh != NULL)
	{
		curl_easy_cleanup(r->easy);
		r->easy = fresh;
	}
	else
		curl_easy_reset(r->easy);
	r->m = NULL;
	r->next_free = free_requests;
	free_requests = r;
}

/*
 * Put one message's request in flight: its create (POST with its form and
 * idempotency key), or a lookup's GET or DELETE of request_url, which
 * carries the same credentials under the same checks.  Either takes one of
 * its account's slots while in flight, and a pooled request; a lookup's
 * URL check allocates in the message's batch context.  Throws only when
 * out of memory.  Returns false,
 * with the reason in resp.transport_error and nothing sent, when its URL
 * may not be sent to (the settings changed since its account was checked).
 */
bool
outbox_http_start(OutboxMessage *m)
{
	OutboxAccount *a = m->account;
	MemoryContext cxt = m->batch->cxt;
	PooledRequest *t;
	struct curl_slist *h;
	CURL	   *e;
	void	   *url = NULL;		/* a lookup's own, freed after it */
	CURLU	   *checked;
	const char *refusal = NULL;
	MemoryContext old;
	bool		create = m->kind == OUTBOX_REQUEST_CREATE;
	/* a lookup's URL is its account's messages_url with the SID: the same checks */
	/* a call's create names its Calls.json (fallback.c), beside messages_url */
	const char *target = create && m->request_url == NULL ? a->messages_url : m->request_url;

	/* in the batch's context: nothing of the check outlives the batch */
	old = MemoryContextSwitchTo(cxt);
	if (target == a->messages_url)
		checked = messages_url(a, &refusal);
	else
		refusal = outbox_url_refusal(target, &url);
	MemoryContextSwitchTo(old);
	if (target != a->messages_url)
		checked = url;
	if (refusal != NULL)
	{
		strlcpy(m->resp.transport_error, refusal, sizeof(m->resp.transport_error));
		return false;
	}
	t = take_request();
	if (t == NULL)
	{
		curl_url_cleanup(url);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl request")));
	}
	e = t->easy;

	if (m->kind == OUTBOX_REQUEST_LIST)
	{
		/*
		 * A page of the message list (reconcile.c) is far longer than one
		 * message: a buffer of its own in the batch's context, reused page
		 * after page of the same lookup.
		 */
		if (m->resp.body == NULL || m->resp.body_cap != LIST_BODY_CAP)
		{
			m->resp.body_cap = LIST_BODY_CAP;
			m->resp.body = MemoryContextAlloc(cxt, LIST_BODY_CAP);
		}
	}
	else
	{
		m->resp.body_cap = t->body_cap;
		m->resp.body = t->body;
	}
	m->resp.body_len = 0;
	m->resp.body_truncated = false;
	m->resp.body[0] = '\0';
	m->resp.concurrent_requests = -1;
	m->resp.request_duration = -1;
	t->m = m;
	t->form_len = create ? strlen(m->form) : 0;
	t->form_pos = 0;

	/* the header list: nodes of the pooled request, linked for this request */
	h = &t->headers[0];
	t->headers[0].data = accept_header;
	t->headers[0].next = NULL;
	if (create)
	{
		snprintf(t->idempotency, sizeof(t->idempotency), "%s: %s",
				 outbox_idempotency_header, m->idempotency_key);
		t->headers[1].data = t->idempotency;
		t->headers[2].data = form_header;
		t->headers[3].data = no_expect_header;
		t->headers[0].next = &t->headers[1];
		t->headers[1].next = &t->headers[2];
		t->headers[2].next = &t->headers[3];
		t->headers[3].next = NULL;
	}

	/* the very handle whose host was checked */
	curl_easy_setopt(e, CURLOPT_CURLU, checked);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, outbox_allow_insecure_http ? "http,https" : "https");
	/* plain http (loopback only) never through a proxy, which would see the credentials */
	if (pg_strncasecmp(target, "http:", 5) == 0)
		curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
	if (create)
	{
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) t->form_len);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(e, CURLOPT_READDATA, t);
		curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, UPLOAD_BUFFER_SIZE);
		curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
		curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
	}
	else if (m->kind == OUTBOX_REQUEST_DELETE)
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
	else
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
	curl_easy_setopt(e, CURLOPT_USERAGENT, user_agent);
	curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
	curl_easy_setopt(e, CURLOPT_USERNAME, a->auth_user);
	curl_easy_setopt(e, CURLOPT_PASSWORD, a->auth_secret);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, MAX_CONNECTION_AGE_S);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) outbox_connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) outbox_request_timeout_ms);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, m->resp.transport_error);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
	if (m->kind != OUTBOX_REQUEST_LIST)
		curl_easy_setopt(e, CURLOPT_BUFFERSIZE, RECEIVE_BUFFER_SIZE);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, &m->resp);
	curl_easy_setopt(e, CURLOPT_PRIVATE, m);

	m->easy = e;
	m->headers = t;
	m->url = url;
	m->resp.started_at = GetCurrentTimestamp();
	if (curl_multi_add_handle(multi, e) != CURLM_OK)
	{
		give_back_request(t, false);
		curl_url_cleanup(url);
		m->easy = m->headers = m->url = NULL;
		m->resp.body = NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not start a libcurl request")));
	}
	in_flight++;
	a->in_flight++;
	return true;
}

/* Fill the transport side of the response of a finished transfer and release it. */
static void
finish(OutboxMessage *m, CURLcode rc)
{
	CURL	   *e = m->easy;
	OutboxResponse *r = &m->resp;
	curl_off_t	total_us = 0;
	curl_off_t	pretransfer_us = 0;
	curl_off_t	uploaded = 0;
	curl_off_t	starttransfer_us = 0;
	curl_off_t	form_len = m->form != NULL ? (curl_off_t) strlen(m->form) : 0;
	bool		connected;

	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->http_status);
	curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total_us);
	curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us);
	r->duration_ms = total_us / 1000.0;
	if (rc == CURLE_OK)
		r->transport_error[0] = '\0';
	else if (r->transport_error[0] == '\0')
		strlcpy(r->transport_error, curl_easy_strerror(rc), sizeof(r->transport_error));
	/* libcurl's messages may quote what the peer sent */
	outbox_clean_string(r->transport_error, sizeof(r->transport_error));

	curl_easy_getinfo(e, CURLINFO_SIZE_UPLOAD_T, &uploaded);
	curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &starttransfer_us);

	/*
	 * Whether Twilio may have acted on the request (the ambiguity
	 * classification, README "Ambiguous outcomes"): not when resolving or
	 * connecting failed, nor when the transfer never got to sending; and
	 * for a create, only once its whole body was written.  Its headers
	 * announce a Content-Length, and To, From and Body are all in the
	 * body: a server that saw only part of it cannot have created the
	 * message.  Written is what libcurl counts as uploaded (bytes the
	 * socket took), or every byte handed to libcurl on a transfer whose
	 * answer had begun to arrive.  The read callback alone says little:
	 * it hands a small form over at once, before a byte is written.
	 */
	connected = pretransfer_us > 0 &&
		rc != CURLE_COULDNT_RESOLVE_HOST && rc != CURLE_COULDNT_CONNECT &&
		rc != CURLE_SSL_CONNECT_ERROR && rc != CURLE_PEER_FAILED_VERIFICATION;
	if (m->kind == OUTBOX_REQUEST_CREATE)
		r->request_sent = rc == CURLE_OK ||
			(connected && (uploaded >= form_len ||
						   (r->form_handed_out && starttransfer_us > 0)));
	else
		r->request_sent = rc == CURLE_OK || connected;

	curl_multi_remove_handle(multi, e);
	curl_url_cleanup((CURLU *) m->url);
	m->easy = m->url = NULL;
	in_flight--;
	if (in_flight == 0 && retired_urls != NIL)
	{
		ListCell   *lc;

		foreach(lc, retired_urls)
			curl_url_cleanup(lfirst(lc));
		list_free(retired_urls);
		retired_urls = NIL;
	}
	m->account->in_flight--;
}

/*
 * Hand libcurl the sockets that are ready now (no waiting), then its timers
 * when the earliest is due.  What it costs is proportional to the ready
 * sockets and the due timers, not to the transfers in flight.
 */
static void
drive_ready(void)
{
	struct epoll_event ready[READY_EVENTS_MAX];
	int			n;
	int			i;
	int			running;
	long		timer_ms = -1;

	n = epoll_wait(epfd, ready, READY_EVENTS_MAX, 0);
	for (i = 0; i < n; i++)
	{
		uint32		ev = ready[i].events;
		int			mask = 0;

		/* a hang-up or an error is what the next read or write reports */
		if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
			mask |= CURL_CSELECT_IN;
		if (ev & (EPOLLOUT | EPOLLERR))
			mask |= CURL_CSELECT_OUT;
		/* a socket closed by an earlier action is unknown to libcurl: ignored */
		curl_multi_socket_action(multi, ready[i].data.fd, mask, &running);
	}
	if (curl_multi_timeout(multi, &timer_ms) == CURLM_OK && timer_ms == 0)
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	/* what libcurl wrote since it was corked goes now, headers and body together */
	uncork_all();
}

/*
 * Drive the transfers, waiting at most timeout_ms for network activity, a
 * timer of libcurl's or the latch (which it leaves set, for the caller),
 * and hand each finished one to done().  Returns how many finished.
 */
int
outbox_http_poll(int timeout_ms, OutboxHttpDone done)
{
	int			left;
	int			ndone = 0;
	CURLMsg    *msg;

	if (socket_errno != 0)
	{
		errno = socket_errno;
		socket_errno = 0;
		ereport(WARNING,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("twilio_outbox dispatcher could not watch a connection's socket: %m"),
				 errdetail("The requests on that connection end at their timeouts.")));
	}
	if (timeout_ms > 0)
	{
		long		timer_ms = -1;

		if (curl_multi_timeout(multi, &timer_ms) == CURLM_OK && timer_ms >= 0)
			timeout_ms = Min(timeout_ms, timer_ms);
		if (timeout_ms > 0)
		{
			WaitEvent	ev;

			/* returns at once when a socket is ready or the latch is set */
			(void) WaitEventSetWait(wait_set, timeout_ms, &ev, 1, PG_WAIT_EXTENSION);
		}
	}
	drive_ready();
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		OutboxMessage *m;
		PooledRequest *r;
		CURLcode	result;

		if (msg->msg != CURLMSG_DONE)
			continue;

		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &m);
		r = m->headers;
		result = msg->data.result;
		finish(m, result);
		done(m);

		/*
		 * done() has parsed the body: its buffer and the handle go back.
		 * Unless done() sent the message out again (the next page of a
		 * reconciliation's list): it holds another pooled request now.
		 */
		if (m->headers == r)
		{
			m->headers = NULL;
			m->resp.body = NULL;
			m->resp.body_len = 0;
		}
		give_back_request(r, result != CURLE_OK);
		ndone++;
	}
	return ndone;
}

int
outbox_http_in_flight(void)
{
	return in_flight;
}

/* Release the multi handle and its connections (at exit). */
void
outbox_http_shutdown(void)
{
	ListCell   *lc;

	if (multi != NULL)
	{
		curl_multi_cleanup(multi);
		multi = NULL;
	}
	foreach(lc, all_requests)
	{
		PooledRequest *r = lfirst(lc);

		curl_easy_cleanup(r->easy);
		if (r->body != r->small_body)
			free(r->body);
	}
	free_requests = NULL;
	free(port_socket);
	free(port_noted);
	port_socket = NULL;
	port_noted = NULL;
	if (wait_set != NULL)
	{
		FreeWaitEventSet(wait_set);
		wait_set = NULL;
	}
	if (epfd >= 0)
	{
		close(epfd);
		epfd = -1;
	}
	curl_global_cleanup();
}
