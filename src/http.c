/*-------------------------------------------------------------------------
 *
 * http.c
 *		The HTTP transport: Twilio requests in flight over one libcurl multi
 *		handle, with keep-alive connections shared between them.
 *
 * Runs in the dispatcher only, never inside a transaction.  The request
 * body is handed to libcurl through a read callback with no seek callback,
 * so libcurl can never silently send a request a second time (it would
 * retry a POST on a reused connection that died): such a transfer fails
 * instead, and the attempt is recorded as ambiguous.  Callbacks copy into
 * buffers allocated before the transfer; they never allocate or throw.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <curl/curl.h>

#include "utils/memutils.h"
#include "utils/timestamp.h"

#define RESPONSE_BODY_CAP	16384
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

static size_t
on_read(char *buffer, size_t size, size_t nitems, void *userdata)
{
	Transfer   *t = userdata;
	size_t		n = Min(size * nitems, t->form_len - t->form_pos);

	memcpy(buffer, t->m->form + t->form_pos, n);
	t->form_pos += n;
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
 * Put one message's request in flight.  Allocates its buffers in the
 * message's batch context; throws only when out of memory.
 */
void
outbox_http_start(OutboxMessage *m)
{
	OutboxAccount *a = m->account;
	MemoryContext cxt = m->batch->cxt;
	Transfer   *t = MemoryContextAllocZero(cxt, sizeof(Transfer));
	struct curl_slist *h = NULL;
	char		header[256];
	CURL	   *e;

	m->resp.body_cap = RESPONSE_BODY_CAP;
	m->resp.body = MemoryContextAlloc(cxt, RESPONSE_BODY_CAP);
	m->resp.body[0] = '\0';
	m->resp.concurrent_requests = -1;
	m->resp.request_duration = -1;
	t->m = m;
	t->form_len = strlen(m->form);

	e = curl_easy_init();
	snprintf(header, sizeof(header), "%s: %s", outbox_idempotency_header, m->idempotency_key);
	h = curl_slist_append(h, header);
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
	h = curl_slist_append(h, "Expect:");
	if (e == NULL || h == NULL)
	{
		if (e)
			curl_easy_cleanup(e);
		curl_slist_free_all(h);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl request")));
	}

	curl_easy_setopt(e, CURLOPT_URL, a->messages_url);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, outbox_allow_insecure_http ? "http,https" : "https");
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) t->form_len);
	curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
	curl_easy_setopt(e, CURLOPT_READDATA, t);
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
	m->resp.started_at = GetCurrentTimestamp();
	if (curl_multi_add_handle(multi, e) != CURLM_OK)
	{
		curl_easy_cleanup(e);
		curl_slist_free_all(h);
		m->easy = m->headers = NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not start a libcurl request")));
	}
	in_flight++;
	a->in_flight++;
}

/* Fill the transport side of the response of a finished transfer and release it. */
static void
finish(OutboxMessage *m, CURLcode rc)
{
	CURL	   *e = m->easy;
	OutboxResponse *r = &m->resp;
	curl_off_t	total_us = 0;
	curl_off_t	pretransfer_us = 0;

	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->http_status);
	curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total_us);
	curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us);
	r->duration_ms = total_us / 1000.0;
	if (rc == CURLE_OK)
		r->transport_error[0] = '\0';
	else if (r->transport_error[0] == '\0')
		strlcpy(r->transport_error, curl_easy_strerror(rc), sizeof(r->transport_error));

	/*
	 * Whether Twilio may have seen the request: not when resolving or
	 * connecting failed, nor when the transfer never got to sending.
	 */
	r->request_sent = rc == CURLE_OK ||
		(pretransfer_us > 0 &&
		 rc != CURLE_COULDNT_RESOLVE_HOST && rc != CURLE_COULDNT_CONNECT &&
		 rc != CURLE_SSL_CONNECT_ERROR && rc != CURLE_PEER_FAILED_VERIFICATION);

	curl_multi_remove_handle(multi, e);
	curl_easy_cleanup(e);
	curl_slist_free_all((struct curl_slist *) m->headers);
	m->easy = m->headers = NULL;
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
