/*-------------------------------------------------------------------------
 *
 * retry.c
 *		What to do after an attempt: the error policy table, backoff with
 *		jitter, Retry-After, account pauses and suppression.
 *
 * The policy is read from twilio_outbox.error_policy by
 * outbox_policy_refresh() (inside a transaction, SPI connected) and kept in
 * the worker's long-lived context; outbox_decide() is pure computation.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <math.h>
#include <curl/curl.h>

#include "common/pg_prng.h"
#include "executor/spi.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef enum PolicyAction
{
	ACTION_NONE,
	ACTION_RETRY,
	ACTION_DEAD,
	ACTION_PAUSE_ACCOUNT,
	ACTION_SUPPRESS
} PolicyAction;

typedef struct PolicyEntry
{
	bool		http;			/* keyed by HTTP status, else Twilio code */
	int			code;
	PolicyAction action;
} PolicyEntry;

static PolicyEntry *policy = NULL;
static int	npolicy = 0;

/* Reload the error policy.  Caller is in a transaction with SPI connected. */
void
outbox_policy_refresh(void)
{
	MemoryContext old;
	uint64		i;
	int			rc;

	rc = SPI_execute("SELECT source OPERATOR(pg_catalog.=) 'http', code, action::text"
					 " FROM twilio_outbox.error_policy", false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read the error policy: %s", SPI_result_code_string(rc));

	old = MemoryContextSwitchTo(outbox_worker_cxt);
	if (policy)
		pfree(policy);
	policy = palloc0(sizeof(PolicyEntry) * Max(SPI_processed, 1));
	MemoryContextSwitchTo(old);

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *action = SPI_getvalue(tup, desc, 3);

		policy[i].http = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		policy[i].code = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		/* NOT NULL, unless a superuser changed the table: then no entry */
		policy[i].action = action == NULL ? ACTION_NONE :
			strcmp(action, "retry") == 0 ? ACTION_RETRY :
			strcmp(action, "dead") == 0 ? ACTION_DEAD :
			strcmp(action, "pause_account") == 0 ? ACTION_PAUSE_ACCOUNT :
			ACTION_SUPPRESS;
	}
	npolicy = (int) SPI_processed;
}

static PolicyAction
lookup(bool http, int code)
{
	int			i;

	for (i = 0; i < npolicy; i++)
	{
		if (policy[i].http == http && policy[i].code == code)
			return policy[i].action;
	}
	return ACTION_NONE;
}

/* uniform in [0, 1) */
static double
uniform(void)
{
	return pg_prng_double(&pg_global_prng_state);
}

/*
 * Delay before retry number n (n >= 1): base * 2^(n-1), spread by plus or
 * minus backoff_jitter, never above backoff_max.
 */
static int64
backoff_ms(int n)
{
	double		d = outbox_backoff_base_ms * pow(2.0, Min(n - 1, 40));

	d = Min(d, (double) outbox_backoff_max_ms);
	d *= 1.0 + outbox_backoff_jitter * (2.0 * uniform() - 1.0);
	return (int64) Min(d, (double) outbox_backoff_max_ms);
}

/*
 * The longest a Retry-After may pause an account, whether it came as
 * seconds or as an HTTP-date: a broken proxy's "Retry-After: <a date in
 * 2037>" must not stop an account for years.
 */
#define RETRY_AFTER_MAX_S	(24 * 3600)

/*
 * Retry-After: delta-seconds or an HTTP-date, capped at RETRY_AFTER_MAX_S;
 * -1 when absent or unreadable.
 */
static int64
retry_after_ms(const char *value, TimestampTz now)
{
	char	   *end;
	long		secs;
	time_t		when;
	int64		delta;

	if (value[0] == '\0')
		return -1;
	secs = strtol(value, &end, 10);
	if (end != value && *end == '\0' && secs >= 0)
		return (int64) Min(secs, RETRY_AFTER_MAX_S) * 1000;
	when = curl_getdate(value, NULL);
	if (when < 0)
		return -1;
	delta = (int64) when - (int64) timestamptz_to_time_t(now);
	return Max(0, Min(delta, RETRY_AFTER_MAX_S)) * 1000;
}

/*
 * A retryable failure: back off, or give up when the budget is spent.
 * With on_ambiguous = reconcile, a message that may exist at Twilio is
 * looked up there (src/reconcile.c) before anything else: when this
 * attempt was ambiguous, and when its attempts ran out after any of them
 * was (found: it was sent; not found: dead letter, never a resend then).
 */
static void
retry_or_give_up(OutboxMessage *m)
{
	bool		exhausted = m->failures + 1 >= outbox_max_attempts;

	m->charged = true;
	if (m->ambiguous && outbox_ambiguous_policy == OUTBOX_AMBIGUOUS_HOLD)
		m->outcome = OUTCOME_HELD;
	else if (outbox_ambiguous_policy == OUTBOX_AMBIGUOUS_RECONCILE &&
			 (m->ambiguous || (exhausted && m->ambiguous_before > 0)))
	{
		m->outcome = OUTCOME_RECONCILE;
		m->delay_ms = outbox_reconcile_grace_ms;
	}
	else if (exhausted)
	{
		m->outcome = OUTCOME_DEAD;
		m->dead_reason = "attempts_exhausted";
	}
	else
	{
		m->outcome = OUTCOME_RETRY;
		m->delay_ms = backoff_ms(m->failures + 1);
	}
}

/*
 * Decide the outcome of a finished attempt from its response: the message's
 * next state and when, and what should happen to its account or recipient.
 * Reads the account's state, never changes it: outbox_account_apply() does.
 * Allocates in CurrentMemoryContext; never throws on a bad response.
 */
void
outbox_decide(OutboxMessage *m, TimestampTz now)
{
	OutboxResponse *r = &m->resp;
	PolicyAction action;

	m->ambiguous = false;
	m->charged = false;
	m->dead_reason = NULL;
	m->delay_ms = 0;
	m->pause_account_until = 0;
	m->suppress = false;
	m->error_message = NULL;

	/* the one place a response body is parsed */
	if (r->http_status != 0)
		outbox_parse_response(r);

	if (r->http_status == 0)
	{
		/* No response: a plain retry unless the request may have gone out. */
		m->ambiguous = r->request_sent;
		m->error_message = pstrdup(r->transport_error);
		retry_or_give_up(m);
	}
	else if (r->http_status >= 200 && r->http_status < 300)
	{
		/* Created, whatever else the body says. */
		m->outcome = OUTCOME_SENT;
		if (r->body_malformed || r->twilio_sid == NULL)
			m->error_message = psprintf("Twilio answered %ld without a readable message SID",
										r->http_status);
	}
	else
	{
		m->error_message = r->twilio_message ? pstrdup(r->twilio_message) :
			psprintf("HTTP %ld%s", r->http_status,
					 r->body_malformed ? " with an unreadable body" : "");
		action = r->twilio_code ? lookup(false, r->twilio_code) : ACTION_NONE;
		if (action == ACTION_NONE)
			action = lookup(true, (int) r->http_status);
		if (action == ACTION_NONE)
			action = r->http_status >= 500 ? ACTION_RETRY : ACTION_DEAD;

		if (action == ACTION_RETRY &&
			(r->http_status == 429 || r->twilio_code == 20429))
		{
			/* Never processed: pause the account, do not charge the message. */
			int64		ra = retry_after_ms(r->retry_after, now);

			/* this 429 is the account's consecutive_429 + 1st in a row */
			m->delay_ms = ra >= 0 ?
				ra + (int64) (uniform() * outbox_rate_limit_jitter_ms) :
				backoff_ms(m->account->consecutive_429 + 1);
			m->outcome = OUTCOME_RATE_LIMITED;
			m->pause_account_until = now + m->delay_ms * 1000;
		}
		else if (action == ACTION_RETRY)
		{
			m->ambiguous = r->http_status >= 500;
			retry_or_give_up(m);
		}
		else if (action == ACTION_DEAD)
		{
			m->outcome = OUTCOME_DEAD;
			m->dead_reason = "rejected";
		}
		else if (action == ACTION_SUPPRESS)
		{
			m->outcome = OUTCOME_SUPPRESSED;
			m->dead_reason = "suppressed";
			m->suppress = true;
		}
		else
		{
			/* Wrong credentials must not burn every message's attempts. */
			m->outcome = OUTCOME_PAUSED;
			m->pause_account_until = DT_NOEND;
		}
	}
	m->next_attempt_at = now + m->delay_ms * 1000;
}
