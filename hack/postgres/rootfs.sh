#!/usr/bin/env bash
# Writes the root filesystem of the PostgreSQL image into DIR (empty or
# missing): Debian bookworm's PostgreSQL 15 from Debian's apt repositories,
# with mmdebstrap, trimmed for a server that only ever runs `postgres`.
#
#   hack/postgres/rootfs.sh DIR
#
# build.sh runs it into a buildah container and caches the result under a
# hash of this file: change the recipe here and the next build redoes it.
#
# What it keeps and drops, and why:
#   - variant "essential" (no apt, no init system), no Recommends;
#   - user and group postgres with the official image's numeric ids, 999:999,
#     made before the packages are unpacked so postgresql-common adopts them
#     rather than picking free ids of its own;
#   - no documentation, manual pages, translations or locale sources (dpkg
#     path-exclude; the copyright files stay, and PostgreSQL's own 1 MB of
#     manual pages, which its update-alternatives links need). C.UTF-8,
#     built into libc, is the locale;
#   - no LLVM: postgresql-15 depends on libllvm14 (110 MB, and libz3 22 MB
#     with it) only for JIT compilation of queries, which loads llvmjit.so on
#     demand. Without it the server runs every query interpreted, which is
#     what an OLTP load of small queries gets anyway (JIT only pays off for
#     long analytic queries): pg_jit_available() is false;
#   - no cluster of postgresql-common's (/etc/postgresql, /var/lib/postgresql/15):
#     the entrypoint runs initdb into $PGDATA, as the official image does;
#   - no snakeoil TLS key (ssl-cert makes one at install; a key baked into an
#     image would be the same for every user of it).
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security).
set -euo pipefail

dir=${1:?usage: hack/postgres/rootfs.sh DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
command -v mmdebstrap >/dev/null ||
	{ echo "rootfs.sh: mmdebstrap not found (apt-get install -y --no-install-recommends mmdebstrap)" >&2; exit 1; }

# Globs for dpkg, not for this shell: quoted.
excludes=(
	'/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'
	'/usr/share/i18n/*' '/usr/share/lintian/*'
	'/usr/lib/x86_64-linux-gnu/libLLVM-14.so*' '/usr/lib/x86_64-linux-gnu/libz3.so*'
	'/usr/lib/postgresql/15/lib/llvmjit*'
	'/usr/lib/postgresql/15/lib/bitcode/*'
)
dpkgopts=()
for path in "${excludes[@]}"; do dpkgopts+=(--dpkgopt="path-exclude=$path"); done
dpkgopts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')

# The hooks run on the host with the new root as $1 (expanded there).
# shellcheck disable=SC2016
add_user='echo "postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" >>"$1/etc/passwd" &&
	echo "postgres:x:999:" >>"$1/etc/group"'
# shellcheck disable=SC2016
finish='rm -rf "$1/etc/postgresql/15" "$1/var/lib/postgresql/15" &&
	rm -f "$1/etc/ssl/private/ssl-cert-snakeoil.key" "$1/etc/ssl/certs/ssl-cert-snakeoil.pem" &&
	rm -rf "$1/var/log/"* "$1/var/cache/debconf/"*-old "$1/var/lib/dpkg/"*-old &&
	mkdir -p "$1/var/lib/postgresql/data" "$1/docker-entrypoint-initdb.d" &&
	chown 999:999 "$1/var/lib/postgresql" "$1/var/lib/postgresql/data" &&
	chmod 1777 "$1/var/lib/postgresql/data"'

mmdebstrap \
	--variant=essential \
	--include=postgresql-15,libnss-wrapper \
	--aptopt='APT::Install-Recommends "false"' \
	"${dpkgopts[@]}" \
	--essential-hook="$add_user" \
	--customize-hook="$finish" \
	bookworm "$dir" \
	"deb $mirror bookworm main" \
	"deb $mirror bookworm-updates main" \
	"deb $security bookworm-security main"

# The socket directory, writable by the server and by any uid the image may
# run as (a pod mounts an emptyDir here when its root filesystem is
# read-only). Made after mmdebstrap, which empties /run when it finishes.
mkdir -p "$dir/run/postgresql"
chown 999:999 "$dir/run/postgresql"
chmod 3777 "$dir/run/postgresql"
