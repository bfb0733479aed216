/*-------------------------------------------------------------------------
 *
 * campaign.c
 *		Campaigns (issue 12): the row twilio_enqueue creates on first use
 *		and reads for each message, and the pace bucket per paced campaign
 *		that a database's dispatchers share, on top of the senders' buckets.
 *
 * Enqueue: the campaign row is read FOR SHARE, so that pausing or
 * canceling a campaign (which update the row) waits for the transactions
 * enqueueing into it, and their messages are held or canceled with the
 * others; once a transaction holds the lock, each further message of the
 * same campaign costs one index probe.  The row is created on first use
 * by INSERT ... ON CONFLICT DO NOTHING, then read again.
 *
 * Dispatcher: a campaign with a pace has a token bucket (pace messages per
 * second, burst at once) in shared memory, which all the dispatchers of its
 * database take from (twilio_outbox.dispatchers_per_database may spread its
 * messages over all of them), so the pace and burst hold for their sum.  A
 * claim takes the tokens of all its messages at once, one trip of the
 * table's lock per claim statement, not per message.  The claim reads the
 * campaign's row with each of its messages, so changes apply at once.  A
 * claimed message its bucket cannot admit is put back in the claim's own
 * transaction (nobody ever sees it claimed), due at the next free slot of
 * the campaign, the slots spaced 1/pace apart: the messages that cannot go
 * now leave the head of the due index, so the next claims read other
 * messages and the claim stays O(batch).  Messages of a paused campaign are
 * held out of the due index by pause_campaign() (due at infinity); one that
 * comes back from an attempt meanwhile is put back the same way, and one of
 * a canceled campaign is canceled.
 *
 * The shared table has twilio_outbox.max_paced_campaigns buckets.  Full, a
 * new campaign takes the least recently used idle one (full, nothing put
 * back due later: forgetting it changes nothing); when none is idle, each
 * dispatcher paces that campaign alone at pace / N and burst / N, never
 * unpaced.  The buckets live as long as the server: a dispatcher that
 * restarts, or exits on an error, finds its campaigns' buckets as they
 * were; a server restart, or the crash restart after a process died
 * without cleaning up, starts them full, as new campaigns start.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"
#include "campaign.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/* 1 to 64 characters, no control character: campaigns_name_valid. */
void
outbox_check_campaign_name(const char *name)
{
	if (pg_mbstrlen(name) > OUTBOX_MAX_CAMPAIGN_CHARS || outbox_has_control(name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid campaign name \"%s\"", outbox_clip(name)),
				 errdetail("A campaign name has 1 to %d characters, without control characters.",
						   OUTBOX_MAX_CAMPAIGN_CHARS)));
}

static bool
read_campaign(const char *account, const char *name, OutboxCampaignRow *row)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	char	   *state;

	outbox_prepare(&plan,
				   "SELECT c.state, c.not_before, c.not_after, c.quiet_start, c.quiet_end"
				   " FROM twilio_outbox.campaigns c"
				   " WHERE c.account OPERATOR(pg_catalog.=) $1 AND c.name OPERATOR(pg_catalog.=) $2"
				   " FOR SHARE",
				   2, types);
	values[0] = CStringGetTextDatum(account);
	values[1] = CStringGetTextDatum(name);
	if (SPI_execute_plan(plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read twilio_outbox.campaigns");
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	state = SPI_getvalue(tup, desc, 1);
	row->paused = state != NULL && strcmp(state, "paused") == 0;
	row->canceled = state != NULL && strcmp(state, "canceled") == 0;
	d = SPI_getbinval(tup, desc, 2, &isnull);
	row->not_before = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	row->not_after = isnull ? 0 : DatumGetTimestampTz(d);
	/* both or neither (campaigns_quiet_hours_both_or_neither) */
	d = SPI_getbinval(tup, desc, 4, &isnull);
	row->quiet = !isnull;
	row->quiet_start = isnull ? 0 : DatumGetTimeADT(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	row->quiet_end = isnull ? 0 : DatumGetTimeADT(d);
	return true;
}

/*
 * The campaign's row, created when this is its first message; refuses a
 * campaign that is canceled or has ended.
 */
void
outbox_use_campaign(const char *account, const char *name, OutboxCampaignRow *row)
{
	static SPIPlanPtr insert = NULL;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	if (!read_campaign(account, name, row))
	{
		outbox_prepare(&insert,
					   "INSERT INTO twilio_outbox.campaigns (account, name) VALUES ($1, $2)"
					   " ON CONFLICT DO NOTHING",
					   2, types);
		values[0] = CStringGetTextDatum(account);
		values[1] = CStringGetTextDatum(name);
		if (SPI_execute_plan(insert, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not create a campaign");
		/*
		 * Inserted, or another transaction did first (the insert waited
		 * for it to commit): in READ COMMITTED this read's new snapshot
		 * sees its row; under a transaction snapshot it may not.
		 */
		if (!read_campaign(account, name, row))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read campaign \"%s\"", outbox_clip(name)),
					 errdetail("A concurrent transaction created it."),
					 errhint("Retry the transaction.")));
	}
	if (row->canceled)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("campaign \"%s\" is canceled", outbox_clip(name)),
				 errhint("Use another campaign name.")));
	if (row->not_after != 0 && row->not_after <= GetCurrentTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("campaign \"%s\" has ended", outbox_clip(name)),
				 errdetail("Its not_after time has passed.")));
}

/* --- the dispatcher's side ------------------------------------------- */

/*
 * A campaign's key: "account\0name", zero-padded (an account name has at
 * most 63 bytes, a campaign name 64 characters).
 */
#define CAMPAIGN_KEY_LEN	(NAMEDATALEN + 4 * OUTBOX_MAX_CAMPAIGN_CHARS + 2)

/* A token bucket: pace messages a second, burst at once. */
typedef struct PaceBucket
{
	double		pace;
	double		burst;
	double		tokens;
	TimestampTz refilled_at;	/* 0: new, full at its first use */
	TimestampTz next_slot;		/* when the next put-back message is due */
} PaceBucket;

/*
 * The shared table: one bucket per paced campaign of a database, which all
 * of the database's dispatchers take from.  Keyed by database OID, so that
 * no database ever reads another's (the entries of a dropped database go
 * idle and are reused).  pace_table->lock guards every entry.
 */
typedef struct SharedPaceKey
{
	Oid			dboid;
	char		campaign[CAMPAIGN_KEY_LEN];
} SharedPaceKey;

typedef struct SharedPace
{
	SharedPaceKey key;
	PaceBucket	bucket;
	TimestampTz used_at;		/* the last claim that took from it */
} SharedPace;

typedef struct PaceTable
{
	LWLock	   *lock;
	int			capacity;		/* twilio_outbox.max_paced_campaigns */
	/* full, and no bucket goes idle before this: no need to look again */
	TimestampTz none_idle_before;
} PaceTable;

static PaceTable *pace_table = NULL;
static HTAB *pace_hash = NULL;

/*
 * The dispatcher's own entry for a campaign: what one claim wants of the
 * shared bucket and got, and the bucket it falls back to when the shared
 * table has no room for the campaign.
 */
typedef struct Campaign
{
	char		key[CAMPAIGN_KEY_LEN];	/* hash key */
	PaceBucket	fallback;		/* pace / N and burst / N in this dispatcher */
	TimestampTz used_at;
	/* one claim's (outbox_campaign_claim) */
	uint64		claim;			/* the claim these fields are of */
	double		pace;
	double		burst;
	int			want;			/* its paced messages in the claim */
	int			admit;			/* how many of them may go (left to hand out) */
	TimestampTz due_at;			/* the next one put back is due then */
	int64		spacing;		/* and the one after it that much later */
} Campaign;

static HTAB *campaigns = NULL;
static uint64 claim_seq = 0;
static long prune_above = 1024;
static bool full_reported = false;

/* Room for twilio_outbox.max_paced_campaigns buckets (shmem_request_hook). */
void
outbox_campaign_shmem_request(void)
{
	RequestAddinShmemSpace(add_size(MAXALIGN(sizeof(PaceTable)),
									hash_estimate_size(outbox_max_paced_campaigns,
													   sizeof(SharedPace))));
	RequestNamedLWLockTranche("twilio_outbox campaigns", 1);
}

/* The shared table, attached or created (shmem_startup_hook, under AddinShmemInitLock). */
void
outbox_campaign_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;

	pace_table = ShmemInitStruct("twilio_outbox campaign paces", sizeof(PaceTable), &found);
	if (!found)
	{
		memset(pace_table, 0, sizeof(PaceTable));
		pace_table->lock = &(GetNamedLWLockTranche("twilio_outbox campaigns"))->lock;
		pace_table->capacity = outbox_max_paced_campaigns;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(SharedPaceKey);
	info.entrysize = sizeof(SharedPace);
	/* fixed: the capacity is what was asked for, not what spare memory allows */
	pace_hash = ShmemInitHash("twilio_outbox campaign buckets",
							  outbox_max_paced_campaigns, outbox_max_paced_campaigns,
							  &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/*
 * Take tokens for want messages at pace and burst: *admit of them may go
 * now, the others are put back to the bucket's next free slots, the first
 * due at *due_at, each next one *spacing later.  Refills at the pace the
 * bucket had until now; a new pace spaces the slots anew from now, so the
 * messages the old pace put off are due again at once and spaced at the
 * new one as they come back.  One message at a time gives the same result.
 */
static void
bucket_take(PaceBucket *b, double pace, double burst, int want, TimestampTz now,
			int *admit, TimestampTz *due_at, int64 *spacing)
{
	int			n;
	TimestampTz at;

	if (b->refilled_at == 0)
	{
		b->tokens = burst;
		b->refilled_at = now;
		b->next_slot = 0;
	}
	else
	{
		if (now > b->refilled_at)
			b->tokens += (double) (now - b->refilled_at) / USECS_PER_SEC * b->pace;
		b->refilled_at = Max(b->refilled_at, now);
		if (pace != b->pace)
			b->next_slot = 0;
	}
	b->pace = pace;
	b->burst = burst;
	b->tokens = Min(b->tokens, burst);
	n = b->tokens >= want ? want : Max((int) floor(b->tokens), 0);
	b->tokens -= n;
	*admit = n;
	*spacing = (int64) ceil(USECS_PER_SEC / pace);
	*due_at = 0;
	if (n < want)
	{
		/* the next free slot: when the bucket holds a token, then 1/pace apart */
		at = now + (TimestampTz) ceil((1.0 - b->tokens) / pace * USECS_PER_SEC);
		if (b->next_slot > at)
			at = b->next_slot;
		*due_at = at;
		b->next_slot = at + (want - n) * *spacing;
	}
}

/*
 * When the bucket is as a new one would be (full, no put-back message due
 * later): from then on, forgetting it changes nothing.
 */
static TimestampTz
bucket_idle_at(const PaceBucket *b)
{
	TimestampTz full_at;

	if (b->refilled_at == 0)
		return 0;
	if (b->pace <= 0)
		return DT_NOEND;
	full_at = b->refilled_at +
		(TimestampTz) ceil(Max(b->burst - b->tokens, 0) / b->pace * USECS_PER_SEC);
	return Max(full_at, b->next_slot);
}

/*
 * The table is full: free the least recently used idle bucket; false when
 * none is idle (and none will be before pace_table->none_idle_before, so
 * the claims until then do not scan again).  The caller holds the lock
 * exclusively.
 */
static bool
evict_idle(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	SharedPace *e;
	SharedPace *victim = NULL;
	TimestampTz soonest = DT_NOEND;

	if (now < pace_table->none_idle_before)
		return false;
	hash_seq_init(&seq, pace_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		TimestampTz idle_at = bucket_idle_at(&e->bucket);

		if (idle_at <= now)
		{
			if (victim == NULL || e->used_at < victim->used_at)
				victim = e;
		}
		else if (idle_at < soonest)
			soonest = idle_at;
	}
	if (victim == NULL)
	{
		pace_table->none_idle_before = soonest;
		return false;
	}
	hash_search(pace_hash, &victim->key, HASH_REMOVE, NULL);
	return true;
}

/*
 * This database's shared bucket for the campaign, created if new (*fresh);
 * NULL when the table is full of buckets in use.  The caller holds the
 * lock exclusively.
 */
static SharedPace *
shared_bucket(const char *campaign_key, TimestampTz now, bool *fresh)
{
	SharedPaceKey key;
	SharedPace *e;
	bool		found;

	*fresh = false;
	memset(&key, 0, sizeof(key));
	key.dboid = MyDatabaseId;
	memcpy(key.campaign, campaign_key, CAMPAIGN_KEY_LEN);
	e = hash_search(pace_hash, &key, HASH_FIND, NULL);
	if (e != NULL)
		return e;
	if (hash_get_num_entries(pace_hash) >= pace_table->capacity && !evict_idle(now))
		return NULL;
	e = hash_search(pace_hash, &key, HASH_ENTER_NULL, &found);
	if (e == NULL)
		return NULL;
	/* dynahash leaves all but the key to us: a new, full bucket */
	memset(&e->bucket, 0, sizeof(PaceBucket));
	e->used_at = now;
	*fresh = true;
	return e;
}

/*
 * Forget the entries no claim used for a minute whose fallback bucket is
 * idle (nothing is lost: a new entry is the same), once there are many:
 * the dispatcher sees every campaign ever paced.
 */
static void
prune_campaigns(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	Campaign   *c;

	hash_seq_init(&seq, campaigns);
	while ((c = hash_seq_search(&seq)) != NULL)
		if (c->claim != claim_seq && c->used_at < now - 60 * USECS_PER_SEC &&
			bucket_idle_at(&c->fallback) <= now)
			hash_search(campaigns, c->key, HASH_REMOVE, NULL);
	prune_above = Max(1024, 2 * hash_get_num_entries(campaigns));
}

/* The dispatcher's entry of a campaign, created if new; NULL for a name too long to key. */
static Campaign *
local_campaign(const char *account, const char *name, TimestampTz now)
{
	char		key[CAMPAIGN_KEY_LEN];
	size_t		alen = strlen(account);
	size_t		nlen = strlen(name);
	bool		found;
	Campaign   *c;

	if (campaigns == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = CAMPAIGN_KEY_LEN;
		ctl.entrysize = sizeof(Campaign);
		ctl.hcxt = outbox_worker_cxt;
		campaigns = hash_create("twilio_outbox campaigns", 64, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	/* names longer than the table allows (a superuser's rows): no bucket */
	if (alen + 1 + nlen + 1 > CAMPAIGN_KEY_LEN)
		return NULL;
	memset(key, 0, sizeof(key));
	memcpy(key, account, alen);
	memcpy(key + alen + 1, name, nlen);
	c = hash_search(campaigns, key, HASH_FIND, NULL);
	if (c != NULL)
		return c;
	if (hash_get_num_entries(campaigns) >= prune_above)
		prune_campaigns(now);
	c = hash_search(campaigns, key, HASH_ENTER, &found);
	memset((char *) c + CAMPAIGN_KEY_LEN, 0, sizeof(Campaign) - CAMPAIGN_KEY_LEN);
	return c;
}

/*
 * Each paced campaign of a claim takes what it wants of its shared bucket,
 * all under one trip of the lock; a campaign for which the shared table has
 * no room takes from its fallback bucket here, at pace / N and burst / N
 * (at least 1) for N dispatchers, so that their sum still keeps to its
 * pace.  Never throws while it holds the lock.
 */
static void
take_grants(Campaign **paced, int n, TimestampTz now)
{
	const char *starved = NULL;
	int			i;

	if (pace_hash != NULL)
		LWLockAcquire(pace_table->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		Campaign   *c = paced[i];
		SharedPace *e = NULL;
		bool		fresh = false;

		c->used_at = now;
		if (pace_hash != NULL)
			e = shared_bucket(c->key, now, &fresh);
		if (e == NULL)
		{
			int			ndispatchers = Max(outbox_dispatcher_count, 1);

			bucket_take(&c->fallback, c->pace / ndispatchers,
						Max(c->burst / ndispatchers, 1.0), c->want, now,
						&c->admit, &c->due_at, &c->spacing);
			starved = c->key + strlen(c->key) + 1;
			continue;
		}
		/*
		 * Out of the fallback into a new shared bucket: it starts empty,
		 * since this dispatcher (and maybe the others) spent its burst
		 * there a moment ago.
		 */
		if (fresh && bucket_idle_at(&c->fallback) > now)
			e->bucket.refilled_at = now;
		e->used_at = now;
		bucket_take(&e->bucket, c->pace, c->burst, c->want, now,
					&c->admit, &c->due_at, &c->spacing);
	}
	if (pace_hash != NULL)
		LWLockRelease(pace_table->lock);
	if (starved != NULL && pace_hash != NULL && !full_reported)
	{
		full_reported = true;
		ereport(LOG,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("all twilio_outbox.max_paced_campaigns (%d) shared campaign buckets are in use",
						pace_table->capacity),
				 errdetail("Campaign \"%s\" and any other that finds no bucket is paced by each dispatcher at its pace and burst divided by twilio_outbox.dispatchers_per_database until a bucket is idle.",
						   outbox_clip(starved)),
				 errhint("Raise twilio_outbox.max_paced_campaigns (takes a restart).")));
	}
}

/*
 * What each row of a claim statement may do under its campaign (issue 12):
 * go ahead (hold false: no campaign, an unpaced one, or admitted by its
 * pace), be put back due at due_at (its pace's next free slot, infinity
 * while paused), or be canceled with its campaign.  NULL when no row has a
 * campaign.  account_col, campaign_col and row_col are the columns (from
 * 1) of the message's account, its campaign and its campaign's row as
 * "state pace burst", read by the claim with each message, so a pace,
 * pause or cancel applies from the first claim after it commits.
 *
 * The tokens of the whole claim are taken at once: the rows are counted
 * per paced campaign, each campaign's shared bucket is taken from once
 * under one trip of the lock (take_grants), and the rows of a campaign
 * then go in the claim's order until its tokens are used up, the others
 * put back at its slots.  In the caller's memory context; O(rows).
 */
OutboxCampaignVerdict *
outbox_campaign_claim(SPITupleTable *rows, uint64 nrows, int account_col,
					  int campaign_col, int row_col, TimestampTz now)
{
	TupleDesc	desc = rows->tupdesc;
	OutboxCampaignVerdict *verdicts = NULL;
	Campaign  **of = NULL;		/* each row's paced campaign */
	Campaign  **paced = NULL;	/* each paced campaign, once */
	int			npaced = 0;
	uint64		i;

	claim_seq++;
	for (i = 0; i < nrows; i++)
	{
		HeapTuple	tup = rows->vals[i];
		bool		isnull;
		Datum		d;
		char		state[16] = "";
		double		pace = NAN;
		double		burst = 1;
		Campaign   *c;

		/* no campaign: no cost beyond a look at the null bitmap */
		if (heap_attisnull(tup, campaign_col, desc) || heap_attisnull(tup, account_col, desc))
			continue;
		if (verdicts == NULL)
		{
			verdicts = palloc0(sizeof(OutboxCampaignVerdict) * nrows);
			of = palloc0(sizeof(Campaign *) * nrows);
			paced = palloc(sizeof(Campaign *) * nrows);
		}
		/* no row (a superuser deleted it): unpaced */
		d = heap_getattr(tup, row_col, desc, &isnull);
		if (isnull)
			continue;
		if (sscanf(TextDatumGetCString(d), "%15s %lf %lf", state, &pace, &burst) != 3)
			pace = NAN;
		if (strcmp(state, "canceled") == 0)
		{
			verdicts[i].hold = true;
			verdicts[i].cancel = true;
			continue;
		}
		if (strcmp(state, "paused") == 0)
		{
			verdicts[i].hold = true;
			verdicts[i].due_at = DT_NOEND;
			continue;
		}
		/*
		 * the table's ranges, whatever a superuser wrote; and at least a
		 * message in 11.6 days, so that no slot overflows a timestamp
		 */
		if (isnan(pace) || pace <= 0)
			continue;
		pace = Min(Max(pace, 0.000001), 1000000.0);
		if (isnan(burst) || burst < 1)
			burst = 1;
		burst = Min(burst, 1000000.0);
		c = local_campaign(TextDatumGetCString(heap_getattr(tup, account_col, desc, &isnull)),
						   TextDatumGetCString(heap_getattr(tup, campaign_col, desc, &isnull)),
						   now);
		if (c == NULL)
			continue;
		if (c->claim != claim_seq)
		{
			/* its first row in this claim: its row says the same in all */
			c->claim = claim_seq;
			c->pace = pace;
			c->burst = burst;
			c->want = 0;
			paced[npaced++] = c;
		}
		c->want++;
		of[i] = c;
	}
	if (npaced == 0)
		return verdicts;
	take_grants(paced, npaced, now);
	for (i = 0; i < nrows; i++)
	{
		Campaign   *c = of[i];

		if (c == NULL)
			continue;
		if (c->admit > 0)
		{
			c->admit--;
			continue;
		}
		verdicts[i].hold = true;
		verdicts[i].due_at = c->due_at;
		c->due_at += c->spacing;
	}
	return verdicts;
}
