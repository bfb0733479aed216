/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory: one slot per database that runs a dispatcher, and the
 *		wake-up of that dispatcher when an enqueueing transaction commits.
 *
 * The slots exist only when the library is in shared_preload_libraries.
 * Without it twilio_enqueue() still works, the dispatcher cannot run, and
 * wake-ups are no-ops.  outbox_shmem_lock() guards every slot field.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

typedef struct OutboxShared
{
	LWLock	   *lock;
	int			nslots;
	OutboxSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} OutboxShared;

static OutboxShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This backend enqueued something in the current transaction. */
static bool wake_pending = false;
static bool xact_callback_registered = false;

static Size
shared_size(void)
{
	return add_size(offsetof(OutboxShared, slots),
					mul_size(outbox_max_databases, sizeof(OutboxSlot)));
}

static void
outbox_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestNamedLWLockTranche("twilio_outbox", 1);
}

static void
outbox_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("twilio_outbox", shared_size(), &found);
	if (!found)
	{
		memset(shared, 0, shared_size());
		shared->lock = &(GetNamedLWLockTranche("twilio_outbox"))->lock;
		shared->nslots = outbox_max_databases;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init: shared memory only when preloaded. */
void
outbox_shmem_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = outbox_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = outbox_shmem_startup;
}

bool
outbox_shmem_ready(void)
{
	return shared != NULL;
}

LWLock *
outbox_shmem_lock(void)
{
	Assert(shared != NULL);
	return shared->lock;
}

/*
 * The slot of a database, or NULL.  With create, a free slot is taken for
 * it (one whose database has no dispatcher, none starting and no hold; the
 * figures of that database's last dispatcher go with it); NULL when all are
 * in use.  The caller holds the lock, exclusively to create.
 */
OutboxSlot *
outbox_slot_find(Oid dboid, bool create)
{
	OutboxSlot *spare = NULL;
	int			i;

	for (i = 0; i < shared->nslots; i++)
	{
		OutboxSlot *slot = &shared->slots[i];

		if (slot->dboid == dboid)
			return slot;
		/* a held database keeps its slot: the hold lives in it */
		if (create && spare == NULL && (slot->dboid == InvalidOid ||
							  (slot->pid == 0 && slot->starting_at == 0 &&
							   slot->held_until <= GetCurrentTimestamp())))
			spare = slot;
	}
	if (spare == NULL)
		return NULL;
	memset(spare, 0, sizeof(OutboxSlot));
	spare->dboid = dboid;
	return spare;
}

/* Set the latch of a database's dispatcher, if one runs. */
void
outbox_wake(Oid dboid)
{
	OutboxSlot *slot;
	int			procno = -1;

	if (shared == NULL)
		return;
	LWLockAcquire(shared->lock, LW_SHARED);
	slot = outbox_slot_find(dboid, false);
	if (slot != NULL && slot->pid != 0)
		procno = slot->pgprocno;
	LWLockRelease(shared->lock);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * At commit the rows are visible to the dispatcher's next claim, so that is
 * when to wake it; on abort there is nothing to send.  Never throws.
 */
static void
outbox_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_pending)
			{
				wake_pending = false;
				outbox_wake(MyDatabaseId);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction's commit is found by polling */
			wake_pending = false;
			break;
		default:
			break;
	}
}

/* Ask for the dispatcher to be woken when the current transaction commits. */
void
outbox_wake_at_commit(void)
{
	if (shared == NULL)
		return;
	if (!xact_callback_registered)
	{
		RegisterXactCallback(outbox_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_pending = true;
}

/* ---------- the slot a dispatcher holds ---------- */

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
bool
outbox_slot_attach(bool *held)
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

