#!/usr/bin/env bash
# Skaffold's custom build command for the "buildah" profile: builds $IMAGE
# from the project's Dockerfile with buildah (build.sh), for hosts without a
# Docker engine, and pushes it when Skaffold asks ($PUSH_IMAGE=true).
# Skaffold sets IMAGE and PUSH_IMAGE; VERSION, COMMIT, BUILD_DATE and
# GO_IMAGE pass through from the environment as for build.sh. A plain-HTTP
# registry needs an insecure entry in registries.conf (see
# CONTAINERS_REGISTRIES_CONF in hack/e2e-local.sh).
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
: "${IMAGE:?Skaffold sets IMAGE}"

"$here/build.sh"
if [[ ${PUSH_IMAGE:-false} == true ]]; then
	# shellcheck source=hack/image/env.sh
	source "$here/env.sh"
	buildah push --quiet "$IMAGE" "docker://$IMAGE"
fi
