#!/usr/bin/env bash
# make e2e-local: the e2e suite (test/e2e, the same one `make e2e` runs on
# kind or minikube) against a real single-node Kubernetes 1.34 brought up on
# this machine, offline, inside a private network namespace
# (hack/localkube), then torn down, whatever happens.
#
#   1. build the node's components (cached after the first run), the
#      orchestrator image from the project's Dockerfile (hack/image), the
#      test agent's image from test/e2e/agent/Dockerfile on the same local
#      Go builder image, and the bundled database's PostgreSQL image from
#      Debian's packages (hack/postgres; cached after the first run);
#   2. bring the node up; push the images into its loopback registry;
#   3. run the compiled e2e suite inside the namespace; its Skaffold case
#      builds with buildah (profile "buildah": no Docker engine here) and
#      pushes to the node's registry;
#   4. take the node down, and bring up another whose kubelet runs with
#      localStorageCapacityIsolation: false (as kind's does on rootless
#      Docker or Podman: no ephemeral-storage on the node); push the image
#      again and run the one case for it, helm install --wait with the
#      default values and helm test (about a minute, most of it the two
#      bring-ups and teardowns);
#   5. take that node down.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$SECONDS
# shellcheck source=hack/localkube/lib.sh
source "$root/hack/localkube/lib.sh" # STATE, REGISTRY
image=localhost/orchestrator:e2e
agent_image=localhost/orchestrator-e2e-agent:e2e
postgres_image=localhost/orchestrator-postgres:15
step() { printf '\n== %s (+%ds)\n' "$*" "$((SECONDS - started))"; }

step "building the node's components"
"$root/hack/localkube/build.sh"

step "building the image from the Dockerfile"
IMAGE=$image "$root/hack/image/build.sh"

# buildah and podman use the project's storage (where build.sh built), and
# its builder image (BUILDER_IMAGE, which build.sh made if it was missing).
# shellcheck source=hack/image/env.sh
source "$root/hack/image/env.sh"

step "building the test agent's image from test/e2e/agent/Dockerfile"
buildah bud --isolation chroot --format docker --layers --pull=never --quiet \
	--build-arg GO_IMAGE="$BUILDER_IMAGE" \
	--tag "$agent_image" --file "$root/test/e2e/agent/Dockerfile" "$root" >/dev/null
echo "built $agent_image"
step "building the PostgreSQL image from Debian's packages"
POSTGRES_IMAGE=$postgres_image "$root/hack/postgres/build.sh"

# The suite is compiled here, with the module proxy in reach; inside the
# namespace there is no network but the node's.
go test -tags e2e -c -o "$root/.cache/e2e.test" "$root/test/e2e"

cleanup() {
	local rc=$?
	step "taking the node down"
	"$root/hack/localkube/down.sh" || rc=1
	printf '\ne2e-local %s in %ds\n' "$([[ $rc == 0 ]] && echo passed || echo FAILED)" "$((SECONDS - started))"
	exit "$rc"
}
trap cleanup EXIT

# node_up [VAR=value...]: bring a node up (up.sh with those settings) and
# point buildah at its registry; the state, and so registries.conf, is new
# each time.
node_up() {
	local t0=$SECONDS
	env "$@" "$root/hack/localkube/up.sh"
	echo "node up in $((SECONDS - t0))s"
	export CONTAINERS_REGISTRIES_CONF=$STATE/registries.conf
	cat >"$CONTAINERS_REGISTRIES_CONF" <<CONF
# The node's loopback registry speaks plain HTTP.
[[registry]]
location = "$REGISTRY"
insecure = true
CONF
}

# push IMAGE NAME: into the node's registry as $REGISTRY/NAME:e2e.
push() {
	"$root/hack/localkube/exec.sh" buildah push --quiet --tls-verify=false "$1" "docker://$REGISTRY/$2:e2e"
}

step "bringing the node up"
node_up

step "pushing $image, $agent_image and $postgres_image to the node's registry"
push "$image" orchestrator
push "$agent_image" orchestrator-e2e-agent
push "$postgres_image" orchestrator-postgres

step "running the e2e suite"
cd "$root/test/e2e"
"$root/hack/localkube/exec.sh" env \
	E2E_IMAGE="$REGISTRY/orchestrator:e2e" \
	E2E_AGENT_IMAGE="$REGISTRY/orchestrator-e2e-agent:e2e" \
	E2E_POSTGRES_IMAGE="$REGISTRY/orchestrator-postgres:e2e" \
	GO_IMAGE="$BUILDER_IMAGE" \
	E2E_SKAFFOLD_PROFILE=buildah \
	E2E_SKAFFOLD_ARGS="--default-repo=$REGISTRY --insecure-registry=$REGISTRY" \
	"$root/.cache/e2e.test" -test.v -test.count=1 -test.timeout=40m

step "taking the node down"
"$root/hack/localkube/down.sh"

step "bringing up a node without local storage capacity isolation (no ephemeral-storage)"
node_up LOCAL_STORAGE_CAPACITY_ISOLATION=false

step "pushing $image to the node's registry"
push "$image" orchestrator

step "running the chart's defaults on it: helm install --wait, helm test"
only=TestDefaultsOnANodeWithoutEphemeralStorage
"$root/hack/localkube/exec.sh" env \
	E2E_IMAGE="$REGISTRY/orchestrator:e2e" \
	E2E_NODE_WITHOUT_EPHEMERAL_STORAGE=1 \
	"$root/.cache/e2e.test" -test.v -test.count=1 -test.timeout=10m -test.run "^$only\$" |
	tee "$root/.cache/e2e-nostorage.log"
# A renamed case would match nothing, and a skipped one prove nothing.
grep -q -- "^--- PASS: $only " "$root/.cache/e2e-nostorage.log" || { echo "$only did not run and pass" >&2; exit 1; }
