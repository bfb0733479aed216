# Shared by test/run_all.sh (make test), test/demo.sh (make demo), the other
# scripts in test/ and bench/: install what is missing on a Debian bookworm
# machine (or trixie, forky: PG_MAJOR below), build and install the
# extension, fetch the test tools.  Sourced,
# not run.

# The PostgreSQL major version to build and test against: 15 (Debian
# bookworm's) unless PG_MAJOR says otherwise (test/versions.sh sets 17 and 18
# inside Debian trixie and forky roots).
PG_MAJOR=${PG_MAJOR:-15}
case $PG_MAJOR in
15 | 17 | 18) ;;
*) echo "PG_MAJOR=$PG_MAJOR: twilio_outbox supports PostgreSQL 15, 17 and 18" >&2; exit 2 ;;
esac
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PGXS_DIR=/usr/lib/postgresql/$PG_MAJOR/lib/pgxs

# Every server these scripts talk to is one they started themselves: the
# caller's libpq settings (PGHOST, PGPORT, PGDATABASE, PGUSER, PGOPTIONS,
# PGSERVICE, PGPASSFILE and the rest) must neither steer them elsewhere nor
# change their sessions.
unset $(compgen -e | grep -E '^PG[A-Z]+$')
# The Python stand-in and helpers leave no __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
# Clusters these scripts start (initdb, pg_regress's temporary instance) are
# UTF-8 whatever the caller's locale: a bare machine's is C, which would
# make them SQL_ASCII.  C.UTF-8 ships with Debian's libc.  LANG as well as
# LC_ALL: pg_regress unsets LC_ALL before its initdb.
unset $(compgen -e | grep -E '^LC_[A-Z]+$') LANGUAGE
export LANG=C.UTF-8 LC_ALL=C.UTF-8

# take_test_lock [FD]: hold /tmp/twilio_outbox_test.lock on file descriptor
# FD (default 9) until the script exits or releases it (flock -u FD).
# Every script that installs the extension or tests what is installed takes
# it, so that two checkouts on one machine never install over a library the
# other is testing; a second one waits, and says so.  Already held for us
# when TWILIO_OUTBOX_TEST_LOCK_HELD=1 (test/versions.sh) or when one of our
# ancestors holds it (`flock /tmp/twilio_outbox_test.lock make bench`, or
# make test running a script that takes it too): a second open of the file
# would otherwise wait for itself.
lock_held_by_ancestor()
{
	local ino holders p h
	ino=$(stat -c %i /tmp/twilio_outbox_test.lock 2>/dev/null) || return 1
	# /proc/locks: "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> ..."
	# (a waiter's line has "->" in the second field)
	holders=$(awk -v ino="$ino" '$2 == "FLOCK" { n = split($6, f, ":"); if (f[n] == ino) print $5 }' /proc/locks)
	p=$$
	while [ -n "$p" ] && [ "$p" -gt 1 ]; do
		for h in $holders; do [ "$h" = "$p" ] && return 0; done
		p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
	done
	return 1
}
take_test_lock()
{
	local fd=${1:-9}
	eval "exec $fd>/tmp/twilio_outbox_test.lock"
	[ "${TWILIO_OUTBOX_TEST_LOCK_HELD:-0}" = 1 ] && return 0
	if ! flock -n "$fd" && ! lock_held_by_ancestor; then
		echo "== waiting for /tmp/twilio_outbox_test.lock (another test run on this machine)" >&2
		flock "$fd"
	fi
	export TWILIO_OUTBOX_TEST_LOCK_HELD=1
}

# Debian packages the project needs; tools that may come from elsewhere
# (node and npm, say) count as present when their command is.
need_packages()
{
	local missing=() pkg cmd
	for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libcurl4-openssl-dev libpq-dev libmicrohttpd-dev \
		postgresql-$PG_MAJOR-cron postgresql-$PG_MAJOR-pgtap libtap-parser-sourcehandler-pgtap-perl \
		libipc-run-perl "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$pkg")
	done
	for cmd in make:make gcc:gcc python3:python3 curl:curl node:nodejs npm:npm; do
		command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd#*:}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" != 0 ]; then
		echo "missing packages: ${missing[*]} (run as root, or apt-get install them)" >&2
		return 1
	fi
	echo "== installing packages with apt-get (a minute or two): ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || return 1
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
	# The Debian package starts a cluster of its own; the tests do not use it.
	if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q "^$PG_MAJOR main .* online"; then
		pg_ctlcluster "$PG_MAJOR" main stop || true
	fi
}

build_and_install()
{
	echo "== building and installing twilio_outbox"
	local sudo= ext
	make -s -C "$1" PG_CONFIG="$PG_BIN/pg_config" all
	[ "$(id -u)" = 0 ] || sudo=sudo
	# Scripts another checkout installed (a version this one does not
	# ship) would be taken by CREATE EXTENSION: only this tree's count.
	ext=$("$PG_BIN/pg_config" --sharedir)/extension
	$sudo rm -f "$ext"/twilio_outbox--*.sql
	$sudo make -s -C "$1" PG_CONFIG="$PG_BIN/pg_config" install
}

# Run a command as the unprivileged postgres user when we are root
# (initdb refuses root), as ourselves otherwise.  PostgreSQL's programs
# return to the directory they started in and complain when they cannot, so
# as root they start from / unless the postgres user can enter the current
# directory (a source tree under /root, mode 700, it cannot).
as_pg_cwd=
as_pg_cwd_ok=
as_pg()
{
	if [ "$(id -u)" = 0 ]; then
		if [ "$PWD" != "$as_pg_cwd" ]; then
			as_pg_cwd=$PWD
			as_pg_cwd_ok=
			runuser -u postgres -- test -x "$PWD" 2>/dev/null && as_pg_cwd_ok=1
		fi
		if [ -n "$as_pg_cwd_ok" ]; then
			runuser -u postgres -- env PATH="$PG_BIN:$PATH" "$@"
		else
			(cd / && runuser -u postgres -- env PATH="$PG_BIN:$PATH" "$@")
		fi
	else
		env PATH="$PG_BIN:$PATH" "$@"
	fi
}

# A working copy the postgres user can write to (results, tmp_check).
work_copy()
{
	local src=$1 dst
	if [ "$(id -u)" != 0 ]; then
		echo "$src"
		return
	fi
	dst=$(mktemp -d /tmp/twilio_outbox.XXXXXX)
	tar -C "$src" --exclude=.git --exclude=node_modules --exclude=tmp_check \
		--exclude=tmp_check_iso --exclude=results --exclude=output_iso -cf - . |
		tar -C "$dst" -xf -
	chown -R postgres "$dst"
	chmod 755 "$dst"
	echo "$dst"
}

# Test tools downloaded from registries are kept here between runs, where
# the postgres user can read them (never under a home directory it may not
# enter): /var/cache/twilio_outbox as root, ~/.cache/twilio_outbox otherwise,
# or $TWILIO_OUTBOX_CACHE.
tools_cache()
{
	local cache
	if [ -n "${TWILIO_OUTBOX_CACHE:-}" ]; then
		cache=$TWILIO_OUTBOX_CACHE
	elif [ "$(id -u)" = 0 ]; then
		cache=/var/cache/twilio_outbox
	else
		cache=${XDG_CACHE_HOME:-$HOME/.cache}/twilio_outbox
	fi
	mkdir -p "$cache" && chmod 755 "$cache" && echo "$cache"
}

# npm ci of one of the project's pinned package sets (package.json and its
# lock file, versions and integrity hashes pinned, in directory $2 of the
# tree) into a directory of the cache named $1-<hash of both files>, kept
# once installed (file $3 inside it says so).  Prints that directory; says
# what it installs ($4) when it has to.
npm_ci_cached()
{
	local name=$1 src=$top/$2 marker=$3 what=$4 cache key dir tmp
	cache=$(tools_cache) || return 1
	key=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
	dir=$cache/$name-$key
	if [ ! -e "$dir/$marker" ]; then
		echo "== installing $what with npm ci, into $dir (a minute or two)" >&2
		tmp=$(mktemp -d "$cache/.$name.XXXXXX") || return 1
		cp "$src/package.json" "$src/package-lock.json" "$tmp/"
		if ! (umask 022 && cd "$tmp" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
			echo "error: npm ci of $2/package.json failed" >&2
			rm -rf "$tmp"
			return 1
		fi
		chmod 755 "$tmp"
		# Another run may have finished first: keep its copy.
		[ -e "$dir/$marker" ] || rm -rf "$dir"
		mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
	fi
	echo "$dir"
}

# Prism, the mock server of the contract test (test/t/010_contract_prism.pl),
# from test/package.json.  Exports TWILIO_OUTBOX_PRISM, its path.
install_prism()
{
	local dir
	dir=$(npm_ci_cached prism test node_modules/.bin/prism "the Prism mock server") || return 1
	export TWILIO_OUTBOX_PRISM=$dir/node_modules/.bin/prism
}

# Twilio's official Node SDK, the signature oracle of
# test/t/016_signature_oracle.pl, from test/twilio_sdk/package.json.
# Exports TWILIO_OUTBOX_TWILIO_SDK, its node_modules.
install_twilio_sdk()
{
	local dir
	dir=$(npm_ci_cached twilio_sdk test/twilio_sdk node_modules/twilio/lib/webhooks/webhooks.js \
		"Twilio's Node SDK (the signature oracle)") || return 1
	export TWILIO_OUTBOX_TWILIO_SDK=$dir/node_modules
}

# Twilio's OpenAPI description of its 2010 API, for the contract test: one
# file of an npm package, both pinned in test/twilio_openapi.pin with the
# file's sha256.  Fetched once with npm pack into the cache; a file whose
# sha256 differs is refused.  Exports TWILIO_OPENAPI_SPEC, its path.
fetch_twilio_spec()
{
	local pin=$top/test/twilio_openapi.pin pkg file sum cache spec tmp got
	pkg=$(sed -n 's/^package=//p' "$pin")
	file=$(sed -n 's/^file=//p' "$pin")
	sum=$(sed -n 's/^sha256=//p' "$pin")
	cache=$(tools_cache) || return 1
	spec=$cache/twilio_api_v2010.$sum.json
	if [ ! -f "$spec" ] || [ "$(sha256sum <"$spec" | cut -d' ' -f1)" != "$sum" ]; then
		echo "== fetching Twilio's OpenAPI spec: $file of npm package $pkg (npm pack)"
		tmp=$(mktemp -d) || return 1
		if ! (cd "$tmp" && npm pack "$pkg" --silent >/dev/null &&
			tar -xzf ./*.tgz "package/$file"); then
			echo "error: could not fetch $file from npm package $pkg" >&2
			rm -rf "$tmp"
			return 1
		fi
		got=$(sha256sum <"$tmp/package/$file" | cut -d' ' -f1)
		if [ "$got" != "$sum" ]; then
			echo "error: $file of $pkg has sha256 $got, but test/twilio_openapi.pin pins $sum: refusing it" >&2
			rm -rf "$tmp"
			return 1
		fi
		install -m 644 "$tmp/package/$file" "$spec.$$" && mv -f "$spec.$$" "$spec"
		rm -rf "$tmp"
	fi
	export TWILIO_OPENAPI_SPEC=$spec
}

# Both tools of the contract test; a failure is reported loudly here, and the
# contract test then fails too.
test_tools()
{
	local ok=0
	install_prism || ok=1
	fetch_twilio_spec || ok=1
	install_twilio_sdk || ok=1
	install_exporter || ok=1
	[ $ok -eq 0 ] || echo "error: test tools missing: test/t/010_contract_prism.pl, 016_signature_oracle.pl or 019_metrics.pl will fail" >&2
	return $ok
}

# Debian's prometheus-postgres-exporter, which test/t/019_metrics.pl runs
# with contrib/prometheus/queries.yaml (bookworm 0.11, trixie 0.17, forky
# 0.19 when written: the same package name and flags).  Its package enables a service
# that would listen on :9187 with no database to read: a service it
# started here is stopped and disabled again (in test/versions.sh's roots,
# policy-rc.d keeps it from starting at all).
install_exporter()
{
	command -v prometheus-postgres-exporter >/dev/null && return 0
	need_packages prometheus-postgres-exporter || return 1
	if command -v systemctl >/dev/null &&
		systemctl is-enabled --quiet prometheus-postgres-exporter 2>/dev/null; then
		systemctl disable --now prometheus-postgres-exporter >/dev/null 2>&1 || true
	fi
	return 0
}

# A scratch directory for a throwaway cluster and stand-in, owned by the
# postgres user; on exit the cluster is stopped, the stand-in killed and the
# directory removed (KEEP=1 keeps it).  Sets $dir.
scratch=
standin_pid=
receiver_pid=
scratch_cleanup()
{
	[ -n "$scratch" ] || return 0
	# The receiver first: it stops cleanly on SIGTERM while the server is up.
	if [ -n "$receiver_pid" ]; then
		kill "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null
	fi
	[ -f "$scratch/data/postmaster.pid" ] &&
		as_pg pg_ctl -D "$scratch/data" -m fast -t 60 stop >/dev/null 2>&1
	[ -n "$standin_pid" ] && kill "$standin_pid" 2>/dev/null
	[ "${KEEP:-}" = 1 ] || rm -rf "$scratch"
	return 0
}
make_scratch()
{
	scratch=$(mktemp -d "/tmp/twilio_outbox_$1.XXXXXX")
	[ "$(id -u)" = 0 ] && chown postgres "$scratch"
	chmod 755 "$scratch"
	dir=$scratch
	trap scratch_cleanup EXIT
}

# initdb in $dir/data, on a Unix socket in $dir only; further settings come
# on standard input.
init_cluster()
{
	as_pg initdb -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
	{
		printf "listen_addresses = ''\nunix_socket_directories = '%s'\nport = 5432\n" "$dir"
		cat
	} >>"$dir/data/postgresql.conf"
}

# The Twilio stand-in on 127.0.0.1 (a free port); sets $standin_pid and
# $standin_url.
start_standin()
{
	python3 "$top/test/twilio_standin.py" --port 0 --port-file "$dir/standin.port" --quiet &
	standin_pid=$!
	for _ in $(seq 100); do [ -s "$dir/standin.port" ] && break; sleep 0.1; done
	standin_url=http://127.0.0.1:$(cat "$dir/standin.port")
}

# A TCP port nobody listens on now, on 127.0.0.1.
free_port()
{
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The thin receiver (twilio_outbox_receiver, installed beside the server's
# programs) on 127.0.0.1:$1 for the public URL $2, connecting with libpq
# connection string $3; more options after those.  Its log goes to
# $dir/receiver.log.  Sets $receiver_pid; scratch_cleanup stops it.
start_receiver()
{
	local port=$1 public=$2 conninfo=$3
	shift 3
	rm -f "$dir/receiver.port"
	"$PG_BIN/twilio_outbox_receiver" --listen 127.0.0.1 --port "$port" --port-file "$dir/receiver.port" \
		--public-url "$public" --conninfo "$conninfo" "$@" 2>>"$dir/receiver.log" &
	receiver_pid=$!
	for _ in $(seq 100); do
		[ -s "$dir/receiver.port" ] && return 0
		kill -0 "$receiver_pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "error: the receiver did not start; its log:" >&2
	cat "$dir/receiver.log" >&2
	return 1
}
