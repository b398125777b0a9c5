#!/usr/bin/env bash
# Builds the project's Dockerfile with buildah, on the local builder image
# (builder.sh), without pulling anything.
#
# Environment: IMAGE (default localhost/orchestrator:dev), VERSION (dev),
# COMMIT (git rev-parse --short HEAD), BUILD_DATE (now, UTC), GO_IMAGE (the
# local builder image, built first if missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

IMAGE=${IMAGE:-localhost/orchestrator:dev}
VERSION=${VERSION:-dev}
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
BUILD_DATE=${BUILD_DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
if [[ -z ${GO_IMAGE:-} ]]; then
	"$ROOT/hack/image/builder.sh"
	GO_IMAGE=$BUILDER_IMAGE
fi

echo "building $IMAGE (version $VERSION, commit $COMMIT) on $GO_IMAGE"
start=$SECONDS
# --format docker keeps HEALTHCHECK, which the OCI format has no field for;
# --layers caches each step, so a rebuild after a code change reuses the
# module download.
buildah bud \
	--isolation chroot \
	--format docker \
	--layers \
	--pull=never \
	--build-arg GO_IMAGE="$GO_IMAGE" \
	--build-arg VERSION="$VERSION" \
	--build-arg COMMIT="$COMMIT" \
	--build-arg BUILD_DATE="$BUILD_DATE" \
	--tag "$IMAGE" \
	--file "$ROOT/Dockerfile" \
	"$ROOT"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE in $((SECONDS - start))s: $(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }') MB"
