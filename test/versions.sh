#!/usr/bin/env bash
# make test-versions: every suite (make test) on each PostgreSQL major
# version twilio_outbox supports, each on the Debian release that ships it:
#
#   15  Debian 12 bookworm      17  Debian 13 trixie      18  Debian forky
#
# A version whose Debian release is this machine's runs here (PG_MAJOR=NN
# make test); the others run as root in a Debian root made with debootstrap
# --variant=minbase, with the packages make test needs installed once
# (PostgreSQL NN, its server headers, pg_cron and pgTAP for NN, libcurl,
# Perl's IPC::Run, node and npm...).  That provisioned root is kept as a
# tarball under /var/cache/twilio_outbox/roots/ (ROOTS_CACHE): delete one
# to rebuild it.  Every run extracts a fresh copy, copies this working tree
# (uncommitted changes included) and the contract test's tools into it, runs
# PG_MAJOR=NN make test there and removes it.
#
#   bash test/versions.sh [15 17 18]      (default: all three)
#
# Ends with one "PostgreSQL NN: N passed, N failed" line per version, and
# exits non-zero unless all passed.  Needs root for the Debian roots (chroot,
# namespaces), and the network the first time (the Debian mirror, MIRROR;
# default http://deb.debian.org/debian).  Each make test holds
# /tmp/twilio_outbox_test.lock, like test/run_some.sh; building roots does
# not.
#
# Mounts (/proc, /sys, /dev) exist only in the mount namespace of the
# command run in a root (unshare --mount --pid --kill-child), so nothing
# stays mounted and every process a package's maintainer script or a test
# leaves ends with the namespace.  A root is removed only when nothing is
# mounted below it.  The machine's CA certificates and their environment
# variables go into each root, for networks that re-sign TLS (npm).
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
versions=${*:-15 17 18}
mirror=${MIRROR:-http://deb.debian.org/debian}
cache=${ROOTS_CACHE:-/var/cache/twilio_outbox/roots}
lock=/tmp/twilio_outbox_test.lock

# The Debian release that ships each major version as its default.
suite_of()
{
	case $1 in
	15) echo bookworm ;;
	17) echo trixie ;;
	18) echo forky ;;
	*) return 1 ;;
	esac
}

host_suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
for v in $versions; do
	suite_of "$v" >/dev/null || { echo "versions.sh: PostgreSQL $v is not supported (15, 17, 18)" >&2; exit 2; }
done

# ---------- mounts and removal, careful ones (as .ci/pristine.sh) ----------

mounts_below()
{
	awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

safe_remove()
{
	local d=$1
	[ -d "$d" ] || return 0
	if [ -n "$(mounts_below "$d")" ]; then
		echo "versions.sh: not removing $d: still mounted: $(mounts_below "$d" | tr '\n' ' ')" >&2
		return 1
	fi
	rm -rf --one-file-system "$d"
}

# A login's environment, plus this machine's CA settings.
root_env=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	DEBIAN_FRONTEND=noninteractive)
for var in NODE_EXTRA_CA_CERTS SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE GIT_SSL_CAINFO \
	REQUESTS_CA_BUNDLE npm_config_cafile; do
	if [ -n "${!var:-}" ]; then root_env+=("$var=${!var}"); fi
done

# Run shell command $2 as root in root $1, in mount and PID namespaces that
# end with it.  Runs in the foreground; unshare --kill-child ends the
# namespace (and so every process in it) when this script is killed.
in_root()
{
	unshare --mount --pid --kill-child --propagation private -- bash -c '
		r=$1; shift
		mount -t proc proc "$r/proc" &&
		mount -t sysfs sysfs "$r/sys" &&
		mount --bind /dev "$r/dev" &&
		mount --bind /dev/pts "$r/dev/pts" &&
		mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm" || exit 125
		exec chroot "$r" "$@"' in_root "$1" \
		env -i "${root_env[@]}" bash -c "$2" </dev/null
}

# What a root gets from this machine, as any real machine would have it.
configure_root()
{
	local r=$1 suite=$2
	cp /etc/resolv.conf "$r/etc/resolv.conf"
	printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
	mkdir -p "$r/usr/local/share/ca-certificates" "$r/etc/ssl/certs"
	if [ -d /usr/local/share/ca-certificates ]; then
		cp -r /usr/local/share/ca-certificates/. "$r/usr/local/share/ca-certificates/"
	fi
	if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
		cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
	fi
	echo "deb $mirror $suite main" >"$r/etc/apt/sources.list"
	# Testing's Release file carries a Valid-Until date a week ahead; a
	# mirror snapshot (or a machine clock) past it must not stop apt.
	echo 'Acquire::Check-Valid-Until "false";' >"$r/etc/apt/apt.conf.d/99twilio-outbox"
	# Packages start no services in the root (a Debian cluster, say).
	printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
	chmod 755 "$r/usr/sbin/policy-rc.d"
}

# The provisioned root of major version $1, built once into
# $cache/<suite>-pg<NN>.tar.gz: debootstrap, then test/setup.sh's own
# need_packages (so the list of packages lives in one place).
provision()
{
	local v=$1 suite tarball build script log
	suite=$(suite_of "$v")
	tarball=$cache/$suite-pg$v.tar.gz
	[ -s "$tarball" ] && return 0
	mkdir -p "$cache"
	build=$(mktemp -d "$cache/build-$suite.XXXXXX")
	log=$build/provision.log
	echo "== PostgreSQL $v: building the Debian $suite root (debootstrap, apt-get; a few minutes, once)"
	# debootstrap names a suite by the script of its release; a new testing
	# release uses sid's.
	script=/usr/share/debootstrap/scripts/$suite
	[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
	if ! debootstrap --variant=minbase "$suite" "$build/root" "$mirror" "$script" >"$log" 2>&1; then
		tail -20 "$log" >&2
		safe_remove "$build"
		return 1
	fi
	configure_root "$build/root" "$suite"
	cp "$top/test/setup.sh" "$build/root/tmp/setup.sh"
	if ! in_root "$build/root" "PG_MAJOR=$v; . /tmp/setup.sh && need_packages &&
		apt-get clean && rm -rf /var/lib/apt/lists/* /tmp/setup.sh" >>"$log" 2>&1; then
		tail -20 "$log" >&2
		safe_remove "$build"
		return 1
	fi
	if [ -n "$(mounts_below "$build/root")" ]; then
		echo "versions.sh: mounts left in $build/root" >&2
		return 1
	fi
	tar --numeric-owner -C "$build/root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
	safe_remove "$build"
}

mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

logs=$cache/logs/$(date -u +%Y%m%dT%H%M%SZ)
declare -A line took where
run=
cleanup() { [ -n "$run" ] && safe_remove "$run"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# The contract test's tools (Prism, Twilio's spec), fetched once here and
# copied into each root rather than fetched again there.
tools_dir=
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$logs"
	(
		. "$top/test/setup.sh"
		test_tools >/dev/null && dirname "$(dirname "$(dirname "$TWILIO_OUTBOX_PRISM")")" >"$logs/.prism"
	) || echo "versions.sh: the contract test's tools are missing; the roots will fetch them" >&2
	tools_dir=$(cat "$logs/.prism" 2>/dev/null)
	rm -f "$logs/.prism"
else
	logs=$(mktemp -d /tmp/twilio_outbox_versions.XXXXXX)
fi

for v in $versions; do
	suite=$(suite_of "$v")
	t0=$(date +%s)
	out=$logs/pg$v.log
	if [ "$suite" = "$host_suite" ]; then
		where[$v]="this machine, Debian $suite"
		echo "== PostgreSQL $v: make test on this machine"
		(exec 9>"$lock" && flock 9 && TWILIO_OUTBOX_TEST_LOCK_HELD=1 PG_MAJOR=$v bash "$top/test/run_all.sh") 2>&1 | tee "$out"
	elif [ "$(id -u)" != 0 ]; then
		where[$v]="Debian $suite root: needs root"
		echo "versions.sh: PostgreSQL $v runs in a Debian $suite root: run as root" | tee "$out" >&2
	elif ! provision "$v" 2>&1 | tee "$out"; then
		where[$v]="Debian $suite root: could not build it"
	else
		where[$v]="Debian $suite root"
		run=$(mktemp -d "$cache/run-$suite.XXXXXX")
		echo "== PostgreSQL $v: make test in a fresh Debian $suite root ($run)"
		mkdir -p "$run/root"
		tar --numeric-owner -C "$run/root" -xzf "$cache/$suite-pg$v.tar.gz"
		configure_root "$run/root" "$suite"
		mkdir -p "$run/root/root/twilio_outbox" "$run/root/var/cache/twilio_outbox"
		tar -C "$top" --exclude=.git --exclude=node_modules --exclude=tmp_check \
			--exclude=tmp_check_iso --exclude=results --exclude=output_iso \
			--exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=receiver/twilio_outbox_receiver -cf - . |
			tar -C "$run/root/root/twilio_outbox" -xf -
		if [ -n "$tools_dir" ]; then
			cp -a "$tools_dir" "$run/root/var/cache/twilio_outbox/"
			cp -a /var/cache/twilio_outbox/twilio_api_v2010.*.json "$run/root/var/cache/twilio_outbox/" 2>/dev/null
		fi
		(
			exec 9>"$lock"
			flock 9
			in_root "$run/root" "cd /root/twilio_outbox && PG_MAJOR=$v make test"
		) 2>&1 | tee -a "$out"
		safe_remove "$run" && run=
	fi
	took[$v]=$(($(date +%s) - t0))
	line[$v]=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -1)
done

echo
echo "== make test-versions (logs: $logs)"
status=0
for v in $versions; do
	l=${line[$v]:-0 passed, 1 failed}
	[[ $l == *" 0 failed" ]] || status=1
	printf 'PostgreSQL %s: %s  (%s, %s)\n' "$v" "$l" "${where[$v]}" "$(mmss "${took[$v]}")"
done
exit $status
