#!/usr/bin/env bash
# Builds the PostgreSQL image (build.sh) and pushes it into the registry of
# the local node that hack/localkube/up.sh brought up (make
# postgres-image-load), as hack/e2e-local.sh does with the orchestrator's
# image. The chart then runs it with:
#
#   --set postgresql.image.repository=127.0.0.1:5000/orchestrator-postgres
#   --set postgresql.image.tag=15
#
# Environment: as build.sh; TAG (default 15), the tag in the node's registry.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/localkube/lib.sh
source "$here/../localkube/lib.sh" # REGISTRY, STATE
[[ -r $STATE/env ]] || { echo "load.sh: no local node is up: hack/localkube/up.sh first" >&2; exit 1; }
POSTGRES_IMAGE=${POSTGRES_IMAGE:-localhost/orchestrator-postgres:15}
TAG=${TAG:-15}

POSTGRES_IMAGE=$POSTGRES_IMAGE "$here/build.sh"
# shellcheck source=hack/image/env.sh
source "$here/../image/env.sh"
"$here/../localkube/exec.sh" buildah push --quiet --tls-verify=false "$POSTGRES_IMAGE" "docker://$REGISTRY/orchestrator-postgres:$TAG"
echo "pushed $POSTGRES_IMAGE to $REGISTRY/orchestrator-postgres:$TAG; install with"
echo "  --set postgresql.enabled=true --set postgresql.image.repository=$REGISTRY/orchestrator-postgres --set postgresql.image.tag=$TAG"
