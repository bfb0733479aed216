/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The dispatcher: one background worker per database that claims due
 *		messages, sends them, and records what came of it.  Also the SQL
 *		functions that start, stop and wake it, and the DROP DATABASE hook.
 *
 * The loop alternates two phases and never mixes them:
 *	 - a database phase, one short transaction: record finished attempts,
 *	   every second refresh accounts and policy and expire/rescue, then claim
 *	   up to the free capacity and commit;
 *	 - a network phase, no transaction: put the claimed requests in flight
 *	   and drive libcurl until some finish (or sleep on the latch when
 *	   nothing is in flight).
 * A committed twilio_enqueue() sets the latch; the poll interval is only
 * the backstop.  SIGTERM stops claiming, lets the requests in flight finish
 * (each is bounded by the request timeout), records them, and exits.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <signal.h>
#include <unistd.h>

#include "access/xact.h"
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
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(twilio_outbox_start_worker);
PG_FUNCTION_INFO_V1(twilio_outbox_stop_worker);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_pid);
PG_FUNCTION_INFO_V1(twilio_outbox_wake_worker);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_status);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_accounts);
PG_FUNCTION_INFO_V1(twilio_outbox_library_version);

#define REFRESH_INTERVAL_MS	1000
#define WAKE_REFRESH_MS		100
#define BUSY_POLL_MS		10
#define START_WAIT_MS		10000
#define ERROR_BACKOFF_MS	1000

static ProcessUtility_hook_type prev_utility_hook = NULL;

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
} Dispatcher;

static Dispatcher *self;
static MemoryContext worker_cxt;

/* ---------- the slot this dispatcher holds ---------- */

static void
detach_slot(int code, Datum arg)
{
	OutboxSlot *slot;

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(MyDatabaseId, false);
	if (slot != NULL && slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->in_flight = 0;
		slot->stopped_at = GetCurrentTimestamp();
	}
	LWLockRelease(outbox_shmem_lock());
}

/*
 * Take this database's slot; false when another dispatcher holds it, or an
 * operator's stop_worker(hold => ...) holds this database (a dispatcher of
 * twilio_outbox.databases that failed is restarted by the postmaster, and
 * must not end the hold either).
 */
static bool
attach_slot(bool *held)
{
	OutboxSlot *slot;
	TimestampTz now = GetCurrentTimestamp();
	bool		ok = false;

	*held = false;
	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(MyDatabaseId, true);
	if (slot != NULL && slot->pid == 0 && slot->held_until > now)
	{
		slot->starting_at = 0;
		*held = true;
	}
	else if (slot != NULL && slot->pid == 0)
	{
		slot->pid = MyProcPid;
		slot->pgprocno = GetNumberFromPGProc(MyProc);
		slot->starting_at = 0;
		slot->started_at = now;
		slot->stopped_at = 0;
		strlcpy(slot->library_version, OUTBOX_VERSION, sizeof(slot->library_version));
		slot->sent = slot->failed = 0;
		slot->in_flight = 0;
		slot->last_error[0] = '\0';
		slot->last_error_at = 0;
		slot->naccounts = slot->accounts_total = slot->accounts_unusable = 0;
		ok = true;
	}
	LWLockRelease(outbox_shmem_lock());
	if (ok)
		before_shmem_exit(detach_slot, (Datum) 0);
	return ok;
}

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
	OutboxSlot *slot;

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(MyDatabaseId, false);
	if (slot != NULL && slot->pid == MyProcPid)
	{
		ListCell   *lc;
		int			pass;

		slot->in_flight = outbox_http_in_flight();
		slot->sent = self->sent;
		slot->failed = self->failed;
		slot->naccounts = slot->accounts_total = slot->accounts_unusable = 0;
		for (pass = 0; pass < 2; pass++)
		{
			foreach(lc, outbox_accounts)
			{
				OutboxAccount *a = lfirst(lc);
				bool		unusable = a->config_error != NULL;

				if (!a->seen || unusable != (pass == 0))
					continue;
				slot->accounts_total++;
				if (unusable)
					slot->accounts_unusable++;
				if (slot->naccounts < OUTBOX_PUBLISHED_ACCOUNTS)
					publish_account(&slot->accounts[slot->naccounts++], a);
			}
		}
		if (error)
		{
			strlcpy(slot->last_error, error, sizeof(slot->last_error));
			slot->last_error_at = GetCurrentTimestamp();
		}
	}
	LWLockRelease(outbox_shmem_lock());
}

/* ---------- finished attempts ---------- */

/* libcurl finished a transfer: decide its outcome (no database access). */
static void
on_done(OutboxMessage *m)
{
	MemoryContext old = MemoryContextSwitchTo(m->batch->cxt);

	outbox_decide(m, GetCurrentTimestamp());
	/* a pause holds from now on, before it is even recorded */
	if (m->pause_account_until > m->account->paused_until)
		m->account->paused_until = m->pause_account_until;
	if (m->outcome == OUTCOME_RATE_LIMITED || m->outcome == OUTCOME_SENT)
		outbox_concurrency_after(m->account, m->outcome == OUTCOME_RATE_LIMITED);
	MemoryContextSwitchTo(worker_cxt);
	self->done = lappend(self->done, m);
	/* its account has room again */
	self->claim_more = true;
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
			MemoryContextSwitchTo(worker_cxt);
			self->done = lappend(self->done, m);
		}
	}
	MemoryContextSwitchTo(worker_cxt);
	list_free(self->to_start);
	self->to_start = NIL;
}

/* ---------- the database phase ---------- */

static void
begin_phase(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
end_phase(void)
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
 * One transaction: record, refresh, claim.  Returns false after an error
 * (rolled back, reported); the unrecorded outcomes are kept for next time.
 */
static bool
database_phase(bool claim, int capacity)
{
	MemoryContext scratch = CurrentMemoryContext;
	TimestampTz now = GetCurrentTimestamp();
	bool		housekeeping = now - self->last_housekeeping >= REFRESH_INTERVAL_MS * 1000L;
	bool		refresh = housekeeping ||
		(self->refresh_pending && now - self->last_refresh >= WAKE_REFRESH_MS * 1000L);
	volatile bool ok = true;
	List	   *volatile claimed = NIL;

	PG_TRY();
	{

		begin_phase(claim ? "claiming" : "recording");
		exit_if_dropped();
		if (self->done != NIL)
			outbox_record(self->done);
		if (housekeeping)
		{
			outbox_policy_refresh();
			outbox_expire();
			outbox_sweep_orphans();
			outbox_rescue(false);
			self->last_housekeeping = now;
		}
		if (refresh)
		{
			outbox_refresh_accounts(now);
			outbox_refresh_senders(now);
			self->last_refresh = now;
			self->refresh_pending = false;
		}
		if (claim)
		{
			int			quota = 0;

			claimed = outbox_claim(capacity, now, &quota);
			/* more may be due if the claim was full; else find when next */
			self->claim_more = quota > 0 && list_length(claimed) >= quota;
			if (!self->claim_more)
			{
				self->next_due = outbox_next_due(now);
				/* due but not claimed (locked elsewhere): look again soon */
				if (self->next_due != 0 && self->next_due <= now)
					self->next_due = now + 100 * 1000L;
			}
		}
		end_phase();

		MemoryContextSwitchTo(worker_cxt);
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
		/* a wake-up not yet followed by an account refresh */
		if (self->refresh_pending)
			timeout = Min(timeout, WAKE_REFRESH_MS);
	}
	if (timeout == 0)
	{
		self->claim_more = true;
		return;
	}
	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
				   timeout, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	if (rc & WL_LATCH_SET)
		self->refresh_pending = true;
	if (rc & (WL_LATCH_SET | WL_TIMEOUT))
		self->claim_more = true;
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

	if (!attach_slot(&held))
	{
		if (held)
			ereport(DEBUG1,
					(errmsg("twilio_outbox dispatcher not started: held by stop_worker(hold => ...) in database %u",
							MyDatabaseId)));
		else
			ereport(DEBUG1,
					(errmsg("twilio_outbox dispatcher not started: one already runs in database %u",
							MyDatabaseId)));
		leave();
	}
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "twilio_outbox dispatcher", PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname("twilio_outbox dispatcher");

	worker_cxt = AllocSetContextCreate(TopMemoryContext, "twilio_outbox dispatcher",
									   ALLOCSET_DEFAULT_SIZES);
	scratch = AllocSetContextCreate(worker_cxt, "twilio_outbox loop",
									ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(worker_cxt);
	self = palloc0(sizeof(Dispatcher));
	self->claim_more = true;
	outbox_http_init();
	on_proc_exit((pg_on_exit_callback) outbox_http_shutdown, (Datum) 0);

	/* Whatever a previous dispatcher left in flight comes back first. */
	MemoryContextSwitchTo(scratch);
	begin_phase("taking back messages left in flight");
	exit_if_dropped();
	outbox_rescue(true);
	ereport(LOG,
			(errmsg("twilio_outbox dispatcher started in database \"%s\"",
					get_database_name(MyDatabaseId))));
	end_phase();

	for (;;)
	{
		bool		stopping;
		int			capacity;

		MemoryContextSwitchTo(scratch);
		MemoryContextReset(scratch);
		process_signals();
		stopping = ShutdownRequestPending;
		if (stopping && outbox_http_in_flight() == 0 &&
			(self->done == NIL || self->consecutive_errors >= 3))
			break;				/* what could not be recorded is taken back at the next start */
		if (MyLatch->is_set)
		{
			ResetLatch(MyLatch);
			self->claim_more = true;
			self->refresh_pending = true;
		}

		capacity = stopping ? 0 : outbox_max_in_flight - outbox_http_in_flight();
		if (self->next_due != 0 && GetCurrentTimestamp() >= self->next_due)
		{
			self->next_due = 0;
			self->claim_more = true;
		}
		if (self->done != NIL || (self->claim_more && capacity > 0) ||
			GetCurrentTimestamp() - self->last_housekeeping >= REFRESH_INTERVAL_MS * 1000L)
		{
			bool		claim = self->claim_more && capacity > 0 &&
				self->consecutive_errors == 0;

			if (database_phase(claim, Min(capacity, outbox_claim_batch)))
			{
				start_claimed();
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
		else if (self->done == NIL && !stopping)
			idle_wait();
	}

	ereport(LOG, (errmsg("twilio_outbox dispatcher stopped")));
	proc_exit(0);
}

/* ---------- SQL functions ---------- */

static void
require_shmem(void)
{
	if (!outbox_shmem_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the twilio_outbox dispatcher needs twilio_outbox in shared_preload_libraries"),
				 errhint("Add twilio_outbox to shared_preload_libraries and restart the server.")));
}

/* The pid of a database's dispatcher, 0 when none runs. */
static pid_t
current_pid(Oid dboid)
{
	OutboxSlot *slot;
	pid_t		pid = 0;

	LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
	slot = outbox_slot_find(dboid, false);
	if (slot != NULL)
		pid = slot->pid;
	LWLockRelease(outbox_shmem_lock());
	return pid;
}

/* Wait, interruptibly, until the database's dispatcher is not pid (or timeout). */
static bool
wait_for_exit(Oid dboid, pid_t pid, long timeout_ms)
{
	TimestampTz deadline = GetCurrentTimestamp() + timeout_ms * 1000;

	while (current_pid(dboid) == pid)
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 50, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	return true;
}

/*
 * start_worker(supervisor boolean DEFAULT false): start this database's
 * dispatcher unless one runs or is starting; return its pid.  An operator's
 * call ends a stop_worker(hold => ...); the supervisor's (pg_cron's job)
 * respects it, and is remembered for the health view.  NULL while a hold or
 * a DROP DATABASE holds the dispatcher off.  (The 0.1 SQL declares no
 * argument: an operator's call.)
 */
Datum
twilio_outbox_start_worker(PG_FUNCTION_ARGS)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	OutboxSlot *slot;
	TimestampTz now = GetCurrentTimestamp();
	pid_t		pid;
	BgwHandleStatus status;
	bool		supervisor = false;

	if (PG_NARGS() > 0)
	{
		if (PG_ARGISNULL(0))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("supervisor must not be NULL")));
		supervisor = PG_GETARG_BOOL(0);
	}
	require_shmem();
	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(MyDatabaseId, true);
	if (slot == NULL)
	{
		LWLockRelease(outbox_shmem_lock());
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many databases run a twilio_outbox dispatcher"),
				 errhint("Raise twilio_outbox.max_databases (currently %d) and restart the server.",
						 outbox_max_databases)));
	}
	if (supervisor)
		slot->supervised_at = now;
	else
		slot->held_until = 0;
	if (slot->pid != 0)
	{
		pid = slot->pid;
		LWLockRelease(outbox_shmem_lock());
		PG_RETURN_INT32(pid);
	}
	if (slot->hold_until > now || slot->held_until > now)
	{
		LWLockRelease(outbox_shmem_lock());
		PG_RETURN_NULL();
	}
	if (slot->starting_at != 0 && now - slot->starting_at < START_WAIT_MS * 1000L)
	{
		/* Another session is starting it: wait for it to show up. */
		LWLockRelease(outbox_shmem_lock());
		wait_for_exit(MyDatabaseId, 0, START_WAIT_MS);
		pid = current_pid(MyDatabaseId);
		if (pid == 0)
			PG_RETURN_NULL();
		PG_RETURN_INT32(pid);
	}
	slot->starting_at = now;
	LWLockRelease(outbox_shmem_lock());

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "twilio_outbox", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "outbox_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "twilio_outbox dispatcher for %s",
			 get_database_name(MyDatabaseId));
	strlcpy(worker.bgw_type, "twilio_outbox dispatcher", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(MyDatabaseId);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
		slot->starting_at = 0;
		LWLockRelease(outbox_shmem_lock());
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not register the twilio_outbox dispatcher"),
				 errhint("Raise max_worker_processes.")));
	}
	status = WaitForBackgroundWorkerStartup(handle, &pid);
	if (status != BGWH_STARTED)
	{
		LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
		slot->starting_at = 0;
		LWLockRelease(outbox_shmem_lock());
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not start the twilio_outbox dispatcher"),
				 errhint("See the server log.")));
	}
	PG_RETURN_INT32(pid);
}

/* Signal a database's dispatcher to stop and wait for it; false if none ran. */
static bool
stop_dispatcher(Oid dboid, long hold_ms)
{
	OutboxSlot *slot;
	pid_t		pid = 0;

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(dboid, false);
	if (slot != NULL)
	{
		pid = slot->pid;
		if (hold_ms > 0)
			slot->hold_until = GetCurrentTimestamp() + hold_ms * 1000;
	}
	LWLockRelease(outbox_shmem_lock());
	if (pid == 0)
		return false;
	if (kill(pid, SIGTERM) != 0)
		return false;
	if (!wait_for_exit(dboid, pid, outbox_request_timeout_ms + 10000L))
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("twilio_outbox dispatcher (pid %d) has not stopped yet", (int) pid)));
	return true;
}

/*
 * stop_worker(hold interval DEFAULT NULL): stop this database's dispatcher;
 * with hold, keep the supervisor (and twilio_outbox.databases) from starting
 * it again for that long, until an operator's start_worker().  The hold is
 * set even when no dispatcher runs.  False if none ran.
 */
Datum
twilio_outbox_stop_worker(PG_FUNCTION_ARGS)
{
	Interval   *hold = NULL;

	if (PG_NARGS() > 0 && !PG_ARGISNULL(0))
	{
		hold = PG_GETARG_INTERVAL_P(0);
		if (hold->month < 0 || hold->day < 0 || hold->time < 0 ||
			(hold->month == 0 && hold->day == 0 && hold->time == 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("hold must be a positive interval"),
					 errhint("Leave it out (or NULL) to stop without holding the dispatcher off.")));
	}
	require_shmem();
	if (hold != NULL)
	{
		OutboxSlot *slot;
		TimestampTz until;

		until = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														TimestampTzGetDatum(GetCurrentTimestamp()),
														IntervalPGetDatum(hold)));
		LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
		slot = outbox_slot_find(MyDatabaseId, true);
		if (slot != NULL)
			slot->held_until = until;
		LWLockRelease(outbox_shmem_lock());
		if (slot == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("too many databases run a twilio_outbox dispatcher"),
					 errhint("Raise twilio_outbox.max_databases (currently %d) and restart the server.",
							 outbox_max_databases)));
	}
	PG_RETURN_BOOL(stop_dispatcher(MyDatabaseId, 0));
}

Datum
twilio_outbox_worker_pid(PG_FUNCTION_ARGS)
{
	pid_t		pid = outbox_shmem_ready() ? current_pid(MyDatabaseId) : 0;

	if (pid == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(pid);
}

Datum
twilio_outbox_wake_worker(PG_FUNCTION_ARGS)
{
	outbox_wake_at_commit();
	PG_RETURN_VOID();
}

/*
 * library_version(): the version of the library this session runs, the
 * one a dispatcher started now would run when the library is preloaded.
 * Its symbol is new in 0.2: the upgrade script creates the function first,
 * and so fails under a 0.1 library still loaded by a server not restarted.
 */
Datum
twilio_outbox_library_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(OUTBOX_VERSION));
}

/*
 * worker_status(): always one row: whether this database's dispatcher runs,
 * and what it published, of the running dispatcher or, when none runs, of
 * the last one since the server started (counters NULL when none ran).
 * The 0.1 SQL declared seven columns (pid NULL when none runs, no row when
 * none ever ran): a new library under the old SQL answers in that shape.
 */
Datum
twilio_outbox_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OutboxSlot	copy;
	bool		found = false;
	Datum		values[14];
	bool		nulls[14];
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	memset(&copy, 0, sizeof(copy));
	if (outbox_shmem_ready())
	{
		OutboxSlot *slot;

		LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
		slot = outbox_slot_find(MyDatabaseId, false);
		if (slot != NULL)
		{
			memcpy(&copy, slot, offsetof(OutboxSlot, accounts));
			found = true;
		}
		LWLockRelease(outbox_shmem_lock());
	}
	if (rsinfo->setDesc->natts == 7)
	{
		if (!found)
			PG_RETURN_VOID();
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(copy.pid);
		nulls[0] = copy.pid == 0;
		values[1] = TimestampTzGetDatum(copy.started_at);
		nulls[1] = copy.started_at == 0;
		values[2] = Int32GetDatum(copy.in_flight);
		values[3] = Int64GetDatum(copy.sent);
		values[4] = Int64GetDatum(copy.failed);
		values[5] = CStringGetTextDatum(copy.last_error);
		nulls[5] = copy.last_error[0] == '\0';
		values[6] = TimestampTzGetDatum(copy.last_error_at);
		nulls[6] = copy.last_error_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		PG_RETURN_VOID();
	}

	/*
	 * running, pid, library_version, started_at, stopped_at, held_until,
	 * supervised_at, in_flight, sent, dead, last_error, last_error_at,
	 * accounts, accounts_unusable
	 */
	for (i = 0; i < 14; i++)
		nulls[i] = true;
	values[0] = BoolGetDatum(copy.pid != 0);
	nulls[0] = false;
	if (copy.pid != 0)
	{
		values[1] = Int32GetDatum(copy.pid);
		nulls[1] = false;
	}
	if (copy.started_at != 0)
	{
		/* a dispatcher ran since the server started: its figures */
		values[2] = CStringGetTextDatum(copy.library_version);
		values[3] = TimestampTzGetDatum(copy.started_at);
		values[7] = Int32GetDatum(copy.in_flight);
		values[8] = Int64GetDatum(copy.sent);
		values[9] = Int64GetDatum(copy.failed);
		values[12] = Int32GetDatum(copy.accounts_total);
		values[13] = Int32GetDatum(copy.accounts_unusable);
		nulls[2] = nulls[3] = nulls[7] = nulls[8] = nulls[9] = false;
		nulls[12] = nulls[13] = false;
	}
	if (copy.stopped_at != 0)
	{
		values[4] = TimestampTzGetDatum(copy.stopped_at);
		nulls[4] = false;
	}
	if (copy.held_until > GetCurrentTimestamp())
	{
		values[5] = TimestampTzGetDatum(copy.held_until);
		nulls[5] = false;
	}
	if (copy.supervised_at != 0)
	{
		values[6] = TimestampTzGetDatum(copy.supervised_at);
		nulls[6] = false;
	}
	if (copy.last_error[0] != '\0')
	{
		values[10] = CStringGetTextDatum(copy.last_error);
		values[11] = TimestampTzGetDatum(copy.last_error_at);
		nulls[10] = nulls[11] = false;
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	PG_RETURN_VOID();
}

/*
 * worker_accounts(): per account, the concurrency cap the dispatcher uses
 * now (below max_concurrency after 429s), requests in flight, the pause,
 * and why it cannot use the account (NULL when it can).  No rows when no
 * dispatcher runs.  The 0.1 SQL declared the first five columns only.
 */
Datum
twilio_outbox_worker_accounts(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OutboxSlot *slot;
	OutboxAccountState *states;
	int			n = 0;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (!outbox_shmem_ready())
		PG_RETURN_VOID();
	states = palloc(sizeof(OutboxAccountState) * OUTBOX_PUBLISHED_ACCOUNTS);
	LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
	slot = outbox_slot_find(MyDatabaseId, false);
	if (slot != NULL && slot->pid != 0)
	{
		n = slot->naccounts;
		memcpy(states, slot->accounts, sizeof(OutboxAccountState) * n);
	}
	LWLockRelease(outbox_shmem_lock());

	for (i = 0; i < n; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		values[0] = CStringGetTextDatum(states[i].name);
		values[1] = Int32GetDatum(states[i].max_concurrency);
		values[2] = Int32GetDatum(states[i].cap);
		values[3] = Int32GetDatum(states[i].in_flight);
		values[4] = TimestampTzGetDatum(states[i].paused_until);
		nulls[4] = states[i].paused_until == 0 || states[i].paused_until <= GetCurrentTimestamp();
		values[5] = CStringGetTextDatum(states[i].problem);
		nulls[5] = states[i].problem[0] == '\0';
		/* under the 0.1 SQL's five columns the sixth value is not read */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * DROP DATABASE fails while any session is connected, the dispatcher
 * included: stop it first, and keep pg_cron from restarting it meanwhile.
 * DROP EXTENSION wakes it when it commits, so that it leaves at once.
 */
static void
outbox_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			   ProcessUtilityContext context, ParamListInfo params,
			   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DropdbStmt) && outbox_shmem_ready())
	{
		Oid			dboid = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);

		if (OidIsValid(dboid))
			stop_dispatcher(dboid, 60 * 1000L);
	}
	/* DROP EXTENSION: the dispatcher finds out at once, and leaves. */
	if (IsA(parsetree, DropStmt) &&
		((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) parsetree)->objects)
		{
			if (strcmp(strVal(lfirst(lc)), "twilio_outbox") == 0)
				outbox_wake_at_commit();
		}
	}
	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
						  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/*
 * Register a dispatcher for each database of twilio_outbox.databases, to
 * start with the server and be restarted by it if it fails.
 */
static void
register_static_workers(void)
{
	char	   *names = pstrdup(outbox_databases);
	List	   *dbs;
	ListCell   *lc;

	if (!SplitGUCList(names, ',', &dbs))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list syntax in twilio_outbox.databases")));
	foreach(lc, dbs)
	{
		const char *db = lfirst(lc);
		BackgroundWorker worker;

		if (strlen(db) >= BGW_EXTRALEN)
			ereport(ERROR,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("database name \"%s\" in twilio_outbox.databases is too long", db)));
		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 10;
		strlcpy(worker.bgw_library_name, "twilio_outbox", BGW_MAXLEN);
		strlcpy(worker.bgw_function_name, "outbox_worker_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "twilio_outbox dispatcher for %s", db);
		strlcpy(worker.bgw_type, "twilio_outbox dispatcher", BGW_MAXLEN);
		worker.bgw_main_arg = ObjectIdGetDatum(InvalidOid);
		strlcpy(worker.bgw_extra, db, BGW_EXTRALEN);
		RegisterBackgroundWorker(&worker);
	}
}

void
outbox_worker_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = outbox_utility;
	register_static_workers();
}
