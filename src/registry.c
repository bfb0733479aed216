/*-------------------------------------------------------------------------
 *
 * registry.c
 *		The dispatcher's registry of accounts and senders, reloaded from the
 *		tables about once a second: credentials and their secrets (inline,
 *		from an allowed environment variable, or a file under secrets_dir),
 *		the URL checks that make an account usable or not, and the senders
 *		with their buckets.  Runs inside the dispatcher's transaction, with
 *		SPI connected.
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

/* The accounts the worker knows, in outbox_worker_cxt; never freed while the worker runs. */
List	   *outbox_accounts = NIL;

static char *
worker_strdup(const char *s)
{
	return s ? MemoryContextStrdup(outbox_worker_cxt, s) : NULL;
}

OutboxAccount *
outbox_find_account(const char *name)
{
	ListCell   *lc;

	if (name == NULL)
		return NULL;

	foreach(lc, outbox_accounts)
	{
		OutboxAccount *a = lfirst(lc);

		if (strcmp(a->name, name) == 0)
			return a;
	}
	return NULL;
}

/* Whether secret_env may name this variable: twilio_outbox.allowed_secret_envs. */
static bool
secret_env_allowed(const char *env)
{
	char	   *list = pstrdup(outbox_allowed_secret_envs ? outbox_allowed_secret_envs : "");
	List	   *items;
	ListCell   *lc;

	if (!SplitGUCList(list, ',', &items))
		return false;
	foreach(lc, items)
	{
		const char *pat = lfirst(lc);
		size_t		n = strlen(pat);

		if (n > 0 && pat[n - 1] == '*' ? strncmp(pat, env, n - 1) == 0 : strcmp(pat, env) == 0)
			return true;
	}
	return false;
}

/*
 * The secret of an account: inline, from an environment variable of the
 * server, or from a file in twilio_outbox.secrets_dir (first line, trailing
 * white space removed).  NULL with *problem set when it cannot be had; a
 * NULL problem pointer means a problem is already known.
 */
char *
outbox_load_secret(char *inline_secret, const char *env, const char *file,
				   const char **problem)
{
	char	   *secret = inline_secret;

	if (problem == NULL)
		return NULL;
	if (env != NULL)
	{
		const char *v;

		if (!secret_env_allowed(env))
		{
			*problem = psprintf("its secret_env %s is not in twilio_outbox.allowed_secret_envs", env);
			return NULL;
		}
		v = getenv(env);

		secret = v ? pstrdup(v) : NULL;
		if (secret == NULL)
			*problem = psprintf("the server has no environment variable %s", env);
	}
	else if (file != NULL)
	{
		char		buf[1024];
		char	   *path;
		FILE	   *f;
		size_t		n;

		if (outbox_secrets_dir == NULL || outbox_secrets_dir[0] == '\0')
		{
			*problem = "its secret_file needs twilio_outbox.secrets_dir to be set";
			return NULL;
		}
		/* the table's check, again: a superuser may have written around it */
		if (file[0] == '.' || strchr(file, '/') != NULL)
		{
			*problem = "its secret_file is not a plain file name in twilio_outbox.secrets_dir";
			return NULL;
		}
		path = psprintf("%s/%s", outbox_secrets_dir, file);
		f = AllocateFile(path, "r");
		if (f == NULL)
		{
			*problem = psprintf("could not open its secret file \"%s\": %m", path);
			return NULL;
		}
		n = fread(buf, 1, sizeof(buf) - 1, f);
		FreeFile(f);
		buf[n] = '\0';
		n = strcspn(buf, "\r\n");
		while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
			n--;
		buf[n] = '\0';
		secret = pstrdup(buf);
		explicit_bzero(buf, sizeof(buf));
	}
	else if (secret == NULL)
		*problem = "it has no row in twilio_outbox.account_credentials";
	if (secret != NULL && (secret[0] == '\0' || outbox_has_control(secret)))
	{
		*problem = "its secret is empty or contains control characters";
		secret = NULL;
	}
	return secret;
}

/*
 * Reload accounts and credentials.  Structs are updated in place (requests
 * in flight point at them); an account that disappeared is kept, marked
 * unseen, and no longer claimed for.
 */
void
outbox_refresh_accounts(TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	ListCell   *lc;
	uint64		i;
	int			rc;

	outbox_prepare(&plan,
			"SELECT a.name, a.account_sid, a.base_url, a.max_concurrency,"
			" a.paused_until, c.api_key_sid, c.secret, c.secret_env, c.secret_file,"
			" a.calls_per_second::float8, a.twilio_concurrency_limit"
			" FROM twilio_outbox.accounts a"
			" LEFT JOIN twilio_outbox.account_credentials c ON c.account = a.name",
			0, NULL);
	rc = SPI_execute_plan(plan, NULL, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read accounts: %s", SPI_result_code_string(rc));

	foreach(lc, outbox_accounts)
		((OutboxAccount *) lfirst(lc))->seen = false;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		char	   *sid = SPI_getvalue(tup, desc, 2);
		char	   *base = SPI_getvalue(tup, desc, 3);
		char	   *key_sid = SPI_getvalue(tup, desc, 6);
		char	   *url;
		const char *problem = NULL;
		char	   *secret;
		OutboxAccount *a;
		bool		isnull;
		Datum		paused;
		Datum		concurrency;

		/* NOT NULL columns, unless a superuser changed the table */
		if (name == NULL)
			continue;
		if (sid == NULL || base == NULL)
			problem = "its account_sid or base_url is NULL";
		url = psprintf("%s/2010-04-01/Accounts/%s/Messages.json",
					   base ? base : "", sid ? sid : "");
		/* the host decides: no secret is even read for one that is not allowed */
		if (problem == NULL)
			problem = outbox_url_refusal(url, NULL);
		secret = outbox_load_secret(SPI_getvalue(tup, desc, 7),
							 SPI_getvalue(tup, desc, 8),
							 SPI_getvalue(tup, desc, 9),
							 problem ? NULL : &problem);
		a = outbox_find_account(name);
		if (a == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(outbox_worker_cxt);

			a = palloc0(sizeof(OutboxAccount));
			a->name = pstrdup(name);
			outbox_accounts = lappend(outbox_accounts, a);
			MemoryContextSwitchTo(old);
		}
		if (a->messages_url == NULL || strcmp(a->messages_url, url) != 0)
		{
			if (a->messages_url)
				pfree(a->messages_url);
			a->messages_url = worker_strdup(url);
		}
		if (a->auth_user)
			pfree(a->auth_user);
		a->auth_user = worker_strdup(key_sid ? key_sid : sid);
		if (a->auth_secret)
		{
			explicit_bzero(a->auth_secret, strlen(a->auth_secret));
			pfree(a->auth_secret);
		}
		a->auth_secret = worker_strdup(secret ? secret : "");
		if (secret)
			explicit_bzero(secret, strlen(secret));

		/*
		 * Printable ASCII only: the problem quotes what a superuser may have
		 * written around the table's checks, and it is published (and cut)
		 * for monitoring, where a cut or invalid character would make the
		 * view unreadable.
		 */
		if (problem != NULL)
		{
			char	   *clean = pstrdup(problem);
			unsigned char *p;

			for (p = (unsigned char *) clean; *p; p++)
				if (*p < 0x20 || *p >= 0x7f)
					*p = '?';
			problem = clean;
		}
		/* said once, when it changes */
		if (problem != NULL && (a->config_error == NULL || strcmp(a->config_error, problem) != 0))
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("twilio_outbox account \"%s\" cannot be used: %s", name, problem)));
		if (a->config_error)
			pfree(a->config_error);
		a->config_error = worker_strdup(problem);

		concurrency = SPI_getbinval(tup, desc, 4, &isnull);
		outbox_concurrency_configure(a, isnull ? 1 :
									 Min(Max(DatumGetInt32(concurrency), 1), 1000));
		paused = SPI_getbinval(tup, desc, 5, &isnull);
		a->paused_until = isnull ? 0 : DatumGetTimestampTz(paused);
		/* voice calls' own rate (fallback.c); the CHECK keeps it in 0.01 to 100 */
		paused = SPI_getbinval(tup, desc, 10, &isnull);
		a->calls_per_second = isnull ? 1.0 : Min(Max(DatumGetFloat8(paused), 0.01), 100.0);
		concurrency = SPI_getbinval(tup, desc, 11, &isnull);
		a->twilio_concurrency_limit = isnull ? 0 :
			Min(Max(DatumGetInt32(concurrency), 1), 10000);
		a->seen = true;
	}
}

OutboxSender *
outbox_find_sender(int64 id)
{
	ListCell   *lc;

	foreach(lc, outbox_senders)
	{
		OutboxSender *snd = lfirst(lc);

		if (snd->id == id)
			return snd;
	}
	return NULL;
}

/*
 * Reload senders: their account, rate (or their pool's), burst and pause.  Structs are
 * updated in place and never freed (claimed messages point at them), so a
 * rate change applies to the bucket as it stands.
 */
void
outbox_refresh_senders(TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	ListCell   *lc;
	uint64		i;
	int			rc;

	outbox_prepare(&plan,
			/*
			 * Within what float8 and the buckets can hold, whatever a
			 * superuser wrote (1e400 would not even cast): NaN stands for
			 * NULL, the default.
			 */
			"SELECT id, account, kind::text,"
			/* a Messaging Service without a rate: its pool's (43_limits.sql) */
			" CASE WHEN (rate IS NULL OR rate = 'NaN' OR rate <= 0) AND kind::text = 'messaging_service'"
			"   AND twilio_outbox.pool_rate(pool_long_codes, pool_toll_free, pool_short_codes) IS NOT NULL"
			"  THEN twilio_outbox.pool_rate(pool_long_codes, pool_toll_free, pool_short_codes)::float8"
			"  WHEN rate IS NULL OR rate = 'NaN' OR rate <= 0 THEN 'NaN'::float8"
			"  WHEN rate = 'Infinity' THEN 'Infinity'::float8"
			"  WHEN rate > 1000000 THEN 1000000::float8"
			"  WHEN rate < 0.000001 THEN 0.000001::float8 ELSE rate::float8 END,"
			" CASE WHEN burst IS NULL OR burst = 'NaN' OR burst < 1 THEN 'NaN'::float8"
			"  WHEN burst > 1000000 THEN 1000000::float8 ELSE burst::float8 END,"
			" paused_until FROM twilio_outbox.senders",
			0, NULL);
	rc = SPI_execute_plan(plan, NULL, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read senders: %s", SPI_result_code_string(rc));

	foreach(lc, outbox_senders)
		((OutboxSender *) lfirst(lc))->seen = false;
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		OutboxSender *snd = outbox_find_sender(id);
		Datum		paused;
		char	   *kind = SPI_getvalue(tup, desc, 3);

		if (snd == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(outbox_worker_cxt);

			snd = palloc0(sizeof(OutboxSender));
			snd->id = id;
			outbox_senders = lappend(outbox_senders, snd);
			MemoryContextSwitchTo(old);
		}
		snd->account = outbox_find_account(SPI_getvalue(tup, desc, 2));
		outbox_sender_configure(snd, kind ? kind : "",
								DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull)),
								DatumGetFloat8(SPI_getbinval(tup, desc, 5, &isnull)), now);
		paused = SPI_getbinval(tup, desc, 6, &isnull);
		snd->paused_until = isnull ? 0 : DatumGetTimestampTz(paused);
		snd->seen = snd->account != NULL;
	}
}

