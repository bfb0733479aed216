#!/usr/bin/env bash
# The proof that the README's two commands work on a fresh machine.  In a
# pristine Debian bookworm root (debootstrap --variant=minbase), as root:
#
#   apt-get update && apt-get install -y git make
#   git clone <the commit> /root/twilio_outbox && cd /root/twilio_outbox
#   make demo
#   make test
#
# checks that they left the clone unchanged (git status), and prints each
# command's wall time and closing line ("demo passed: ..." and "N passed,
# N failed").  Not part of make test: it needs root, the network (the Debian
# mirror, the npm registry) and a few minutes (about 3 on the machine it was
# written on, with a fast mirror), plus any wait for the test lock.
#
#   bash .ci/pristine.sh [REF [REPO]]    default: HEAD of this checkout
#
# Environment: MIRROR (default http://deb.debian.org/debian); PG_ENV_TEST=1
# runs both commands with PGPORT, PGHOST, PGDATABASE, PGUSER and PGOPTIONS
# set to values that break anything that follows them; KEEP_ROOT=1 keeps the
# root for inspection (nothing stays mounted in it: rm -rf removes it).
#
# The pristine root is built once and kept untouched as a tarball,
# /var/cache/twilio_outbox/pristine/bookworm-minbase.tar.gz (delete it to
# rebuild); every run extracts a fresh copy and removes it at the end.  Each
# command runs in its own mount and PID namespaces, so /proc, /sys, /dev are
# mounted only there and every process it leaves (a Debian cluster started
# by a package's postinst, say) ends with it.  The test run holds
# /tmp/twilio_outbox_test.lock, like test/run_some.sh, so that it never
# competes with another test run on this machine.
#
# What the root gets from this machine, as any real machine would have it:
# DNS (resolv.conf), /etc/hosts for localhost, the Debian security and
# updates suites, and this machine's CA certificates and their environment
# variables (NODE_EXTRA_CA_CERTS...), for networks that re-sign TLS.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "pristine.sh: run as root" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
ref=${1:-HEAD}
repo=$(cd "${2:-$here/..}" && git rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}")
mirror=${MIRROR:-http://deb.debian.org/debian}
cache=/var/cache/twilio_outbox/pristine
tarball=$cache/bookworm-minbase.tar.gz
lock=/tmp/twilio_outbox_test.lock
mkdir -p "$cache"

# ---------- mounts and removal, careful ones ----------

# Mount points at or below $1 in this mount namespace, deepest first.
mounts_below()
{
	awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Processes whose root directory is $1 or below: only ever ones this script
# started there.
kill_inside()
{
	local p r
	for p in /proc/[0-9]*; do
		r=$(readlink "$p/root" 2>/dev/null) || continue
		case $r in "$1" | "$1"/*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;; esac
	done
}

# Remove a directory, never while anything is mounted below it (rm -rf
# through a bind mount of /dev would remove the machine's own).
safe_remove()
{
	local d=$1 m
	[ -d "$d" ] || return 0
	kill_inside "$d"
	for m in $(mounts_below "$d"); do
		umount "$m" 2>/dev/null || umount -l "$m" || true
	done
	if [ -n "$(mounts_below "$d")" ]; then
		echo "pristine.sh: not removing $d: still mounted: $(mounts_below "$d" | tr '\n' ' ')" >&2
		return 1
	fi
	rm -rf --one-file-system "$d"
}

run=
phase_pid=
cleanup()
{
	local rc=$?
	if [ -n "$phase_pid" ]; then
		# unshare ignores SIGTERM and SIGINT while its child runs; on
		# SIGKILL, --kill-child ends the child and so the whole namespace.
		kill -KILL "$phase_pid" 2>/dev/null || true
		wait "$phase_pid" 2>/dev/null || true
	fi
	exec 9>&- 2>/dev/null || true
	if [ -n "$run" ]; then
		if [ "${KEEP_ROOT:-}" = 1 ]; then
			kill_inside "$run/root"
			echo "== kept $run/root (KEEP_ROOT=1); nothing is mounted there"
		else
			safe_remove "$run" || rc=1
		fi
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---------- the pristine root, built once ----------

if [ ! -s "$tarball" ]; then
	echo "== building the pristine root: debootstrap --variant=minbase bookworm $mirror"
	command -v debootstrap >/dev/null || {
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
	}
	run=$(mktemp -d "$cache/build.XXXXXX")
	debootstrap --variant=minbase bookworm "$run/root" "$mirror" >"$run/debootstrap.log" 2>&1 ||
		{ tail -20 "$run/debootstrap.log" >&2; exit 1; }
	[ -z "$(mounts_below "$run/root")" ] || { echo "debootstrap left mounts" >&2; exit 1; }
	tar --numeric-owner -C "$run/root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
	safe_remove "$run"
	run=
fi

# ---------- a fresh copy of it ----------

run=$(mktemp -d "$cache/run.XXXXXX")
root=$run/root
logs=$cache/logs/$(date -u +%Y%m%dT%H%M%SZ)-${commit:0:10}
mkdir -p "$root" "$logs"
echo "== a fresh root from $tarball, in $root"
tar --numeric-owner -C "$root" -xzf "$tarball"

cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
if [ -d /usr/local/share/ca-certificates ]; then
	cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
	cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi

# The commit, as a repository inside the root to clone from.
git init -q --bare "$root/srv/twilio_outbox.git"
git -C "$repo" push -q "$root/srv/twilio_outbox.git" "$commit:refs/heads/pristine"

# A login's environment, plus this machine's CA settings.
root_env=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for v in NODE_EXTRA_CA_CERTS SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE GIT_SSL_CAINFO \
	REQUESTS_CA_BUNDLE npm_config_cafile; do
	if [ -n "${!v:-}" ]; then root_env+=("$v=${!v}"); fi
done
if [ "${PG_ENV_TEST:-}" = 1 ]; then
	root_env+=(PGPORT=6543 PGHOST=/nonexistent PGDATABASE=nope PGUSER=nobody
		"PGOPTIONS=-c statement_timeout=1")
fi

# Run a shell command as root inside the root, in new mount and PID
# namespaces that end with it (and with unshare, when this script is
# stopped: --kill-child).  The mounts exist only in that mount namespace:
# seen from here, the root's /proc, /sys and /dev stay plain directories.
# It execs unshare: run it in the background (phase below), where $! is then
# unshare itself.
in_root()
{
	exec unshare --mount --pid --kill-child --propagation private -- bash -c '
		r=$1; shift
		mount -t proc proc "$r/proc" &&
		mount -t sysfs sysfs "$r/sys" &&
		mount --bind /dev "$r/dev" &&
		mount --bind /dev/pts "$r/dev/pts" &&
		mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm" || exit 125
		chroot "$r" "$@"' in_root "$root" \
		env -i "${root_env[@]}" bash -c "cd /root && $1" </dev/null
}

# A phase: its output shown and logged, its wall time and status kept.
declare -A took status
phase()
{
	local name=$1 cmd=$2 t0 rc
	echo "== [$name] $cmd"
	t0=$(date +%s)
	# In the background, so that a signal to this script is handled at
	# once (cleanup stops the phase), not when the phase ends.
	in_root "$cmd" > >(tee "$logs/$name.log") 2>&1 &
	phase_pid=$!
	rc=0
	wait $phase_pid || rc=$?
	phase_pid=
	took[$name]=$(($(date +%s) - t0))
	status[$name]=$rc
	echo "== [$name] exit status $rc after ${took[$name]} s"
}

mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

phase setup "apt-get update && apt-get install -y git make &&
	git clone -q -b pristine /srv/twilio_outbox.git /root/twilio_outbox"
if [ "${status[setup]}" = 0 ]; then
	phase demo "cd /root/twilio_outbox && make demo"
	exec 9>"$lock"
	if ! flock -n 9; then
		echo "== waiting for $lock (another test run on this machine)"
		flock 9
	fi
	phase test "cd /root/twilio_outbox && make test"
	exec 9>&-
	# Neither command may leave a change to the tree (a tracked file
	# rewritten, an untracked one not in .gitignore, __pycache__ say).
	phase tree "cd /root/twilio_outbox && git status --porcelain"
fi

demo_line=$(grep -E '^demo (passed|FAILED)' "$logs/demo.log" 2>/dev/null | tail -1) || true
test_line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logs/test.log" 2>/dev/null | tail -1) || true
echo
echo "== pristine proof: $(git -C "$repo" log -1 --format='%h %s' "$commit")"
echo "   Debian bookworm minbase ($tarball), as root, from a clone in /root"
if [ "${PG_ENV_TEST:-}" = 1 ]; then echo "   with PGPORT=6543 PGHOST=/nonexistent PGDATABASE=nope PGUSER=nobody PGOPTIONS='-c statement_timeout=1'"; fi
printf '   %-44s %8s  exit %s\n' "apt-get install -y git make; git clone" \
	"$(mmss "${took[setup]}")" "${status[setup]}"
if [ "${status[setup]}" = 0 ]; then
	printf '   %-44s %8s  exit %s  %s\n' "make demo" "$(mmss "${took[demo]}")" \
		"${status[demo]}" "${demo_line:-(no verdict line)}"
	printf '   %-44s %8s  exit %s  %s\n' "make test" "$(mmss "${took[test]}")" \
		"${status[test]}" "${test_line:-(no N passed, N failed line)}"
	if [ "${status[tree]}" = 0 ] && [ ! -s "$logs/tree.log" ]; then
		tree_line="unchanged"
	else
		tree_line="CHANGED: $(tr '\n' ' ' <"$logs/tree.log")"
		status[tree]=1
	fi
	printf '   %-44s %s\n' "the clone after both (git status)" "$tree_line"
fi
echo "   logs: $logs"
[ "${status[setup]}" = 0 ] && [ "${status[demo]}" = 0 ] && [ "${status[test]}" = 0 ] &&
	[ "${status[tree]}" = 0 ] && [ -n "$test_line" ] && [[ $test_line == *" 0 failed" ]]
