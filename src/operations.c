/*-------------------------------------------------------------------------
 *
 * operations.c
 *		twilio_outbox.purge(): delete finished history in batches, committing
 *		between them.
 *
 * A procedure that commits cannot carry a SET search_path clause, so it
 * could not pin its search path in PL/pgSQL; and PL/pgSQL cannot tell a
 * CALL inside a transaction block (where COMMIT fails with a bare "invalid
 * transaction termination") from one that may commit.  In C both are
 * simple: the call context says whether it is atomic, and the only SQL run
 * here calls the extension's batch functions by their qualified names with
 * typed parameters (no operator, no unqualified name for a caller's schema
 * to supply).  Each batch function pins SET search_path = pg_catalog,
 * pg_temp and does one batch's work.  Runs with the caller's rights.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(twilio_outbox_purge);

/* The batch functions, in the order purge runs them until each is done. */
static const char *const batch_sql[] = {
	"SELECT twilio_outbox.purge_messages_batch($1, $2)",
	"SELECT twilio_outbox.purge_attempts_batch($1, $2)",
	"SELECT twilio_outbox.purge_status_events_batch($1, $2)",
};

/*
 * CALL twilio_outbox.purge(older_than interval, batch_size integer)
 *
 * Checks its arguments (NULL: 22004; negative, zero or too large: 22023,
 * older_than by purge_cutoff(), which also computes the cutoff once) and
 * then that it may commit (inside a transaction block, or called from a
 * function: 25001), then runs each batch function until it deletes fewer
 * than batch_size rows, committing after every batch so that no long
 * transaction holds vacuum back.
 */
Datum
twilio_outbox_purge(PG_FUNCTION_ARGS)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		args[2];
	Interval   *older_than;
	int32		batch_size;
	TimestampTz cutoff;
	int64		total = 0;
	bool		atomic;
	bool		isnull;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", PG_ARGISNULL(0) ? "older_than" : "batch_size"),
				 errhint("Leave the argument out for its default (30 days, 10000 rows).")));
	older_than = PG_GETARG_INTERVAL_P(0);
	batch_size = PG_GETARG_INT32(1);
	if (batch_size < 1 || batch_size > 1000000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and 1000000"),
				 errdetail("It was %d.", batch_size)));

	atomic = fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		castNode(CallContext, fcinfo->context)->atomic;
	if (SPI_connect_ext(atomic ? 0 : SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* The cutoff, checked by a pinned function: now() - older_than, in range. */
	args[0] = PointerGetDatum(older_than);
	if (SPI_execute_with_args("SELECT twilio_outbox.purge_cutoff($1)", 1,
							  (Oid[]) {INTERVALOID}, args, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not compute the purge cutoff");
	cutoff = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));

	/* Only now the call context, so that bad arguments are named first. */
	if (atomic)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("twilio_outbox.purge() cannot run inside a transaction block"),
				 errdetail("It commits after every batch, so that no long transaction holds vacuum back."),
				 errhint("CALL it on its own, outside BEGIN ... COMMIT and not from a function; schedule_purge() runs it so with pg_cron.")));

	args[0] = TimestampTzGetDatum(cutoff);
	args[1] = Int32GetDatum(batch_size);
	for (i = 0; i < (int) lengthof(batch_sql); i++)
	{
		int64		n;

		do
		{
			if (SPI_execute_with_args(batch_sql[i], 2, types, args, NULL, false, 1) != SPI_OK_SELECT ||
				SPI_processed != 1)
				elog(ERROR, "purge batch failed");
			n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
			if (i == 0)
				total += n;
			SPI_commit();
			CHECK_FOR_INTERRUPTS();
		} while (n >= batch_size);
	}
	SPI_finish();

	ereport(NOTICE,
			(errmsg("purged " INT64_FORMAT " finished messages older than %s",
					total, timestamptz_to_str(cutoff))));
	PG_RETURN_VOID();
}
