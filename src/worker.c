/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The dispatcher: a background worker per database (or several, each on
 *		its own senders: partition.c) that claims due messages, sends them,
 *		and records what came of it: the loop alone (control.c starts, stops
 *		and shows it; shmem.c holds its slot).
 *
 * The loop alternates two phases and never mixes them:
 *	 - a database phase, one short transaction: record finished attempts,
 *	   every second refresh accounts and policy and expire/rescue, then claim
 *	   up to the free capacity and commit;
 *	 - a network phase, no transaction: put the claimed requests in flight
 *	   and drive libcurl until some finish or the latch is set (or sleep
 *	   on the latch when nothing is in flight).
 * A committed twilio_enqueue() sets the latch; the poll interval is only
 * the backstop.  SIGTERM stops claiming, lets the requests in flight finish
 * (each is bounded by the request timeout), records them, and exits.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <signal.h>
#include <unistd.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"


#define REFRESH_INTERVAL_MS	1000
#define WAKE_REFRESH_MS		100
#define BUSY_POLL_MS		10
#define ERROR_BACKOFF_MS	1000


/* The dispatcher's own state, in its long-lived context. */
typedef struct Dispatcher
{
	List	   *done;			/* finished attempts not yet recorded */
	List	   *to_start;		/* claimed and committed, not yet in flight */
	TimestampTz last_refresh;	/* accounts */
	TimestampTz last_housekeeping;	/* policy, expiry, lease rescue */
	bool		refresh_pending;	/* woken: an account may be new */
	TimestampTz next_due;		/* 0: nothing known to be waiting */
	bool		claim_more;		/* woken, or the last claim was full */
	int			consecutive_errors;
	int64		sent;
	int64		failed;
	bool		schema_ok;		/* the installed extension is this library's version */
	char		reported[NAMEDATALEN];	/* the other version last reported, "" if none */
} Dispatcher;

static Dispatcher *self;
/* The dispatcher's long-lived memory: its state, accounts, senders, policy, batches. */
MemoryContext outbox_worker_cxt = NULL;

/* Copy one account into its published state. */
static void
publish_account(OutboxAccountState *st, OutboxAccount *a)
{
	strlcpy(st->name, a->name, sizeof(st->name));
	st->max_concurrency = a->max_concurrency;
	st->cap = a->cap;
	st->in_flight = a->in_flight;
	st->paused_until = a->paused_until;
	strlcpy(st->problem, a->config_error ? a->config_error : "", sizeof(st->problem));
}

/*
 * Publish the dispatcher's figures and its accounts in its slot, for the
 * monitoring views; with error, also its last error.  Accounts it cannot
 * use go first, so that none of those is ever left out of worker_accounts;
 * the totals count every account.  Takes the slots' lock exclusively.
 */
static void
publish(const char *error)
{
	OutboxSlot *slot = NULL;
	OutboxDispatcherSlot *d;

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	d = outbox_my_slot(&slot);
	if (d != NULL)
	{
		ListCell   *lc;
		int			pass;

		d->in_flight = outbox_http_in_flight();
		d->sent = self->sent;
		d->failed = self->failed;
		d->nsenders = 0;
		foreach(lc, outbox_senders)
		{
			OutboxSender *snd = lfirst(lc);

			if (snd->seen && outbox_sender_mine(snd))
				d->nsenders++;
		}
		d->naccounts = d->accounts_total = d->accounts_unusable = 0;
		for (pass = 0; pass < 2; pass++)
		{
			foreach(lc, outbox_accounts)
			{
				OutboxAccount *a = lfirst(lc);
				bool		unusable = a->config_error != NULL;

				if (!a->seen || unusable != (pass == 0))
					continue;
				d->accounts_total++;
				if (unusable)
					d->accounts_unusable++;
				if (d->naccounts < OUTBOX_PUBLISHED_ACCOUNTS)
					publish_account(&d->accounts[d->naccounts++], a);
			}
		}
		/* more than one dispatcher: reservations down to what is in flight */
		outbox_partition_settle(slot, d);
		if (error)
		{
			strlcpy(d->last_error, error, sizeof(d->last_error));
			d->last_error_at = GetCurrentTimestamp();
		}
	}
	LWLockRelease(outbox_shmem_lock());
}

/* ---------- finished attempts ---------- */

/* libcurl finished a transfer: decide its outcome (no database access). */
static void
on_done(OutboxMessage *m)
{
	MemoryContext old;

	/* its account has room again */
	self->claim_more = true;
	if (m->kind != OUTBOX_REQUEST_CREATE)
	{
		outbox_lookup_done(m);
		return;
	}
	old = MemoryContextSwitchTo(m->batch->cxt);

	outbox_decide(m, GetCurrentTimestamp());
	outbox_account_apply(m->account, m);
	MemoryContextSwitchTo(outbox_worker_cxt);
	self->done = lappend(self->done, m);
	MemoryContextSwitchTo(old);
}

/* After the outcomes are committed: counters, memory. */
static void
release_done(void)
{
	ListCell   *lc;

	foreach(lc, self->done)
	{
		OutboxMessage *m = lfirst(lc);
		OutboxBatch *batch = m->batch;

		if (m->outcome == OUTCOME_SENT)
			self->sent++;
		else if (m->outcome == OUTCOME_DEAD || m->outcome == OUTCOME_SUPPRESSED)
			self->failed++;
		if (--batch->pending == 0)
			MemoryContextDelete(batch->cxt);
	}
	list_free(self->done);
	self->done = NIL;
}

/* Send what was claimed.  Messages whose expiry passed since are not sent. */
static void
start_claimed(void)
{
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	foreach(lc, self->to_start)
	{
		OutboxMessage *m = lfirst(lc);

		if (!m->decided && m->expires_at != 0 && m->expires_at <= now)
		{
			m->resp.started_at = now;
			m->outcome = OUTCOME_DEAD;
			m->dead_reason = "expired";
			m->error_message = "expired before it could be sent";
			m->decided = true;
		}
		else if (!m->decided && !outbox_http_start(m))
		{
			/*
			 * Its host is no longer allowed (the settings changed since its
			 * account was checked): nothing was sent; it waits, uncharged,
			 * while the account refresh marks the account unusable.
			 */
			MemoryContextSwitchTo(m->batch->cxt);
			m->resp.started_at = now;
			m->outcome = OUTCOME_PAUSED;
			m->delay_ms = ERROR_BACKOFF_MS;
			m->next_attempt_at = now + ERROR_BACKOFF_MS * 1000L;
			m->error_message = pstrdup(m->resp.transport_error);
			m->decided = true;
			self->refresh_pending = true;
		}
		if (m->decided)
		{
			MemoryContextSwitchTo(outbox_worker_cxt);
			self->done = lappend(self->done, m);
		}
	}
	MemoryContextSwitchTo(outbox_worker_cxt);
	list_free(self->to_start);
	self->to_start = NIL;
}

/* ---------- the database phase ---------- */

void
outbox_begin_phase(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

void
outbox_end_phase(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Leave without being restarted, unless started with the server
 * (twilio_outbox.databases): the postmaster restarts those after a non-zero
 * exit, so that they come back once the extension exists or the other
 * dispatcher is gone.
 */
static void
leave(void)
{
	proc_exit(MyBgworkerEntry->bgw_restart_time == BGW_NEVER_RESTART ? 0 : 1);
}

static void
exit_if_dropped(void)
{
	if (!outbox_extension_present())
	{
		ereport(LOG,
				(errmsg("twilio_outbox dispatcher exiting: the extension is not installed in database \"%s\"",
						get_database_name(MyDatabaseId))));
		AbortCurrentTransaction();
		leave();
	}
}

/*
 * The version of the extension installed in this database, palloc'd, or
 * NULL when it is not installed.  Needs a transaction.
 */
static char *
installed_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("twilio_outbox"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Whether the schema installed in this database is the one this library
 * was built for.  A library newer (or older) than the schema would run its
 * queries against tables and functions that are not what it expects: it
 * does no work there until ALTER EXTENSION twilio_outbox UPDATE, says so
 * once per version (log, and last_error for the worker view), and is asked
 * again every second or when woken (the utility hook wakes it when ALTER
 * EXTENSION commits).  Leaves when the extension is gone.  Runs outside
 * any transaction, in its own.
 */
static bool
schema_matches(void)
{
	char	   *installed;
	bool		ok;

	StartTransactionCommand();
	exit_if_dropped();
	installed = installed_version();
	ok = installed != NULL && strcmp(installed, OUTBOX_VERSION) == 0;
	if (!ok && strcmp(self->reported, installed ? installed : "") != 0)
	{
		const char *db = get_database_name(MyDatabaseId);

		strlcpy(self->reported, installed ? installed : "", sizeof(self->reported));
		/* published before it is logged: whoever saw the log sees it in the view */
		publish(psprintf("database \"%s\" has twilio_outbox %s installed, this library is %s: run ALTER EXTENSION twilio_outbox UPDATE there",
						 db, installed ? installed : "", OUTBOX_VERSION));
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("database \"%s\" has twilio_outbox %s installed, but this server runs the twilio_outbox %s library",
						db, installed ? installed : "", OUTBOX_VERSION),
				 errdetail("The dispatcher sends nothing from this database until the extension is updated; it checks again every second."),
				 errhint("Run ALTER EXTENSION twilio_outbox UPDATE in database \"%s\".", db)));
	}
	else if (ok && self->reported[0] != '\0')
	{
		ereport(LOG,
				(errmsg("twilio_outbox dispatcher: database \"%s\" now has twilio_outbox %s installed, starting work",
						get_database_name(MyDatabaseId), OUTBOX_VERSION)));
		self->reported[0] = '\0';
	}
	CommitTransactionCommand();
	return ok;
}

/*
 * One transaction: record, refresh, claim; then lookups (src/lookup.c)
 * with what the claim left of lookup_capacity.  Returns false after an
 * error (rolled back, reported); the unrecorded outcomes are kept for next
 * time.
 */
static bool
database_phase(bool claim, int capacity, int lookup_capacity)
{
	MemoryContext scratch = CurrentMemoryContext;
	TimestampTz now = GetCurrentTimestamp();
	bool		housekeeping = now - self->last_housekeeping >= REFRESH_INTERVAL_MS * 1000L;
	bool		refresh = housekeeping ||
		(self->refresh_pending && now - self->last_refresh >= WAKE_REFRESH_MS * 1000L);
	volatile bool ok = true;
	List	   *volatile claimed = NIL;

	/* every second, and whenever the last look found another version */
	if (housekeeping || !self->schema_ok)
	{
		self->schema_ok = schema_matches();
		if (!self->schema_ok)
		{
			self->claim_more = false;
			return false;
		}
	}

	/* a promotion while it ran (cannot happen today: one comparison) */
	if (housekeeping)
		outbox_failover_check();

	PG_TRY();
	{

		outbox_begin_phase(claim ? "claiming" : "recording");
		exit_if_dropped();
		if (self->done != NIL)
		{
			outbox_record(self->done);
			/* a dead letter's next step, in the same transaction (fallback.c) */
			outbox_fallback_record(self->done);
		}
		if (housekeeping)
		{
			outbox_policy_refresh();
			/*
			 * Database-wide: the first dispatcher alone (with more than
			 * one, the others would only skip the rows it locked, and take
			 * turns on the accounts' pauses).
			 */
			if (outbox_dispatcher_index == 0)
			{
				outbox_expire();
				outbox_sweep_orphans();
			}
			/* every one: never a live dispatcher's rows (queue.c) */
			outbox_rescue(false);
			/* and every sender is asked again at least once a second */
			outbox_claim_wake();
			self->last_housekeeping = now;
		}
		if (refresh)
		{
			outbox_refresh_accounts(now);
			outbox_accounts_read_at = now;	/* partition.c */
			outbox_refresh_senders(now);
			self->last_refresh = now;
			self->refresh_pending = false;
		}
		/* fallback chains' timers: the first dispatcher, database-wide like expiry */
		if (outbox_dispatcher_index == 0 &&
			(housekeeping || refresh ||
			 (outbox_fallback_wake_at() != 0 && now >= outbox_fallback_wake_at())))
			outbox_fallback_timers(now);
		if (claim)
		{
			bool		more;

			claimed = outbox_claim(capacity, now, &more);
			/* more may be due if the claim was full; else find when next */
			self->claim_more = more;
			if (!self->claim_more)
			{
				self->next_due = outbox_next_due(now);
				/* due but not claimed (locked elsewhere): look again soon */
				if (self->next_due != 0 && self->next_due <= now)
					self->next_due = now + 100 * 1000L;
			}
		}
		/* sends first: lookups take what is left */
		outbox_lookup_phase(now, refresh, lookup_capacity - list_length(claimed), claimed);
		outbox_end_phase();

		MemoryContextSwitchTo(outbox_worker_cxt);
		release_done();
		self->to_start = list_concat(self->to_start, claimed);
		self->consecutive_errors = 0;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(scratch);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		/* the claim was rolled back: forget what it returned */
		if (claimed != NIL)
			MemoryContextDelete(((OutboxMessage *) linitial(claimed))->batch->cxt);
		outbox_lookup_aborted();
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("twilio_outbox dispatcher: %s", edata->message),
				 errdetail("Outcomes not yet recorded are kept and recorded again.")));
		publish(edata->message);
		self->consecutive_errors++;
		/* a dropped extension shows up as an error first */
		StartTransactionCommand();
		exit_if_dropped();
		CommitTransactionCommand();
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* ---------- the loop ---------- */

static void
process_signals(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (!PostmasterIsAlive())
		proc_exit(1);
}

/* Sleep until woken, the next due time, or the poll interval. */
static void
idle_wait(void)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = outbox_poll_interval_ms;
	int			rc;

	if (self->consecutive_errors > 0)
		timeout = Min((long) ERROR_BACKOFF_MS * self->consecutive_errors, 30000L);
	else
	{
		if (self->next_due != 0)
			timeout = Min(timeout, Max(0, (self->next_due - now + 999) / 1000));
		if (outbox_lookup_wake_at() != 0)
			timeout = Min(timeout, Max(0, (outbox_lookup_wake_at() - now + 999) / 1000));
		if (outbox_fallback_wake_at() != 0)
			timeout = Min(timeout, Max(0, (outbox_fallback_wake_at() - now + 999) / 1000));
		/* a wake-up not yet followed by an account refresh */
		if (self->refresh_pending)
			timeout = Min(timeout, WAKE_REFRESH_MS);
		/* waiting for ALTER EXTENSION UPDATE: look every second */
		if (!self->schema_ok)
			timeout = Min(timeout, REFRESH_INTERVAL_MS);
	}
	if (timeout == 0)
	{
		outbox_claim_wake();
		self->claim_more = true;
		return;
	}
	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
				   timeout, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	if (rc & WL_LATCH_SET)
		self->refresh_pending = true;
	if (rc & (WL_LATCH_SET | WL_TIMEOUT))
	{
		/* something may have come due: every sender is asked again */
		outbox_claim_wake();
		self->claim_more = true;
	}
}

void
outbox_worker_main(Datum arg)
{
	MemoryContext scratch;
	bool		held;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	if (OidIsValid(DatumGetObjectId(arg)))
		BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	else
		BackgroundWorkerInitializeConnection(MyBgworkerEntry->bgw_extra, NULL, 0);

	if (!outbox_slot_attach(&held))
	{
		if (held)
			ereport(DEBUG1,
					(errmsg("twilio_outbox dispatcher not started: held by stop_worker(hold => ...) in database %u",
							MyDatabaseId)));
		else
			ereport(DEBUG1,
					(errmsg("twilio_outbox dispatcher not started: %d already run in database %u",
							outbox_dispatchers_per_database, MyDatabaseId)));
		leave();
	}
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "twilio_outbox dispatcher", PGC_USERSET, PGC_S_SESSION);

	/*
	 * No JIT: every statement here reads O(batch) rows, but with a large
	 * backlog a generic plan's estimated cost passes jit_above_cost, and
	 * compiling it took about 500 ms per claim (1,000,000 messages due,
	 * bench/priority_claim.sh) for a 3 ms statement.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname("twilio_outbox dispatcher");

	outbox_worker_cxt = AllocSetContextCreate(TopMemoryContext, "twilio_outbox dispatcher",
									   ALLOCSET_DEFAULT_SIZES);
	scratch = AllocSetContextCreate(outbox_worker_cxt, "twilio_outbox loop",
									ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(outbox_worker_cxt);
	self = palloc0(sizeof(Dispatcher));
	self->claim_more = true;
	outbox_http_init();
	on_proc_exit((pg_on_exit_callback) outbox_http_shutdown, (Datum) 0);

	/* Only the schema this library was built for: wait until it is. */
	MemoryContextSwitchTo(scratch);
	while (!(self->schema_ok = schema_matches()))
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		process_signals();
		if (ShutdownRequestPending)
		{
			ereport(LOG, (errmsg("twilio_outbox dispatcher stopped")));
			proc_exit(0);
		}
		MemoryContextReset(scratch);
	}

	/*
	 * A promotion since the outbox last ran: what the old primary may have
	 * sent without the record reaching this server is marked for
	 * reconciliation before anything is taken back or claimed (failover.c).
	 */
	outbox_failover_check();

	/* Whatever a previous dispatcher left in flight comes back first. */
	outbox_begin_phase("taking back messages left in flight");
	exit_if_dropped();
	outbox_rescue(true);
	if (outbox_dispatcher_count > 1)
		ereport(LOG,
				(errmsg("twilio_outbox dispatcher %d of %d started in database \"%s\"",
						outbox_dispatcher_index, outbox_dispatcher_count,
						get_database_name(MyDatabaseId))));
	else
		ereport(LOG,
				(errmsg("twilio_outbox dispatcher started in database \"%s\"",
						get_database_name(MyDatabaseId))));
	outbox_end_phase();

	for (;;)
	{
		bool		stopping;
		int			capacity;

		MemoryContextSwitchTo(scratch);
		MemoryContextReset(scratch);
		process_signals();
		stopping = ShutdownRequestPending;
		if (stopping && outbox_http_in_flight() == 0 &&
			(self->done == NIL || self->consecutive_errors >= 3 || !self->schema_ok))
			break;				/* what could not be recorded is taken back at the next start */
		if (MyLatch->is_set)
		{
			ResetLatch(MyLatch);
			outbox_claim_wake();
			self->claim_more = true;
			self->refresh_pending = true;
		}

		capacity = stopping ? 0 : outbox_max_in_flight - outbox_http_in_flight();
		if (self->next_due != 0 && GetCurrentTimestamp() >= self->next_due)
		{
			self->next_due = 0;
			outbox_claim_wake();
			self->claim_more = true;
		}
		if (self->done != NIL || (self->claim_more && capacity > 0) ||
			outbox_lookup_pending() ||
			(outbox_lookup_wake_at() != 0 && capacity > 0 &&
			 GetCurrentTimestamp() >= outbox_lookup_wake_at()) ||
			(outbox_fallback_wake_at() != 0 &&
			 GetCurrentTimestamp() >= outbox_fallback_wake_at()) ||
			GetCurrentTimestamp() - self->last_housekeeping >= REFRESH_INTERVAL_MS * 1000L)
		{
			bool		claim = self->claim_more && capacity > 0 &&
				self->consecutive_errors == 0;

			if (database_phase(claim, Min(capacity, outbox_claim_batch),
							   self->consecutive_errors == 0 ? Min(capacity, outbox_claim_batch) : 0))
			{
				start_claimed();
				outbox_lookup_committed();
				publish(NULL);
			}
			else if (outbox_http_in_flight() == 0 && !stopping)
			{
				idle_wait();
				continue;
			}
		}

		/*
		 * Drive the transfers; wait for network activity only when there is
		 * nothing to record and nothing more to claim right now.
		 */
		if (outbox_http_in_flight() > 0)
		{
			bool		more_now = self->done != NIL ||
				(self->claim_more && !stopping &&
				 outbox_http_in_flight() < outbox_max_in_flight);

			outbox_http_poll(more_now ? 0 : BUSY_POLL_MS, on_done);
		}
		else if (self->done == NIL && !stopping &&
				 (!self->claim_more || self->consecutive_errors > 0))
			idle_wait();		/* else the senders not yet asked are asked at once */
	}

	ereport(LOG, (errmsg("twilio_outbox dispatcher stopped")));
	proc_exit(0);
}
