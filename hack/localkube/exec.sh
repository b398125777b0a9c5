#!/usr/bin/env bash
# Runs a command inside the localkube node's network namespace, where the
# apiserver, the loopback registry (127.0.0.1:5000), ClusterIPs, NodePorts
# and port-forwards are reachable, with the variables of $STATE/env exported
# (KUBECONFIG, NODE_IP, REGISTRY, ...) and $TOOLS/localkube/bin then
# $TOOLS/bin first on PATH. The working directory, standard streams and exit
# code are the command's own. Needs root (nsenter).
#
#   hack/localkube/exec.sh kubectl get pods -A
#   hack/localkube/exec.sh go test -tags e2e ./test/e2e/
#   hack/localkube/exec.sh bash          # a shell "on the node"
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[ $# -gt 0 ] || die "usage: hack/localkube/exec.sh CMD [ARGS...]"
[ -r "$STATE/env" ] || die "no node is up ($STATE/env missing): run hack/localkube/up.sh"
# shellcheck source=/dev/null
source "$STATE/env"
# Enter only the namespace up.sh made: the holder must be the very process
# it recorded, still in that namespace (a reused PID would be another one).
if ! pid=$(recorded_pid netns) || [ "$pid" != "$NETNS_PID" ] || [ "$(netns_id "$pid")" != "$NETNS_ID" ]; then
  die "the node's namespace holder is gone; run hack/localkube/down.sh, then up.sh"
fi
export PATH="$LOCALKUBE_BIN:$TOOLS_BIN:$PATH"
exec nsenter -t "$NETNS_PID" -n -- "$@"
