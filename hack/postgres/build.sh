#!/usr/bin/env bash
# Builds the PostgreSQL image (make postgres-image) with buildah, from
# Debian's packages, pulling nothing:
#
#   1. the root filesystem (rootfs.sh: mmdebstrap, Debian's apt repositories)
#      into an empty buildah container, committed as
#      localhost/orchestrator-postgres-rootfs:<hash of rootfs.sh>. It is kept:
#      later builds reuse it until rootfs.sh changes, or FORCE=1 (which also
#      picks up Debian's updates since);
#   2. Containerfile on top of it: the entrypoint, the user, the defaults.
#
# Environment: POSTGRES_IMAGE (default localhost/orchestrator-postgres:15),
# FORCE=1, and rootfs.sh's DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/image/env.sh
source "$here/../image/env.sh"

POSTGRES_IMAGE=${POSTGRES_IMAGE:-localhost/orchestrator-postgres:15}
base=localhost/orchestrator-postgres-rootfs:$(sha256sum <"$here/rootfs.sh" | cut -c1-12)
started=$SECONDS

if [[ ${FORCE:-0} == 1 ]] || ! buildah inspect --type image "$base" >/dev/null 2>&1; then
	echo "building the root filesystem $base (mmdebstrap, about a minute and a half)"
	ctr=$(buildah from scratch)
	cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
	trap cleanup EXIT
	mnt=$(buildah mount "$ctr")
	"$here/rootfs.sh" "$mnt" >"$ROOT/.cache/postgres-rootfs.log" 2>&1 ||
		{ tail -n 30 "$ROOT/.cache/postgres-rootfs.log" >&2; exit 1; }
	version=$(awk '/^Package: postgresql-15$/ { p = 1 } p && /^Version:/ { print $2; exit }' "$mnt/var/lib/dpkg/status")
	[[ -n $version ]] || { echo "build.sh: postgresql-15 is not installed in the root filesystem" >&2; exit 1; }
	buildah umount "$ctr" >/dev/null
	# The labels describe what is inside, so the Containerfile's layers above
	# stay cached as long as this base does.
	buildah config \
		--label org.opencontainers.image.version="$version" \
		--label org.opencontainers.image.created="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
		"$ctr"
	buildah commit --quiet --rm "$ctr" "$base" >/dev/null
	trap - EXIT
	echo "built $base in $((SECONDS - started))s (log: .cache/postgres-rootfs.log)"
	# Root filesystems of earlier recipes are 200 MB each in the store.
	for old in $(podman images --noheading --format '{{.Repository}}:{{.Tag}}' "${base%:*}"); do
		[[ $old == "$base" ]] || podman rmi "$old" >/dev/null 2>&1 || true
	done
else
	echo "root filesystem $base exists (FORCE=1 rebuilds it)"
fi

# What the image is made of, as a label: an image that has it is up to date.
# (buildah's layer cache gets there too, but takes 20 s with vfs storage.)
inputs=$(cat "$here/Containerfile" "$here/docker-entrypoint.sh" <(echo "$base") | sha256sum | cut -c1-12)
label=io.optiinfra.postgres.inputs
done="built"
if [[ $(podman image inspect --format "{{index .Labels \"$label\"}}" "$POSTGRES_IMAGE" 2>/dev/null) == "$inputs" ]]; then
	done="up to date:"
else
	buildah bud \
		--isolation chroot \
		--layers \
		--pull=never \
		--quiet \
		--build-arg BASE="$base" \
		--label "$label=$inputs" \
		--tag "$POSTGRES_IMAGE" \
		--file "$here/Containerfile" \
		"$here" >/dev/null
fi

size=$(podman image inspect --format '{{.Size}}' "$POSTGRES_IMAGE")
version=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$POSTGRES_IMAGE")
echo "$done $POSTGRES_IMAGE (PostgreSQL $version) in $((SECONDS - started))s: $(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }') MB"
