/*-------------------------------------------------------------------------
 *
 * queue.c
 *		The dispatcher's queries on messages: claim, expire, rescue, sweep
 *		and record, each a set-based statement over the whole batch (the
 *		accounts and senders they use come from registry.c).
 *
 * Counters are incremented with least(counter, INT_MAX - 1) + 1: a row
 * whose counter someone set to INT_MAX must not make a whole batch's
 * statement fail on integer overflow, again and again.
 *
 * Every function here runs inside a transaction the worker started, with
 * SPI connected and a snapshot pushed, and may throw; the worker rolls back
 * and tries again.  No query runs read-only: each must see what the ones
 * before it in the same transaction wrote (a read-only one would see the
 * transaction's first snapshot).  Every state change is guarded by the state (and for
 * outcomes the attempt number) it expects.  Queries are prepared once and
 * kept; the worker's search_path is pg_catalog, so unqualified operators
 * are the built-in ones.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"
#include "campaign.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

/*
 * The state a statement expects a row it was handed (by id) to be in.
 * Written as a cast the planner cannot fold (enum input is only stable), so
 * that it cannot prove a partial index's predicate from it: with the
 * statistics of a moment when few rows were in that state, the planner
 * would otherwise scan the whole partial index (every message queued or in
 * flight for the account) and rescan the handed rows for each entry,
 * O(batch x backlog).  With it, the primary key is the only way in.
 */
#define GUARD_STATE(state) "m.state = '" state "'::text::twilio_outbox.message_state"

/* Where claiming starts in the account list, rotated for fairness. */
static int	claim_rotor = 0;

/* Counts claimed messages; a sender remembers when it was last served. */
static uint64 served_seq = 0;

/* Senders found with nothing due are skipped until this changes. */
static uint64 dry_epoch = 1;

static int
served_earlier(const ListCell *a, const ListCell *b)
{
	uint64		x = ((OutboxSender *) lfirst(a))->served;
	uint64		y = ((OutboxSender *) lfirst(b))->served;

	return x < y ? -1 : x > y ? 1 : 0;
}

static const char *const outcome_names[] = {
	[OUTCOME_SENT] = "sent",
	[OUTCOME_RETRY] = "retry",
	[OUTCOME_DEAD] = "dead",
	[OUTCOME_SUPPRESSED] = "suppressed",
	[OUTCOME_PAUSED] = "paused",
	[OUTCOME_RATE_LIMITED] = "rate_limited",
	[OUTCOME_HELD] = "held",
	[OUTCOME_LOST] = "lost",
	[OUTCOME_RECONCILE] = "reconcile",
};

/* The message state an outcome leads to. */
static const char *const outcome_states[] = {
	[OUTCOME_SENT] = "sent",
	[OUTCOME_RETRY] = "queued",
	[OUTCOME_DEAD] = "dead",
	[OUTCOME_SUPPRESSED] = "dead",
	[OUTCOME_PAUSED] = "queued",
	[OUTCOME_RATE_LIMITED] = "queued",
	[OUTCOME_HELD] = "ambiguous",
	[OUTCOME_LOST] = "queued",
	[OUTCOME_RECONCILE] = "ambiguous",
};

bool
outbox_extension_present(void)
{
	return OidIsValid(get_extension_oid("twilio_outbox", true));
}

/* Whether a sender may send now (its bucket aside). */
static bool
sender_open(OutboxSender *snd, TimestampTz now)
{
	return snd->seen && (snd->paused_until == 0 || snd->paused_until <= now);
}

/* How soon a message claimed in the middle of a change is tried again. */
#define REFRESH_AGAIN_MS	1000

/* A claimed message that must not be sent: dead, with its reason, uncharged. */
static void
refuse_claimed(OutboxMessage *m, const char *reason, const char *why)
{
	m->decided = true;
	m->resp.started_at = GetCurrentTimestamp();
	m->outcome = OUTCOME_DEAD;
	m->dead_reason = reason;
	m->error_message = pstrdup(why);
	ereport(LOG,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("twilio_outbox dead-lettered message " INT64_FORMAT ": %s", m->id, why)));
}

/*
 * Claimed messages their campaign does not admit now (campaign.c): put
 * back by defer_claimed() in the claim's own transaction.  Sized for a
 * whole claim by outbox_claim().
 */
static int	ndeferred;
static Datum *deferred_ids;
static Datum *deferred_at;
static Datum *deferred_cancel;

/*
 * Quiet hours (quiet.c): put claimed messages back, queued again with
 * next_attempt_at the end of their recipient's quiet window and their
 * attempt count as before the claim: no attempt is made or recorded, nothing
 * is charged.  ids, attempts and untils are n rows of account's claim.
 */
static void
put_back_quiet(const char *account, Datum *ids, Datum *attempts, Datum *untils, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID, TEXTOID};
	Datum		values[4];
	int			rc;

	outbox_prepare(&plan,
			"UPDATE twilio_outbox.messages m SET state = 'queued',"
			"  attempts = greatest(m.attempts - 1, 0), next_attempt_at = d.until,"
			"  lease_until = NULL, worker_pid = NULL, updated_at = now()"
			" FROM unnest($1::int8[], $2::int4[], $3::timestamptz[]) AS d(id, attempt, until)"
			" WHERE m.id = d.id AND m.account = $4 AND " GUARD_STATE("sending")
			" AND m.attempts = d.attempt",
			4, types);
	values[0] = outbox_make_array(ids, NULL, n, INT8OID);
	values[1] = outbox_make_array(attempts, NULL, n, INT4OID);
	values[2] = outbox_make_array(untils, NULL, n, TIMESTAMPTZOID);
	values[3] = CStringGetTextDatum(account);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "putting back messages in quiet hours failed: %s", SPI_result_code_string(rc));
	ereport(DEBUG1,
			(errmsg("twilio_outbox put back %d messages of account \"%s\" until their recipients' quiet hours end",
					n, account)));
}

/*
 * Column col (from 1) of a claimed row deformed once into vals/nulls: each
 * SPI_getbinval() walked the tuple from its start again (its varlena
 * columns leave no cached offsets), and each SPI_getvalue() looked up and
 * called the column type's output function.  The text columns are text.
 */
static inline Datum
claim_col(const Datum *vals, const bool *nulls, int col, bool *isnull)
{
	*isnull = nulls[col - 1];
	return vals[col - 1];
}

static inline char *
claim_text(const Datum *vals, const bool *nulls, int col)
{
	return nulls[col - 1] ? NULL : TextDatumGetCString(vals[col - 1]);
}

/*
 * Take the rows one claim statement returned: each becomes a message with
 * its request built, in the batch context (created on the first row).
 * Rows that must not be sent are decided here, never sent; rows whose
 * recipient is in quiet hours are put back (put_back_quiet).
 */
static List *
take_claimed(List *claimed, OutboxBatch **batchp, TimestampTz now)
{
	OutboxBatch *batch = *batchp;
	bool		new_batch = (batch == NULL);
	MemoryContext old;
	int			i;
	int			nquiet = 0;
	Datum	   *vals;
	bool	   *nulls;
	Datum	   *quiet_ids;
	Datum	   *quiet_attempts;
	Datum	   *quiet_untils;
	char	   *quiet_account = NULL;
	OutboxCampaignVerdict *verdicts;

	if (SPI_processed == 0)
		return claimed;
	/* the campaigns' tokens for all the rows at once (campaign.c) */
	verdicts = outbox_campaign_claim(SPI_tuptable, SPI_processed, 4, 24, 25, now);
	quiet_ids = palloc(sizeof(Datum) * SPI_processed);
	quiet_attempts = palloc(sizeof(Datum) * SPI_processed);
	quiet_untils = palloc(sizeof(Datum) * SPI_processed);
	vals = palloc(sizeof(Datum) * SPI_tuptable->tupdesc->natts);
	nulls = palloc(sizeof(bool) * SPI_tuptable->tupdesc->natts);
	if (batch == NULL)
	{
		MemoryContext cxt = AllocSetContextCreate(outbox_worker_cxt, "twilio_outbox batch",
												  ALLOCSET_DEFAULT_SIZES);

		batch = MemoryContextAllocZero(cxt, sizeof(OutboxBatch));
		batch->cxt = cxt;
		*batchp = batch;
	}
	old = MemoryContextSwitchTo(batch->cxt);
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		OutboxMessage *m;
		bool		isnull;
		bool		media_null;
		bool		params_null;
		Datum		media;
		Datum		params;
		Datum		expires;
		Datum		d;
		char	   *account;
		char	   *sender_account;
		bool		account_exists;
		int64		sender_id;

		heap_deform_tuple(tup, SPI_tuptable->tupdesc, vals, nulls);
		m = palloc0(sizeof(OutboxMessage));
		account = claim_text(vals, nulls, 4);
		sender_account = claim_text(vals, nulls, 18);
		m->batch = batch;
		m->resp.concurrent_requests = -1;
		m->resp.request_duration = -1;
		m->id = DatumGetInt64(claim_col(vals, nulls, 1, &isnull));
		m->attempt = DatumGetInt32(claim_col(vals, nulls, 2, &isnull));
		m->failures = DatumGetInt32(claim_col(vals, nulls, 3, &isnull));
		m->ambiguous_before = DatumGetInt32(claim_col(vals, nulls, 20, &isnull));
		/* attempts.account and dead_letters.account are NOT NULL */
		m->account_name = account ? account : "(none)";
		m->to_number = claim_text(vals, nulls, 5);
		media = claim_col(vals, nulls, 9, &media_null);
		params = claim_col(vals, nulls, 13, &params_null);
		expires = claim_col(vals, nulls, 14, &isnull);
		m->expires_at = isnull ? 0 : DatumGetTimestampTz(expires);
		m->idempotency_key = claim_text(vals, nulls, 15);
		d = claim_col(vals, nulls, 16, &isnull);
		m->segments = isnull ? 1 : Min(Max(DatumGetInt32(d), 1), 1000);
		d = claim_col(vals, nulls, 17, &isnull);
		sender_id = isnull ? 0 : DatumGetInt64(d);
		m->sender = isnull ? NULL : outbox_find_sender(sender_id);
		if (m->sender != NULL)
			m->sender->claim_got++;
		d = claim_col(vals, nulls, 19, &isnull);
		account_exists = !isnull && DatumGetBool(d);
		/*
		 * Its campaign's pace, pause or cancel (issue 12): put back, never
		 * sent, its sender's bucket untouched.
		 */
		if (verdicts != NULL && verdicts[i].hold)
		{
			deferred_ids[ndeferred] = Int64GetDatum(m->id);
			deferred_at[ndeferred] = TimestampTzGetDatum(verdicts[i].due_at);
			deferred_cancel[ndeferred] = BoolGetDatum(verdicts[i].cancel);
			ndeferred++;
			pfree(m);
			continue;
		}

		/*
		 * A row the dispatcher cannot send (written around twilio_enqueue,
		 * or whose account or sender went away) is dead-lettered with its
		 * reason through the normal record path, never sent: one such row
		 * must never stop the others, let alone crash the dispatcher.
		 */
		if (account == NULL || !account_exists)
			refuse_claimed(m, "account_missing",
						   psprintf("its account \"%s\" does not exist", m->account_name));
		else if (sender_account == NULL)
			refuse_claimed(m, "sender_missing",
						   psprintf("its sender " INT64_FORMAT " does not exist", sender_id));
		else if (strcmp(sender_account, account) != 0)
			refuse_claimed(m, "sender_missing",
						   psprintf("its sender " INT64_FORMAT " belongs to account \"%s\", not to its account \"%s\"",
									sender_id, sender_account, account));
		else if (m->to_number == NULL || m->to_number[0] == '\0' ||
				 outbox_has_control(m->to_number) || m->idempotency_key == NULL)
			refuse_claimed(m, "invalid_message",
						   "it has no usable recipient or no idempotency key");
		else
		{
			/*
			 * The account as the claim found it consistent with the sender;
			 * renamed since the last refresh, the sender's struct still has
			 * its URL and credentials.
			 */
			m->account = outbox_find_account(account);
			if (m->account == NULL && m->sender != NULL)
				m->account = m->sender->account;
		}
		if (m->decided)
		{
			claimed = lappend(claimed, m);
			batch->pending++;
			continue;
		}
		/*
		 * Quiet hours apply (the zone was stored at enqueue) and the
		 * account's window holds now in the recipient's zone: back it goes,
		 * uncharged, until the window ends.
		 */
		d = claim_col(vals, nulls, 26, &isnull);
		if (!isnull && m->account != NULL && m->sender != NULL)
		{
			char	   *zone = TextDatumGetCString(d);
			bool		start_null;
			bool		end_null;
			Datum		start = claim_col(vals, nulls, 27, &start_null);
			Datum		end = claim_col(vals, nulls, 28, &end_null);
			TimestampTz until = start_null || end_null ? 0 :
				outbox_quiet_until(zone, DatumGetTimeADT(start), DatumGetTimeADT(end), now);

			if (until != 0)
			{
				quiet_ids[nquiet] = Int64GetDatum(m->id);
				quiet_attempts[nquiet] = Int32GetDatum(m->attempt);
				quiet_untils[nquiet] = TimestampTzGetDatum(until);
				quiet_account = m->account_name;
				nquiet++;
				m->sender->claim_got--;
				continue;
			}
		}
		if (m->account == NULL || m->sender == NULL)
		{
			/* changed between the refresh and this claim: next time */
			m->decided = true;
			m->resp.started_at = GetCurrentTimestamp();
			m->outcome = OUTCOME_PAUSED;
			m->delay_ms = REFRESH_AGAIN_MS;
			m->next_attempt_at = m->resp.started_at + REFRESH_AGAIN_MS * 1000;
			m->error_message = "its account or sender changed while it was claimed";
			claimed = lappend(claimed, m);
			batch->pending++;
			continue;
		}
		d = claim_col(vals, nulls, 21, &isnull);
		if (!isnull && DatumGetBool(d))
		{
			/* a call: Calls.json beside Messages.json, within the account's calls per second */
			TimestampTz ready_at;
			const char *url = m->account->messages_url;

			if (!outbox_call_take(m->account, now, &ready_at))
			{
				m->decided = true;
				m->resp.started_at = GetCurrentTimestamp();
				m->outcome = OUTCOME_PAUSED;
				m->next_attempt_at = ready_at;
				m->delay_ms = Max(1, (ready_at - now) / 1000);
				m->error_message = "waiting for its account's calls per second";
				claimed = lappend(claimed, m);
				batch->pending++;
				continue;
			}
			m->request_url = psprintf("%.*sCalls.json",
									  (int) (strlen(url) - strlen("Messages.json")), url);
			m->form = outbox_build_call_form(m->to_number, claim_text(vals, nulls, 6),
											 claim_text(vals, nulls, 8),
											 claim_text(vals, nulls, 12),
											 claim_text(vals, nulls, 22),
											 claim_text(vals, nulls, 23));
			outbox_bucket_take(m->sender, 1);
			m->sender->served = ++served_seq;
			claimed = lappend(claimed, m);
			batch->pending++;
			continue;
		}
		m->form = outbox_build_form(m->to_number,
									claim_text(vals, nulls, 6), claim_text(vals, nulls, 7),
									claim_text(vals, nulls, 8), media, media_null,
									claim_text(vals, nulls, 10), claim_text(vals, nulls, 11),
									claim_text(vals, nulls, 12), params, params_null,
									m->expires_at, now);
		outbox_bucket_take(m->sender, m->segments);
		m->sender->served = ++served_seq;
		claimed = lappend(claimed, m);
		batch->pending++;
	}
	MemoryContextSwitchTo(old);
	if (nquiet > 0)
	{
		/* quiet_account lives in the batch context: put back first */
		put_back_quiet(quiet_account, quiet_ids, quiet_attempts, quiet_untils, nquiet);
		if (new_batch && batch->pending == 0)
		{
			MemoryContextDelete(batch->cxt);
			*batchp = NULL;
		}
	}
	return claimed;
}

/*
 * Put back the claimed messages their campaign did not admit: queued again
 * (the claim's attempt undone), due when the campaign's bucket has room
 * for them (or at infinity while it is paused), or canceled with their
 * campaign.  In the claim's transaction, so no one sees them claimed.
 */
static void
defer_claimed(const char *account)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID, BOOLARRAYOID, TEXTOID};
	Datum		values[4];
	int			rc;

	if (ndeferred == 0)
		return;
	outbox_prepare(&plan,
			"UPDATE twilio_outbox.messages m SET"
			"  state = CASE WHEN d.cancel THEN 'canceled' ELSE 'queued' END::twilio_outbox.message_state,"
			"  next_attempt_at = CASE WHEN d.cancel THEN m.next_attempt_at ELSE d.at END,"
			"  attempts = m.attempts - 1, lease_until = NULL, worker_pid = NULL, updated_at = now(),"
			"  finished_at = CASE WHEN d.cancel THEN now() ELSE m.finished_at END,"
			"  last_error_message = CASE WHEN d.cancel THEN 'its campaign was canceled'"
			"   ELSE m.last_error_message END"
			" FROM unnest($1::int8[], $2::timestamptz[], $3::bool[]) AS d(id, at, cancel)"
			" WHERE m.id = d.id AND m.account = $4 AND " GUARD_STATE("sending"),
			4, types);
	values[0] = outbox_make_array(deferred_ids, NULL, ndeferred, INT8OID);
	values[1] = outbox_make_array(deferred_at, NULL, ndeferred, TIMESTAMPTZOID);
	values[2] = outbox_make_array(deferred_cancel, NULL, ndeferred, BOOLOID);
	values[3] = CStringGetTextDatum(account);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "putting back campaign messages failed: %s", SPI_result_code_string(rc));
	ndeferred = 0;
}

/* The smallest share of an account's room a sender is asked for at once. */
#define CLAIM_MIN_SHARE		16

/*
 * Claim due messages: at most capacity in all, within each account's room
 * (its concurrency cap less what it has in flight) and each sender's
 * bucket, so that only messages whose sender can send now are taken.
 *
 * One statement per account, naming it on every reference to the messages
 * table (so that a table distributed by account would be claimed shard by
 * shard).  Accounts are visited from a rotating start.  An account's room
 * is shared over its senders least recently served first, each asked for
 * an equal share (at least CLAIM_MIN_SHARE), and only as many senders are
 * asked as their shares fill the room: with 1,000 senders of ten due
 * messages each, a claim of 100 reads about 100 rows, not 10,000.  A sender
 * that had nothing due is not asked again until outbox_claim_wake().
 * Within the statement the room is still shared round-robin (each sender's
 * oldest message first), so a sender with a huge backlog never starves
 * another.  *more says whether another claim right away may find more.
 *
 * Returns the claimed messages, each with its request built, in a new batch
 * context (a child of outbox_worker_cxt).  Nothing is sent here: the
 * caller commits first.
 */
List *
outbox_claim(int capacity, TimestampTz now, bool *more)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[9] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID,
	BOOLARRAYOID, INT4ARRAYOID, INT4OID, INT4OID, TEXTOID};
	int			naccounts = list_length(outbox_accounts);
	int			nsenders = list_length(outbox_senders);
	Datum	   *ids = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *accounts = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *max_n = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *budget = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *full = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *room = palloc(sizeof(Datum) * Max(nsenders, 1));
	OutboxSender **asked = palloc(sizeof(OutboxSender *) * Max(nsenders, 1));
	int		   *share_of = palloc(sizeof(int) * Max(nsenders, 1));
	Datum		values[9];
	int			i;
	ListCell   *lc;
	OutboxBatch *batch = NULL;
	List	   *claimed = NIL;

	*more = false;
	ndeferred = 0;
	deferred_ids = palloc(sizeof(Datum) * Max(capacity, 1));
	deferred_at = palloc(sizeof(Datum) * Max(capacity, 1));
	deferred_cancel = palloc(sizeof(Datum) * Max(capacity, 1));
	/* More than one dispatcher: each account's share left to this one (partition.c). */
	outbox_partition_reserve(now);
	/* Share the capacity over the accounts that may send. */
	for (i = 0; i < naccounts; i++)
	{
		OutboxAccount *a = list_nth(outbox_accounts, (claim_rotor + i) % naccounts);

		a->claim_room = Min(Min(outbox_account_room(a, now), a->partition_room), capacity);
		a->claim_senders = NIL;
		capacity -= a->claim_room;
	}
	/*
	 * Every sender that may send now and may have something due, least
	 * recently served first: that order is each one's turn in its account.
	 */
	list_sort(outbox_senders, served_earlier);
	foreach(lc, outbox_senders)
	{
		OutboxSender *snd = lfirst(lc);
		OutboxAccount *a = snd->account;

		if (a == NULL || a->claim_room <= 0 || !sender_open(snd, now) ||
			snd->dry_epoch == dry_epoch)
			continue;
		/* another dispatcher's sender (partition.c) */
		if (!outbox_sender_mine(snd))
			continue;
		outbox_bucket_refill(snd, now);
		if (!snd->unlimited && snd->tokens < 1.0)
			continue;
		a->claim_senders = lappend(a->claim_senders, snd);
	}
	claim_rotor++;

	if (naccounts > 0)
		outbox_generic_prepare(&plan,
			"WITH q AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::int4[],"
			"   $4::float8[], $5::bool[], $6::int4[]) WITH ORDINALITY"
			"  AS q(sender_id, account, max_n, budget, full_bucket, account_room, turn)),"
			/*
			 * per sender: its due messages by priority level, then oldest
			 * first, as many segments as its bucket holds.  Each level is
			 * its own range scan of messages_due (account, sender, level,
			 * next_attempt_at, id) that stops at max_n rows, so the cost is
			 * O(batch) whatever is due at lower levels or later.
			 */
			" per_sender AS ("
			"  SELECT z.id, q.account, q.account_room, q.turn, z.priority, z.rn"
			"  FROM q CROSS JOIN LATERAL ("
			"   SELECT y.id, y.priority, y.rn FROM ("
			"    SELECT x.id, x.priority,"
			"     sum(x.segments) OVER (ORDER BY x.priority, x.next_attempt_at, x.id) AS cum,"
			"     row_number() OVER (ORDER BY x.priority, x.next_attempt_at, x.id) AS rn"
			"    FROM (SELECT l.* FROM unnest('{0,1,2}'::int2[]) AS lv(level)"
			"     CROSS JOIN LATERAL (SELECT m.id, m.priority, m.next_attempt_at,"
			"      least(greatest(coalesce(m.segments, 1), 1), 1000) AS segments"
			"      FROM twilio_outbox.messages m"
			"      WHERE m.state = 'queued' AND m.account = $9 AND m.sender_id = q.sender_id"
			"      AND m.priority = lv.level AND m.next_attempt_at <= now()"
			"      AND (m.expires_at IS NULL OR m.expires_at > now())"
			"      ORDER BY m.next_attempt_at, m.id LIMIT q.max_n) l"
			"     ORDER BY l.priority, l.next_attempt_at, l.id LIMIT q.max_n) x) y"
			"   WHERE y.cum <= q.budget OR (y.rn = 1 AND q.full_bucket)) z),"
			/*
			 * round-robin over the account's senders, within its room; a
			 * higher level before a lower one across senders too
			 */
			" pick AS ("
			"  SELECT p.id FROM (SELECT per_sender.*, row_number() OVER ("
			"    PARTITION BY account ORDER BY priority, rn, turn) AS arn"
			"   FROM per_sender) p"
			"  WHERE p.arn <= p.account_room),"
			" c AS MATERIALIZED ("
			"  SELECT m.id FROM twilio_outbox.messages m"
			"  WHERE m.id = ANY (ARRAY(SELECT id FROM pick)) AND m.account = $9"
			"  AND " GUARD_STATE("queued")
			"  FOR UPDATE SKIP LOCKED)"
			" UPDATE twilio_outbox.messages m SET state = 'sending',"
			"  attempts = least(m.attempts, 2147483646) + 1, lease_until = now() + make_interval(secs => $7),"
			"  worker_pid = $8, updated_at = now()"
			" FROM c WHERE m.id = c.id AND m.account = $9 AND " GUARD_STATE("queued")
			" RETURNING m.id, m.attempts, m.failures, m.account, m.to_number,"
			"  m.from_number, m.messaging_service_sid, m.body, m.media_urls,"
			"  m.content_sid, m.content_variables::text,"
			/*
			 * Every row returned is of account $9: what the statement needs
			 * of the account it reads once (each subselect naming only $9 is
			 * an init plan, run once per claim, not per message), and its
			 * campaign only for a row that has one.
			 *
			 * The message's own callback, else the account's with outbox_id:
			 * the rule of twilio_outbox.status_callback_for(), written out so
			 * that no function call (with its pinned search_path) runs per
			 * message.
			 */
			"  coalesce(m.status_callback, (SELECT a.status_callback_url"
			"   || CASE WHEN strpos(a.status_callback_url, '?') > 0 THEN '&' ELSE '?' END"
			"   || 'outbox_id='"
			"   FROM twilio_outbox.accounts a WHERE a.name = $9) || m.id::text), m.params,"
			"  m.expires_at, m.idempotency_key::text, m.segments, m.sender_id,"
			/* what the row's sender and account are now, for the checks below */
			"  (SELECT s.account FROM twilio_outbox.senders s WHERE s.id = m.sender_id),"
			"  EXISTS (SELECT FROM twilio_outbox.accounts a WHERE a.name = $9),"
			"  m.ambiguous_attempts,"
			/* a call (a voice step of a fallback chain, fallback.c) */
			"  m.channel = 'voice', m.voice_options->>'voice', m.voice_options->>'language',"
			/*
			 * its campaign's row as it is now, "state pace burst" (one
			 * primary-key probe; campaign.c)
			 */
			"  m.campaign, CASE WHEN m.campaign IS NOT NULL THEN (SELECT k.state || ' '"
			"   || coalesce(k.pace::float8, 'NaN') || ' ' || k.burst::float8"
			"   FROM twilio_outbox.campaigns k WHERE k.account = $9 AND k.name = m.campaign) END,"
			/*
			 * quiet hours (quiet.c): the recipient's zone, the window: its
			 * campaign's when it has one (both or neither are set), else
			 * the account's
			 */
			"  m.quiet_zone,"
			"  CASE WHEN m.quiet_zone IS NOT NULL THEN coalesce(CASE WHEN m.campaign IS NOT NULL THEN"
			"   (SELECT k.quiet_start FROM twilio_outbox.campaigns k WHERE k.account = $9 AND k.name = m.campaign) END,"
			"   (SELECT a.quiet_start FROM twilio_outbox.accounts a WHERE a.name = $9)) END,"
			"  CASE WHEN m.quiet_zone IS NOT NULL THEN coalesce(CASE WHEN m.campaign IS NOT NULL THEN"
			"   (SELECT k.quiet_end FROM twilio_outbox.campaigns k WHERE k.account = $9 AND k.name = m.campaign) END,"
			"   (SELECT a.quiet_end FROM twilio_outbox.accounts a WHERE a.name = $9)) END",
			9, types);

	for (i = 0; i < naccounts; i++)
	{
		OutboxAccount *a = list_nth(outbox_accounts, (claim_rotor - 1 + i) % naccounts);
		int			nwilling = list_length(a->claim_senders);
		int			share;
		int			asked_for = 0;
		int			n = 0;
		int			before = list_length(claimed);
		int			rc;
		int			k;

		if (a->claim_room <= 0 || nwilling == 0)
			continue;
		share = Max((a->claim_room + nwilling - 1) / nwilling,
					Min(a->claim_room, CLAIM_MIN_SHARE));
		foreach(lc, a->claim_senders)
		{
			OutboxSender *snd = lfirst(lc);
			int			most;

			if (asked_for >= a->claim_room)
			{
				/* the others wait for the next claim, which comes at once */
				*more = true;
				break;
			}
			most = snd->unlimited ? share : Min(share, (int) snd->tokens);
			ids[n] = Int64GetDatum(snd->id);
			accounts[n] = CStringGetTextDatum(a->name);
			max_n[n] = Int32GetDatum(most);
			budget[n] = Float8GetDatum(snd->unlimited ? INFINITY : snd->tokens);
			/* a full bucket lets one message through even if it is longer */
			full[n] = BoolGetDatum(!snd->unlimited && snd->tokens >= snd->burst);
			room[n] = Int32GetDatum(a->claim_room);
			asked[n] = snd;
			share_of[n] = most;
			asked_for += most;
			n++;
		}
		values[0] = outbox_make_array(ids, NULL, n, INT8OID);
		values[1] = outbox_make_array(accounts, NULL, n, TEXTOID);
		values[2] = outbox_make_array(max_n, NULL, n, INT4OID);
		values[3] = outbox_make_array(budget, NULL, n, FLOAT8OID);
		values[4] = outbox_make_array(full, NULL, n, BOOLOID);
		values[5] = outbox_make_array(room, NULL, n, INT4OID);
		values[6] = Int32GetDatum(Max(outbox_lease_s, 2 * outbox_request_timeout_ms / 1000 + 10));
		values[7] = Int32GetDatum(MyProcPid);
		values[8] = CStringGetTextDatum(a->name);
		for (k = 0; k < n; k++)
			asked[k]->claim_got = 0;
		rc = SPI_execute_plan(plan, values, NULL, false, 0);
		if (rc != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
		claimed = take_claimed(claimed, &batch, now);
		if (ndeferred > 0)
		{
			/* the room is not used up: the next claim may find others */
			*more = true;
			defer_claimed(a->name);
		}

		/*
		 * The room filled: more may be due, and a sender that got less than
		 * its share may only have lost its turn to the others.
		 */
		if (list_length(claimed) - before >= a->claim_room)
		{
			*more = true;
			continue;
		}
		for (k = 0; k < n; k++)
		{
			OutboxSender *snd = asked[k];

			/* asked: the others' turn next, whatever it got */
			snd->served = ++served_seq;
			if (snd->claim_got >= share_of[k])
				*more = true;

			/*
			 * Nothing (more) it can send now: not asked again until
			 * something may have come due (outbox_next_due() knows when its
			 * bucket holds its next message).  A limited sender that got
			 * some may just have run out of tokens.
			 */
			else if (snd->claim_got == 0 || snd->unlimited)
				snd->dry_epoch = dry_epoch;
		}
	}
	/* every row claimed was put back: nothing for the batch to hold */
	if (batch != NULL && batch->pending == 0)
		MemoryContextDelete(batch->cxt);
	return claimed;
}

/*
 * Something may have come due (an enqueue woke the dispatcher, or the time
 * the dispatcher waited for came): every sender is asked again.
 */
void
outbox_claim_wake(void)
{
	dry_epoch++;
}

/*
 * The accounts that have messages in flight, found by a skip scan of the
 * partial index messages_in_flight (one probe per account, whatever the
 * number of rows), those that no longer exist included.  In the caller's
 * memory context.
 */
static List *
accounts_in_flight(void)
{
	static SPIPlanPtr plan = NULL;
	List	   *names = NIL;
	uint64		i;
	int			rc;

	outbox_prepare(&plan,
			"WITH RECURSIVE a AS ("
			"  (SELECT m.account FROM twilio_outbox.messages m WHERE m.state = 'sending'"
			"   ORDER BY m.account LIMIT 1)"
			"  UNION ALL"
			"  SELECT (SELECT m.account FROM twilio_outbox.messages m WHERE m.state = 'sending'"
			"   AND m.account > a.account ORDER BY m.account LIMIT 1)"
			"  FROM a WHERE a.account IS NOT NULL)"
			" SELECT account FROM a WHERE account IS NOT NULL",
			0, NULL);
	rc = SPI_execute_plan(plan, NULL, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "account scan failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return names;
}

/*
 * Dead-letter queued messages whose expiry has passed: they are never sent.
 * One statement per account the dispatcher knows (queued messages of an
 * account that does not exist are the orphan sweep's), bounded per call;
 * returns how many.  Also clears account pauses that ran out.
 */
int
outbox_expire(void)
{
	static SPIPlanPtr clear_pauses = NULL;
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {TEXTOID};
	ListCell   *lc;
	int			total = 0;
	int			rc;

	outbox_prepare(&plan,
			"WITH x AS (SELECT id FROM twilio_outbox.messages"
			"  WHERE state = 'queued' AND account = $1 AND expires_at <= now()"
			"  ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED),"
			" u AS (UPDATE twilio_outbox.messages m SET state = 'dead',"
			"  finished_at = now(), updated_at = now(),"
			"  last_error_message = 'expired before it could be sent'"
			"  FROM x WHERE m.id = x.id AND m.account = $1 AND " GUARD_STATE("queued")
			"  RETURNING m.id, m.account, m.to_number, m.attempts,"
			"  m.last_http_status, m.last_error_code)"
			" INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number,"
			"  reason, http_status, twilio_code, error_message, attempts)"
			" SELECT id, account, to_number, 'expired', last_http_status,"
			"  last_error_code, 'expired before it could be sent', attempts FROM u",
			1, types);
	foreach(lc, outbox_accounts)
	{
		Datum		value = CStringGetTextDatum(((OutboxAccount *) lfirst(lc))->name);

		rc = SPI_execute_plan(plan, &value, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "expiry failed: %s", SPI_result_code_string(rc));
		total += (int) SPI_processed;
	}

	/* pauses that ran out are cleared, so that the table says what holds */
	outbox_prepare(&clear_pauses,
			"UPDATE twilio_outbox.accounts SET paused_until = NULL, pause_reason = NULL"
			" WHERE paused_until <= now()",
			0, NULL);
	if (SPI_execute_plan(clear_pauses, NULL, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not clear expired pauses");
	return total;
}

/*
 * Dead-letter queued messages that can never be claimed: their sender is
 * gone, belongs to another account, or their own account is gone (a plain
 * DELETE of a sender, or a superuser writing around the keys).  The claim
 * asks each account for its own senders' messages, so nothing else would
 * ever finish them.
 *
 * Cheap with millions of queued rows: a skip scan of the distinct (account,
 * sender) pairs in the partial index messages_due (one index probe per
 * pair), read only; then, per orphaned pair, at most 1000 of its messages
 * in one statement naming the account.  Returns how many.
 */
int
outbox_sweep_orphans(void)
{
	static SPIPlanPtr find = NULL;
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID};
	List	   *orphans = NIL;
	ListCell   *lc;
	uint64		i;
	int			total = 0;
	int			rc;

	outbox_prepare(&find,
			"WITH RECURSIVE p AS ("
			"  (SELECT m.account, m.sender_id FROM twilio_outbox.messages m"
			"   WHERE m.state = 'queued' ORDER BY m.account, m.sender_id LIMIT 1)"
			"  UNION ALL"
			"  SELECT n.account, n.sender_id FROM p CROSS JOIN LATERAL ("
			"   SELECT m.account, m.sender_id FROM twilio_outbox.messages m"
			"   WHERE m.state = 'queued' AND (m.account, m.sender_id) > (p.account, p.sender_id)"
			"   ORDER BY m.account, m.sender_id LIMIT 1) n)"
			" SELECT p.account, p.sender_id,"
			"  CASE WHEN a.name IS NULL THEN 'account_missing' ELSE 'sender_missing' END,"
			"  CASE WHEN a.name IS NULL THEN format('its account \"%s\" does not exist', p.account)"
			"   WHEN s.id IS NULL THEN format('its sender %s does not exist', p.sender_id)"
			"   ELSE format('its sender %s belongs to account \"%s\", not to its account \"%s\"',"
			"    p.sender_id, s.account, p.account) END"
			" FROM p LEFT JOIN twilio_outbox.senders s ON s.id = p.sender_id"
			"  LEFT JOIN twilio_outbox.accounts a ON a.name = p.account"
			" WHERE a.name IS NULL OR s.id IS NULL OR s.account <> p.account",
			0, NULL);
	rc = SPI_execute_plan(find, NULL, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "orphan sweep failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum	   *row = palloc(sizeof(Datum) * 5);
		bool		isnull;

		row[0] = CStringGetTextDatum(SPI_getvalue(tup, desc, 1));
		row[1] = SPI_getbinval(tup, desc, 2, &isnull);
		row[2] = CStringGetTextDatum(SPI_getvalue(tup, desc, 3));
		row[3] = CStringGetTextDatum(SPI_getvalue(tup, desc, 4));
		orphans = lappend(orphans, row);
	}
	if (orphans == NIL)
		return 0;

	outbox_prepare(&plan,
			"WITH x AS (SELECT m.id FROM twilio_outbox.messages m"
			"  WHERE m.state = 'queued' AND m.account = $1 AND m.sender_id = $2"
			"  ORDER BY m.priority, m.next_attempt_at, m.id LIMIT $5 FOR UPDATE SKIP LOCKED),"
			" u AS (UPDATE twilio_outbox.messages m SET state = 'dead',"
			"  finished_at = now(), updated_at = now(), last_error_message = $4"
			"  FROM x WHERE m.id = x.id AND m.account = $1 AND " GUARD_STATE("queued")
			"  RETURNING m.id, m.account, m.to_number, m.attempts, m.last_http_status,"
			"  m.last_error_code)"
			" INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number,"
			"  reason, http_status, twilio_code, error_message, attempts)"
			" SELECT id, account, coalesce(to_number, ''), $3,"
			"  last_http_status, last_error_code, $4, attempts FROM u",
			5, types);
	foreach(lc, orphans)
	{
		Datum	   *row = lfirst(lc);

		if (total >= 1000)
			break;
		row[4] = Int32GetDatum(1000 - total);
		rc = SPI_execute_plan(plan, row, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "orphan sweep failed: %s", SPI_result_code_string(rc));
		total += (int) SPI_processed;
	}
	if (total > 0)
		ereport(LOG,
				(errmsg("twilio_outbox dead-lettered %d queued messages whose sender or account no longer exists or do not match",
						total)));
	return total;
}

/*
 * Take back messages left in sending by a dispatcher that is gone: at start
 * (all) every one, later only those of another process whose lease ran out
 * (or that have none: a row written by hand).  Never those of a dispatcher
 * of this database that runs (more than one per database, partition.c):
 * its requests may still be in flight, and it records them itself.  One
 * statement per account with messages in flight (found by a skip scan, so
 * an account that no longer exists is included).
 * Their attempt is recorded as lost and ambiguous, not charged; by
 * twilio_outbox.on_ambiguous, the message is looked up at Twilio after the
 * grace (reconcile: state ambiguous with reconcile_at), goes back to the
 * queue with the same idempotency key (retry), or is held (hold).
 */
int
outbox_rescue(bool all)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[6] = {BOOLOID, INT4OID, TEXTOID, TEXTOID, INT4ARRAYOID, INTERVALOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Interval	grace;
	List	   *names = accounts_in_flight();
	ListCell   *lc;
	int			total = 0;
	int			rc;

	if (names == NIL)
		return 0;
	outbox_prepare(&plan,
			"WITH x AS (SELECT id, worker_pid FROM twilio_outbox.messages"
			"  WHERE state = 'sending' AND account = $4"
			"  AND ($1 OR ((lease_until < now() OR lease_until IS NULL)"
			"   AND worker_pid IS DISTINCT FROM $2))"
			"  AND (worker_pid IS NULL OR worker_pid <> ALL ($5::int4[]))"
			"  LIMIT 10000 FOR UPDATE SKIP LOCKED),"
			" u AS (UPDATE twilio_outbox.messages m SET"
			/*
			 * reconcile: a row whose account is gone cannot be looked up
			 * (nor ever sent): queued, the claim dead-letters it
			 */
			"  state = CASE WHEN $6::interval IS NOT NULL AND NOT EXISTS (SELECT FROM"
			"   twilio_outbox.accounts a WHERE a.name = m.account)"
			"   THEN 'queued'::twilio_outbox.message_state"
			"   ELSE $3::twilio_outbox.message_state END, next_attempt_at = now(),"
			"  ambiguous_attempts = least(m.ambiguous_attempts, 2147483646) + 1,"
			"  lease_until = NULL, worker_pid = NULL, updated_at = now(),"
			/* the claim set updated_at before the request went out (reconcile.c) */
			"  ambiguous_since = least(m.ambiguous_since, m.updated_at),"
			"  reconcile_at = CASE WHEN EXISTS (SELECT FROM twilio_outbox.accounts a"
			"   WHERE a.name = m.account) THEN now() + $6::interval END,"
			"  last_error_message = 'the dispatcher stopped while the request was in flight'"
			"  FROM x WHERE m.id = x.id AND m.account = $4 AND " GUARD_STATE("sending")
			"  RETURNING m.id, m.attempts, m.account, x.worker_pid)"
			" INSERT INTO twilio_outbox.attempts (message_id, attempt, account,"
			"  started_at, outcome, ambiguous, transport_error, worker_pid)"
			" SELECT id, attempts, account, now(), 'lost', true,"
			"  'the dispatcher stopped while the request was in flight', worker_pid FROM u",
			6, types);
	values[0] = BoolGetDatum(all);
	values[1] = Int32GetDatum(MyProcPid);
	values[2] = CStringGetTextDatum(outbox_ambiguous_policy == OUTBOX_AMBIGUOUS_RETRY ?
									"queued" : "ambiguous");
	/* reconcile: looked up after the grace; hold: for an operator (NULL) */
	memset(&grace, 0, sizeof(grace));
	grace.time = (int64) outbox_reconcile_grace_ms * 1000;
	values[5] = IntervalPGetDatum(&grace);
	if (outbox_ambiguous_policy != OUTBOX_AMBIGUOUS_RECONCILE)
		nulls[5] = 'n';
	/* the other dispatchers of this database that run (at start, not this one: its pid may be reused) */
	values[4] = outbox_live_dispatchers(!all);
	foreach(lc, names)
	{
		values[3] = CStringGetTextDatum((char *) lfirst(lc));
		rc = SPI_execute_plan(plan, values, nulls, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "lease rescue failed: %s", SPI_result_code_string(rc));
		total += (int) SPI_processed;
	}
	if (total > 0 && outbox_ambiguous_policy == OUTBOX_AMBIGUOUS_RECONCILE)
		outbox_lookup_reconcile_soon(GetCurrentTimestamp() + (int64) outbox_reconcile_grace_ms * 1000);
	if (total > 0)
		ereport(LOG,
				(errmsg("twilio_outbox took back %d messages left in flight by a stopped dispatcher",
						total),
				 errdetail("Their attempts are recorded as lost and ambiguous.")));
	return total;
}

/* Columns of the batched outcome statement, in parameter order. */
enum
{
	C_ID, C_ATTEMPT, C_ACCOUNT, C_STATE, C_NEXT_AT, C_FAILED, C_AMBIGUOUS,
	C_SID, C_TSTATUS, C_TSEGMENTS, C_HTTP, C_CODE, C_ERRMSG, C_DEAD_REASON,
	C_STARTED, C_DURATION, C_TERROR, C_RETRY_AFTER, C_DELAY_MS, C_OUTCOME,
	C_REQUEST_ID, C_CONCURRENT, C_REQ_DURATION, C_TMESSAGE,
	NUM_COLS
};

static const Oid col_types[NUM_COLS] = {
	INT8OID, INT4OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT4OID,
	TEXTOID, TEXTOID, INT4OID, INT4OID, INT4OID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID, FLOAT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID,
	TEXTOID, INT4OID, FLOAT8OID, TEXTOID
};

typedef struct Columns
{
	Datum	   *v[NUM_COLS];
	bool	   *null[NUM_COLS];
} Columns;

static void
set_col(Columns *c, int col, int row, Datum value, bool isnull)
{
	c->v[col][row] = value;
	c->null[col][row] = isnull;
}

static void
set_text(Columns *c, int col, int row, const char *s)
{
	bool		none = s == NULL || *s == '\0';

	set_col(c, col, row, none ? (Datum) 0 : CStringGetTextDatum(s), none);
}

static void
set_int(Columns *c, int col, int row, int64 v, bool isnull, Oid type)
{
	set_col(c, col, row, type == INT8OID ? Int64GetDatum(v) : Int32GetDatum((int32) v),
			isnull);
}

/* Fill row i of the outcome columns from a decided message. */
static void
fill_row(Columns *c, int i, OutboxMessage *m)
{
	OutboxResponse *r = &m->resp;
	bool		terminal = m->outcome == OUTCOME_SENT || m->outcome == OUTCOME_DEAD ||
		m->outcome == OUTCOME_SUPPRESSED || m->outcome == OUTCOME_HELD;

	set_int(c, C_ID, i, m->id, false, INT8OID);
	set_int(c, C_ATTEMPT, i, m->attempt, false, INT4OID);
	set_text(c, C_ACCOUNT, i, m->account_name);
	set_text(c, C_STATE, i, outcome_states[m->outcome]);
	set_col(c, C_NEXT_AT, i, TimestampTzGetDatum(m->next_attempt_at), terminal);
	set_int(c, C_FAILED, i, m->charged ? 1 : 0, false, INT4OID);
	set_int(c, C_AMBIGUOUS, i, m->ambiguous ? 1 : 0, false, INT4OID);
	set_text(c, C_SID, i, r->twilio_sid);
	set_text(c, C_TSTATUS, i, r->twilio_status);
	set_int(c, C_TSEGMENTS, i, r->twilio_segments, r->twilio_segments == 0, INT4OID);
	set_int(c, C_HTTP, i, r->http_status, r->http_status == 0, INT4OID);
	set_int(c, C_CODE, i, r->twilio_code, r->twilio_code == 0, INT4OID);
	set_text(c, C_ERRMSG, i, m->error_message);
	set_text(c, C_DEAD_REASON, i, m->dead_reason);
	set_col(c, C_STARTED, i, TimestampTzGetDatum(r->started_at), false);
	set_col(c, C_DURATION, i, Float8GetDatum(r->duration_ms), false);
	set_text(c, C_TERROR, i, r->transport_error);
	set_text(c, C_RETRY_AFTER, i, r->retry_after);
	set_int(c, C_DELAY_MS, i, m->delay_ms, m->delay_ms == 0, INT8OID);
	set_text(c, C_OUTCOME, i, outcome_names[m->outcome]);
	set_text(c, C_REQUEST_ID, i, r->request_id);
	set_int(c, C_CONCURRENT, i, r->concurrent_requests, r->concurrent_requests < 0, INT4OID);
	set_col(c, C_REQ_DURATION, i, Float8GetDatum(r->request_duration), r->request_duration < 0);
	set_text(c, C_TMESSAGE, i, r->twilio_message);
}

/* Pause an account (only ever later than it already is) and note why. */
static void
pause_account(OutboxMessage *m)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[3];
	const char *why = m->outcome == OUTCOME_RATE_LIMITED ?
		"rate limited by Twilio (HTTP 429): resumes by itself" :
		psprintf("Twilio refused the credentials (HTTP %ld, code %d): fix them, then call twilio_outbox.resume_account()",
				 m->resp.http_status, m->resp.twilio_code);

	outbox_prepare(&plan,
			"UPDATE twilio_outbox.accounts SET paused_until = $2, pause_reason = $3"
			" WHERE name = $1 AND (paused_until IS NULL OR paused_until < $2)",
			3, types);
	values[0] = CStringGetTextDatum(m->account->name);
	values[1] = TimestampTzGetDatum(m->pause_account_until);
	values[2] = CStringGetTextDatum(why);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not pause account \"%s\"", m->account->name);
}

static void
suppress_recipient(OutboxMessage *m)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, INT4OID, INT8OID};
	Datum		values[5];

	outbox_prepare(&plan,
			"INSERT INTO twilio_outbox.suppressed_recipients"
			" (account, to_number, reason, twilio_code, message_id)"
			" VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
			5, types);
	values[0] = CStringGetTextDatum(m->account->name);
	values[1] = CStringGetTextDatum(m->to_number);
	values[2] = CStringGetTextDatum(m->error_message ? m->error_message : "suppressed by the error policy");
	values[3] = Int32GetDatum(m->resp.twilio_code);
	values[4] = Int64GetDatum(m->id);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not suppress a recipient");
}

/*
 * The outcome rows, read from the arrays right where they are joined: an
 * UPDATE ... FROM this function scan plans as a nested loop probing the
 * primary key once per row whatever the row estimate (a generic plan guesses
 * 10), so recording costs O(batch).  Joined through a CTE instead, the
 * planner put the CTE on the inner side and rescanned it per message:
 * O(batch^2), 0.8 s for 2,000 outcomes.
 */
#define OUTCOME_ROWS \
	"unnest($1::int8[], $2::int4[], $3::text[],"\
	"  $4::text[]::twilio_outbox.message_state[], $5::timestamptz[], $6::int4[],"\
	"  $7::int4[], $8::text[],"\
	"  $9::text[], $10::int4[], $11::int4[], $12::int4[], $13::text[],"\
	"  $14::text[], $15::timestamptz[], $16::float8[], $17::text[],"\
	"  $18::text[], $19::int8[], $20::text[]::twilio_outbox.attempt_outcome[],"\
	"  $21::text[], $22::int4[],"\
	"  $23::float8[], $24::text[], $28::bool[])"\
	"  AS r(id, attempt, account, state, next_at, failed, ambiguous, sid,"\
	"  tstatus, tsegments, http, code, errmsg, dead_reason, started_at,"\
	"  duration_ms, terror, retry_after, delay_ms, outcome, request_id,"\
	"  concurrent, req_duration, tmessage, first_ok)"

/*
 * An attempt all of whose fields but its timings and Twilio-* headers are
 * implied: the message's first, which sent it (outcome sent, its SID, no
 * code, error, Retry-After or delay, not ambiguous), on a message that has
 * kept none yet.  The record's update writes it onto the message row
 * (first_* columns, 47_row_versions.sql) instead of an attempt row: one
 * heap tuple and its index entries fewer per message sent at once.
 * Whether the outcome is such an attempt is decided here, once per outcome
 * (first_attempt_implied(), the parameter first_ok), not by the statement
 * in each of the columns it sets.  FIRST_KEPT_NEW says the same in
 * RETURNING, where m is the new row.
 */
#define FIRST_KEPT_IF(cond) "r.first_ok AND " cond
#define FIRST_KEPT FIRST_KEPT_IF("m.first_started_at IS NULL")
#define FIRST_KEPT_NEW FIRST_KEPT_IF("m.first_started_at = r.started_at" \
	" AND m.first_worker_pid = $25")

/* The empty string is NULL in the outcome columns (set_text()). */
static bool
empty_text(const char *s)
{
	return s == NULL || *s == '\0';
}

static bool
first_attempt_implied(const OutboxMessage *m)
{
	const OutboxResponse *r = &m->resp;

	return m->attempt == 1 && m->outcome == OUTCOME_SENT && !m->ambiguous &&
		!empty_text(r->twilio_sid) && r->twilio_code == 0 && empty_text(r->twilio_message) &&
		empty_text(r->transport_error) && empty_text(r->retry_after) && m->delay_ms == 0;
}

/*
 * Record finished attempts: the message rows (guarded by state sending and
 * the attempt number), one attempt row each (but a first attempt kept on
 * its message, FIRST_KEPT), dead letters, then account
 * pauses and suppressions.  An outcome whose message changed meanwhile is
 * kept as an attempt row only.
 */
static int
by_account(const ListCell *a, const ListCell *b)
{
	return strcmp(((OutboxMessage *) lfirst(a))->account_name,
				  ((OutboxMessage *) lfirst(b))->account_name);
}

void
outbox_record(List *done)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[NUM_COLS + 4];
	Datum		values[NUM_COLS + 4];
	int			total = list_length(done);
	Datum	   *first_ok = palloc(sizeof(Datum) * total);
	int64		updated = 0;
	List	   *sorted = list_copy(done);
	Columns		c;
	ListCell   *lc;
	int			first;
	int			i;

	for (i = 0; i < NUM_COLS; i++)
	{
		types[i] = get_array_type(col_types[i]);
		c.v[i] = palloc(sizeof(Datum) * total);
		c.null[i] = palloc(sizeof(bool) * total);
	}
	types[NUM_COLS] = INT4OID;
	types[NUM_COLS + 1] = TEXTOID;
	types[NUM_COLS + 2] = TIMESTAMPTZOID;
	types[NUM_COLS + 3] = get_array_type(BOOLOID);

	/*
	 * One statement per account, naming it, with every value typed by its
	 * parameter (states and outcomes cast once per array, the time given):
	 * nothing is computed per row but the row's own values.
	 */
	outbox_prepare(&plan,
			"WITH u AS (UPDATE twilio_outbox.messages m SET"
			"  state = r.state,"
			"  next_attempt_at = coalesce(r.next_at, m.next_attempt_at),"
			"  failures = least(m.failures, 2147483646) + r.failed,"
			"  ambiguous_attempts = least(m.ambiguous_attempts, 2147483646) + r.ambiguous,"
			"  lease_until = NULL, worker_pid = NULL,"
			"  twilio_sid = coalesce(r.sid, m.twilio_sid),"
			"  twilio_status = coalesce(r.tstatus, m.twilio_status),"
			"  twilio_segments = coalesce(r.tsegments, m.twilio_segments),"
			"  last_http_status = r.http, last_error_code = r.code,"
			"  last_error_message = r.errmsg, updated_at = $27,"
			/* the earliest attempt that may have created it (reconcile.c) */
			"  ambiguous_since = CASE WHEN r.ambiguous = 1"
			"   THEN least(m.ambiguous_since, r.started_at) ELSE m.ambiguous_since END,"
			"  reconcile_at = CASE WHEN r.outcome = 'reconcile' THEN r.next_at END,"
			"  sent_at = CASE WHEN r.state = 'sent' THEN $27 ELSE m.sent_at END,"
			"  finished_at = CASE WHEN r.state IN ('sent', 'dead') THEN $27 END,"
			/* a first attempt that sent it is kept here (47_row_versions.sql) */
			"  first_started_at = CASE WHEN " FIRST_KEPT " THEN r.started_at ELSE m.first_started_at END,"
			"  first_duration_ms = CASE WHEN " FIRST_KEPT " THEN r.duration_ms ELSE m.first_duration_ms END,"
			"  first_http_status = CASE WHEN " FIRST_KEPT " THEN r.http ELSE m.first_http_status END,"
			"  first_request_id = CASE WHEN " FIRST_KEPT " THEN r.request_id ELSE m.first_request_id END,"
			"  first_concurrent_requests = CASE WHEN " FIRST_KEPT " THEN r.concurrent"
			"   ELSE m.first_concurrent_requests END,"
			"  first_request_duration = CASE WHEN " FIRST_KEPT " THEN r.req_duration"
			"   ELSE m.first_request_duration END,"
			"  first_worker_pid = CASE WHEN " FIRST_KEPT " THEN $25 ELSE m.first_worker_pid END"
			"  FROM " OUTCOME_ROWS " WHERE m.id = r.id AND m.account = $26"
			"  AND " GUARD_STATE("sending") " AND m.attempts = r.attempt"
			"  RETURNING m.id, m.account, m.to_number, m.attempts, r.state,"
			"  r.dead_reason, r.http, r.code, r.errmsg,"
			/* SET's value: whether this row kept its first attempt just now */
			"  (" FIRST_KEPT_NEW ") AS kept),"
			" d AS (INSERT INTO twilio_outbox.dead_letters (message_id, account,"
			"  to_number, reason, http_status, twilio_code, error_message, attempts)"
			"  SELECT id, account, to_number, dead_reason, http, code, errmsg, attempts"
			"  FROM u WHERE u.state = 'dead'),"
			" a AS (INSERT INTO twilio_outbox.attempts (message_id, attempt, account,"
			"  started_at, duration_ms, http_status, twilio_code, twilio_message,"
			"  transport_error, retry_after, delay, outcome, ambiguous, twilio_sid,"
			"  request_id, concurrent_requests, request_duration, worker_pid)"
			"  SELECT id, attempt, account, started_at, duration_ms, http, code,"
			"  tmessage, terror, retry_after,"
			"  CASE WHEN delay_ms IS NOT NULL THEN make_interval(secs => delay_ms / 1000.0) END,"
			"  outcome, ambiguous = 1, sid, request_id,"
			"  concurrent, req_duration, $25 FROM " OUTCOME_ROWS
			"  WHERE NOT EXISTS (SELECT FROM u WHERE u.id = r.id AND u.kept))"
			" SELECT count(*) FROM u",
			NUM_COLS + 4, types);

	list_sort(sorted, by_account);
	first = 0;
	while (first < total)
	{
		const char *account = ((OutboxMessage *) list_nth(sorted, first))->account_name;
		int			n = 0;
		int			rc;
		bool		isnull;

		while (first + n < total &&
			   strcmp(((OutboxMessage *) list_nth(sorted, first + n))->account_name, account) == 0)
		{
			fill_row(&c, n, list_nth(sorted, first + n));
			first_ok[n] = BoolGetDatum(first_attempt_implied(list_nth(sorted, first + n)));
			n++;
		}
		for (i = 0; i < NUM_COLS; i++)
			values[i] = outbox_make_array(c.v[i], c.null[i], n, col_types[i]);
		values[NUM_COLS] = Int32GetDatum(MyProcPid);
		values[NUM_COLS + 1] = CStringGetTextDatum(account);
		values[NUM_COLS + 2] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		values[NUM_COLS + 3] = outbox_make_array(first_ok, NULL, n, BOOLOID);

		rc = SPI_execute_plan(plan, values, NULL, false, 0);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "recording outcomes failed: %s", SPI_result_code_string(rc));
		updated += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		first += n;
	}
	if (updated != total)
		ereport(WARNING,
				(errmsg("twilio_outbox recorded %d of %d outcomes on their messages",
						(int) updated, total),
				 errdetail("The other messages were changed meanwhile; their attempts are kept in twilio_outbox.attempts.")));

	/* callbacks that came before these SIDs were recorded (callback.c) */
	outbox_apply_early_statuses(done);

	foreach(lc, done)
	{
		OutboxMessage *m = lfirst(lc);

		if (m->pause_account_until != 0)
			pause_account(m);
		if (m->suppress)
			suppress_recipient(m);
		/* looked up at Twilio after the grace (reconcile.c) */
		if (m->outcome == OUTCOME_RECONCILE)
			outbox_lookup_reconcile_soon(m->next_attempt_at);
	}
}

/*
 * When the dispatcher should look again: the soonest moment a sender that
 * has a queued message may send it (its due time, its bucket's next token,
 * the end of its or its account's pause).  Senders of accounts without room
 * are left out: a finishing request wakes the dispatcher for those.  0 when
 * nothing is waiting.
 */
TimestampTz
outbox_next_due(TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {INT8ARRAYOID, TEXTARRAYOID};
	int			nsenders = list_length(outbox_senders);
	Datum	   *ids = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *names = palloc(sizeof(Datum) * Max(nsenders, 1));
	TimestampTz next = 0;
	Datum		values[2];
	ListCell   *lc;
	uint64		i;
	int			n = 0;
	int			rc;

	foreach(lc, outbox_senders)
	{
		OutboxSender *snd = lfirst(lc);
		OutboxAccount *a = snd->account;

		if (a != NULL && snd->seen && a->seen && a->config_error == NULL &&
			a->in_flight < a->cap && outbox_sender_mine(snd) &&
			a->partition_room > 0)	/* its share left at the last claim (partition.c) */
		{
			ids[n] = Int64GetDatum(snd->id);
			names[n++] = CStringGetTextDatum(a->name);
		}
	}
	if (n == 0)
		return 0;

	outbox_prepare(&plan,
			"SELECT s.sender_id, n.next_attempt_at, n.segments"
			" FROM unnest($1::int8[], $2::text[]) AS s(sender_id, account)"
			/* the earliest of each priority level's first (messages_due) */
			" CROSS JOIN LATERAL (SELECT l.next_attempt_at, l.segments"
			"  FROM unnest('{0,1,2}'::int2[]) AS lv(level) CROSS JOIN LATERAL ("
			"   SELECT m.next_attempt_at, m.segments FROM twilio_outbox.messages m"
			"   WHERE m.state = 'queued' AND m.account = s.account AND m.sender_id = s.sender_id"
			"   AND m.priority = lv.level ORDER BY m.next_attempt_at LIMIT 1) l"
			"  ORDER BY l.next_attempt_at LIMIT 1) n",
			2, types);
	values[0] = outbox_make_array(ids, NULL, n, INT8OID);
	values[1] = outbox_make_array(names, NULL, n, TEXTOID);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "next-due lookup failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		OutboxSender *snd = outbox_find_sender(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
																	SPI_tuptable->tupdesc, 1, &isnull)));
		TimestampTz at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 2, &isnull));

		if (snd == NULL || snd->account == NULL)
			continue;

		at = Max(at, outbox_bucket_ready_at(snd, now,
											DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
																		SPI_tuptable->tupdesc, 3, &isnull))));
		if (snd->paused_until > now)
			at = Max(at, snd->paused_until);
		if (snd->account->paused_until > now)
			at = Max(at, snd->account->paused_until);
		if (at != DT_NOEND && (next == 0 || at < next))
			next = at;
	}
	return next;
}
