# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this
# Shared by the hack/localkube scripts: where things are, the node's fixed
# addresses, and the helpers that start, record and stop processes.

LK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LK_DIR/../.." && pwd)
# shellcheck source=versions.env
source "$LK_DIR/versions.env"

TOOLS=${TOOLS:-$REPO/.tools}
LK_BIN=$TOOLS/localkube/bin
LK_IMAGES=$TOOLS/localkube/images
STATE=${STATE:-$REPO/.cache/localkube}
# Absolute, without a trailing slash: teardown matches mount points by prefix.
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
STATE=${STATE%/}

# Addresses inside the node's private network namespace; nothing outside
# it sees them, so they only have to be distinct from each other.
NODE_NAME=localkube
NODE_BRIDGE=lk0             # carries the node IP; no ports, no uplink
NODE_IP=10.250.0.2
NODE_PREFIX=24
# The default route points here: nobody answers, which is the point. The
# apiserver and ClusterIP routing need some default route to exist.
DEAD_GATEWAY=10.250.0.1
POD_CIDR=10.244.0.0/16      # kube-proxy's --cluster-cidr
POD_SUBNET=10.244.0.0/24    # this node's pods, on the CNI bridge cni0
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1 # first address of SERVICE_CIDR
CLUSTER_DOMAIN=cluster.local
REGISTRY=127.0.0.1:5000
# Pod cgroups go under this parent in every hierarchy, so teardown can find
# (and kill, and remove) exactly the node's containers.
CGROUP_PARENT=localkube

log() { printf '%s localkube: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# proc_start PID: the process's start time in clock ticks since boot (field
# 22 of /proc/PID/stat). Recorded with each PID so a later run never signals
# an unrelated process that reused the number.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }              # drop "pid (comm) ", comm may hold spaces
  # shellcheck disable=SC2086 # split the remaining fields on purpose
  set -- $stat
  echo "${20}"                   # field 22 overall = 20th after comm
}

# record_pid NAME PID: write $STATE/pids/NAME.pid as "PID STARTTIME".
record_pid() {
  mkdir -p "$STATE/pids"
  echo "$2 $(proc_start "$2" || echo 0)" >"$STATE/pids/$1.pid"
}

# running PID: the process exists and is not a zombie (this machine's PID 1
# can take seconds to reap the orphans it inherits).
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# recorded_pid NAME: print the PID recorded for NAME if that very process
# still runs (same start time); fail otherwise.
recorded_pid() {
  local file=$STATE/pids/$1.pid pid start
  [ -r "$file" ] || return 1
  read -r pid start <"$file" || return 1
  [ -n "$pid" ] && [ "$(proc_start "$pid" 2>/dev/null)" = "$start" ] && running "$pid" || return 1
  echo "$pid"
}

# cgroup_mounts: where each cgroup hierarchy is mounted.
cgroup_mounts() { findmnt -rn -t cgroup,cgroup2 -o TARGET; }

# netns_id PID: the network namespace of PID, e.g. "net:[4026532301]".
netns_id() { readlink "/proc/$1/ns/net" 2>/dev/null; }

# in_netns CMD...: run CMD in the node's network namespace.
in_netns() { nsenter -t "$NETNS_PID" -n -- "$@"; }

# start_daemon NAME CMD...: start CMD in the node's network namespace in a
# session of its own (so a Ctrl-C in the calling terminal does not reach it),
# log to $STATE/logs/NAME.log, record its PID. setsid and nsenter both exec,
# so $! is the daemon itself.
start_daemon() {
  local name=$1
  shift
  setsid nsenter -t "$NETNS_PID" -n -- "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  record_pid "$name" $!
}

# alive NAME: the recorded process NAME still runs; if not, show its log.
alive() {
  recorded_pid "$1" >/dev/null && return 0
  log "$1 exited; last lines of $STATE/logs/$1.log:"
  tail -n 30 "$STATE/logs/$1.log" >&2 2>/dev/null || true
  return 1
}

# wait_until DESC SECONDS DAEMON CMD...: retry CMD every 0.2 s until it
# succeeds; give up after SECONDS, or as soon as DAEMON (a recorded name, or
# "-") has exited.
wait_until() {
  local desc=$1 timeout=$2 daemon=$3 deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$daemon" != - ]; then alive "$daemon" || die "$desc: $daemon died"; fi
    [ "$SECONDS" -lt "$deadline" ] || die "$desc: not after ${timeout}s"
    sleep 0.2
  done
}
