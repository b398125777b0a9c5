#!/usr/bin/env bash
# Proves the localkube node does what the e2e suite needs, offline:
#
#   image     a FROM-scratch image of hack/localkube/smoke built with buildah
#             and pushed with `buildah push` to 127.0.0.1:5000 from inside
#             the namespace; the node pulls it from there
#   deploy    `kubectl apply -k`: a 2-replica Deployment with an httpGet
#             readinessProbe, and a NodePort Service
#   service   the Service by ClusterIP and by NodePort (kube-proxy), from
#             the namespace; by DNS name from a pod (CoreDNS); a pod through
#             its own Service (hairpin), with `kubectl exec`
#   logs      `kubectl logs`; `kubectl port-forward` and a request through it
#   security  a namespace enforcing the restricted Pod Security Standard
#             admits a restricted pod and rejects a privileged one
#   restart   `kubectl rollout restart`: new pods, Ready, still serving
#
# Removes what it created (namespaces, the image in the registry, the
# port-forward) on every exit path. Run after up.sh; needs root.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[ -r "$STATE/env" ] || die "no node is up: run hack/localkube/up.sh"
# shellcheck source=/dev/null
source "$STATE/env"
T0=$(date +%s%N)
secs() { awk -v ns="$(( $(date +%s%N) - ${1:-$T0} ))" 'BEGIN { printf "%.1f", ns / 1e9 }'; }
x() { "$LK_DIR/exec.sh" "$@"; }   # run in the node's namespace
kc() { x kubectl "$@"; }
ok() { printf 'ok   %-9s %s (%ss)\n' "$1" "$2" "$(secs "$STEP")"; STEP=$(date +%s%N); }
STEP=$T0

NS=localkube-smoke
NS_RESTRICTED=localkube-smoke-restricted
TAG=$(date +%s)
IMAGE=$REGISTRY/localkube/smoke:$TAG
WORK=$(mktemp -d)
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
PF_PID=

cleanup() {
  local rc=$?
  if [ -n "$PF_PID" ]; then kill "$PF_PID" 2>/dev/null || true; wait "$PF_PID" 2>/dev/null || true; fi
  if [ -r "$STATE/env" ]; then
    kc delete namespace "$NS" "$NS_RESTRICTED" --ignore-not-found --timeout=90s >/dev/null 2>&1 || true
    x crane delete "$REGISTRY/localkube/smoke@$(x crane digest "$IMAGE" 2>/dev/null)" >/dev/null 2>&1 || true
  fi
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then echo "smoke: passed in $(secs)s"; else echo "smoke: FAILED (exit $rc) after $(secs)s" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- image -------------------------------------------------------------------
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/smoke" ./hack/localkube/smoke)
ctr=$("${BUILDAH[@]}" from --quiet scratch)
"${BUILDAH[@]}" copy --quiet "$ctr" "$WORK/smoke" /smoke >/dev/null
"${BUILDAH[@]}" config --entrypoint '["/smoke"]' --cmd serve --user 65532:65532 --port 8080 \
  --os linux --arch "$(go env GOARCH)" "$ctr"
"${BUILDAH[@]}" commit --quiet --format docker "$ctr" "localhost/localkube/smoke:$TAG" >/dev/null
x "${BUILDAH[@]}" push --quiet --tls-verify=false "localhost/localkube/smoke:$TAG" "docker://$IMAGE"
ok image "buildah push $IMAGE: $(x crane digest "$IMAGE")"

# --- deploy (kubectl apply -k) ----------------------------------------------------
mkdir -p "$WORK/k"
cat >"$WORK/k/smoke.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
spec:
  replicas: 2
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      terminationGracePeriodSeconds: 5
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: smoke
        image: localkube/smoke
        args: [serve, -addr, ":8080"]
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata:
  name: smoke
spec:
  type: NodePort
  selector: {app: smoke}
  ports:
  - {name: http, port: 80, targetPort: http}
EOF
cat >"$WORK/k/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $NS
resources: [smoke.yaml]
images:
- name: localkube/smoke
  newName: $REGISTRY/localkube/smoke
  newTag: "$TAG"
EOF
kc apply -k "$WORK/k" >/dev/null
kc -n "$NS" rollout status deployment/smoke --timeout=120s >/dev/null
ok deploy "kubectl apply -k; 2/2 replicas Ready (readinessProbe httpGet /healthz)"

# --- service: ClusterIP, NodePort, DNS from a pod, hairpin --------------------------
cluster_ip=$(kc -n "$NS" get service smoke -o jsonpath='{.spec.clusterIP}')
node_port=$(kc -n "$NS" get service smoke -o jsonpath='{.spec.ports[0].nodePort}')
# hosts URL N: the distinct pods that answered N requests.
hosts() {
  local _
  for _ in $(seq "$2"); do x curl -sf --max-time 5 "$1" || return 1; done | sort -u | awk '{print $3}' | paste -sd' '
}
# kube-proxy programs a new Service's endpoints within about a second (its
# minimum sync period): until then the ClusterIP rejects connections.
wait_until "ClusterIP $cluster_ip" 30 - x curl -sf --max-time 2 "http://$cluster_ip/healthz"
seen=$(hosts "http://$cluster_ip/" 20) || die "ClusterIP $cluster_ip did not answer"
ok service "ClusterIP $cluster_ip:80, 20 requests answered by: $seen"
seen=$(hosts "http://$NODE_IP:$node_port/" 20) || die "NodePort $NODE_IP:$node_port did not answer"
ok service "NodePort $NODE_IP:$node_port, 20 requests answered by: $seen"

kc -n "$NS" run smoke-client --image "$IMAGE" --restart=Never \
  --overrides='{"apiVersion":"v1","spec":{"securityContext":{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"smoke-client","image":"'"$IMAGE"'","args":["get","http://smoke/","http://smoke.'"$NS"'.svc.'"$CLUSTER_DOMAIN"'/"],"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}' \
  >/dev/null
kc -n "$NS" wait pod/smoke-client --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null ||
  { kc -n "$NS" logs smoke-client >&2 || true; die "the client pod could not reach the Service by name"; }
ok dns "from a pod: $(kc -n "$NS" logs smoke-client | paste -sd';' | sed 's/;/; /g')"

pod=$(kc -n "$NS" get pods -l app=smoke -o jsonpath='{.items[0].metadata.name}')
for _ in $(seq 6); do
  kc -n "$NS" exec "$pod" -- /smoke get http://smoke/ >/dev/null || die "hairpin: $pod could not reach its own Service"
done
ok hairpin "kubectl exec $pod: 6 calls through its own Service"

# --- logs, port-forward -------------------------------------------------------------
kc -n "$NS" logs "$pod" >"$WORK/pod.log"
grep -q 'listening on :8080' "$WORK/pod.log" || die "kubectl logs: no start-up line"
ok logs "kubectl logs $pod: $(wc -l <"$WORK/pod.log") lines, first: $(head -1 "$WORK/pod.log")"
port=18080
"$LK_DIR/exec.sh" kubectl -n "$NS" port-forward service/smoke "$port:80" >"$WORK/port-forward.log" 2>&1 &
PF_PID=$!
wait_until "port-forward" 30 - x curl -sf --max-time 2 "http://127.0.0.1:$port/healthz"
ok portfwd "kubectl port-forward service/smoke $port:80: $(x curl -sf "http://127.0.0.1:$port/")"
kill "$PF_PID"
wait "$PF_PID" 2>/dev/null || true
PF_PID=

# --- security: PodSecurity admission ---------------------------------------------------
kc create namespace "$NS_RESTRICTED" >/dev/null
kc label namespace "$NS_RESTRICTED" pod-security.kubernetes.io/enforce=restricted >/dev/null
kc -n "$NS_RESTRICTED" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: restricted
spec:
  securityContext:
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: smoke
    image: $IMAGE
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
EOF
kc -n "$NS_RESTRICTED" wait pod/restricted --for=condition=Ready --timeout=60s >/dev/null
ok security "restricted namespace admitted a restricted pod; it runs"
if out=$(kc -n "$NS_RESTRICTED" apply -f - 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: privileged
spec:
  containers:
  - name: smoke
    image: $IMAGE
    securityContext:
      privileged: true
EOF
); then
  die "restricted namespace admitted a privileged pod"
fi
grep -q 'violates PodSecurity "restricted' <<<"$out" || die "privileged pod rejected, but not by PodSecurity: $out"
ok security "privileged pod rejected: $(sed -n 's/.*\(violates PodSecurity "[^"]*"\).*/\1/p' <<<"$out" | head -1)"

# --- restart -------------------------------------------------------------------------------
before=$(kc -n "$NS" get pods -l app=smoke -o jsonpath='{.items[*].metadata.name}')
kc -n "$NS" rollout restart deployment/smoke >/dev/null
kc -n "$NS" rollout status deployment/smoke --timeout=120s >/dev/null
for p in $before; do
  kc -n "$NS" wait --for=delete "pod/$p" --timeout=60s >/dev/null || die "rollout restart: pod $p is still there"
done
after=$(kc -n "$NS" get pods -l app=smoke -o jsonpath='{.items[*].metadata.name}')
seen=$(hosts "http://$cluster_ip/" 10) || die "Service did not answer after the restart"
ok restart "rollout restart: [$before] -> [$after]; serving from: $seen"
