/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *		twilio_enqueue(): validate a message and insert it into the outbox in
 *		the caller's transaction (the optional fields in params are checked
 *		by params.c).
 *
 * Everything that can be checked without the database is checked before the
 * first query, so bad input costs nothing and leaves nothing behind.  The
 * function is SECURITY DEFINER: the application role needs EXECUTE on it and
 * nothing else.  The account, sender, account_roles and suppression are
 * read by index probes (enqueue_lookup.c), then one plain INSERT writes the
 * message, both under one snapshot.  Queries go through plans prepared once
 * per backend, under a search path of pg_catalog alone, pushed for the
 * duration of the call.  Errors quote user input through outbox_clip: never
 * more than a short prefix, whatever the caller passed.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"
#include "campaign.h"

#include <ctype.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(twilio_enqueue);
PG_FUNCTION_INFO_V1(twilio_outbox_account_roles_changed);

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
	ARG_PARAMS,
	ARG_PRIORITY,
	ARG_TRAFFIC_CLASS,
	ARG_CAMPAIGN,
	ARG_TIME_ZONE,
	ARG_FALLBACK
};

/*
 * priority => 'high' | 'normal' | 'low', stored as 0, 1, 2 (the order of
 * the due index); NULL is 'normal', what every 0.1 call gets.
 */
static int16
priority_arg(FunctionCallInfo fcinfo)
{
	static const char *const levels[] = {"high", "normal", "low"};
	char	   *s;

	if (PG_NARGS() <= ARG_PRIORITY || PG_ARGISNULL(ARG_PRIORITY))
		return 1;
	s = text_to_cstring(PG_GETARG_TEXT_PP(ARG_PRIORITY));
	for (int i = 0; i < (int) lengthof(levels); i++)
		if (strcmp(s, levels[i]) == 0)
			return (int16) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid priority \"%s\"", outbox_clip(s)),
			 errhint("The priorities are high, normal (the default) and low.")));
	return 1;					/* not reached */
}

/* traffic_class => 'transactional' (the default) | 'marketing' */
static const char *
traffic_class_arg(FunctionCallInfo fcinfo)
{
	char	   *s;

	if (PG_NARGS() <= ARG_TRAFFIC_CLASS || PG_ARGISNULL(ARG_TRAFFIC_CLASS))
		return "transactional";
	s = text_to_cstring(PG_GETARG_TEXT_PP(ARG_TRAFFIC_CLASS));
	if (strcmp(s, "transactional") != 0 && strcmp(s, "marketing") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid traffic class \"%s\"", outbox_clip(s)),
				 errhint("The traffic classes are transactional (the default) and marketing.")));
	return s;
}

#define MAX_DEDUPE_KEY_BYTES 255

/* Content API limits (twilio.com/docs/content/using-variables-with-content-api). */
#define MAX_CONTENT_VARIABLES	100
#define MAX_CONTENT_KEY_CHARS	16
#define MAX_CONTENT_VALUE_CHARS 1600

/* How far ahead send_after and expires_at may lie: every message must end. */
#define MAX_SCHEDULE_DAYS		366

/* Plans prepared on first use and kept for the life of the backend. */
typedef enum SenderLookup
{
	LOOKUP_BY_FROM,
	LOOKUP_BY_SERVICE,
	LOOKUP_DEFAULT,
	NUM_LOOKUPS
} SenderLookup;

/* Plans by sender lookup and by whether account_roles exists (the fallback). */
static SPIPlanPtr lookup_plans[NUM_LOOKUPS][2];
static SPIPlanPtr find_dedupe_plan;

/*
 * The caller may use the account: when account_roles lists roles for it,
 * the caller ($4, an OID) must be one of them or a member of one; with no
 * row for the account, anyone who may enqueue may use it.  One index probe.
 * A row naming a role dropped since grants nothing (pg_has_role of a
 * missing OID is false).
 */
#define ACCOUNT_ALLOWED(param) \
	"COALESCE((SELECT pg_catalog.bool_or(pg_catalog.pg_has_role(" param "," \
	" x.role::pg_catalog.oid, 'MEMBER')) FROM twilio_outbox.account_roles x" \
	" WHERE x.account OPERATOR(pg_catalog.=) a.name), true)"

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
				 errmsg("invalid %s \"%s\"", name, outbox_clip(url)),
				 errdetail("It must be an absolute http:// or https:// URL of at most %d bytes, with a host name or address (no underscore), in ASCII (percent-encode anything else), without spaces, control characters or any of \"<>\\^`{|}.",
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
	n = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	if (n > OUTBOX_MAX_MEDIA_URLS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many media URLs"),
				 errdetail("The message has %d media URLs; Twilio accepts at most %d.",
						   n, OUTBOX_MAX_MEDIA_URLS)));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
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

/*
 * content_variables: what Twilio's Content API takes, a flat JSON object of
 * at most 100 variables, each key 1 to 16 characters without white space,
 * each value a non-empty string of at most 1,600 characters (Twilio answers
 * 21656 to null or empty values).
 */
static void
check_content_variables(Jsonb *vars)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	int			n = 0;

	if (!JB_ROOT_IS_OBJECT(vars) || JB_ROOT_IS_SCALAR(vars))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("content_variables must be a JSON object")));
	if (JB_ROOT_COUNT(vars) > MAX_CONTENT_VARIABLES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many content variables"),
				 errdetail("content_variables has %d variables; a template has at most %d.",
						   (int) JB_ROOT_COUNT(vars), MAX_CONTENT_VARIABLES)));

	it = JsonbIteratorInit(&vars->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			int			chars;
			int			i;

			key = pnstrdup(v.val.string.val, v.val.string.len);
			chars = pg_mbstrlen(key);
			for (i = 0; key[i]; i++)
			{
				if (isspace((unsigned char) key[i]) || (unsigned char) key[i] < 0x20 ||
					key[i] == 0x7f || key[i] == '{' || key[i] == '}')
					break;
			}
			if (chars < 1 || chars > MAX_CONTENT_KEY_CHARS || key[i] != '\0')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid content variable name \"%s\"", outbox_clip(key)),
						 errdetail("A variable name has 1 to %d characters, without spaces, control characters or braces.",
								   MAX_CONTENT_KEY_CHARS)));
			n++;
		}
		else if (tok == WJB_VALUE)
		{
			char	   *val;
			const char *utf8;

			if (v.type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("content variable \"%s\" must be a string", outbox_clip(key)),
						 errdetail("content_variables is a flat JSON object of string values, such as {\"1\": \"Ada\"}.")));
			val = pnstrdup(v.val.string.val, v.val.string.len);
			utf8 = pg_server_to_any(val, v.val.string.len, PG_UTF8);
			if (outbox_text_has_control(utf8))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("content variable \"%s\" must not contain control characters",
								outbox_clip(key)),
						 errdetail("Tab, line feed, carriage return and form feed are the only control characters a variable may contain.")));
			if (outbox_is_blank(utf8))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("content variable \"%s\" must not be empty", outbox_clip(key)),
						 errdetail("Twilio refuses empty variables (21656); leave the variable out to use the template's default.")));
			if (pg_mbstrlen(val) > MAX_CONTENT_VALUE_CHARS)
				ereport(ERROR,
						(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
						 errmsg("content variable \"%s\" is too long", outbox_clip(key)),
						 errdetail("A variable's value has at most %d characters.",
								   MAX_CONTENT_VALUE_CHARS)));
		}
	}
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("content_variables must not be an empty object"),
				 errhint("Leave content_variables out to use the template's defaults.")));
}

/*
 * send_after and expires_at: finite, within MAX_SCHEDULE_DAYS, expires_at
 * in the future and after send_after, so that every message accepted is
 * sent or expires, some day.
 */
static void
check_times(FunctionCallInfo fcinfo, TimestampTz now)
{
	TimestampTz horizon = now + (int64) MAX_SCHEDULE_DAYS * USECS_PER_DAY;
	bool		has_after = !PG_ARGISNULL(ARG_SEND_AFTER);
	bool		has_expiry = !PG_ARGISNULL(ARG_EXPIRES_AT);
	TimestampTz after = has_after ? PG_GETARG_TIMESTAMPTZ(ARG_SEND_AFTER) : 0;
	TimestampTz expires = has_expiry ? PG_GETARG_TIMESTAMPTZ(ARG_EXPIRES_AT) : 0;

	if ((has_after && TIMESTAMP_NOT_FINITE(after)) ||
		(has_expiry && TIMESTAMP_NOT_FINITE(expires)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a finite time", has_after && TIMESTAMP_NOT_FINITE(after) ?
						"send_after" : "expires_at"),
				 errdetail("A message that is never due or never expires would never end."),
				 errhint("Leave the argument out (NULL) for \"now\" or \"never expires\".")));
	if (has_after && after > horizon)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("send_after is too far ahead"),
				 errdetail("A message can be scheduled at most %d days ahead.", MAX_SCHEDULE_DAYS)));
	if (has_expiry)
	{
		if (expires <= now)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("expires_at is already past"),
					 errdetail("A message that has expired is never sent.")));
		if (expires > horizon)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("expires_at is too far ahead"),
					 errdetail("A message expires at most %d days ahead; leave expires_at out for a message that never expires.",
							   MAX_SCHEDULE_DAYS)));
		if (has_after && after >= expires)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("send_after must be earlier than expires_at")));
	}
}

/*
 * A version 4 (random) UUID from the strong random source.  The bytes are
 * drawn 64 keys at a time: one pg_strong_random() call costs about 8,500
 * instructions whatever its length (OpenSSL's per-call work), 16 bytes or
 * 1,024, which was 1.6 % of an enqueue.  The pool is per backend and filled
 * only once one enqueues (PostgreSQL forks its processes from the
 * postmaster, never from a backend, so no two processes share a pool);
 * each byte is used once.
 */
#define UUID_POOL_KEYS 64

static Datum
random_uuid(void)
{
	static uint8 pool[UUID_POOL_KEYS * UUID_LEN];
	static int	pool_next = UUID_POOL_KEYS;
	pg_uuid_t  *uuid = palloc(UUID_LEN);

	if (pool_next >= UUID_POOL_KEYS)
	{
		if (!pg_strong_random(pool, sizeof(pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		pool_next = 0;
	}
	memcpy(uuid->data, pool + pool_next * UUID_LEN, UUID_LEN);
	/* not needed again: nothing of it stays in memory for longer */
	memset(pool + pool_next * UUID_LEN, 0, UUID_LEN);
	pool_next++;
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return UUIDPGetDatum(uuid);
}

/*
 * Whether account_roles has any row, cached per backend so that enqueueing
 * costs nothing extra while no deployment uses it, and one index probe of
 * the table (inside the insert) once it does.  The cache is dropped on any
 * relcache invalidation of the table, which the statement trigger
 * account_roles_changed sends at the commit of every change to its rows
 * (DDL sends one anyway); the generation counter keeps an answer computed
 * while an invalidation arrived from being cached.  Before ALTER EXTENSION
 * UPDATE the table does not exist and nothing is restricted (nothing is
 * cached either: two syscache probes per call, until the update).
 */
typedef enum RolesState
{
	ROLES_UNKNOWN,
	ROLES_UNUSED,
	ROLES_IN_USE
} RolesState;

static RolesState roles_state = ROLES_UNKNOWN;
static Oid	roles_relid = InvalidOid;
static uint64 roles_generation = 0;
static bool roles_callback_registered = false;

static void
roles_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == roles_relid)
	{
		roles_state = ROLES_UNKNOWN;
		roles_generation++;
	}
}

/* SPI connected, under the pinned search path. */
static bool
account_roles_in_use(void)
{
	static SPIPlanPtr plan = NULL;
	Oid			nsp;
	Oid			relid;
	uint64		generation;
	bool		in_use;
	bool		isnull;

	if (!roles_callback_registered)
	{
		CacheRegisterRelcacheCallback(roles_invalidate, (Datum) 0);
		roles_callback_registered = true;
	}
	if (roles_state != ROLES_UNKNOWN)
		return roles_state == ROLES_IN_USE;

	nsp = get_namespace_oid(OUTBOX_SCHEMA, true);
	relid = OidIsValid(nsp) ? get_relname_relid("account_roles", nsp) : InvalidOid;
	if (!OidIsValid(relid))
		return false;
	roles_relid = relid;
	generation = roles_generation;
	outbox_prepare(&plan, "SELECT EXISTS (SELECT FROM twilio_outbox.account_roles)", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read twilio_outbox.account_roles");
	in_use = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (generation == roles_generation)
		roles_state = in_use ? ROLES_IN_USE : ROLES_UNUSED;
	return in_use;
}

/*
 * twilio_outbox.account_roles_changed(): statement trigger on account_roles
 * (insert, update, delete, truncate, cascades included).  Invalidates the
 * table's relcache entry at commit, in every backend, so that their cached
 * account_roles_in_use() answers are recomputed.
 */
Datum
twilio_outbox_account_roles_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("account_roles_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/*
 * Find the account (the named one, or the default) and the sender the
 * message names (by from-number or Messaging Service SID, or the account's
 * default), and whether the recipient is suppressed there, through SQL
 * under snap: the fallback for when enqueue_lookup.c cannot probe the
 * indexes (one missing, or of another shape).  Sets *found_account.
 */
static void
resolve_sender_sql(const char *account, const char *from, const char *service,
				   const char *to, bool roles, Snapshot snap, bool *found_account,
				   OutboxResolvedSender *out)
{
	static const char *const sender_match[NUM_LOOKUPS] = {
		"s.from_number OPERATOR(pg_catalog.=) $2",
		"s.messaging_service_sid OPERATOR(pg_catalog.=) $2",
		"s.is_default AND $2::text IS NULL",
	};
	SenderLookup which = from ? LOOKUP_BY_FROM : service ? LOOKUP_BY_SERVICE : LOOKUP_DEFAULT;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, OIDOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	SPIPlanPtr	plan;
	bool		isnull;
	int			rc;

	if (lookup_plans[which][roles] == NULL)
	{
		char	   *sql = psprintf(
								   "SELECT a.name, s.id, s.from_number, s.messaging_service_sid,"
								   " EXISTS (SELECT 1 FROM twilio_outbox.suppressed_recipients r"
								   "  WHERE r.account OPERATOR(pg_catalog.=) a.name"
								   "  AND r.to_number OPERATOR(pg_catalog.=) $3),"
								   " %s AND $4 IS NOT NULL"
								   " FROM twilio_outbox.accounts a"
								   " LEFT JOIN twilio_outbox.senders s"
								   "  ON s.account OPERATOR(pg_catalog.=) a.name AND %s"
								   " WHERE CASE WHEN $1 IS NULL THEN a.is_default"
								   "  ELSE a.name OPERATOR(pg_catalog.=) $1 END",
								   roles ? ACCOUNT_ALLOWED("$4") : "true",
								   sender_match[which]);

		outbox_prepare(&lookup_plans[which][roles], sql, 4, argtypes);
	}
	plan = lookup_plans[which][roles];

	values[0] = account ? CStringGetTextDatum(account) : (Datum) 0;
	nulls[0] = account ? ' ' : 'n';
	values[1] = from ? CStringGetTextDatum(from) :
		service ? CStringGetTextDatum(service) : (Datum) 0;
	nulls[1] = (from || service) ? ' ' : 'n';
	values[2] = CStringGetTextDatum(to);
	values[3] = ObjectIdGetDatum(GetOuterUserId());

	rc = SPI_execute_snapshot(plan, values, nulls, snap, InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "account lookup failed: %s", SPI_result_code_string(rc));

	memset(out, 0, sizeof(*out));
	*found_account = SPI_processed > 0;
	if (!*found_account)
		return;
	out->account = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	out->sender_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 2, &isnull));
	out->has_sender = !isnull;
	out->from_number = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	out->service_sid = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	out->suppressed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 5, &isnull));
	out->allowed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 6, &isnull)) && !isnull;
}

/*
 * The account's quiet hours and guards, through SQL under snap: for when
 * the sender was resolved through SQL too (enqueue_lookup.c could not
 * probe).  Nothing before the update (the columns do not exist yet).
 */
static void
policy_sql(OutboxResolvedSender *out, Snapshot snap)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		value;
	OutboxPolicyColumns cols;
	Oid			nsp = get_namespace_oid(OUTBOX_SCHEMA, true);
	Oid			accounts = OidIsValid(nsp) ? get_relname_relid("accounts", nsp) : InvalidOid;

	if (!OidIsValid(accounts) || get_attnum(accounts, "allowed_country_codes") == InvalidAttrNumber)
		return;
	outbox_prepare(&plan,
				   "SELECT * FROM twilio_outbox.accounts a WHERE a.name OPERATOR(pg_catalog.=) $1",
				   1, argtypes);
	value = CStringGetTextDatum(out->account);
	if (SPI_execute_snapshot(plan, &value, NULL, snap, InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "account lookup failed");
	if (SPI_processed != 1)
		return;
	outbox_policy_columns(SPI_tuptable->tupdesc, &cols);
	outbox_read_policy(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, &cols, out);
}

/*
 * What was found, or the error that says why the message cannot go: the
 * first thing said is whether the caller may use the account at all, so
 * that a role of another account learns nothing of its senders,
 * suppressions or keys.
 */
static void
check_sender(const char *account, const char *from, const char *service, const char *to,
			 bool found_account, const OutboxResolvedSender *out)
{
	if (!found_account)
	{
		if (account)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("account \"%s\" does not exist", outbox_clip(account))));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no default account is configured"),
				 errhint("Pass account, or set is_default on one row of twilio_outbox.accounts.")));
	}
	if (!out->allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to enqueue messages with account \"%s\"",
						out->account),
				 errhint("An administrator lists the roles that may use an account in twilio_outbox.account_roles.")));
	if (!out->has_sender)
	{
		if (from || service)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("sender \"%s\" does not exist in account \"%s\"",
							outbox_clip(from ? from : service), out->account),
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
 * Run the insert; a table constraint it breaks (a CHECK or NOT NULL an
 * administrator or a later version added, stricter than the checks above)
 * becomes one 22023 naming the constraint.  PostgreSQL's own message would
 * carry the whole row in its detail ("Failing row contains ..."): the body,
 * and whatever size the caller passed, into the error and the server log.
 * Nothing is done after the error but raising ours; the transaction aborts.
 */
static int
insert_quietly(SPIPlanPtr plan, Datum *values, const char *nulls, Snapshot snap)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int rc = 0;

	PG_TRY();
	{
		rc = SPI_execute_snapshot(plan, values, nulls, snap, InvalidSnapshot, false, true, 1);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		char	   *constraint;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_CHECK_VIOLATION &&
			edata->sqlerrcode != ERRCODE_NOT_NULL_VIOLATION)
			PG_RE_THROW();
		FlushErrorState();
		constraint = edata->constraint_name ? edata->constraint_name :
			edata->column_name ? edata->column_name : "a constraint";
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message violates \"%s\" of twilio_outbox.messages", constraint),
				 errdetail("The outbox table refuses this message; see that constraint for what it requires.")));
	}
	PG_END_TRY();
	return rc;
}

/*
 * The insert, of what the caller resolved and checked, under the snapshot
 * the lookups used.  The one statement that writes a message: a change of
 * the messages table's columns changes it and MSG_* below, nothing else.
 * Without a dedupe key a plain INSERT; with one, ON CONFLICT DO NOTHING on
 * the dedupe index (the speculative insertion costs a WAL record more, so
 * only then).  Returns false when the key exists: the caller finds the
 * message it names.
 */
enum
{
	MSG_ACCOUNT, MSG_SENDER_ID, MSG_TO, MSG_FROM, MSG_SERVICE, MSG_BODY, MSG_MEDIA,
	MSG_CONTENT_SID, MSG_CONTENT_VARS, MSG_CALLBACK, MSG_PARAMS, MSG_ENCODING,
	MSG_SEGMENTS, MSG_IDEMPOTENCY_KEY, MSG_DEDUPE_KEY, MSG_SEND_AFTER, MSG_EXPIRES_AT,
	MSG_NEXT_ATTEMPT_AT, MSG_ENQUEUED_BY,
	MSG_PRIORITY, MSG_TRAFFIC_CLASS, MSG_CAMPAIGN, MSG_QUIET_ZONE,	/* issue 12 */
	MSG_CHANNEL, MSG_CHAIN_STEP, MSG_FALLBACK, MSG_FALLBACK_AT,	/* fallback chains */
	MSG_NCOLUMNS
};

/*
 * Called through the 0.1 SQL signature (v0_1: the library is 0.2, the
 * schema not updated yet), the insert names 0.1's columns only; otherwise
 * all of them (a plain message's chain columns are null).
 */
static bool
insert_message(bool dedupe, bool v0_1, Datum *values, const char *nulls, Snapshot snap, int64 *id)
{
	/* by schema, and by dedupe */
	static SPIPlanPtr plans[2][2];
	static Oid	argtypes[MSG_NCOLUMNS] = {
		TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID,
		TEXTOID, JSONBOID, TEXTOID, JSONBOID, TEXTOID, INT4OID, UUIDOID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, NAMEOID,
		INT2OID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, INT4OID, JSONBOID, TIMESTAMPTZOID
	};
	bool		isnull;
	int			rc;

	if (plans[v0_1][dedupe] == NULL)
		outbox_prepare(&plans[v0_1][dedupe],
					   psprintf("INSERT INTO twilio_outbox.messages (account, sender_id,"
								" to_number, from_number, messaging_service_sid, body, media_urls,"
								" content_sid, content_variables, status_callback, params,"
								" encoding, segments, idempotency_key, dedupe_key, send_after,"
								" expires_at, next_attempt_at, enqueued_by%s)"
								" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
								" $14, $15, $16, $17, $18, $19%s)%s RETURNING id",
								v0_1 ? "" : ", priority, traffic_class, campaign, quiet_zone,"
								" channel, chain_step, fallback, fallback_at",
								v0_1 ? "" : ", $20, $21, $22, $23, $24, $25, $26, $27",
								dedupe ? " ON CONFLICT (account, dedupe_key)"
								" WHERE dedupe_key IS NOT NULL DO NOTHING" : ""),
					   v0_1 ? MSG_PRIORITY : MSG_NCOLUMNS, argtypes);

	rc = insert_quietly(plans[v0_1][dedupe], values, nulls, snap);
	if (rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "insert into the outbox failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		return false;
	*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return true;
}

/*
 * fallback: checked and resolved by twilio_outbox.chain_check() (the steps'
 * shapes, channels, times and senders, with its SQLSTATEs), once the
 * head's account and sender are known.  Fills the chain's columns of the
 * head: channel, step 0, the steps as stored, and its timer (the first
 * step's after, counted from when the head is due).  SPI connected, under
 * the pinned search path and snap.
 */
static void
check_fallback(Jsonb *fallback, const OutboxResolvedSender *sender, const char *to,
			   const char *body, Snapshot snap, Datum *values, char *nulls)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[6] = {TEXTOID, INT8OID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
	Datum		args[6];
	char		argnulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;
	Datum		d;
	int			rc;

	outbox_prepare(&plan,
				   "SELECT s, $6 + pg_catalog.make_interval(secs => (s OPERATOR(pg_catalog.->) 0"
				   " OPERATOR(pg_catalog.->>) 'after_seconds')::pg_catalog.float8)"
				   " FROM twilio_outbox.chain_check($1, $2, $3, $4, $5) s",
				   6, types);
	args[0] = CStringGetTextDatum(sender->account);
	args[1] = Int64GetDatum(sender->sender_id);
	args[2] = CStringGetTextDatum(to);
	args[3] = body ? CStringGetTextDatum(body) : (Datum) 0;
	argnulls[3] = body ? ' ' : 'n';
	args[4] = JsonbPGetDatum(fallback);
	args[5] = values[MSG_NEXT_ATTEMPT_AT];
	rc = SPI_execute_snapshot(plan, args, argnulls, snap, InvalidSnapshot, false, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not check fallback: %s", SPI_result_code_string(rc));
	values[MSG_CHANNEL] = CStringGetTextDatum(outbox_channel_of(to) ? "whatsapp" : "sms");
	nulls[MSG_CHANNEL] = ' ';
	values[MSG_CHAIN_STEP] = Int32GetDatum(0);
	nulls[MSG_CHAIN_STEP] = ' ';
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	values[MSG_FALLBACK] = SPI_datumTransfer(d, false, -1);
	nulls[MSG_FALLBACK] = ' ';
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	values[MSG_FALLBACK_AT] = isnull ? (Datum) 0 : d;
	nulls[MSG_FALLBACK_AT] = isnull ? 'n' : ' ';
}

/*
 * The message with this dedupe key, enqueued before, if it is the same
 * message: same recipient, sender, body, media, template and variables,
 * status callback and params (the times are left out: a retried call that
 * computes now() + interval again is still the same message).  A key that
 * names a different message is an error, never a silent drop of the new
 * one.  In READ COMMITTED a concurrent insert of the same key made ours wait
 * for the other transaction; it committed, so this statement's snapshot
 * sees its row.  values/nulls are the insert's.  Runs under the pinned
 * search path, so IS NOT DISTINCT FROM takes pg_catalog's operators.
 */
static int64
find_dedupe(const char *account, const char *dedupe_key, int64 sender_id,
			Datum *values, const char *nulls)
{
	Oid			types[10] = {TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID,
	TEXTARRAYOID, TEXTOID, JSONBOID, TEXTOID, JSONBOID};
	Datum		args[10];
	char		argnulls[10];
	bool		isnull;
	int			rc;
	int			i;

	outbox_prepare(&find_dedupe_plan,
				   "SELECT m.id, m.to_number IS NOT DISTINCT FROM $3"
				   " AND m.sender_id IS NOT DISTINCT FROM $4"
				   " AND m.body IS NOT DISTINCT FROM $5"
				   " AND m.media_urls IS NOT DISTINCT FROM $6"
				   " AND m.content_sid IS NOT DISTINCT FROM $7"
				   " AND m.content_variables IS NOT DISTINCT FROM $8"
				   " AND m.status_callback IS NOT DISTINCT FROM $9"
				   " AND m.params IS NOT DISTINCT FROM $10"
				   " FROM twilio_outbox.messages m"
				   " WHERE m.account OPERATOR(pg_catalog.=) $1"
				   " AND m.dedupe_key OPERATOR(pg_catalog.=) $2",
				   10, types);
	memset(argnulls, ' ', sizeof(argnulls));
	args[0] = CStringGetTextDatum(account);
	args[1] = CStringGetTextDatum(dedupe_key);
	args[3] = Int64GetDatum(sender_id);
	/* to, body, media, content_sid, variables, callback, params */
	args[2] = values[MSG_TO];
	argnulls[2] = nulls[MSG_TO];
	for (i = 0; i < 6; i++)
	{
		args[4 + i] = values[MSG_BODY + i];
		argnulls[4 + i] = nulls[MSG_BODY + i];
	}
	rc = SPI_execute_plan(find_dedupe_plan, args, argnulls, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not find the message with dedupe key \"%s\"",
						outbox_clip(dedupe_key)),
				 errdetail("A concurrent transaction holds that key."),
				 errhint("Retry the transaction.")));
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("dedupe key \"%s\" is already used by a different message",
						outbox_clip(dedupe_key)),
				 errdetail("A message enqueued with this key in account \"%s\" has another recipient, sender, body, media, template, variables, status callback or params.",
						   account),
				 errhint("Use a new key for a new message; a dedupe key is free again once its message is purged.")));
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
	char	   *time_zone = PG_NARGS() > ARG_TIME_ZONE ? text_arg(fcinfo, ARG_TIME_ZONE, "time_zone") : NULL;
	char	   *quiet_zone = NULL;
	bool		quiet;
	TimeADT		quiet_start;
	TimeADT		quiet_end;
	bool		has_vars = !PG_ARGISNULL(ARG_CONTENT_VARS);
	bool		has_params = !PG_ARGISNULL(ARG_PARAMS);
	bool		has_schedule = false;
	bool		has_send_at = false;
	const char *service_param = NULL;
	const char *utf8_body;
	bool		roles;
	TimestampTz now = GetCurrentTimestamp();
	OutboxSegments seg;
	OutboxResolvedSender sender;
	bool		found_account;
	Snapshot	snap;
	int			nmedia;
	Datum		values[MSG_NCOLUMNS];
	char		nulls[MSG_NCOLUMNS];
	int64		id;
	OutboxPinnedPath pinned;
	int16		priority;
	const char *traffic_class;
	char	   *campaign = PG_NARGS() > ARG_CAMPAIGN ? text_arg(fcinfo, ARG_CAMPAIGN, "campaign") : NULL;
	OutboxCampaignRow campaign_row;
	TimestampTz next_at;

	priority = priority_arg(fcinfo);
	traffic_class = traffic_class_arg(fcinfo);
	if (campaign)
		outbox_check_campaign_name(campaign);

	/* The recipient. */
	if (PG_ARGISNULL(ARG_TO))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("to_number must not be null")));
	check_no_control(to, "to_number");
	if (!outbox_is_recipient(to))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid recipient \"%s\"", outbox_clip(to)),
				 errdetail("A recipient is an E.164 number, a plus sign and 2 to 15 digits not starting with 0 (+14155552671), or a channel address such as whatsapp:+14155552671.")));

	/* The sender, if named. */
	if (from && service)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_number and messaging_service_sid cannot both be given"),
				 errhint("Name one sender, or neither to use the account's default sender.")));
	check_no_control(from, "from_number");
	if (from && !outbox_is_sender_address(from, false))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid sender \"%s\"", outbox_clip(from)),
				 errdetail("A from_number is an E.164 number (+15005550006), a channel address (whatsapp:+15005550006), a short code of 3 to 8 digits or an alphanumeric sender ID of up to 11 letters, digits and spaces.")));
	if (service && !outbox_is_sid(service, "MG"))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Messaging Service SID \"%s\"", outbox_clip(service)),
				 errdetail("A Messaging Service SID is MG followed by 32 hexadecimal digits.")));

	/* The content. */
	if (body && *body == '\0')
		body = NULL;			/* '' is no body, as in 0.1 */
	utf8_body = body ? pg_server_to_any(body, strlen(body), PG_UTF8) : "";
	if (body && outbox_is_blank(utf8_body))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("body must not be blank"),
				 errdetail("The body has only white space or invisible characters; Twilio refuses such a body (21602)."),
				 errhint("Pass NULL, or leave body out, to send media or a template without text.")));
	if (body && outbox_text_has_control(utf8_body))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("body must not contain control characters"),
				 errdetail("Tab, line feed, carriage return and form feed are the only control characters a body may contain.")));
	if (content_sid && !outbox_is_sid(content_sid, "HX"))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Content SID \"%s\"", outbox_clip(content_sid)),
				 errdetail("A Content SID is HX followed by 32 hexadecimal digits.")));
	if (has_vars)
	{
		if (content_sid == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("content_variables requires content_sid")));
		check_content_variables(PG_GETARG_JSONB_P(ARG_CONTENT_VARS));
	}
	nmedia = check_media(fcinfo);
	if (body == NULL && nmedia == 0 && content_sid == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message has no content"),
				 errhint("Pass body, media_urls or content_sid.")));
	outbox_count_segments(utf8_body, &seg);
	if (seg.chars > OUTBOX_MAX_BODY_CHARS)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("message body is too long"),
				 errdetail("The body has %d characters; Twilio accepts at most %d.",
						   seg.chars, OUTBOX_MAX_BODY_CHARS)));
	if (callback)
		check_url(callback, "status_callback URL");

	/* When. */
	check_times(fcinfo, now);
	if (dedupe_key && strlen(dedupe_key) > MAX_DEDUPE_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("dedupe_key is too long"),
				 errdetail("A dedupe key has at most %d bytes.", MAX_DEDUPE_KEY_BYTES)));
	/* it is shown in monitoring and quoted in errors, never sent */
	check_no_control(dedupe_key, "dedupe_key");
	if (time_zone)
	{
		char	   *canonical = outbox_zone_canonical(time_zone);

		if (canonical == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown time zone \"%s\"", outbox_clip(time_zone)),
					 errdetail("time_zone is the recipient's zone, a name of the IANA time zone database such as America/New_York."),
					 errhint("SELECT name FROM pg_timezone_names lists them.")));
		time_zone = canonical;
	}
	if (has_params)
		outbox_check_params(PG_GETARG_JSONB_P(ARG_PARAMS),
					 PG_ARGISNULL(ARG_SEND_AFTER) ? now :
					 Max(now, PG_GETARG_TIMESTAMPTZ(ARG_SEND_AFTER)),
					 &has_schedule, &has_send_at, &service_param);
	if (has_schedule != has_send_at)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Twilio parameters ScheduleType and SendAt go together")));

	/*
	 * Only now the database.  Our queries resolve names in pg_catalog only,
	 * whatever the caller's search_path (we run as the owner: a caller's
	 * schema must never supply an operator or a function), and the saved
	 * plans are never re-planned for a caller's path.  On 15 cheaper than a
	 * SET clause (no GUC work per call; 17 and later: src/compat.h).  An
	 * error pops it with the (sub)transaction, and the snapshot too.
	 *
	 * One snapshot for the lookups and the insert, taken as SPI would for
	 * the insert (our own earlier changes visible, and in READ COMMITTED
	 * whatever committed before the call): the message goes in with the
	 * account and sender as that snapshot sees them, as when one INSERT ...
	 * SELECT did both.
	 */
	OUTBOX_PIN_SEARCH_PATH(pinned);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	roles = account_roles_in_use();
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	snap = GetActiveSnapshot();
	if (!outbox_lookup_sender(account, from, service, to, roles, GetOuterUserId(), snap,
							  &found_account, &sender))
	{
		resolve_sender_sql(account, from, service, to, roles, snap, &found_account, &sender);
		if (found_account && sender.allowed)
			policy_sql(&sender, snap);
	}
	check_sender(account, from, service, to, found_account, &sender);
	/* the account's guards: the country first, the counts once inserted */
	if (sender.has_policy)
		outbox_check_country(sender.account, to, sender.country_codes, sender.ncountry_codes);
	if (service_param && sender.service_sid == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Twilio parameter \"%s\" requires a Messaging Service sender",
						service_param),
				 errhint("Pass messaging_service_sid.")));
	if (sender.from_number &&
		outbox_channel_of(sender.from_number) != outbox_channel_of(to))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sender \"%s\" cannot send to \"%s\"", sender.from_number, to),
				 errdetail("Sender and recipient must use the same channel.")));

	/*
	 * The campaign (created on first use): its window bounds the message's
	 * due time and expiry, and a paused one holds it (due at infinity
	 * until resume_campaign()).
	 */
	if (campaign)
	{
		outbox_use_campaign(sender.account, campaign, &campaign_row);
		if (campaign_row.not_after != 0 && !PG_ARGISNULL(ARG_SEND_AFTER) &&
			PG_GETARG_TIMESTAMPTZ(ARG_SEND_AFTER) >= campaign_row.not_after)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("send_after must be earlier than the end of campaign \"%s\"",
							outbox_clip(campaign)),
					 errdetail("The campaign's not_after is %s.",
							   timestamptz_to_str(campaign_row.not_after))));
	}

	memset(nulls, ' ', sizeof(nulls));
	values[MSG_ACCOUNT] = CStringGetTextDatum(sender.account);
	values[MSG_SENDER_ID] = Int64GetDatum(sender.sender_id);
	values[MSG_TO] = CStringGetTextDatum(to);
	values[MSG_FROM] = sender.from_number ? CStringGetTextDatum(sender.from_number) : (Datum) 0;
	nulls[MSG_FROM] = sender.from_number ? ' ' : 'n';
	values[MSG_SERVICE] = sender.service_sid ? CStringGetTextDatum(sender.service_sid) : (Datum) 0;
	nulls[MSG_SERVICE] = sender.service_sid ? ' ' : 'n';
	values[MSG_BODY] = body ? CStringGetTextDatum(body) : (Datum) 0;
	nulls[MSG_BODY] = body ? ' ' : 'n';
	values[MSG_MEDIA] = nmedia > 0 ? PG_GETARG_DATUM(ARG_MEDIA) : (Datum) 0;
	nulls[MSG_MEDIA] = nmedia > 0 ? ' ' : 'n';
	values[MSG_CONTENT_SID] = content_sid ? CStringGetTextDatum(content_sid) : (Datum) 0;
	nulls[MSG_CONTENT_SID] = content_sid ? ' ' : 'n';
	values[MSG_CONTENT_VARS] = has_vars ? PG_GETARG_DATUM(ARG_CONTENT_VARS) : (Datum) 0;
	nulls[MSG_CONTENT_VARS] = has_vars ? ' ' : 'n';
	values[MSG_CALLBACK] = callback ? CStringGetTextDatum(callback) : (Datum) 0;
	nulls[MSG_CALLBACK] = callback ? ' ' : 'n';
	values[MSG_PARAMS] = has_params ? PG_GETARG_DATUM(ARG_PARAMS) : (Datum) 0;
	nulls[MSG_PARAMS] = has_params ? ' ' : 'n';
	values[MSG_ENCODING] = CStringGetTextDatum(outbox_encoding_name(seg.encoding));
	values[MSG_SEGMENTS] = Int32GetDatum(seg.segments);
	values[MSG_IDEMPOTENCY_KEY] = random_uuid();
	values[MSG_DEDUPE_KEY] = dedupe_key ? CStringGetTextDatum(dedupe_key) : (Datum) 0;
	nulls[MSG_DEDUPE_KEY] = dedupe_key ? ' ' : 'n';
	values[MSG_SEND_AFTER] = PG_GETARG_DATUM(ARG_SEND_AFTER);
	nulls[MSG_SEND_AFTER] = PG_ARGISNULL(ARG_SEND_AFTER) ? 'n' : ' ';
	values[MSG_EXPIRES_AT] = PG_GETARG_DATUM(ARG_EXPIRES_AT);
	nulls[MSG_EXPIRES_AT] = PG_ARGISNULL(ARG_EXPIRES_AT) ? 'n' : ' ';
	/* GREATEST(send_after, now()): now() is the transaction's start */
	next_at = !PG_ARGISNULL(ARG_SEND_AFTER) &&
		PG_GETARG_TIMESTAMPTZ(ARG_SEND_AFTER) > GetCurrentTransactionStartTimestamp() ?
		PG_GETARG_TIMESTAMPTZ(ARG_SEND_AFTER) : GetCurrentTransactionStartTimestamp();
	if (campaign)
	{
		/* the campaign's end is its messages' expiry (the dispatcher's expiry path) */
		if (campaign_row.not_after != 0 &&
			(PG_ARGISNULL(ARG_EXPIRES_AT) ||
			 PG_GETARG_TIMESTAMPTZ(ARG_EXPIRES_AT) > campaign_row.not_after))
		{
			values[MSG_EXPIRES_AT] = TimestampTzGetDatum(campaign_row.not_after);
			nulls[MSG_EXPIRES_AT] = ' ';
		}
		if (campaign_row.not_before > next_at)
			next_at = campaign_row.not_before;
		if (campaign_row.paused)
			next_at = DT_NOEND;
	}

	/*
	 * Quiet hours: marketing traffic (and transactional, if the account
	 * says so) due in the recipient's quiet window waits for its end.  Only
	 * such a message pays for the zone lookup, and only it stores the zone,
	 * for the dispatcher to check again at claim time (a retry, a window
	 * set or changed since).  A marketing message stores it even while the
	 * account has no window, so that one set later holds it too.  It
	 * expires as any other if the window outlasts it.
	 */
	if (campaign && campaign_row.quiet)
	{
		/* the campaign's own window replaces the account's */
		quiet = true;
		quiet_start = campaign_row.quiet_start;
		quiet_end = campaign_row.quiet_end;
	}
	else
	{
		quiet = sender.quiet;
		quiet_start = sender.quiet_start;
		quiet_end = sender.quiet_end;
	}
	if (sender.has_policy &&
		((traffic_class && strcmp(traffic_class, "marketing") == 0) ||
		 (quiet && sender.quiet_transactional)))
	{
		quiet_zone = time_zone ? time_zone : outbox_zone_for_number(to, snap);
		if (quiet_zone == NULL)
			quiet_zone = sender.default_zone;
		/* stored as the zone database spells it (the tables take any case) */
		quiet_zone = outbox_zone_canonical(quiet_zone);
		if (quiet_zone == NULL)
			quiet_zone = "UTC";
		if (quiet && !TIMESTAMP_NOT_FINITE(next_at))
		{
			TimestampTz until = outbox_quiet_until(quiet_zone, quiet_start,
												   quiet_end, next_at);

			if (until != 0)
				next_at = until;
		}
	}
	values[MSG_NEXT_ATTEMPT_AT] = TimestampTzGetDatum(next_at);
	/* the role that called us, not the definer we run as */
	values[MSG_ENQUEUED_BY] = DirectFunctionCall1(namein,
												  CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));
	values[MSG_PRIORITY] = Int16GetDatum(priority);
	values[MSG_TRAFFIC_CLASS] = CStringGetTextDatum(traffic_class);
	values[MSG_CAMPAIGN] = campaign ? CStringGetTextDatum(campaign) : (Datum) 0;
	nulls[MSG_CAMPAIGN] = campaign ? ' ' : 'n';
	/* a plain message: no chain */
	nulls[MSG_CHANNEL] = nulls[MSG_CHAIN_STEP] = nulls[MSG_FALLBACK] = nulls[MSG_FALLBACK_AT] = 'n';
	if (PG_NARGS() > ARG_FALLBACK && !PG_ARGISNULL(ARG_FALLBACK))
		check_fallback(PG_GETARG_JSONB_P(ARG_FALLBACK), &sender, to, body, snap, values, nulls);

	values[MSG_QUIET_ZONE] = quiet_zone ? CStringGetTextDatum(quiet_zone) : (Datum) 0;
	nulls[MSG_QUIET_ZONE] = quiet_zone ? ' ' : 'n';

	/*
	 * Called through the 0.1 SQL signature: the schema is 0.1's (not yet
	 * updated), without 0.2's columns, and none of 0.2's arguments exist.
	 */
	if (!insert_message(dedupe_key != NULL, PG_NARGS() <= ARG_PARAMS + 1, values, nulls, snap, &id))
	{
		/* the key exists: the message it names, if it is this one */
		id = find_dedupe(sender.account, dedupe_key, sender.sender_id, values, nulls);
	}
	else if (sender.has_policy)
		outbox_count_recipient(sender.account, to, sender.max_per_hour, sender.max_per_day, now);
	PopActiveSnapshot();
	SPI_finish();
	OUTBOX_UNPIN_SEARCH_PATH(pinned);

	outbox_wake_at_commit();
	PG_RETURN_INT64(id);
}
