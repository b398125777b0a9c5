#!/usr/bin/env bash
# Proves that hack/tools/kubeconform.sh accepts good manifests and rejects bad
# ones, for the right reason, against each Kubernetes version we validate for.
# Installs kubeconform and the schemas first if missing (install.sh skips
# what is there). Fixtures: hack/tools/testdata/.
#
#   hack/tools/selftest.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/install.sh" kubeconform schemas >/dev/null

# The newest and the oldest version the chart is validated for.
# shellcheck source=../kube-versions.env
source "$HERE/../kube-versions.env"
NEW=$KUBE_VERSION
OLD=$KUBE_VERSION_OLDEST
passed=0
failed=0

# expect VERSION FILE valid|invalid [PATTERN]: an invalid result must also
# print PATTERN (grep -E), so it cannot fail for another reason.
expect() {
  local version=$1 file=$2 want=$3 pattern=${4:-} out got line
  if out=$("$HERE/kubeconform.sh" "$version" "$HERE/testdata/$file" 2>&1); then got=valid; else got=invalid; fi
  if [ "$got" = "$want" ] && { [ -z "$pattern" ] || grep -qE -- "$pattern" <<<"$out"; }; then
    passed=$((passed + 1))
    echo "ok   $version $file: $want"
  else
    failed=$((failed + 1))
    echo "FAIL $version $file: want $want${pattern:+ matching \"$pattern\"}, got $got:"
    while IFS= read -r line; do echo "       $line"; done <<<"$out"
  fi
}

for v in $NEW $OLD; do
  for f in valid-deployment.yaml valid-hpa.yaml valid-pdb.yaml valid-ingress.yaml \
    valid-networkpolicy.yaml valid-servicemonitor.yaml; do
    expect "$v" "$f" valid
  done
  expect "$v" invalid-deployment-typo.yaml invalid "at '/spec': additional properties 'replica' not allowed"
  expect "$v" invalid-deployment-nested-typo.yaml invalid "additional properties 'imagePullPolice' not allowed"
  expect "$v" invalid-deployment-type.yaml invalid "at '/spec/replicas': got string"
  expect "$v" invalid-servicemonitor.yaml invalid "additional properties 'intervall' not allowed"
  expect "$v" removed-api-pdb-v1beta1.yaml invalid "could not find schema for PodDisruptionBudget"
  expect "$v" unknown-kind.yaml invalid "could not find schema for Widget"
done
# The native preStop sleep action exists from 1.30 (beta) on, not before
# (the oldest version the chart supports is older).
expect $NEW sleep-prestop-pod.yaml valid
expect $OLD sleep-prestop-pod.yaml invalid "preStop': additional properties 'sleep' not allowed"

# Manifests on stdin, one stream, as `helm template ... | kubeconform.sh` sends them.
stream() { for f in "$@"; do echo ---; cat "$f"; done; }
if stream "$HERE"/testdata/valid-*.yaml | "$HERE/kubeconform.sh" $NEW >/dev/null &&
  ! stream "$HERE"/testdata/valid-*.yaml "$HERE/testdata/invalid-deployment-typo.yaml" | "$HERE/kubeconform.sh" $NEW >/dev/null; then
  passed=$((passed + 1))
  echo "ok   $NEW stdin: valid stream passes, one bad document fails it"
else
  failed=$((failed + 1))
  echo "FAIL $NEW stdin: a valid stream must pass and one bad document must fail it"
fi

echo "selftest: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
