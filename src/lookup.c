/*-------------------------------------------------------------------------
 *
 * lookup.c
 *		Requests other than create, one mechanism for all of them: looking
 *		up a message whose status callback never came (GET
 *		.../Messages/{Sid}.json, accounts.poll_after), deleting a
 *		finished message's data at Twilio (DELETE .../Messages/{Sid}.json,
 *		accounts.twilio_retention in its daily window), and looking for an
 *		ambiguous message in Twilio's list (GET .../Messages.json?To=...,
 *		on_ambiguous = reconcile: what to ask and what the pages say is
 *		src/reconcile.c's; every account, first of its lookups).
 *
 * Sends always go first.  The worker calls outbox_lookup_phase() in its
 * database phase after its own claim, with the capacity that claim left;
 * an account's lookups take only the concurrency slots its sends leave
 * free (at most half its cap, at least one), at most lookups_per_second
 * (a token bucket holding one second's worth; with N dispatchers per
 * database each has a bucket of lookups_per_second / N, at least one token
 * deep, so the rate holds for their sum), and none while the account
 * or its lookups are paused.  A lookup is claimed per account (pinned by
 * account = $1, through the partial indexes messages_poll_due and
 * messages_delete_due, FOR UPDATE SKIP LOCKED, O(batch)) by setting its
 * next_lookup_at to a lease, committed before anything is sent; the
 * requests go over the same transport as sends (src/http.c: the same
 * allowed_hosts check on the parsed URL, the same credentials), with no
 * transaction open; what came back is recorded in the next database phase.
 * A poll's status goes through twilio_outbox.apply_status(), the very
 * function a status callback goes through (ranks, never backwards, the
 * error policy, suppression, dead letters), recorded with source 'poll'.
 * A 429 pauses the account's lookups as a 429 pauses its sends
 * (Retry-After plus jitter, else a doubling backoff); sends are not
 * paused by it.  A dispatcher that dies with lookups in flight leaves
 * their lease to run out: they are claimed again (GET and DELETE are
 * idempotent at Twilio).
 *
 * State lives in outbox_worker_cxt; each claim's lookups in a batch
 * context of their own, freed once all are recorded.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/* How soon to ask again after a claim found less than it asked for. */
#define LOOKUP_IDLE_MS			1000
/* How soon to ask again when sends left no room. */
#define LOOKUP_NO_ROOM_MS		100
/*
 * An account with neither polling nor retention, with no message waiting
 * for reconciliation, is asked again this late; the dispatcher's own
 * ambiguous outcomes bring it forward (outbox_lookup_reconcile_soon), so
 * this bounds only how late a row marked by someone else is seen.
 */
#define RECONCILE_IDLE_MS		60000
/* Wrong credentials: sends pause the account; lookups look again this late. */
#define LOOKUP_AUTH_PAUSE_MS	60000
/* A deletion Twilio refused (not 404, not 429): tried again this late. */
#define LOOKUP_DELETE_RETRY		"1 hour"

/* What came of one lookup, as the record statement spells it. */
typedef enum LookupAction
{
	LOOKUP_POLLED,				/* a status came back: apply_status() */
	LOOKUP_GONE,				/* 404 on a poll: Twilio has no such message */
	LOOKUP_DELETED,				/* 2xx or 404 on a deletion */
	LOOKUP_PAUSED,				/* not processed (429, refused credentials): again at until */
	LOOKUP_FAILED				/* anything else: counts, backs off */
} LookupAction;

static const char *const action_names[] = {
	[LOOKUP_POLLED] = "polled",
	[LOOKUP_GONE] = "gone",
	[LOOKUP_DELETED] = "deleted",
	[LOOKUP_PAUSED] = "paused",
	[LOOKUP_FAILED] = "failed",
};

/*
 * One lookup in flight or done.  The transport sees its OutboxMessage (the
 * first member: lookup.c casts back), with kind and request_url set.
 */
typedef struct Lookup
{
	OutboxMessage m;
	int			polls;			/* messages.polls after the claim: the record's guard */
	LookupAction action;
	TimestampTz until;			/* LOOKUP_PAUSED: when it may go again */
	char	   *status;			/* LOOKUP_POLLED */
	OutboxReconcile *rec;		/* OUTBOX_REQUEST_LIST: reconcile.c's */
} Lookup;

/* An account's lookup settings and runtime state. */
typedef struct LookupAccount
{
	char	   *name;
	bool		seen;			/* polling or retention set at the last refresh */
	bool		poll;
	Interval	poll_after;
	bool		retain;
	Interval	retention;
	bool		window;
	TimeADT		window_start;
	TimeADT		window_end;
	OutboxSender bucket;		/* lookups per second (only the token bucket is used) */
	TimestampTz paused_until;	/* a 429 (or refused credentials) on a lookup */
	int			consecutive_429;
	int			in_flight;
	TimestampTz next_claim_at;	/* do not ask the table before this */
} LookupAccount;

static List *lookup_accounts = NIL;
static TimestampTz last_refresh = 0;
static List *claimed = NIL;		/* claimed in the open transaction */
static List *done = NIL;		/* finished, not yet recorded */
static List *recording = NIL;	/* recorded in the open transaction */

/* Append to a list that lives in the worker's context, whatever the current one. */
static List *
append(List *list, void *p)
{
	MemoryContext old = MemoryContextSwitchTo(outbox_worker_cxt);

	list = lappend(list, p);
	MemoryContextSwitchTo(old);
	return list;
}

static LookupAccount *
find_lookup_account(const char *name)
{
	ListCell   *lc;

	foreach(lc, lookup_accounts)
	{
		LookupAccount *la = lfirst(lc);

		if (strcmp(la->name, name) == 0)
			return la;
	}
	return NULL;
}

/* ---------- settings ---------- */

/*
 * Reload the lookup settings of every account: any may have messages to
 * reconcile; those with polling or retention have more to look up.
 */
static void
refresh(TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	ListCell   *lc;
	uint64		i;
	int			rc;

	outbox_prepare(&plan,
				   "SELECT name, poll_after, twilio_retention, delete_window_start,"
				   " delete_window_end,"
				   " CASE WHEN lookups_per_second IS NULL OR lookups_per_second = 'NaN'"
				   "  OR lookups_per_second < 0.01 THEN 5::float8"
				   "  WHEN lookups_per_second > 100 THEN 100::float8"
				   "  ELSE lookups_per_second::float8 END"
				   " FROM twilio_outbox.accounts",
				   0, NULL);
	rc = SPI_execute_plan(plan, NULL, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read lookup settings: %s", SPI_result_code_string(rc));

	foreach(lc, lookup_accounts)
		((LookupAccount *) lfirst(lc))->seen = false;
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		LookupAccount *la;
		bool		isnull;
		bool		end_null;
		Datum		d;
		double		rate;

		if (name == NULL)
			continue;
		la = find_lookup_account(name);
		if (la == NULL)
		{
			la = MemoryContextAllocZero(outbox_worker_cxt, sizeof(LookupAccount));
			la->name = MemoryContextStrdup(outbox_worker_cxt, name);
			lookup_accounts = append(lookup_accounts, la);
		}
		d = SPI_getbinval(tup, desc, 2, &isnull);
		la->poll = !isnull;
		if (!isnull)
			la->poll_after = *DatumGetIntervalP(d);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		la->retain = !isnull;
		if (!isnull)
			la->retention = *DatumGetIntervalP(d);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		la->window_start = isnull ? 0 : DatumGetTimeADT(d);
		la->window_end = DatumGetTimeADT(SPI_getbinval(tup, desc, 5, &end_null));
		la->window = !isnull && !end_null;
		rate = DatumGetFloat8(SPI_getbinval(tup, desc, 6, &isnull));

		/*
		 * Every dispatcher of the database looks up for every account, so
		 * each takes an equal share of lookups_per_second: the rate holds
		 * for their sum.  A bucket must hold one token to admit a lookup,
		 * so the burst over all of them is max(N, lookups_per_second).
		 */
		rate /= Max(outbox_dispatcher_count, 1);
		outbox_sender_configure(&la->bucket, "", rate, Max(1.0, rate), now);
		la->seen = true;
	}
}

/* ---------- claim ---------- */

/* Sends of this account claimed in this phase, not yet in flight. */
static int
sends_claimed(OutboxAccount *a, List *sends)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, sends)
	{
		OutboxMessage *m = lfirst(lc);

		if (!m->decided && m->account == a)
			n++;
	}
	return n;
}

/* A Datum of an Interval, or NULL. */
static Datum
interval_datum(bool set, Interval *iv, bool *isnull)
{
	*isnull = !set;
	return set ? IntervalPGetDatum(iv) : (Datum) 0;
}

/*
 * Claim up to n lookups of one account: its polls first (oldest due
 * first), then its deletions if it is in its window.  Returns how many;
 * appends them to claimed, in batch.
 */
static int
claim_account(LookupAccount *la, OutboxAccount *a, int n, OutboxBatch *batch)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[7] = {TEXTOID, INT4OID, INT4OID, INTERVALOID, INTERVALOID,
	TIMEOID, TIMEOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;
	uint64		i;
	int			rc;
	size_t		base_len;

	outbox_prepare(&plan,
				   "WITH cand AS MATERIALIZED ("
				   " SELECT x.id, x.kind FROM ("
				   /* never polled: due poll_after after it was sent */
				   "  (SELECT m.id, 1 AS kind, m.sent_at AS due FROM twilio_outbox.messages m"
				   "   WHERE $4::interval IS NOT NULL AND m.account = $1 AND m.state = 'sent'"
				   "   AND m.twilio_sid IS NOT NULL AND m.next_lookup_at IS NULL"
				   "   AND m.sent_at <= now() - $4::interval"
				   "   ORDER BY m.sent_at LIMIT $2)"
				   "  UNION ALL"
				   /* polled before, or a lease that ran out */
				   "  (SELECT m.id, 1, m.next_lookup_at FROM twilio_outbox.messages m"
				   "   WHERE $4::interval IS NOT NULL AND m.account = $1 AND m.state = 'sent'"
				   "   AND m.twilio_sid IS NOT NULL AND m.next_lookup_at <= now()"
				   "   ORDER BY m.next_lookup_at LIMIT $2)"
				   "  UNION ALL"
				   /* final for twilio_retention, in the window */
				   "  (SELECT m.id, 2, m.finished_at FROM twilio_outbox.messages m"
				   "   WHERE $5::interval IS NOT NULL"
				   "   AND twilio_outbox.in_delete_window($6::time, $7::time, now())"
				   "   AND m.account = $1"
				   "   AND m.state = ANY (ARRAY['delivered', 'undelivered', 'failed', 'canceled']::twilio_outbox.message_state[])"
				   "   AND m.twilio_sid IS NOT NULL AND m.deleted_at_twilio IS NULL"
				   "   AND m.finished_at <= now() - $5::interval"
				   "   AND (m.next_lookup_at IS NULL OR m.next_lookup_at <= now())"
				   "   ORDER BY m.finished_at LIMIT $2)"
				   " ) x ORDER BY x.kind, x.due LIMIT $2),"
				   /* still what it was found to be, under the row lock */
				   " locked AS MATERIALIZED ("
				   "  SELECT m.id, c.kind FROM twilio_outbox.messages m JOIN cand c ON c.id = m.id"
				   "  WHERE m.id = ANY (ARRAY(SELECT id FROM cand)) AND m.account = $1"
				   "  AND m.twilio_sid IS NOT NULL"
				   "  AND (m.next_lookup_at IS NULL OR m.next_lookup_at <= now())"
				   "  AND CASE WHEN c.kind = 1 THEN m.state = 'sent'"
				   "   ELSE m.state = ANY (ARRAY['delivered', 'undelivered', 'failed', 'canceled']::twilio_outbox.message_state[])"
				   "    AND m.deleted_at_twilio IS NULL END"
				   "  FOR UPDATE OF m SKIP LOCKED)"
				   " UPDATE twilio_outbox.messages m SET"
				   "  next_lookup_at = now() + make_interval(secs => $3),"
				   "  polls = CASE WHEN l.kind = 1 THEN least(m.polls, 2147483646) + 1 ELSE m.polls END"
				   " FROM locked l WHERE m.id = l.id AND m.account = $1"
				   " RETURNING m.id, l.kind, m.twilio_sid, m.polls",
				   7, types);

	values[0] = CStringGetTextDatum(la->name);
	values[1] = Int32GetDatum(n);
	values[2] = Int32GetDatum(Max(outbox_lease_s, 2 * outbox_request_timeout_ms / 1000 + 10));
	values[3] = interval_datum(la->poll, &la->poll_after, &isnull);
	nulls[3] = isnull ? 'n' : ' ';
	values[4] = interval_datum(la->retain, &la->retention, &isnull);
	nulls[4] = isnull ? 'n' : ' ';
	values[5] = TimeADTGetDatum(la->window_start);
	values[6] = TimeADTGetDatum(la->window_end);
	if (!la->window)
		nulls[5] = nulls[6] = 'n';
	rc = SPI_execute_plan(plan, values, nulls, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "lookup claim failed: %s", SPI_result_code_string(rc));

	/* .../Messages.json -> .../Messages/{Sid}.json */
	base_len = strlen(a->messages_url) - strlen(".json");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(batch->cxt);
		Lookup	   *l = palloc0(sizeof(Lookup));
		OutboxMessage *m = &l->m;
		char	   *sid = SPI_getvalue(tup, desc, 3);

		m->batch = batch;
		m->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		m->kind = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull)) == 1 ?
			OUTBOX_REQUEST_FETCH : OUTBOX_REQUEST_DELETE;
		l->polls = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		m->account = a;
		m->account_name = pstrdup(la->name);
		m->resp.concurrent_requests = -1;
		m->resp.request_duration = -1;
		/* a SID written by hand must not change the path */
		if (sid != NULL && (outbox_is_sid(sid, "SM") || outbox_is_sid(sid, "MM")))
			m->request_url = psprintf("%.*s/%s.json", (int) base_len, a->messages_url, sid);
		else
		{
			m->decided = true;
			l->action = LOOKUP_GONE;
			m->error_message = "its twilio_sid is not a message SID";
		}
		batch->pending++;
		MemoryContextSwitchTo(old);
		claimed = append(claimed, m);
	}
	return (int) SPI_processed;
}

/*
 * Claim up to n of an account's messages to reconcile (reconcile.c says
 * which, and what to ask first).  Returns how many; appends them to
 * claimed, in batch.
 */
static int
claim_reconcile(LookupAccount *la, OutboxAccount *a, int n, OutboxBatch *batch)
{
	List	   *recs = outbox_reconcile_claim(la->name, n, batch->cxt);
	ListCell   *lc;

	foreach(lc, recs)
	{
		OutboxReconcile *rec = lfirst(lc);
		MemoryContext old = MemoryContextSwitchTo(batch->cxt);
		Lookup	   *l = palloc0(sizeof(Lookup));
		OutboxMessage *m = &l->m;

		m->batch = batch;
		m->id = rec->id;
		m->kind = OUTBOX_REQUEST_LIST;
		m->account = a;
		m->account_name = pstrdup(la->name);
		m->resp.concurrent_requests = -1;
		m->resp.request_duration = -1;
		l->rec = rec;
		/* decided at the claim: nothing to ask (reconcile.c said why) */
		if (rec->error != NULL)
			m->decided = true;
		else
			m->request_url = outbox_reconcile_first_url(rec, a->messages_url);
		batch->pending++;
		MemoryContextSwitchTo(old);
		claimed = append(claimed, m);
	}
	return list_length(recs);
}

/*
 * Claim lookups with what sends left: capacity requests in all, and per
 * account the room its cap leaves after its in-flight requests and the
 * sends just claimed (sends), at most half its cap in lookups, within its
 * bucket.  Inside the worker's transaction, SPI connected.
 */
static void
claim(TimestampTz now, int capacity, List *sends)
{
	ListCell   *lc;
	OutboxBatch *batch = NULL;

	foreach(lc, lookup_accounts)
	{
		LookupAccount *la = lfirst(lc);
		OutboxAccount *a;
		int			room;
		int			n;
		int			got;

		if (!la->seen || la->next_claim_at > now || la->paused_until > now)
			continue;
		a = outbox_find_account(la->name);
		if (a == NULL || a->messages_url == NULL)
		{
			/* not known to the registry yet */
			la->next_claim_at = now + LOOKUP_IDLE_MS * 1000L;
			continue;
		}
		room = outbox_account_room(a, now) - sends_claimed(a, sends);
		room = Min(room, Max(1, a->cap / 2) - la->in_flight);
		outbox_bucket_refill(&la->bucket, now);
		n = Min(Min(room, capacity), (int) floor(la->bucket.tokens));
		if (room <= 0 || capacity <= 0)
		{
			/* sends have it all: a finishing request wakes the worker anyway */
			la->next_claim_at = now + LOOKUP_NO_ROOM_MS * 1000L;
			continue;
		}
		if (n <= 0)
		{
			la->next_claim_at = outbox_bucket_ready_at(&la->bucket, now, 1);
			continue;
		}
		if (batch == NULL)
		{
			MemoryContext cxt = AllocSetContextCreate(outbox_worker_cxt, "twilio_outbox lookups",
													  ALLOCSET_DEFAULT_SIZES);

			batch = MemoryContextAllocZero(cxt, sizeof(OutboxBatch));
			batch->cxt = cxt;
		}
		/* reconciliation first: a message waits for it to be sent at all */
		got = claim_reconcile(la, a, n, batch);
		if (got < n && (la->poll || la->retain))
			got += claim_account(la, a, n - got, batch);
		if (got > 0)
			outbox_bucket_take(&la->bucket, got);
		capacity -= got;
		/* all it asked for: more may be due as soon as the bucket allows */
		if (got >= n)
			la->next_claim_at = outbox_bucket_ready_at(&la->bucket, now, 1);
		else if (la->poll || la->retain)
			la->next_claim_at = now + LOOKUP_IDLE_MS * 1000L;
		else
		{
			/* only reconciliation: when its next message comes due */
			TimestampTz due = outbox_reconcile_next_due(la->name);

			la->next_claim_at = due == 0 ? now + RECONCILE_IDLE_MS * 1000L :
				Max(due, now + LOOKUP_IDLE_MS * 1000L);
		}
	}
	if (batch != NULL && batch->pending == 0)
		MemoryContextDelete(batch->cxt);
}

/* ---------- record ---------- */

/*
 * Apply the statuses polls brought back, each through apply_status() as a
 * status callback would be, in message id order (the order row locks are
 * taken in).
 */
static void
record_statuses(List *polled)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID};
	int			n = list_length(polled);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *sts = palloc(sizeof(Datum) * n);
	Datum	   *codes = palloc(sizeof(Datum) * n);
	bool	   *codes_null = palloc(sizeof(bool) * n);
	Datum	   *msgs = palloc(sizeof(Datum) * n);
	bool	   *msgs_null = palloc(sizeof(bool) * n);
	Datum		values[4];
	ListCell   *lc;
	int			i = 0;
	int			rc;

	outbox_prepare(&plan,
				   "SELECT twilio_outbox.apply_status(m.account, a.account_sid, m.twilio_sid,"
				   "  r.st, r.code, r.msg, NULL,"
				   "  jsonb_build_object('status', r.st, 'error_code', r.code, 'error_message', r.msg),"
				   "  'poll', NULL)"
				   " FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[]) AS r(id, st, code, msg)"
				   " JOIN twilio_outbox.messages m ON m.id = r.id"
				   " JOIN twilio_outbox.accounts a ON a.name = m.account"
				   " WHERE m.id = ANY ($1) AND m.twilio_sid IS NOT NULL"
				   " ORDER BY m.id",
				   4, types);
	foreach(lc, polled)
	{
		Lookup	   *l = lfirst(lc);

		ids[i] = Int64GetDatum(l->m.id);
		sts[i] = CStringGetTextDatum(l->status);
		codes[i] = Int32GetDatum(l->m.resp.twilio_code);
		codes_null[i] = l->m.resp.twilio_code == 0;
		msgs_null[i] = l->m.resp.twilio_message == NULL;
		msgs[i] = msgs_null[i] ? (Datum) 0 : CStringGetTextDatum(l->m.resp.twilio_message);
		i++;
	}
	values[0] = outbox_make_array(ids, NULL, n, INT8OID);
	values[1] = outbox_make_array(sts, NULL, n, TEXTOID);
	values[2] = outbox_make_array(codes, codes_null, n, INT4OID);
	values[3] = outbox_make_array(msgs, msgs_null, n, TEXTOID);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "recording polled statuses failed: %s", SPI_result_code_string(rc));
}

/*
 * Record finished lookups: statuses first, then each message's lookup
 * state, guarded by the poll count its claim left (a message claimed
 * again since, after its lease ran out, is the later claim's to record).
 * A poll that leaves the message sent is due again after poll_after times
 * two to the number of polls so far (at most a day), or never after
 * max_polls; a failed deletion an hour later.
 */
static void
record(List *finished)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
	TEXTARRAYOID, INT4ARRAYOID};
	int			n = list_length(finished);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *actions = palloc(sizeof(Datum) * n);
	Datum	   *untils = palloc(sizeof(Datum) * n);
	bool	   *untils_null = palloc(sizeof(bool) * n);
	Datum	   *errors = palloc(sizeof(Datum) * n);
	bool	   *errors_null = palloc(sizeof(bool) * n);
	Datum	   *polls = palloc(sizeof(Datum) * n);
	Datum		values[5];
	List	   *polled = NIL;
	List	   *reconciled = NIL;
	ListCell   *lc;
	int			i = 0;
	int			rc;

	foreach(lc, finished)
	{
		Lookup	   *l = lfirst(lc);

		if (l->rec != NULL)
		{
			reconciled = lappend(reconciled, l->rec);
			continue;
		}
		if (l->action == LOOKUP_POLLED)
			polled = lappend(polled, l);
		ids[i] = Int64GetDatum(l->m.id);
		actions[i] = CStringGetTextDatum(action_names[l->action]);
		untils[i] = TimestampTzGetDatum(l->until);
		untils_null[i] = l->action != LOOKUP_PAUSED;
		errors_null[i] = l->m.error_message == NULL;
		errors[i] = errors_null[i] ? (Datum) 0 : CStringGetTextDatum(l->m.error_message);
		polls[i] = Int32GetDatum(l->polls);
		i++;
	}
	if (polled != NIL)
		record_statuses(polled);
	if (reconciled != NIL)
		outbox_reconcile_record(reconciled);
	n = i;
	if (n == 0)
		return;

	outbox_prepare(&plan,
				   "WITH r AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::timestamptz[],"
				   "  $4::text[], $5::int4[]) AS r(id, action, until, error, polls))"
				   " UPDATE twilio_outbox.messages m SET"
				   "  polls = CASE WHEN r.action = 'paused' AND m.state = 'sent'"
				   "   THEN greatest(m.polls - 1, 0) ELSE m.polls END,"
				   "  next_lookup_at = CASE"
				   "   WHEN r.action = 'deleted' THEN NULL"
				   "   WHEN r.action = 'paused' THEN r.until"
				   "   WHEN r.action = 'gone' THEN 'infinity'"
				   "   WHEN m.state <> 'sent' AND r.action = 'failed' THEN now() + interval '" LOOKUP_DELETE_RETRY "'"
				   /* a final status from apply_status() cleared it already */
				   "   WHEN m.state <> 'sent' THEN m.next_lookup_at"
				   "   WHEN m.polls >= a.max_polls THEN 'infinity'"
				   "   ELSE now() + least(coalesce(a.poll_after, interval '1 hour')"
				   "    * power(2, least(greatest(m.polls - 1, 0), 20)), interval '1 day') END,"
				   "  deleted_at_twilio = CASE WHEN r.action = 'deleted' THEN now() ELSE m.deleted_at_twilio END,"
				   "  lookup_error = r.error"
				   " FROM r, twilio_outbox.accounts a"
				   " WHERE m.id = r.id AND m.id = ANY ($1) AND a.name = m.account AND m.polls = r.polls",
				   5, types);
	values[0] = outbox_make_array(ids, NULL, n, INT8OID);
	values[1] = outbox_make_array(actions, NULL, n, TEXTOID);
	values[2] = outbox_make_array(untils, untils_null, n, TIMESTAMPTZOID);
	values[3] = outbox_make_array(errors, errors_null, n, TEXTOID);
	values[4] = outbox_make_array(polls, NULL, n, INT4OID);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "recording lookups failed: %s", SPI_result_code_string(rc));
}

/* ---------- the worker's hooks ---------- */

/*
 * In the worker's database phase, after its own claim: record what
 * finished, reload the settings when the worker reloads its accounts
 * (refresh: every second, and soon after a wake-up), and claim with the
 * capacity left (0: claim nothing).  sends are the messages the worker's
 * claim just took, not yet in flight.  May throw; the worker rolls back
 * and calls outbox_lookup_aborted().
 */
void
outbox_lookup_phase(TimestampTz now, bool reload, int capacity, List *sends)
{
	if (done != NIL)
	{
		record(done);
		recording = done;
		done = NIL;
	}
	if (reload || last_refresh == 0)
	{
		refresh(now);
		last_refresh = now;
	}
	if (capacity > 0 && lookup_accounts != NIL)
		claim(now, capacity, sends);
}

/* Free a recorded or forgotten lookup. */
static void
release(OutboxMessage *m)
{
	OutboxBatch *batch = m->batch;

	if (--batch->pending == 0)
		MemoryContextDelete(batch->cxt);
}

/*
 * The phase committed: what was recorded is freed, and what was claimed
 * goes in flight (outside any transaction).  A lookup whose URL may no
 * longer be sent to is recorded as paused for a second: nothing was sent.
 */
void
outbox_lookup_committed(void)
{
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	foreach(lc, recording)
		release(lfirst(lc));
	list_free(recording);
	recording = NIL;

	foreach(lc, claimed)
	{
		OutboxMessage *m = lfirst(lc);
		Lookup	   *l = (Lookup *) m;

		if (!m->decided && outbox_http_start(m))
		{
			LookupAccount *la = find_lookup_account(m->account_name);

			if (la != NULL)
				la->in_flight++;
			continue;
		}
		if (!m->decided)
		{
			MemoryContext old = MemoryContextSwitchTo(m->batch->cxt);

			l->action = LOOKUP_PAUSED;
			l->until = now + USECS_PER_SEC;
			m->error_message = pstrdup(m->resp.transport_error);
			if (l->rec != NULL)
			{
				l->rec->verdict = OUTBOX_RECONCILE_PAUSED;
				l->rec->until = l->until;
				l->rec->error = m->error_message;
			}
			MemoryContextSwitchTo(old);
		}
		done = append(done, m);
	}
	list_free(claimed);
	claimed = NIL;
}

/*
 * The phase rolled back: what it claimed was not claimed; what it
 * recorded is recorded again next time.
 */
void
outbox_lookup_aborted(void)
{
	ListCell   *lc;

	foreach(lc, claimed)
		release(lfirst(lc));
	list_free(claimed);
	claimed = NIL;
	foreach(lc, done)
		recording = append(recording, lfirst(lc));
	list_free(done);
	done = recording;
	recording = NIL;
}

/* 429 without Retry-After: backoff_base doubled per 429 in a row, up to backoff_max. */
static int64
pause_ms(LookupAccount *la)
{
	double		d = outbox_backoff_base_ms * pow(2.0, Min(la->consecutive_429, 20));

	return (int64) Min(d, (double) outbox_backoff_max_ms);
}

/*
 * A page of a reconciliation lookup came back (2xx): reconcile.c reads it.
 * Returns true when the next page is in flight (it takes a token of the
 * account's lookup budget, the bucket going below empty if it must: the
 * claims after it wait); else the lookup is done, its verdict set.  In
 * the lookup's batch context.
 */
static bool
reconcile_page(Lookup *l, LookupAccount *la, TimestampTz now)
{
	OutboxMessage *m = &l->m;
	char	   *next = NULL;
	OutboxReconcilePage page;

	page = outbox_reconcile_page(l->rec, &m->resp, m->account->messages_url, &next);
	if (page == OUTBOX_PAGE_DONE)
	{
		l->rec->verdict = OUTBOX_RECONCILE_LISTED;
		return false;
	}
	if (page == OUTBOX_PAGE_BAD)
	{
		l->action = LOOKUP_FAILED;
		m->error_message = l->rec->error;
		return false;
	}
	/* the same message struct goes out again: a fresh response, the body buffer kept */
	{
		char	   *body = m->resp.body;
		size_t		cap = m->resp.body_cap;

		memset(&m->resp, 0, sizeof(m->resp));
		m->resp.body = body;
		m->resp.body_cap = cap;
		m->resp.concurrent_requests = -1;
		m->resp.request_duration = -1;
	}
	m->request_url = next;
	if (!outbox_http_start(m))
	{
		l->action = LOOKUP_PAUSED;
		l->until = now + USECS_PER_SEC;
		m->error_message = pstrdup(m->resp.transport_error);
		return false;
	}
	if (la != NULL)
	{
		la->in_flight++;
		outbox_bucket_take(&la->bucket, 1);
	}
	return true;
}

/*
 * libcurl finished a lookup: what came of it (no database access, never
 * throws on a bad response).  The response is judged by outbox_decide(),
 * as a send's is, for the one thing lookups share with sends: whether it
 * was rate limited, and for how long; a poll keeps only the status, the
 * error code and message, each cleaned as every network string is.
 */
void
outbox_lookup_done(OutboxMessage *m)
{
	Lookup	   *l = (Lookup *) m;
	OutboxResponse *r = &m->resp;
	LookupAccount *la = find_lookup_account(m->account_name);
	MemoryContext old = MemoryContextSwitchTo(m->batch->cxt);
	TimestampTz now = GetCurrentTimestamp();
	long		http = r->http_status;

	if (la != NULL)
		la->in_flight--;
	outbox_decide(m, now);
	m->error_message = NULL;
	l->action = LOOKUP_FAILED;
	if (m->outcome == OUTCOME_RATE_LIMITED)
	{
		/* never processed: the account's lookups wait, sends do not */
		l->action = LOOKUP_PAUSED;
		if (r->retry_after[0] == '\0' && la != NULL)
			m->delay_ms = pause_ms(la);
		l->until = now + m->delay_ms * 1000;
		m->error_message = psprintf("rate limited by Twilio (HTTP %ld): lookups paused", http);
		if (la != NULL)
		{
			la->consecutive_429++;
			la->paused_until = Max(la->paused_until, l->until);
		}
	}
	else
	{
		if (la != NULL && http != 0)
			la->consecutive_429 = 0;
		if (http == 401 || http == 403 || r->twilio_code == 20003)
		{
			l->action = LOOKUP_PAUSED;
			l->until = now + LOOKUP_AUTH_PAUSE_MS * 1000L;
			m->error_message = psprintf("Twilio refused the credentials (HTTP %ld)", http);
			if (la != NULL)
				la->paused_until = Max(la->paused_until, l->until);
		}
		else if (m->kind == OUTBOX_REQUEST_LIST && http >= 200 && http < 300)
		{
			if (reconcile_page(l, la, now))
			{
				/* the next page is in flight: not done yet */
				MemoryContextSwitchTo(old);
				return;
			}
		}
		else if (m->kind == OUTBOX_REQUEST_DELETE && (http == 404 || (http >= 200 && http < 300)))
			l->action = LOOKUP_DELETED;
		else if (m->kind == OUTBOX_REQUEST_FETCH && http == 404)
		{
			l->action = LOOKUP_GONE;
			m->error_message = "Twilio has no message with this SID (HTTP 404): no more polls";
		}
		else if (m->kind == OUTBOX_REQUEST_FETCH && http >= 200 && http < 300 &&
				 r->twilio_status != NULL &&
				 strspn(r->twilio_status, "abcdefghijklmnopqrstuvwxyz_-") == strlen(r->twilio_status) &&
				 strlen(r->twilio_status) >= 1 && strlen(r->twilio_status) <= 32)
		{
			l->action = LOOKUP_POLLED;
			l->status = r->twilio_status;
		}
		else
		{
			l->action = LOOKUP_FAILED;
			m->error_message = http == 0 ? pstrdup(r->transport_error) :
				r->twilio_message ? psprintf("HTTP %ld: %s", http, r->twilio_message) :
				psprintf("HTTP %ld%s", http,
						 http >= 200 && http < 300 ? " without a readable status" : "");
		}
	}
	if (l->rec != NULL && l->rec->verdict != OUTBOX_RECONCILE_LISTED)
	{
		/* what reconcile.c records: never a resend on an error */
		l->rec->verdict = l->action == LOOKUP_PAUSED ? OUTBOX_RECONCILE_PAUSED :
			OUTBOX_RECONCILE_FAILED;
		l->rec->until = l->until;
		if (l->rec->error == NULL)
			l->rec->error = m->error_message ? m->error_message :
				psprintf("HTTP %ld", http);
	}
	done = append(done, m);
	MemoryContextSwitchTo(old);
}

/*
 * A message was put up for reconciliation (an ambiguous outcome recorded,
 * rows taken back), due at at: every account is asked again by then.
 */
void
outbox_lookup_reconcile_soon(TimestampTz at)
{
	ListCell   *lc;

	foreach(lc, lookup_accounts)
	{
		LookupAccount *la = lfirst(lc);

		if (la->next_claim_at > at)
			la->next_claim_at = at;
	}
}

/* Whether finished lookups wait to be recorded. */
bool
outbox_lookup_pending(void)
{
	return done != NIL;
}

/*
 * When the worker should run a database phase for lookups (0: no account
 * has polling or retention): the soonest an account may be asked again.
 */
TimestampTz
outbox_lookup_wake_at(void)
{
	ListCell   *lc;
	TimestampTz at = 0;

	foreach(lc, lookup_accounts)
	{
		LookupAccount *la = lfirst(lc);
		TimestampTz t;

		if (!la->seen)
			continue;
		t = Max(la->next_claim_at, la->paused_until);
		if (at == 0 || t < at)
			at = t;
	}
	return at;
}
