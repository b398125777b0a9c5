#!/usr/bin/env bash
# Tears the localkube node down and leaves nothing running or mounted:
#
#   1. the kubelet (so nothing restarts containers), then the other daemons,
#      the apiserver's clients before it and etcd after it, by their recorded
#      PIDs (and start times, so never a reused PID);
#   2. the containers: every process in the node's cgroups (/localkube);
#   3. containerd's tasks, through containerd, then containerd itself;
#   4. only the containerd shims whose command line names THIS containerd's
#      socket, and their sockets in /run/containerd/s;
#   5. anything still in the node's network namespace (port-forwards, tests
#      run with exec.sh), then the namespace holder: the namespace, its
#      links and its iptables rules go with the last process in it;
#   6. every mount at or below $STATE, deepest first;
#   7. the node's cgroups, the kubelet's log links in /var/log/containers,
#      the CNI results of its sandboxes in /var/lib/cni/results, and the
#      empty /var/lib/kubelet and /run/mount that up.sh made;
#   8. the state, except $STATE/logs.
#
# Safe to run twice and after a failed or interrupted up.sh. Exits non-zero
# if a process or a mount of the node is still there at the end.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root"
if [ ! -d "$STATE" ]; then
  log "nothing to tear down: $STATE does not exist"
  exit 0
fi
# Only ever empty a directory up.sh made.
[ -e "$STATE/.localkube" ] || die "$STATE is not a localkube state dir (no .localkube in it)"
T0=$(date +%s%N)
SOCK=$STATE/run/containerd/containerd.sock
# First of all, so exec.sh stops entering a namespace on its way out.
rm -f "$STATE/env"

# gone PID...: none of the processes runs any more (zombies count as gone).
gone() {
  local pid
  for pid; do
    ! running "$pid" || return 1
  done
}

# terminate PID...: SIGTERM, $GRACE seconds (default 10) to exit, SIGKILL.
terminate() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local i
  for i in $(seq $((${GRACE:-10} * 5))); do gone "$@" && return 0; sleep 0.2; done
  log "still running after SIGTERM, killing: $*"
  kill -KILL "$@" 2>/dev/null || true
  for i in $(seq 25); do gone "$@" && return 0; sleep 0.2; done
  log "warning: could not kill: $*"
}

# stop NAME...: terminate the recorded daemons NAME... that still run.
stop() {
  local name pid pids=()
  for name; do
    if pid=$(recorded_pid "$name"); then pids+=("$pid"); fi
  done
  terminate "${pids[@]}"
}

# cgroup_procs: every process in the node's cgroups, in any hierarchy.
cgroup_procs() {
  local h
  for h in $(cgroup_mounts); do
    [ -d "$h/$CGROUP_PARENT" ] || continue
    find "$h/$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un | while read -r pid; do
    if running "$pid"; then echo "$pid"; fi
  done
}

# our_shims: containerd shims serving THIS containerd (their command line
# says `-address $SOCK`); shims of any other containerd are left alone.
our_shims() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
    [[ ${cmd%% *} == *containerd-shim* && $cmd == *" -address $SOCK "* ]] && echo "${d#/proc/}"
  done
  return 0
}

# shim_sockets: the sockets in /run/containerd/s of this node's shims (a
# killed shim leaves its socket behind); each task's bundle names its own.
shim_sockets() {
  local f a
  for f in "$STATE"/run/containerd/io.containerd.runtime.v2.task/*/*/address; do
    [ -f "$f" ] || continue
    a=$(cat "$f")
    a=${a#unix://}
    [[ $a == /run/containerd/s/* ]] && echo "$a"
  done
  return 0
}

# netns_procs: every process in the node's network namespace. Only when that
# namespace is surely ours: its holder still runs, or it has the node's
# bridge and address (namespace ids are reused once a namespace is gone).
netns_procs() {
  local id holder d
  id=$(cat "$STATE/pids/netns.id" 2>/dev/null) || return 0
  [ -n "$id" ] || return 0
  for d in /proc/[0-9]*; do
    [ "$(netns_id "${d#/proc/}")" = "$id" ] || continue
    if [ -z "${holder:-}" ]; then
      if recorded_pid netns >/dev/null ||
        nsenter -t "${d#/proc/}" -n ip -br addr show "$NODE_BRIDGE" 2>/dev/null | grep -q " $NODE_IP/"; then
        holder=yes
      else
        return 0
      fi
    fi
    if [ "${d#/proc/}" != $$ ] && running "${d#/proc/}"; then echo "${d#/proc/}"; fi
  done
}

# state_mounts: mount points at or below $STATE, deepest first.
state_mounts() {
  findmnt -rn -o TARGET | awk -v s="$STATE" '$0 == s || index($0, s "/") == 1' | sort -r
}

# 1. Daemons: the kubelet first, so it cannot restart what goes next; the
# apiserver's clients before it (it waits for open watches to end before it
# exits), etcd after it.
stop kubelet
stop kube-proxy coredns kube-scheduler kube-controller-manager registry
# Even then it sometimes waits 10 s or more for connections to go idle; its
# state is about to be deleted, so it gets 3 s.
GRACE=3 stop kube-apiserver
stop etcd

# 2. Containers. With the kubelet gone nothing starts new ones; the shims
# (their parents) reap them.
for i in $(seq 10); do
  mapfile -t procs < <(cgroup_procs)
  [ ${#procs[@]} -gt 0 ] || break
  kill -KILL "${procs[@]}" 2>/dev/null || true
  sleep 0.2
done

# The sandboxes' ids name the CNI results libcni caches outside $STATE, in
# /var/lib/cni/results (no setting moves them in containerd 1.6); without a
# CNI DEL, which only a graceful pod deletion runs, they stay.
sandboxes=()
for d in "$STATE"/{run/containerd,containerd/root}/io.containerd.grpc.v1.cri/sandboxes/*/; do
  d=${d%/}
  d=${d##*/}
  if [[ $d =~ ^[0-9a-f]{64}$ ]]; then sandboxes+=("$d"); fi
done

# 3. containerd: delete its tasks (each shim then unmounts its rootfs,
# removes its socket and exits), then stop it.
mapfile -t sockets < <(shim_sockets)
if recorded_pid containerd >/dev/null && [ -S "$SOCK" ]; then
  while read -r task _; do
    if [ -n "$task" ]; then
      timeout 10 ctr --address "$SOCK" -n k8s.io tasks delete --force "$task" >/dev/null 2>&1 || true
    fi
  done < <(timeout 10 ctr --address "$SOCK" -n k8s.io tasks list --quiet 2>/dev/null || true)
fi
stop containerd

# 4. Shims that outlived that (containerd already gone, or a hung task).
mapfile -t shims < <(our_shims)
terminate "${shims[@]}"
for s in "${sockets[@]}"; do
  if [ -S "$s" ]; then rm -f "$s"; fi
done
# containerd made these for the shims; remove them if nothing else uses them.
rmdir /run/containerd/s /run/containerd 2>/dev/null || true

# 5. Whatever else runs in the namespace, then its holder.
holder=$(recorded_pid netns || true)
mapfile -t rest < <(netns_procs | grep -vx "${holder:-none}")
if [ ${#rest[@]} -gt 0 ]; then
  log "stopping processes left in the node's network namespace: ${rest[*]}"
  terminate "${rest[@]}"
fi
stop netns

# 6. Mounts: overlay rootfs, /dev/shm of sandboxes, pod network namespaces,
# the kubelet's volumes and its shared root bind, deepest first. Repeat:
# a target can carry more than one mount.
for i in $(seq 5); do
  mapfile -t mounts < <(state_mounts)
  [ ${#mounts[@]} -gt 0 ] || break
  for m in "${mounts[@]}"; do
    umount "$m" 2>/dev/null || { [ "$i" -lt 5 ] || umount -l "$m" 2>/dev/null; } || true
  done
done

# 7. Cgroups (empty by now), deepest first, and the kubelet's links to
# container logs under $STATE.
for h in $(cgroup_mounts); do
  [ -d "$h/$CGROUP_PARENT" ] || continue
  find "$h/$CGROUP_PARENT" -depth -type d -exec rmdir {} + 2>/dev/null || true
done
if [ -d /var/log/containers ]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete
  rmdir /var/log/containers 2>/dev/null || true   # the kubelet made it; if empty
fi
for id in "${sandboxes[@]}"; do
  rm -f /var/lib/cni/results/*-"$id"-*
done
# The mount point kubelet-ns.sh needed, if up.sh made it (and it is empty).
if [ -e "$STATE/pids/made-var-lib-kubelet" ]; then rmdir /var/lib/kubelet 2>/dev/null || true; fi
# util-linux's mount made /run/mount (for its utab) if nothing had before.
rmdir /run/mount 2>/dev/null || true

# What is left?
left=()
for name in netns etcd containerd registry kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do
  if pid=$(recorded_pid "$name"); then left+=("process $name ($pid)"); fi
done
for pid in $(our_shims) $(cgroup_procs) $(netns_procs); do left+=("process $pid: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")"); done
for m in $(state_mounts); do left+=("mount $m"); done
for h in $(cgroup_mounts); do
  if [ -d "$h/$CGROUP_PARENT" ]; then left+=("cgroup $h/$CGROUP_PARENT"); fi
done
if [ ${#left[@]} -gt 0 ]; then
  printf 'localkube: left behind: %s\n' "${left[@]}" >&2
  die "teardown incomplete; state kept in $STATE"
fi

# 8. The state, except the logs. --one-file-system: never reach through a
# mount (there should be none left, checked above).
find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name .localkube -exec rm -rf --one-file-system {} +
log "down in $(awk -v ns="$(( $(date +%s%N) - T0 ))" 'BEGIN { printf "%.1f", ns / 1e9 }')s; logs kept in $STATE/logs"
