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
 * checked is the host connected to.  Redirects are never followed; only
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
#include <curl/curl.h>

#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#define RESPONSE_BODY_CAP	16384
/* a page of Messages.json: 50 messages of up to 1,600 characters, each escaped */
#define LIST_BODY_CAP		(1024 * 1024)
/* Below the idle timeout of Twilio's load balancers, so a reused connection is alive. */
#define MAX_CONNECTION_AGE_S 30L

static CURLM *multi = NULL;
static int	in_flight = 0;
static char user_agent[128];

/* Per-transfer state that libcurl's callbacks see. */
typedef struct Transfer
{
	OutboxMessage *m;
	size_t		form_len;
	size_t		form_pos;
} Transfer;

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
	Transfer   *t = userdata;
	size_t		n = Min(size * nitems, t->form_len - t->form_pos);

	memcpy(buffer, t->m->form + t->form_pos, n);
	t->form_pos += n;
	t->m->resp.form_handed_out = t->form_pos >= t->form_len;
	return n;
}

static size_t
on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	OutboxResponse *r = userdata;
	size_t		n = size * nmemb;
	size_t		room = r->body_cap - 1 - r->body_len;
	size_t		copy = Min(n, room);

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
 * Put one message's request in flight: its create (POST with its form and
 * idempotency key), or a lookup's GET or DELETE of request_url, which
 * carries the same credentials under the same checks.  Either takes one of
 * its account's slots while in flight.  Allocates its buffers in the
 * message's batch context; throws only when out of memory.  Returns false,
 * with the reason in resp.transport_error and nothing sent, when its URL
 * may not be sent to (the settings changed since its account was checked).
 */
bool
outbox_http_start(OutboxMessage *m)
{
	OutboxAccount *a = m->account;
	MemoryContext cxt = m->batch->cxt;
	Transfer   *t;
	struct curl_slist *h = NULL;
	char		header[256];
	CURL	   *e;
	void	   *url = NULL;
	const char *refusal;
	MemoryContext old;
	bool		create = m->kind == OUTBOX_REQUEST_CREATE;
	size_t		cap;
	/* a lookup's URL is its account's messages_url with the SID: the same checks */
	const char *target = create ? a->messages_url : m->request_url;

	/* in the batch's context: nothing of the check outlives the batch */
	old = MemoryContextSwitchTo(cxt);
	refusal = outbox_url_refusal(target, &url);
	MemoryContextSwitchTo(old);
	if (refusal != NULL)
	{
		strlcpy(m->resp.transport_error, refusal, sizeof(m->resp.transport_error));
		return false;
	}
	t = MemoryContextAllocZero(cxt, sizeof(Transfer));

	/* a page of the message list is far longer than one message; its buffer is reused page after page */
	cap = m->kind == OUTBOX_REQUEST_LIST ? LIST_BODY_CAP : RESPONSE_BODY_CAP;
	if (m->resp.body == NULL || m->resp.body_cap != cap)
	{
		m->resp.body_cap = cap;
		m->resp.body = MemoryContextAlloc(cxt, cap);
	}
	m->resp.body_len = 0;
	m->resp.body_truncated = false;
	m->resp.body[0] = '\0';
	m->resp.concurrent_requests = -1;
	m->resp.request_duration = -1;
	t->m = m;
	t->form_len = create ? strlen(m->form) : 0;

	e = curl_easy_init();
	h = curl_slist_append(h, "Accept: application/json");
	if (create)
	{
		snprintf(header, sizeof(header), "%s: %s", outbox_idempotency_header, m->idempotency_key);
		h = curl_slist_append(h, header);
		h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
		h = curl_slist_append(h, "Expect:");
	}
	if (e == NULL || h == NULL)
	{
		if (e)
			curl_easy_cleanup(e);
		curl_slist_free_all(h);
		curl_url_cleanup(url);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl request")));
	}

	/* the very handle whose host was checked */
	curl_easy_setopt(e, CURLOPT_CURLU, url);
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
	}
	else if (m->kind == OUTBOX_REQUEST_DELETE)
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
	else
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
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
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &m->resp);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, &m->resp);
	curl_easy_setopt(e, CURLOPT_PRIVATE, m);

	m->easy = e;
	m->headers = h;
	m->url = url;
	m->resp.started_at = GetCurrentTimestamp();
	if (curl_multi_add_handle(multi, e) != CURLM_OK)
	{
		curl_easy_cleanup(e);
		curl_slist_free_all(h);
		curl_url_cleanup(url);
		m->easy = m->headers = m->url = NULL;
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
	curl_easy_cleanup(e);
	curl_slist_free_all((struct curl_slist *) m->headers);
	curl_url_cleanup((CURLU *) m->url);
	m->easy = m->headers = m->url = NULL;
	in_flight--;
	m->account->in_flight--;
}

/*
 * Drive the transfers, waiting at most timeout_ms for network activity,
 * and hand each finished one to done().  Returns how many finished.
 */
int
outbox_http_poll(int timeout_ms, OutboxHttpDone done)
{
	int			running;
	int			left;
	int			ndone = 0;
	CURLMsg    *msg;

	curl_multi_perform(multi, &running);
	if (timeout_ms > 0 && running == in_flight)
	{
		curl_multi_poll(multi, NULL, 0, timeout_ms, NULL);
		curl_multi_perform(multi, &running);
	}
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		OutboxMessage *m;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &m);
		finish(m, msg->data.result);
		done(m);
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
	if (multi != NULL)
	{
		curl_multi_cleanup(multi);
		multi = NULL;
	}
	curl_global_cleanup();
}
