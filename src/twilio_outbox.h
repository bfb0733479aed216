/*-------------------------------------------------------------------------
 *
 * twilio_outbox.h
 *		Declarations shared between the modules of twilio_outbox.
 *
 * Every non-static symbol of the extension starts with "outbox_" (or carries
 * the name of the SQL function it backs).
 *
 *-------------------------------------------------------------------------
 */
#ifndef TWILIO_OUTBOX_H
#define TWILIO_OUTBOX_H

#include "postgres.h"

#include "compat.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

#define OUTBOX_VERSION "0.2"
#define OUTBOX_SCHEMA "twilio_outbox"

/* Project-specific SQLSTATE: the recipient is on the suppression list. */
#define ERRCODE_OUTBOX_RECIPIENT_SUPPRESSED MAKE_SQLSTATE('T','W','0','0','1')
/* Abuse guards (guards.c): a per-recipient limit, a country not allowed. */
#define ERRCODE_OUTBOX_RECIPIENT_LIMIT MAKE_SQLSTATE('T','W','0','0','2')
#define ERRCODE_OUTBOX_COUNTRY_NOT_ALLOWED MAKE_SQLSTATE('T','W','0','0','3')

/* Twilio's documented limits. */
#define OUTBOX_MAX_BODY_CHARS	1600
#define OUTBOX_MAX_MEDIA_URLS	10
#define OUTBOX_MAX_URL_LENGTH	2048

/* Characters of user input an error message quotes at most (outbox_clip). */
#define OUTBOX_QUOTE_CHARS		64

/* guc.c: settings, changeable with a reload unless noted */
typedef enum OutboxAmbiguousPolicy
{
	OUTBOX_AMBIGUOUS_RETRY,		/* retry with the same idempotency key */
	OUTBOX_AMBIGUOUS_HOLD,		/* park in state ambiguous for an operator */
	OUTBOX_AMBIGUOUS_RECONCILE	/* look it up at Twilio first (src/reconcile.c) */
} OutboxAmbiguousPolicy;

extern int	outbox_poll_interval_ms;
extern int	outbox_claim_batch;
extern int	outbox_max_in_flight;
extern int	outbox_max_attempts;
extern int	outbox_backoff_base_ms;
extern int	outbox_backoff_max_ms;
extern double outbox_backoff_jitter;
extern int	outbox_rate_limit_jitter_ms;
extern int	outbox_connect_timeout_ms;
extern int	outbox_request_timeout_ms;
extern int	outbox_lease_s;
extern int	outbox_failover_window_s;
extern char *outbox_idempotency_header;
extern bool outbox_allow_insecure_http;
extern int	outbox_ambiguous_policy;
extern int	outbox_reconcile_grace_ms;
extern int	outbox_reconcile_clock_skew_s;
extern int	outbox_max_databases;
extern int	outbox_dispatchers_per_database;
extern int	outbox_max_paced_campaigns;
extern char *outbox_secrets_dir;
extern char *outbox_databases;
extern char *outbox_allowed_hosts;
extern char *outbox_allowed_secret_envs;

/* Twilio's API hosts: api.twilio.com and its regional and edge forms (api.{edge}.{region}.twilio.com). */
#define OUTBOX_DEFAULT_ALLOWED_HOSTS "api.twilio.com, api.*.twilio.com, api.*.*.twilio.com"

extern void outbox_guc_init(void);

/* message.c: validation of what becomes a Twilio request, and segments */
typedef enum OutboxEncoding
{
	OUTBOX_GSM7,
	OUTBOX_UCS2
} OutboxEncoding;

typedef struct OutboxSegments
{
	OutboxEncoding encoding;
	int			chars;			/* Unicode code points */
	int			units;			/* GSM-7 septets or UTF-16 code units */
	int			segments;
} OutboxSegments;

extern bool outbox_is_recipient(const char *s);
extern bool outbox_is_e164(const char *s);
extern bool outbox_is_sid(const char *s, const char *prefix);
extern bool outbox_has_control(const char *s);
extern bool outbox_is_http_url(const char *s);
extern bool outbox_is_sender_address(const char *s, bool sms_only);
extern bool outbox_is_blank(const char *utf8);
extern bool outbox_text_has_control(const char *utf8);
extern char *outbox_clip(const char *s);
extern const char *outbox_channel_of(const char *address);
extern void outbox_count_segments(const char *utf8, OutboxSegments *out);
extern const char *outbox_encoding_name(OutboxEncoding e);

/* params.c: Twilio's optional fields, given to twilio_enqueue() in params */
extern bool outbox_param_is_known(const char *key);
extern void outbox_check_params(Jsonb *params, TimestampTz earliest,
								bool *has_schedule, bool *has_send_at,
								const char **service_param);

/* shmem.c: one slot per database with a dispatcher */
#define OUTBOX_PUBLISHED_ACCOUNTS 32
#define OUTBOX_MAX_DISPATCHERS 8
#define OUTBOX_SHARED_ACCOUNTS 64
#define OUTBOX_PROBLEM_LEN 256

/*
 * An account as the dispatcher sees it, for monitoring.  Accounts it cannot
 * use are published first, so that with more accounts than slots for them
 * none of those is left out.
 */
typedef struct OutboxAccountState
{
	char		name[64];
	int			max_concurrency;
	int			cap;
	int			in_flight;
	TimestampTz paused_until;
	char		problem[OUTBOX_PROBLEM_LEN];	/* why it cannot be used; "" if it can */
} OutboxAccountState;

/*
 * One dispatcher of a database (twilio_outbox.dispatchers_per_database of
 * them): what it publishes for monitoring, kept after it exits, and what it
 * has reserved of each shared account's max_concurrency (partition.c).
 */
typedef struct OutboxDispatcherSlot
{
	pid_t		pid;			/* the running dispatcher, 0 if none */
	int			pgprocno;		/* its PGPROC, for setting its latch */
	TimestampTz started_at;		/* of the running or the last dispatcher */
	TimestampTz stopped_at;		/* when the last dispatcher exited; 0 while one runs */
	char		library_version[16];	/* OUTBOX_VERSION of the dispatcher's library */
	int			in_flight;
	int64		sent;
	int64		failed;
	TimestampTz last_error_at;
	char		last_error[256];
	int			nsenders;		/* senders of its partition, at its last refresh */
	int			naccounts;		/* published in accounts[] */
	int			accounts_total; /* accounts it knows, published or not */
	int			accounts_unusable;	/* of which it cannot use, published or not */
	int32		reserved[OUTBOX_SHARED_ACCOUNTS];	/* by account_names[]: in flight or claimed */
	OutboxAccountState accounts[OUTBOX_PUBLISHED_ACCOUNTS];
} OutboxDispatcherSlot;

/* A database's dispatchers, their start, stop and hold. */
typedef struct OutboxSlot
{
	Oid			dboid;			/* InvalidOid: free */
	TimestampTz starting_at;	/* a start was requested and not yet taken */
	TimestampTz hold_until;		/* refuse starts before this (dropping) */
	TimestampTz held_until;		/* stop_worker(hold): only start_worker() by an operator starts it before this */
	TimestampTz supervised_at;	/* the last start_worker(supervisor => true) */
	int			naccount_names; /* used in account_names */
	char		account_names[OUTBOX_SHARED_ACCOUNTS][64];	/* accounts whose concurrency is shared */
	TimestampTz account_paused_until[OUTBOX_SHARED_ACCOUNTS];	/* the latest pause a dispatcher set */
	TimestampTz account_paused_at[OUTBOX_SHARED_ACCOUNTS];	/* when it was published (recorded before) */
	/* outbox_dispatchers_per_database of them */
	OutboxDispatcherSlot dispatchers[FLEXIBLE_ARRAY_MEMBER];
} OutboxSlot;

extern bool outbox_shmem_ready(void);
extern void outbox_shmem_init(void);
extern LWLock *outbox_shmem_lock(void);
extern OutboxSlot *outbox_slot_find(Oid dboid, bool create);
extern void outbox_wake(Oid dboid);
extern void outbox_wake_at_commit(void);
extern bool outbox_slot_attach(bool *held);
extern int	outbox_slot_running(const OutboxSlot *slot);
extern OutboxDispatcherSlot *outbox_my_slot(OutboxSlot **database);

/* worker.c: the dispatcher's loop */
extern PGDLLEXPORT void outbox_worker_main(Datum arg);
extern MemoryContext outbox_worker_cxt;	/* the dispatcher's long-lived data */

/* control.c: SQL control functions, utility hook, static dispatchers */
extern void outbox_control_init(void);

/*
 * The dispatcher's view of an account, refreshed from the tables about once
 * a second.  Lives in the worker's long-lived context.
 */
typedef struct OutboxAccount
{
	char	   *name;
	char	   *messages_url;	/* {base}/2010-04-01/Accounts/{sid}/Messages.json */
	char	   *auth_user;		/* Account SID or API key SID */
	char	   *auth_secret;	/* never logged, never copied further */
	char	   *config_error;	/* why it cannot be used, or NULL */
	int			max_concurrency;	/* accounts.max_concurrency */
	int			cap;			/* current cap: halved by a 429, regained by successes */
	int			successes;		/* since the cap last grew */
	TimestampTz paused_until;	/* 0 when not paused */
	int			in_flight;
	int			consecutive_429;
	int			twilio_concurrency_limit;	/* accounts.twilio_concurrency_limit, 0: NULL */
	int			claim_room;		/* scratch for one claim */
	List	   *claim_senders;	/* scratch: its senders that may send, in turn */
	int			partition_room; /* partition.c: its share left to this dispatcher */
	int			shared_index;	/* partition.c: in account_names, +1; 0 unknown */
	int			partition_senders[OUTBOX_MAX_DISPATCHERS];	/* partition.c: scratch */
	/* calls (fallback.c): accounts.calls_per_second, a bucket of one second's worth */
	double		calls_per_second;
	double		call_tokens;
	TimestampTz calls_refilled_at;
	bool		seen;			/* still in the table at the last refresh */
} OutboxAccount;

/*
 * A sender's token bucket, in segments: rate per second up to burst.  A
 * message of N segments takes N tokens.  Unlimited senders have no bucket.
 */
typedef struct OutboxSender
{
	int64		id;
	OutboxAccount *account;
	bool		unlimited;
	double		rate;
	double		burst;
	double		tokens;
	TimestampTz refilled_at;
	TimestampTz paused_until;	/* 0 when not paused */
	uint64		served;			/* when a message of it was last claimed */
	uint64		dry_epoch;		/* had nothing due in the claim epoch it names */
	int			claim_got;		/* scratch: claimed from it by one statement */
	bool		seen;
} OutboxSender;

/* What the response and the transport said of one attempt. */
typedef struct OutboxResponse
{
	TimestampTz started_at;
	double		duration_ms;
	bool		request_sent;	/* Twilio may have acted on it (a create: its whole body went out) */
	bool		form_handed_out;	/* the read callback gave libcurl the whole body */
	char		transport_error[256];
	long		http_status;	/* 0 when no response */
	int			twilio_code;	/* 0 when none */
	char	   *twilio_message;
	char	   *twilio_sid;
	char	   *twilio_status;
	int			twilio_segments;	/* 0 when unknown */
	bool		body_malformed;
	char		retry_after[64];
	char		request_id[64];
	int			concurrent_requests;	/* -1 when absent */
	double		request_duration;	/* seconds, -1 when absent */
	/* raw body, filled by the transport's write callback */
	char	   *body;
	size_t		body_len;
	size_t		body_cap;
	bool		body_truncated;
} OutboxResponse;

/* What the policy decided for one attempt. */
typedef enum OutboxOutcome
{
	OUTCOME_SENT,
	OUTCOME_RETRY,
	OUTCOME_DEAD,
	OUTCOME_SUPPRESSED,
	OUTCOME_PAUSED,
	OUTCOME_RATE_LIMITED,
	OUTCOME_HELD,
	OUTCOME_LOST,
	OUTCOME_RECONCILE			/* outcome unknown: looked up at Twilio first */
} OutboxOutcome;

struct OutboxBatch;

/*
 * What a request does at Twilio: create the message (the send), or one of
 * the requests other than create that src/lookup.c claims, sends and
 * records on its own: look up the message's status, delete its data.
 */
typedef enum OutboxRequestKind
{
	OUTBOX_REQUEST_CREATE = 0,	/* POST .../Messages.json */
	OUTBOX_REQUEST_FETCH,		/* GET .../Messages/{Sid}.json */
	OUTBOX_REQUEST_DELETE,		/* DELETE .../Messages/{Sid}.json */
	OUTBOX_REQUEST_LIST			/* GET .../Messages.json?To=...: reconciliation */
} OutboxRequestKind;

/* A claimed message, its request, and then its outcome. */
typedef struct OutboxMessage
{
	struct OutboxBatch *batch;	/* owns this struct and its strings */
	OutboxRequestKind kind;
	char	   *request_url;	/* a lookup's URL; a create goes to its account's messages_url */
	int64		id;
	int			attempt;		/* attempts after the claim: this attempt's number */
	int			failures;		/* charged failures before this attempt */
	int			ambiguous_before;	/* ambiguous attempts before this one */
	OutboxAccount *account;		/* NULL when decided at the claim */
	char	   *account_name;	/* the row's account, as recorded */
	bool		decided;		/* outcome decided at the claim: never sent */
	char	   *to_number;
	char	   *idempotency_key;
	int			segments;
	OutboxSender *sender;
	TimestampTz expires_at;		/* 0 when none */
	char	   *form;			/* x-www-form-urlencoded request body */
	/* transport */
	void	   *easy;			/* CURL *, NULL when not in flight */
	void	   *headers;		/* http.c's pooled request (easy handle, header list, body buffer) */
	void	   *url;			/* CURLU *: the parsed, checked URL */
	OutboxResponse resp;
	/* decision */
	OutboxOutcome outcome;
	bool		ambiguous;
	bool		charged;		/* counts against max_attempts */
	const char *dead_reason;
	int64		delay_ms;		/* before the next attempt, or the account pause */
	TimestampTz next_attempt_at;
	TimestampTz pause_account_until;	/* 0: no pause */
	bool		suppress;
	char	   *error_message;
} OutboxMessage;

/* The messages claimed in one transaction, freed when all are recorded. */
typedef struct OutboxBatch
{
	MemoryContext cxt;
	int			pending;
} OutboxBatch;

/* twilio.c: Twilio request and response format */
extern char *outbox_build_form(const char *to, const char *from,
							   const char *service, const char *body,
							   Datum media_urls, bool media_null,
							   const char *content_sid,
							   const char *content_variables,
							   const char *status_callback, Datum params,
							   bool params_null, TimestampTz expires_at,
							   TimestampTz now);
extern char *outbox_build_call_form(const char *to, const char *from,
									const char *body, const char *status_callback,
									const char *voice, const char *language);
extern void outbox_parse_response(OutboxResponse *resp);
extern void outbox_parse_header(OutboxResponse *resp, const char *line, size_t len);
extern void outbox_clean_string(char *s, size_t cap);

/* retry.c: what to do after an attempt */
extern void outbox_policy_refresh(void);
extern void outbox_decide(OutboxMessage *m, TimestampTz now);

/* http.c: requests in flight over libcurl's multi interface */
typedef void (*OutboxHttpDone) (OutboxMessage *m);
extern void outbox_http_init(void);
extern bool outbox_http_start(OutboxMessage *m);
extern const char *outbox_url_refusal(const char *url, void **parsed);
extern int	outbox_http_poll(int timeout_ms, OutboxHttpDone done);
extern int	outbox_http_in_flight(void);
extern void outbox_http_shutdown(void);

/* ratelimit.c: token buckets per sender, concurrency caps per account */
/* What senders_rate_range and senders_burst_range allow (segments, per second). */
#define OUTBOX_MIN_RATE		0.001
#define OUTBOX_MAX_RATE		10000.0
#define OUTBOX_MAX_BURST	10000.0
extern List *outbox_senders;
extern void outbox_sender_configure(OutboxSender *s, const char *kind,
									double rate, double burst, TimestampTz now);
extern void outbox_bucket_refill(OutboxSender *s, TimestampTz now);
extern void outbox_bucket_take(OutboxSender *s, int segments);
extern TimestampTz outbox_bucket_ready_at(OutboxSender *s, TimestampTz now, int segments);
extern int	outbox_account_room(OutboxAccount *a, TimestampTz now);
extern void outbox_concurrency_after(OutboxAccount *a, bool rate_limited);
extern void outbox_concurrency_configure(OutboxAccount *a, int max_concurrency);
extern bool outbox_concurrency_reported(OutboxAccount *a, int reported, int ours);
extern void outbox_account_apply(OutboxAccount *a, const OutboxMessage *m);

/* enqueue_lookup.c: the account and sender of a message, by index probes */
typedef struct OutboxResolvedSender
{
	char	   *account;		/* its name as stored */
	bool		allowed;		/* the caller may use it (account_roles) */
	bool		has_sender;
	int64		sender_id;
	char	   *from_number;	/* NULL for a Messaging Service */
	char	   *service_sid;	/* NULL for a from-number */
	bool		suppressed;		/* the recipient, in this account */
	/* quiet hours and guards (0.2 columns; all unset before the update) */
	bool		has_policy;		/* the account's columns below were read */
	bool		quiet;			/* quiet_start and quiet_end are set */
	int64		quiet_start;	/* TimeADT */
	int64		quiet_end;
	bool		quiet_transactional;
	char	   *default_zone;
	int32		max_per_hour;	/* 0: no limit */
	int32		max_per_day;
	char	  **country_codes;	/* NULL: every country */
	int			ncountry_codes;
} OutboxResolvedSender;

struct SnapshotData;
extern bool outbox_lookup_sender(const char *account, const char *from,
								 const char *service, const char *to, bool roles,
								 Oid user, struct SnapshotData *snap,
								 bool *found_account, OutboxResolvedSender *out);

/* quiet.c: recipients' time zones and quiet hours */
extern char *outbox_zone_canonical(const char *name);
extern TimestampTz outbox_quiet_until(const char *zone, int64 start, int64 end, TimestampTz t);
extern char *outbox_zone_for_number(const char *to, struct SnapshotData *snap);

/* guards.c: abuse guards at enqueue */
extern void outbox_check_country(const char *account, const char *to, char **codes, int ncodes);
extern void outbox_count_recipient(const char *account, const char *to, int32 max_hour,
								   int32 max_day, TimestampTz now);
/* Column numbers of an account row's policy columns; all 0 before the update. */
typedef struct OutboxPolicyColumns
{
	int16		quiet_start;
	int16		quiet_end;
	int16		quiet_transactional;
	int16		default_zone;
	int16		max_hour;
	int16		max_day;
	int16		codes;
} OutboxPolicyColumns;
struct HeapTupleData;
struct TupleDescData;
extern void outbox_policy_columns(struct TupleDescData *desc, OutboxPolicyColumns *cols);
extern void outbox_read_policy(struct HeapTupleData *tuple, struct TupleDescData *desc,
							   const OutboxPolicyColumns *cols, OutboxResolvedSender *out);

/* spi_plan.c: plans prepared once per backend */
struct _SPI_plan;
extern struct _SPI_plan *outbox_prepare(struct _SPI_plan **slot, const char *sql,
										int nargs, Oid *types);
extern struct _SPI_plan *outbox_generic_prepare(struct _SPI_plan **slot, const char *sql,
												int nargs, Oid *types);
extern Datum outbox_make_array(Datum *values, bool *nulls, int n, Oid elemtype);

/* registry.c: accounts, credentials, senders, reloaded from the tables */
extern List *outbox_accounts;
extern void outbox_refresh_accounts(TimestampTz now);
extern void outbox_refresh_senders(TimestampTz now);
extern OutboxAccount *outbox_find_account(const char *name);
extern OutboxSender *outbox_find_sender(int64 id);
extern char *outbox_load_secret(char *inline_secret, const char *env,
								const char *file, const char **problem);

/* queue.c: claiming and recording, each in a short transaction */
extern int	outbox_expire(void);
extern int	outbox_rescue(bool all);
extern int	outbox_sweep_orphans(void);
extern List *outbox_claim(int capacity, TimestampTz now, bool *more);
extern void outbox_claim_wake(void);
extern void outbox_record(List *done);
extern TimestampTz outbox_next_due(TimestampTz now);
extern bool outbox_extension_present(void);

/* callback.c: status callbacks that overtook the record of their SID */
extern void outbox_apply_early_statuses(List *done);

/*
 * lookup.c: requests other than create (polling, deletion at Twilio),
 * claimed in the database phase with the room sends leave, at a bounded
 * rate per account.  The worker calls outbox_lookup_phase() inside its
 * transaction after its own claim, outbox_lookup_committed() or
 * outbox_lookup_aborted() after it, and hands finished lookups to
 * outbox_lookup_done().
 */
extern void outbox_lookup_phase(TimestampTz now, bool reload, int capacity, List *claimed);
extern void outbox_lookup_committed(void);
extern void outbox_lookup_aborted(void);
extern void outbox_lookup_done(OutboxMessage *m);
extern bool outbox_lookup_pending(void);
extern TimestampTz outbox_lookup_wake_at(void);
extern void outbox_lookup_reconcile_soon(TimestampTz at);

/*
 * reconcile.c: finding out at Twilio whether an ambiguous attempt created
 * its message, through the Messages list resource.  lookup.c claims,
 * sends (within each account's lookup budget) and pauses; reconcile.c
 * says what to claim and ask, reads each page and records the verdict.
 */
typedef enum OutboxReconcileVerdict
{
	OUTBOX_RECONCILE_LISTED,	/* every page read: the candidates decide (set on the last page only) */
	OUTBOX_RECONCILE_PAUSED,	/* not processed (429, credentials): again at until */
	OUTBOX_RECONCILE_FAILED		/* no readable answer: looked up again later */
} OutboxReconcileVerdict;

typedef enum OutboxReconcilePage
{
	OUTBOX_PAGE_DONE,			/* the whole attempt window was read */
	OUTBOX_PAGE_MORE,			/* next_url is the next page to read */
	OUTBOX_PAGE_BAD				/* unreadable, or paging refused: error says why */
} OutboxReconcilePage;

/* One message being reconciled, in its lookup's batch context. */
typedef struct OutboxReconcile
{
	int64		id;
	int			lookups;		/* messages.reconcile_lookups after the claim: the guard */
	char	   *to_number;
	char	   *from_number;	/* NULL with a Messaging Service */
	char	   *service_sid;	/* NULL with a from-number */
	char	   *body;			/* UTF-8; "" when none */
	int			media;			/* media URLs */
	bool		unreliable;		/* Twilio may change the body: nothing is an exact match */
	TimestampTz since;			/* ambiguous_since (or created_at) */
	int			pages;			/* read so far */
	StringInfoData exact;		/* SIDs matching in full, space-separated */
	StringInfoData near;		/* unreliable: SIDs matching all but the body */
	OutboxReconcileVerdict verdict;
	TimestampTz until;			/* PAUSED */
	char	   *error;			/* FAILED (and PAUSED): why; set at the claim: nothing to ask */
} OutboxReconcile;

extern List *outbox_reconcile_claim(const char *account, int n, MemoryContext cxt);
extern char *outbox_reconcile_first_url(OutboxReconcile *rec, const char *messages_url);
extern OutboxReconcilePage outbox_reconcile_page(OutboxReconcile *rec, OutboxResponse *r,
												 const char *messages_url, char **next_url);
extern void outbox_reconcile_record(List *recs);
extern TimestampTz outbox_reconcile_next_due(const char *account);

/*
 * partition.c: more than one dispatcher per database, each on its own
 * senders, sharing each account's max_concurrency through shared memory
 */
extern int	outbox_dispatcher_index;
extern int	outbox_dispatcher_count;
extern TimestampTz outbox_accounts_read_at;
extern bool outbox_sender_mine(const OutboxSender *s);
extern void outbox_partition_reserve(TimestampTz now);
extern void outbox_partition_settle(OutboxSlot *slot, OutboxDispatcherSlot *mine);
extern Datum outbox_live_dispatchers(bool include_self);

/*
 * fallback.c: fallback chains on the dispatcher's side (a dead letter's
 * next step, the chains' timers) and voice calls' own rate per account
 */
extern bool outbox_call_take(OutboxAccount *a, TimestampTz now, TimestampTz *ready_at);
extern void outbox_fallback_record(List *done);
extern void outbox_fallback_timers(TimestampTz now);
extern TimestampTz outbox_fallback_wake_at(void);
/* worker.c: one transaction of the dispatcher's, with SPI and a snapshot */
extern void outbox_begin_phase(const char *activity);
extern void outbox_end_phase(void);

/* failover.c: a promotion found at the dispatcher's start (issue 11) */
extern void outbox_failover_check(void);

/* callback.c: webhooks from Twilio (signature check, counters) */
extern void outbox_callback_init(void);

#endif							/* TWILIO_OUTBOX_H */
