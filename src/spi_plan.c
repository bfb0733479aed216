/*-------------------------------------------------------------------------
 *
 * spi_plan.c
 *		Plans prepared once per backend and kept, for the enqueue path and
 *		the dispatcher alike.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "executor/spi.h"
#include "utils/array.h"
#include "utils/lsyscache.h"

/*
 * A plan prepared on first use and kept for the life of the backend (the
 * plan cache re-plans it after DDL).  Needs SPI connected.
 */
SPIPlanPtr
outbox_prepare(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*slot = plan;
	}
	return *slot;
}

/*
 * As outbox_prepare(), for a statement whose generic plan is as good as
 * any custom one: it is always used, never planned again per execution.
 * The dispatcher's claim (its parameters are arrays and a name, whose
 * values change nothing in the plan: every scan is an index range that
 * stops at its LIMIT) was planned afresh at every claim, because a custom
 * plan's estimated cost stayed below the generic one's: 14% of the
 * dispatcher's CPU went into the planner (perf, 50,000 messages).
 */
SPIPlanPtr
outbox_generic_prepare(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare_cursor failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*slot = plan;
	}
	return *slot;
}

/*
 * A one-dimensional array of n values of elemtype (NULL where nulls[i]; no
 * NULL when nulls is NULL), for the array parameters of the batched
 * statements.
 */
Datum
outbox_make_array(Datum *values, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}
