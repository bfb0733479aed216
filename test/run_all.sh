#!/usr/bin/env bash
# make test: every test suite of twilio_outbox, on a fresh Debian bookworm
# machine or a developer's.  Installs what is missing (as root), builds and
# installs the extension, then runs, as the postgres user in a throwaway
# copy of the tree, each against its own throwaway instance:
#   pg_regress (test/sql, test/expected), isolation (test/isolation/),
#   TAP (test/t/, PostgreSQL::Test::Cluster), pgTAP (test/pgtap/).
# Ends with "N passed, N failed" and exits non-zero on any failure.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/setup.sh"

# The whole run holds /tmp/twilio_outbox_test.lock (test/setup.sh).
take_test_lock 8

need_packages || exit 1
build_and_install "$top" || { echo "0 passed, 1 failed"; exit 1; }
# Prism and Twilio's spec for the contract test (a failure there shows as
# that test's failure).
test_tools

work=$(work_copy "$top")
passed=0
failed=0
status=0
cleanup() { [ "$work" != "$top" ] && [ $status -eq 0 ] && rm -rf "$work"; }
trap cleanup EXIT

count()
{
	passed=$((passed + $1))
	failed=$((failed + $2))
	[ "$2" -eq 0 ] || status=1
}

# pg_regress prints "All N tests passed." or "M of N tests failed."
count_regress()
{
	local out=$1 n m
	if n=$(grep -oE 'All [0-9]+ tests passed' "$out" | grep -oE '[0-9]+'); then
		count "$n" 0
	elif m=$(grep -oE '[0-9]+ of [0-9]+ tests failed' "$out"); then
		set -- $m
		count $(($3 - $1)) "$1"
	else
		count 0 1
	fi
}

# prove and pg_prove: "Files=F, Tests=T" and per failing file "Failed: N".
count_prove()
{
	local out=$1 total bad
	total=$(grep -oE 'Tests=[0-9]+' "$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
	bad=$(grep -oE 'Failed: [0-9]+\)' "$out" | grep -oE '[0-9]+' | awk '{s += $1} END {print s + 0}')
	[ -z "$bad" ] && bad=0
	if grep -q '^Result: PASS' "$out"; then
		count "$total" 0
	else
		[ "$bad" -eq 0 ] && bad=1
		count $((total - bad > 0 ? total - bad : 0)) "$bad"
	fi
}

run_suite()
{
	local name=$1 counter=$2
	shift 2
	local out
	out=$(mktemp)
	echo "== $name"
	(cd "$work" && as_pg "$@") >"$out" 2>&1
	cat "$out"
	$counter "$out"
	rm -f "$out"
}

# The released install script is what its pieces in sql/0.1 give.
check_released()
{
	if grep -q 'byte for byte' "$1"; then count 1 0; else count 0 1; fi
}
run_suite "released script" check_released make -s check-released
run_suite "pg_regress" count_regress make -s installcheck ISOLATION= TAP_TESTS=
[ -f "$work/test/regression.diffs" ] && head -200 "$work/test/regression.diffs"
run_suite "isolation" count_regress make -s installcheck REGRESS= TAP_TESTS=
[ -f "$work/output_iso/regression.diffs" ] && head -200 "$work/output_iso/regression.diffs"
run_suite "TAP" count_prove make -s installcheck REGRESS= ISOLATION= PROVE_FLAGS=-j2
run_suite "pgTAP" count_prove bash test/pgtap.sh

if [ $status -ne 0 ] && [ "$work" != "$top" ]; then
	echo "failed: logs kept in $work (tmp_check/log, regression.diffs)"
fi
echo "$passed passed, $failed failed"
exit $status
