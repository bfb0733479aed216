# twilio_outbox: PGXS build, plus the project's two commands.
#
#   make demo    the whole product on a throwaway cluster (see README.md)
#   make test    every test suite, from a fresh machine (see README.md)
#   make bench   benchmarks (never part of make test)
#   make soak    ambiguous sends under faults and kills (never part of make test)
#   make test-versions   make test on PostgreSQL 15, 17 and 18 (see README.md)

EXTENSION = twilio_outbox
MODULE_big = twilio_outbox
OBJS = \
	src/twilio_outbox.o \
	src/guc.o \
	src/message.o \
	src/enqueue.o \
	src/enqueue_lookup.o \
	src/params.o \
	src/shmem.o \
	src/worker.o \
	src/partition.o \
	src/control.o \
	src/spi_plan.o \
	src/registry.o \
	src/queue.o \
	src/http.o \
	src/twilio.o \
	src/retry.o \
	src/ratelimit.o \
	src/operations.o \
	src/callback.o \
	src/lookup.o \
	src/reconcile.o \
	src/fallback.o \
	src/campaign.o \
	src/quiet.o \
	src/guards.o \
	src/failover.o

# Install scripts are built from one file per concern (sql/README.md).
# The released 0.1 script is committed as released and never rebuilt:
# make check-released proves its pieces in sql/0.1 still give its bytes.
# The upgrade to the version in development and its full install script
# are generated.
SQL_0_1 = $(sort $(wildcard sql/0.1/[0-9]*.sql))
SQL_0_2 = $(sort $(wildcard sql/0.2/[0-9]*.sql))
DATA = sql/twilio_outbox--0.1.sql
DATA_built = sql/twilio_outbox--0.1--0.2.sql sql/twilio_outbox--0.2.sql

PG_CONFIG ?= pg_config
# -Wextra's unused-parameter and missing-field-initializers fire on
# PostgreSQL's own headers and callback signatures; everything else is on.
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = $(shell curl-config --libs)

# The thin receiver for Twilio's webhooks (receiver/, README "Delivery
# status"): a program of its own, built beside the module by make and
# installed into pg_config --bindir by make install.  Needs libpq-dev and
# libmicrohttpd-dev.
RECEIVER = receiver/twilio_outbox_receiver
EXTRA_CLEAN = $(RECEIVER)

# Suites, each against a throwaway instance with pg_cron and twilio_outbox
# preloaded (test/postgresql.conf).
# test/sql and test/expected (pgvector's layout); results go to test/results.
# Each file makes its own database and fixtures, so any one runs alone.
REGRESS = enqueue validation segments privileges supervisor monitoring operations constraints callbacks reconcile failover fallback limits priorities campaigns quiet_hours guards upgrade_0_1 row_versions
REGRESS_OPTS = --encoding=UTF8 --inputdir=test --outputdir=test --temp-instance=tmp_check \
	--temp-config=test/postgresql.conf
ISOLATION = dedupe account_roles enqueue_lookup recipient_cap early_status
ISOLATION_OPTS = --encoding=UTF8 --inputdir=test/isolation --temp-instance=tmp_check_iso \
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
else ifneq ($(filter-out demo test test-versions bench soak,$(or $(MAKECMDGOALS),all)),)
$(error $(PG_CONFIG) not found: apt-get install postgresql-server-dev-15 (or -17, -18; make demo and make test do), or set PG_CONFIG)
endif

.PHONY: test test-versions demo bench soak check-released
test:
	bash test/run_all.sh

# Every suite on each supported major version, 15 here (Debian bookworm) and
# 17 and 18 in Debian roots cached under /var/cache/twilio_outbox/roots.
test-versions:
	bash test/versions.sh $(PG_VERSIONS)

demo:
	bash test/demo.sh

bench:
	bash bench/run.sh

# Ambiguous sends under faults and kill -9 (never part of make test):
# make soak SOAK_POLICY=reconcile SOAK_FAULT_RATE=0.3 (see test/soak/reconcile.sh).
soak:
	bash test/soak/reconcile.sh

sql/twilio_outbox--0.1--0.2.sql: $(SQL_0_2)
	cat $^ > $@

# The full 0.2 script: what CREATE EXTENSION ... VERSION '0.1' followed by
# ALTER EXTENSION ... UPDATE runs, in one script (each piece's 00_header,
# with its \echo guard, left out; install_header.sql has the guard).
sql/twilio_outbox--0.2.sql: sql/0.2/install_header.sql $(SQL_0_1) $(SQL_0_2)
	cat sql/0.2/install_header.sql $(filter-out sql/0.1/00_header.sql,$(SQL_0_1)) \
		$(filter-out sql/0.2/00_header.sql,$(SQL_0_2)) > $@

# The released script is what its pieces give, byte for byte.
check-released:
	cat $(SQL_0_1) | cmp - sql/twilio_outbox--0.1.sql
	@echo "sql/0.1 gives the released sql/twilio_outbox--0.1.sql byte for byte"

ifneq ($(PGXS),)
all: $(RECEIVER)

# PGXS's CFLAGS (PG_CFLAGS included), libpq from pg_config's directories.
$(RECEIVER): receiver/twilio_outbox_receiver.c
	$(CC) $(CFLAGS) -I$(includedir) -o $@ $< $(LDFLAGS) -L$(libdir) -lpq -lmicrohttpd -lpthread

install: install-receiver
install-receiver: $(RECEIVER)
	$(INSTALL_PROGRAM) $(RECEIVER) '$(DESTDIR)$(bindir)/'

uninstall: uninstall-receiver
uninstall-receiver:
	rm -f '$(DESTDIR)$(bindir)/$(notdir $(RECEIVER))'

.PHONY: install-receiver uninstall-receiver
endif

# Every object depends on the shared header (PGXS tracks no header changes).
$(OBJS): src/twilio_outbox.h src/compat.h
