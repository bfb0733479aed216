/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *		twilio_enqueue(): validate a message and insert it into the outbox in
 *		the caller's transaction.
 *
 * Everything that can be checked without the database is checked before the
 * first query, so bad input costs nothing and leaves nothing behind.  The
 * function is SECURITY DEFINER: the application role needs EXECUTE on it and
 * nothing else.  Queries go through plans prepared once per backend, under
 * a search path of pg_catalog alone, pushed for the duration of the call.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <ctype.h>

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(twilio_enqueue);

/* Argument positions, as declared in the install script. */
enum
{
	ARG_TO,
	ARG_BODY,
	ARG_FROM,
	ARG_SERVICE,
	ARG_MEDIA,
	ARG_CALLBACK,
	ARG_SEND_AFTER,
	ARG_EXPIRES_AT,
	ARG_DEDUPE,
	ARG_ACCOUNT,
	ARG_CONTENT_SID,
	ARG_CONTENT_VARS,
	ARG_PARAMS
};

#define MAX_DEDUPE_KEY_BYTES 255

/* Kinds of value a Twilio parameter given through "params" may take. */
typedef enum TwilioParamKind
{
	PK_BOOL,
	PK_INT,
	PK_NUMBER,
	PK_STRING,
	PK_STRINGS,
	PK_ENUM,
	PK_SID,
	PK_DATETIME
} TwilioParamKind;

typedef struct TwilioParamSpec
{
	const char *name;
	TwilioParamKind	kind;
	const char *extra;			/* enum values (space separated) or SID prefix */
	int			min;			/* PK_INT bounds, when max > min */
	int			max;
} TwilioParamSpec;

/*
 * The optional request fields of Twilio's CreateMessage (OpenAPI spec
 * 2010-04-01) that have no argument of their own.
 */
static const TwilioParamSpec param_specs[] = {
	{"AddressRetention", PK_ENUM, "retain obfuscate", 0, 0},
	{"ApplicationSid", PK_SID, "AP", 0, 0},
	{"Attempt", PK_INT, NULL, 1, 1000},
	{"ContentRetention", PK_ENUM, "retain discard", 0, 0},
	{"FallbackFrom", PK_STRING, NULL, 0, 0},
	{"ForceDelivery", PK_BOOL, NULL, 0, 0},
	{"MaxPrice", PK_NUMBER, NULL, 0, 0},
	{"PersistentAction", PK_STRINGS, NULL, 0, 0},
	{"ProvideFeedback", PK_BOOL, NULL, 0, 0},
	{"RiskCheck", PK_ENUM, "enable disable", 0, 0},
	{"ScheduleType", PK_ENUM, "fixed", 0, 0},
	{"SendAsMms", PK_BOOL, NULL, 0, 0},
	{"SendAt", PK_DATETIME, NULL, 0, 0},
	{"ShortenUrls", PK_BOOL, NULL, 0, 0},
	{"SmartEncoded", PK_BOOL, NULL, 0, 0},
	{"TrafficType", PK_ENUM, "free", 0, 0},
	{"ValidityPeriod", PK_INT, NULL, 1, 36000},
};

/* Request fields that twilio_enqueue() takes as arguments of its own. */
static const char *const reserved_params[][2] = {
	{"To", "to_number"},
	{"From", "from_number"},
	{"MessagingServiceSid", "messaging_service_sid"},
	{"Body", "body"},
	{"MediaUrl", "media_urls"},
	{"StatusCallback", "status_callback"},
	{"ContentSid", "content_sid"},
	{"ContentVariables", "content_variables"},
};

/* Plans prepared on first use and kept for the life of the backend. */
typedef enum SenderLookup
{
	LOOKUP_BY_FROM,
	LOOKUP_BY_SERVICE,
	LOOKUP_DEFAULT,
	NUM_LOOKUPS
} SenderLookup;

static SPIPlanPtr lookup_plans[NUM_LOOKUPS];
static SPIPlanPtr find_dedupe_plan;

/* pg_catalog alone, not even pg_temp */
static OverrideSearchPath pinned_path = {NIL, true, false, 0};

/* What the lookup found: the account and the sender resolved for it. */
typedef struct ResolvedSender
{
	char	   *account;
	bool		has_sender;
	int64		sender_id;
	char	   *from_number;
	char	   *service_sid;
	bool		suppressed;
} ResolvedSender;

/*
 * A text argument as a C string, or NULL when SQL NULL.  An empty string is
 * refused: a caller that passes '' almost always meant something else.
 */
static char *
text_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	char	   *s;

	if (PG_ARGISNULL(argno))
		return NULL;
	s = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (*s == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name),
				 errhint("Pass NULL, or leave the argument out, to omit it.")));
	return s;
}

/* Refuse CR, LF and other control characters in a header or URL value. */
static void
check_no_control(const char *value, const char *name)
{
	if (value != NULL && outbox_has_control(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain control characters", name)));
}

static void
check_url(const char *url, const char *name)
{
	if (!outbox_is_http_url(url))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s \"%s\"", name, url),
				 errdetail("It must be an absolute http:// or https:// URL of at most %d bytes, without spaces or control characters.",
						   OUTBOX_MAX_URL_LENGTH)));
}

/*
 * Media URLs: a one-dimensional array of at most ten http(s) URLs, no NULL
 * element.  Returns the number of URLs (0 for NULL or an empty array).
 */
static int
check_media(FunctionCallInfo fcinfo)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (PG_ARGISNULL(ARG_MEDIA))
		return 0;
	arr = PG_GETARG_ARRAYTYPE_P(ARG_MEDIA);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("media_urls must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n > OUTBOX_MAX_MEDIA_URLS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many media URLs"),
				 errdetail("The message has %d media URLs; Twilio accepts at most %d.",
						   n, OUTBOX_MAX_MEDIA_URLS)));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("media_urls must not contain NULL")));
		check_url(TextDatumGetCString(elems[i]), "media URL");
	}
	return n;
}

static void
param_error(const char *key, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for Twilio parameter \"%s\"", key),
			 errdetail("%s", detail)));
}

/*
 * SendAt: an ISO 8601 date-time with a zone ("2026-12-01T09:30:00Z"), in the
 * future and no more than 35 days ahead, the most Twilio schedules.
 */
static void
check_send_at(const char *key, const char *s)
{
	static const char pattern[] = "dddd-dd-ddTdd:dd:dd";
	const char *p = s;
	TimestampTz t;
	int			i;

	for (i = 0; pattern[i]; i++, p++)
	{
		if (pattern[i] == 'd' ? !isdigit((unsigned char) *p) : *p != pattern[i])
			param_error(key, "It must be an ISO 8601 date-time such as 2026-12-01T09:30:00Z.");
	}
	if (*p == '.')
		for (p++; isdigit((unsigned char) *p); p++)
			;
	if (!(strcmp(p, "Z") == 0 ||
		  ((p[0] == '+' || p[0] == '-') && isdigit((unsigned char) p[1]) &&
		   isdigit((unsigned char) p[2]) && p[3] == ':' && isdigit((unsigned char) p[4]) &&
		   isdigit((unsigned char) p[5]) && p[6] == '\0')))
		param_error(key, "It must be an ISO 8601 date-time with a zone (Z or +hh:mm).");
	t = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(s),
												ObjectIdGetDatum(InvalidOid),
												Int32GetDatum(-1)));
	if (t <= GetCurrentTimestamp() ||
		t > GetCurrentTimestamp() + (int64) 35 * USECS_PER_DAY)
		param_error(key, "Twilio schedules messages up to 35 days ahead, never in the past.");
}

/* Check one value of params against what Twilio's spec says of its key. */
static void
check_param_value(const TwilioParamSpec *spec, JsonbValue *v)
{
	switch (spec->kind)
	{
		case PK_BOOL:
			if (v->type != jbvBool)
				param_error(spec->name, "It must be true or false.");
			break;
		case PK_NUMBER:
			if (v->type != jbvNumeric)
				param_error(spec->name, "It must be a number.");
			break;
		case PK_INT:
			{
				int32		n;

				if (v->type != jbvNumeric)
					param_error(spec->name, "It must be a whole number.");
				n = DatumGetInt32(DirectFunctionCall1(numeric_int4,
													  NumericGetDatum(v->val.numeric)));
				if (DatumGetBool(DirectFunctionCall2(numeric_ne,
													 NumericGetDatum(v->val.numeric),
													 DirectFunctionCall1(int4_numeric, Int32GetDatum(n)))))
					param_error(spec->name, "It must be a whole number.");
				if (n < spec->min || n > spec->max)
					param_error(spec->name,
								psprintf("It must be between %d and %d.", spec->min, spec->max));
				break;
			}
		case PK_STRING:
		case PK_STRINGS:
		case PK_ENUM:
		case PK_SID:
		case PK_DATETIME:
			{
				char	   *s;

				if (v->type != jbvString)
					param_error(spec->name, "It must be a string.");
				s = pnstrdup(v->val.string.val, v->val.string.len);
				if (*s == '\0' || outbox_has_control(s))
					param_error(spec->name, "It must be a non-empty string without control characters.");
				if (spec->kind == PK_DATETIME)
					check_send_at(spec->name, s);
				if (spec->kind == PK_SID && !outbox_is_sid(s, spec->extra))
					param_error(spec->name,
								psprintf("It must be %s followed by 32 hexadecimal digits.", spec->extra));
				if (spec->kind == PK_ENUM)
				{
					char	   *values = pstrdup(spec->extra);
					char	   *tok;
					bool		found = false;

					for (tok = strtok(values, " "); tok != NULL; tok = strtok(NULL, " "))
						found |= (strcmp(tok, s) == 0);
					if (!found)
						param_error(spec->name,
									psprintf("It must be one of: %s.", spec->extra));
				}
				break;
			}
	}
}

static const TwilioParamSpec *
find_param_spec(const char *key)
{
	int			i;

	for (i = 0; i < (int) lengthof(reserved_params); i++)
	{
		if (strcmp(key, reserved_params[i][0]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("Twilio parameter \"%s\" must not be given in params", key),
					 errhint("Pass it as the argument %s of twilio_enqueue().",
							 reserved_params[i][1])));
	}
	for (i = 0; i < (int) lengthof(param_specs); i++)
	{
		if (strcmp(key, param_specs[i].name) == 0)
			return &param_specs[i];
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown Twilio parameter \"%s\"", key),
			 errhint("params takes the optional fields of Twilio's Messages API by their API names, such as ValidityPeriod or SendAt.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * params: a JSON object of further CreateMessage fields, each checked for
 * name and type.  Sets *has_schedule / *has_send_at for the caller's
 * cross-field checks.
 */
static void
check_params(Jsonb *params, bool *has_schedule, bool *has_send_at)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	const TwilioParamSpec *spec = NULL;
	int			depth = 0;

	*has_schedule = *has_send_at = false;
	if (!JB_ROOT_IS_OBJECT(params) || JB_ROOT_IS_SCALAR(params))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("params must be a JSON object")));

	it = JsonbIteratorInit(&params->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
			case WJB_BEGIN_ARRAY:
				if (depth == 1 && (tok == WJB_BEGIN_OBJECT || spec->kind != PK_STRINGS))
					param_error(spec->name, "It must be a scalar value.");
				if (depth == 2)
					param_error(spec->name, "It must be an array of strings.");
				depth++;
				break;
			case WJB_END_OBJECT:
			case WJB_END_ARRAY:
				depth--;
				break;
			case WJB_KEY:
				{
					char	   *key = pnstrdup(v.val.string.val, v.val.string.len);

					spec = find_param_spec(key);
					*has_schedule |= strcmp(key, "ScheduleType") == 0;
					*has_send_at |= strcmp(key, "SendAt") == 0;
					break;
				}
			case WJB_VALUE:
				if (spec->kind == PK_STRINGS)
					param_error(spec->name, "It must be an array of strings.");
				check_param_value(spec, &v);
				break;
			case WJB_ELEM:
				check_param_value(spec, &v);
				break;
			case WJB_DONE:
				break;
		}
	}
}

/* A version 4 (random) UUID from the strong random source. */
static Datum
random_uuid(void)
{
	pg_uuid_t  *uuid = palloc(UUID_LEN);

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return UUIDPGetDatum(uuid);
}

/*
 * Find the account (the named one, or the default) and the sender the
 * message names (by from-number or Messaging Service SID, or the account's
 * default), and whether the recipient is suppressed there.
 */
static void
resolve_sender(const char *account, const char *from, const char *service,
			   const char *to, ResolvedSender *out)
{
	static const char *const sender_match[NUM_LOOKUPS] = {
		"s.from_number OPERATOR(pg_catalog.=) $2",
		"s.messaging_service_sid OPERATOR(pg_catalog.=) $2",
		"s.is_default AND $2::text IS NULL",
	};
	SenderLookup which = from ? LOOKUP_BY_FROM : service ? LOOKUP_BY_SERVICE : LOOKUP_DEFAULT;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	SPIPlanPtr	plan;
	bool		isnull;
	int			rc;

	if (lookup_plans[which] == NULL)
	{
		char	   *sql = psprintf(
								   "SELECT a.name, s.id, s.from_number, s.messaging_service_sid,"
								   " EXISTS (SELECT 1 FROM twilio_outbox.suppressed_recipients r"
								   "  WHERE r.account OPERATOR(pg_catalog.=) a.name"
								   "  AND r.to_number OPERATOR(pg_catalog.=) $3)"
								   " FROM twilio_outbox.accounts a"
								   " LEFT JOIN twilio_outbox.senders s"
								   "  ON s.account OPERATOR(pg_catalog.=) a.name AND %s"
								   " WHERE CASE WHEN $1 IS NULL THEN a.is_default"
								   "  ELSE a.name OPERATOR(pg_catalog.=) $1 END",
								   sender_match[which]);

		outbox_prepare(&lookup_plans[which], sql, 3, argtypes);
	}
	plan = lookup_plans[which];

	values[0] = account ? CStringGetTextDatum(account) : (Datum) 0;
	nulls[0] = account ? ' ' : 'n';
	values[1] = from ? CStringGetTextDatum(from) :
		service ? CStringGetTextDatum(service) : (Datum) 0;
	nulls[1] = (from || service) ? ' ' : 'n';
	values[2] = CStringGetTextDatum(to);

	rc = SPI_execute_plan(plan, values, nulls, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "account lookup failed: %s", SPI_result_code_string(rc));

	if (SPI_processed == 0)
	{
		if (account)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("account \"%s\" does not exist", account)));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no default account is configured"),
				 errhint("Pass account, or set is_default on one row of twilio_outbox.accounts.")));
	}

	out->account = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	out->sender_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 2, &isnull));
	out->has_sender = !isnull;
	out->from_number = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	out->service_sid = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	out->suppressed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 5, &isnull));

	if (!out->has_sender)
	{
		if (from || service)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("sender \"%s\" does not exist in account \"%s\"",
							from ? from : service, out->account),
					 errhint("Add it to twilio_outbox.senders first.")));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no sender given and account \"%s\" has no default sender",
						out->account),
				 errhint("Pass from_number or messaging_service_sid, or set is_default on one of the account's senders.")));
	}
	if (out->suppressed)
		ereport(ERROR,
				(errcode(ERRCODE_OUTBOX_RECIPIENT_SUPPRESSED),
				 errmsg("recipient \"%s\" is suppressed in account \"%s\"",
						to, out->account),
				 errdetail("The recipient opted out or was suppressed by an operator."),
				 errhint("See twilio_outbox.suppressed_recipients.")));
}

/*
 * The insert, resolving the account and sender and checking suppression,
 * channel and scheduling in the same statement: one round through the
 * executor for a message that is fine.  Returns false when no row went in
 * (a check failed, or the dedupe key exists); the caller finds out which.
 */
static bool
try_insert(SenderLookup which, Datum *values, const char *nulls, int64 *id)
{
	static SPIPlanPtr plans[NUM_LOOKUPS];
	static const char *const sender_match[NUM_LOOKUPS] = {
		"s.from_number OPERATOR(pg_catalog.=) $2",
		"s.messaging_service_sid OPERATOR(pg_catalog.=) $2",
		"s.is_default AND $2::text IS NULL",
	};
	static Oid	argtypes[] = {
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID, TEXTOID, JSONBOID,
		TEXTOID, JSONBOID, TEXTOID, INT4OID, UUIDOID, TEXTOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, NAMEOID, TEXTOID, BOOLOID
	};
	bool		isnull;
	int			rc;

	if (plans[which] == NULL)
		outbox_prepare(&plans[which],
					   psprintf("INSERT INTO twilio_outbox.messages (account, sender_id,"
								" to_number, from_number, messaging_service_sid, body, media_urls,"
								" content_sid, content_variables, status_callback, params,"
								" encoding, segments, idempotency_key, dedupe_key, send_after,"
								" expires_at, next_attempt_at, enqueued_by)"
								" SELECT a.name, s.id, $3, s.from_number, s.messaging_service_sid,"
								" $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
								" GREATEST($14, pg_catalog.now()), $16"
								" FROM twilio_outbox.accounts a"
								" JOIN twilio_outbox.senders s"
								"  ON s.account OPERATOR(pg_catalog.=) a.name AND %s"
								" WHERE CASE WHEN $1 IS NULL THEN a.is_default"
								"  ELSE a.name OPERATOR(pg_catalog.=) $1 END"
								" AND NOT EXISTS (SELECT 1 FROM twilio_outbox.suppressed_recipients r"
								"  WHERE r.account OPERATOR(pg_catalog.=) a.name"
								"  AND r.to_number OPERATOR(pg_catalog.=) $3)"
								" AND (s.from_number IS NULL OR COALESCE("
								"  pg_catalog.substring(s.from_number, '^([a-z]+):'), '')"
								"  OPERATOR(pg_catalog.=) $17)"
								" AND (NOT $18 OR s.messaging_service_sid IS NOT NULL)"
								" ON CONFLICT (account, dedupe_key) WHERE dedupe_key IS NOT NULL"
								" DO NOTHING RETURNING id",
								sender_match[which]),
					   lengthof(argtypes), argtypes);

	rc = SPI_execute_plan(plans[which], values, nulls, false, 1);
	if (rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "insert into the outbox failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		return false;
	*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return true;
}

/*
 * The message with this dedupe key, enqueued before.  In READ COMMITTED a
 * concurrent insert of the same key made ours wait for the other
 * transaction; it committed, so this statement's snapshot sees its row.
 */
static int64
find_dedupe(const char *account, const char *dedupe_key)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	bool		isnull;
	int			rc;

	outbox_prepare(&find_dedupe_plan,
				   "SELECT id FROM twilio_outbox.messages"
				   " WHERE account OPERATOR(pg_catalog.=) $1"
				   " AND dedupe_key OPERATOR(pg_catalog.=) $2",
				   2, types);
	values[0] = CStringGetTextDatum(account);
	values[1] = CStringGetTextDatum(dedupe_key);
	rc = SPI_execute_plan(find_dedupe_plan, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not find the message with dedupe key \"%s\"", dedupe_key),
				 errdetail("A concurrent transaction holds that key."),
				 errhint("Retry the transaction.")));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * twilio_enqueue(to_number, body, from_number, messaging_service_sid,
 *				  media_urls, status_callback, send_after, expires_at,
 *				  dedupe_key, account, content_sid, content_variables, params)
 *
 * Returns the id of the queued message (of the existing one for a dedupe
 * key seen before).  Raises on bad input before changing anything.
 */
Datum
twilio_enqueue(PG_FUNCTION_ARGS)
{
	char	   *to = text_arg(fcinfo, ARG_TO, "to_number");
	char	   *body = PG_ARGISNULL(ARG_BODY) ? NULL :
		text_to_cstring(PG_GETARG_TEXT_PP(ARG_BODY));
	char	   *from = text_arg(fcinfo, ARG_FROM, "from_number");
	char	   *service = text_arg(fcinfo, ARG_SERVICE, "messaging_service_sid");
	char	   *callback = text_arg(fcinfo, ARG_CALLBACK, "status_callback");
	char	   *dedupe_key = text_arg(fcinfo, ARG_DEDUPE, "dedupe_key");
	char	   *account = text_arg(fcinfo, ARG_ACCOUNT, "account");
	char	   *content_sid = text_arg(fcinfo, ARG_CONTENT_SID, "content_sid");
	bool		has_vars = !PG_ARGISNULL(ARG_CONTENT_VARS);
	bool		has_params = !PG_ARGISNULL(ARG_PARAMS);
	bool		has_schedule = false;
	bool		has_send_at = false;
	TimestampTz now = GetCurrentTimestamp();
	OutboxSegments seg;
	ResolvedSender sender;
	int			nmedia;
	Datum		values[18];
	char		nulls[18];
	int64		id;

	/* The recipient. */
	if (PG_ARGISNULL(ARG_TO))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("to_number must not be null")));
	check_no_control(to, "to_number");
	if (!outbox_is_recipient(to))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid recipient \"%s\"", to),
				 errdetail("A recipient is an E.164 number, a plus sign and 2 to 15 digits not starting with 0 (+14155552671), or a channel address such as whatsapp:+14155552671.")));

	/* The sender, if named. */
	if (from && service)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_number and messaging_service_sid cannot both be given"),
				 errhint("Name one sender, or neither to use the account's default sender.")));
	check_no_control(from, "from_number");
	if (service && !outbox_is_sid(service, "MG"))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Messaging Service SID \"%s\"", service),
				 errdetail("A Messaging Service SID is MG followed by 32 hexadecimal digits.")));

	/* The content. */
	if (body && *body == '\0')
		body = NULL;
	if (content_sid && !outbox_is_sid(content_sid, "HX"))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Content SID \"%s\"", content_sid),
				 errdetail("A Content SID is HX followed by 32 hexadecimal digits.")));
	if (has_vars)
	{
		Jsonb	   *vars = PG_GETARG_JSONB_P(ARG_CONTENT_VARS);

		if (content_sid == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("content_variables requires content_sid")));
		if (!JB_ROOT_IS_OBJECT(vars) || JB_ROOT_IS_SCALAR(vars))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("content_variables must be a JSON object")));
	}
	nmedia = check_media(fcinfo);
	if (body == NULL && nmedia == 0 && content_sid == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has no content"),
				 errhint("Pass body, media_urls or content_sid.")));
	outbox_count_segments(body ? (char *) pg_server_to_any(body, strlen(body), PG_UTF8) : "",
						  &seg);
	if (seg.chars > OUTBOX_MAX_BODY_CHARS)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("message body is too long"),
				 errdetail("The body has %d characters; Twilio accepts at most %d.",
						   seg.chars, OUTBOX_MAX_BODY_CHARS)));
	if (callback)
		check_url(callback, "status_callback URL");

	/* When. */
	if (!PG_ARGISNULL(ARG_EXPIRES_AT))
	{
		TimestampTz expires = PG_GETARG_TIMESTAMPTZ(ARG_EXPIRES_AT);

		if (expires <= now)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("expires_at is already past"),
					 errdetail("A message that has expired is never sent.")));
		if (!PG_ARGISNULL(ARG_SEND_AFTER) && PG_GETARG_TIMESTAMPTZ(ARG_SEND_AFTER) >= expires)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("send_after must be earlier than expires_at")));
	}
	if (dedupe_key && strlen(dedupe_key) > MAX_DEDUPE_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("dedupe_key is too long"),
				 errdetail("A dedupe key has at most %d bytes.", MAX_DEDUPE_KEY_BYTES)));
	if (has_params)
		check_params(PG_GETARG_JSONB_P(ARG_PARAMS), &has_schedule, &has_send_at);
	if (has_schedule != has_send_at)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Twilio parameters ScheduleType and SendAt go together")));

	/* Only now the database: one statement when all is well. */
	memset(nulls, ' ', sizeof(nulls));
	values[0] = account ? CStringGetTextDatum(account) : (Datum) 0;
	nulls[0] = account ? ' ' : 'n';
	values[1] = from ? CStringGetTextDatum(from) :
		service ? CStringGetTextDatum(service) : (Datum) 0;
	nulls[1] = (from || service) ? ' ' : 'n';
	values[2] = CStringGetTextDatum(to);
	values[3] = body ? CStringGetTextDatum(body) : (Datum) 0;
	nulls[3] = body ? ' ' : 'n';
	values[4] = nmedia > 0 ? PG_GETARG_DATUM(ARG_MEDIA) : (Datum) 0;
	nulls[4] = nmedia > 0 ? ' ' : 'n';
	values[5] = content_sid ? CStringGetTextDatum(content_sid) : (Datum) 0;
	nulls[5] = content_sid ? ' ' : 'n';
	values[6] = has_vars ? PG_GETARG_DATUM(ARG_CONTENT_VARS) : (Datum) 0;
	nulls[6] = has_vars ? ' ' : 'n';
	values[7] = callback ? CStringGetTextDatum(callback) : (Datum) 0;
	nulls[7] = callback ? ' ' : 'n';
	values[8] = has_params ? PG_GETARG_DATUM(ARG_PARAMS) : (Datum) 0;
	nulls[8] = has_params ? ' ' : 'n';
	values[9] = CStringGetTextDatum(outbox_encoding_name(seg.encoding));
	values[10] = Int32GetDatum(seg.segments);
	values[11] = random_uuid();
	values[12] = dedupe_key ? CStringGetTextDatum(dedupe_key) : (Datum) 0;
	nulls[12] = dedupe_key ? ' ' : 'n';
	values[13] = PG_GETARG_DATUM(ARG_SEND_AFTER);
	nulls[13] = PG_ARGISNULL(ARG_SEND_AFTER) ? 'n' : ' ';
	values[14] = PG_GETARG_DATUM(ARG_EXPIRES_AT);
	nulls[14] = PG_ARGISNULL(ARG_EXPIRES_AT) ? 'n' : ' ';
	/* the role that called us, not the definer we run as */
	values[15] = DirectFunctionCall1(namein,
									 CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));
	values[16] = CStringGetTextDatum(outbox_channel_of(to) ? outbox_channel_of(to) : "");
	values[17] = BoolGetDatum(has_schedule);

	/*
	 * Our queries resolve names in pg_catalog only, whatever the caller's
	 * search_path (we run as the owner: a caller's schema must never supply
	 * an operator or a function), and the saved plans are never re-planned
	 * for a caller's path.  Cheaper than a SET clause: no GUC work per call.
	 * An error pops it with the transaction.
	 */
	PushOverrideSearchPath(&pinned_path);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!try_insert(from ? LOOKUP_BY_FROM : service ? LOOKUP_BY_SERVICE : LOOKUP_DEFAULT,
					values, nulls, &id))
	{
		/* Nothing went in: say why, or it was a dedupe key seen before. */
		resolve_sender(account, from, service, to, &sender);
		if (has_schedule && sender.service_sid == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a scheduled send (ScheduleType) requires a Messaging Service sender")));
		if (sender.from_number &&
			outbox_channel_of(sender.from_number) != outbox_channel_of(to))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("sender \"%s\" cannot send to \"%s\"", sender.from_number, to),
					 errdetail("Sender and recipient must use the same channel.")));
		if (dedupe_key == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not enqueue the message: its account or sender changed meanwhile"),
					 errhint("Retry the transaction.")));
		id = find_dedupe(sender.account, dedupe_key);
	}
	SPI_finish();
	PopOverrideSearchPath();

	outbox_wake_at_commit();
	PG_RETURN_INT64(id);
}
