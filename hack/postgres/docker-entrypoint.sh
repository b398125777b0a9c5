#!/usr/bin/env bash
# The entrypoint of the PostgreSQL image built by hack/postgres/build.sh. It
# keeps the contract of the official image (docker.io/library/postgres), so
# that the chart runs either one with the same values:
#
#   POSTGRES_PASSWORD         the superuser's password (required unless
#                             POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER             the superuser's name (default postgres)
#   POSTGRES_DB               a database made at first start (default: POSTGRES_USER)
#   POSTGRES_INITDB_ARGS      more arguments for initdb
#   POSTGRES_HOST_AUTH_METHOD pg_hba.conf method for network connections
#                             (default scram-sha-256)
#   each of the first four also as <NAME>_FILE, a file holding the value
#   (a mounted Secret); setting both forms is an error
#   PGDATA                    the data directory (default /var/lib/postgresql/data);
#                             initialised when it holds no cluster, used as
#                             it is otherwise: the variables above only act
#                             on the first start
#   /docker-entrypoint-initdb.d/*.sql and *.sh run once, after initdb
#
# The server listens on every address (port 5432, or PGPORT); local socket
# connections are trusted, as in the official image. It runs as the user the
# container runs as: 999 (postgres) by default, or any other uid (initdb then
# sees a passwd entry through nss_wrapper, as in the official image); never
# as root. Arguments starting with "-" are passed to postgres; any other
# command runs as given.
set -Eeuo pipefail

# file_env NAME [DEFAULT]: exports NAME from $NAME, or from the file named by
# $NAME_FILE, or DEFAULT; refuses both.
file_env() {
	local name=$1 default=${2:-} file_name="${1}_FILE" value
	if [[ -n ${!name:-} && -n ${!file_name:-} ]]; then
		echo "error: both $name and $file_name are set; they are exclusive" >&2
		exit 1
	fi
	value=$default
	if [[ -n ${!name:-} ]]; then
		value=${!name}
	elif [[ -n ${!file_name:-} ]]; then
		value=$(<"${!file_name}")
	fi
	export "$name=$value"
	unset "$file_name"
}

# wants_help ARGS...: postgres was asked for its help or version, or to print
# a setting: nothing to initialise.
wants_help() {
	local arg
	for arg; do
		case $arg in -'?' | --help | --describe-config | -V | --version | -C) return 0 ;; esac
	done
	return 1
}

# run_initdb: initdb into $PGDATA with the superuser and its password.
run_initdb() {
	local -a args
	read -ra args <<<"${POSTGRES_INITDB_ARGS:-}"
	if ! getent passwd "$(id -u)" >/dev/null; then
		# initdb needs a name for the uid it runs as. For an arbitrary uid
		# (OpenShift, a chart's runAsUser), lend it one for this command only.
		local passwd group
		passwd=$(mktemp) group=$(mktemp)
		cat /etc/passwd >"$passwd"
		echo "postgres:x:$(id -u):$(id -g):PostgreSQL:$PGDATA:/bin/false" >>"$passwd"
		cat /etc/group >"$group"
		getent group "$(id -g)" >/dev/null || echo "postgres:x:$(id -g):" >>"$group"
		LD_PRELOAD=libnss_wrapper.so NSS_WRAPPER_PASSWD=$passwd NSS_WRAPPER_GROUP=$group \
			initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${args[@]}"
		rm -f "$passwd" "$group"
	else
		initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${args[@]}"
	fi
}

# first_start: the cluster, its network settings, the database, the init
# scripts; through a server that listens on the socket only, so nothing from
# the network sees a half-made database.
first_start() {
	if [[ -z $POSTGRES_PASSWORD && $POSTGRES_HOST_AUTH_METHOD != trust ]]; then
		cat >&2 <<-'EOF'
			error: the database is uninitialised and the superuser has no password.
			       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value,
			       or POSTGRES_HOST_AUTH_METHOD=trust to let anyone who can reach the
			       port connect without a password (never outside a throwaway test).
		EOF
		exit 1
	fi
	run_initdb
	printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

	# Clients below (psql, the scripts) reach the temporary server through
	# its socket, whatever PGHOST the container was given.
	local -x PGHOST='' PGHOSTADDR=''
	local port=${PGPORT:-5432}
	pg_ctl --pgdata="$PGDATA" --wait --silent \
		--options="-c listen_addresses='' -p $port" start
	local -a psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --port="$port" --username="$POSTGRES_USER")
	if [[ $POSTGRES_DB != postgres ]]; then
		# A psql variable, quoted by psql: any name is safe.
		"${psql[@]}" --dbname=postgres --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		case $f in
		*.sh)
			echo "running $f"
			# shellcheck source=/dev/null
			if [[ -x $f ]]; then "$f"; else . "$f"; fi
			;;
		*.sql)
			echo "running $f"
			"${psql[@]}" --dbname="$POSTGRES_DB" --file="$f"
			;;
		*) [[ -e $f ]] && echo "ignoring $f" ;;
		esac
	done
	pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
	echo "PostgreSQL init process complete; ready for start up."
}

if [[ ${1:-} == -* ]]; then
	set -- postgres "$@"
fi

if [[ ${1:-} == postgres ]] && ! wants_help "$@"; then
	if [[ $(id -u) == 0 ]]; then
		echo "error: this image runs PostgreSQL as a non-root user only: run it as uid 999 (its default) or another non-root uid" >&2
		exit 1
	fi
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	export POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	export PGDATA=${PGDATA:-/var/lib/postgresql/data}

	# PGDATA may be a fresh volume, or a directory inside one (recommended:
	# a volume's root can hold lost+found, and initdb wants an empty one).
	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA" 2>/dev/null || :
	if [[ -s $PGDATA/PG_VERSION ]]; then
		echo "PostgreSQL database directory $PGDATA holds a cluster; skipping initialisation"
	else
		first_start
	fi
	unset POSTGRES_PASSWORD
fi

exec "$@"
