/*-------------------------------------------------------------------------
 *
 * partition.c
 *		More than one dispatcher per database: which senders each one
 *		claims, how they share each account's max_concurrency, and which
 *		of them are alive (for the rescue of rows left in 'sending').
 *
 * With twilio_outbox.dispatchers_per_database = N, dispatcher k (its place
 * in the database's slot, shmem.c) claims only the senders whose id modulo
 * N is k.  N is fixed while the server runs, so a sender never changes
 * dispatcher: its token bucket lives in one process only, and its rows are
 * only ever claimed by that process.
 *
 * An account's senders may be spread over several dispatchers, and its
 * max_concurrency holds across all of them.  Each dispatcher takes a share
 * of it proportional to how many of the account's open senders it owns
 * (the units the division leaves over go to each dispatcher in turn, one
 * second each, so that none starves when max_concurrency is below the
 * number of dispatchers), and before each claim it reserves in shared
 * memory what it may still put in flight: never more than max_concurrency
 * less what the other live dispatchers have reserved.  Reservations come
 * down to what is really in flight each time a dispatcher publishes its
 * figures (after every database phase), and to nothing when it exits.  So
 * while dispatchers disagree about the shares (one saw a sender added, the
 * other not yet), the sum still never exceeds max_concurrency.
 *
 * A 429 pauses its account in this process at once, and in the accounts
 * table when recorded, which every dispatcher reads again within a second;
 * so that the others stop sooner, the pause is also published beside the
 * reservations and taken over by each one's next claim.
 *
 * With N = 1 none of this runs: no lock is taken, every sender is ours.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <limits.h>

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "utils/array.h"
#include "utils/timestamp.h"

/* This dispatcher's place among its database's, and how many there are. */
int			outbox_dispatcher_index = 0;
int			outbox_dispatcher_count = 1;

/*
 * When the accounts table was last read (before the snapshot it was read
 * with): a pause another dispatcher published before that is in the table
 * if it still holds; not there, an operator resumed the account.
 */
TimestampTz outbox_accounts_read_at = 0;

/* Accounts beyond the shared table have been reported once. */
static bool table_full_reported = false;

/* Whether this dispatcher claims the sender's messages. */
bool
outbox_sender_mine(const OutboxSender *s)
{
	if (outbox_dispatcher_count <= 1)
		return true;
	return (int) ((uint64) s->id % (uint64) outbox_dispatcher_count) == outbox_dispatcher_index;
}

/*
 * The account's place in the database's table of shared accounts, taken
 * if new; -1 when the table is full.  The caller holds the lock
 * exclusively.  Places are never given back while the slot lives (a
 * renamed account leaves its old name behind): OUTBOX_SHARED_ACCOUNTS is
 * far above the accounts one database sends from.
 */
static int
shared_index(OutboxSlot *slot, OutboxAccount *a)
{
	int			i;

	/* accounts.name is at most 63 bytes (its CHECK); a longer one is not shared */
	if (strlen(a->name) >= sizeof(slot->account_names[0]))
		return -1;
	if (a->shared_index > 0 && a->shared_index <= slot->naccount_names &&
		strcmp(slot->account_names[a->shared_index - 1], a->name) == 0)
		return a->shared_index - 1;
	for (i = 0; i < slot->naccount_names; i++)
		if (strcmp(slot->account_names[i], a->name) == 0)
			break;
	if (i == slot->naccount_names)
	{
		if (i >= OUTBOX_SHARED_ACCOUNTS)
			return -1;
		strlcpy(slot->account_names[i], a->name, sizeof(slot->account_names[i]));
		slot->naccount_names++;
	}
	a->shared_index = i + 1;
	return i;
}

/*
 * This dispatcher's share of the account's max_concurrency this second:
 * floor(max * its senders / all senders), plus one of the units left over
 * when it is its turn (turns rotate by the second among the dispatchers
 * that have senders of the account).  0 when it has none of its senders.
 */
static int
account_share(OutboxAccount *a, int64 second)
{
	int			mine = a->partition_senders[outbox_dispatcher_index];
	int64		total = 0;
	int64		given = 0;
	int			having = 0;
	int			rank = 0;
	int			left;
	int			j;

	if (mine == 0)
		return 0;
	for (j = 0; j < outbox_dispatcher_count; j++)
	{
		int			s = a->partition_senders[j];

		if (s == 0)
			continue;
		if (j < outbox_dispatcher_index)
			rank++;
		having++;
		total += s;
	}
	for (j = 0; j < outbox_dispatcher_count; j++)
		given += (int64) a->max_concurrency * a->partition_senders[j] / total;
	left = a->max_concurrency - (int) given;
	/* left < having: this one's turn for a leftover unit? */
	return (int) ((int64) a->max_concurrency * mine / total) +
		((rank - second % having + having) % having < left ? 1 : 0);
}

/*
 * Before a claim: set each account's partition_room, what this dispatcher
 * may add to what it has in flight, and reserve that in shared memory.
 * Takes the slots' lock exclusively (once per claim, and only with more
 * than one dispatcher).
 */
void
outbox_partition_reserve(TimestampTz now)
{
	ListCell   *lc;
	OutboxSlot *slot = NULL;
	OutboxDispatcherSlot *mine;
	int64		second = now / USECS_PER_SEC;

	if (outbox_dispatcher_count <= 1)
	{
		foreach(lc, outbox_accounts)
			((OutboxAccount *) lfirst(lc))->partition_room = INT_MAX;
		return;
	}

	/* each account's open senders per dispatcher, as every dispatcher counts them */
	foreach(lc, outbox_accounts)
		memset(((OutboxAccount *) lfirst(lc))->partition_senders, 0,
			   sizeof(((OutboxAccount *) lfirst(lc))->partition_senders));
	foreach(lc, outbox_senders)
	{
		OutboxSender *snd = lfirst(lc);

		if (snd->account == NULL || !snd->seen ||
			(snd->paused_until != 0 && snd->paused_until > now))
			continue;
		snd->account->partition_senders[(uint64) snd->id % (uint64) outbox_dispatcher_count]++;
	}

	LWLockAcquire(outbox_shmem_lock(), LW_EXCLUSIVE);
	mine = outbox_my_slot(&slot);
	foreach(lc, outbox_accounts)
	{
		OutboxAccount *a = lfirst(lc);
		int			room;
		int			idx;
		int			j;

		a->partition_room = 0;
		if (mine == NULL || !a->seen)
			continue;
		room = account_share(a, second) - a->in_flight;
		idx = shared_index(slot, a);
		if (idx >= 0)
		{
			int			others = 0;

			/* a 429 another dispatcher had: pause now, not at the next refresh */
			if (slot->account_paused_until[idx] > a->paused_until &&
				slot->account_paused_at[idx] > outbox_accounts_read_at)
				a->paused_until = slot->account_paused_until[idx];
			if (a->paused_until != 0 && a->paused_until > now)
			{
				mine->reserved[idx] = a->in_flight;
				continue;
			}

			for (j = 0; j < outbox_dispatcher_count; j++)
				if (j != outbox_dispatcher_index && slot->dispatchers[j].pid != 0)
					others += slot->dispatchers[j].reserved[idx];
			room = Min(room, a->max_concurrency - others - a->in_flight);
			room = Max(room, 0);
			mine->reserved[idx] = a->in_flight + room;
		}
		else if (!table_full_reported)
		{
			/* the shares alone bound it, except while a sender is added or paused */
			table_full_reported = true;
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("twilio_outbox dispatchers share the concurrency of at most %d accounts per database",
							OUTBOX_SHARED_ACCOUNTS),
					 errdetail("Account \"%s\" and those after it are held to their dispatcher's share of max_concurrency only.",
							   a->name)));
		}
		a->partition_room = Max(room, 0);
	}
	LWLockRelease(outbox_shmem_lock());
}

/*
 * After the claimed messages were put in flight (or finished): this
 * dispatcher's reservations come down to what it has in flight.  The
 * caller holds the lock exclusively (worker.c's publish()).
 */
void
outbox_partition_settle(OutboxSlot *slot, OutboxDispatcherSlot *mine)
{
	ListCell   *lc;

	if (outbox_dispatcher_count <= 1)
		return;
	foreach(lc, outbox_accounts)
	{
		OutboxAccount *a = lfirst(lc);
		int			idx = a->shared_index - 1;

		if (idx >= 0 && idx < slot->naccount_names &&
			strcmp(slot->account_names[idx], a->name) == 0)
		{
			mine->reserved[idx] = a->in_flight;
			/* its 429 pause, for the others' next claim */
			if (a->paused_until > slot->account_paused_until[idx])
			{
				slot->account_paused_until[idx] = a->paused_until;
				slot->account_paused_at[idx] = GetCurrentTimestamp();
			}
		}
	}
}

/*
 * The pids of the dispatchers of this database that run, as an int4[]
 * (this one's only with include_self): whose rows in 'sending' are theirs
 * to finish, never to be taken back by another.  Takes the lock shared.
 */
Datum
outbox_live_dispatchers(bool include_self)
{
	Datum		pids[OUTBOX_MAX_DISPATCHERS];
	int			n = 0;
	int			dims[1];
	int			lbs[1] = {1};
	OutboxSlot *slot;
	int			i;

	LWLockAcquire(outbox_shmem_lock(), LW_SHARED);
	slot = outbox_slot_find(MyDatabaseId, false);
	for (i = 0; slot != NULL && i < outbox_dispatchers_per_database; i++)
	{
		pid_t		pid = slot->dispatchers[i].pid;

		if (pid != 0 && (include_self || pid != MyProcPid))
			pids[n++] = Int32GetDatum(pid);
	}
	LWLockRelease(outbox_shmem_lock());
	dims[0] = n;
	return PointerGetDatum(construct_md_array(pids, NULL, 1, dims, lbs, INT4OID,
											  sizeof(int32), true, TYPALIGN_INT));
}
