/*-------------------------------------------------------------------------
 *
 * control.c
 *		The SQL functions that control and show the dispatchers (start, stop,
 *		pid, wake, status, each dispatcher, accounts, library version), with an entry point
 *		per SQL signature (0.1 and _0_2), the utility hook that stops a
 *		dispatcher before DROP DATABASE and wakes it on DROP and ALTER
 *		EXTENSION, and the registration of the dispatchers of
 *		twilio_outbox.databases.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <signal.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(twilio_outbox_start_worker);
PG_FUNCTION_INFO_V1(twilio_outbox_start_worker_0_2);
PG_FUNCTION_INFO_V1(twilio_outbox_stop_worker);
PG_FUNCTION_INFO_V1(twilio_outbox_stop_worker_0_2);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_pid);
PG_FUNCTION_INFO_V1(twilio_outbox_wake_worker);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_status);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_status_0_2);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_accounts);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_accounts_0_2);
PG_FUNCTION_INFO_V1(twilio_outbox_library_version);
PG_FUNCTION_INFO_V1(twilio_outbox_worker_dispatchers_0_2);

#define START_WAIT_MS		10000

static ProcessUtility_hook_type prev_utility_hook = NULL;

static void
require_shmem(void)
{
	if (!outbox_shmem_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the twilio_outbox dispatcher needs twilio_outbox in shared_preload_libraries"),
				 errhint("Add twilio_outbox to shared_preload_libraries and restart the server.")));
}

/*
 * The pid of a database's dispatcher, the first that runs (the lowest
 * place), 0 when none runs.
 */
static pid_t
current_pid(Oid dboid)
{
	OutboxSlot *slot;
	pid_t		pid = 0;
	int			i;

	LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
	slot = outbox_slot_find(dboid, false);
	for (i = 0; slot != NULL && pid == 0 && i < outbox_dispatchers_per_database; i++)
		pid = slot->dispatchers[i].pid;
	LWLockRelease(outbox_shmem_lock());
	return pid;
}

/* Whether pid is one of the database's dispatchers. */
static bool
pid_running(Oid dboid, pid_t pid)
{
	OutboxSlot *slot;
	bool		found = false;
	int			i;

	LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
	slot = outbox_slot_find(dboid, false);
	for (i = 0; slot != NULL && i < outbox_dispatchers_per_database; i++)
		if (slot->dispatchers[i].pid == pid)
			found = true;
	LWLockRelease(outbox_shmem_lock());
	return found;
}

/*
 * Wait, interruptibly, until pid is none of the database's dispatchers
 * (pid 0: until one runs), or timeout.
 */
static bool
wait_for_exit(Oid dboid, pid_t pid, long timeout_ms)
{
	TimestampTz deadline = GetCurrentTimestamp() + timeout_ms * 1000;

	while (pid == 0 ? current_pid(dboid) == 0 : pid_running(dboid, pid))
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
 * Wait, interruptibly, until a started dispatcher has taken its place (or
 * left without one, or timeout): only then is it known which place it has.
 */
static void
wait_for_attach(Oid dboid, pid_t pid, long timeout_ms)
{
	TimestampTz deadline = GetCurrentTimestamp() + timeout_ms * 1000;

	while (!pid_running(dboid, pid) && kill(pid, 0) == 0 &&
		   GetCurrentTimestamp() < deadline)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * start_worker(supervisor boolean DEFAULT false): start this database's
 * dispatchers (twilio_outbox.dispatchers_per_database of them) that do not
 * run, unless a start is under way, and wait until they have taken their
 * places; return the pid of the first that runs (the lowest place).
 * An operator's call ends a stop_worker(hold => ...); the supervisor's
 * (pg_cron's job) respects it, and is remembered for the health view.  NULL
 * while a hold or a DROP DATABASE holds the dispatchers off.  (The 0.1 SQL
 * declares no argument, !v0_2: an operator's call.)
 */
static Datum
start_worker(FunctionCallInfo fcinfo, bool v0_2)
{
	BackgroundWorker worker;
	OutboxSlot *slot;
	TimestampTz now = GetCurrentTimestamp();
	pid_t		pid;
	pid_t		first = 0;
	bool		supervisor = false;
	pid_t		started[OUTBOX_MAX_DISPATCHERS];
	int			nstarted = 0;
	int			missing;
	int			i;

	if (v0_2)
	{
		if (PG_ARGISNULL(0))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("supervisor must not be NULL")));
		supervisor = PG_GETARG_BOOL(0);
	}
	require_shmem();

	/*
	 * A standby: a dispatcher registered now would wait (and its caller
	 * with it) until a promotion, and then start behind the operator's
	 * back.  The supervisor's call (pg_cron does not run jobs on a standby,
	 * but another scheduler may) does nothing; an operator's is refused.
	 */
	if (RecoveryInProgress())
	{
		if (supervisor)
			PG_RETURN_NULL();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the twilio_outbox dispatcher cannot run during recovery"),
				 errdetail("This server is a standby, or has not finished recovery; the dispatcher sends only from a primary."),
				 errhint("Start it on the primary. After a promotion it starts by itself where twilio_outbox.databases names the database or the supervisor's pg_cron job runs; else call this function then.")));
	}
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
	missing = outbox_dispatchers_per_database - outbox_slot_running(slot);
	for (i = 0; first == 0 && i < outbox_dispatchers_per_database; i++)
		first = slot->dispatchers[i].pid;
	if (missing == 0)
	{
		LWLockRelease(outbox_shmem_lock());
		PG_RETURN_INT32(first);
	}
	if (slot->hold_until > now || slot->held_until > now)
	{
		LWLockRelease(outbox_shmem_lock());
		if (first != 0)
			PG_RETURN_INT32(first);
		PG_RETURN_NULL();
	}
	if (slot->starting_at != 0 && now - slot->starting_at < START_WAIT_MS * 1000L)
	{
		/* Another session is starting them: wait for one to show up. */
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

	/* each new one takes the first free place (and its senders) when it attaches */
	for (i = 0; i < missing; i++)
	{
		BackgroundWorkerHandle *handle;
		BgwHandleStatus status;

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
		started[nstarted++] = pid;
	}
	for (i = 0; i < nstarted; i++)
		wait_for_attach(MyDatabaseId, started[i], START_WAIT_MS);
	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot->starting_at = 0;
	LWLockRelease(outbox_shmem_lock());
	/* the first place's, whichever of them took it */
	pid = current_pid(MyDatabaseId);
	if (pid == 0)
		pid = started[0];
	PG_RETURN_INT32(pid);
}

/* Signal a database's dispatchers to stop and wait for them; false if none ran. */
static bool
stop_dispatcher(Oid dboid, long hold_ms)
{
	OutboxSlot *slot;
	pid_t		pids[OUTBOX_MAX_DISPATCHERS];
	int			n = 0;
	int			signalled = 0;
	int			i;

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(dboid, false);
	if (slot != NULL)
	{
		for (i = 0; i < outbox_dispatchers_per_database; i++)
			if (slot->dispatchers[i].pid != 0)
				pids[n++] = slot->dispatchers[i].pid;
		if (hold_ms > 0)
			slot->hold_until = GetCurrentTimestamp() + hold_ms * 1000;
	}
	LWLockRelease(outbox_shmem_lock());
	/* all at once: each finishes its requests in flight, in parallel */
	for (i = 0; i < n; i++)
		if (kill(pids[i], SIGTERM) == 0)
			pids[signalled++] = pids[i];
	for (i = 0; i < signalled; i++)
		if (!wait_for_exit(dboid, pids[i], outbox_request_timeout_ms + 10000L))
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("twilio_outbox dispatcher (pid %d) has not stopped yet", (int) pids[i])));
	return signalled > 0;
}

/*
 * stop_worker(hold interval DEFAULT NULL): stop this database's dispatcher;
 * with hold, keep the supervisor (and twilio_outbox.databases) from starting
 * it again for that long, until an operator's start_worker().  The hold is
 * set even when no dispatcher runs.  False if none ran.
 */
static Datum
stop_worker(FunctionCallInfo fcinfo, bool v0_2)
{
	Interval   *hold = NULL;

	if (v0_2 && !PG_ARGISNULL(0))
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
 * A copy of the database's slot and of its dispatchers' figures (without
 * their published accounts unless with_accounts), palloc'd; NULL when the
 * database has no slot.  Takes the lock shared.
 */
static OutboxDispatcherSlot *
copy_dispatchers(OutboxSlot *copy, bool with_accounts)
{
	OutboxDispatcherSlot *d = NULL;
	Size		size = with_accounts ? sizeof(OutboxDispatcherSlot) :
		offsetof(OutboxDispatcherSlot, accounts);
	int			i;

	memset(copy, 0, sizeof(OutboxSlot));
	if (!outbox_shmem_ready())
		return NULL;
	d = palloc0(sizeof(OutboxDispatcherSlot) * outbox_dispatchers_per_database);
	LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
	{
		OutboxSlot *slot = outbox_slot_find(MyDatabaseId, false);

		if (slot == NULL)
		{
			pfree(d);
			d = NULL;
		}
		else
		{
			memcpy(copy, slot, offsetof(OutboxSlot, naccount_names));
			for (i = 0; i < outbox_dispatchers_per_database; i++)
				memcpy(&d[i], &slot->dispatchers[i], size);
		}
	}
	LWLockRelease(outbox_shmem_lock());
	return d;
}

/*
 * worker_status(): always one row: whether this database's dispatchers run
 * (all twilio_outbox.dispatchers_per_database of them), and what they
 * published, summed: of the running ones or, for one that does not run,
 * of its last run since the server started (counters NULL when none ever
 * ran).  pid is the first one's that runs (worker_dispatchers() shows each).
 * The 0.1 SQL declared seven columns (pid NULL when none runs, no row when
 * none ever ran): a new library under the old SQL answers in that shape.
 */
static Datum
worker_status(FunctionCallInfo fcinfo, bool v0_2)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OutboxSlot	copy;
	OutboxDispatcherSlot *d;
	Datum		values[16];
	bool		nulls[16];
	pid_t		pid = 0;
	int			running = 0;
	int			first_ran = -1;
	TimestampTz started_at = 0;
	TimestampTz stopped_at = 0;
	TimestampTz last_error_at = 0;
	const char *last_error = NULL;
	int			in_flight = 0;
	int64		sent = 0;
	int64		failed = 0;
	int			accounts = 0;
	int			unusable = 0;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	d = copy_dispatchers(&copy, false);
	for (i = 0; d != NULL && i < outbox_dispatchers_per_database; i++)
	{
		if (d[i].pid != 0)
		{
			running++;
			if (pid == 0)
				pid = d[i].pid;
		}
		else if (d[i].stopped_at > stopped_at)
			stopped_at = d[i].stopped_at;
		if (d[i].started_at == 0)
			continue;
		if (first_ran < 0)
			first_ran = i;
		in_flight += d[i].in_flight;
		sent += d[i].sent;
		failed += d[i].failed;
		accounts = Max(accounts, d[i].accounts_total);
		unusable = Max(unusable, d[i].accounts_unusable);
		if (d[i].last_error[0] != '\0' && d[i].last_error_at >= last_error_at)
		{
			last_error_at = d[i].last_error_at;
			last_error = d[i].last_error;
		}
	}
	/* the earliest start of those that run; when none runs, the last run's */
	for (i = 0; d != NULL && i < outbox_dispatchers_per_database; i++)
		if (running > 0 ? d[i].pid != 0 && (started_at == 0 || d[i].started_at < started_at)
			: d[i].started_at > started_at)
			started_at = d[i].started_at;
	if (!v0_2)
	{
		if (d == NULL)
			PG_RETURN_VOID();
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(pid);
		nulls[0] = pid == 0;
		values[1] = TimestampTzGetDatum(started_at);
		nulls[1] = started_at == 0;
		values[2] = Int32GetDatum(in_flight);
		values[3] = Int64GetDatum(sent);
		values[4] = Int64GetDatum(failed);
		values[5] = CStringGetTextDatum(last_error ? last_error : "");
		nulls[5] = last_error == NULL;
		values[6] = TimestampTzGetDatum(last_error_at);
		nulls[6] = last_error == NULL;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		PG_RETURN_VOID();
	}

	/*
	 * running, pid, library_version, started_at, stopped_at, held_until,
	 * supervised_at, in_flight, sent, dead, last_error, last_error_at,
	 * accounts, accounts_unusable, dispatchers, dispatchers_running
	 */
	for (i = 0; i < 16; i++)
		nulls[i] = true;
	values[0] = BoolGetDatum(running == outbox_dispatchers_per_database);
	nulls[0] = false;
	if (pid != 0)
	{
		values[1] = Int32GetDatum(pid);
		nulls[1] = false;
	}
	if (first_ran >= 0)
	{
		/* a dispatcher ran since the server started: the figures */
		values[2] = CStringGetTextDatum(d[first_ran].library_version);
		values[3] = TimestampTzGetDatum(started_at);
		values[7] = Int32GetDatum(in_flight);
		values[8] = Int64GetDatum(sent);
		values[9] = Int64GetDatum(failed);
		values[12] = Int32GetDatum(accounts);
		values[13] = Int32GetDatum(unusable);
		nulls[2] = nulls[3] = nulls[7] = nulls[8] = nulls[9] = false;
		nulls[12] = nulls[13] = false;
	}
	if (stopped_at != 0 && running < outbox_dispatchers_per_database)
	{
		values[4] = TimestampTzGetDatum(stopped_at);
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
	if (last_error != NULL)
	{
		values[10] = CStringGetTextDatum(last_error);
		values[11] = TimestampTzGetDatum(last_error_at);
		nulls[10] = nulls[11] = false;
	}
	values[14] = Int32GetDatum(outbox_shmem_ready() ? outbox_dispatchers_per_database : 0);
	values[15] = Int32GetDatum(running);
	nulls[14] = nulls[15] = false;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	PG_RETURN_VOID();
}

/*
 * worker_dispatchers(): one row per dispatcher place of this database
 * (twilio_outbox.dispatchers_per_database), whether it runs and what it
 * published, of the running one or of the last run in that place (NULL
 * when none ran there); senders: how many of the senders it claims for.
 * No rows without the library preloaded.
 */
Datum
twilio_outbox_worker_dispatchers_0_2(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OutboxSlot	copy;
	OutboxDispatcherSlot *d;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (!outbox_shmem_ready())
		PG_RETURN_VOID();
	d = copy_dispatchers(&copy, false);
	for (i = 0; i < outbox_dispatchers_per_database; i++)
	{
		/*
		 * dispatcher, running, pid, library_version, started_at,
		 * stopped_at, senders, in_flight, sent, dead, last_error,
		 * last_error_at
		 */
		Datum		values[12];
		bool		nulls[12];
		int			j;

		for (j = 0; j < 12; j++)
			nulls[j] = true;
		values[0] = Int32GetDatum(i);
		values[1] = BoolGetDatum(d != NULL && d[i].pid != 0);
		nulls[0] = nulls[1] = false;
		if (d != NULL && d[i].pid != 0)
		{
			values[2] = Int32GetDatum(d[i].pid);
			nulls[2] = false;
		}
		if (d != NULL && d[i].started_at != 0)
		{
			values[3] = CStringGetTextDatum(d[i].library_version);
			values[4] = TimestampTzGetDatum(d[i].started_at);
			values[6] = Int32GetDatum(d[i].nsenders);
			values[7] = Int32GetDatum(d[i].in_flight);
			values[8] = Int64GetDatum(d[i].sent);
			values[9] = Int64GetDatum(d[i].failed);
			nulls[3] = nulls[4] = nulls[6] = nulls[7] = nulls[8] = nulls[9] = false;
		}
		if (d != NULL && d[i].pid == 0 && d[i].stopped_at != 0)
		{
			values[5] = TimestampTzGetDatum(d[i].stopped_at);
			nulls[5] = false;
		}
		if (d != NULL && d[i].last_error[0] != '\0')
		{
			values[10] = CStringGetTextDatum(d[i].last_error);
			values[11] = TimestampTzGetDatum(d[i].last_error_at);
			nulls[10] = nulls[11] = false;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * worker_accounts(): per account, the concurrency cap the dispatchers use
 * now (below max_concurrency after 429s; with more than one dispatcher the
 * sum of theirs, each within its share), requests in flight (summed), the
 * pause, and why they cannot use the account (NULL when they can).  No rows
 * when no dispatcher runs.  The 0.1 SQL declared the first five columns
 * only.
 */
static Datum
worker_accounts(FunctionCallInfo fcinfo, bool v0_2)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OutboxSlot	copy;
	OutboxDispatcherSlot *d;
	OutboxAccountState *states;
	int			n = 0;
	int			i;
	int			k;

	InitMaterializedSRF(fcinfo, 0);
	d = copy_dispatchers(&copy, true);
	if (d == NULL)
		PG_RETURN_VOID();
	states = palloc(sizeof(OutboxAccountState) * OUTBOX_PUBLISHED_ACCOUNTS);
	/* merged by name over the running dispatchers, in the first one's order */
	for (k = 0; k < outbox_dispatchers_per_database; k++)
	{
		if (d[k].pid == 0)
			continue;
		for (i = 0; i < d[k].naccounts; i++)
		{
			OutboxAccountState *st = &d[k].accounts[i];
			int			j;

			for (j = 0; j < n; j++)
				if (strcmp(states[j].name, st->name) == 0)
					break;
			if (j == n)
			{
				if (n == OUTBOX_PUBLISHED_ACCOUNTS)
					continue;
				states[n++] = *st;
				continue;
			}
			states[j].cap += st->cap;
			states[j].in_flight += st->in_flight;
			states[j].paused_until = Max(states[j].paused_until, st->paused_until);
			if (states[j].problem[0] == '\0')
				strlcpy(states[j].problem, st->problem, sizeof(states[j].problem));
		}
	}

	for (i = 0; i < n; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		values[0] = CStringGetTextDatum(states[i].name);
		values[1] = Int32GetDatum(states[i].max_concurrency);
		/* each dispatcher's cap is the whole max_concurrency: not above it in sum */
		values[2] = Int32GetDatum(Min(states[i].cap, states[i].max_concurrency));
		values[3] = Int32GetDatum(states[i].in_flight);
		values[4] = TimestampTzGetDatum(states[i].paused_until);
		nulls[4] = states[i].paused_until == 0 || states[i].paused_until <= GetCurrentTimestamp();
		values[5] = CStringGetTextDatum(states[i].problem);
		nulls[5] = states[i].problem[0] == '\0';
		/* under the 0.1 SQL's five columns (!v0_2) the sixth is not read */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * The C entry points by SQL signature, the way pg_stat_statements versions
 * its own: a 0.1 schema (not yet updated, or a database the new library
 * serves before ALTER EXTENSION UPDATE) calls the unversioned symbols with
 * the 0.1 signatures, the 0.2 schema calls the _0_2 symbols.  Neither is
 * ever called with the other's arguments or result columns.
 */
Datum
twilio_outbox_start_worker(PG_FUNCTION_ARGS)
{
	return start_worker(fcinfo, false);
}

Datum
twilio_outbox_start_worker_0_2(PG_FUNCTION_ARGS)
{
	return start_worker(fcinfo, true);
}

Datum
twilio_outbox_stop_worker(PG_FUNCTION_ARGS)
{
	return stop_worker(fcinfo, false);
}

Datum
twilio_outbox_stop_worker_0_2(PG_FUNCTION_ARGS)
{
	return stop_worker(fcinfo, true);
}

Datum
twilio_outbox_worker_status(PG_FUNCTION_ARGS)
{
	return worker_status(fcinfo, false);
}

Datum
twilio_outbox_worker_status_0_2(PG_FUNCTION_ARGS)
{
	return worker_status(fcinfo, true);
}

Datum
twilio_outbox_worker_accounts(PG_FUNCTION_ARGS)
{
	return worker_accounts(fcinfo, false);
}

Datum
twilio_outbox_worker_accounts_0_2(PG_FUNCTION_ARGS)
{
	return worker_accounts(fcinfo, true);
}

/*
 * DROP DATABASE fails while any session is connected, the dispatcher
 * included: stop it first, and keep pg_cron from restarting it meanwhile.
 * DROP EXTENSION wakes it when it commits, so that it leaves at once;
 * ALTER EXTENSION too, so that one waiting for the update starts at once.
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
	/* ALTER EXTENSION: a dispatcher waiting for the update starts at once. */
	if (IsA(parsetree, AlterExtensionStmt) &&
		strcmp(((AlterExtensionStmt *) parsetree)->extname, "twilio_outbox") == 0)
		outbox_wake_at_commit();
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
	int			i;

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
		/* each takes a free place (and its senders) when it attaches */
		for (i = 0; i < outbox_dispatchers_per_database; i++)
			RegisterBackgroundWorker(&worker);
	}
}

void
outbox_control_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = outbox_utility;
	register_static_workers();
}
