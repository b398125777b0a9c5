#!/usr/bin/env bash
# Offline checks of skaffold.yaml, for CI: no cluster, no registry, no image
# build, no network.
#
#   hack/skaffold-check.sh [OUTDIR]     OUTDIR default: a new temporary directory
#
# For the base config, every profile (as `skaffold inspect profiles list`
# finds them) and the combinations auto-activation produces (debug+kind, ...):
#   1. `skaffold diagnose --yaml-only` resolves it; the effective config is
#      written to OUTDIR/diagnose-<name>.yaml and must have exactly one
#      deployer (a profile that adds one without removing the other would
#      deploy twice);
#   2. `skaffold render --offline=true --digest-source=tag` renders it without
#      building: OUTDIR/render-<name>.yaml, with the image tag fixed to
#      $TAG so renderings are reproducible; every image must be the built one,
#      but for the bundled PostgreSQL's in the postgres profile, which must be
#      the chart's default;
#   3. hack/tools/kubeconform.sh validates the renderings against Kubernetes
#      $KUBE_VERSION (default: hack/kube-versions.env's), when that script
#      exists (the step says SKIPPED if not).
# Then: the kubeContext activations of the kind and minikube profiles, the
# postgres profile's image variables, and a render with the configured tag
# policy (gitCommit), which must work offline.
#
# Skaffold runs with HOME and KUBECONFIG pointing into a temporary directory,
# so a developer's ~/.skaffold/config (default-repo, local-cluster) or
# current kube-context cannot change the result. Environment: TOOLS (default
# <repo>/.tools; skaffold and helm from $TOOLS/bin), SKAFFOLD, TAG,
# KUBE_VERSION.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${TOOLS:-$ROOT/.tools}
SKAFFOLD=${SKAFFOLD:-$TOOLS/bin/skaffold}
TAG=${TAG:-skaffold-check}
kube_version=${KUBE_VERSION:-}
# shellcheck source=kube-versions.env
source "$ROOT/hack/kube-versions.env"
KUBE_VERSION=${kube_version:-${KUBE_VERSION#v}}
IMAGE=ghcr.io/optiinfra/orchestrator

# Skaffold runs helm (and kubectl kustomize for k8s/) from PATH.
export PATH=$TOOLS/bin:$PATH
export SKAFFOLD_UPDATE_CHECK=false SKAFFOLD_INTERACTIVE=false

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[[ -x $SKAFFOLD ]] || fail "$SKAFFOLD not found: run hack/tools/install.sh skaffold"
command -v helm >/dev/null || fail "helm not on PATH: run hack/tools/install.sh helm"
command -v kubectl >/dev/null || command -v kustomize >/dev/null ||
	fail "neither kubectl nor kustomize on PATH: the manifests profile renders k8s/ with one of them"

out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/skaffold-check.XXXXXX")}
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/skaffold-check-home.XXXXXX")
trap 'rm -rf "$work"' EXIT
# git (the gitCommit tagger) keeps the user's settings, e.g. safe.directory.
export GIT_CONFIG_GLOBAL=${GIT_CONFIG_GLOBAL:-$HOME/.gitconfig}
mkdir -p "$work/home"

# kubeconfig CONTEXT: a kubeconfig whose current context is CONTEXT (no
# cluster behind it: nothing here connects to one).
kubeconfig() {
	cat >"$work/kubeconfig-$1" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {}}]
contexts: [{name: "$1", context: {cluster: none, user: none}}]
current-context: "$1"
YAML
	echo "$work/kubeconfig-$1"
}

# sk KUBECONFIG ARGS...: skaffold, isolated from the caller's home.
sk() {
	local kc=$1
	shift
	(cd "$ROOT" && HOME=$work/home KUBECONFIG=$kc "$SKAFFOLD" "$@")
}

# deployers FILE: the deployers (helm, kubectl, ...) in a diagnose output.
deployers() {
	awk '/^deploy:/ { d = 1; next } /^[^ ]/ { d = 0 }
		d && /^  [a-z]+:/ { k = $1; sub(":", "", k); if (k != "logs" && k != "statusCheck" && k != "statusCheckDeadlineSeconds" && k != "kubeContext" && k != "tolerateFailuresUntilDeadline") print k }' "$1"
}

no_context=$work/no-kubeconfig # does not exist: no current context
mapfile -t profiles < <(sk "$no_context" inspect profiles list --format json |
	grep -o '"name":"[^"]*"' | cut -d'"' -f4)
((${#profiles[@]} > 0)) || fail "skaffold inspect found no profiles"
echo "profiles: ${profiles[*]}"

# The combinations a developer gets from auto-activation: `skaffold debug`
# on kind or minikube, and `skaffold debug -p manifests` (auto-activated
# profiles come first). Written as a+b.
combos=(debug+kind debug+minikube debug+manifests kind+manifests minikube+manifests debug+postgres kind+postgres minikube+postgres)

# The bundled PostgreSQL's image as the chart renders it by default: the
# postgres profile's must be the same.
postgres_image=$(helm template orchestrator "$ROOT/charts/orchestrator" --set postgresql.enabled=true \
	--show-only templates/postgresql-statefulset.yaml | sed -n 's/^ *image: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p')
[[ -n $postgres_image ]] || fail "no image in the chart's postgresql-statefulset.yaml"

# images FILE: the images of a rendering, one per line, sorted.
images() { sed -n 's/^ *image: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$1" | sort -u; }

renderings=()
for name in base "${profiles[@]}" "${combos[@]}"; do
	args=()
	[[ $name == base ]] || args=(--profile "${name//+/,}")

	diag=$out/diagnose-$name.yaml
	sk "$no_context" diagnose --yaml-only "${args[@]}" >"$diag" ||
		fail "skaffold diagnose ${args[*]}"
	mapfile -t ds < <(deployers "$diag")
	((${#ds[@]} == 1)) || fail "$name: want exactly one deployer, got ${#ds[@]} (${ds[*]}) in $diag"
	ok "$name: diagnose resolves; deployer ${ds[*]}"

	file=$out/render-$name.yaml
	sk "$no_context" render --offline=true --digest-source=tag --tag="$TAG" "${args[@]}" --output "$file" ||
		fail "skaffold render ${args[*]}"
	grep -q '^kind: Deployment$' "$file" || fail "$name: no Deployment in $file"
	want_images=$IMAGE:$TAG
	[[ $name != *postgres* ]] || want_images=$(printf '%s\n' "$IMAGE:$TAG" "$postgres_image" | sort -u | paste -sd' ')
	mapfile -t rendered_images < <(images "$file")
	[[ ${rendered_images[*]} == "$want_images" ]] ||
		fail "$name: images in $file are '${rendered_images[*]}', want only $want_images (the build's image, and the chart's PostgreSQL in profile postgres)"
	ok "$name: rendered $(grep -c '^kind:' "$file") objects, images $want_images"
	renderings+=("$file")
done

# The profiles each deploy as meant.
[[ $(deployers "$out/diagnose-base.yaml") == helm ]] || fail "base config must deploy with helm"
[[ $(deployers "$out/diagnose-manifests.yaml") == kubectl ]] || fail "profile manifests must deploy with kubectl only"
grep -q '^kind: Namespace$' "$out/render-manifests.yaml" || fail "profile manifests must render k8s/ (with its Namespace)"
grep -q '^    push: false$' "$out/diagnose-kind.yaml" || fail "profile kind must not push"
grep -q '^    push: false$' "$out/diagnose-minikube.yaml" || fail "profile minikube must not push"
grep -q '^kind: Namespace$' "$out/render-debug+manifests.yaml" || fail "debug+manifests must render k8s/"
grep -q '^  replicas: 1$' "$out/render-debug+kind.yaml" || fail "debug+kind must run one replica"
grep -q '^kind: StatefulSet$' "$out/render-postgres.yaml" || fail "profile postgres must run the bundled PostgreSQL"
grep -q '^  replicas: 2$' "$out/render-postgres.yaml" || fail "profile postgres must run two orchestrator pods"
grep -q 'name: DATABASE_URL_FILE$' "$out/render-postgres.yaml" || fail "profile postgres must point the orchestrator at the database"
grep -q '^kind: StatefulSet$' "$out/render-debug+postgres.yaml" || fail "debug+postgres must keep the bundled PostgreSQL"
[[ $(deployers "$out/diagnose-postgres.yaml") == helm ]] || fail "profile postgres must deploy the chart with helm"
ok "base deploys the chart with helm; manifests deploys k8s/ with kubectl; kind and minikube never push; postgres runs the bundled database"

# The postgres profile takes another image from the environment (a mirror,
# or the one make postgres-image-load pushes where nothing can be pulled).
file=$out/render-postgres-local-image.yaml
(cd "$ROOT" && HOME=$work/home KUBECONFIG=$no_context POSTGRES_IMAGE_REPOSITORY=127.0.0.1:5000/orchestrator-postgres POSTGRES_IMAGE_TAG=15 \
	"$SKAFFOLD" render --offline=true --digest-source=tag --tag="$TAG" --profile postgres --output "$file") ||
	fail "skaffold render --profile postgres with POSTGRES_IMAGE_REPOSITORY and POSTGRES_IMAGE_TAG"
grep -Eq '^ *image: "?127.0.0.1:5000/orchestrator-postgres:15"?$' "$file" ||
	fail "profile postgres does not take its image from POSTGRES_IMAGE_REPOSITORY and POSTGRES_IMAGE_TAG: $(images "$file" | paste -sd' ')"
ok "profile postgres: image from POSTGRES_IMAGE_REPOSITORY:POSTGRES_IMAGE_TAG (127.0.0.1:5000/orchestrator-postgres:15)"

# kubeContext activation: kind-* and minikube switch their profile on; other
# contexts switch nothing on.
for case in kind-skaffold-check:kind minikube:minikube prod-cluster: my-minikube-prod: docker-desktop:; do
	ctx=${case%%:*} want=${case#*:}
	got=$(sk "$(kubeconfig "$ctx")" diagnose --yaml-only -v info 2>&1 >/dev/null |
		sed -n 's/.*applying profile: \([^" ]*\).*/\1/p' | paste -sd, -)
	[[ $got == "$want" ]] || fail "kube-context $ctx activates profiles '$got', want '$want'"
	ok "kube-context $ctx activates '${got:-no profile}'"
done

# The configured tag policy (gitCommit) tags offline too.
file=$out/render-base-gitcommit.yaml
sk "$no_context" render --offline=true --digest-source=tag --output "$file" ||
	fail "skaffold render with the configured tag policy"
commit=$(git -C "$ROOT" rev-parse --short HEAD)
grep -Eq "^ *image: \"?$IMAGE:$commit(-dirty)?\"?$" "$file" ||
	fail "render with the gitCommit tagger: no image $IMAGE:${commit}[-dirty] in $file"
ok "gitCommit tag policy: $(sed -n 's/^ *image: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$file" | sort -u)"
renderings+=("$file")

# A short commit SHA can be all digits; Skaffold passes it to helm with --set,
# which makes it a number (GoogleContainerTools/skaffold#8686). The chart must
# still render it as the same tag.
file=$out/render-base-numeric-tag.yaml
sk "$no_context" render --offline=true --digest-source=tag --tag 2817012 --output "$file" ||
	fail "skaffold render with an all-digit tag"
grep -Eq "^ *image: \"?$IMAGE:2817012\"?$" "$file" ||
	fail "render with an all-digit tag: no image $IMAGE:2817012 in $file"
ok "an all-digit tag renders as $IMAGE:2817012"
renderings+=("$file")

echo "renderings in $out:"
printf '  %s\n' "${renderings[@]}"

kubeconform=$ROOT/hack/tools/kubeconform.sh
schemas="validated against Kubernetes $KUBE_VERSION"
if [[ -e $kubeconform ]]; then
	bash "$kubeconform" "$KUBE_VERSION" "${renderings[@]}" || fail "kubeconform: renderings invalid for Kubernetes $KUBE_VERSION"
	ok "kubeconform (Kubernetes $KUBE_VERSION): ${#renderings[@]} renderings valid"
else
	schemas="schema validation SKIPPED"
	echo "SKIPPED: schema validation of the renderings: ${kubeconform#"$ROOT"/} does not exist (yet)"
fi
echo "PASS: skaffold.yaml, base, ${#profiles[@]} profiles (${profiles[*]}) and ${#combos[@]} combinations; $schemas"
