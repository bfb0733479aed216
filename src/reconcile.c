/*-------------------------------------------------------------------------
 *
 * reconcile.c
 *		Reconciliation of ambiguous sends (twilio_outbox.on_ambiguous =
 *		reconcile): before a message that Twilio may have created is sent
 *		again, it is looked for at Twilio with the Messages list resource.
 *
 * A message to reconcile is in state 'ambiguous' with reconcile_at set
 * (by the record of an ambiguous attempt, by the rescue of a dead
 * dispatcher's rows, or by anyone who marks it so): from reconcile_at on,
 * src/lookup.c claims it here, per account, within that account's lookup
 * budget, and sends GET .../Messages.json?To=...[&From=...]&PageSize=...
 * over the same transport as every request.  Each page is read here
 * (newest first): the outbound-api messages to the same recipient, from
 * the same from-number or Messaging Service, created within
 * [ambiguous_since - reconcile_clock_skew, now + reconcile_clock_skew],
 * with the same body (with no body: as many media) are candidates; for a
 * message whose body cannot be compared, every one of them is a near
 * candidate.  next_page_uri is
 * followed (a path under the account's own Messages.json only) until a
 * page reaches before that window, at most RECONCILE_MAX_PAGES pages.
 * The verdict is recorded in the next database phase, where the SIDs
 * another of our messages holds are set aside:
 *	 - exactly one exact candidate: its SID is adopted, the message is sent;
 *	 - more than one: left for an operator with the candidates;
 *	 - none, and no near one: not created; queued again with the same
 *	   idempotency key (or dead-lettered attempts_exhausted when its
 *	   attempts had run out: never a resend then);
 *	 - none, but near ones: looked up again later (another message of
 *	   ours in the window may adopt its SID meanwhile), and left for an
 *	   operator after RECONCILE_MAX_LOOKUPS.
 * A message whose body Twilio may rewrite or shows rendered (ContentSid
 * templates, SmartEncoded, ShortenUrls) has only near candidates: with
 * nothing at all in its window it is resent; otherwise an operator decides.
 * An unreadable page or an error answer is never a reason to resend: the
 * message is looked up again later (backing off), and left for an operator
 * after RECONCILE_MAX_LOOKUPS.  Every change is guarded by state
 * 'ambiguous' and the lookup count its claim left, so a status callback
 * that adopted the SID meanwhile (apply_status) wins.
 *
 * The claim and the record run in the dispatcher's transaction (SPI
 * connected) and may throw; reading a page runs outside any transaction
 * and never throws on a bad answer.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <curl/curl.h>

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/* Messages asked for per page (Twilio allows up to 1000). */
#define RECONCILE_PAGE_SIZE		50
/* Pages read per lookup at most; beyond, the lookup failed. */
#define RECONCILE_MAX_PAGES		20
/* Lookups of one message before it is left for an operator (when they do not settle it). */
#define RECONCILE_MAX_LOOKUPS	8
/* The longest wait between two lookups of a message. */
#define RECONCILE_MAX_BACKOFF_S	3600

/*
 * Claim up to n of an account's messages due for reconciliation, oldest
 * due first, through messages_reconcile_due (account = $1, FOR UPDATE SKIP
 * LOCKED), leasing each by moving its reconcile_at past the longest its
 * pages may take.  Returns OutboxReconcile entries allocated in cxt.
 */
List *
outbox_reconcile_claim(const char *account, int n, MemoryContext cxt)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[3] = {TEXTOID, INT4OID, INT4OID};
	Datum		values[3];
	List	   *out = NIL;
	uint64		i;
	int			rc;

	outbox_prepare(&plan,
				   "WITH c AS MATERIALIZED ("
				   " SELECT m.id FROM twilio_outbox.messages m"
				   " WHERE m.account = $1 AND m.state = 'ambiguous'"
				   " AND m.reconcile_at IS NOT NULL AND m.reconcile_at <= now()"
				   " ORDER BY m.reconcile_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
				   " UPDATE twilio_outbox.messages m SET"
				   "  reconcile_at = now() + make_interval(secs => $3),"
				   "  reconcile_lookups = least(m.reconcile_lookups, 2147483646) + 1"
				   " FROM c WHERE m.id = c.id AND m.account = $1 AND m.state = 'ambiguous'"
				   " AND m.reconcile_at IS NOT NULL"
				   " RETURNING m.id, m.reconcile_lookups, m.to_number, m.from_number,"
				   "  m.messaging_service_sid, coalesce(m.body, ''),"
				   "  coalesce(cardinality(m.media_urls), 0),"
				   /* bodies Twilio may rewrite, or that the list shows rendered */
				   "  m.content_sid IS NOT NULL"
				   "   OR lower(coalesce(m.params->>'SmartEncoded', '')) = 'true'"
				   "   OR lower(coalesce(m.params->>'ShortenUrls', '')) = 'true',"
				   "  coalesce(m.ambiguous_since, m.created_at)",
				   3, types);
	values[0] = CStringGetTextDatum(account);
	values[1] = Int32GetDatum(n);
	/* every page may take the whole request timeout */
	values[2] = Int32GetDatum(Max(outbox_lease_s,
								  RECONCILE_MAX_PAGES * (outbox_request_timeout_ms / 1000 + 1) + 10));
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "reconcile claim failed: %s", SPI_result_code_string(rc));

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		OutboxReconcile *rec = palloc0(sizeof(OutboxReconcile));
		bool		isnull;
		char	   *body;

		rec->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		rec->lookups = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		rec->to_number = SPI_getvalue(tup, desc, 3);
		rec->from_number = SPI_getvalue(tup, desc, 4);
		rec->service_sid = SPI_getvalue(tup, desc, 5);
		body = SPI_getvalue(tup, desc, 6);
		/* Twilio's JSON is UTF-8, whatever the server encoding */
		rec->body = pstrdup(pg_server_to_any(body, strlen(body), PG_UTF8));
		rec->media = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		rec->unreliable = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
		rec->since = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
		initStringInfo(&rec->exact);
		initStringInfo(&rec->near);
		/* listed only once every page was read: anything less is no answer */
		rec->verdict = OUTBOX_RECONCILE_FAILED;
		if (rec->to_number == NULL)
		{
			/* nothing to look for: never resent on that account */
			rec->verdict = OUTBOX_RECONCILE_FAILED;
			rec->error = "it has no recipient to look it up by";
		}
		out = lappend(out, rec);
		MemoryContextSwitchTo(old);
	}
	return out;
}

/* Append s percent-encoded for a query string. */
static void
append_query_value(StringInfo buf, const char *s)
{
	const unsigned char *p;

	for (p = (const unsigned char *) s; *p; p++)
	{
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(buf, (char) *p);
		else
			appendStringInfo(buf, "%%%02X", *p);
	}
}

/*
 * The first page's URL: the account's Messages.json filtered by To, and by
 * From when the message has a from-number (there is no Messaging Service
 * filter: those are matched on the page).  In CurrentMemoryContext.
 */
char *
outbox_reconcile_first_url(OutboxReconcile *rec, const char *messages_url)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s?To=", messages_url);
	append_query_value(&buf, rec->to_number);
	if (rec->from_number != NULL)
	{
		appendStringInfoString(&buf, "&From=");
		append_query_value(&buf, rec->from_number);
	}
	appendStringInfo(&buf, "&PageSize=%d", RECONCILE_PAGE_SIZE);
	return buf.data;
}

/* ---------- reading a page ---------- */

/* One message of the page, as far as it matters here. */
typedef struct ListItem
{
	char	   *sid;
	char	   *to;
	char	   *from;
	char	   *service;
	char	   *body;
	char	   *direction;
	char	   *date_created;
	char	   *num_media;
} ListItem;

typedef struct PageState
{
	OutboxReconcile *rec;
	int			depth;
	bool		in_messages;	/* inside the top-level "messages" array */
	char	   *top_field;		/* current top-level field */
	char	   *field;			/* current field of a message */
	ListItem	item;
	char	   *next_page_uri;
	int			items;
	time_t		oldest;			/* oldest date_created on the page; 0 none */
	bool		bad_item;		/* a message without a readable date or SID */
	time_t		from_t;			/* the window, in Unix seconds */
	time_t		to_t;
} PageState;

static OutboxJsonAction
page_object_start(void *state)
{
	PageState  *ps = state;

	ps->depth++;
	if (ps->in_messages && ps->depth == 3)
		memset(&ps->item, 0, sizeof(ps->item));
	OUTBOX_JSON_ACTION_DONE;
}

static bool
same(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* A whole message of the page was read: is it ours? */
static void
judge_item(PageState *ps)
{
	OutboxReconcile *rec = ps->rec;
	ListItem   *it = &ps->item;
	time_t		created;
	bool		address;
	bool		body;
	int			media;

	ps->items++;
	created = it->date_created ? curl_getdate(it->date_created, NULL) : -1;
	if (it->sid == NULL || created < 0 ||
		!(outbox_is_sid(it->sid, "SM") || outbox_is_sid(it->sid, "MM")))
	{
		ps->bad_item = true;
		return;
	}
	if (ps->oldest == 0 || created < ps->oldest)
		ps->oldest = created;
	if (created < ps->from_t || created > ps->to_t)
		return;
	/* only what the API created: not inbound, not replies to inbound */
	if (!same(it->direction, "outbound-api") || !same(it->to, rec->to_number))
		return;
	address = rec->from_number != NULL ? same(it->from, rec->from_number) :
		same(it->service, rec->service_sid);
	if (!address)
		return;
	if (rec->unreliable)
	{
		/* its body cannot be compared: any message in its window may be it */
		appendStringInfo(&rec->near, "%s%s", rec->near.len > 0 ? " " : "", it->sid);
		return;
	}
	/* another message to the same recipient: not this one */
	media = it->num_media ? atoi(it->num_media) : 0;
	body = strcmp(it->body ? it->body : "", rec->body) == 0 &&
		(rec->media == 0 ? media == 0 : media == rec->media);
	if (body)
		appendStringInfo(&rec->exact, "%s%s", rec->exact.len > 0 ? " " : "", it->sid);
}

static OutboxJsonAction
page_object_end(void *state)
{
	PageState  *ps = state;

	if (ps->in_messages && ps->depth == 3)
		judge_item(ps);
	ps->depth--;
	OUTBOX_JSON_ACTION_DONE;
}

static OutboxJsonAction
page_array_start(void *state)
{
	PageState  *ps = state;

	ps->depth++;
	if (ps->depth == 2 && same(ps->top_field, "messages"))
		ps->in_messages = true;
	OUTBOX_JSON_ACTION_DONE;
}

static OutboxJsonAction
page_array_end(void *state)
{
	PageState  *ps = state;

	if (ps->depth == 2)
		ps->in_messages = false;
	ps->depth--;
	OUTBOX_JSON_ACTION_DONE;
}

static OutboxJsonAction
page_field(void *state, char *fname, bool isnull)
{
	PageState  *ps = state;

	if (ps->depth == 1)
		ps->top_field = fname;
	else if (ps->in_messages && ps->depth == 3)
		ps->field = fname;
	OUTBOX_JSON_ACTION_DONE;
}

static OutboxJsonAction
page_scalar(void *state, char *token, JsonTokenType type)
{
	PageState  *ps = state;
	ListItem   *it = &ps->item;
	const char *f = ps->field;

	if (type == JSON_TOKEN_NULL)
		OUTBOX_JSON_ACTION_DONE;
	if (ps->depth == 1 && same(ps->top_field, "next_page_uri") && type == JSON_TOKEN_STRING)
		ps->next_page_uri = token;
	if (!ps->in_messages || ps->depth != 3 || f == NULL)
		OUTBOX_JSON_ACTION_DONE;
	if (strcmp(f, "sid") == 0)
		it->sid = token;
	else if (strcmp(f, "to") == 0)
		it->to = token;
	else if (strcmp(f, "from") == 0)
		it->from = token;
	else if (strcmp(f, "messaging_service_sid") == 0)
		it->service = token;
	else if (strcmp(f, "body") == 0)
		it->body = token;
	else if (strcmp(f, "direction") == 0)
		it->direction = token;
	else if (strcmp(f, "date_created") == 0)
		it->date_created = token;
	else if (strcmp(f, "num_media") == 0)
		it->num_media = token;
	OUTBOX_JSON_ACTION_DONE;
}

/*
 * The next page's URL from next_page_uri: only a path under the account's
 * own Messages.json (same scheme, host and path, a query of its own), so
 * that no answer can send the credentials anywhere else.  NULL when it is
 * not one.
 */
static char *
next_page_url(const char *messages_url, const char *uri)
{
	const char *scheme_end = strstr(messages_url, "://");
	const char *path;
	size_t		path_len;
	const char *p;

	if (scheme_end == NULL)
		return NULL;
	path = strchr(scheme_end + 3, '/');
	if (path == NULL)
		return NULL;
	path_len = strlen(path);
	if (strncmp(uri, path, path_len) != 0 || uri[path_len] != '?')
		return NULL;
	for (p = uri; *p; p++)
	{
		if ((unsigned char) *p <= ' ' || *p == '#' || *p == '\\' || (unsigned char) *p >= 0x7f)
			return NULL;
	}
	return psprintf("%.*s%s", (int) (path - messages_url), messages_url, uri);
}

/*
 * Read one page of a reconciliation lookup (a 2xx answer): note its
 * candidates in rec, and say whether another page must be read (next_url,
 * in CurrentMemoryContext).  Never throws on a bad answer.
 */
OutboxReconcilePage
outbox_reconcile_page(OutboxReconcile *rec, OutboxResponse *r, const char *messages_url,
					  char **next_url)
{
	PageState	ps;
	JsonSemAction sem;
	MemoryContext cxt = CurrentMemoryContext;
	bool		ok = true;
	TimestampTz now = GetCurrentTimestamp();

	*next_url = NULL;
	rec->pages++;
	if (r->body == NULL || r->body_len == 0 || r->body_truncated || r->body[0] != '{')
	{
		rec->error = r->body_truncated ? "a page of Twilio's message list was too long to read" :
			"a page of Twilio's message list was not a JSON object";
		return OUTBOX_PAGE_BAD;
	}

	memset(&ps, 0, sizeof(ps));
	ps.rec = rec;
	ps.from_t = timestamptz_to_time_t(rec->since) - outbox_reconcile_clock_skew_s;
	ps.to_t = timestamptz_to_time_t(now) + outbox_reconcile_clock_skew_s;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &ps;
	sem.object_start = page_object_start;
	sem.object_end = page_object_end;
	sem.array_start = page_array_start;
	sem.array_end = page_array_end;
	sem.object_field_start = page_field;
	sem.scalar = page_scalar;
	PG_TRY();
	{
		JsonLexContext *lex = outbox_json_lexer(r->body, r->body_len, PG_UTF8, true);

		if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
			ok = false;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		ok = false;
	}
	PG_END_TRY();

	if (!ok || ps.bad_item)
	{
		rec->error = !ok ? "a page of Twilio's message list was not valid JSON" :
			"a page of Twilio's message list had a message without a readable SID or date_created";
		return OUTBOX_PAGE_BAD;
	}
	/* newest first: a page that reaches before the window ends the search */
	if (ps.items == 0 || ps.oldest < ps.from_t || ps.next_page_uri == NULL ||
		ps.next_page_uri[0] == '\0')
		return OUTBOX_PAGE_DONE;
	if (rec->pages >= RECONCILE_MAX_PAGES)
	{
		rec->error = psprintf("Twilio's message list for the recipient was longer than %d pages within the attempt window",
							  RECONCILE_MAX_PAGES);
		return OUTBOX_PAGE_BAD;
	}
	*next_url = next_page_url(messages_url, ps.next_page_uri);
	if (*next_url == NULL)
	{
		rec->error = "Twilio's next_page_uri was not a path under the account's Messages.json";
		return OUTBOX_PAGE_BAD;
	}
	return OUTBOX_PAGE_MORE;
}

/* ---------- recording ---------- */

static const char *const verdict_names[] = {
	[OUTBOX_RECONCILE_LISTED] = "listed",
	[OUTBOX_RECONCILE_PAUSED] = "paused",
	[OUTBOX_RECONCILE_FAILED] = "failed",
};

/*
 * Record finished reconciliation lookups (see the file header for what
 * each verdict does), one statement for all, each row guarded by state
 * 'ambiguous' and the lookup count its claim left.  Decisions are written
 * as attempt rows: found, not_found (queued again), for_operator, dead.
 * Inside the worker's transaction, SPI connected; may throw.
 */
void
outbox_reconcile_record(List *recs)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[12] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4OID, INT4OID, FLOAT8OID, INT4OID, INT4OID};
	int			n = list_length(recs);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *lookups = palloc(sizeof(Datum) * n);
	Datum	   *verdicts = palloc(sizeof(Datum) * n);
	Datum	   *untils = palloc(sizeof(Datum) * n);
	bool	   *untils_null = palloc(sizeof(bool) * n);
	Datum	   *errors = palloc(sizeof(Datum) * n);
	bool	   *errors_null = palloc(sizeof(bool) * n);
	Datum	   *exact = palloc(sizeof(Datum) * n);
	Datum	   *near = palloc(sizeof(Datum) * n);
	Datum		values[12];
	ListCell   *lc;
	int			i = 0;
	int			rc;
	bool		isnull;
	Datum		next;
	Datum		found_since;

	if (n == 0)
		return;
	outbox_prepare(&plan,
				   "WITH r AS (SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[],"
				   "  $4::timestamptz[], $5::text[], $6::text[], $7::text[])"
				   "  AS r(id, lookups, verdict, until, error, exact, near)),"
				   /* the candidates, less the SIDs another of our messages holds */
				   " c AS MATERIALIZED (SELECT r.id, r.lookups, r.verdict, r.until, r.error,"
				   "  m.account, m.failures,"
				   "  ARRAY(SELECT DISTINCT s FROM unnest(string_to_array(r.exact, ' ')) s"
				   "   WHERE s <> '' AND NOT EXISTS (SELECT FROM twilio_outbox.messages o"
				   "    WHERE o.twilio_sid = s AND o.id <> r.id) ORDER BY s) AS ex,"
				   "  ARRAY(SELECT DISTINCT s FROM unnest(string_to_array(r.near, ' ')) s"
				   "   WHERE s <> '' AND NOT EXISTS (SELECT FROM twilio_outbox.messages o"
				   "    WHERE o.twilio_sid = s AND o.id <> r.id) ORDER BY s) AS nr"
				   "  FROM r JOIN twilio_outbox.messages m ON m.id = r.id"
				   "  WHERE m.id = ANY ($1) AND m.state = 'ambiguous'"
				   "  AND m.reconcile_lookups = r.lookups AND m.reconcile_at IS NOT NULL"
				   "  ORDER BY m.id FOR UPDATE OF m),"
				   " d AS (SELECT c.*, CASE"
				   "  WHEN c.verdict = 'paused' THEN 'paused'"
				   "  WHEN c.verdict = 'failed' AND c.lookups >= $8 THEN 'operator'"
				   "  WHEN c.verdict = 'failed' THEN 'again'"
				   "  WHEN cardinality(c.ex) = 1 THEN 'found'"
				   "  WHEN cardinality(c.ex) > 1 THEN 'operator'"
				   "  WHEN cardinality(c.nr) > 0 AND c.lookups >= $8 THEN 'operator'"
				   "  WHEN cardinality(c.nr) > 0 THEN 'again'"
				   "  WHEN c.failures >= $9 THEN 'dead'"
				   "  ELSE 'resend' END AS decision FROM c),"
				   " u AS (UPDATE twilio_outbox.messages m SET"
				   "  state = CASE d.decision WHEN 'found' THEN 'sent'::twilio_outbox.message_state"
				   "   WHEN 'resend' THEN 'queued'::twilio_outbox.message_state"
				   "   WHEN 'dead' THEN 'dead'::twilio_outbox.message_state"
				   "   ELSE m.state END,"
				   "  twilio_sid = CASE WHEN d.decision = 'found' THEN d.ex[1] ELSE m.twilio_sid END,"
				   "  sent_at = CASE WHEN d.decision = 'found' THEN now() ELSE m.sent_at END,"
				   "  finished_at = CASE WHEN d.decision IN ('found', 'dead') THEN now() ELSE m.finished_at END,"
				   "  next_attempt_at = CASE WHEN d.decision = 'resend' THEN now() ELSE m.next_attempt_at END,"
				   "  reconcile_at = CASE d.decision WHEN 'paused' THEN d.until"
				   "   WHEN 'again' THEN now() + make_interval(secs => least($10 * power(2, least(greatest(d.lookups - 1, 0), 20)), $11))"
				   "   ELSE NULL END,"
				   "  reconcile_lookups = CASE WHEN d.decision = 'paused'"
				   "   THEN greatest(m.reconcile_lookups - 1, 0) ELSE m.reconcile_lookups END,"
				   "  reconcile_candidates = CASE d.decision"
				   "   WHEN 'operator' THEN CASE WHEN cardinality(d.ex) > 0 THEN d.ex ELSE d.nr END"
				   "   WHEN 'again' THEN m.reconcile_candidates WHEN 'paused' THEN m.reconcile_candidates"
				   "   ELSE NULL END,"
				   "  last_error_message = CASE d.decision"
				   "   WHEN 'found' THEN 'found at Twilio by reconciliation'"
				   "   WHEN 'resend' THEN 'not found at Twilio by reconciliation: sent again with the same idempotency key'"
				   "   WHEN 'dead' THEN 'its attempts ran out and reconciliation found no message at Twilio'"
				   "   WHEN 'operator' THEN CASE"
				   "    WHEN cardinality(d.ex) > 1 THEN 'reconciliation found ' || cardinality(d.ex) || ' messages at Twilio that match: left for an operator'"
				   "    WHEN cardinality(d.nr) > 0 THEN 'reconciliation found messages at Twilio it cannot tell apart from this one: left for an operator'"
				   "    ELSE 'reconciliation could not read Twilio''s message list: left for an operator (' || coalesce(d.error, 'no answer') || ')' END"
				   "   ELSE coalesce('reconciliation lookup: ' || d.error, m.last_error_message) END,"
				   "  updated_at = now()"
				   "  FROM d WHERE m.id = d.id AND m.account = d.account AND m.state = 'ambiguous'"
				   "  AND m.reconcile_lookups = d.lookups"
				   "  RETURNING m.id, m.account, m.to_number, m.attempts, d.decision, d.ex, m.reconcile_at,"
				   "  m.created_at),"
				   " dl AS (INSERT INTO twilio_outbox.dead_letters (message_id, account, to_number,"
				   "  reason, error_message, attempts)"
				   "  SELECT id, account, to_number, 'attempts_exhausted',"
				   "  'its attempts ran out and reconciliation found no message at Twilio', attempts"
				   "  FROM u WHERE decision = 'dead'),"
				   " a AS (INSERT INTO twilio_outbox.attempts (message_id, attempt, account,"
				   "  started_at, outcome, ambiguous, twilio_sid, worker_pid)"
				   "  SELECT id, attempts, account, now(), (CASE decision WHEN 'found' THEN 'found'"
				   "   WHEN 'resend' THEN 'not_found' WHEN 'dead' THEN 'dead' ELSE 'for_operator' END)"
				   "   ::twilio_outbox.attempt_outcome, false,"
				   "  CASE WHEN decision = 'found' THEN ex[1] END, $12"
				   "  FROM u WHERE decision IN ('found', 'resend', 'dead', 'operator'))"
				   " SELECT count(*), count(*) FILTER (WHERE decision = 'resend'), min(reconcile_at),"
				   "  min(created_at) FILTER (WHERE decision = 'found'),"
				   "  array_agg(ex[1]) FILTER (WHERE decision = 'found') FROM u",
				   12, types);

	foreach(lc, recs)
	{
		OutboxReconcile *rec = lfirst(lc);

		ids[i] = Int64GetDatum(rec->id);
		lookups[i] = Int32GetDatum(rec->lookups);
		verdicts[i] = CStringGetTextDatum(verdict_names[rec->verdict]);
		untils[i] = TimestampTzGetDatum(rec->until);
		untils_null[i] = rec->verdict != OUTBOX_RECONCILE_PAUSED;
		errors_null[i] = rec->error == NULL;
		errors[i] = errors_null[i] ? (Datum) 0 : CStringGetTextDatum(rec->error);
		exact[i] = CStringGetTextDatum(rec->exact.data);
		near[i] = CStringGetTextDatum(rec->near.data);
		i++;
	}
	values[0] = outbox_make_array(ids, NULL, n, INT8OID);
	values[1] = outbox_make_array(lookups, NULL, n, INT4OID);
	values[2] = outbox_make_array(verdicts, NULL, n, TEXTOID);
	values[3] = outbox_make_array(untils, untils_null, n, TIMESTAMPTZOID);
	values[4] = outbox_make_array(errors, errors_null, n, TEXTOID);
	values[5] = outbox_make_array(exact, NULL, n, TEXTOID);
	values[6] = outbox_make_array(near, NULL, n, TEXTOID);
	values[7] = Int32GetDatum(RECONCILE_MAX_LOOKUPS);
	values[8] = Int32GetDatum(outbox_max_attempts);
	values[9] = Float8GetDatum(Max(outbox_reconcile_grace_ms, 1000) / 1000.0);
	values[10] = Int32GetDatum(RECONCILE_MAX_BACKOFF_S);
	values[11] = Int32GetDatum(MyProcPid);
	rc = SPI_execute_plan(plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "recording reconciliation failed: %s", SPI_result_code_string(rc));
	/* messages queued again: the claim must look for them now, not at the next poll */
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)) > 0)
		outbox_wake_at_commit();
	/* looked up again later (paused, failed, near candidates): ask by then */
	next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	if (!isnull)
		outbox_lookup_reconcile_soon(DatumGetTimestampTz(next));

	/*
	 * Found: a status callback that named no outbox_id (the message has a
	 * status_callback of its own) may have come before anyone knew the SID
	 * and been kept unmatched; apply it now, in this transaction, as the
	 * record of a 201 does (outbox_apply_early_statuses).  Such a callback
	 * came after the message was created.
	 */
	found_since = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
	if (!isnull)
	{
		static SPIPlanPtr early = NULL;
		Oid			early_types[2] = {TIMESTAMPTZOID, TEXTARRAYOID};
		Datum		early_values[2];

		early_values[0] = found_since;
		early_values[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull);
		outbox_prepare(&early, "SELECT twilio_outbox.apply_early_statuses($1, $2)", 2, early_types);
		if (SPI_execute_plan(early, early_values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "applying early status callbacks failed");
	}
}

/*
 * When the account's next message comes due for reconciliation (0: none
 * waits), by the partial index messages_reconcile_due.  Inside the
 * worker's transaction, SPI connected.
 */
TimestampTz
outbox_reconcile_next_due(const char *account)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {TEXTOID};
	Datum		value = CStringGetTextDatum(account);
	bool		isnull;
	Datum		d;
	int			rc;

	outbox_prepare(&plan,
				   "SELECT min(m.reconcile_at) FROM twilio_outbox.messages m"
				   " WHERE m.account = $1 AND m.state = 'ambiguous' AND m.reconcile_at IS NOT NULL",
				   1, types);
	rc = SPI_execute_plan(plan, &value, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reconcile due lookup failed: %s", SPI_result_code_string(rc));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}
