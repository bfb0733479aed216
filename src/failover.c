/*-------------------------------------------------------------------------
 *
 * failover.c
 *		Promotion of a standby: a dispatcher that starts on a server whose
 *		WAL timeline is higher than the one twilio_outbox.failover recorded
 *		(the row replicated from the old primary) marks for reconciliation
 *		the messages whose claim or outcome may have been lost with the old
 *		primary, before it claims anything, and records the new timeline.
 *
 * What a promotion can hide, with asynchronous replication (the standby
 * lacks the last transactions the old primary committed):
 *	 - a message 'sending' here: its outcome was lost, or never came (the
 *	   request was in flight when the primary died).  Twilio may have
 *	   created it.  Every one is marked, whatever the window.
 *	 - a message 'queued' here whose claim was lost: the old dispatcher
 *	   claimed it and sent it, and neither the claim nor the outcome
 *	   replicated.  It was due (next_attempt_at) and unchanged since before
 *	   the claim; the claim came after the last transaction that did
 *	   replicate.  Marked when it became due or last changed within
 *	   twilio_outbox.failover_window before the promotion.
 *	 - a message 'sent' (or further) here was created at Twilio: the
 *	   outcome that says so replicated, and no later transition sends it
 *	   again.  Never marked: reconciling it could only resend it.
 *	 - 'ambiguous', 'dead', 'canceled': not sent again without an operator
 *	   or the reconciliation engine, which looks the message up anyway.
 * Rows changed after the cutoff (the moment the handling began) were
 * changed on this server and are left alone: no dispatcher here claims
 * before the handling began.  A row 'sending' is marked when it was
 * claimed before the cutoff, or by no dispatcher that runs here (the old
 * primary's clock may run ahead of this one's).
 *
 * Guarded and crash-safe: the failover row is locked (FOR UPDATE) while
 * the handling is begun and ended, so two dispatchers of a database never
 * begin it twice; the cutoff and window are stored in the row, so the
 * marking, in bounded batches per account (account = $1), each its own
 * transaction, resumes where a crash left it; a marked row leaves the
 * states the batch reads.  A second dispatcher takes turns with the first,
 * batch by batch (each batch locks the row), and the end of the handling
 * waits for a batch under way.  No dispatcher claims before its own
 * marking pass found nothing left.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

#define FAILOVER_BATCH 1000

/* The timeline this dispatcher checked last; 0: not yet. */
static TimeLineID checked_timeline = 0;

/*
 * Begin (or join) the handling of a promotion to timeline tl: false when
 * there is none to handle (the timeline recorded is tl, or the outbox
 * never ran before and nothing was in flight on another server; a lower
 * recorded timeline than tl means a promotion, a higher one another
 * cluster's row: restored from a dump, or pg_upgrade; then only the
 * ordinary rescue applies).  Locks the row for the transaction.
 */
static bool
begin_handling(TimeLineID tl)
{
	Datum		values[2];
	Oid			types[2] = {INT4OID, INT4OID};
	bool		isnull;
	int			recorded;
	bool		handling;
	int			rc;

	rc = SPI_execute("SELECT timeline, promotion_timeline IS NOT NULL"
					 " FROM twilio_outbox.failover FOR UPDATE", false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "failover row lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		/* someone deleted it: start over as if the outbox never ran */
		rc = SPI_execute("INSERT INTO twilio_outbox.failover DEFAULT VALUES", false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "failover row insert failed: %s", SPI_result_code_string(rc));
		recorded = 0;
		handling = false;
	}
	else
	{
		recorded = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		if (isnull)
			recorded = 0;
		handling = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 2, &isnull));
	}

	values[0] = Int32GetDatum((int32) tl);
	if (recorded == 0 || (recorded >= (int) tl && !handling))
	{
		if (recorded != (int) tl)
		{
			rc = SPI_execute_with_args("UPDATE twilio_outbox.failover"
									   " SET timeline = $1, recorded_at = now()",
									   1, types, values, NULL, false, 0);
			if (rc != SPI_OK_UPDATE)
				elog(ERROR, "failover row update failed: %s", SPI_result_code_string(rc));
		}
		return false;
	}
	/*
	 * A promotion: begin handling it, unless another dispatcher did (or a
	 * crash left it half done), then go on with its cutoff and window.  A
	 * second promotion before the first was handled starts over with a
	 * new cutoff; the window then counts from it.
	 */
	values[1] = Int32GetDatum(outbox_failover_window_s);
	rc = SPI_execute_with_args("UPDATE twilio_outbox.failover SET"
							   " promotion_timeline = $1, promotion_cutoff = now(),"
							   " promotion_window = make_interval(secs => $2),"
							   " promotion_marked = 0"
							   " WHERE promotion_timeline IS DISTINCT FROM $1",
							   2, types, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "failover row update failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("twilio_outbox: this server was promoted (WAL timeline %d, the outbox last ran on timeline %d): marking messages whose claim or outcome may not have replicated for reconciliation",
						(int) tl, recorded),
				 errdetail("Messages left in flight, and messages queued that became due or changed within twilio_outbox.failover_window (%d s) before now, are looked up at Twilio before they are sent again.",
						   outbox_failover_window_s)));
	return true;
}

/* Account names, for the per-account batches. */
static List *
account_names(void)
{
	List	   *names = NIL;
	uint64		i;
	int			rc;

	rc = SPI_execute("SELECT name FROM twilio_outbox.accounts ORDER BY name", false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "account list failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return names;
}

/*
 * Mark one batch of one account's messages; returns how many.  They are
 * looked up after twilio_outbox.reconcile_grace, as after any ambiguous
 * attempt: a request the old primary sent just before it died may take
 * that long to show in Twilio's list.  The lower
 * bound of when Twilio may have created the message (ambiguous_since): for
 * one 'sending', its claim (updated_at); for one 'queued', the claim that
 * was lost came after it became due and after its last change.  An
 * earlier unresolved bound is kept.  A queued message's lost claim is
 * counted as an attempt, as the claim would have.
 */
static int
mark_batch(const char *account, Datum live)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {TEXTOID, INT4ARRAYOID, INT4OID, INT4OID, INT4OID};
	Datum		values[5];
	int			rc;

	outbox_prepare(&plan,
				   "WITH f AS (SELECT promotion_cutoff AS cutoff, promotion_window AS win,"
				   "   promotion_timeline AS tl FROM twilio_outbox.failover),"
				   " x AS (SELECT m.id, m.state, m.worker_pid,"
				   "   CASE WHEN m.state = 'sending' THEN m.updated_at"
				   "    ELSE greatest(m.updated_at, m.next_attempt_at) END AS since"
				   "  FROM twilio_outbox.messages m, f"
				   "  WHERE m.account = $1 AND f.tl = $4 AND ("
				   "   (m.state = 'sending' AND (m.updated_at <= f.cutoff"
				   "    OR m.worker_pid IS NULL OR m.worker_pid <> ALL ($2::int4[])))"
				   "   OR (m.state = 'queued' AND m.updated_at <= f.cutoff"
				   "    AND m.next_attempt_at <= f.cutoff"
				   "    AND greatest(m.updated_at, m.next_attempt_at) > f.cutoff - f.win))"
				   "  LIMIT $3 FOR UPDATE OF m SKIP LOCKED),"
				   " u AS (UPDATE twilio_outbox.messages m SET state = 'ambiguous',"
				   "  reconcile_at = now() + make_interval(secs => $5 / 1000.0),"
				   "  ambiguous_since = least(coalesce(m.ambiguous_since, x.since), x.since),"
				   "  attempts = CASE WHEN x.state = 'queued'"
				   "   THEN least(m.attempts, 2147483646) + 1 ELSE m.attempts END,"
				   "  ambiguous_attempts = least(m.ambiguous_attempts, 2147483646) + 1,"
				   "  lease_until = NULL, worker_pid = NULL, updated_at = now(),"
				   "  last_error_message = 'the server was promoted: the request may have gone out on the old primary without its record replicating'"
				   "  FROM x WHERE m.id = x.id AND m.account = $1 AND m.state = x.state"
				   "  RETURNING m.id, m.attempts, m.account, x.worker_pid, x.since, x.state AS was),"
				   " a AS (INSERT INTO twilio_outbox.attempts (message_id, attempt, account,"
				   "  started_at, outcome, ambiguous, transport_error, worker_pid)"
				   "  SELECT u.id, u.attempts, u.account, u.since, 'lost', true,"
				   "   'the server was promoted (WAL timeline ' || f.tl || ') with the message ' || u.was"
				   "   || ': the request may have gone out on the old primary without its record replicating',"
				   "   u.worker_pid FROM u, f RETURNING 1)"
				   " UPDATE twilio_outbox.failover SET promotion_marked = promotion_marked"
				   "  + (SELECT count(*) FROM a)"
				   " WHERE promotion_timeline = $4 RETURNING (SELECT count(*) FROM a)::int4",
				   5, types);
	/*
	 * One batch at a time, over all dispatchers: the row lock makes the
	 * dispatcher that ends the handling wait for a batch under way (else
	 * its count would miss that batch's), and a batch that waited for the
	 * end sees it (a fresh snapshot per statement) and marks nothing.
	 */
	rc = SPI_execute("SELECT FROM twilio_outbox.failover FOR UPDATE", false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "failover row lock failed: %s", SPI_result_code_string(rc));
	values[0] = CStringGetTextDatum(account);
	values[1] = live;
	values[2] = Int32GetDatum(FAILOVER_BATCH);
	values[3] = Int32GetDatum((int32) checked_timeline);
	/* what the old primary sent may take Twilio's list a while to show */
	values[4] = Int32GetDatum(outbox_reconcile_grace_ms);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "failover marking failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return 0;				/* another dispatcher finished the handling */
	{
		bool		isnull;

		return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	}
}

/*
 * At the dispatcher's start (after the schema check, before it takes back
 * or claims anything), and whenever the timeline differs from the one it
 * checked: handle a promotion.  Runs outside any transaction, in its own;
 * an error leaves the handling to be resumed (by this dispatcher, restarted,
 * or another).  Cheap when nothing changed: one comparison.
 */
void
outbox_failover_check(void)
{
	TimeLineID	tl = GetWALInsertionTimeLine();
	List	   *names;
	ListCell   *lc;
	Datum		live;
	bool		handle;
	int64		marked;
	int			rc;
	MemoryContext cxt = CurrentMemoryContext;

	if (tl == checked_timeline)
		return;
	checked_timeline = tl;

	outbox_begin_phase("checking for a promotion");
	handle = begin_handling(tl);
	outbox_end_phase();
	if (!handle)
		return;

	/* the names outlive the transaction */
	outbox_begin_phase("marking messages for reconciliation after a promotion");
	{
		List	   *got = account_names();
		MemoryContext old = MemoryContextSwitchTo(cxt);

		names = NIL;
		foreach(lc, got)
			names = lappend(names, pstrdup(lfirst(lc)));
		MemoryContextSwitchTo(old);
	}
	outbox_end_phase();

	foreach(lc, names)
	{
		const char *account = lfirst(lc);
		int			n;

		do
		{
			CHECK_FOR_INTERRUPTS();
			outbox_begin_phase("marking messages for reconciliation after a promotion");
			/* this server's dispatchers that already claim: theirs are not the old primary's */
			live = outbox_live_dispatchers(false);
			n = mark_batch(account, live);
			outbox_end_phase();
		} while (n >= FAILOVER_BATCH);
	}

	/* End the handling: the first to get here records the new timeline. */
	outbox_begin_phase("recording the new timeline after a promotion");
	{
		Datum		values[1];
		Oid			types[1] = {INT4OID};

		values[0] = Int32GetDatum((int32) tl);
		rc = SPI_execute_with_args("UPDATE twilio_outbox.failover SET timeline = $1,"
								   " recorded_at = now(), promotions = promotions + 1,"
								   " last_promotion_at = promotion_cutoff,"
								   " last_promotion_marked = promotion_marked,"
								   " promotion_timeline = NULL, promotion_cutoff = NULL,"
								   " promotion_window = NULL, promotion_marked = 0"
								   " WHERE promotion_timeline = $1"
								   " RETURNING last_promotion_marked",
								   1, types, values, NULL, false, 0);
		if (rc != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "failover row update failed: %s", SPI_result_code_string(rc));
		if (SPI_processed > 0)
		{
			bool		isnull;

			marked = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
			ereport(LOG,
					(errmsg("twilio_outbox: promotion to WAL timeline %d handled: " INT64_FORMAT " messages marked for reconciliation",
							(int) tl, marked)));
		}
	}
	outbox_end_phase();
	list_free_deep(names);
}
