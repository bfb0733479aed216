/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *		How fast the dispatcher may send: a token bucket per sender, in
 *		segments per second, and each account's runtime state: its pause,
 *		its run of 429s, and a concurrency cap that a 429 halves, that
 *		Twilio-Concurrent-Requests brings down before a 429 would, and that
 *		successes win back one step at a time.  outbox_account_apply() is
 *		the one call that applies an attempt's outcome to it.
 *
 * State lives in the dispatcher's memory (outbox_worker_cxt, like the
 * account and sender lists it belongs to); nothing here touches the
 * database or throws.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include <math.h>

#include "utils/timestamp.h"

/* The senders the dispatcher knows; see outbox_refresh_senders(). */
List	   *outbox_senders = NIL;

/*
 * Twilio's throughput by kind of sender, in segments per second: a US long
 * code sends about one, toll-free three, a short code a hundred, WhatsApp
 * eighty.  A Messaging Service's rate is its pool's (the registry reads it
 * through twilio_outbox.pool_rate()); one whose pool is not described gets
 * here and is held only by its account's concurrency.
 */
static double
default_rate(const char *kind)
{
	if (strcmp(kind, "long_code") == 0 || strcmp(kind, "alphanumeric") == 0)
		return 1;
	if (strcmp(kind, "toll_free") == 0)
		return 3;
	if (strcmp(kind, "short_code") == 0)
		return 100;
	if (strcmp(kind, "whatsapp") == 0)
		return 80;
	return INFINITY;
}

/*
 * Apply a sender's configuration: rate (NaN: the default for its kind;
 * infinite: unlimited) and burst (NaN: one segment, so that sending is
 * smooth and Twilio's own bucket, never drained by a burst of ours, absorbs
 * the jitter of the network).  Tokens carry over a change, within the new
 * burst; a new sender starts with a full bucket.
 */
void
outbox_sender_configure(OutboxSender *s, const char *kind, double rate,
						double burst, TimestampTz now)
{
	bool		fresh = s->refilled_at == 0;

	if (!fresh)
		outbox_bucket_refill(s, now);
	/*
	 * The table refuses what cannot be used (senders_rate_range,
	 * senders_burst_range), but a superuser can write around constraints:
	 * one sender's row must never stop the others, so clamp here too.  A
	 * burst of 1e10 would overflow the int the claim counts in.
	 */
	if (isnan(rate) || rate <= 0)
		rate = default_rate(kind ? kind : "");
	else if (!isinf(rate))
		rate = Min(Max(rate, OUTBOX_MIN_RATE), OUTBOX_MAX_RATE);
	if (isnan(burst) || burst < 1)
		burst = 1.0;
	s->unlimited = isinf(rate);
	s->rate = rate;
	s->burst = Min(burst, OUTBOX_MAX_BURST);
	if (fresh || s->tokens > s->burst)
		s->tokens = s->burst;
	s->refilled_at = now;
}

void
outbox_bucket_refill(OutboxSender *s, TimestampTz now)
{
	if (!s->unlimited && now > s->refilled_at)
		s->tokens = Min(s->burst,
						s->tokens + s->rate * (double) (now - s->refilled_at) / USECS_PER_SEC);
	s->refilled_at = Max(s->refilled_at, now);
}

/* A claimed message of this many segments takes its tokens (maybe into debt). */
void
outbox_bucket_take(OutboxSender *s, int segments)
{
	if (!s->unlimited)
		s->tokens -= Max(segments, 1);
}

/*
 * When the bucket will hold enough for a message of this many segments (a
 * full bucket lets any message through): now if it already does.
 */
TimestampTz
outbox_bucket_ready_at(OutboxSender *s, TimestampTz now, int segments)
{
	double		need = Min((double) Max(segments, 1), s->burst);

	outbox_bucket_refill(s, now);
	if (s->unlimited || s->tokens >= need)
		return now;
	return now + (TimestampTz) ceil((need - s->tokens) / s->rate * USECS_PER_SEC);
}

/* How many more requests an account may have in flight now. */
int
outbox_account_room(OutboxAccount *a, TimestampTz now)
{
	if (!a->seen || a->config_error != NULL)
		return 0;
	if (a->paused_until != 0 && a->paused_until > now)
		return 0;
	return Max(0, a->cap - a->in_flight);
}

/* A new or changed accounts.max_concurrency: the cap follows it down, or up when not throttled. */
void
outbox_concurrency_configure(OutboxAccount *a, int max_concurrency)
{
	if (a->cap == 0 || a->cap == a->max_concurrency || a->cap > max_concurrency)
		a->cap = max_concurrency;
	a->max_concurrency = max_concurrency;
}

/*
 * After an answer: a 429 halves the cap (never below one request); each
 * cap's worth of other answers grows it by one, up to max_concurrency.
 */
void
outbox_concurrency_after(OutboxAccount *a, bool rate_limited)
{
	if (rate_limited)
	{
		a->cap = Max(1, a->cap / 2);
		a->successes = 0;
	}
	else if (a->cap < a->max_concurrency && ++a->successes >= a->cap)
	{
		a->cap++;
		a->successes = 0;
	}
}

/*
 * Twilio-Concurrent-Requests (issue 12): how many of the account's requests
 * Twilio had in flight when it answered, ours and every other client's
 * (another application, another dispatcher of the same account).  Twilio
 * answers 429 once that passes the account's concurrency limit, so the
 * dispatcher keeps it at or under a high-water mark before that happens:
 * 80% of accounts.twilio_concurrency_limit (the rest is headroom for the
 * others' growth between two answers).  Without that limit the count is
 * only recorded: max_concurrency is then the whole story, and the
 * dispatchers of one database already share it (partition.c), so reading
 * one another's requests as foreign would only shrink them.
 *
 * The others' share is what was reported less ours (this dispatcher's
 * requests of the account in flight when the answer came, itself included:
 * those that finished since Twilio counted are missing, so the others are
 * rather over- than underestimated), and the cap may be at most the mark
 * less the others.  The answers to requests started before the cap came
 * down report the same others, so they bring it to the same value instead
 * of cutting it again and again as a halving would.  A cap at that most
 * does not grow; below it, it grows back as after a 429, after a cap's
 * worth of answers in a row that left room.  Returns whether it may not
 * grow.
 */
bool
outbox_concurrency_reported(OutboxAccount *a, int reported, int ours)
{
	int			high;
	int			others;
	int			target;

	if (reported < 0 || ours < 1 || a->twilio_concurrency_limit <= 0)
		return false;
	high = Max(1, a->twilio_concurrency_limit * 4 / 5);
	others = Max(0, reported - ours);
	target = Max(1, high - others);
	if (target < a->cap)
	{
		a->cap = target;
		a->successes = 0;
	}
	return a->cap >= target;
}

/*
 * The one place an attempt's outcome changes its account's runtime state
 * (pause, run of 429s, concurrency cap), right after outbox_decide(): a
 * pause holds from now on, before the outcome is even recorded.
 */
void
outbox_account_apply(OutboxAccount *a, const OutboxMessage *m)
{
	bool		held;

	if (m->pause_account_until > a->paused_until)
		a->paused_until = m->pause_account_until;
	if (m->outcome == OUTCOME_SENT)
		a->consecutive_429 = 0;
	else if (m->outcome == OUTCOME_RATE_LIMITED)
		a->consecutive_429++;
	/* a->in_flight no longer counts m (finished): + 1 */
	held = outbox_concurrency_reported(a, m->resp.concurrent_requests, a->in_flight + 1);
	/*
	 * Growing takes a cap's worth of answers in a row that all left room:
	 * one answer whose own count was read while a request of ours was not
	 * yet (or no longer) counted at Twilio underestimates the others.
	 */
	if (held)
		a->successes = 0;
	if (m->outcome == OUTCOME_RATE_LIMITED || (m->outcome == OUTCOME_SENT && !held))
		outbox_concurrency_after(a, m->outcome == OUTCOME_RATE_LIMITED);
}
