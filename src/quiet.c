/*-------------------------------------------------------------------------
 *
 * quiet.c
 *		Quiet hours: the recipient's time zone (given, from the prefix table
 *		number_time_zones, or the account's default) and the end of the
 *		quiet window that holds at a given time, in that zone.
 *
 * Local times are computed with PostgreSQL's own time zone code (pg_tzset,
 * timestamp2tm, DetermineTimeZoneOffset), as AT TIME ZONE does, so a window
 * such as 21:00-08:00 ends at 08:00 local time on the day it ends, whatever
 * daylight saving change happens in between.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <ctype.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(twilio_outbox_time_zone_known);
PG_FUNCTION_INFO_V1(twilio_outbox_time_zone_name);
PG_FUNCTION_INFO_V1(twilio_outbox_quiet_until);

/*
 * The zone database's names that have a digit and no slash; any other name
 * with a digit and no slash is a POSIX rule ("ABC-3"), which pg_tzset would
 * accept too but which knows no daylight saving rules of a country.
 */
static const char *const digit_names[] = {
	"EST5EDT", "CST6CDT", "MST7MDT", "PST8PDT", "GMT0", "GMT+0", "GMT-0", "Etc/GMT0"
};

/*
 * The zone called name (any case), or NULL when it is not a name of
 * PostgreSQL's time zone database: empty, too long, with characters no
 * zone name has, or a POSIX rule.
 */
static pg_tz *
zone_of(const char *name)
{
	bool		digit = false;
	bool		slash = false;
	const char *p;

	if (name[0] == '\0' || strlen(name) >= TZ_STRLEN_MAX || !isalpha((unsigned char) name[0]))
		return NULL;
	for (p = name; *p; p++)
	{
		if (*p == '/')
			slash = true;
		else if (isdigit((unsigned char) *p))
			digit = true;
		else if (!isalpha((unsigned char) *p) && *p != '_' && *p != '-' && *p != '+')
			return NULL;
	}
	if (digit && !slash)
	{
		int			i;

		for (i = 0; i < (int) lengthof(digit_names); i++)
			if (pg_strcasecmp(name, digit_names[i]) == 0)
				break;
		if (i == (int) lengthof(digit_names))
			return NULL;
	}
	return pg_tzset(name);
}

/* The canonical spelling of zone name (America/New_York), or NULL when unknown. */
char *
outbox_zone_canonical(const char *name)
{
	pg_tz	   *tz = zone_of(name);

	return tz ? pstrdup(pg_get_timezone_name(tz)) : NULL;
}

/*
 * When t lies in the quiet window [start, end) of local time in zone, the
 * moment the window ends; else 0.  start == end: no window.  An unknown
 * zone (the table was edited around its CHECK) counts as UTC.
 */
TimestampTz
outbox_quiet_until(const char *zone, TimeADT start, TimeADT end, TimestampTz t)
{
	pg_tz	   *tz = zone_of(zone);
	struct pg_tm tm;
	fsec_t		fsec;
	int			tzoff;
	TimeADT		local;
	bool		tomorrow;
	int			jd;
	TimestampTz result;

	if (start == end || TIMESTAMP_NOT_FINITE(t))
		return 0;
	if (tz == NULL)
		tz = pg_tzset("UTC");
	if (timestamp2tm(t, &tzoff, &tm, &fsec, NULL, tz) != 0)
		return 0;
	local = ((((int64) tm.tm_hour * MINS_PER_HOUR) + tm.tm_min) * SECS_PER_MINUTE + tm.tm_sec)
		* USECS_PER_SEC + fsec;
	if (start < end)
	{
		if (local < start || local >= end)
			return 0;
		tomorrow = false;
	}
	else
	{
		if (local < start && local >= end)
			return 0;
		/* wraps past midnight: before midnight, it ends tomorrow */
		tomorrow = local >= start;
	}

	/* end, local time, on the day it comes; the zone's offset then */
	jd = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday) + (tomorrow ? 1 : 0);
	j2date(jd, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	tm.tm_hour = (int) (end / USECS_PER_HOUR);
	tm.tm_min = (int) ((end / USECS_PER_MINUTE) % MINS_PER_HOUR);
	tm.tm_sec = (int) ((end / USECS_PER_SEC) % SECS_PER_MINUTE);
	fsec = (fsec_t) (end % USECS_PER_SEC);
	tm.tm_isdst = -1;
	tzoff = DetermineTimeZoneOffset(&tm, tz);
	if (tm2timestamp(&tm, fsec, &tzoff, &result) != 0)
		return 0;
	/* an end in a skipped hour may land a little early: never before t */
	return result > t ? result : 0;
}

/*
 * The zone of number to (an E.164 number, or a channel address ending in
 * one) from twilio_outbox.number_time_zones, the longest prefix that
 * matches; NULL when none does.  One probe of the primary key for the 15
 * prefixes at most.  SPI connected, under the pinned search path.
 */
char *
outbox_zone_for_number(const char *to, Snapshot snap)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {TEXTARRAYOID};
	const char *plus = strrchr(to, '+');
	Datum		prefixes[15];
	Datum		arg;
	int			n = 0;
	int			rc;

	if (plus == NULL)
		return NULL;
	for (n = 0; n < 15 && isdigit((unsigned char) plus[1 + n]); n++)
		prefixes[n] = PointerGetDatum(cstring_to_text_with_len(plus + 1, n + 1));
	if (n == 0)
		return NULL;
	outbox_prepare(&plan,
				   "SELECT z.time_zone FROM twilio_outbox.number_time_zones z"
				   " WHERE z.prefix OPERATOR(pg_catalog.=) ANY ($1)"
				   " ORDER BY pg_catalog.length(z.prefix) DESC LIMIT 1",
				   1, types);
	arg = outbox_make_array(prefixes, NULL, n, TEXTOID);
	rc = SPI_execute_snapshot(plan, &arg, NULL, snap, InvalidSnapshot, true, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "time zone lookup failed: %s", SPI_result_code_string(rc));
	return SPI_processed == 1 ?
		SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
}

/* twilio_outbox.time_zone_known(name) */
Datum
twilio_outbox_time_zone_known(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(zone_of(text_to_cstring(PG_GETARG_TEXT_PP(0))) != NULL);
}

/* twilio_outbox.time_zone_name(name): 22023 for an unknown zone */
Datum
twilio_outbox_time_zone_name(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *canonical = outbox_zone_canonical(name);

	if (canonical == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown time zone \"%s\"", outbox_clip(name)),
				 errhint("Use a name of the IANA time zone database, such as America/New_York; SELECT name FROM pg_timezone_names lists them.")));
	PG_RETURN_TEXT_P(cstring_to_text(canonical));
}

/* twilio_outbox.quiet_until(zone, quiet_start, quiet_end, at) */
Datum
twilio_outbox_quiet_until(PG_FUNCTION_ARGS)
{
	char	   *zone = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz until;

	if (zone_of(zone) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown time zone \"%s\"", outbox_clip(zone))));
	until = outbox_quiet_until(zone, PG_GETARG_TIMEADT(1), PG_GETARG_TIMEADT(2),
							   PG_GETARG_TIMESTAMPTZ(3));
	if (until == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(until);
}
