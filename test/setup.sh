# Shared by test/run_all.sh (make test) and test/demo.sh (make demo):
# install what is missing on a Debian bookworm machine, build and install
# the extension.  Sourced, not run.

PG_BIN=/usr/lib/postgresql/15/bin
PGXS_DIR=/usr/lib/postgresql/15/lib/pgxs

# Debian packages the project needs; tools that may come from elsewhere
# (node and npm, say) count as present when their command is.
need_packages()
{
	local missing=() pkg cmd
	for pkg in postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev \
		postgresql-15-cron postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl \
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
	echo "== installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# The Debian package starts a cluster of its own; the tests do not use it.
	if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main .* online'; then
		pg_ctlcluster 15 main stop || true
	fi
}

build_and_install()
{
	echo "== building and installing twilio_outbox"
	make -s -C "$1" PG_CONFIG="$PG_BIN/pg_config" all
	if [ "$(id -u)" = 0 ]; then
		make -s -C "$1" PG_CONFIG="$PG_BIN/pg_config" install
	else
		sudo make -s -C "$1" PG_CONFIG="$PG_BIN/pg_config" install
	fi
}

# Run a command as the unprivileged postgres user when we are root
# (initdb refuses root), as ourselves otherwise.
as_pg()
{
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- env PATH="$PG_BIN:$PATH" "$@"
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
	[ -d "$src/test/node_modules" ] && ln -s "$src/test/node_modules" "$dst/test/node_modules"
	chown -R postgres "$dst"
	chmod 755 "$dst"
	echo "$dst"
}

# A scratch directory for a throwaway cluster and stand-in, owned by the
# postgres user; on exit the cluster is stopped, the stand-in killed and the
# directory removed (KEEP=1 keeps it).  Sets $dir.
scratch=
standin_pid=
scratch_cleanup()
{
	[ -n "$scratch" ] || return 0
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
	as_pg initdb -D "$dir/data" -A trust -U postgres >/dev/null
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
