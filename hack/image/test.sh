#!/usr/bin/env bash
# The image check CI runs: builds the image (build.sh), then runs it the way
# a restricted Kubernetes pod would (read-only root, no capabilities, no
# privilege escalation) and checks size, user, readiness, the built-in
# probe and health check, /version, and a clean drain on SIGTERM.
#
# Environment: as build.sh; VERSION defaults to a marker value here so the
# /version check proves the build argument reached the binary. MAX_MB
# (default 20) bounds the image size.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
source "$here/env.sh"

export IMAGE=${IMAGE:-localhost/orchestrator:dev}
export VERSION=${VERSION:-0.0.0-imagetest}
MAX_MB=${MAX_MB:-20}
READY_TIMEOUT=30 # seconds

# Podman sets up a systemd timer for the image's HEALTHCHECK; with no systemd
# (as on this host) it logs an error and carries on. Hide that one message.
podman_quiet() { podman "$@" 2> >(grep -v "unable to get systemd connection" >&2); }
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

"$here/build.sh"

# Static checks on the image.
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
size_mb=$(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }')
((size < MAX_MB * 1000000)) || fail "image is $size_mb MB, over $MAX_MB MB"
ok "size $size_mb MB (limit $MAX_MB MB)"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user == 65532:65532 ]] || fail "image user is '$user', want 65532:65532"
ok "image user $user"
label() { podman image inspect --format "{{index .Labels \"org.opencontainers.image.$1\"}}" "$IMAGE"; }
[[ $(label version) == "$VERSION" ]] || fail "label version is '$(label version)', want '$VERSION'"
ok "labels: version $(label version), revision $(label revision), created $(label created)"

# Run it. Not --rm: the exit code must outlive the container; the trap
# removes it on every path, and shows its log when something failed.
name=orchestrator-imagetest-$$
cleanup() {
	local rc=$?
	if ((rc != 0)) && podman container exists "$name"; then
		echo "--- container log ---" >&2
		podman logs "$name" >&2 || true
	fi
	podman rm --force --time 0 "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# --read-only-tmpfs=false: no tmpfs on /tmp, /run, like a pod with
# readOnlyRootFilesystem and no volumes. The health check runs below with
# `podman healthcheck run`.
start_ms=$(date +%s%3N)
podman_quiet run --detach --name "$name" \
	--read-only --read-only-tmpfs=false \
	--cap-drop ALL --security-opt no-new-privileges \
	--env SHUTDOWN_DELAY=1s \
	--publish 127.0.0.1::8080 \
	"$IMAGE" >/dev/null
addr=$(podman port "$name" 8080/tcp) # 127.0.0.1:<free port podman chose>

until curl -fsS --max-time 2 -o /dev/null "http://$addr/ready" 2>/dev/null; do
	[[ $(podman inspect --format '{{.State.Running}}' "$name") == true ]] || fail "container exited before it was ready"
	(($(date +%s%3N) - start_ms < READY_TIMEOUT * 1000)) || fail "/ready did not answer 2xx within ${READY_TIMEOUT}s"
	sleep 0.2
done
ready_ms=$(($(date +%s%3N) - start_ms))
ok "ready after ${ready_ms} ms at http://$addr"

# The process, seen from the host.
pid=$(podman inspect --format '{{.State.Pid}}' "$name")
status=$(cat "/proc/$pid/status")
field() { awk -v k="$1:" '$1 == k { $1 = ""; print substr($0, 2) }' <<<"$status"; }
[[ $(field Uid) == "65532 65532 65532 65532" ]] || fail "process uids: $(field Uid)"
[[ $(field Gid) == "65532 65532 65532 65532" ]] || fail "process gids: $(field Gid)"
[[ $(field CapEff) == 0000000000000000 ]] || fail "process capabilities: $(field CapEff)"
[[ $(field NoNewPrivs) == 1 ]] || fail "process may gain privileges"
ok "process runs as uid/gid 65532, no capabilities, no_new_privs"

podman exec "$name" /orchestrator probe >/dev/null || fail "/orchestrator probe failed in the container"
if podman exec "$name" /orchestrator probe --url http://127.0.0.1:1/ready >/dev/null 2>&1; then
	fail "/orchestrator probe succeeded against a closed port"
fi
ok "/orchestrator probe: 0 when ready, non-zero on a closed port"
podman healthcheck run "$name" >/dev/null || fail "podman healthcheck run: unhealthy"
ok "health check (HEALTHCHECK CMD) healthy"

version=$(curl -fsS --max-time 2 "http://$addr/version")
for want in "\"version\":\"$VERSION\"" "\"commit\":\"$(label revision)\"" "\"build_date\":\"$(label created)\""; do
	[[ $version == *"$want"* ]] || fail "/version is $version, want $want"
done
ok "/version $version"

stop_start=$SECONDS
podman_quiet stop --time 30 "$name" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
((code == 0)) || fail "exit code $code after SIGTERM, want 0 (clean drain)"
ok "SIGTERM: drained and exited 0 in $((SECONDS - stop_start))s"

echo "PASS $IMAGE: $size_mb MB, uid 65532, ready in ${ready_ms} ms"
