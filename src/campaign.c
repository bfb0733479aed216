/*-------------------------------------------------------------------------
 *
 * campaign.c
 *		Campaigns (issue 12): the row twilio_enqueue creates on first use
 *		and reads for each message, and the dispatcher's pace bucket per
 *		paced campaign, on top of the senders' buckets.
 *
 * Enqueue: the campaign row is read FOR SHARE, so that pausing or
 * canceling a campaign (which update the row) waits for the transactions
 * enqueueing into it, and their messages are held or canceled with the
 * others; once a transaction holds the lock, each further message of the
 * same campaign costs one index probe.  The row is created on first use
 * by INSERT ... ON CONFLICT DO NOTHING, then read again.
 *
 * Dispatcher: a campaign with a pace has a token bucket (pace messages per
 * second, burst at once) in the dispatcher's memory; the claim reads the
 * campaign's row with each of its messages, so changes apply at once.  A claimed message its bucket cannot admit is put back in
 * the claim's own transaction (nobody ever sees it claimed), due at the
 * next free slot of the campaign, the slots spaced 1/pace apart: the
 * messages that cannot go now leave the head of the due index, so the
 * next claims read other messages and the claim stays O(batch).  Messages
 * of a paused campaign are held out of the due index by pause_campaign()
 * (due at infinity); one that comes back from an attempt meanwhile is put
 * back the same way, and one of a canceled campaign is canceled.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"
#include "campaign.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
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
 * A campaign's bucket, by "account\0name".  The claim returns each
 * campaign message's campaign row as it is now (a primary-key probe per
 * message), so a pace, pause or cancel applies from the first claim after
 * it commits, without a refresh; only the bucket lives here.
 */
#define CAMPAIGN_KEY_LEN	(NAMEDATALEN + 4 * OUTBOX_MAX_CAMPAIGN_CHARS + 2)

typedef struct Campaign
{
	char		key[CAMPAIGN_KEY_LEN];	/* hash key: account, NUL, name */
	double		pace;			/* messages per second */
	double		burst;
	double		tokens;
	TimestampTz refilled_at;
	TimestampTz next_slot;		/* the next time a put-back message is due */
} Campaign;

static HTAB *buckets = NULL;

static Campaign *
find_bucket(const char *account, const char *name, bool create)
{
	char		key[CAMPAIGN_KEY_LEN];
	size_t		alen = strlen(account);
	size_t		nlen = strlen(name);
	bool		found;
	Campaign   *c;

	if (buckets == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = CAMPAIGN_KEY_LEN;
		ctl.entrysize = sizeof(Campaign);
		ctl.hcxt = outbox_worker_cxt;
		buckets = hash_create("twilio_outbox campaign buckets", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	/* names longer than the table allows (a superuser's rows): no bucket */
	if (alen + 1 + nlen + 1 > CAMPAIGN_KEY_LEN)
		return NULL;
	memset(key, 0, sizeof(key));
	memcpy(key, account, alen);
	memcpy(key + alen + 1, name, nlen);
	c = hash_search(buckets, key, create ? HASH_ENTER : HASH_FIND, &found);
	if (c != NULL && !found)
	{
		/* dynahash leaves all but the key to us: a new, full bucket next */
		c->pace = 0;
		c->burst = 1;
		c->tokens = 0;
		c->refilled_at = 0;
		c->next_slot = 0;
	}
	return c;
}

/*
 * Whether a claimed message of this campaign may be sent now (one token
 * taken).  state, pace (0 or NaN: unpaced) and burst are the campaign
 * row's as the claim read it (state NULL: no row).  If not: *cancel for a
 * canceled campaign, else *defer_to says when it is due again (infinity
 * while paused).
 */
bool
outbox_campaign_admit(const char *account, const char *name, const char *state,
					  double pace, double burst, TimestampTz now,
					  TimestampTz *defer_to, bool *cancel)
{
	Campaign   *c;
	TimestampTz at;

	*cancel = false;
	*defer_to = 0;
	if (state != NULL && strcmp(state, "canceled") == 0)
	{
		*cancel = true;
		return false;
	}
	if (state != NULL && strcmp(state, "paused") == 0)
	{
		*defer_to = DT_NOEND;
		return false;
	}
	/* the table's ranges, whatever a superuser wrote */
	if (isnan(pace) || pace <= 0)
		return true;
	pace = Min(pace, 1000000.0);
	if (isnan(burst) || burst < 1)
		burst = 1;
	burst = Min(burst, 1000000.0);

	c = find_bucket(account, name, true);
	if (c == NULL)
		return true;
	if (c->refilled_at == 0)
	{
		/* new: a full bucket */
		c->tokens = burst;
		c->refilled_at = now;
		c->next_slot = 0;
	}
	else
	{
		/* refill at the pace it had until now, then take the new settings */
		if (now > c->refilled_at)
			c->tokens += (double) (now - c->refilled_at) / USECS_PER_SEC * c->pace;
		c->refilled_at = Max(c->refilled_at, now);
		if (pace != c->pace)
			c->next_slot = 0;	/* slots spaced at the new pace from now on */
	}
	c->pace = pace;
	c->burst = burst;
	c->tokens = Min(c->tokens, burst);
	if (c->tokens >= 1.0)
	{
		c->tokens -= 1.0;
		return true;
	}
	/* the next free slot: when the bucket holds a token, then 1/pace apart */
	at = now + (TimestampTz) ceil((1.0 - c->tokens) / pace * USECS_PER_SEC);
	if (c->next_slot > at)
		at = c->next_slot;
	c->next_slot = at + (TimestampTz) ceil(USECS_PER_SEC / pace);
	*defer_to = at;
	return false;
}
