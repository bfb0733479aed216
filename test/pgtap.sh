#!/usr/bin/env bash
# The pgTAP suite (test/pgtap/*.sql) with pg_prove, against a throwaway
# instance on a Unix socket in a temporary directory.  Run as a non-root
# user with PostgreSQL's bin directory on PATH.
set -euo pipefail
# Our own instance only: no PGHOST, PGPORT, PGOPTIONS... of the caller's.
unset $(compgen -e | grep -E '^PG[A-Z]+$')
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/outbox_pgtap.XXXXXX)
trap 'pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$dir"' EXIT
initdb -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat test/postgresql.conf >>"$dir/data/postgresql.conf"
printf "unix_socket_directories = '%s'\nport = 5433\n" "$dir" >>"$dir/data/postgresql.conf"
pg_ctl -D "$dir/data" -l "$dir/log" -w start >/dev/null
psql -h "$dir" -p 5433 -U postgres -d postgres -qX -c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION twilio_outbox'
pg_prove -h "$dir" -p 5433 -U postgres -d postgres test/pgtap/*.sql
