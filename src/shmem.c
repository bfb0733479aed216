/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory: one slot per database that runs dispatchers (with room
 *		for twilio_outbox.dispatchers_per_database of them), and the wake-up
 *		of those dispatchers when an enqueueing transaction commits; and,
 *		sized and attached by the same hooks, campaign.c's pace buckets.
 *
 * The slots exist only when the library is in shared_preload_libraries.
 * Without it twilio_enqueue() still works, the dispatcher cannot run, and
 * wake-ups are no-ops.  outbox_shmem_lock() guards every slot field.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"
#include "campaign.h"

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
	Size		slot_size;		/* a slot with its dispatchers */
	char		slots[FLEXIBLE_ARRAY_MEMBER];	/* nslots of slot_size bytes */
} OutboxShared;

static OutboxShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This backend enqueued something in the current transaction. */
static bool wake_pending = false;
static bool xact_callback_registered = false;

/* A database's slot with room for its dispatchers, MAXALIGNed for the next one. */
static Size
slot_size(void)
{
	return MAXALIGN(add_size(offsetof(OutboxSlot, dispatchers),
							 mul_size(outbox_dispatchers_per_database,
									  sizeof(OutboxDispatcherSlot))));
}

static Size
shared_size(void)
{
	return add_size(offsetof(OutboxShared, slots),
					mul_size(outbox_max_databases, slot_size()));
}

static OutboxSlot *
slot_at(int i)
{
	return (OutboxSlot *) (shared->slots + i * shared->slot_size);
}

/* How many dispatchers of the database run.  The caller holds the lock. */
int
outbox_slot_running(const OutboxSlot *slot)
{
	int			n = 0;
	int			i;

	for (i = 0; i < outbox_dispatchers_per_database; i++)
		if (slot->dispatchers[i].pid != 0)
			n++;
	return n;
}

static void
outbox_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestNamedLWLockTranche("twilio_outbox", 1);
	/* campaign.c's paces, under their own lock: the claim path takes it */
	outbox_campaign_shmem_request();
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
		shared->slot_size = slot_size();
	}
	outbox_campaign_shmem_startup();
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
		OutboxSlot *slot = slot_at(i);

		if (slot->dboid == dboid)
			return slot;
		/* a held database keeps its slot: the hold lives in it */
		if (create && spare == NULL && (slot->dboid == InvalidOid ||
							  (outbox_slot_running(slot) == 0 && slot->starting_at == 0 &&
							   slot->held_until <= GetCurrentTimestamp())))
			spare = slot;
	}
	if (spare == NULL)
		return NULL;
	memset(spare, 0, shared->slot_size);
	spare->dboid = dboid;
	return spare;
}

/*
 * Set the latches of a database's dispatchers that run: each claims only
 * its own senders, and which of them the new rows are for is not known here.
 */
void
outbox_wake(Oid dboid)
{
	OutboxSlot *slot;
	int			procnos[OUTBOX_MAX_DISPATCHERS];
	int			n = 0;
	int			i;

	if (shared == NULL)
		return;
	LWLockAcquire(shared->lock, LW_SHARED);
	slot = outbox_slot_find(dboid, false);
	for (i = 0; slot != NULL && i < outbox_dispatchers_per_database; i++)
		if (slot->dispatchers[i].pid != 0)
			procnos[n++] = slot->dispatchers[i].pgprocno;
	LWLockRelease(shared->lock);
	for (i = 0; i < n; i++)
		SetLatch(&ProcGlobal->allProcs[procnos[i]].procLatch);
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

/* This process's dispatcher slot and its database's, or NULL.  The caller holds the lock. */
OutboxDispatcherSlot *
outbox_my_slot(OutboxSlot **database)
{
	OutboxSlot *slot = outbox_slot_find(MyDatabaseId, false);

	if (slot == NULL || outbox_dispatcher_index >= outbox_dispatchers_per_database ||
		slot->dispatchers[outbox_dispatcher_index].pid != MyProcPid)
		return NULL;
	if (database)
		*database = slot;
	return &slot->dispatchers[outbox_dispatcher_index];
}

static void
detach_slot(int code, Datum arg)
{
	OutboxDispatcherSlot *d;

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	d = outbox_my_slot(NULL);
	if (d != NULL)
	{
		d->pid = 0;
		d->in_flight = 0;
		/* what it had in flight is over: none of it counts for the others */
		memset(d->reserved, 0, sizeof(d->reserved));
		d->stopped_at = GetCurrentTimestamp();
	}
	LWLockRelease(outbox_shmem_lock());
}

/*
 * Take a free dispatcher place of this database (the lowest), and with it
 * the partition of the senders that index stands for
 * (outbox_dispatcher_index); false when all twilio_outbox.dispatchers_per_database
 * places are taken, or an operator's stop_worker(hold => ...) holds this
 * database (a dispatcher of twilio_outbox.databases that failed is restarted
 * by the postmaster, and must not end the hold either).
 */
bool
outbox_slot_attach(bool *held)
{
	OutboxSlot *slot;
	TimestampTz now = GetCurrentTimestamp();
	bool		ok = false;
	int			i;

	*held = false;
	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	slot = outbox_slot_find(MyDatabaseId, true);
	if (slot != NULL && slot->held_until > now)
	{
		slot->starting_at = 0;
		*held = true;
	}
	for (i = 0; slot != NULL && !*held && i < outbox_dispatchers_per_database; i++)
	{
		OutboxDispatcherSlot *d = &slot->dispatchers[i];

		if (d->pid != 0)
			continue;
		memset(d, 0, sizeof(OutboxDispatcherSlot));
		d->pid = MyProcPid;
		d->pgprocno = GetNumberFromPGProc(MyProc);
		d->started_at = now;
		strlcpy(d->library_version, OUTBOX_VERSION, sizeof(d->library_version));
		outbox_dispatcher_index = i;
		outbox_dispatcher_count = outbox_dispatchers_per_database;
		/* the last of those asked for is here */
		if (outbox_slot_running(slot) == outbox_dispatchers_per_database)
			slot->starting_at = 0;
		ok = true;
		break;
	}
	LWLockRelease(outbox_shmem_lock());
	if (ok)
		before_shmem_exit(detach_slot, (Datum) 0);
	return ok;
}
