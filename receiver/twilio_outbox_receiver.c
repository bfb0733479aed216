/*-------------------------------------------------------------------------
 *
 * twilio_outbox_receiver.c
 *		The thin receiver: a small HTTP server that hands Twilio's webhooks
 *		to the extension's SQL entry points and answers at once.
 *
 * It sits behind the operator's TLS proxy (nginx, say) and does as little
 * as it can: for each POST it rebuilds the public URL Twilio called (the
 * configured public base URL plus the request's path and query string; the
 * Host header is not trusted unless --trust-host says so), takes the raw
 * form body and the X-Twilio-Signature header, and calls
 *
 *		<prefix>/status    twilio_outbox.receive_status(url, body, signature)
 *		<prefix>/inbound   twilio_outbox.receive_inbound(url, body, signature)
 *		<prefix>/debugger  twilio_outbox.receive_debugger(url, body, signature)
 *
 * over one of a small pool of libpq connections, with PQexecParams (the
 * request's bytes are never pasted into SQL).  Each call is one short
 * transaction of the caller's; the functions validate the signature,
 * deduplicate and apply, so this program holds no state of its own and
 * needs no secret but its database login.  Connections switch to the role
 * twilio_outbox_webhook (SET ROLE), which may call those three functions
 * and nothing else.
 *
 * Answers: 200 with what the function returned (TwiML as text/xml for
 * inbound messages); refusals by SQLSTATE, 28000 (bad signature) and 42704
 * (unknown account) 403, class 22 (malformed) 400; the database out of
 * reach, a lost connection that could not be replaced, a statement timeout
 * or no free connection in time 503, so that Twilio tries again.  Only POST
 * (405), bodies up to --max-body bytes (413).
 *
 * One line per request on standard error: time, client, method, path
 * (never the query string), HTTP status, what happened, milliseconds.
 * Never the body, the signature or the connection string.
 *
 * HTTP is libmicrohttpd's, with its internal thread pool: a handler blocks
 * on its database call, so there are as many threads as connections.
 * SIGTERM or SIGINT stops accepting, lets the requests in progress finish,
 * closes the connections and exits 0.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/*
 * The calls used here work on libmicrohttpd 0.9.75 (Debian bookworm) and
 * 1.0 (trixie, forky); 1.0 marks some deprecated in favour of ones 0.9.75
 * lacks.
 */
#define MHD_NO_DEPRECATION 1
#include <microhttpd.h>

#define RECEIVER_VERSION "0.2"

/* Longest path or client address a log line shows. */
#define LOG_FIELD_MAX 200

/* A connection that could not be made is tried again after this long. */
#define RECONNECT_DELAY_MS 1000

/* Settings, from the command line or the environment. */
typedef struct ReceiverConfig
{
	const char *listen;			/* address to listen on */
	int			port;			/* 0: any free port (see port_file) */
	const char *port_file;		/* where the bound port is written */
	char	   *public_url;		/* scheme://host[:port][/prefix], no '/' at the end */
	const char *prefix;			/* the path part of public_url ("" for none) */
	bool		trust_host;		/* build the URL from X-Forwarded-Proto and Host */
	const char *conninfo;		/* libpq connection string */
	const char *role;			/* SET ROLE to this ("" for none) */
	int			pool_size;		/* database connections, and HTTP threads */
	size_t		max_body;		/* largest body accepted, bytes */
	int			statement_timeout_ms;
	int			acquire_timeout_ms; /* longest wait for a free connection */
	int			http_timeout_s; /* idle HTTP connections are closed after */
} ReceiverConfig;

static ReceiverConfig config = {
	.listen = "127.0.0.1",
	.port = 8091,
	.role = "twilio_outbox_webhook",
	.conninfo = "",
	.pool_size = 4,
	.max_body = 64 * 1024,
	.statement_timeout_ms = 5000,
	.acquire_timeout_ms = 2000,
	.http_timeout_s = 15,
};

/* Where a path goes. */
typedef struct Route
{
	const char *path;			/* after the public URL's prefix */
	const char *sql;
	const char *content_type;
	bool		twiml;			/* the result is TwiML: logged as "twiml" */
} Route;

static const Route routes[] = {
	{"/status", "SELECT twilio_outbox.receive_status($1, $2, $3)", "text/plain; charset=utf-8", false},
	{"/inbound", "SELECT twilio_outbox.receive_inbound($1, $2, $3)", "text/xml; charset=utf-8", true},
	{"/debugger", "SELECT twilio_outbox.receive_debugger($1, $2, $3)", "text/plain; charset=utf-8", false},
};

/* One database connection of the pool. */
typedef struct PoolSlot
{
	PGconn	   *conn;			/* NULL until connected, or after it broke */
	bool		busy;
	struct timespec retry_at;	/* no new connection attempt before this */
} PoolSlot;

static PoolSlot *pool;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_freed;

/* One HTTP request, from its request line to its end. */
typedef struct Request
{
	char	   *uri;			/* the request target as received, query included */
	const Route *route;
	const char *rest;			/* the route's path (points into a Route) */
	char	   *body;
	size_t		len;
	size_t		cap;
	bool		started;
	bool		too_large;
	bool		answered;		/* a response is queued: ignore the rest */
	struct timespec t0;
} Request;

/* What a database call gave. */
typedef struct CallResult
{
	int			http_status;
	char	   *value;			/* the function's result (malloc'd), on 200 */
	char		outcome[32];	/* for the log: verdict, sqlstate=..., or why */
} CallResult;


/* ---------- small helpers ---------- */

static double
ms_between(const struct timespec *a, const struct timespec *b)
{
	return (double) (b->tv_sec - a->tv_sec) * 1000.0 + (double) (b->tv_nsec - a->tv_nsec) / 1e6;
}

static void
add_ms(struct timespec *t, int ms)
{
	t->tv_sec += ms / 1000;
	t->tv_nsec += (long) (ms % 1000) * 1000000;
	if (t->tv_nsec >= 1000000000)
	{
		t->tv_sec++;
		t->tv_nsec -= 1000000000;
	}
}

static void log_line(const char *fmt,...) __attribute__((format(printf, 1, 2)));

/*
 * A log line on standard error, stamped with the UTC time.  One fprintf
 * per line (stdio locks the stream), so lines from threads never mix.
 */
static void
log_line(const char *fmt,...)
{
	char		msg[1024];
	char		stamp[32];
	struct timespec now;
	struct tm	tm;
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ldZ twilio_outbox_receiver: %s\n", stamp, now.tv_nsec / 1000000, msg);
}

/*
 * Copy text from the network or from libpq into a log field: printable
 * ASCII only (no line breaks to forge log lines with; libpq's become
 * spaces), at most n bytes.
 */
static void
clean_field(char *dst, size_t size, const char *src, size_t n)
{
	size_t		i;

	for (i = 0; i + 1 < size && i < n && src[i] != '\0'; i++)
	{
		if (src[i] == '\n' || src[i] == '\t')
			dst[i] = ' ';
		else
			dst[i] = (src[i] > 0x20 && src[i] < 0x7f) ? src[i] : (src[i] == ' ' ? ' ' : '?');
	}
	while (i > 0 && dst[i - 1] == ' ')
		i--;
	dst[i] = '\0';
}

/* The whole string or nothing: a number in [min, max]. */
static bool
parse_int(const char *s, long min, long max, long *out)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}


/* ---------- the connection pool ---------- */

/*
 * Connect a slot: the configured connection string, which may not
 * override the client encoding (bodies are UTF-8) and may override the
 * connect timeout; then the session's statement timeout and role, both as
 * parameters.  Returns false, with the reason logged, on any failure; the
 * caller answers 503 and the next attempt waits RECONNECT_DELAY_MS.
 * *fatal is set when the server refused the session setup itself (no
 * such role, not a member), which no retry will mend.
 */
static bool
slot_connect(PoolSlot *slot, bool *fatal)
{
	const char *keywords[] = {"connect_timeout", "fallback_application_name", "dbname",
	"client_encoding", NULL};
	const char *values[] = {"5", "twilio_outbox_receiver", config.conninfo, "UTF8", NULL};
	char		timeout[32];
	const char *params[2];
	char		why[300];
	PGresult   *res;
	const char *sqlstate;

	*fatal = false;
	slot->conn = PQconnectdbParams(keywords, values, 1);
	if (slot->conn == NULL || PQstatus(slot->conn) != CONNECTION_OK)
	{
		const char *msg = slot->conn ? PQerrorMessage(slot->conn) : "out of memory";

		clean_field(why, sizeof(why), msg, strlen(msg));
		log_line("could not connect to the database: %s", why);
		goto fail;
	}
	snprintf(timeout, sizeof(timeout), "%d", config.statement_timeout_ms);
	params[0] = timeout;
	params[1] = config.role;
	res = PQexecParams(slot->conn,
					   config.role[0] != '\0'
					   ? "SELECT pg_catalog.set_config('statement_timeout', $1, false), pg_catalog.set_config('role', $2, false)"
					   : "SELECT pg_catalog.set_config('statement_timeout', $1, false)",
					   config.role[0] != '\0' ? 2 : 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		const char *msg = PQresultErrorMessage(res);

		sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		clean_field(why, sizeof(why), msg, strlen(msg));
		log_line("could not set up the database session (role \"%s\"): %s", config.role, why);
		*fatal = sqlstate != NULL && (strncmp(sqlstate, "42", 2) == 0 || strncmp(sqlstate, "28", 2) == 0);
		PQclear(res);
		goto fail;
	}
	PQclear(res);
	return true;

fail:
	PQfinish(slot->conn);
	slot->conn = NULL;
	clock_gettime(CLOCK_MONOTONIC, &slot->retry_at);
	add_ms(&slot->retry_at, RECONNECT_DELAY_MS);
	return false;
}

/*
 * A free slot, waiting up to acquire_timeout_ms for one; NULL when none
 * came free in time.
 */
static PoolSlot *
pool_acquire(void)
{
	struct timespec deadline;
	PoolSlot   *found = NULL;
	int			i;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	add_ms(&deadline, config.acquire_timeout_ms);
	pthread_mutex_lock(&pool_lock);
	for (;;)
	{
		for (i = 0; i < config.pool_size; i++)
		{
			if (!pool[i].busy)
			{
				found = &pool[i];
				found->busy = true;
				break;
			}
		}
		if (found != NULL ||
			pthread_cond_timedwait(&pool_freed, &pool_lock, &deadline) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&pool_lock);
	return found;
}

static void
pool_release(PoolSlot *slot)
{
	pthread_mutex_lock(&pool_lock);
	slot->busy = false;
	pthread_cond_signal(&pool_freed);
	pthread_mutex_unlock(&pool_lock);
}

/* A slot's connection is usable, connecting it when it is not. */
static bool
slot_ready(PoolSlot *slot)
{
	struct timespec now;
	bool		fatal;

	if (slot->conn != NULL)
		return true;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (ms_between(&now, &slot->retry_at) > 0)
		return false;
	return slot_connect(slot, &fatal);
}

/*
 * The HTTP answer to a refusal, by SQLSTATE.  The SQL functions refuse
 * with 28000 (signature), 42704 (account), 55000 (no auth token to check
 * with) and class 22 (malformed request); everything else is ours or the
 * server's: 503 where trying again later may work, else 500.
 */
static int
status_for_sqlstate(const char *sqlstate)
{
	if (sqlstate == NULL)
		return 503;
	if (strcmp(sqlstate, "28000") == 0 || strcmp(sqlstate, "42704") == 0)
		return 403;
	if (strncmp(sqlstate, "22", 2) == 0)
		return 400;
	if (strncmp(sqlstate, "08", 2) == 0 ||	/* connection exception */
		strncmp(sqlstate, "53", 2) == 0 ||	/* insufficient resources */
		strncmp(sqlstate, "57", 2) == 0 ||	/* shutdown, statement timeout */
		strncmp(sqlstate, "40", 2) == 0)	/* serialization failure, deadlock */
		return 503;
	return 500;
}

/*
 * Call the route's function with (url, body, signature).  A connection
 * found broken is replaced and the call made once more: each function is
 * idempotent (a second copy of a callback is a 'duplicate'), so a call
 * whose commit was lost with the connection may safely run again.
 */
static void
call_function(const Route *route, const char *url, const char *body,
			  const char *signature, CallResult *out)
{
	const char *params[3];
	PoolSlot   *slot;
	int			attempt;

	params[0] = url;
	params[1] = body;
	params[2] = signature;
	out->value = NULL;
	slot = pool_acquire();
	if (slot == NULL)
	{
		out->http_status = 503;
		snprintf(out->outcome, sizeof(out->outcome), "no_free_connection");
		return;
	}
	out->http_status = 503;
	snprintf(out->outcome, sizeof(out->outcome), "database_unavailable");
	for (attempt = 0; attempt < 2; attempt++)
	{
		PGresult   *res;
		const char *sqlstate;

		if (!slot_ready(slot))
			break;
		res = PQexecParams(slot->conn, route->sql, 3, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		{
			const char *v = PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0);

			out->value = strdup(v);
			out->http_status = out->value ? 200 : 500;
			clean_field(out->outcome, sizeof(out->outcome), v, 20);
			if (route->twiml)	/* say so, not the XML */
				snprintf(out->outcome, sizeof(out->outcome), "twiml");
			PQclear(res);
			break;
		}
		if (PQstatus(slot->conn) == CONNECTION_BAD)
		{
			PQclear(res);
			log_line("lost the database connection; connecting again");
			PQfinish(slot->conn);
			slot->conn = NULL;
			continue;
		}
		sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		out->http_status = status_for_sqlstate(sqlstate);
		snprintf(out->outcome, sizeof(out->outcome), "sqlstate=%.5s", sqlstate ? sqlstate : "none");
		PQclear(res);
		break;
	}
	pool_release(slot);
}


/* ---------- HTTP ---------- */

/*
 * libmicrohttpd's first look at a request, with its target as received
 * (query string included, nothing decoded yet): the request's state
 * starts here and ends in request_done().
 */
static void *
request_begin(void *cls, const char *uri, struct MHD_Connection *conn)
{
	Request    *req = calloc(1, sizeof(Request));

	if (req == NULL)
		return NULL;
	req->uri = strdup(uri);
	if (req->uri == NULL)
	{
		free(req);
		return NULL;
	}
	clock_gettime(CLOCK_MONOTONIC, &req->t0);
	return req;
}

static void
request_done(void *cls, struct MHD_Connection *conn, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	Request    *req = *req_cls;

	if (req == NULL)
		return;
	free(req->uri);
	free(req->body);
	free(req);
	*req_cls = NULL;
}

/* The client's address, for the log. */
static void
client_of(struct MHD_Connection *conn, char *buf, size_t size)
{
	const union MHD_ConnectionInfo *info;

	snprintf(buf, size, "-");
	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (info == NULL || info->client_addr == NULL)
		return;
	if (getnameinfo(info->client_addr,
					info->client_addr->sa_family == AF_INET6
					? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in),
					buf, size, NULL, 0, NI_NUMERICHOST) != 0)
		snprintf(buf, size, "-");
}

/* Answer, and log the request's one line. */
static enum MHD_Result
reply(struct MHD_Connection *conn, Request *req, const char *method, int status,
	  const char *content_type, const char *body, const char *outcome)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	struct timespec now;
	char		path[LOG_FIELD_MAX + 1];
	char		meth[16];
	char		client[64];

	resp = MHD_create_response_from_buffer(strlen(body), (void *) body, MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	if (status == 405)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "POST");
	ret = MHD_queue_response(conn, (unsigned int) status, resp);
	MHD_destroy_response(resp);
	req->answered = true;

	clock_gettime(CLOCK_MONOTONIC, &now);
	clean_field(path, sizeof(path), req->uri, strcspn(req->uri, "?"));
	clean_field(meth, sizeof(meth), method, strlen(method));
	client_of(conn, client, sizeof(client));
	log_line("%s %s %s %d %s %.1fms", client, meth, path, status, outcome,
			 ms_between(&req->t0, &now));
	return ret;
}

/*
 * The route of a request target: its path is the public URL's prefix
 * followed by a route's path (a proxy that strips the prefix works as
 * well: then the path is the route's alone).  With --trust-host there is
 * no configured prefix: the path's last segment decides.  NULL for
 * anything else.
 */
static const Route *
find_route(const char *uri, const char **rest)
{
	size_t		pathlen = strcspn(uri, "?#");
	size_t		plen = strlen(config.prefix);
	const char *p = uri;
	size_t		i;

	if (config.trust_host)
	{
		for (i = pathlen; i > 0 && uri[i - 1] != '/'; i--)
			;
		if (i > 0)
		{
			p = uri + i - 1;
			pathlen -= i - 1;
		}
	}
	else if (plen > 0 && pathlen > plen && strncmp(uri, config.prefix, plen) == 0 && uri[plen] == '/')
	{
		p += plen;
		pathlen -= plen;
	}
	for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
	{
		if (strlen(routes[i].path) == pathlen && strncmp(p, routes[i].path, pathlen) == 0)
		{
			*rest = p;
			return &routes[i];
		}
	}
	return NULL;
}

/*
 * The URL Twilio called.  Normally the configured public URL followed by
 * the route's path and the query string as received.  With --trust-host,
 * from X-Forwarded-Proto (http unless "https") and X-Forwarded-Host or
 * Host, which must look like a host name, plus the whole target.  NULL
 * when no such URL can be made (no usable Host) or memory ran out.
 */
static char *
public_url_of(struct MHD_Connection *conn, Request *req)
{
	const char *fragment = req->rest;
	const char *base = config.public_url;
	const char *proto;
	const char *host;
	char	   *url;
	size_t		n;

	if (config.trust_host)
	{
		proto = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Forwarded-Proto");
		host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Forwarded-Host");
		if (host == NULL)
			host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
		if (host == NULL || host[0] == '\0' || strlen(host) > 255 ||
			host[strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")] != '\0')
			return NULL;
		proto = (proto != NULL && strcmp(proto, "https") == 0) ? "https" : "http";
		n = strlen(proto) + 3 + strlen(host) + strlen(req->uri) + 1;
		url = malloc(n);
		if (url != NULL)
			snprintf(url, n, "%s://%s%s", proto, host, req->uri);
		return url;
	}
	n = strlen(base) + strlen(fragment) + 1;
	url = malloc(n);
	if (url != NULL)
		snprintf(url, n, "%s%s", base, fragment);
	return url;
}

/* The body is in: call the function and answer. */
static enum MHD_Result
dispatch(struct MHD_Connection *conn, Request *req, const char *method)
{
	CallResult	result;
	const char *signature;
	char	   *url;
	enum MHD_Result ret;

	if (req->body == NULL)
	{
		req->body = strdup("");
		if (req->body == NULL)
			return MHD_NO;
	}
	/* a text parameter ends at its first NUL: never pass a shortened body */
	if (memchr(req->body, '\0', req->len) != NULL)
		return reply(conn, req, method, 400, "text/plain", "malformed body\n", "nul_in_body");
	url = public_url_of(conn, req);
	if (url == NULL)
		return reply(conn, req, method, 400, "text/plain", "no usable Host header\n", "bad_host");
	signature = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Twilio-Signature");
	call_function(req->route, url, req->body, signature, &result);
	free(url);
	switch (result.http_status)
	{
		case 200:
			ret = reply(conn, req, method, 200, req->route->content_type, result.value, result.outcome);
			break;
		case 400:
			ret = reply(conn, req, method, 400, "text/plain", "malformed request\n", result.outcome);
			break;
		case 403:
			ret = reply(conn, req, method, 403, "text/plain", "forbidden\n", result.outcome);
			break;
		case 503:
			ret = reply(conn, req, method, 503, "text/plain", "unavailable, try again\n", result.outcome);
			break;
		default:
			ret = reply(conn, req, method, 500, "text/plain", "internal error\n", result.outcome);
			break;
	}
	free(result.value);
	return ret;
}

/*
 * libmicrohttpd's access handler: called once when the headers are in,
 * then with each piece of the body, then once more with none.
 */
static enum MHD_Result
handle_request(void *cls, struct MHD_Connection *conn, const char *url,
			   const char *method, const char *version, const char *upload_data,
			   size_t *upload_data_size, void **req_cls)
{
	Request    *req = *req_cls;

	if (req == NULL)
		return MHD_NO;
	if (req->answered)
	{
		/* refused before its body: what still arrives is dropped */
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (!req->started)
	{
		const char *length;
		long		n;

		req->started = true;
		if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
			return reply(conn, req, method, 405, "text/plain", "only POST\n", "method_not_allowed");
		req->route = find_route(req->uri, &req->rest);
		if (req->route == NULL)
			return reply(conn, req, method, 404, "text/plain", "not found\n", "no_route");
		/* refused before its body is read, when its length says so */
		length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (length != NULL && (!parse_int(length, 0, LONG_MAX, &n) || (size_t) n > config.max_body))
			return reply(conn, req, method, 413, "text/plain", "body too large\n", "too_large");
		return MHD_YES;
	}
	if (*upload_data_size > 0)
	{
		size_t		n = *upload_data_size;

		*upload_data_size = 0;
		if (req->too_large)
			return MHD_YES;
		if (req->len + n > config.max_body)
		{
			/* read and drop the rest: the answer is 413 */
			req->too_large = true;
			free(req->body);
			req->body = NULL;
			req->len = 0;
			return MHD_YES;
		}
		if (req->len + n + 1 > req->cap)
		{
			size_t		cap = req->cap ? req->cap : 1024;
			char	   *grown;

			while (cap < req->len + n + 1)
				cap *= 2;
			grown = realloc(req->body, cap);
			if (grown == NULL)
				return MHD_NO;
			req->body = grown;
			req->cap = cap;
		}
		memcpy(req->body + req->len, upload_data, n);
		req->len += n;
		req->body[req->len] = '\0';
		return MHD_YES;
	}
	if (req->too_large)
		return reply(conn, req, method, 413, "text/plain", "body too large\n", "too_large");
	return dispatch(conn, req, method);
}


/* ---------- start and stop ---------- */

static void
usage(FILE *to)
{
	fprintf(to,
			"twilio_outbox_receiver: hands Twilio's webhooks to twilio_outbox's SQL functions\n"
			"\n"
			"Usage: twilio_outbox_receiver --public-url URL [options]\n"
			"\n"
			"  --public-url URL        the public base URL Twilio calls, e.g. https://example.com/twilio\n"
			"                          (paths URL/status, URL/inbound, URL/debugger)\n"
			"  --trust-host            no public URL: take it from X-Forwarded-Proto and Host\n"
			"  --listen ADDR           address to listen on (default 127.0.0.1)\n"
			"  --port N                port (default 8091; 0 for any free one)\n"
			"  --port-file FILE        write the bound port here once listening\n"
			"  --conninfo STRING       libpq connection string (default: libpq's environment)\n"
			"  --role ROLE             SET ROLE after connecting (default twilio_outbox_webhook; '' for none)\n"
			"  --pool N                database connections and HTTP threads (default 4)\n"
			"  --max-body BYTES        largest body accepted (default 65536)\n"
			"  --statement-timeout MS  (default 5000)\n"
			"  --version, --help\n"
			"\n"
			"Each option can also come from the environment: TWILIO_OUTBOX_RECEIVER_PUBLIC_URL,\n"
			"_LISTEN, _PORT, _CONNINFO, _ROLE, _POOL, _MAX_BODY (prefix TWILIO_OUTBOX_RECEIVER).\n"
			"The command line wins.\n");
}

/* A public base URL: http(s)://host[:port][/path], nothing after the path. */
static bool
set_public_url(const char *url)
{
	const char *host;
	const char *slash;
	size_t		n;

	if (strncmp(url, "https://", 8) == 0)
		host = url + 8;
	else if (strncmp(url, "http://", 7) == 0)
		host = url + 7;
	else
		return false;
	if (host[0] == '\0' || host[0] == '/' || strpbrk(url, "?# \t\r\n") != NULL)
		return false;
	config.public_url = strdup(url);
	if (config.public_url == NULL)
		return false;
	n = strlen(config.public_url);
	while (n > 0 && config.public_url[n - 1] == '/')
		config.public_url[--n] = '\0';
	slash = strchr(config.public_url + (host - url), '/');
	config.prefix = slash ? slash : "";
	return true;
}

static bool
set_option(int opt, const char *value)
{
	long		n;

	switch (opt)
	{
		case 'u':
			return set_public_url(value);
		case 'l':
			config.listen = value;
			return value[0] != '\0';
		case 'p':
			if (!parse_int(value, 0, 65535, &n))
				return false;
			config.port = (int) n;
			return true;
		case 'c':
			config.conninfo = value;
			return true;
		case 'r':
			config.role = value;
			return true;
		case 'n':
			if (!parse_int(value, 1, 64, &n))
				return false;
			config.pool_size = (int) n;
			return true;
		case 'b':
			if (!parse_int(value, 1, 16 * 1024 * 1024, &n))
				return false;
			config.max_body = (size_t) n;
			return true;
		case 's':
			if (!parse_int(value, 1, 600000, &n))
				return false;
			config.statement_timeout_ms = (int) n;
			return true;
	}
	return false;
}

static void
write_port_file(const char *path, int port)
{
	char		tmp[PATH_MAX];
	FILE	   *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid());
	f = fopen(tmp, "w");
	if (f == NULL || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, path) != 0)
	{
		log_line("could not write port file \"%s\": %s", path, strerror(errno));
		exit(1);
	}
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"public-url", required_argument, NULL, 'u'},
		{"trust-host", no_argument, NULL, 't'},
		{"listen", required_argument, NULL, 'l'},
		{"port", required_argument, NULL, 'p'},
		{"port-file", required_argument, NULL, 'f'},
		{"conninfo", required_argument, NULL, 'c'},
		{"role", required_argument, NULL, 'r'},
		{"pool", required_argument, NULL, 'n'},
		{"max-body", required_argument, NULL, 'b'},
		{"statement-timeout", required_argument, NULL, 's'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	static const struct
	{
		int			opt;
		const char *env;
	}			envs[] = {
		{'u', "TWILIO_OUTBOX_RECEIVER_PUBLIC_URL"},
		{'l', "TWILIO_OUTBOX_RECEIVER_LISTEN"},
		{'p', "TWILIO_OUTBOX_RECEIVER_PORT"},
		{'c', "TWILIO_OUTBOX_RECEIVER_CONNINFO"},
		{'r', "TWILIO_OUTBOX_RECEIVER_ROLE"},
		{'n', "TWILIO_OUTBOX_RECEIVER_POOL"},
		{'b', "TWILIO_OUTBOX_RECEIVER_MAX_BODY"},
	};
	struct addrinfo hints;
	struct addrinfo *addr;
	char		portstr[16];
	pthread_condattr_t cattr;
	sigset_t	stop_signals;
	struct MHD_Daemon *daemon;
	struct MHD_OptionItem threads[2];
	const union MHD_DaemonInfo *info;
	unsigned int flags;
	bool		fatal;
	int			opt;
	int			sig;
	int			rc;
	size_t		i;

	for (i = 0; i < sizeof(envs) / sizeof(envs[0]); i++)
	{
		const char *v = getenv(envs[i].env);

		if (v != NULL && !set_option(envs[i].opt, v))
		{
			fprintf(stderr, "twilio_outbox_receiver: invalid %s\n", envs[i].env);
			return 2;
		}
	}
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 't':
				config.trust_host = true;
				break;
			case 'f':
				config.port_file = optarg;
				break;
			case 'V':
				printf("twilio_outbox_receiver %s\n", RECEIVER_VERSION);
				return 0;
			case 'h':
				usage(stdout);
				return 0;
			case '?':
				usage(stderr);
				return 2;
			default:
				if (!set_option(opt, optarg))
				{
					for (i = 0; longopts[i].val != opt; i++)
						;
					fprintf(stderr, "twilio_outbox_receiver: invalid value for --%s\n",
							longopts[i].name);
					return 2;
				}
		}
	}
	if (optind < argc || (config.public_url == NULL) == !config.trust_host)
	{
		fprintf(stderr, "twilio_outbox_receiver: give exactly one of --public-url and --trust-host\n");
		usage(stderr);
		return 2;
	}
	if (config.prefix == NULL)
		config.prefix = "";

	/* the pool; its first connection now, to find a wrong role at once */
	pool = calloc((size_t) config.pool_size, sizeof(PoolSlot));
	if (pool == NULL)
		return 1;
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&pool_freed, &cattr);
	if (!slot_connect(&pool[0], &fatal))
	{
		if (fatal)
			return 1;
		log_line("starting anyway: requests are answered 503 until the database is reachable");
		memset(&pool[0].retry_at, 0, sizeof(pool[0].retry_at));
	}

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(portstr, sizeof(portstr), "%d", config.port);
	rc = getaddrinfo(config.listen, portstr, &hints, &addr);
	if (rc != 0)
	{
		log_line("could not resolve listen address \"%s\": %s", config.listen, gai_strerror(rc));
		return 1;
	}

	/* the signals that stop us are taken by sigwait below, in no other thread */
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	signal(SIGPIPE, SIG_IGN);

	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
	if (addr->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* one connection: the internal thread alone (MHD refuses a pool of one) */
	memset(threads, 0, sizeof(threads));
	threads[0].option = MHD_OPTION_END;
	if (config.pool_size > 1)
	{
		threads[0].option = MHD_OPTION_THREAD_POOL_SIZE;
		threads[0].value = config.pool_size;
		threads[1].option = MHD_OPTION_END;
	}
	daemon = MHD_start_daemon(flags, (uint16_t) config.port, NULL, NULL,
							  handle_request, NULL,
							  MHD_OPTION_SOCK_ADDR, addr->ai_addr,
							  MHD_OPTION_ARRAY, threads,
							  MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 256,
							  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) config.http_timeout_s,
							  MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int) 512,
							  MHD_OPTION_URI_LOG_CALLBACK, request_begin, NULL,
							  MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL,
							  MHD_OPTION_END);
	freeaddrinfo(addr);
	if (daemon == NULL)
	{
		log_line("could not listen on %s port %d", config.listen, config.port);
		return 1;
	}
	info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
	if (info != NULL)
		config.port = info->port;
	if (config.port_file != NULL)
		write_port_file(config.port_file, config.port);
	log_line("listening on %s port %d for %s/{status,inbound,debugger}, %d connections",
			 config.listen, config.port,
			 config.trust_host ? "<forwarded host>" : config.public_url, config.pool_size);

	do
	{
		rc = sigwait(&stop_signals, &sig);
	} while (rc == EINTR);

	/* no new connections; the requests in progress finish first */
	log_line("stopping (signal %d)", sig);
	MHD_stop_daemon(daemon);
	for (i = 0; i < (size_t) config.pool_size; i++)
		PQfinish(pool[i].conn);
	log_line("stopped");
	return 0;
}
