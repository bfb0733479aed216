/*-------------------------------------------------------------------------
 *
 * fallback.c
 *		Fallback chains on the dispatcher's side: the next step of a message
 *		dead-lettered by the record path, the chains' timers (a step not
 *		delivered within the next step's "after"), and the per-account
 *		calls-per-second bucket of voice steps.
 *
 * The chain's rules live in SQL (twilio_outbox.chain_escalate() in
 * sql/0.2/45_fallback.sql), the one place that decides whether a failure
 * or a timer makes the next step, so that the dispatcher, status callbacks
 * and polls all decide alike, each in the transaction that records the
 * failure.  The functions here run inside the worker's transaction (SPI
 * connected, a snapshot pushed) and may throw; the worker rolls back and
 * records again, and the step's unique index makes a second attempt at the
 * same step a no-op.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/* Timers claimed per account and call; more due makes the next call come at once. */
#define TIMER_BATCH			100

/* When the soonest timer the last look found is due; 0: none. */
static TimestampTz timers_wake_at = 0;

/*
 * A voice call may start now within its account's calls_per_second (a
 * bucket holding one second's worth, at least one call): takes a token and
 * returns true, else sets *ready_at to when one will be there.  Each of the
 * database's N dispatchers makes the calls of its own senders, so each
 * takes calls_per_second / N: the rate holds for their sum (a burst of at
 * most N or calls_per_second, whichever is more).
 */
bool
outbox_call_take(OutboxAccount *a, TimestampTz now, TimestampTz *ready_at)
{
	double		rate = (a->calls_per_second > 0 ? a->calls_per_second : 1.0) /
		Max(outbox_dispatcher_count, 1);
	double		burst = Max(1.0, rate);

	if (a->calls_refilled_at == 0)
		a->call_tokens = burst;
	else if (now > a->calls_refilled_at)
		a->call_tokens = Min(burst, a->call_tokens +
							 rate * (double) (now - a->calls_refilled_at) / USECS_PER_SEC);
	a->calls_refilled_at = now;
	if (a->call_tokens >= 1.0)
	{
		a->call_tokens -= 1.0;
		return true;
	}
	*ready_at = now + (TimestampTz) ((1.0 - a->call_tokens) / rate * USECS_PER_SEC) + 1;
	return false;
}

/*
 * After outbox_record(), in its transaction: each message dead-lettered
 * because Twilio refused it or its attempts ran out may have a next step.
 * Other dead letters (expired, suppressed, a row the dispatcher could not
 * send) never fall back; chain_escalate() checks again under the row lock.
 * One primary-key probe per such message, and none for the rest.
 */
void
outbox_fallback_record(List *done)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {TEXTOID, INT8OID};
	ListCell   *lc;

	foreach(lc, done)
	{
		OutboxMessage *m = lfirst(lc);
		Datum		values[2];
		int			rc;

		if (m->outcome != OUTCOME_DEAD || m->dead_reason == NULL ||
			(strcmp(m->dead_reason, "rejected") != 0 &&
			 strcmp(m->dead_reason, "attempts_exhausted") != 0))
			continue;
		outbox_prepare(&plan,
					   "SELECT twilio_outbox.chain_escalate(m.account, m.id, 'dead')"
					   " FROM twilio_outbox.messages m"
					   " WHERE m.id = $2 AND m.account = $1 AND m.chain_step IS NOT NULL"
					   " AND m.state = 'dead'",
					   2, types);
		values[0] = CStringGetTextDatum(m->account_name);
		values[1] = Int64GetDatum(m->id);
		rc = SPI_execute_plan(plan, values, NULL, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "fallback of message " INT64_FORMAT " failed: %s",
				 m->id, SPI_result_code_string(rc));
	}
}

/*
 * Fire the chains' timers that are due: per account the dispatcher knows,
 * at most TIMER_BATCH in due order from the partial index
 * messages_fallback_due (rows another transaction holds are skipped and
 * come back next time), each through chain_escalate(..., 'timer'); then
 * note when the soonest one left is due, for the worker's wait.
 */
void
outbox_fallback_timers(TimestampTz now)
{
	static SPIPlanPtr fire = NULL;
	static SPIPlanPtr next = NULL;
	Oid			types[2] = {TEXTOID, INT4OID};
	ListCell   *lc;
	TimestampTz wake = 0;

	outbox_prepare(&fire,
				   "SELECT twilio_outbox.chain_escalate(t.account, t.id, 'timer')"
				   " FROM (SELECT m.id, m.account FROM twilio_outbox.messages m"
				   "  WHERE m.account = $1 AND m.fallback_at <= now()"
				   "  ORDER BY m.fallback_at LIMIT $2 FOR UPDATE SKIP LOCKED) t",
				   2, types);
	outbox_prepare(&next,
				   "SELECT min(m.fallback_at) FROM twilio_outbox.messages m"
				   " WHERE m.account = $1 AND m.fallback_at IS NOT NULL",
				   1, types);
	foreach(lc, outbox_accounts)
	{
		OutboxAccount *a = lfirst(lc);
		Datum		values[2];
		bool		isnull;
		Datum		d;
		int			rc;

		values[0] = CStringGetTextDatum(a->name);
		values[1] = Int32GetDatum(TIMER_BATCH);
		rc = SPI_execute_plan(fire, values, NULL, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "fallback timers failed: %s", SPI_result_code_string(rc));
		if (SPI_processed >= TIMER_BATCH)
		{
			wake = now;			/* more are due: at once */
			continue;
		}
		rc = SPI_execute_plan(next, values, NULL, false, 1);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "fallback timers failed: %s", SPI_result_code_string(rc));
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull && (wake == 0 || DatumGetTimestampTz(d) < wake))
			wake = DatumGetTimestampTz(d);
	}
	/* a timer due already but held by another transaction: look again in a second */
	if (wake != 0 && wake <= now)
		wake = now + USECS_PER_SEC;
	timers_wake_at = wake;
}

/* When the worker should look at the timers again (0: no timer). */
TimestampTz
outbox_fallback_wake_at(void)
{
	return timers_wake_at;
}
