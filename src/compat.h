/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The differences between the PostgreSQL versions twilio_outbox
 *		builds for (15, 17 and 18), in one place.
 *
 * Each difference is one small macro or inline function named after what
 * the caller wants, so that no other file needs a PG_VERSION_NUM test.
 * Where a newer release added a function or macro under a name of its own,
 * the older branches get a definition of that name (GetNumberFromPGProc),
 * and the call sites read as current code.  Included by twilio_outbox.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TWILIO_OUTBOX_COMPAT_H
#define TWILIO_OUTBOX_COMPAT_H

#include "postgres.h"

#include "catalog/namespace.h"
#include "common/jsonapi.h"
#include "storage/proc.h"

#if PG_VERSION_NUM < 150000
#error "twilio_outbox needs PostgreSQL 15 or later"
#endif

/*
 * A backend's PGPROC number, for setting its latch from another process.
 * 17 dropped PGPROC.pgprocno and computes it from the array position.
 */
#if PG_VERSION_NUM < 170000
#define GetNumberFromPGProc(proc) ((proc)->pgprocno)
#endif

/*
 * JSON semantic-action callbacks return a JsonParseErrorType from 16 on
 * (void before).  Declare them "static OutboxJsonAction name(...)", leave
 * them with OUTBOX_JSON_ACTION_DONE, and end them with it too.
 */
#if PG_VERSION_NUM >= 160000
typedef JsonParseErrorType OutboxJsonAction;
#define OUTBOX_JSON_ACTION_DONE return JSON_SUCCESS
#else
typedef void OutboxJsonAction;
#define OUTBOX_JSON_ACTION_DONE return
#endif

/*
 * A lexer over len bytes at json, allocated in CurrentMemoryContext.  17
 * takes a context to fill in as its first argument (NULL: allocate one).
 */
#if PG_VERSION_NUM >= 170000
#define outbox_json_lexer(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen(NULL, (json), (len), (encoding), (need_escapes))
#else
#define outbox_json_lexer(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen((json), (len), (encoding), (need_escapes))
#endif

/*
 * Name lookups restricted to pg_catalog for the queries between
 * OUTBOX_PIN_SEARCH_PATH(pinned) and OUTBOX_UNPIN_SEARCH_PATH(pinned), whatever
 * the caller's search_path; an error undoes it with the (sub)transaction.
 * pinned is an OutboxPinnedPath variable of the caller.  The file using
 * them includes utils/guc.h (not included here: its parse_int and other
 * short names would collide with static functions of other files).
 *
 * 15: an override search path of pg_catalog alone (no GUC work per call;
 * PushOverrideSearchPath copies the struct).  17 removed override search
 * paths; there a GUC nest level holds search_path = 'pg_catalog, pg_temp'
 * (RestrictSearchPath, what the server itself sets for maintenance
 * commands): pg_temp, listed last, is searched for relations and types only
 * after pg_catalog and never for functions and operators, so a caller's
 * temporary objects shadow nothing.
 */
typedef int OutboxPinnedPath;

#if PG_VERSION_NUM >= 170000
#define OUTBOX_PIN_SEARCH_PATH(pinned) \
	do { \
		(pinned) = NewGUCNestLevel(); \
		RestrictSearchPath(); \
	} while (0)
#define OUTBOX_UNPIN_SEARCH_PATH(pinned) AtEOXact_GUC(true, (pinned))
#else
#define OUTBOX_PIN_SEARCH_PATH(pinned) \
	do { \
		OverrideSearchPath outbox_path_ = {NIL, true, false, 0}; \
		\
		(pinned) = 0; \
		PushOverrideSearchPath(&outbox_path_); \
	} while (0)
#define OUTBOX_UNPIN_SEARCH_PATH(pinned) ((void) (pinned), PopOverrideSearchPath())
#endif

/*
 * A WaitEventSet that lives until the process exits (the dispatcher's wait
 * on its latch and its transfers' sockets, http.c).  17 takes a resource
 * owner (NULL: none, allocated in TopMemoryContext) instead of a context.
 * The file using it includes storage/latch.h and utils/memutils.h.
 */
#if PG_VERSION_NUM >= 170000
#define outbox_create_wait_event_set(nevents) CreateWaitEventSet(NULL, (nevents))
#else
#define outbox_create_wait_event_set(nevents) CreateWaitEventSet(TopMemoryContext, (nevents))
#endif

#endif							/* TWILIO_OUTBOX_COMPAT_H */
