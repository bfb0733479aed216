/*-------------------------------------------------------------------------
 *
 * guards.c
 *		Abuse guards twilio_enqueue() applies, per account, as an operator
 *		set them on twilio_outbox.accounts: the countries a recipient may be
 *		in (by calling code, as Twilio's geo permissions) and the most
 *		messages per recipient per hour and per day.
 *
 * An account without limits pays nothing: no query runs.  With a
 * per-recipient limit, each inserted message costs one upsert of the
 * recipient's row for the clock hour in recipient_counts (which also drops
 * the recipient's rows older than a day) and, for the daily limit, one
 * range read of that recipient's rows.  The upsert takes the hour's row
 * lock, so concurrent enqueues to one recipient take turns and the limit
 * holds exactly; a refused enqueue aborts its transaction, its count with
 * it.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "access/htup_details.h"
#include "access/tupdesc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/timestamp.h"

/*
 * Refuse a recipient whose number starts with none of the calling codes
 * allowed (codes[0..ncodes-1], digits), with TW003.  A channel address
 * (whatsapp:+44...) is judged by its number.
 */
void
outbox_check_country(const char *account, const char *to, char **codes, int ncodes)
{
	const char *plus = strrchr(to, '+');
	int			i;

	if (codes == NULL)
		return;
	for (i = 0; plus != NULL && i < ncodes; i++)
		if (strncmp(plus + 1, codes[i], strlen(codes[i])) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_OUTBOX_COUNTRY_NOT_ALLOWED),
			 errmsg("recipient \"%s\" is in a country account \"%s\" may not send to",
					outbox_clip(to), account),
			 errdetail("The account allows numbers with the calling codes in twilio_outbox.accounts.allowed_country_codes only; Twilio would refuse it too (21408) if its geo permissions say so."),
			 errhint("An administrator adds the calling code to allowed_country_codes, and enables the country in the Twilio console's geo permissions.")));
}

/*
 * Count one more message to `to` in account's current clock hour (UTC) and
 * refuse it, with TW002, when that makes more than max_hour in the hour or
 * max_day in the last 24 clock hours (0: no such limit).  SPI connected,
 * under the pinned search path; the upsert needs no snapshot of ours (it
 * sees the latest row, as ON CONFLICT does), the day's sum reads the
 * older hours, which no one changes any more.
 */
void
outbox_count_recipient(const char *account, const char *to, int32 max_hour, int32 max_day,
					   TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3];
	TimestampTz hour;
	int64		in_hour;
	int64		in_day;
	bool		isnull;
	int			rc;

	if (max_hour <= 0 && max_day <= 0)
		return;
	hour = now - now % USECS_PER_HOUR;	/* Unix and PostgreSQL epochs are whole hours apart */
	outbox_prepare(&plan,
				   "WITH old AS (DELETE FROM twilio_outbox.recipient_counts c"
				   "  WHERE c.account OPERATOR(pg_catalog.=) $1"
				   "  AND c.to_number OPERATOR(pg_catalog.=) $2"
				   "  AND c.hour OPERATOR(pg_catalog.<) ($3 OPERATOR(pg_catalog.-) interval '23 hours')),"
				   " up AS (INSERT INTO twilio_outbox.recipient_counts AS c (account, to_number, hour, n)"
				   "  VALUES ($1, $2, $3, 1) ON CONFLICT (account, to_number, hour)"
				   "  DO UPDATE SET n = c.n OPERATOR(pg_catalog.+) 1 RETURNING c.n)"
				   " SELECT (SELECT up.n FROM up)::pg_catalog.int8,"
				   "  (SELECT up.n FROM up) OPERATOR(pg_catalog.+) coalesce((SELECT pg_catalog.sum(c.n)"
				   "   FROM twilio_outbox.recipient_counts c"
				   "   WHERE c.account OPERATOR(pg_catalog.=) $1 AND c.to_number OPERATOR(pg_catalog.=) $2"
				   "   AND c.hour OPERATOR(pg_catalog.>=) ($3 OPERATOR(pg_catalog.-) interval '23 hours')"
				   "   AND c.hour OPERATOR(pg_catalog.<) $3), 0)::pg_catalog.int8",
				   3, types);
	values[0] = CStringGetTextDatum(account);
	values[1] = CStringGetTextDatum(to);
	values[2] = TimestampTzGetDatum(hour);
	rc = SPI_execute_plan(plan, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not count the messages to a recipient: %s", SPI_result_code_string(rc));
	in_hour = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	in_day = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (max_hour > 0 && in_hour > max_hour)
		ereport(ERROR,
				(errcode(ERRCODE_OUTBOX_RECIPIENT_LIMIT),
				 errmsg("too many messages to recipient \"%s\" this hour", outbox_clip(to)),
				 errdetail("Account \"%s\" allows at most %d messages per recipient per clock hour (UTC); this would be message " INT64_FORMAT ".",
						   account, max_hour, in_hour),
				 errhint("Send later, or raise twilio_outbox.accounts.max_per_recipient_hour.")));
	if (max_day > 0 && in_day > max_day)
		ereport(ERROR,
				(errcode(ERRCODE_OUTBOX_RECIPIENT_LIMIT),
				 errmsg("too many messages to recipient \"%s\" today", outbox_clip(to)),
				 errdetail("Account \"%s\" allows at most %d messages per recipient in 24 clock hours; this would be message " INT64_FORMAT ".",
						   account, max_day, in_day),
				 errhint("Send later, or raise twilio_outbox.accounts.max_per_recipient_day.")));
}

/*
 * Find the policy columns of an accounts row by name in desc; all 0 when
 * one is missing (a 0.1 schema, before ALTER EXTENSION UPDATE).
 */
void
outbox_policy_columns(TupleDesc desc, OutboxPolicyColumns *cols)
{
	static const char *const names[] = {
		"quiet_start", "quiet_end", "quiet_transactional", "default_time_zone",
		"max_per_recipient_hour", "max_per_recipient_day", "allowed_country_codes"
	};
	int16		found[lengthof(names)];
	int			i;
	int			j;

	memset(cols, 0, sizeof(*cols));
	for (i = 0; i < (int) lengthof(names); i++)
	{
		found[i] = 0;
		for (j = 0; j < desc->natts; j++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, j);

			if (!att->attisdropped && strcmp(NameStr(att->attname), names[i]) == 0)
				found[i] = att->attnum;
		}
		if (found[i] == 0)
			return;
	}
	cols->quiet_start = found[0];
	cols->quiet_end = found[1];
	cols->quiet_transactional = found[2];
	cols->default_zone = found[3];
	cols->max_hour = found[4];
	cols->max_day = found[5];
	cols->codes = found[6];
}

/*
 * Copy an accounts row's quiet hours and guards into out (memory in the
 * current context); nothing when cols found no columns.
 */
void
outbox_read_policy(HeapTuple tuple, TupleDesc desc, const OutboxPolicyColumns *cols,
				   OutboxResolvedSender *out)
{
	bool		isnull;
	bool		end_null;
	Datum		d;
	Datum		e;

	if (cols->quiet_start == 0)
		return;
	out->has_policy = true;
	d = heap_getattr(tuple, cols->quiet_start, desc, &isnull);
	e = heap_getattr(tuple, cols->quiet_end, desc, &end_null);
	out->quiet = !isnull && !end_null;
	out->quiet_start = out->quiet ? DatumGetTimeADT(d) : 0;
	out->quiet_end = out->quiet ? DatumGetTimeADT(e) : 0;
	d = heap_getattr(tuple, cols->quiet_transactional, desc, &isnull);
	out->quiet_transactional = !isnull && DatumGetBool(d);
	d = heap_getattr(tuple, cols->default_zone, desc, &isnull);
	out->default_zone = isnull ? "UTC" : TextDatumGetCString(d);
	d = heap_getattr(tuple, cols->max_hour, desc, &isnull);
	out->max_per_hour = isnull ? 0 : DatumGetInt32(d);
	d = heap_getattr(tuple, cols->max_day, desc, &isnull);
	out->max_per_day = isnull ? 0 : DatumGetInt32(d);
	d = heap_getattr(tuple, cols->codes, desc, &isnull);
	out->country_codes = NULL;
	out->ncountry_codes = 0;
	if (!isnull)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &n);
		out->country_codes = palloc(sizeof(char *) * Max(n, 1));
		for (i = 0; i < n; i++)
			if (!nulls[i])
				out->country_codes[out->ncountry_codes++] = TextDatumGetCString(elems[i]);
	}
}
