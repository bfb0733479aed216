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

#include <math.h>

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

/* Where claiming starts in the account list, rotated for fairness. */
static int	claim_rotor = 0;

/* Counts claimed messages; a sender remembers when it was last served. */
static uint64 served_seq = 0;

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

/* Build a one-dimensional array from values (NULL where nulls[i]). */
static Datum
make_array(Datum *values, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
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
 * Claim due messages: at most capacity in all, within each account's room
 * (its concurrency cap less what it has in flight) and each sender's
 * bucket, so that only messages whose sender can send now are taken.
 * Accounts are visited from a rotating start, and an account's room is
 * shared round-robin over its senders, least recently served first (each
 * one's oldest message first), so that a sender with a huge backlog never
 * starves another.  *quota is set
 * to how many could have been claimed (0: no sender can send).
 *
 * Returns the claimed messages, each with its request built, in a new batch
 * context (a child of outbox_worker_cxt).  Nothing is sent here: the
 * caller commits first.
 */
List *
outbox_claim(int capacity, TimestampTz now, int *quota)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[8] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, FLOAT8ARRAYOID,
	BOOLARRAYOID, INT4ARRAYOID, INT4OID, INT4OID};
	int			naccounts = list_length(outbox_accounts);
	int			nsenders = list_length(outbox_senders);
	Datum	   *ids = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *accounts = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *max_n = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *budget = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *full = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum	   *room = palloc(sizeof(Datum) * Max(nsenders, 1));
	Datum		values[8];
	int			n = 0;
	int			i;
	int			rc;
	OutboxBatch *batch;
	List	   *claimed = NIL;
	MemoryContext cxt;
	MemoryContext old;

	/* More than one dispatcher: each account's share left to this one (partition.c). */
	outbox_partition_reserve(now);
	/* Share the capacity over the accounts that may send. */
	for (i = 0; i < naccounts; i++)
	{
		OutboxAccount *a = list_nth(outbox_accounts, (claim_rotor + i) % naccounts);

		a->claim_room = Min(Min(outbox_account_room(a, now), a->partition_room), capacity);
		a->claim_counted = false;
		capacity -= a->claim_room;
	}
	/*
	 * Every sender that may send now, with what its bucket allows, least
	 * recently served first: that order is each one's turn in its account.
	 */
	list_sort(outbox_senders, served_earlier);
	for (i = 0; i < nsenders; i++)
	{
		OutboxSender *snd = list_nth(outbox_senders, i);
		OutboxAccount *a = snd->account;
		int			most;

		if (a == NULL || a->claim_room <= 0 || !sender_open(snd, now))
			continue;
		/* another dispatcher's sender (partition.c) */
		if (!outbox_sender_mine(snd))
			continue;
		outbox_bucket_refill(snd, now);
		if (!snd->unlimited && snd->tokens < 1.0)
			continue;
		most = snd->unlimited ? a->claim_room : Min(a->claim_room, (int) snd->tokens);
		/* the account's room counts once towards what could be claimed */
		if (!a->claim_counted)
		{
			*quota += a->claim_room;
			a->claim_counted = true;
		}
		ids[n] = Int64GetDatum(snd->id);
		accounts[n] = CStringGetTextDatum(a->name);
		max_n[n] = Int32GetDatum(most);
		budget[n] = Float8GetDatum(snd->unlimited ? INFINITY : snd->tokens);
		/* a full bucket lets one message through even if it is longer */
		full[n] = BoolGetDatum(!snd->unlimited && snd->tokens >= snd->burst);
		room[n] = Int32GetDatum(a->claim_room);
		n++;
	}
	claim_rotor++;
	if (n == 0)
		return NIL;

	outbox_prepare(&plan,
			"WITH q AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::int4[],"
			"   $4::float8[], $5::bool[], $6::int4[]) WITH ORDINALITY"
			"  AS q(sender_id, account, max_n, budget, full_bucket, account_room, turn)),"
			/* per sender: its oldest due messages, as many segments as its bucket holds */
			" per_sender AS ("
			"  SELECT z.id, q.account, q.account_room, q.turn, z.rn"
			"  FROM q CROSS JOIN LATERAL ("
			"   SELECT y.id, y.next_attempt_at, y.rn FROM ("
			"    SELECT x.id, x.next_attempt_at,"
			"     sum(x.segments) OVER (ORDER BY x.next_attempt_at, x.id) AS cum,"
			"     row_number() OVER (ORDER BY x.next_attempt_at, x.id) AS rn"
			"    FROM (SELECT m.id, m.next_attempt_at,"
			"     least(greatest(coalesce(m.segments, 1), 1), 1000) AS segments"
			"     FROM twilio_outbox.messages m"
			"     WHERE m.state = 'queued' AND m.sender_id = q.sender_id"
			"     AND m.next_attempt_at <= now()"
			"     AND (m.expires_at IS NULL OR m.expires_at > now())"
			"     ORDER BY m.next_attempt_at, m.id LIMIT q.max_n) x) y"
			"   WHERE y.cum <= q.budget OR (y.rn = 1 AND q.full_bucket)) z),"
			/* per account: round-robin over its senders, within its room */
			" pick AS ("
			"  SELECT p.id FROM (SELECT per_sender.*, row_number() OVER ("
			"    PARTITION BY account ORDER BY rn, turn) AS arn"
			"   FROM per_sender) p"
			"  WHERE p.arn <= p.account_room),"
			" c AS MATERIALIZED ("
			"  SELECT m.id FROM twilio_outbox.messages m"
			"  WHERE m.id = ANY (ARRAY(SELECT id FROM pick)) AND m.state = 'queued'"
			"  FOR UPDATE SKIP LOCKED)"
			" UPDATE twilio_outbox.messages m SET state = 'sending',"
			"  attempts = least(m.attempts, 2147483646) + 1, lease_until = now() + make_interval(secs => $7),"
			"  worker_pid = $8, updated_at = now()"
			" FROM c WHERE m.id = c.id AND m.state = 'queued'"
			" RETURNING m.id, m.attempts, m.failures, m.account, m.to_number,"
			"  m.from_number, m.messaging_service_sid, m.body, m.media_urls,"
			"  m.content_sid, m.content_variables::text,"
			/*
			 * The message's own callback, else the account's with outbox_id:
			 * the rule of twilio_outbox.status_callback_for(), written out so
			 * that no function call (with its pinned search_path) runs per
			 * message.
			 */
			"  coalesce(m.status_callback, (SELECT a.status_callback_url"
			"   || CASE WHEN strpos(a.status_callback_url, '?') > 0 THEN '&' ELSE '?' END"
			"   || 'outbox_id=' || m.id::text"
			"   FROM twilio_outbox.accounts a WHERE a.name = m.account)), m.params,"
			"  m.expires_at, m.idempotency_key::text, m.segments, m.sender_id,"
			/* what the row's sender and account are now, for the checks below */
			"  (SELECT s.account FROM twilio_outbox.senders s WHERE s.id = m.sender_id),"
			"  EXISTS (SELECT FROM twilio_outbox.accounts a WHERE a.name = m.account)",
			8, types);

	values[0] = make_array(ids, NULL, n, INT8OID);
	values[1] = make_array(accounts, NULL, n, TEXTOID);
	values[2] = make_array(max_n, NULL, n, INT4OID);
	values[3] = make_array(budget, NULL, n, FLOAT8OID);
	values[4] = make_array(full, NULL, n, BOOLOID);
	values[5] = make_array(room, NULL, n, INT4OID);
	values[6] = Int32GetDatum(Max(outbox_lease_s, 2 * outbox_request_timeout_ms / 1000 + 10));
	values[7] = Int32GetDatum(MyProcPid);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return NIL;

	cxt = AllocSetContextCreate(outbox_worker_cxt, "twilio_outbox batch",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	batch = palloc0(sizeof(OutboxBatch));
	batch->cxt = cxt;
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		OutboxMessage *m = palloc0(sizeof(OutboxMessage));
		bool		isnull;
		bool		media_null;
		bool		params_null;
		Datum		media;
		Datum		params;
		Datum		expires;
		Datum		d;
		char	   *account = SPI_getvalue(tup, desc, 4);
		char	   *sender_account = SPI_getvalue(tup, desc, 18);
		bool		account_exists;
		int64		sender_id;

		m->batch = batch;
		m->resp.concurrent_requests = -1;
		m->resp.request_duration = -1;
		m->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		m->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		m->failures = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		/* attempts.account and dead_letters.account are NOT NULL */
		m->account_name = account ? account : "(none)";
		m->to_number = SPI_getvalue(tup, desc, 5);
		media = SPI_getbinval(tup, desc, 9, &media_null);
		params = SPI_getbinval(tup, desc, 13, &params_null);
		expires = SPI_getbinval(tup, desc, 14, &isnull);
		m->expires_at = isnull ? 0 : DatumGetTimestampTz(expires);
		m->idempotency_key = SPI_getvalue(tup, desc, 15);
		d = SPI_getbinval(tup, desc, 16, &isnull);
		m->segments = isnull ? 1 : Min(Max(DatumGetInt32(d), 1), 1000);
		d = SPI_getbinval(tup, desc, 17, &isnull);
		sender_id = isnull ? 0 : DatumGetInt64(d);
		m->sender = isnull ? NULL : outbox_find_sender(sender_id);
		d = SPI_getbinval(tup, desc, 19, &isnull);
		account_exists = !isnull && DatumGetBool(d);

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
		m->form = outbox_build_form(m->to_number,
									SPI_getvalue(tup, desc, 6), SPI_getvalue(tup, desc, 7),
									SPI_getvalue(tup, desc, 8), media, media_null,
									SPI_getvalue(tup, desc, 10), SPI_getvalue(tup, desc, 11),
									SPI_getvalue(tup, desc, 12), params, params_null,
									m->expires_at, now);
		outbox_bucket_take(m->sender, m->segments);
		m->sender->served = ++served_seq;
		claimed = lappend(claimed, m);
		batch->pending++;
	}
	MemoryContextSwitchTo(old);
	return claimed;
}

/*
 * Dead-letter queued messages whose expiry has passed: they are never sent.
 * Bounded per call; returns how many.  Also clears account pauses that ran
 * out.
 */
int
outbox_expire(void)
{
	static SPIPlanPtr clear_pauses = NULL;
	static SPIPlanPtr plan = NULL;
	int			rc;

	outbox_prepare(&plan,
			"WITH x AS (SELECT id FROM twilio_outbox.messages"
			"  WHERE state = 'queued' AND expires_at <= now()"
			"  ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED),"
			" u AS (UPDATE twilio_outbox.messages m SET state = 'dead',"
			"  finished_at = now(), updated_at = now(),"
			"  last_error_message = 'expired before it could be sent'"
			"  FROM x WHERE m.id = x.id AND m.state = 'queued'"
			"  RETURNING m.id, m.account, m.to_number, m.attempts,"
			"  m.last_http_status, m.last_error_code)"
			" INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number,"
			"  reason, http_status, twilio_code, error_message, attempts)"
			" SELECT id, account, to_number, 'expired', last_http_status,"
			"  last_error_code, 'expired before it could be sent', attempts FROM u",
			0, NULL);
	rc = SPI_execute_plan(plan, NULL, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "expiry failed: %s", SPI_result_code_string(rc));

	/* pauses that ran out are cleared, so that the table says what holds */
	outbox_prepare(&clear_pauses,
			"UPDATE twilio_outbox.accounts SET paused_until = NULL, pause_reason = NULL"
			" WHERE paused_until <= now()",
			0, NULL);
	if (SPI_execute_plan(clear_pauses, NULL, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not clear expired pauses");
	return (int) SPI_processed;
}

/*
 * Dead-letter queued messages that can never be claimed because their
 * sender, or their sender's account, no longer exists (only a superuser
 * writing around the triggers and keys can get there): the claim goes per
 * sender the dispatcher knows, so nothing else would ever finish them.
 * Messages whose sender belongs to another account are dead-lettered by
 * the claim itself when they come due.
 *
 * Cheap with millions of queued rows: a skip scan of the distinct sender
 * ids in the partial index messages_due (one index probe per sender; 0.3 ms
 * for 20 senders beside 2 million rows), then at most 1000 messages of the
 * orphaned senders per call, in the index's order.  Returns how many.
 */
int
outbox_sweep_orphans(void)
{
	static SPIPlanPtr plan = NULL;
	int			rc;

	outbox_prepare(&plan,
			"WITH RECURSIVE ids AS ("
			"  (SELECT m.sender_id FROM twilio_outbox.messages m WHERE m.state = 'queued'"
			"   AND m.sender_id IS NOT NULL ORDER BY m.sender_id LIMIT 1)"
			"  UNION ALL"
			"  SELECT (SELECT m.sender_id FROM twilio_outbox.messages m WHERE m.state = 'queued'"
			"   AND m.sender_id > ids.sender_id ORDER BY m.sender_id LIMIT 1)"
			"  FROM ids WHERE ids.sender_id IS NOT NULL),"
			" orphans AS (SELECT i.sender_id, s.id IS NULL AS no_sender FROM ids i"
			"  LEFT JOIN twilio_outbox.senders s ON s.id = i.sender_id"
			"  LEFT JOIN twilio_outbox.accounts a ON a.name = s.account"
			"  WHERE i.sender_id IS NOT NULL AND a.name IS NULL),"
			" x AS (SELECT l.id, o.no_sender FROM orphans o CROSS JOIN LATERAL ("
			"   SELECT m.id FROM twilio_outbox.messages m WHERE m.state = 'queued'"
			"   AND m.sender_id = o.sender_id ORDER BY m.next_attempt_at, m.id"
			"   LIMIT 1000 FOR UPDATE SKIP LOCKED) l"
			"  LIMIT 1000),"
			" u AS (UPDATE twilio_outbox.messages m SET state = 'dead',"
			"  finished_at = now(), updated_at = now(),"
			"  last_error_message = CASE WHEN x.no_sender"
			"   THEN 'its sender ' || m.sender_id || ' does not exist'"
			"   ELSE 'the account of its sender ' || m.sender_id || ' does not exist' END"
			"  FROM x WHERE m.id = x.id AND m.state = 'queued'"
			"  RETURNING m.id, m.account, m.to_number, m.attempts, m.last_http_status,"
			"  m.last_error_code, m.last_error_message, x.no_sender)"
			" INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number,"
			"  reason, http_status, twilio_code, error_message, attempts)"
			" SELECT id, coalesce(account, '(none)'), coalesce(to_number, ''),"
			"  CASE WHEN no_sender THEN 'sender_missing' ELSE 'account_missing' END,"
			"  last_http_status, last_error_code, last_error_message, attempts FROM u",
			0, NULL);
	rc = SPI_execute_plan(plan, NULL, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "orphan sweep failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("twilio_outbox dead-lettered %d queued messages whose sender or its account no longer exists",
						(int) SPI_processed)));
	return (int) SPI_processed;
}

/*
 * Take back messages left in sending by a dispatcher that is gone: at start
 * (all) every one, later only those of another process whose lease ran out
 * (or that have none: a row written by hand).  Never those of a dispatcher
 * of this database that runs (more than one per database, partition.c):
 * its requests may still be in flight, and it records them itself.
 * Their attempt is recorded as lost and ambiguous, not charged; the message
 * goes back to the queue with the same idempotency key, or is held when
 * twilio_outbox.on_ambiguous = hold.
 */
int
outbox_rescue(bool all)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {BOOLOID, INT4OID, TEXTOID, INT4ARRAYOID};
	Datum		values[4];
	int			rc;

	outbox_prepare(&plan,
			"WITH x AS (SELECT id, worker_pid FROM twilio_outbox.messages"
			"  WHERE state = 'sending'"
			"  AND ($1 OR ((lease_until < now() OR lease_until IS NULL)"
			"   AND worker_pid IS DISTINCT FROM $2))"
			"  AND (worker_pid IS NULL OR worker_pid <> ALL ($4::int4[]))"
			"  LIMIT 10000 FOR UPDATE SKIP LOCKED),"
			" u AS (UPDATE twilio_outbox.messages m SET"
			"  state = $3::twilio_outbox.message_state, next_attempt_at = now(),"
			"  ambiguous_attempts = least(m.ambiguous_attempts, 2147483646) + 1,"
			"  lease_until = NULL, worker_pid = NULL, updated_at = now(),"
			"  last_error_message = 'the dispatcher stopped while the request was in flight'"
			"  FROM x WHERE m.id = x.id AND m.state = 'sending'"
			"  RETURNING m.id, m.attempts, m.account, x.worker_pid)"
			" INSERT INTO twilio_outbox.attempts (message_id, attempt, account,"
			"  started_at, outcome, ambiguous, transport_error, worker_pid)"
			" SELECT id, attempts, account, now(), 'lost', true,"
			"  'the dispatcher stopped while the request was in flight', worker_pid FROM u",
			4, types);
	values[0] = BoolGetDatum(all);
	values[1] = Int32GetDatum(MyProcPid);
	values[2] = CStringGetTextDatum(outbox_ambiguous_policy == OUTBOX_AMBIGUOUS_HOLD ?
									"ambiguous" : "queued");
	/* the other dispatchers of this database that run (at start, not this one: its pid may be reused) */
	values[3] = outbox_live_dispatchers(!all);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "lease rescue failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("twilio_outbox took back %d messages left in flight by a stopped dispatcher",
						(int) SPI_processed),
				 errdetail("Their attempts are recorded as lost and ambiguous.")));
	return (int) SPI_processed;
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
 * Record finished attempts: the message rows (guarded by state sending and
 * the attempt number), one attempt row each, dead letters, then account
 * pauses and suppressions.  "m.id = ANY ($1)" keeps the update on the
 * primary key whatever the planner guesses of unnest()'s row count.  An outcome whose message changed meanwhile is
 * kept as an attempt row only.
 */
void
outbox_record(List *done)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[NUM_COLS + 1];
	Datum		values[NUM_COLS + 1];
	int			n = list_length(done);
	Columns		c;
	ListCell   *lc;
	int			i;
	int			rc;

	for (i = 0; i < NUM_COLS; i++)
	{
		types[i] = get_array_type(col_types[i]);
		c.v[i] = palloc(sizeof(Datum) * n);
		c.null[i] = palloc(sizeof(bool) * n);
	}
	types[NUM_COLS] = INT4OID;

	outbox_prepare(&plan,
			"WITH r AS (SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[],"
			"  $4::text[], $5::timestamptz[], $6::int4[], $7::int4[], $8::text[],"
			"  $9::text[], $10::int4[], $11::int4[], $12::int4[], $13::text[],"
			"  $14::text[], $15::timestamptz[], $16::float8[], $17::text[],"
			"  $18::text[], $19::int8[], $20::text[], $21::text[], $22::int4[],"
			"  $23::float8[], $24::text[])"
			"  AS r(id, attempt, account, state, next_at, failed, ambiguous, sid,"
			"  tstatus, tsegments, http, code, errmsg, dead_reason, started_at,"
			"  duration_ms, terror, retry_after, delay_ms, outcome, request_id,"
			"  concurrent, req_duration, tmessage)),"
			" u AS (UPDATE twilio_outbox.messages m SET"
			"  state = r.state::twilio_outbox.message_state,"
			"  next_attempt_at = coalesce(r.next_at, m.next_attempt_at),"
			"  failures = least(m.failures, 2147483646) + r.failed,"
			"  ambiguous_attempts = least(m.ambiguous_attempts, 2147483646) + r.ambiguous,"
			"  lease_until = NULL, worker_pid = NULL,"
			"  twilio_sid = coalesce(r.sid, m.twilio_sid),"
			"  twilio_status = coalesce(r.tstatus, m.twilio_status),"
			"  twilio_segments = coalesce(r.tsegments, m.twilio_segments),"
			"  last_http_status = r.http, last_error_code = r.code,"
			"  last_error_message = r.errmsg, updated_at = now(),"
			"  sent_at = CASE WHEN r.state = 'sent' THEN now() ELSE m.sent_at END,"
			"  finished_at = CASE WHEN r.state IN ('sent', 'dead') THEN now() END"
			"  FROM r WHERE m.id = r.id AND m.id = ANY ($1)"
			"  AND m.state = 'sending' AND m.attempts = r.attempt"
			"  RETURNING m.id, m.account, m.to_number, m.attempts, r.state,"
			"  r.dead_reason, r.http, r.code, r.errmsg),"
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
			"  outcome::twilio_outbox.attempt_outcome, ambiguous = 1, sid, request_id,"
			"  concurrent, req_duration, $25 FROM r)"
			" SELECT count(*) FROM u",
			NUM_COLS + 1, types);

	i = 0;
	foreach(lc, done)
		fill_row(&c, i++, lfirst(lc));
	for (i = 0; i < NUM_COLS; i++)
		values[i] = make_array(c.v[i], c.null[i], n, col_types[i]);
	values[NUM_COLS] = Int32GetDatum(MyProcPid);

	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "recording outcomes failed: %s", SPI_result_code_string(rc));
	{
		bool		isnull;
		int64		updated = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull));

		if (updated != n)
			ereport(WARNING,
					(errmsg("twilio_outbox recorded %d of %d outcomes on their messages",
							(int) updated, n),
					 errdetail("The other messages were changed meanwhile; their attempts are kept in twilio_outbox.attempts.")));
	}

	foreach(lc, done)
	{
		OutboxMessage *m = lfirst(lc);

		if (m->pause_account_until != 0)
			pause_account(m);
		if (m->suppress)
			suppress_recipient(m);
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
	Oid			types[1] = {INT8ARRAYOID};
	int			nsenders = list_length(outbox_senders);
	Datum	   *ids = palloc(sizeof(Datum) * Max(nsenders, 1));
	TimestampTz next = 0;
	Datum		value;
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
			ids[n++] = Int64GetDatum(snd->id);
	}
	if (n == 0)
		return 0;

	outbox_prepare(&plan,
			"SELECT s.sender_id, n.next_attempt_at, n.segments FROM unnest($1::int8[]) AS s(sender_id)"
			" CROSS JOIN LATERAL (SELECT m.next_attempt_at, m.segments FROM twilio_outbox.messages m"
			"  WHERE m.state = 'queued' AND m.sender_id = s.sender_id"
			"  ORDER BY m.next_attempt_at LIMIT 1) n",
			1, types);
	value = make_array(ids, NULL, n, INT8OID);
	rc = SPI_execute_plan(plan, &value, NULL, false, 0);
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
