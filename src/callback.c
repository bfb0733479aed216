/*-------------------------------------------------------------------------
 *
 * callback.c
 *		Webhooks from Twilio: the X-Twilio-Signature check that every entry
 *		point (status callbacks, inbound messages, the debugger) goes
 *		through, and the counters of what was accepted and refused.
 *
 * twilio_outbox.webhook_verify() parses the raw form body, finds the
 * account by its AccountSid, loads the account's auth token the way the
 * dispatcher loads secrets (inline, environment or file; never from SQL's
 * sight) and checks the signature as Twilio's SDKs do (twilio-node
 * webhooks.ts validateRequest, twilio-python request_validator.py):
 *
 *		base64(HMAC-SHA1(token, url + name1 + value1 + name2 + value2 ...))
 *
 * over every parameter received, names sorted, a repeated name's distinct
 * values sorted; the URL is tried without its port and with it (the
 * scheme's default added when absent).  The SQL functions of
 * sql/0.2/35_callbacks.sql do the rest in the caller's one transaction.
 *
 * A refusal raises, so nothing the caller's transaction wrote survives it:
 * the counters live in shared memory (atomics, no lock, no transaction),
 * which is why they count refusals at all.  They are per cluster, since
 * server start, and exist only when the library is preloaded.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/hmac.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* Why a webhook was accepted or refused: the rows of webhook_counters(). */
typedef enum WebhookVerdict
{
	WEBHOOK_ACCEPTED,
	WEBHOOK_BAD_SIGNATURE,
	WEBHOOK_UNKNOWN_ACCOUNT,
	WEBHOOK_NO_AUTH_TOKEN,
	WEBHOOK_MALFORMED,
	WEBHOOK_NVERDICTS
} WebhookVerdict;

static const char *const verdict_names[WEBHOOK_NVERDICTS] = {
	"accepted", "bad_signature", "unknown_account", "no_auth_token", "malformed"
};

typedef struct WebhookShared
{
	pg_atomic_uint64 count[WEBHOOK_NVERDICTS];
	pg_atomic_uint64 last_refused_at;	/* a TimestampTz; 0: never */
} WebhookShared;

static WebhookShared *webhook_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* A form field as received, percent-decoded. */
typedef struct FormField
{
	char	   *name;
	char	   *value;
	int			pos;			/* order of arrival */
} FormField;

/* The longest URL and body accepted: far above anything Twilio sends. */
#define WEBHOOK_MAX_URL		8192
#define WEBHOOK_MAX_BODY	(1024 * 1024)

static void
webhook_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WebhookShared)));
}

static void
webhook_shmem_startup(void)
{
	bool		found;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	webhook_shared = ShmemInitStruct("twilio_outbox webhooks",
									 sizeof(WebhookShared), &found);
	if (!found)
	{
		for (i = 0; i < WEBHOOK_NVERDICTS; i++)
			pg_atomic_init_u64(&webhook_shared->count[i], 0);
		pg_atomic_init_u64(&webhook_shared->last_refused_at, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init: the counters exist only when preloaded. */
void
outbox_callback_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = webhook_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = webhook_shmem_startup;
}

static void
count_verdict(WebhookVerdict v)
{
	if (webhook_shared == NULL)
		return;
	pg_atomic_fetch_add_u64(&webhook_shared->count[v], 1);
	if (v != WEBHOOK_ACCEPTED)
		pg_atomic_write_u64(&webhook_shared->last_refused_at,
							(uint64) GetCurrentTimestamp());
}

/* Refuse a webhook: count it, then raise (never returns). */
static void
refuse(WebhookVerdict v, int sqlstate, const char *msg, const char *detail,
	   const char *hint)
{
	count_verdict(v);
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg_internal("%s", msg),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decode one application/x-www-form-urlencoded token ('+' is a space,
 * %XX a byte).  NULL when an escape is broken, a byte is NUL, or the
 * result is not valid in the database encoding.
 */
static char *
form_decode(const char *s, int len)
{
	char	   *out = palloc(len + 1);
	int			n = 0;
	int			i;

	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if (c == '+')
			c = ' ';
		else if (c == '%')
		{
			int			hi;
			int			lo;

			if (i + 2 >= len)
				return NULL;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return NULL;
			c = (char) (hi * 16 + lo);
			i += 2;
		}
		if (c == '\0')
			return NULL;
		out[n++] = c;
	}
	out[n] = '\0';
	if (!pg_verifymbstr(out, n, true))
		return NULL;
	return out;
}

/* Split the body into fields; false when it is not a well-formed form. */
static bool
parse_form(const char *body, FormField **fields, int *nfields)
{
	int			cap = 32;
	int			n = 0;
	const char *p = body;
	FormField  *f = palloc(sizeof(FormField) * cap);

	while (*p)
	{
		const char *end = strchr(p, '&');
		const char *eq;
		int			len = end ? end - p : (int) strlen(p);

		if (len > 0)
		{
			eq = memchr(p, '=', len);
			if (n == cap)
			{
				cap *= 2;
				f = repalloc(f, sizeof(FormField) * cap);
			}
			f[n].name = form_decode(p, eq ? eq - p : len);
			f[n].value = eq ? form_decode(eq + 1, len - (eq - p) - 1) : pstrdup("");
			f[n].pos = n;
			if (f[n].name == NULL || f[n].value == NULL || f[n].name[0] == '\0')
				return false;
			n++;
		}
		if (end == NULL)
			break;
		p = end + 1;
	}
	*fields = f;
	*nfields = n;
	return true;
}

static int
cmp_name_value(const void *a, const void *b)
{
	const FormField *x = a;
	const FormField *y = b;
	int			c = strcmp(x->name, y->name);

	return c != 0 ? c : strcmp(x->value, y->value);
}

static int
cmp_name_pos(const void *a, const void *b)
{
	const FormField *x = a;
	const FormField *y = b;
	int			c = strcmp(x->name, y->name);

	return c != 0 ? c : x->pos - y->pos;
}

/*
 * The two forms of the URL the SDKs try: without any port, and with the
 * port (the scheme's default, 443 or 80, when it names none).  False when
 * the URL is not an absolute http(s) URL.
 */
static bool
url_forms(const char *url, char **without_port, char **with_port)
{
	const char *auth;
	const char *auth_end;
	const char *host;
	const char *port = NULL;
	const char *c;
	bool		https;

	if (pg_strncasecmp(url, "https://", 8) == 0)
		https = true;
	else if (pg_strncasecmp(url, "http://", 7) == 0)
		https = false;
	else
		return false;
	auth = url + (https ? 8 : 7);
	auth_end = auth + strcspn(auth, "/?#");
	if (auth_end == auth)
		return false;
	host = auth;
	for (c = auth; c < auth_end; c++)
		if (*c == '@')
			host = c + 1;
	if (*host == '[')
	{
		const char *close = memchr(host, ']', auth_end - host);

		if (close == NULL)
			return false;
		if (close + 1 < auth_end && close[1] == ':')
			port = close + 1;
	}
	else
		port = memchr(host, ':', auth_end - host);
	if (port != NULL)
	{
		*with_port = pstrdup(url);
		*without_port = psprintf("%.*s%s", (int) (port - url), url, auth_end);
	}
	else
	{
		*without_port = pstrdup(url);
		*with_port = psprintf("%.*s:%s%s", (int) (auth_end - url), url,
							  https ? "443" : "80", auth_end);
	}
	return true;
}

/*
 * base64(HMAC-SHA1(token, url + the sorted, distinct name/value pairs)).
 * The fields must be sorted by cmp_name_value.
 */
static char *
compute_signature(const char *token, const char *url, FormField *sorted, int n)
{
	pg_hmac_ctx *ctx;
	uint8		digest[20];
	char	   *out = palloc(pg_b64_enc_len(sizeof(digest)) + 1);
	int			len;
	int			i;

	ctx = pg_hmac_create(PG_SHA1);
	if (ctx == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	if (pg_hmac_init(ctx, (const uint8 *) token, strlen(token)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) url, strlen(url)) < 0)
		elog(ERROR, "could not compute HMAC-SHA1: %s", pg_hmac_error(ctx));
	for (i = 0; i < n; i++)
	{
		/* a repeated name's equal values count once, as in the SDKs */
		if (i > 0 && cmp_name_value(&sorted[i - 1], &sorted[i]) == 0)
			continue;
		if (pg_hmac_update(ctx, (const uint8 *) sorted[i].name, strlen(sorted[i].name)) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) sorted[i].value, strlen(sorted[i].value)) < 0)
			elog(ERROR, "could not compute HMAC-SHA1: %s", pg_hmac_error(ctx));
	}
	if (pg_hmac_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute HMAC-SHA1: %s", pg_hmac_error(ctx));
	pg_hmac_free(ctx);
	/* void *: pg_b64_encode takes char * in 15 and uint8 * from 18 */
	len = pg_b64_encode((void *) digest, sizeof(digest), out,
						pg_b64_enc_len(sizeof(digest)));
	if (len < 0)
		elog(ERROR, "could not encode a signature in base64");
	out[len] = '\0';
	return out;
}

/* Equal strings, in time that depends only on the expected one's length. */
static bool
signature_equal(const char *expected, const char *given)
{
	size_t		n = strlen(expected);
	size_t		m = strlen(given);
	size_t		i;
	unsigned char diff = (n != m);

	for (i = 0; i < n; i++)
		diff |= (unsigned char) expected[i] ^ (unsigned char) (i < m ? given[i] : 0);
	return diff == 0;
}

/* Whether the signature matches either form of the URL under this token. */
static bool
signature_valid(const char *token, const char *url, FormField *sorted, int n,
				const char *given)
{
	char	   *without_port;
	char	   *with_port;
	bool		a;
	bool		b;

	if (!url_forms(url, &without_port, &with_port))
		return false;
	/* both computed, whatever the first says: no timing hint of which form */
	a = signature_equal(compute_signature(token, without_port, sorted, n), given);
	b = signature_equal(compute_signature(token, with_port, sorted, n), given);
	return a || b;
}

/* The fields as a JSON object; a repeated name's values as an array, in order. */
static Datum
fields_jsonb(FormField *fields, int n)
{
	FormField  *f = palloc(sizeof(FormField) * Max(n, 1));
	StringInfoData buf;
	int			i;

	memcpy(f, fields, sizeof(FormField) * n);
	qsort(f, n, sizeof(FormField), cmp_name_pos);
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (i = 0; i < n; i++)
	{
		bool		first = (i == 0 || strcmp(f[i - 1].name, f[i].name) != 0);
		bool		repeated = (first ? (i + 1 < n && strcmp(f[i + 1].name, f[i].name) == 0) : true);
		bool		last = (i + 1 == n || strcmp(f[i + 1].name, f[i].name) != 0);

		if (first)
		{
			if (i > 0)
				appendStringInfoString(&buf, ", ");
			escape_json(&buf, f[i].name);
			appendStringInfoString(&buf, ": ");
			if (repeated)
				appendStringInfoChar(&buf, '[');
		}
		else
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, f[i].value);
		if (last && repeated)
			appendStringInfoChar(&buf, ']');
	}
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

static const char *
field_value(FormField *fields, int n, const char *name)
{
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(fields[i].name, name) == 0)
			return fields[i].value;
	return NULL;
}

/*
 * The token that validates the account's webhooks: auth_token* when set,
 * else the secret when the account sends with its own SID (no API key).
 * NULL with *problem set when there is none.
 */
static char *
account_token(HeapTuple tup, TupleDesc desc, const char **problem)
{
	char	   *key_sid = SPI_getvalue(tup, desc, 2);
	char	   *tok = SPI_getvalue(tup, desc, 6);
	char	   *tok_env = SPI_getvalue(tup, desc, 7);
	char	   *tok_file = SPI_getvalue(tup, desc, 8);
	bool		has_row = SPI_getvalue(tup, desc, 9) != NULL;

	if (tok || tok_env || tok_file)
		return outbox_load_secret(tok, tok_env, tok_file, problem);
	if (!has_row)
	{
		*problem = "it has no row in twilio_outbox.account_credentials";
		return NULL;
	}
	if (key_sid != NULL)
	{
		*problem = "it sends with an API key and names no auth token (auth_token_env, auth_token_file or auth_token)";
		return NULL;
	}
	return outbox_load_secret(SPI_getvalue(tup, desc, 3), SPI_getvalue(tup, desc, 4),
							  SPI_getvalue(tup, desc, 5), problem);
}

/*
 * twilio_outbox.webhook_verify(url text, body text, signature text,
 *								required text[], OUT account text,
 *								OUT params jsonb)
 *
 * Checks one webhook and returns the name of the account it is for (the
 * first, by name, of those with its AccountSid whose token validates) and
 * every field received.  Raises, after counting, when the body is not a
 * form, has no AccountSid or lacks a required field (22023), the account is
 * unknown (42704), has no auth token to check with (55000), or the
 * signature is wrong or missing (28000).  Reads the credentials through
 * SPI: call it only from the SECURITY DEFINER functions that own it.
 */
PG_FUNCTION_INFO_V1(twilio_outbox_webhook_verify);
Datum
twilio_outbox_webhook_verify(PG_FUNCTION_ARGS)
{
	char	   *url;
	char	   *body;
	char	   *signature;
	FormField  *fields;
	FormField  *sorted;
	int			n;
	const char *account_sid;
	const char *problem = NULL;
	char	   *account = NULL;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	uint64		i;
	int			rc;
	bool		any_token = false;
	char	   *url_a;
	char	   *url_b;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		refuse(WEBHOOK_MALFORMED, ERRCODE_INVALID_PARAMETER_VALUE,
			   "webhook URL and body must not be null", NULL,
			   "Pass the full URL Twilio called and the raw request body.");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	body = text_to_cstring(PG_GETARG_TEXT_PP(1));
	signature = PG_ARGISNULL(2) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (strlen(url) > WEBHOOK_MAX_URL || outbox_has_control(url) ||
		!url_forms(url, &url_a, &url_b))
		refuse(WEBHOOK_MALFORMED, ERRCODE_INVALID_PARAMETER_VALUE,
			   "invalid webhook URL",
			   "The URL must be the absolute http or https URL Twilio called, query string included.",
			   NULL);
	if (strlen(body) > WEBHOOK_MAX_BODY || !parse_form(body, &fields, &n))
		refuse(WEBHOOK_MALFORMED, ERRCODE_INVALID_PARAMETER_VALUE,
			   "malformed webhook body",
			   "The body must be the raw application/x-www-form-urlencoded body Twilio posted.",
			   NULL);
	account_sid = field_value(fields, n, "AccountSid");
	if (account_sid == NULL || !outbox_is_sid(account_sid, "AC"))
		refuse(WEBHOOK_MALFORMED, ERRCODE_INVALID_PARAMETER_VALUE,
			   "webhook body has no valid AccountSid", NULL, NULL);

	sorted = palloc(sizeof(FormField) * Max(n, 1));
	memcpy(sorted, fields, sizeof(FormField) * n);
	qsort(sorted, n, sizeof(FormField), cmp_name_value);

	SPI_connect();
	args[0] = CStringGetTextDatum(account_sid);
	rc = SPI_execute_with_args(
			"SELECT a.name, c.api_key_sid, c.secret, c.secret_env, c.secret_file,"
			" c.auth_token, c.auth_token_env, c.auth_token_file, c.account"
			" FROM twilio_outbox.accounts a"
			" LEFT JOIN twilio_outbox.account_credentials c ON c.account OPERATOR(pg_catalog.=) a.name"
			" WHERE pg_catalog.lower(a.account_sid) OPERATOR(pg_catalog.=) pg_catalog.lower($1)"
			" ORDER BY a.name",
			1, argtypes, args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read accounts: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		SPI_finish();
		refuse(WEBHOOK_UNKNOWN_ACCOUNT, ERRCODE_UNDEFINED_OBJECT,
			   psprintf("no account has AccountSid \"%s\"", account_sid),
			   NULL, "See twilio_outbox.accounts.");
	}
	for (i = 0; i < SPI_processed && account == NULL; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		const char *why = NULL;
		char	   *token = account_token(tup, desc, &why);

		if (token == NULL)
		{
			if (problem == NULL)
				problem = psprintf("Account \"%s\" cannot validate webhooks: %s.",
								   SPI_getvalue(tup, desc, 1), why);
			continue;
		}
		any_token = true;
		if (signature_valid(token, url, sorted, n, signature))
			account = SPI_getvalue(tup, desc, 1);
		explicit_bzero(token, strlen(token));
	}
	if (account != NULL)
	{
		MemoryContext spi = MemoryContextSwitchTo(TopTransactionContext);

		/* SPI_finish frees SPI's memory; the name must outlive it */
		account = pstrdup(account);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();

	if (!any_token)
	{
		/*
		 * Why (a variable's or a file's name) is for the server log only:
		 * the caller is the network-facing webhook role.
		 */
		if (problem != NULL)
			ereport(LOG_SERVER_ONLY,
					(errmsg("twilio_outbox cannot validate webhooks for AccountSid \"%s\"",
							account_sid),
					 errdetail_internal("%s", problem)));
		refuse(WEBHOOK_NO_AUTH_TOKEN, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			   psprintf("cannot validate webhooks for AccountSid \"%s\"", account_sid),
			   problem ? "The server log says why." : NULL,
			   "Name the account's auth token in twilio_outbox.account_credentials (auth_token_env or auth_token_file).");
	}
	if (account == NULL)
		refuse(WEBHOOK_BAD_SIGNATURE, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
			   signature[0] ? "invalid webhook signature" : "webhook signature missing",
			   "The X-Twilio-Signature header does not match the URL and body under the account's auth token.",
			   "Pass the URL exactly as Twilio called it (scheme, host, path and query string) and the body unchanged.");

	if (!PG_ARGISNULL(3))
	{
		ArrayType  *req = PG_GETARG_ARRAYTYPE_P(3);
		Datum	   *elems;
		bool	   *enulls;
		int			nreq;
		int			k;

		deconstruct_array(req, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &nreq);
		for (k = 0; k < nreq; k++)
		{
			char	   *name;

			if (enulls[k])
				continue;
			name = TextDatumGetCString(elems[k]);
			if (field_value(fields, n, name) == NULL)
				refuse(WEBHOOK_MALFORMED, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("webhook body has no %s", name), NULL, NULL);
		}
	}

	count_verdict(WEBHOOK_ACCEPTED);
	values[0] = CStringGetTextDatum(account);
	values[1] = fields_jsonb(fields, n);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * twilio_outbox.webhook_signature(auth_token text, url text, body text)
 *
 * The signature Twilio would send for this URL and raw body: for testing an
 * endpoint, and for a stand-in that posts signed callbacks.  The token is
 * the caller's own argument; nothing is read from the tables.
 */
PG_FUNCTION_INFO_V1(twilio_outbox_webhook_signature);
Datum
twilio_outbox_webhook_signature(PG_FUNCTION_ARGS)
{
	char	   *token = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *body = text_to_cstring(PG_GETARG_TEXT_PP(2));
	FormField  *fields;
	int			n;
	char	   *sig;

	if (!parse_form(body, &fields, &n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("malformed webhook body")));
	if (!url_forms(url, &sig, &sig))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid webhook URL")));
	qsort(fields, n, sizeof(FormField), cmp_name_value);
	sig = compute_signature(token, url, fields, n);
	explicit_bzero(token, strlen(token));
	PG_RETURN_TEXT_P(cstring_to_text(sig));
}

/*
 * twilio_outbox.webhook_counters(OUT verdict text, OUT webhooks bigint,
 *								  OUT last_refused_at timestamptz)
 *
 * Webhooks accepted and refused, by verdict, since the server started, for
 * the whole cluster.  No rows without the preload.
 */
PG_FUNCTION_INFO_V1(twilio_outbox_webhook_counters);
Datum
twilio_outbox_webhook_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;
	uint64		last;

	InitMaterializedSRF(fcinfo, 0);
	if (webhook_shared == NULL)
		return (Datum) 0;
	last = pg_atomic_read_u64(&webhook_shared->last_refused_at);
	for (i = 0; i < WEBHOOK_NVERDICTS; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(verdict_names[i]);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&webhook_shared->count[i]));
		if (i == WEBHOOK_ACCEPTED || last == 0)
			nulls[2] = true;
		else
			values[2] = TimestampTzGetDatum((TimestampTz) last);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * The dispatcher's record just gave the messages of done their SIDs, in
 * the transaction the worker has open (SPI connected; may throw).  A
 * status callback that named no outbox_id and came before a SID was
 * recorded found no message and was kept as unmatched: apply_early_statuses
 * (sql/0.2/35_callbacks.sql) applies it now, and orders itself against a
 * callback being found unmatched at this very moment.  Only the requests'
 * SIDs and the earliest start go in: a callback cannot come before the
 * request that created its message started.
 */
void
outbox_apply_early_statuses(List *done)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {TIMESTAMPTZOID, TEXTARRAYOID};
	Datum		values[2];
	Datum	   *sids = palloc(sizeof(Datum) * Max(list_length(done), 1));
	TimestampTz since = 0;
	ListCell   *lc;
	int			n = 0;

	foreach(lc, done)
	{
		OutboxMessage *m = lfirst(lc);
		OutboxResponse *r = &m->resp;

		if (r->twilio_sid == NULL || r->twilio_sid[0] == '\0')
			continue;
		sids[n++] = CStringGetTextDatum(r->twilio_sid);
		if (since == 0 || r->started_at < since)
			since = r->started_at;
	}
	if (n == 0)
		return;

	outbox_prepare(&plan, "SELECT twilio_outbox.apply_early_statuses($1, $2)", 2, types);
	values[0] = TimestampTzGetDatum(since);
	values[1] = outbox_make_array(sids, NULL, n, TEXTOID);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "applying early status callbacks failed");
}
