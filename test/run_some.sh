#!/usr/bin/env bash
# Some of the suites, for development (make test runs them all):
#   bash test/run_some.sh regress enqueue validation   (pg_regress files)
#   bash test/run_some.sh isolation
#   bash test/run_some.sh tap test/t/001_send.pl ...    (TAP files)
#   bash test/run_some.sh pgtap
# Builds and installs the extension first.  The whole run holds the lock
# file /tmp/twilio_outbox_test.lock, so that several checkouts on one
# machine never install over a library another one is testing.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/setup.sh"

kind=${1:?usage: run_some.sh regress|isolation|tap|pgtap [names]}
shift

take_test_lock 9
need_packages || exit 1
build_and_install "$top" || exit 1
work=$(work_copy "$top")
cd "$work" || exit 1
case $kind in
regress)
	as_pg make -s installcheck ISOLATION= TAP_TESTS= ${1:+REGRESS="$*"}
	rc=$?
	[ -f test/regression.diffs ] && cat test/regression.diffs ;;
isolation)
	as_pg make -s installcheck REGRESS= TAP_TESTS=
	rc=$?
	[ -f output_iso/regression.diffs ] && cat output_iso/regression.diffs ;;
tap)
	test_tools
	as_pg make -s installcheck REGRESS= ISOLATION= ${1:+PROVE_TESTS="$*"}
	rc=$? ;;
pgtap)
	as_pg bash test/pgtap.sh
	rc=$? ;;
*)
	echo "unknown suite $kind" >&2
	rc=2 ;;
esac
if [ $rc -eq 0 ]; then
	[ "$work" != "$top" ] && rm -rf "$work"
else
	echo "failed: logs kept in $work"
fi
exit $rc
