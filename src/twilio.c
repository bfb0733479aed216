/*-------------------------------------------------------------------------
 *
 * twilio.c
 *		The Twilio Messages API on the wire: the form-encoded create request
 *		and what comes back (JSON body, Twilio-* headers).
 *
 * Field names are exactly those of Twilio's OpenAPI description
 * (2010-04-01, CreateMessage).  outbox_build_form runs inside the claim
 * transaction (it reads jsonb) and trusts nothing of the row: every key and
 * value is encoded, params keys are filtered; the parsers run outside any
 * transaction and never throw on bad input: a body they cannot read is
 * flagged malformed.  Every string that comes from the network and reaches
 * a table goes through outbox_clean_string(): valid in the database
 * encoding, no control characters, bounded.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <ctype.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* Append s form-encoded (RFC 1866: space as '+', all else but unreserved as %XX). */
static void
append_encoded(StringInfo buf, const char *s)
{
	const char *utf8 = pg_server_to_any(s, strlen(s), PG_UTF8);
	const char *p;

	for (p = utf8; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
			appendStringInfoChar(buf, (char) c);
		else if (c == ' ')
			appendStringInfoChar(buf, '+');
		else
			appendStringInfo(buf, "%%%02X", c);
	}
}

/*
 * Append one key=value pair, both encoded whatever wrote them (a row an
 * administrator inserted by hand included), in UTF-8 as Twilio reads them
 * whatever the server encoding: no key or value can add a field.
 */
static void
append_field(StringInfo buf, const char *key, const char *value)
{
	if (buf->len > 0)
		appendStringInfoChar(buf, '&');
	append_encoded(buf, key);
	appendStringInfoChar(buf, '=');
	append_encoded(buf, value);
}

/* A jsonb scalar as Twilio expects it in a form: strings raw, booleans as true/false. */
static char *
scalar_text(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return v->val.boolean ? "true" : "false";
		default:
			return NULL;
	}
}

/*
 * params: each key once, an array's scalars as repeated fields
 * (PersistentAction=a&PersistentAction=b, as MediaUrl), nothing nested
 * deeper.  twilio_enqueue admits only the CreateMessage fields params may
 * carry; a row written into the table by hand may hold anything, so any
 * other key (To, From, Body: a second value of a field we set; or a name
 * Twilio does not know) is skipped with a warning instead of reaching
 * Twilio, and the message goes out with the rest.
 */
static void
append_params(StringInfo buf, Jsonb *params, bool *has_validity)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	int			depth = 0;

	if (!JB_ROOT_IS_OBJECT(params) || JB_ROOT_IS_SCALAR(params))
	{
		ereport(WARNING,
				(errmsg("twilio_outbox: params of a message is not a JSON object: not sent")));
		return;
	}
	it = JsonbIteratorInit(&params->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		char	   *text;

		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
			case WJB_BEGIN_ARRAY:
				depth++;
				break;
			case WJB_END_OBJECT:
			case WJB_END_ARRAY:
				depth--;
				break;
			case WJB_KEY:
				if (depth != 1)
					break;
				key = pnstrdup(v.val.string.val, v.val.string.len);
				if (!outbox_param_is_known(key))
				{
					ereport(WARNING,
							(errmsg("twilio_outbox: params key \"%s\" is not a field params may carry: not sent",
									outbox_clip(key))));
					key = NULL;
				}
				break;
			case WJB_VALUE:
			case WJB_ELEM:
				/* a value of the object, or an element of an array value of it */
				if (key != NULL &&
					((tok == WJB_VALUE && depth == 1) || (tok == WJB_ELEM && depth == 2)) &&
					(text = scalar_text(&v)) != NULL)
				{
					append_field(buf, key, text);
					if (strcmp(key, "ValidityPeriod") == 0)
						*has_validity = true;
				}
				break;
			case WJB_DONE:
				break;
		}
	}
}

/*
 * The request body for one message.  When the message expires and params do
 * not set ValidityPeriod, it is set to the time left, so that Twilio drops
 * the message from its own queue rather than deliver it stale.
 */
char *
outbox_build_form(const char *to, const char *from, const char *service,
				  const char *body, Datum media_urls, bool media_null,
				  const char *content_sid, const char *content_variables,
				  const char *status_callback, Datum params, bool params_null,
				  TimestampTz expires_at, TimestampTz now)
{
	StringInfoData buf;
	bool		has_validity = false;

	initStringInfo(&buf);
	append_field(&buf, "To", to);
	if (from)
		append_field(&buf, "From", from);
	if (service)
		append_field(&buf, "MessagingServiceSid", service);
	if (body)
		append_field(&buf, "Body", body);
	if (!media_null)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;

		deconstruct_array(DatumGetArrayTypeP(media_urls), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, &nulls, &n);
		for (i = 0; i < n; i++)
			if (!nulls[i])
				append_field(&buf, "MediaUrl", TextDatumGetCString(elems[i]));
	}
	if (content_sid)
		append_field(&buf, "ContentSid", content_sid);
	if (content_variables)
		append_field(&buf, "ContentVariables", content_variables);
	if (status_callback)
		append_field(&buf, "StatusCallback", status_callback);
	if (!params_null)
		append_params(&buf, DatumGetJsonbP(params), &has_validity);
	if (expires_at != 0 && !has_validity)
	{
		double		left = ceil((double) (expires_at - now) / USECS_PER_SEC);

		append_field(&buf, "ValidityPeriod",
					 psprintf("%d", (int) Max(1, Min(left, 36000))));
	}
	return buf.data;
}

/*
 * Append s to buf escaped for XML character data and attribute values:
 * the five special characters as entities, form feed (allowed in a body,
 * not in XML 1.0) as a space.  s is in the server encoding; append_field
 * converts the whole Twiml to UTF-8 afterwards.
 */
static void
append_xml(StringInfo buf, const char *s)
{
	for (; *s; s++)
	{
		switch (*s)
		{
			case '&':
				appendStringInfoString(buf, "&amp;");
				break;
			case '<':
				appendStringInfoString(buf, "&lt;");
				break;
			case '>':
				appendStringInfoString(buf, "&gt;");
				break;
			case '"':
				appendStringInfoString(buf, "&quot;");
				break;
			case '\'':
				appendStringInfoString(buf, "&apos;");
				break;
			case '\f':
				appendStringInfoChar(buf, ' ');
				break;
			default:
				appendStringInfoChar(buf, *s);
		}
	}
}

/*
 * The request body of a call (a voice step of a fallback chain), fields as
 * in Twilio's CreateCall: To, From, Twiml that reads the body out with
 * <Say> (voice and language as attributes when given), and the status
 * callback with StatusCallbackEvent=completed: the one event whose
 * CallStatus is final (completed, busy, no-answer, failed, canceled).
 * Everything is escaped here, whatever the row holds: no body can add an
 * element or a field.
 */
char *
outbox_build_call_form(const char *to, const char *from, const char *body,
					   const char *status_callback, const char *voice,
					   const char *language)
{
	StringInfoData buf;
	StringInfoData twiml;

	initStringInfo(&twiml);
	appendStringInfoString(&twiml, "<Response><Say");
	if (voice)
	{
		appendStringInfoString(&twiml, " voice=\"");
		append_xml(&twiml, voice);
		appendStringInfoChar(&twiml, '"');
	}
	if (language)
	{
		appendStringInfoString(&twiml, " language=\"");
		append_xml(&twiml, language);
		appendStringInfoChar(&twiml, '"');
	}
	appendStringInfoChar(&twiml, '>');
	append_xml(&twiml, body ? body : "");
	appendStringInfoString(&twiml, "</Say></Response>");

	initStringInfo(&buf);
	append_field(&buf, "To", to);
	if (from)
		append_field(&buf, "From", from);
	append_field(&buf, "Twiml", twiml.data);
	if (status_callback)
	{
		append_field(&buf, "StatusCallback", status_callback);
		append_field(&buf, "StatusCallbackEvent", "completed");
	}
	pfree(twiml.data);
	return buf.data;
}

/* Longest Twilio error message and status kept; Twilio's are far shorter. */
#define TWILIO_MESSAGE_CAP	1024
#define TWILIO_STATUS_CAP	64

/*
 * Make a string from the network fit to store, in place: at most cap - 1
 * bytes; every control character (CR, LF, TAB, ...) a space; every byte
 * that does not belong to a valid character of the database encoding
 * (UTF-8; in any other encoding, ASCII) a '?'.  A character cut by the
 * length bound is invalid, so it goes too.  Never allocates, never throws:
 * it runs in libcurl's callbacks.
 */
void
outbox_clean_string(char *s, size_t cap)
{
	unsigned char *p = (unsigned char *) s;
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;
	size_t		len = strnlen(s, cap);
	size_t		i = 0;

	if (len >= cap)
		len = cap - 1;
	s[len] = '\0';
	while (i < len)
	{
		unsigned char c = p[i];
		int			n;

		if (c < 0x20 || c == 0x7f)
			p[i++] = ' ';
		else if (c < 0x80)
			i++;
		else if (utf8 && (n = pg_utf_mblen(p + i)) > 1 && i + n <= len &&
				 pg_utf8_islegal(p + i, n))
			i += n;
		else
			p[i++] = '?';
	}
}

/*
 * A JSON \u0000 escape stands for a character no text value can hold, and
 * PostgreSQL's JSON lexer refuses it.  Rewrite each into \u003f ('?', as
 * outbox_clean_string writes for what cannot be kept), in place (same
 * length), walking escapes pairwise so that "\\u0000" (a backslash, then
 * u0000) is left alone.
 */
static void
replace_nul_escapes(char *body, size_t len)
{
	size_t		i;

	for (i = 0; i + 1 < len; i++)
	{
		if (body[i] != '\\')
			continue;
		if (body[i + 1] == 'u' && i + 5 < len && memcmp(body + i + 2, "0000", 4) == 0)
			memcpy(body + i + 2, "003f", 4);
		i++;					/* skip the escaped character */
	}
}

/* Parser state: the top-level fields of a Message or an error object. */
typedef struct ParseState
{
	OutboxResponse *resp;
	int			depth;
	char	   *field;			/* current top-level field name */
} ParseState;

static OutboxJsonAction
ps_nest_in(void *state)
{
	((ParseState *) state)->depth++;
	OUTBOX_JSON_ACTION_DONE;
}

static OutboxJsonAction
ps_nest_out(void *state)
{
	((ParseState *) state)->depth--;
	OUTBOX_JSON_ACTION_DONE;
}

static OutboxJsonAction
ps_field(void *state, char *fname, bool isnull)
{
	ParseState *ps = state;

	if (ps->depth == 1)
		ps->field = fname;
	OUTBOX_JSON_ACTION_DONE;
}

static int
parse_int(const char *s)
{
	char	   *end;
	long		v = strtol(s, &end, 10);

	return (end != s && *end == '\0' && v > 0 && v < INT_MAX) ? (int) v : 0;
}

static OutboxJsonAction
ps_scalar(void *state, char *token, JsonTokenType type)
{
	ParseState *ps = state;
	OutboxResponse *r = ps->resp;
	const char *f = ps->field;

	if (ps->depth != 1 || f == NULL || type == JSON_TOKEN_NULL)
		OUTBOX_JSON_ACTION_DONE;
	if (strcmp(f, "sid") == 0 && type == JSON_TOKEN_STRING)
		r->twilio_sid = token;
	else if (strcmp(f, "status") == 0 && type == JSON_TOKEN_STRING)
		r->twilio_status = token;
	else if (strcmp(f, "num_segments") == 0)
		r->twilio_segments = parse_int(token);
	else if ((strcmp(f, "code") == 0 || strcmp(f, "error_code") == 0) &&
			 r->twilio_code == 0)
		r->twilio_code = parse_int(token);
	else if ((strcmp(f, "message") == 0 || strcmp(f, "error_message") == 0) &&
			 type == JSON_TOKEN_STRING && r->twilio_message == NULL)
		r->twilio_message = token;
	OUTBOX_JSON_ACTION_DONE;
}

/*
 * Fill the Twilio fields of resp from its body.  A body that is not a JSON
 * object, or a truncated one, sets body_malformed; nothing here throws.
 * Allocates in CurrentMemoryContext.
 */
void
outbox_parse_response(OutboxResponse *resp)
{
	ParseState	ps = {resp, 0, NULL};
	JsonSemAction sem;
	MemoryContext cxt = CurrentMemoryContext;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &ps;
	sem.object_start = ps_nest_in;
	sem.object_end = ps_nest_out;
	sem.array_start = ps_nest_in;
	sem.array_end = ps_nest_out;
	sem.object_field_start = ps_field;
	sem.scalar = ps_scalar;

	if (resp->body == NULL || resp->body_len == 0 || resp->body_truncated ||
		resp->body[0] != '{')
	{
		resp->body_malformed = true;
		return;
	}
	replace_nul_escapes(resp->body, resp->body_len);
	PG_TRY();
	{
		JsonLexContext *lex = outbox_json_lexer(resp->body, resp->body_len,
												PG_UTF8, true);

		if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
			resp->body_malformed = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		resp->body_malformed = true;
	}
	PG_END_TRY();

	/* A sid that is not one is not kept (CA: a call, a voice step of a fallback chain). */
	if (resp->twilio_sid != NULL &&
		!outbox_is_sid(resp->twilio_sid, "SM") && !outbox_is_sid(resp->twilio_sid, "MM") &&
		!outbox_is_sid(resp->twilio_sid, "CA"))
		resp->twilio_sid = NULL;
	/* The lexer neither checks the encoding of what it unescapes nor bounds it. */
	if (resp->twilio_message != NULL)
		outbox_clean_string(resp->twilio_message, TWILIO_MESSAGE_CAP);
	if (resp->twilio_status != NULL)
		outbox_clean_string(resp->twilio_status, TWILIO_STATUS_CAP);
}

/*
 * Copy a header value, trimmed, into a fixed buffer, fit to store (a NUL
 * byte inside the value ends it).
 */
static void
copy_value(char *dst, size_t cap, const char *v, size_t len)
{
	while (len > 0 && (*v == ' ' || *v == '\t'))
		v++, len--;
	while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
					   v[len - 1] == ' ' || v[len - 1] == '\t'))
		len--;
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, v, len);
	dst[len] = '\0';
	outbox_clean_string(dst, cap);
}

/*
 * One response header line from the transport's header callback.  Runs
 * inside libcurl: no allocation, no ereport.
 */
void
outbox_parse_header(OutboxResponse *resp, const char *line, size_t len)
{
	static const char *const names[] = {
		"retry-after", "twilio-request-id", "twilio-concurrent-requests",
		"twilio-request-duration"
	};
	const char *colon = memchr(line, ':', len);
	size_t		nlen;
	char		tmp[64];
	int			i;

	if (colon == NULL)
		return;
	nlen = colon - line;
	for (i = 0; i < (int) lengthof(names); i++)
	{
		if (nlen == strlen(names[i]) && pg_strncasecmp(line, names[i], nlen) == 0)
			break;
	}
	switch (i)
	{
		case 0:
			copy_value(resp->retry_after, sizeof(resp->retry_after),
					   colon + 1, len - nlen - 1);
			break;
		case 1:
			copy_value(resp->request_id, sizeof(resp->request_id),
					   colon + 1, len - nlen - 1);
			break;
		case 2:
			{
				long		v;

				copy_value(tmp, sizeof(tmp), colon + 1, len - nlen - 1);
				v = strtol(tmp, NULL, 10);
				resp->concurrent_requests = (v >= 0 && v < INT_MAX) ? (int) v : -1;
			}
			break;
		case 3:
			{
				double		v;

				copy_value(tmp, sizeof(tmp), colon + 1, len - nlen - 1);
				v = strtod(tmp, NULL);
				/* "nan", "inf" and garbage are not a duration */
				resp->request_duration = (isfinite(v) && v >= 0 && v < 1e9) ? v : -1;
			}
			break;
		default:
			break;
	}
}
