#!/usr/bin/env bash
# Builds what the localkube node runs into $TOOLS/localkube/bin (TOOLS
# defaults to <repo>/.tools), from the Go module proxy only:
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl      from k8s.io/kubernetes $KUBE_VERSION (a generated module)
#   coredns      github.com/coredns/coredns $COREDNS_VERSION
#   crane        github.com/google/go-containerregistry/cmd/crane $CRANE_VERSION
#   pause        hack/localkube/pause, and $TOOLS/localkube/images/pause.tar,
#                the sandbox image as a docker-archive for `ctr images import`
#
#   hack/localkube/build.sh [component...]     none named: all of them
#
# A component whose binary and stamp ($TOOLS/localkube/bin/.NAME-VERSION)
# exist is skipped, so a second run takes a second. Versions: versions.env.
# The Debian packages in $DEB_PACKAGES must be installed (`make system-deps`):
# this script only checks, it does not run apt-get, because installing
# etcd-server or containerd on a host without a policy-rc.d starts their
# system services.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

KUBE_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
ALL=("${KUBE_COMPONENTS[@]}" coredns crane pause)

# check_packages: every Debian package the node needs is installed.
check_packages() {
  local p missing=()
  for p in $DEB_PACKAGES; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  die "missing Debian packages: ${missing[*]}
  install them (as root): apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
}

WORK=$(mktemp -d)
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$LK_BIN" "$LK_IMAGES"
# Static binaries with no local paths in them, like upstream release builds.
# (-trimpath on each command: setting GOFLAGS would hide a `go env -w` one.)
export CGO_ENABLED=0

# mod_field MODULE@VERSION FIELD: download the module, print a field of
# `go mod download -json` (Dir, GoMod, Time). Run outside any module.
mod_field() {
  (cd "$WORK" && go mod download -json "$1") | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p"
}

# kube_module: a throwaway module that requires k8s.io/kubernetes. Its go.mod
# replaces each staging module with `=> ./staging/src/...`, which only
# resolves inside a kubernetes checkout; point each at its tagged release
# instead. The go and godebug lines are copied too: godebug only takes effect
# in the main module, and kubernetes is tested with default=go1.24.
KUBE_MOD=$WORK/kube
kube_module() {
  [ -f "$KUBE_MOD/go.sum" ] && return
  local gomod n
  gomod=$(mod_field "k8s.io/kubernetes@$KUBE_VERSION" GoMod)
  mkdir -p "$KUBE_MOD"
  {
    echo "module localkube.invalid/build"
    grep -E '^(go|godebug) ' "$gomod"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo "replace ("
    sed -n "s|^[[:space:]]*\(k8s.io/[^ ]*\) => \./staging/.*|\t\1 => \1 $KUBE_STAGING_VERSION|p" "$gomod"
    echo ")"
  } >"$KUBE_MOD/go.mod"
  n=$(grep -c " => k8s.io/" "$KUBE_MOD/go.mod")
  [ "$n" -gt 0 ] || die "no staging replace lines in $gomod"
  log "kubernetes $KUBE_VERSION: $n staging modules pinned to $KUBE_STAGING_VERSION"
  # An explicit @version on each package: without it `go get` upgrades
  # k8s.io/kubernetes to the newest release.
  local pkgs=() c
  for c in "${KUBE_COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c@$KUBE_VERSION"); done
  if ! (cd "$KUBE_MOD" && go get "${pkgs[@]}") >"$WORK/go-get.log" 2>&1; then
    cat "$WORK/go-get.log" >&2
    die "resolving the modules of kubernetes $KUBE_VERSION failed"
  fi
}

# kube_ldflags: what kubernetes' hack/lib/version.sh stamps on a release,
# for both version packages (the client's and the components'), with the
# module's publication time as the build date so rebuilds are identical.
kube_ldflags() {
  local v=${KUBE_VERSION#v} date pkg flags="-s -w"
  date=$(mod_field "k8s.io/kubernetes@$KUBE_VERSION" Time)
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=${v%%.*}"
    flags+=" -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=archive"
    flags+=" -X $pkg.buildDate=$date"
  done
  echo "$flags"
}

build_kube() {
  kube_module
  (cd "$KUBE_MOD" && go build -trimpath -ldflags "$(kube_ldflags)" -o "$LK_BIN/$1" "k8s.io/kubernetes/cmd/$1")
}

build_coredns() {
  GOBIN=$LK_BIN go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

build_crane() {
  GOBIN=$LK_BIN go install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
}

# build_pause: the binary, then a one-layer FROM-scratch image of it saved as
# a docker-archive (which keeps the full image name, so `ctr images import`
# needs no renaming). buildah runs on a private, throwaway vfs store: it
# neither needs nor touches the project's image store or any daemon.
build_pause() {
  (cd "$REPO" && go build -trimpath -ldflags "-s -w" -o "$LK_BIN/pause" ./hack/localkube/pause)
  local b=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs) ctr
  ctr=$("${b[@]}" from --quiet scratch)
  "${b[@]}" copy --quiet "$ctr" "$LK_BIN/pause" /pause >/dev/null
  "${b[@]}" config --entrypoint '["/pause"]' --user 65535:65535 \
    --os linux --arch "$(go env GOARCH)" --label org.opencontainers.image.title=localkube-pause "$ctr"
  "${b[@]}" commit --quiet --format docker --timestamp 0 "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -f "$LK_IMAGES/pause.tar"
  "${b[@]}" push --quiet "$PAUSE_IMAGE" "docker-archive:$LK_IMAGES/pause.tar:$PAUSE_IMAGE"
  "${b[@]}" rm "$ctr" >/dev/null
}

# pin NAME: the version a component's stamp names. The pause stamp also
# carries a checksum of its source, so an edit rebuilds it.
pin() {
  case $1 in
    coredns) echo "$COREDNS_VERSION" ;;
    crane) echo "$CRANE_VERSION" ;;
    pause) echo "${PAUSE_IMAGE##*:}-$(sha256sum "$LK_DIR/pause/main.go" | cut -c1-12)" ;;
    *) echo "$KUBE_VERSION" ;;
  esac
}

installed() {
  [ -e "$LK_BIN/.$1-$(pin "$1")" ] && [ -x "$LK_BIN/$1" ] || return 1
  [ "$1" != pause ] || [ -s "$LK_IMAGES/pause.tar" ]
}

show_version() {
  case $1 in
    kubectl) echo "kubectl $("$LK_BIN/kubectl" version --client -o yaml | sed -n 's/^  gitVersion: //p')" ;;
    coredns) "$LK_BIN/coredns" -version | sed -n 1p ;; # sed reads it all: head would SIGPIPE coredns under pipefail
    crane) echo "crane $("$LK_BIN/crane" version)" ;;
    pause) echo "pause $(pin pause) image $PAUSE_IMAGE in $LK_IMAGES/pause.tar" ;;
    *) echo "$1 $("$LK_BIN/$1" --version)" ;;
  esac
}

components=("$@")
[ $# -gt 0 ] || components=("${ALL[@]}")
for c in "${components[@]}"; do
  [[ " ${ALL[*]} " == *" $c "* ]] || { echo "unknown component: $c (known: ${ALL[*]})" >&2; exit 2; }
done
check_packages
command -v go >/dev/null || die "go not found"

timings=()
total=$SECONDS
for c in "${components[@]}"; do
  v=$(pin "$c")
  if installed "$c"; then
    log "$c $v: already built"
    continue
  fi
  log "$c $v: building"
  start=$SECONDS
  case $c in
    kube-*|kubelet|kubectl) build_kube "$c" ;;
    *) "build_$c" ;;
  esac
  rm -f "$LK_BIN/.$c-"*
  touch "$LK_BIN/.$c-$v"
  timings+=("$c $((SECONDS - start))s")
done

echo "--- versions ($LK_BIN)"
for c in "${components[@]}"; do show_version "$c"; done
if [ ${#timings[@]} -gt 0 ]; then
  echo "--- build times (each includes whatever it was first to download or compile)"
  printf '%s\n' "${timings[@]}" "total $((SECONDS - total))s"
fi
