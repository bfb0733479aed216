# twilio_outbox: PGXS build, plus the project's two commands.
#
#   make demo    the whole product on a throwaway cluster (see README.md)
#   make test    every test suite, from a fresh machine (see README.md)
#   make bench   benchmarks (never part of make test)

EXTENSION = twilio_outbox
MODULE_big = twilio_outbox
OBJS = \
	src/twilio_outbox.o \
	src/guc.o \
	src/message.o \
	src/enqueue.o \
	src/shmem.o \
	src/worker.o \
	src/queue.o \
	src/http.o \
	src/twilio.o \
	src/retry.o \
	src/ratelimit.o \
	src/operations.o \
	src/callback.o

# Released install scripts never change; the upgrade to the version in
# development is built from one file per concern (sql/0.2/README.md).
DATA = sql/twilio_outbox--0.1.sql
DATA_built = sql/twilio_outbox--0.1--0.2.sql

PG_CONFIG ?= pg_config
# -Wextra's unused-parameter and missing-field-initializers fire on
# PostgreSQL's own headers and callback signatures; everything else is on.
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = $(shell curl-config --libs)

# Suites, each against a throwaway instance with pg_cron and twilio_outbox
# preloaded (test/postgresql.conf).
REGRESS = setup enqueue validation segments privileges supervisor monitoring operations constraints callbacks upgrade_0_1
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=test/postgresql.conf
ISOLATION = dedupe account_roles
ISOLATION_OPTS = --inputdir=test/isolation --temp-instance=tmp_check_iso \
	--temp-config=test/postgresql.conf
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl


# LLVM bitcode would need clang on every machine; the JIT gains nothing here.
override with_llvm = no

# make demo and make test install PostgreSQL themselves: on a machine
# without it yet (no pg_config), those targets must still parse and run.
# Every other target needs PGXS.
PGXS := $(shell command -v $(PG_CONFIG) >/dev/null 2>&1 && $(PG_CONFIG) --pgxs)
ifneq ($(PGXS),)
include $(PGXS)
else ifneq ($(filter-out demo test bench,$(or $(MAKECMDGOALS),all)),)
$(error $(PG_CONFIG) not found: apt-get install postgresql-server-dev-15 (make demo and make test do), or set PG_CONFIG)
endif

.PHONY: test demo bench
test:
	bash test/run_all.sh

demo:
	bash test/demo.sh

bench:
	bash bench/run.sh

sql/twilio_outbox--0.1--0.2.sql: $(sort $(wildcard sql/0.2/*.sql))
	cat $^ > $@

# Every object depends on the shared header (PGXS tracks no header changes).
$(OBJS): src/twilio_outbox.h
