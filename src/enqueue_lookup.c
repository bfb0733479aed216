/*-------------------------------------------------------------------------
 *
 * enqueue_lookup.c
 *		What twilio_enqueue() reads before it inserts: the account, whether
 *		the caller may use it, the sender and whether the recipient is
 *		suppressed, each by one probe of a unique index, read directly
 *		(no executor, no SPI).
 *
 * Why probes and not a cache of the rows.  accounts and senders may become
 * Citus reference tables, which may carry no trigger, and operators change
 * them with plain DML, which sends no invalidation to other backends: a
 * cache of their rows could learn of a change only by reading the rows
 * again (comparing xmin, say), and that read is the probe itself.  So every
 * call reads them, under the snapshot its insert then runs with: an enqueue
 * never uses an account or a sender that a transaction visible to that
 * snapshot deleted or changed, exactly as the single INSERT ... SELECT it
 * replaces.  What is kept per backend is what only DDL changes: the OIDs of
 * the tables and of the indexes probed and the column numbers read, found
 * by name once and checked against the shape expected (a unique btree
 * index on those columns; for the *_one_default indexes a predicate of the
 * is_default column alone), and dropped on any relcache invalidation of one
 * of them (ALTER, DROP, REINDEX, DROP/ALTER EXTENSION all send one).  When
 * an index is missing or has another shape, outbox_lookup_sender() says so
 * and the caller resolves through its SQL statement instead.  The tables and
 * indexes are locked before the OIDs are trusted (lock_probed), so a
 * REINDEX CONCURRENTLY or a DROP committed meanwhile is seen first.
 *
 * A probe costs a few thousand instructions; the statement it replaces
 * cost about 150,000 (mostly executor start of a join plan).
 *
 *-------------------------------------------------------------------------
 */
#include "twilio_outbox.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "nodes/primnodes.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"

/* One unique index probed by equality on its key columns. */
typedef struct ProbeIndex
{
	Oid			heap;
	Oid			index;
	int			nkeys;
	AttrNumber	keys[2];		/* heap column numbers, in index order */
	Oid			procs[2];		/* equality function of each key */
	Oid			collations[2];	/* the index's collation of each key */
	AttrNumber	is_default;		/* partial on this boolean column, or 0 */
} ProbeIndex;

enum
{
	PROBE_ACCOUNT,
	PROBE_DEFAULT_ACCOUNT,
	PROBE_ROLES,
	PROBE_SENDER_FROM,
	PROBE_SENDER_SERVICE,
	PROBE_DEFAULT_SENDER,
	PROBE_SUPPRESSED,
	NUM_PROBES
};

/* The per-backend cache: OIDs and column numbers, never row contents. */
typedef struct LookupCache
{
	bool		valid;
	bool		usable;			/* every index found, of the shape expected */
	ProbeIndex	probes[NUM_PROBES];
	AttrNumber	account_name;
	AttrNumber	account_is_default;
	AttrNumber	role_role;
	AttrNumber	sender_id;
	AttrNumber	sender_from;
	AttrNumber	sender_service;
	AttrNumber	sender_is_default;
	OutboxPolicyColumns policy; /* quiet hours and guards (guards.c) */
} LookupCache;

static LookupCache cache;
static bool callback_registered = false;

static void
lookup_invalidate(Datum arg, Oid relid)
{
	int			i;

	if (!cache.valid)
		return;
	if (relid == InvalidOid)
	{
		cache.valid = false;
		return;
	}
	for (i = 0; i < NUM_PROBES; i++)
	{
		if (cache.probes[i].heap == relid || cache.probes[i].index == relid)
		{
			cache.valid = false;
			return;
		}
	}
}

/*
 * Find index `name` of table `heap` (both in the outbox's schema) and check
 * that it is a valid unique btree index on exactly `columns`, without
 * expressions, with no predicate, or, when default_column is given, with the
 * predicate "default_column" alone.  Returns false when it is not.
 */
static bool
find_index(Oid nsp, Oid heap, const char *name, int ncols, const char *const *columns,
		   const Oid *procs, const char *default_column, ProbeIndex *out)
{
	Oid			index = get_relname_relid(name, nsp);
	Relation	irel;
	bool		ok = true;
	List	   *pred;
	int			i;

	if (!OidIsValid(heap) || !OidIsValid(index))
		return false;
	memset(out, 0, sizeof(*out));
	out->heap = heap;
	out->index = index;
	out->nkeys = ncols;
	irel = index_open(index, AccessShareLock);
	if (irel->rd_rel->relam != BTREE_AM_OID || irel->rd_index->indrelid != heap ||
		!irel->rd_index->indisunique || !irel->rd_index->indisvalid ||
		irel->rd_index->indnkeyatts != ncols || RelationGetIndexExpressions(irel) != NIL)
		ok = false;
	for (i = 0; ok && i < ncols; i++)
	{
		AttrNumber	att = get_attnum(heap, columns[i]);

		if (att == InvalidAttrNumber || irel->rd_index->indkey.values[i] != att)
			ok = false;
		out->keys[i] = att;
		out->procs[i] = procs[i];
		out->collations[i] = irel->rd_indcollation[i];
	}
	pred = ok ? RelationGetIndexPredicate(irel) : NIL;
	if (ok && default_column == NULL)
		ok = (pred == NIL);
	else if (ok)
	{
		out->is_default = get_attnum(heap, default_column);
		ok = (list_length(pred) == 1 && IsA(linitial(pred), Var) &&
			  ((Var *) linitial(pred))->varattno == out->is_default);
	}
	index_close(irel, AccessShareLock);
	return ok;
}

/* Fill the cache: catalog lookups, once per backend and after DDL. */
static void
build_cache(void)
{
	static const char *const name_col[] = {"name"};
	static const char *const default_col[] = {"is_default"};
	static const char *const roles_cols[] = {"account", "role"};
	static const char *const from_cols[] = {"account", "from_number"};
	static const char *const service_cols[] = {"account", "messaging_service_sid"};
	static const char *const account_col[] = {"account"};
	static const char *const suppressed_cols[] = {"account", "to_number"};
	static const Oid text1[] = {F_TEXTEQ};
	static const Oid bool1[] = {F_BOOLEQ};
	static const Oid text_oid[] = {F_TEXTEQ, F_OIDEQ};
	static const Oid text2[] = {F_TEXTEQ, F_TEXTEQ};
	Oid			nsp;
	Oid			accounts;
	Oid			senders;
	Oid			roles;
	Oid			suppressed;
	bool		ok;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(lookup_invalidate, (Datum) 0);
		callback_registered = true;
	}
	memset(&cache, 0, sizeof(cache));
	nsp = get_namespace_oid(OUTBOX_SCHEMA, true);
	accounts = OidIsValid(nsp) ? get_relname_relid("accounts", nsp) : InvalidOid;
	senders = OidIsValid(nsp) ? get_relname_relid("senders", nsp) : InvalidOid;
	roles = OidIsValid(nsp) ? get_relname_relid("account_roles", nsp) : InvalidOid;
	suppressed = OidIsValid(nsp) ? get_relname_relid("suppressed_recipients", nsp) : InvalidOid;

	ok = find_index(nsp, accounts, "accounts_pkey", 1, name_col, text1, NULL,
					&cache.probes[PROBE_ACCOUNT]);
	ok = ok && find_index(nsp, accounts, "accounts_one_default", 1, default_col, bool1,
						  "is_default", &cache.probes[PROBE_DEFAULT_ACCOUNT]);
	/* account_roles arrives with 0.2: before the update nothing is restricted */
	if (ok && OidIsValid(roles))
		ok = find_index(nsp, roles, "account_roles_pkey", 2, roles_cols, text_oid, NULL,
						&cache.probes[PROBE_ROLES]);
	ok = ok && find_index(nsp, senders, "senders_account_from_number_key", 2, from_cols, text2,
						  NULL, &cache.probes[PROBE_SENDER_FROM]);
	ok = ok && find_index(nsp, senders, "senders_account_messaging_service_sid_key", 2,
						  service_cols, text2, NULL, &cache.probes[PROBE_SENDER_SERVICE]);
	ok = ok && find_index(nsp, senders, "senders_one_default", 1, account_col, text1,
						  "is_default", &cache.probes[PROBE_DEFAULT_SENDER]);
	ok = ok && find_index(nsp, suppressed, "suppressed_recipients_pkey", 2, suppressed_cols,
						  text2, NULL, &cache.probes[PROBE_SUPPRESSED]);
	if (ok)
	{
		cache.account_name = get_attnum(accounts, "name");
		cache.account_is_default = get_attnum(accounts, "is_default");
		cache.role_role = OidIsValid(roles) ? get_attnum(roles, "role") : InvalidAttrNumber;
		cache.sender_id = get_attnum(senders, "id");
		cache.sender_from = get_attnum(senders, "from_number");
		cache.sender_service = get_attnum(senders, "messaging_service_sid");
		cache.sender_is_default = get_attnum(senders, "is_default");
		{
			Relation	rel = table_open(accounts, AccessShareLock);

			outbox_policy_columns(RelationGetDescr(rel), &cache.policy);
			table_close(rel, AccessShareLock);
		}
		ok = cache.account_name > 0 && cache.account_is_default > 0 && cache.sender_id > 0 &&
			cache.sender_from > 0 && cache.sender_service > 0 && cache.sender_is_default > 0 &&
			(!OidIsValid(roles) || cache.role_role > 0);
	}
	cache.usable = ok;
	cache.valid = true;
}

/*
 * An index probe: the table's rows visible to snap whose key columns equal
 * keys (nkeys of them; fewer than the index's columns is a prefix).  Calls
 * row(tuple, desc, arg) for each until it returns false.  The caller holds
 * the locks (lock_probed).
 */
static void
probe(const ProbeIndex *p, int nkeys, const Datum *keys, Snapshot snap,
	  bool (*row) (HeapTuple tuple, TupleDesc desc, void *arg), void *arg)
{
	Relation	heap = table_open(p->heap, AccessShareLock);
	ScanKeyData skey[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	int			i;

	for (i = 0; i < nkeys; i++)
		ScanKeyEntryInitialize(&skey[i], 0, p->keys[i], BTEqualStrategyNumber, InvalidOid,
							   p->collations[i], p->procs[i], keys[i]);
	scan = systable_beginscan(heap, p->index, true, snap, nkeys, skey);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		if (!row(tuple, RelationGetDescr(heap), arg))
			break;
	}
	systable_endscan(scan);
	table_close(heap, NoLock);
}

/* Row callbacks: each copies what it needs out of the buffer. */
typedef struct RowContext
{
	bool		found;
	AttrNumber	check_default;	/* the row must have this boolean true */
	OutboxResolvedSender *out;
	Oid			user;
	bool		allowed;
} RowContext;

static bool
is_default_row(HeapTuple tuple, TupleDesc desc, AttrNumber att)
{
	bool		isnull;
	Datum		d;

	if (att == InvalidAttrNumber)
		return true;
	d = heap_getattr(tuple, att, desc, &isnull);
	return !isnull && DatumGetBool(d);
}

static bool
account_row(HeapTuple tuple, TupleDesc desc, void *arg)
{
	RowContext *c = (RowContext *) arg;
	bool		isnull;

	if (!is_default_row(tuple, desc, c->check_default))
		return true;
	c->out->account = TextDatumGetCString(heap_getattr(tuple, cache.account_name, desc, &isnull));
	outbox_read_policy(tuple, desc, &cache.policy, c->out);
	c->found = true;
	return false;
}

/* pg_has_role(user, role, 'MEMBER') of any role listed for the account. */
static bool
role_row(HeapTuple tuple, TupleDesc desc, void *arg)
{
	RowContext *c = (RowContext *) arg;
	bool		isnull;
	Datum		role = heap_getattr(tuple, cache.role_role, desc, &isnull);

	c->found = true;
	if (!isnull && is_member_of_role(c->user, DatumGetObjectId(role)))
	{
		c->allowed = true;
		return false;
	}
	return true;
}

static bool
sender_row(HeapTuple tuple, TupleDesc desc, void *arg)
{
	RowContext *c = (RowContext *) arg;
	bool		isnull;
	Datum		d;

	if (!is_default_row(tuple, desc, c->check_default))
		return true;
	c->out->sender_id = DatumGetInt64(heap_getattr(tuple, cache.sender_id, desc, &isnull));
	c->out->has_sender = true;
	d = heap_getattr(tuple, cache.sender_from, desc, &isnull);
	c->out->from_number = isnull ? NULL : TextDatumGetCString(d);
	d = heap_getattr(tuple, cache.sender_service, desc, &isnull);
	c->out->service_sid = isnull ? NULL : TextDatumGetCString(d);
	c->found = true;
	return false;
}

static bool
any_row(HeapTuple tuple, TupleDesc desc, void *arg)
{
	((RowContext *) arg)->found = true;
	return false;
}

/*
 * AccessShareLock on the tables and indexes of the probes which[0..n-1], as
 * the executor would take, held to the end of the transaction.  Returns false when doing so
 * took in an invalidation of the cache.
 */
static bool
lock_probed(const int *which, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		LockRelationOid(cache.probes[which[i]].heap, AccessShareLock);
		LockRelationOid(cache.probes[which[i]].index, AccessShareLock);
	}
	return cache.valid;
}

/*
 * Resolve what twilio_enqueue() needs, as its SQL lookup did, under snap:
 * the account (named, or the default), whether the caller (user) may use it
 * when roles is set (account_roles has rows), the sender (by from-number,
 * by Messaging Service SID, or the account's default) and whether the
 * recipient is suppressed in the account.  Stops at what the caller reports
 * first: a missing account (*out untouched but found_account false), a
 * refusal (nothing about the account's senders read).  Returns false, with
 * nothing read, when the indexes are not as expected: the caller resolves
 * through SQL then.  Raises nothing of its own; memory in the current
 * context.
 */
bool
outbox_lookup_sender(const char *account, const char *from, const char *service,
					 const char *to, bool roles, Oid user, Snapshot snap,
					 bool *found_account, OutboxResolvedSender *out)
{
	RowContext	c;
	Datum		keys[2];
	int			which[4];
	int			n = 0;
	int			tries;

	/*
	 * Lock what is probed first, then trust the OIDs: taking a lock takes
	 * in the invalidations of DDL committed before it, so a cache still
	 * valid once every lock is held names relations that stay as they are
	 * until the transaction ends.  account_roles in use but not known here
	 * (made since the cache was filled): look again.
	 */
	which[n++] = account ? PROBE_ACCOUNT : PROBE_DEFAULT_ACCOUNT;
	if (roles)
		which[n++] = PROBE_ROLES;
	which[n++] = from ? PROBE_SENDER_FROM : service ? PROBE_SENDER_SERVICE : PROBE_DEFAULT_SENDER;
	which[n++] = PROBE_SUPPRESSED;
	for (tries = 0;; tries++)
	{
		if (!cache.valid || (roles && !OidIsValid(cache.probes[PROBE_ROLES].index)))
			build_cache();
		if (!cache.usable || (roles && !OidIsValid(cache.probes[PROBE_ROLES].index)) ||
			tries == 3)
			return false;
		if (lock_probed(which, n))
			break;
	}
	memset(out, 0, sizeof(*out));
	*found_account = false;

	memset(&c, 0, sizeof(c));
	c.out = out;
	if (account)
	{
		keys[0] = CStringGetTextDatum(account);
		probe(&cache.probes[PROBE_ACCOUNT], 1, keys, snap, account_row, &c);
	}
	else
	{
		c.check_default = cache.account_is_default;
		keys[0] = BoolGetDatum(true);
		probe(&cache.probes[PROBE_DEFAULT_ACCOUNT], 1, keys, snap, account_row, &c);
	}
	if (!c.found)
		return true;
	*found_account = true;

	/* the permission first: a refused caller learns nothing more */
	out->allowed = true;
	if (roles)
	{
		memset(&c, 0, sizeof(c));
		c.user = user;
		keys[0] = CStringGetTextDatum(out->account);
		probe(&cache.probes[PROBE_ROLES], 1, keys, snap, role_row, &c);
		out->allowed = !c.found || c.allowed;
		if (!out->allowed)
			return true;
	}

	memset(&c, 0, sizeof(c));
	c.out = out;
	keys[0] = CStringGetTextDatum(out->account);
	if (from || service)
	{
		keys[1] = CStringGetTextDatum(from ? from : service);
		probe(&cache.probes[from ? PROBE_SENDER_FROM : PROBE_SENDER_SERVICE], 2, keys, snap,
			  sender_row, &c);
	}
	else
	{
		c.check_default = cache.sender_is_default;
		probe(&cache.probes[PROBE_DEFAULT_SENDER], 1, keys, snap, sender_row, &c);
	}

	memset(&c, 0, sizeof(c));
	keys[1] = CStringGetTextDatum(to);
	probe(&cache.probes[PROBE_SUPPRESSED], 2, keys, snap, any_row, &c);
	out->suppressed = c.found;
	return true;
}
