#!/usr/bin/env bash
# Builds the local Go builder image, $BUILDER_IMAGE
# (localhost/orchestrator-builder:<go version>), without pulling anything:
# an empty image plus this machine's Go toolchain, a busybox shell and CA
# certificates. The Dockerfile's build stage runs in it (GO_IMAGE).
#
# Does nothing if the image exists, unless FORCE=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [[ ${FORCE:-0} != 1 ]] && buildah inspect --type image "$BUILDER_IMAGE" >/dev/null 2>&1; then
	echo "builder image $BUILDER_IMAGE exists (FORCE=1 rebuilds it)"
	exit 0
fi

goroot=$(cd "$ROOT" && go env GOROOT)
goproxy=$(cd "$ROOT" && go env GOPROXY)
[[ -x /bin/busybox ]] || { echo "builder.sh: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || { echo "builder.sh: no CA certificates (apt-get install ca-certificates)" >&2; exit 1; }

ctr=$(buildah from scratch)
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mnt=$(buildah mount "$ctr")

echo "builder image $BUILDER_IMAGE: Go from $goroot, shell from /bin/busybox"
mkdir -p "$mnt"/{bin,etc/ssl/certs,root,usr/local,go/bin,go/src,tmp}
chmod 1777 "$mnt/tmp"
chmod -R 1777 "$mnt/go" # as in the official golang image: any user may build
cp -a "$goroot" "$mnt/usr/local/go"
cp /bin/busybox "$mnt/bin/busybox"
for applet in $(/bin/busybox --list); do
	[[ -e $mnt/bin/$applet ]] || ln -s busybox "$mnt/bin/$applet"
done
cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$mnt/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$mnt/etc/group"
buildah umount "$ctr" >/dev/null

buildah config \
	--env PATH=/usr/local/go/bin:/go/bin:/bin \
	--env HOME=/root \
	--env GOPATH=/go \
	--env GOTOOLCHAIN=local \
	--env GOFLAGS=-buildvcs=false \
	--env GOPROXY="$goproxy" \
	--workingdir /go \
	--cmd /bin/sh \
	--label org.opencontainers.image.title=orchestrator-builder \
	--label org.opencontainers.image.description="Go $GO_VERSION from the build host, busybox, CA certificates" \
	"$ctr"
buildah commit --quiet --rm "$ctr" "$BUILDER_IMAGE" >/dev/null
trap - EXIT
echo "built $BUILDER_IMAGE"
