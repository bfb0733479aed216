#!/usr/bin/env bash
# What quiet hours and abuse guards add to an enqueue (issue 12): pgbench
# (2 clients, prepared, synchronous_commit off so the statements' own CPU
# cost shows) calling twilio_enqueue() to a random +1415 recipient, with
# the account
#   plain      no guards, transactional traffic (what 0.1 did)
#   country    allowed_country_codes = {1,44}: a check in C, no query
#   caps       max_per_recipient_hour and _day set: one upsert of
#              recipient_counts and one range read per message
#   marketing  traffic_class => 'marketing': the number_time_zones lookup
#              and the quiet window computed
# Segments of each kind alternate, secs seconds each kind in all.
#
#   bench/guards.sh [seconds of each kind, default 20]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_prepare

secs=${1:-20}
bench_workdir
start_cluster
psql_b <<'SQL'
CREATE EXTENSION twilio_outbox;
INSERT INTO twilio_outbox.accounts (name, account_sid, base_url, is_default)
	VALUES ('main', 'AC' || repeat('0', 32), 'http://127.0.0.1:9', true);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
SQL
for kind in plain country caps marketing; do
	class=transactional
	[ $kind = marketing ] && class=marketing
	cat >"$BENCH_DIR/$kind.sql" <<SQL
\set n random(0, 9999999)
SELECT twilio_enqueue('+1415' || lpad(:n::text, 7, '0'), 'Your verification code is 481516', traffic_class => '$class');
SQL
done
chmod 644 "$BENCH_DIR"/*.sql

set_kind()
{
	case $1 in
	country) psql_b -c "UPDATE twilio_outbox.accounts SET allowed_country_codes = '{1,44}', max_per_recipient_hour = NULL, max_per_recipient_day = NULL" ;;
	caps) psql_b -c "UPDATE twilio_outbox.accounts SET allowed_country_codes = NULL, max_per_recipient_hour = 1000000, max_per_recipient_day = 1000000" ;;
	*) psql_b -c "UPDATE twilio_outbox.accounts SET allowed_country_codes = NULL, max_per_recipient_hour = NULL, max_per_recipient_day = NULL" ;;
	esac
}

seg=2
rounds=$(( (secs + seg - 1) / seg ))
declare -A total
for kind in plain country caps marketing; do total[$kind]=0; done
for kind in plain country caps marketing; do
	set_kind $kind
	PGOPTIONS="-c synchronous_commit=off" as_pg pgbench -h "$BENCH_DIR" -U postgres -n -M prepared \
		-c 2 -j 2 -T 2 -f "$BENCH_DIR/$kind.sql" postgres >/dev/null 2>&1
done
for ((r = 0; r < rounds; r++)); do
	for kind in plain country caps marketing; do
		set_kind $kind
		tps=$(PGOPTIONS="-c synchronous_commit=off" as_pg pgbench -h "$BENCH_DIR" -U postgres -n -M prepared \
			-c 2 -j 2 -T $seg -f "$BENCH_DIR/$kind.sql" postgres 2>&1 | awk '/^tps = / {print $3}')
		total[$kind]=$(calc "${total[$kind]} + $tps")
	done
done
for kind in plain country caps marketing; do
	result "guards_${kind}_tps" "$(calc "round(${total[$kind]} / $rounds)")"
	result "guards_${kind}_vs_plain" "$(calc "round(${total[$kind]} / ${total[plain]}, 3)")"
done
