#!/usr/bin/env bash
# Brings up a single-node Kubernetes inside a private network namespace, from
# the binaries build.sh made and Debian's etcd, containerd, runc and CNI
# plugins. Needs root. State, logs and PIDs go under $STATE (default
# <repo>/.cache/localkube); $STATE/env tells exec.sh how to get in.
#
#   hack/localkube/up.sh          then: hack/localkube/exec.sh kubectl get nodes
#   LOCAL_STORAGE_CAPACITY_ISOLATION=false hack/localkube/up.sh
#
# LOCAL_STORAGE_CAPACITY_ISOLATION (true or false, default true) is the
# kubelet's localStorageCapacityIsolation. With false, as kind's kubelet
# runs on rootless Docker or Podman (kubernetes-sigs/kind#3359), the node
# reports no ephemeral-storage and never schedules a pod that asks for it.
#
# The namespace (held open by a `sleep` started with `unshare -n`) has only
# lo and a port-less bridge carrying the node IP, plus the CNI bridge for
# pods; its default route points at an address nobody answers. Nothing in it
# can reach the host's network or beyond. Any failure runs down.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

T0=$(date +%s%N)
elapsed() { awk -v ns="$(( $(date +%s%N) - T0 ))" 'BEGIN { printf "%.1f", ns / 1e9 }'; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, mounts, cgroups)"
LOCAL_STORAGE_CAPACITY_ISOLATION=${LOCAL_STORAGE_CAPACITY_ISOLATION:-true}
case $LOCAL_STORAGE_CAPACITY_ISOLATION in
  true | false) ;;
  *) die "LOCAL_STORAGE_CAPACITY_ISOLATION must be true or false, not '$LOCAL_STORAGE_CAPACITY_ISOLATION'" ;;
esac
# up.sh deletes $STATE and down.sh empties it: never a directory of anything else.
if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] && [ ! -e "$STATE/.localkube" ]; then
  die "$STATE is not empty and is not a localkube state dir (no .localkube in it); choose another STATE"
fi
[[ $STATE != *[[:space:]]* ]] || die "STATE must not contain spaces: $STATE"
# Unix socket paths are limited to 107 bytes; the deepest one is the kubelet's.
[ ${#STATE} -le 60 ] || die "STATE is too long for the unix sockets under it (max 60 characters): $STATE"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns crane; do
  [ -x "$LK_BIN/$b" ] || die "$LK_BIN/$b missing: run hack/localkube/build.sh"
done
[ -s "$LK_IMAGES/pause.tar" ] || die "$LK_IMAGES/pause.tar missing: run hack/localkube/build.sh"
for b in etcd containerd containerd-shim-runc-v2 ctr runc iptables ip nsenter unshare findmnt openssl curl busybox; do
  command -v "$b" >/dev/null || die "$b not found; Debian packages needed: $DEB_PACKAGES"
done
[ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge missing: apt-get install containernetworking-plugins"
if pid=$(recorded_pid netns); then
  die "a node is already up (namespace holder PID $pid); run hack/localkube/down.sh first"
fi

# From here on, any failure tears down whatever was started.
ok=
on_exit() {
  [ -n "$ok" ] && return
  log "bring-up failed after $(elapsed)s; logs in $STATE/logs; tearing down"
  "$LK_DIR/down.sh" || true
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Leftovers of an earlier, interrupted run go first; then a fresh state.
if [ -d "$STATE/pids" ]; then "$LK_DIR/down.sh"; fi
rm -rf --one-file-system "$STATE"
PKI=$STATE/pki CONF=$STATE/config
mkdir -p "$STATE"
touch "$STATE/.localkube"
mkdir -p "$STATE"/{pids,logs,etcd,registry,run,log/pods,kubelet,kubelet-sysctl,cni/net.d,cni/ipam} \
  "$STATE"/containerd/{root,opt,certs.d} "$PKI" "$CONF"
chmod 700 "$PKI"
SOCK=$STATE/run/containerd/containerd.sock
# kubectl as admin, from inside the namespace (the apiserver listens there),
# with its discovery cache in $STATE rather than ~/.kube/cache.
export KUBECACHEDIR=$STATE/kube-cache
kc() { in_netns "$LK_BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

# --- Certificates, keys, tokens, kubeconfigs --------------------------------
# One CA signs the apiserver's serving certificate; pods trust it through the
# kube-root-ca.crt ConfigMap. Clients authenticate with bearer tokens from a
# token file, each as the identity the bootstrap RBAC policy expects.
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec_key "$PKI/ca.key"
openssl req -x509 -new -key "$PKI/ca.key" -subj /CN=localkube-ca -days 30 -out "$PKI/ca.crt" 2>/dev/null
ec_key "$PKI/apiserver.key"
openssl req -new -key "$PKI/apiserver.key" -subj /CN=kube-apiserver 2>/dev/null |
  openssl x509 -req -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 -out "$PKI/apiserver.crt" \
    -extfile <(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:$NODE_NAME,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN") 2>/dev/null
ec_key "$PKI/sa.key"
openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# token_user NAME USER [GROUP]: a token file line, and NAME's kubeconfig.
token_user() {
  local token
  token=$(openssl rand -hex 16)
  echo "$token,$2,$2${3:+,\"$3\"}" >>"$PKI/tokens.csv"
  cat >"$PKI/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: localkube
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    token: $token
contexts:
- name: localkube
  context:
    cluster: localkube
    user: $2
current-context: localkube
EOF
}
token_user admin admin system:masters
token_user kubelet "system:node:$NODE_NAME" system:nodes
token_user controller-manager system:kube-controller-manager
token_user scheduler system:kube-scheduler
token_user kube-proxy system:kube-proxy
token_user coredns localkube:coredns
cp "$PKI/admin.kubeconfig" "$STATE/kubeconfig"

# --- The network namespace ---------------------------------------------------
setsid unshare -n -- sleep infinity </dev/null >/dev/null 2>&1 &
NETNS_PID=$!
record_pid netns "$NETNS_PID"
# unshare has made the namespace once the holder's differs from ours.
netns_made() { [ "$(netns_id $$)" != "$(netns_id "$NETNS_PID")" ]; }
wait_until "network namespace" 5 netns netns_made
NETNS_ID=$(netns_id "$NETNS_PID")
echo "$NETNS_ID" >"$STATE/pids/netns.id"
in_netns ip link set lo up
in_netns ip link add "$NODE_BRIDGE" type bridge
in_netns ip addr add "$NODE_IP/$NODE_PREFIX" dev "$NODE_BRIDGE"
in_netns ip link set "$NODE_BRIDGE" up
in_netns ip route add default via "$DEAD_GATEWAY" dev "$NODE_BRIDGE" onlink
# Per-namespace settings (written from inside, they apply to this namespace
# only): forwarding between the pod bridge and local addresses, and iptables
# on bridged traffic, without which a pod calling a ClusterIP that lands on
# a pod of the same bridge never sees the reply un-NATed.
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
  die "br_netfilter is not loaded; it is a host-wide kernel module, load it yourself (modprobe br_netfilter)"
in_netns sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward &&
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables &&
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables'

# --- etcd ----------------------------------------------------------------------
start_daemon etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --logger zap --log-outputs stderr

# --- containerd ------------------------------------------------------------
# Its own root, state and socket under $STATE. Pod network namespaces are
# bind-mounted under its state dir (not /run/netns), runc keeps its state
# there too, and /opt/containerd moves there. The sandbox image is the local
# pause image (nothing can be pulled), and images named 127.0.0.1:5000/... or
# localhost:5000/... come from the loopback registry over plain HTTP.
for host in 127.0.0.1:5000 localhost:5000; do
  mkdir -p "$STATE/containerd/certs.d/$host"
  cat >"$STATE/containerd/certs.d/$host/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
done
cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/run/containerd"
# Snapshotters this host cannot use; they only log errors.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # containerd is not started with the lowest OOM score: clamp pods' scores
  # to containerd's own instead of failing to set them lower.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"
EOF
# The pod network: a bridge with host-local addresses, hairpin so a pod can
# reach itself through its own Service, portmap for hostPort. The IPAM store
# lives under $STATE, not /var/lib/cni.
cat >"$STATE/cni/net.d/10-localkube.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "localkube",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start_daemon containerd containerd --config "$STATE/containerd/config.toml"

# --- The loopback registry ----------------------------------------------------
start_daemon registry "$LK_BIN/crane" registry serve --address "$REGISTRY" --disk "$STATE/registry"

# --- kube-apiserver ------------------------------------------------------------
wait_until "etcd health" 30 etcd in_netns curl -sf http://127.0.0.1:2379/health
start_daemon kube-apiserver "$LK_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --advertise-address="$NODE_IP" --secure-port=6443 \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --profiling=false

# containerd is up by now; import the pause image while the apiserver starts.
wait_until "containerd" 30 containerd ctr --address "$SOCK" version
ctr --address "$SOCK" -n k8s.io images import "$LK_IMAGES/pause.tar" >/dev/null
wait_until "kube-apiserver ready" 60 kube-apiserver kc get --raw /readyz
log "apiserver ready after $(elapsed)s"

# --- controller-manager, scheduler -------------------------------------------
start_daemon kube-controller-manager "$LK_BIN/kube-controller-manager" \
  --kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --profiling=false
start_daemon kube-scheduler "$LK_BIN/kube-scheduler" \
  --kubeconfig="$PKI/scheduler.kubeconfig" \
  --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
  --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false

# --- kubelet -----------------------------------------------------------------
# Pods' cgroups under /localkube in every hierarchy (cgroupfs driver: the
# host has a cgroup v1/v2 hybrid layout and no systemd). The kubelet wants
# its cgroupRoot to exist; cpuset children start with no CPUs, so copy them.
[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] ||
  die "tested only on cgroup v1 and hybrid hosts; a pure cgroup v2 host needs controllers enabled for /$CGROUP_PARENT"
for h in $(cgroup_mounts); do
  mkdir -p "$h/$CGROUP_PARENT"
done
if [ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_PARENT/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_PARENT/cpuset.mems"
fi
# The kubelet runs in a mount namespace of its own (see kubelet-ns.sh).
# Its volume mounts must still reach containerd and runc out here: make its
# root dir a shared mount, so mounts made below it propagate back.
mount --bind "$STATE/kubelet" "$STATE/kubelet"
mount --make-rshared "$STATE/kubelet"
# kubelet-ns.sh mounts $STATE/kubelet on /var/lib/kubelet in that namespace,
# which needs the directory; down.sh removes it if it was made here.
if [ ! -e /var/lib/kubelet ]; then
  mkdir /var/lib/kubelet
  touch "$STATE/pids/made-var-lib-kubelet"
fi
echo 1 >"$STATE/kubelet-sysctl/vm.overcommit_memory"
echo 0 >"$STATE/kubelet-sysctl/vm.panic_on_oom"
echo 10 >"$STATE/kubelet-sysctl/kernel.panic"
echo 1 >"$STATE/kubelet-sysctl/kernel.panic_on_oops"
echo 1000000 >"$STATE/kubelet-sysctl/kernel.keys.root_maxkeys"
echo 25000000 >"$STATE/kubelet-sysctl/kernel.keys.root_maxbytes"
cat >"$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
failCgroupV1: false
failSwapOn: false
# Never write the host-wide kernel settings; fail instead (kubelet-ns.sh
# makes them read as expected).
protectKernelDefaults: true
# The open-files hard limit of this kind of machine (default: 1000000).
maxOpenFiles: 20000
# false: no ephemeral-storage in the node's capacity (see the top).
localStorageCapacityIsolation: $LOCAL_STORAGE_CAPACITY_ISOLATION
# A throwaway node: no evictions, no image garbage collection.
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Only the apiserver in this namespace can reach it.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# No host search domains or nameservers in pods: only CoreDNS.
resolvConf: ""
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
podLogsDir: $STATE/log/pods
serializeImagePulls: false
EOF
start_daemon kubelet unshare -m --propagation unchanged -- "$LK_DIR/kubelet-ns.sh" "$STATE" \
  "$LK_BIN/kubelet" --config="$CONF/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
  --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"

# --- kube-proxy ----------------------------------------------------------------
# iptables mode, inside the namespace. Its conntrack settings are left alone:
# nf_conntrack_max cannot be set from a namespace (and its hashsize is
# host-wide), and the TCP timeouts are not worth changing for a test node.
start_daemon kube-proxy "$LK_BIN/kube-proxy" \
  --kubeconfig="$PKI/kube-proxy.kubeconfig" --hostname-override="$NODE_NAME" \
  --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --nodeport-addresses=primary \
  --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
  --oom-score-adj=0 --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
  --profiling=false

# --- CoreDNS ---------------------------------------------------------------------
# A process on the node IP, not a pod: the kubelet's clusterDNS points at it.
# There is no upstream, so names outside the cluster are NXDOMAIN at once.
kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: localkube:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: localkube:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: localkube:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: localkube:coredns
EOF
cat >"$CONF/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:8181
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $PKI/coredns.kubeconfig localkube
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loadbalance
}
.:53 {
    bind $NODE_IP
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
start_daemon coredns "$LK_BIN/coredns" -conf "$CONF/Corefile"

# --- Ready? ----------------------------------------------------------------------
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_until "node $NODE_NAME Ready" 90 kubelet node_ready
READY_AT=$(elapsed)
log "node Ready after ${READY_AT}s"
wait_until "CoreDNS ready" 30 coredns in_netns curl -sf http://127.0.0.1:8181/ready
wait_until "CoreDNS answers" 30 coredns in_netns busybox nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$NODE_IP"
wait_until "default ServiceAccount" 60 kube-controller-manager kc -n default get serviceaccount default
for d in kube-proxy kube-scheduler; do alive "$d" || die "$d died"; done

# --- For exec.sh, tests and people ------------------------------------------------
{
  printf 'export %s=%q\n' \
    KUBECONFIG "$STATE/kubeconfig" \
    KUBECACHEDIR "$KUBECACHEDIR" \
    NETNS_PID "$NETNS_PID" \
    NETNS_ID "$NETNS_ID" \
    NODE_NAME "$NODE_NAME" \
    NODE_IP "$NODE_IP" \
    REGISTRY "$REGISTRY" \
    CLUSTER_DNS "$NODE_IP" \
    CLUSTER_DOMAIN "$CLUSTER_DOMAIN" \
    POD_CIDR "$POD_CIDR" \
    SERVICE_CIDR "$SERVICE_CIDR" \
    CONTAINERD_ADDRESS "$SOCK" \
    LOCALKUBE_STATE "$STATE" \
    LOCALKUBE_BIN "$LK_BIN" \
    LOCAL_STORAGE_CAPACITY_ISOLATION "$LOCAL_STORAGE_CAPACITY_ISOLATION" \
    TOOLS_BIN "$TOOLS/bin"
} >"$STATE/env"
ok=1
log "node $NODE_NAME up in $(elapsed)s (Ready after ${READY_AT}s; localStorageCapacityIsolation: $LOCAL_STORAGE_CAPACITY_ISOLATION); KUBECONFIG=$STATE/kubeconfig; run commands with hack/localkube/exec.sh"
