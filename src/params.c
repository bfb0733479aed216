/*-------------------------------------------------------------------------
 *
 * params.c
 *		Twilio's optional CreateMessage fields that twilio_enqueue() takes in
 *		its params argument: the table of their names and types (from Twilio's
 *		OpenAPI spec) and the checks of each value.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

/* Limits of ours on params: Twilio documents none, a row must stay small. */
#define MAX_PARAM_STRING_BYTES	1024
#define MAX_PERSISTENT_ACTIONS	10
#define MAX_NUMBER_CHARS		32

/* Kinds of value a Twilio parameter given through "params" may take. */
typedef enum TwilioParamKind
{
	PK_BOOL,					/* type boolean */
	PK_INT,						/* type integer, within min..max */
	PK_NUMBER,					/* type number, within min..max */
	PK_STRINGS,					/* type array of strings: repeated fields */
	PK_ENUM,					/* $ref message_enum_*: one of extra */
	PK_SID,						/* pattern ^{extra}[0-9a-fA-F]{32}$ */
	PK_PHONE,					/* format phone-number; extra "sms": no channel address */
	PK_DATETIME					/* format date-time */
} TwilioParamKind;

typedef struct TwilioParamSpec
{
	const char *name;
	TwilioParamKind	kind;
	const char *extra;			/* enum values (space separated), SID prefix, "sms" */
	int64		min;			/* PK_INT / PK_NUMBER bounds */
	int64		max;
	bool		needs_service;	/* only with a Messaging Service (when true, for booleans) */
} TwilioParamSpec;

/*
 * The request fields of Twilio's CreateMessage (OpenAPI spec 2010-04-01,
 * components of POST .../Messages.json, CreateMessageRequest) that have no
 * argument of their own, with the type the spec gives each.  Bounds the
 * spec leaves open are ours: Attempt counts attempts (at least 1), MaxPrice
 * (obsolete since 2024-06-03) is a price in the account's currency.
 * needs_service follows the spec's descriptions: ScheduleType, ShortenUrls
 * true and FallbackFrom are for Messaging Services only.
 */
static const TwilioParamSpec param_specs[] = {
	{"AddressRetention", PK_ENUM, "retain obfuscate", 0, 0, false},
	{"ApplicationSid", PK_SID, "AP", 0, 0, false},
	{"Attempt", PK_INT, NULL, 1, PG_INT32_MAX, false},
	{"ContentRetention", PK_ENUM, "retain discard", 0, 0, false},
	{"FallbackFrom", PK_PHONE, "sms", 0, 0, true},
	{"ForceDelivery", PK_BOOL, NULL, 0, 0, false},
	{"MaxPrice", PK_NUMBER, NULL, 0, 1000000, false},
	{"PersistentAction", PK_STRINGS, NULL, 0, 0, false},
	{"ProvideFeedback", PK_BOOL, NULL, 0, 0, false},
	{"RiskCheck", PK_ENUM, "enable disable", 0, 0, false},
	{"ScheduleType", PK_ENUM, "fixed", 0, 0, true},
	{"SendAsMms", PK_BOOL, NULL, 0, 0, false},
	{"SendAt", PK_DATETIME, NULL, 0, 0, false},
	{"ShortenUrls", PK_BOOL, NULL, 0, 0, true},
	{"SmartEncoded", PK_BOOL, NULL, 0, 0, false},
	{"TrafficType", PK_ENUM, "free", 0, 0, false},
	{"ValidityPeriod", PK_INT, NULL, 1, 36000, false},
};

/*
 * The other fields of CreateMessageRequest: twilio_enqueue() takes each as
 * an argument of its own (To is the only one the spec requires).
 */
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

static void
param_error(const char *key, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for Twilio parameter \"%s\"", key),
			 errdetail("%s", detail)));
}

/*
 * An input function's result, or ok = false when it raised a data
 * exception (class 22: out of range, bad format, bad zone).  Lets a bad
 * value of ours become one 22023 naming the field instead of whatever the
 * cast said.  Input functions hold no resources, so flushing their error
 * without a subtransaction is safe; any other error is thrown on.
 */
static Datum
input_or_fail(PGFunction in, const char *s, bool *ok)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile Datum result = (Datum) 0;
	volatile bool good = true;

	PG_TRY();
	{
		result = DirectFunctionCall3(in, CStringGetDatum(s),
									 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION)
			PG_RE_THROW();
		FlushErrorState();
		FreeErrorData(edata);
		good = false;
	}
	PG_END_TRY();
	*ok = good;
	return result;
}

/*
 * SendAt: an ISO 8601 date-time with a zone ("2026-12-01T09:30:00Z"), what
 * Twilio schedules (its errors 35114/35115): more than 5 minutes after the
 * request, which goes out no earlier than `earliest` (now, or send_after),
 * and at most 35 days after now.
 */
static void
check_send_at(const char *key, const char *s, TimestampTz earliest)
{
	static const char pattern[] = "dddd-dd-ddTdd:dd:dd";
	const char *p = s;
	TimestampTz t;
	bool		ok;
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
	t = DatumGetTimestampTz(input_or_fail(timestamptz_in, s, &ok));
	if (!ok)
		param_error(key, "It must be an existing date and time with a valid zone offset.");
	if (t <= earliest + (int64) 300 * USECS_PER_SEC ||
		t > GetCurrentTimestamp() + (int64) 35 * USECS_PER_DAY)
		param_error(key, "Twilio schedules a message more than 5 minutes after its request (sent at send_after at the earliest) and at most 35 days ahead.");
}

/*
 * A JSON number within min..max (whole when whole is set) and of at most
 * MAX_NUMBER_CHARS characters, compared without casts that throw.
 */
static void
check_number(const TwilioParamSpec *spec, Numeric n, bool whole)
{
	Datum		num = NumericGetDatum(n);
	char	   *text = DatumGetCString(DirectFunctionCall1(numeric_out, num));
	const char *what = whole ? "a whole number" : "a number";

	if (strlen(text) > MAX_NUMBER_CHARS ||
		DatumGetBool(DirectFunctionCall2(numeric_lt, num,
										 DirectFunctionCall1(int8_numeric, Int64GetDatum(spec->min)))) ||
		DatumGetBool(DirectFunctionCall2(numeric_gt, num,
										 DirectFunctionCall1(int8_numeric, Int64GetDatum(spec->max)))))
		param_error(spec->name,
					psprintf("It must be %s from " INT64_FORMAT " to " INT64_FORMAT ".",
							 what, spec->min, spec->max));
	/* 1.0 is whole, but would reach Twilio as "1.0": the form sends the text */
	if (whole && strchr(text, '.') != NULL)
		param_error(spec->name, psprintf("It must be %s, written without a decimal point.", what));
}

/*
 * Check one value of params against what Twilio's spec says of its key.
 * Returns whether it makes the message need a Messaging Service.
 */
static bool
check_param_value(const TwilioParamSpec *spec, JsonbValue *v, TimestampTz earliest)
{
	switch (spec->kind)
	{
		case PK_BOOL:
			if (v->type != jbvBool)
				param_error(spec->name, "It must be true or false (a JSON boolean).");
			return spec->needs_service && v->val.boolean;
		case PK_NUMBER:
		case PK_INT:
			if (v->type != jbvNumeric)
				param_error(spec->name, spec->kind == PK_INT ?
							"It must be a whole number (a JSON number)." :
							"It must be a number (a JSON number).");
			check_number(spec, v->val.numeric, spec->kind == PK_INT);
			break;
		case PK_STRINGS:
		case PK_ENUM:
		case PK_SID:
		case PK_PHONE:
		case PK_DATETIME:
			{
				char	   *s;

				if (v->type != jbvString)
					param_error(spec->name, spec->kind == PK_STRINGS ?
								"It must be an array of strings." : "It must be a string.");
				if (v->val.string.len > MAX_PARAM_STRING_BYTES)
					param_error(spec->name,
								psprintf("It must be at most %d bytes long.", MAX_PARAM_STRING_BYTES));
				s = pnstrdup(v->val.string.val, v->val.string.len);
				if (*s == '\0' || outbox_has_control(s))
					param_error(spec->name, "It must be a non-empty string without control characters.");
				if (spec->kind == PK_DATETIME)
					check_send_at(spec->name, s, earliest);
				if (spec->kind == PK_SID && !outbox_is_sid(s, spec->extra))
					param_error(spec->name,
								psprintf("It must be %s followed by 32 hexadecimal digits.", spec->extra));
				if (spec->kind == PK_PHONE && !outbox_is_sender_address(s, spec->extra != NULL))
					param_error(spec->name,
								"It must be an E.164 number (+14155552671), a short code or an alphanumeric sender ID.");
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
	return spec->needs_service;
}

static const TwilioParamSpec *
lookup_param(const char *key)
{
	int			i;

	for (i = 0; i < (int) lengthof(param_specs); i++)
	{
		if (strcmp(key, param_specs[i].name) == 0)
			return &param_specs[i];
	}
	return NULL;
}

/*
 * Whether the form encoder may send this params key: a CreateMessage field
 * that params may carry.  Rows written into the messages table by hand
 * bypass twilio_enqueue's checks; the dispatcher skips any other key rather
 * than let it add or override a field.
 */
bool
outbox_param_is_known(const char *key)
{
	return lookup_param(key) != NULL;
}

static const TwilioParamSpec *
find_param_spec(const char *key)
{
	const TwilioParamSpec *spec;
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
	spec = lookup_param(key);
	if (spec == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown Twilio parameter \"%s\"", outbox_clip(key)),
				 errhint("params takes the optional fields of Twilio's Messages API by their API names, such as ValidityPeriod or SendAt.")));
	return spec;
}

/*
 * params: a JSON object of further CreateMessage fields, each checked for
 * name and type (SendAt against earliest, when the request may go out).
 * Sets *has_schedule / *has_send_at for the caller's
 * cross-field checks, and *service_param to a field that needs a Messaging
 * Service (NULL if none).
 */
void
outbox_check_params(Jsonb *params, TimestampTz earliest, bool *has_schedule,
			 bool *has_send_at, const char **service_param)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	const TwilioParamSpec *spec = NULL;
	int			depth = 0;
	int			elems = 0;

	*has_schedule = *has_send_at = false;
	*service_param = NULL;
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
				if (depth == 1 && v.val.array.nElems > MAX_PERSISTENT_ACTIONS)
					param_error(spec->name,
								psprintf("It takes at most %d values.", MAX_PERSISTENT_ACTIONS));
				elems = 0;
				depth++;
				break;
			case WJB_END_OBJECT:
			case WJB_END_ARRAY:
				if (depth == 2 && elems == 0)
					param_error(spec->name, "It must not be an empty array: leave the field out instead.");
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
				if (v.type == jbvNull)
					param_error(spec->name, "It must not be null: leave the field out instead.");
				if (check_param_value(spec, &v, earliest) && *service_param == NULL)
					*service_param = spec->name;
				break;
			case WJB_ELEM:
				elems++;
				check_param_value(spec, &v, earliest);
				break;
			case WJB_DONE:
				break;
		}
	}
}

