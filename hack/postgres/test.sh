#!/usr/bin/env bash
# The PostgreSQL image's check (make postgres-image-test): builds it
# (build.sh), then runs it with podman the way the chart's StatefulSet does
# (read-only root, writable socket directory and /tmp, no capabilities, no
# privilege escalation, the password from a mounted file, PGDATA a
# directory inside the volume) and checks, with psql from the host over
# 127.0.0.1 (a network connection, so the password rule applies):
#
#   - the official image's contract: POSTGRES_USER is a superuser with
#     POSTGRES_PASSWORD_FILE's password (stored as SCRAM), POSTGRES_DB
#     exists, a wrong password is refused, the process runs as uid 999;
#   - a stop ends open sessions and exits 0 at once (SIGINT, "fast");
#   - a restart on the existing PGDATA keeps the data and the password it
#     was made with (the variables only act on the first start);
#   - no password on an empty PGDATA: a clear error, no server;
#   - another non-root uid (runAsUser) initialises and serves too.
#
# Environment: as build.sh; MAX_MB (default 250) bounds the image size.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/image/env.sh
source "$here/../image/env.sh"

export POSTGRES_IMAGE=${POSTGRES_IMAGE:-localhost/orchestrator-postgres:15}
MAX_MB=${MAX_MB:-250}
READY_TIMEOUT=60 # seconds
command -v psql >/dev/null || { echo "test.sh: psql not found (apt-get install postgresql-client)" >&2; exit 1; }

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

"$here/build.sh"

size=$(podman image inspect --format '{{.Size}}' "$POSTGRES_IMAGE")
size_mb=$(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }')
((size < MAX_MB * 1000000)) || fail "image is $size_mb MB, over $MAX_MB MB"
ok "size $size_mb MB (limit $MAX_MB MB)"
config=$(podman image inspect --format '{{.Config.User}} {{.Config.StopSignal}}' "$POSTGRES_IMAGE")
[[ $config == "999:999 SIGINT" ]] || fail "image user and stop signal are '$config', want '999:999 SIGINT'"
ok "image user 999:999, stop signal SIGINT"

work=$(mktemp -d "${TMPDIR:-/tmp}/postgres-image-test.XXXXXX")
names=()
cleanup() {
	local rc=$? name
	for name in "${names[@]}"; do
		if ((rc != 0)) && podman container exists "$name"; then
			echo "--- log of $name ---" >&2
			podman logs "$name" >&2 || true
		fi
		podman rm --force --time 0 "$name" >/dev/null 2>&1 || true
	done
	[[ -z ${idle:-} ]] || kill "$idle" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# The volume, and PGDATA a directory inside it, as the chart mounts them.
mkdir -p "$work/volume" "$work/secret"
chown 999:999 "$work/volume"
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$password" >"$work/secret/password" # a trailing newline, as files have
chmod 0444 "$work/secret/password"

# start NAME [podman run options...]: runs the image in the background with
# the restricted settings, the volume and the secret; prints nothing.
start() {
	local name=$1
	shift
	names+=("$name")
	podman run --detach --name "$name" \
		--read-only --read-only-tmpfs=false --tmpfs /run/postgresql:rw,mode=1777 --tmpfs /tmp:rw,mode=1777 \
		--cap-drop ALL --security-opt no-new-privileges \
		--volume "$work/volume:/var/lib/postgresql/data" \
		--volume "$work/secret:/run/secrets/postgresql:ro" \
		--env PGDATA=/var/lib/postgresql/data/pgdata \
		--publish 127.0.0.1::5432 \
		"$@" "$POSTGRES_IMAGE" >/dev/null
}

# wait_ready NAME [USER]: until the server accepts TCP connections; prints
# the host address. As a user that exists: pg_isready does not log in, but
# the server logs a FATAL line for a role it does not know.
wait_ready() {
	local started=$SECONDS
	until podman exec "$1" pg_isready --quiet --host=127.0.0.1 --username="${2:-orchestrator}" 2>/dev/null; do
		[[ $(podman inspect --format '{{.State.Running}}' "$1") == true ]] || fail "$1 exited before it was ready"
		((SECONDS - started < READY_TIMEOUT)) || fail "$1 not ready within ${READY_TIMEOUT}s"
		sleep 0.2
	done
	podman port "$1" 5432/tcp
}

# sql URL QUERY: one query, unaligned, tuples only.
sql() { psql --no-psqlrc --quiet --no-align --tuples-only "$1" --command "$2"; }

url() { echo "postgres://$1:$2@$3/$4?sslmode=disable&connect_timeout=5"; }

first=postgres-image-test-$$-first
start "$first" --env POSTGRES_USER=orchestrator --env POSTGRES_DB=orchestrator \
	--env POSTGRES_PASSWORD_FILE=/run/secrets/postgresql/password
t0=$SECONDS
addr=$(wait_ready "$first")
ok "first start (initdb) ready in $((SECONDS - t0))s at $addr"

db=$(url orchestrator "$password" "$addr" orchestrator)
got=$(sql "$db" "SELECT current_user, current_database(), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
[[ $got == "orchestrator|orchestrator|t" ]] || fail "user|database|superuser = $got, want orchestrator|orchestrator|t"
got=$(sql "$db" "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'orchestrator'")
[[ $got == SCRAM-SHA-256\$ ]] || fail "the password is stored as '$got...', want SCRAM-SHA-256"
ok "POSTGRES_USER orchestrator is a superuser with POSTGRES_PASSWORD_FILE's password (SCRAM), POSTGRES_DB orchestrator exists"
if err=$(sql "$(url orchestrator "wrong-$password" "$addr" orchestrator)" "SELECT 1" 2>&1); then
	fail "a wrong password was accepted"
fi
[[ $err == *"password authentication failed"* ]] || fail "a wrong password failed with '$err', want password authentication failed"
ok "a wrong password is refused over the network"
got=$(sql "$db" "SELECT setting FROM pg_settings WHERE name = 'data_directory'")
[[ $got == /var/lib/postgresql/data/pgdata ]] || fail "data_directory is $got"
ok "PGDATA is the directory inside the volume"

pid=$(podman inspect --format '{{.State.Pid}}' "$first")
status=$(cat "/proc/$pid/status")
field() { awk -v k="$1:" '$1 == k { $1 = ""; print substr($0, 2) }' <<<"$status"; }
[[ $(field Uid) == "999 999 999 999" ]] || fail "process uids: $(field Uid)"
[[ $(field CapEff) == 0000000000000000 ]] || fail "process capabilities: $(field CapEff)"
[[ $(field NoNewPrivs) == 1 ]] || fail "process may gain privileges"
ok "the server runs as uid 999, no capabilities, no_new_privs"

sql "$db" "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives a restart')" >/dev/null

# An idle session, as a connection pool keeps: "smart" shutdown would wait
# for it until the stop timeout kills the server. psql waits on a FIFO this
# shell holds open.
mkfifo "$work/idle"
psql --no-psqlrc --quiet "$db" <"$work/idle" >/dev/null 2>&1 &
idle=$!
exec 3>"$work/idle"
until [[ $(sql "$db" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'") -ge 2 ]]; do sleep 0.1; done
t0=$SECONDS
podman stop --time 20 "$first" >/dev/null
took=$((SECONDS - t0))
code=$(podman inspect --format '{{.State.ExitCode}}' "$first")
((code == 0)) || fail "exit code $code after podman stop, want 0"
((took < 20)) || fail "stop took ${took}s: the open session held the server until the runtime killed it"
grep -q "database system is shut down" <<<"$(podman logs "$first" 2>&1)" || fail "no clean shutdown in the log"
ok "stop with an open session: fast shutdown, exit 0 in ${took}s"
exec 3>&-
wait "$idle" || true
idle=

second=postgres-image-test-$$-second
start "$second" --env POSTGRES_USER=orchestrator --env POSTGRES_DB=orchestrator --env POSTGRES_PASSWORD=another-password
addr=$(wait_ready "$second")
grep -q "holds a cluster; skipping initialisation" <<<"$(podman logs "$second" 2>&1)" || fail "the restart did not reuse PGDATA"
got=$(sql "$(url orchestrator "$password" "$addr" orchestrator)" "SELECT v FROM kept")
[[ $got == "survives a restart" ]] || fail "after the restart the table holds '$got'"
if sql "$(url orchestrator another-password "$addr" orchestrator)" "SELECT 1" >/dev/null 2>&1; then
	fail "the restart changed the password: the variables must act on the first start only"
fi
ok "restart on the existing PGDATA: data kept, the first password still the one"
podman stop --time 20 "$second" >/dev/null

rm -rf "${work:?}/volume/pgdata"
third=postgres-image-test-$$-nopassword
start "$third" --env POSTGRES_USER=orchestrator
for _ in $(seq 100); do
	[[ $(podman inspect --format '{{.State.Running}}' "$third") == true ]] || break
	sleep 0.1
done
[[ $(podman inspect --format '{{.State.Running}} {{.State.ExitCode}}' "$third") == "false 1" ]] ||
	fail "without a password: $(podman inspect --format 'running {{.State.Running}}, exit {{.State.ExitCode}}' "$third"), want exit 1"
grep -q "the superuser has no password" <<<"$(podman logs "$third" 2>&1)" || fail "without a password: no clear error in the log"
[[ ! -e $work/volume/pgdata/PG_VERSION ]] || fail "without a password: initdb ran anyway"
ok "no password on an empty PGDATA: exit 1, says so, initialises nothing"

# Another uid; init scripts; a PGHOST that the init steps must not follow.
rm -rf "${work:?}/volume/pgdata"
chmod 0777 "$work/volume"
mkdir -p "$work/initdb"
echo "CREATE TABLE from_sql (v int); INSERT INTO from_sql VALUES (1);" >"$work/initdb/1.sql"
# shellcheck disable=SC2016 # expanded by the script, in the container
echo 'psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "INSERT INTO from_sql VALUES (2)"' >"$work/initdb/2.sh"
chmod -R a+rX "$work/initdb"
fourth=postgres-image-test-$$-uid
start "$fourth" --user 10001:10001 --env POSTGRES_PASSWORD_FILE=/run/secrets/postgresql/password \
	--env PGHOST=192.0.2.1 --volume "$work/initdb:/docker-entrypoint-initdb.d:ro"
addr=$(wait_ready "$fourth" postgres)
got=$(sql "$(url postgres "$password" "$addr" postgres)" "SELECT current_user, sum(v) FROM from_sql")
[[ $got == "postgres|3" ]] || fail "as uid 10001 with init scripts: user|sum = $got, want postgres|3"
ok "as uid 10001 (no passwd entry): initialised, ran the .sql and .sh init scripts, serves; user and database default to postgres"

echo "PASS $POSTGRES_IMAGE: $size_mb MB"
