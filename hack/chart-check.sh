#!/usr/bin/env bash
# The chart checks that need no cluster, over the values matrix (the
# defaults and every charts/orchestrator/ci/*-values.yaml; among them the
# three database modes: the defaults keep state in memory,
# postgresql-values.yaml runs the bundled PostgreSQL, ha-values.yaml an
# external one):
#
#   1. helm lint --strict, for the oldest supported Kubernetes and the
#      newest (KUBE_VERSION_OLDEST and KUBE_VERSION in hack/kube-versions.env);
#   2. every rendering validated strictly against that version's OpenAPI
#      schemas (kubeconform, schemas made offline by hack/tools/install.sh),
#      and k8s/ and k8s/postgres/ against the oldest they target
#      (KUBE_VERSION_MANIFESTS_OLDEST) and the newest;
#   3. kube-score on every rendering for the newest: no critical finding.
#      Three checks are off, for the reasons given in the README
#      ("kube-score").
#
# Below 1.30 the chart is rendered with termination.nativeSleep=false, as it
# requires there. Uses the tools in $TOOLS/bin (default .tools/bin).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${TOOLS:-$root/.tools}
helm=$TOOLS/bin/helm
chart=$root/charts/orchestrator
# shellcheck source=kube-versions.env
source "$root/hack/kube-versions.env"
oldest=${KUBE_VERSION_OLDEST#v} newest=${KUBE_VERSION#v} manifests_oldest=${KUBE_VERSION_MANIFESTS_OLDEST#v}
kube_score_off=(--ignore-test container-image-pull-policy --ignore-test pod-networkpolicy
	--ignore-test container-ephemeral-storage-request-and-limit)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# score runs kube-score on its arguments (or stdin): shows the warnings,
# and fails with the critical findings.
score() {
	local report
	if ! report=$("$TOOLS/bin/kube-score" score --output-format ci "${kube_score_off[@]}" "${@:--}"); then
		grep -E '\[CRITICAL\]' <<<"$report" >&2
		return 1
	fi
	grep -E '\[WARNING\]' <<<"$report" || true
}

values=(defaults "$chart"/ci/*-values.yaml)
for v in "$oldest" "$newest"; do
	for file in "${values[@]}"; do
		name=$(basename "$file" -values.yaml)
		args=(--kube-version "$v")
		[[ $file == defaults ]] || args+=(--values "$file")
		[[ $v == "$oldest" ]] && args+=(--set termination.nativeSleep=false)

		echo "== $name on $v"
		"$helm" lint --strict --quiet "$chart" "${args[@]}"
		"$helm" template orch "$chart" --namespace optiinfra "${args[@]}" >"$out/$name-$v.yaml"
		"$root/hack/tools/kubeconform.sh" "$v" "$out/$name-$v.yaml"
		if [[ $v == "$newest" ]]; then
			# Workloads only: the helm test pod is a one-shot hook, not a
			# workload (no probes, by design).
			"$helm" template orch "$chart" --namespace optiinfra --skip-tests "${args[@]}" | score
		fi
	done
done

for dir in k8s k8s/postgres; do
	manifests=()
	for f in "$root/$dir"/*.yaml; do
		[[ $(basename "$f") == kustomization.yaml ]] || manifests+=("$f")
	done
	for v in "$manifests_oldest" "$newest"; do
		echo "== $dir/ on $v"
		"$root/hack/tools/kubeconform.sh" "$v" "${manifests[@]}"
	done
	score "${manifests[@]}"
done
echo "chart checks passed: ${#values[@]} values files x {$oldest, $newest}, k8s/ and k8s/postgres/"
