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
