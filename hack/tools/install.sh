#!/usr/bin/env bash
# Installs the pinned chart, manifest and lint tools into $TOOLS/bin
# (default <repo>/.tools, gitignored), from the Go module proxy only: no
# release downloads, which this project's machines cannot reach.
#
#   hack/tools/install.sh [tool...]     no tool named: all of them
#
# Tools: helm helm-unittest kubeconform kube-score skaffold actionlint
# golangci-lint schemas. "schemas" writes kubeconform's offline Kubernetes
# schemas for each of $KUBE_VERSIONS into $TOOLS/schemas (hack/kubeschema).
# A tool whose binary and version stamp ($TOOLS/bin/.<tool>-<version>) exist
# is skipped, so a second run costs seconds. helm-unittest is also a helm
# plugin: HELM_PLUGINS=$TOOLS/helm/plugins helm unittest CHART.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
TOOLS=${TOOLS:-$REPO/.tools}
BIN=$TOOLS/bin

HELM_VERSION=v3.22.0
HELM_UNITTEST_VERSION=v1.1.2
KUBECONFORM_VERSION=v0.8.0
KUBE_SCORE_VERSION=v1.20.0
SKAFFOLD_VERSION=v2.16.1
ACTIONLINT_VERSION=v1.7.12
GOLANGCI_LINT_VERSION=v2.15.0
# The newest Kubernetes, the oldest k8s/ targets and the oldest the chart
# supports (hack/kube-versions.env).
# shellcheck source=../kube-versions.env
source "$REPO/hack/kube-versions.env"
KUBE_VERSIONS=${KUBE_VERSIONS:-$KUBE_VERSION $KUBE_VERSION_MANIFESTS_OLDEST $KUBE_VERSION_OLDEST}
ALL=(helm helm-unittest kubeconform kube-score skaffold actionlint golangci-lint schemas)

WORK=$(mktemp -d)
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$BIN"
export GOBIN=$BIN SKAFFOLD_UPDATE_CHECK=false

# mod_field MODULE@VERSION FIELD: download the module, print a field of
# `go mod download -json` (Dir, GoMod). Run outside any module.
mod_field() {
  (cd "$WORK" && go mod download -json "$1") | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p"
}

# build_copy NAME MODULE@VERSION PKG LDFLAGS: for modules with replace
# directives, which `go install pkg@version` refuses: build a copy.
build_copy() {
  local src=$WORK/$1 dir
  dir=$(mod_field "$2" Dir)
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  (cd "$src" && go build -ldflags "$4" -o "$BIN/$1" "$3")
}

install_helm() {
  # Stamp what helm's Makefile stamps on a release: the version, and the
  # Kubernetes version `helm template` assumes (.Capabilities.KubeVersion),
  # taken from the client-go it builds with (v0.37.x -> 1.37); unstamped it is 1.20.
  local gomod minor
  gomod=$(mod_field "helm.sh/helm/v3@$HELM_VERSION" GoMod)
  minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod")
  [ -n "$minor" ] || { echo "no k8s.io/client-go version in $gomod" >&2; return 1; }
  go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

install_helm-unittest() {
  build_copy helm-unittest "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION" ./cmd/helm-unittest \
    "-s -w -X github.com/helm-unittest/helm-unittest/internal/build.version=${HELM_UNITTEST_VERSION#v}"
  # The plugin: plugin.yaml runs $HELM_PLUGIN_DIR/untt-<os>-<arch>.
  local dir=$TOOLS/helm/plugins/unittest os
  os=$(go env GOOS)
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$WORK/helm-unittest/plugin.yaml" "$dir/"
  ln "$BIN/helm-unittest" "$dir/untt-${os/darwin/macos}-$(go env GOARCH)" 2>/dev/null ||
    cp "$BIN/helm-unittest" "$dir/untt-${os/darwin/macos}-$(go env GOARCH)"
}

install_kubeconform() {
  go install -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
}

install_kube-score() {
  go install -ldflags "-s -w -X main.version=${KUBE_SCORE_VERSION#v}" "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
}

install_skaffold() {
  build_copy skaffold "github.com/GoogleContainerTools/skaffold/v2@$SKAFFOLD_VERSION" ./cmd/skaffold \
    "-s -w -X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$SKAFFOLD_VERSION"
}

install_actionlint() {
  go install -ldflags "-s -w" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
}

install_golangci-lint() {
  go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
}

install_schemas() {
  (cd "$REPO" && go build -o "$BIN/kubeschema" ./hack/kubeschema)
  local v dir
  for v in $KUBE_VERSIONS; do
    dir=$(mod_field "k8s.io/kubernetes@$v" Dir)
    rm -rf "$TOOLS/schemas/$v-standalone" "$TOOLS/schemas/$v-standalone-strict"
    "$BIN/kubeschema" -spec "$dir/api/openapi-spec/swagger.json" -version "$v" -out "$TOOLS/schemas"
  done
}

# The version a tool's stamp names; for schemas, the versions and the
# converter's checksum, so a changed converter regenerates them.
pin() {
  case $1 in
    schemas) echo "${KUBE_VERSIONS// /_}-$(sha256sum "$REPO/hack/kubeschema/main.go" | cut -c1-12)" ;;
    *) local var=${1//-/_}; var=${var^^}_VERSION; echo "${!var}" ;;
  esac
}

# installed TOOL: its stamp for the pinned version is there, and so is it.
installed() {
  [ -e "$BIN/.$1-$(pin "$1")" ] || return 1
  if [ "$1" = schemas ]; then
    local v
    for v in $KUBE_VERSIONS; do [ -d "$TOOLS/schemas/$v-standalone-strict" ] || return 1; done
  else
    [ -x "$BIN/$1" ]
  fi
}

show_version() {
  case $1 in
    helm) "$BIN/helm" version --short ;;
    helm-unittest) echo "helm-unittest $(pin helm-unittest)"
      if [ -x "$BIN/helm" ]; then
        HELM_PLUGINS=$TOOLS/helm/plugins "$BIN/helm" plugin list | awk '$1 == "unittest" {print "helm plugin unittest " $2}'
      fi ;;
    kubeconform) echo "kubeconform $("$BIN/kubeconform" -v)" ;;
    kube-score) "$BIN/kube-score" version ;;
    skaffold) echo "skaffold $("$BIN/skaffold" version)" ;;
    actionlint) echo "actionlint $("$BIN/actionlint" -version | sed -n 1p)" ;;
    golangci-lint) "$BIN/golangci-lint" version ;;
    schemas) for v in $KUBE_VERSIONS; do
        echo "schemas $v: $(find "$TOOLS/schemas/$v-standalone-strict" -name '*.json' | wc -l) kinds in $TOOLS/schemas/$v-standalone{,-strict}"
      done ;;
  esac
}

tools=("$@")
[ $# -gt 0 ] || tools=("${ALL[@]}")
for t in "${tools[@]}"; do
  declare -F "install_$t" >/dev/null || { echo "unknown tool: $t (known: ${ALL[*]})" >&2; exit 2; }
done

timings=()
for t in "${tools[@]}"; do
  v=$(pin "$t")
  if installed "$t"; then
    echo "$t $v: already installed"
    continue
  fi
  echo "$t $v: installing"
  start=$SECONDS
  "install_$t"
  rm -f "$BIN/.$t-"*
  touch "$BIN/.$t-$v"
  timings+=("$t $((SECONDS - start))s")
done

echo "--- versions"
for t in "${tools[@]}"; do show_version "$t"; done
if [ ${#timings[@]} -gt 0 ]; then
  echo "--- install times"
  printf '%s\n' "${timings[@]}"
fi
