/*-------------------------------------------------------------------------
 *
 * guc.c
 *		The settings of twilio_outbox (twilio_outbox.*).
 *
 * All worker settings are PGC_SIGHUP: change them with ALTER SYSTEM and
 * pg_reload_conf(), and the dispatcher picks them up on its next loop.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/varlena.h"

int			outbox_poll_interval_ms = 1000;
int			outbox_claim_batch = 200;
int			outbox_max_in_flight = 200;
int			outbox_max_attempts = 5;
int			outbox_backoff_base_ms = 1000;
int			outbox_backoff_max_ms = 60000;
double		outbox_backoff_jitter = 0.2;
int			outbox_rate_limit_jitter_ms = 1000;
int			outbox_connect_timeout_ms = 5000;
int			outbox_request_timeout_ms = 15000;
int			outbox_lease_s = 300;
int			outbox_failover_window_s = 300;	/* failover.c */
char	   *outbox_idempotency_header = NULL;
bool		outbox_allow_insecure_http = false;
int			outbox_ambiguous_policy = OUTBOX_AMBIGUOUS_RECONCILE;
int			outbox_reconcile_grace_ms = 10000;
int			outbox_reconcile_clock_skew_s = 60;
int			outbox_max_databases = 16;
int			outbox_dispatchers_per_database = 1;
int			outbox_max_paced_campaigns = 1024;
char	   *outbox_secrets_dir = NULL;
char	   *outbox_databases = NULL;
char	   *outbox_allowed_hosts = NULL;
char	   *outbox_allowed_secret_envs = NULL;

/*
 * Read by SQL only (twilio_outbox.health() through current_setting): no C
 * file outside this one uses them, and 18's -Wmissing-variable-declarations
 * wants a global either declared in a header or static.
 */
static double outbox_health_rate_limited_share = 0.05;
static double outbox_health_failure_share = 0.02;
static int	outbox_health_due_age_s = 300;
static int	outbox_health_min_count = 20;
static int	outbox_health_final_status_after_s = 3600;
static int	outbox_health_reconcile_age_s = 600;
/* the anomaly check: read by SQL only (twilio_outbox.anomalies(), 42_guards.sql) */
static double outbox_health_anomaly_factor = 10;
static int	outbox_health_anomaly_min_count = 100;
static int	outbox_health_anomaly_range_count = 20;

static const struct config_enum_entry ambiguous_options[] = {
	{"retry", OUTBOX_AMBIGUOUS_RETRY, false},
	{"hold", OUTBOX_AMBIGUOUS_HOLD, false},
	{"reconcile", OUTBOX_AMBIGUOUS_RECONCILE, false},
	{NULL, 0, false}
};

/* A header name is an RFC 9110 token: no separators, no control characters. */
static bool
check_header_name(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (*newval == NULL || **newval == '\0')
	{
		GUC_check_errdetail("The header name must not be empty.");
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			  (*p >= '0' && *p <= '9') || strchr("!#$%&'*+-.^_`|~", *p) != NULL))
		{
			GUC_check_errdetail("\"%s\" is not a valid HTTP header name.", *newval);
			return false;
		}
	}
	return true;
}

/*
 * A list of host patterns: DNS names whose labels are letters, digits and
 * '-', or '*' standing for exactly one label; or an IPv4 address or
 * bracketed IPv6 address.  Empty entries are refused.
 */
static bool
check_allowed_hosts(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval ? *newval : "");
	List	   *items;
	ListCell   *lc;

	if (!SplitGUCList(copy, ',', &items))
	{
		GUC_check_errdetail("The list syntax is invalid.");
		return false;
	}
	foreach(lc, items)
	{
		const char *h = lfirst(lc);
		const char *p;

		if (h[0] == '\0' || strlen(h) > 253)
		{
			GUC_check_errdetail("Each entry must be a host name or pattern of 1 to 253 characters.");
			return false;
		}
		for (p = h; *p; p++)
		{
			if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
				  (*p >= '0' && *p <= '9') || strchr("-.*:[]", *p) != NULL))
			{
				GUC_check_errdetail("\"%s\" is not a host name, address or pattern.", h);
				return false;
			}
		}
	}
	return true;
}

/* Environment variable names, each maybe ending in '*' (any suffix). */
static bool
check_secret_envs(char **newval, void **extra, GucSource source)
{
	const char *p;

	for (p = *newval ? *newval : ""; *p; p++)
	{
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			  (*p >= '0' && *p <= '9') || strchr("_*, ", *p) != NULL))
		{
			GUC_check_errdetail("Entries are environment variable names, each maybe ending in '*'.");
			return false;
		}
	}
	return true;
}

void
outbox_guc_init(void)
{
	DefineCustomIntVariable("twilio_outbox.poll_interval",
							"How often the dispatcher looks for due messages when nothing wakes it.",
							"Commits of twilio_enqueue() wake it at once; this is the backstop.",
							&outbox_poll_interval_ms, 1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.claim_batch",
							"Most messages the dispatcher claims in one transaction.",
							NULL, &outbox_claim_batch, 200, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.max_in_flight",
							"Most HTTP requests the dispatcher has in flight at once, over all accounts.",
							NULL, &outbox_max_in_flight, 200, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.max_attempts",
							"Failed attempts after which a message is dead-lettered.",
							"Rate-limited (429) attempts and attempts refused by a paused account are not counted.",
							&outbox_max_attempts, 5, 1, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.backoff_base",
							"Delay before the first retry; it doubles with each further failure.",
							NULL, &outbox_backoff_base_ms, 1000, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.backoff_max",
							"Longest delay between two attempts of a message.",
							NULL, &outbox_backoff_max_ms, 60000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomRealVariable("twilio_outbox.backoff_jitter",
							 "Random spread applied to each backoff delay, as a fraction (0.2 = plus or minus 20 %).",
							 NULL, &outbox_backoff_jitter, 0.2, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.rate_limit_jitter",
							"Most random delay added to Retry-After after a 429.",
							NULL, &outbox_rate_limit_jitter_ms, 1000, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.connect_timeout",
							"Time allowed to connect to Twilio (TCP and TLS).",
							NULL, &outbox_connect_timeout_ms, 5000, 100, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.request_timeout",
							"Time allowed for a whole request, connection included.",
							"A request that times out after it was sent is recorded as ambiguous.",
							&outbox_request_timeout_ms, 15000, 100, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.lease",
							"How long a claimed message stays reserved for the dispatcher that claimed it.",
							"Messages whose lease ran out are taken back as lost attempts. It is never shorter than the request timeout.",
							&outbox_lease_s, 300, 1, 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.failover_window",
							"After a promotion, how far back a queued message's claim may have been lost with the old primary.",
							"Queued messages that became due or changed within this window before the promotion are reconciled with Twilio before they are sent again, as are all messages left in flight. 0 trusts synchronous replication: only messages left in flight.",
							&outbox_failover_window_s, 300, 0, 7 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("twilio_outbox.idempotency_header",
							   "Name of the HTTP header that carries each message's idempotency key.",
							   NULL, &outbox_idempotency_header, "Idempotency-Key",
							   PGC_SIGHUP, 0, check_header_name, NULL, NULL);
	DefineCustomBoolVariable("twilio_outbox.allow_insecure_http",
							 "Allow plain http:// account base URLs, to loopback addresses only.",
							 "For local stand-ins and tests; https is always required elsewhere.",
							 &outbox_allow_insecure_http, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("twilio_outbox.allowed_hosts",
							   "Hosts the dispatcher may send credentials to (comma-separated; '*' is exactly one DNS label).",
							   "Loopback addresses are allowed as well while twilio_outbox.allow_insecure_http is on.",
							   &outbox_allowed_hosts, OUTBOX_DEFAULT_ALLOWED_HOSTS,
							   PGC_SIGHUP, GUC_LIST_INPUT, check_allowed_hosts, NULL, NULL);
	DefineCustomStringVariable("twilio_outbox.allowed_secret_envs",
							   "Environment variables of the server that account_credentials.secret_env may name (comma-separated; a final '*' matches any suffix).",
							   NULL, &outbox_allowed_secret_envs, "TWILIO_*",
							   PGC_SIGHUP, GUC_LIST_INPUT, check_secret_envs, NULL, NULL);
	DefineCustomEnumVariable("twilio_outbox.on_ambiguous",
							 "What to do when Twilio may have created a message without saying so.",
							 "reconcile looks the message up at Twilio before sending it again; retry sends again with the same idempotency key; hold parks the message in state ambiguous for an operator.",
							 &outbox_ambiguous_policy, OUTBOX_AMBIGUOUS_RECONCILE, ambiguous_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.reconcile_grace",
							"How long after an ambiguous attempt the dispatcher first looks the message up at Twilio.",
							"Twilio's list of messages may not show a message at once; a lookup that finds nothing before this has passed is not trusted.",
							&outbox_reconcile_grace_ms, 10000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.reconcile_clock_skew",
							"Margin for the difference between this server's clock and Twilio's when reconciling.",
							"A message Twilio created up to this long before the first ambiguous attempt started (by this server's clock) still matches it.",
							&outbox_reconcile_clock_skew_s, 60, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomRealVariable("twilio_outbox.health_rate_limited_share",
							 "Share of attempts answered 429 over 5 minutes above which the health view warns (critical at twice).",
							 NULL, &outbox_health_rate_limited_share, 0.05, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("twilio_outbox.health_failure_share",
							 "Share of messages finished dead, undelivered or failed over an hour above which the health view warns (critical at twice).",
							 NULL, &outbox_health_failure_share, 0.02, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.health_due_age",
							"Age of the oldest due message above which the health view warns (critical at twice).",
							NULL, &outbox_health_due_age_s, 300, 1, 7 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.health_min_count",
							"Fewest attempts (rate_limited_share) or finished messages (failure_share) before the health view judges a share.",
							"Below it a share is reported but never alarms: one dead message out of eight is no trend.",
							&outbox_health_min_count, 20, 0, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.health_final_status_after",
							"How long after sending a message whose account has a status_callback_url may stay without a final status before the health view counts it.",
							"no_final_status judges the messages sent in the hour before this; 0 turns that check off.",
							&outbox_health_final_status_after_s, 3600, 0, 7 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.health_reconcile_age",
							"How long a message may wait to be looked up at Twilio (on_ambiguous = reconcile) before the health view warns (critical at twice).",
							NULL, &outbox_health_reconcile_age_s, 600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomRealVariable("twilio_outbox.health_anomaly_factor",
							 "How many times an account's norm (same hour of day, last 7 days) its enqueues of the last 5 minutes, in all or to one country, must be for the anomaly check to warn.",
							 NULL, &outbox_health_anomaly_factor, 10, 1, 1000000,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.health_anomaly_min_count",
							"Fewest messages of an account (or to one country) in 5 minutes before the anomaly check judges their rate.",
							NULL, &outbox_health_anomaly_min_count, 100, 1, 100000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("twilio_outbox.health_anomaly_range_count",
							"Different numbers of one block of 1,000 (all digits but the last three) an account enqueues to in 5 minutes for the anomaly check to warn.",
							NULL, &outbox_health_anomaly_range_count, 20, 2, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("twilio_outbox.secrets_dir",
							   "Directory of the files that account_credentials.secret_file names.",
							   "Empty: secrets from files are disabled.",
							   &outbox_secrets_dir, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	/* Sizes shared memory: only meaningful, and only allowed, at preload. */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("twilio_outbox.max_databases",
								"Most databases that can run a dispatcher at once.",
								NULL, &outbox_max_databases, 16, 1, 1024,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
	/*
	 * Also sizes shared memory, and twilio_outbox.databases registers that
	 * many dispatchers per database at server start: a restart to change.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("twilio_outbox.dispatchers_per_database",
								"Dispatchers per database, each sending for its own share of the senders.",
								"Dispatcher k of N claims the senders whose id modulo N is k; an account's max_concurrency is shared among them.",
								&outbox_dispatchers_per_database, 1, 1, OUTBOX_MAX_DISPATCHERS,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
	/* Sizes shared memory too (campaign.c's shared pace buckets). */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("twilio_outbox.max_paced_campaigns",
								"Most paced campaigns, over all databases, whose pace buckets the dispatchers share.",
								"With all in use and none idle, another paced campaign is paced by each dispatcher of its database at its pace and burst divided by twilio_outbox.dispatchers_per_database.",
								&outbox_max_paced_campaigns, 1024, 1, 100000,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("twilio_outbox.databases",
								   "Databases whose dispatcher starts with the server (comma-separated).",
								   "The server restarts such a dispatcher if it fails; pg_cron supervision works beside it.",
								   &outbox_databases, "",
								   PGC_POSTMASTER, GUC_LIST_INPUT, NULL, NULL, NULL);

	MarkGUCPrefixReserved("twilio_outbox");
}
