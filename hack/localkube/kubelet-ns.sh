#!/usr/bin/env bash
# Runs the kubelet in a mount namespace of its own that keeps it from
# writing to the machine outside $STATE. up.sh starts it as:
#
#   unshare -m --propagation unchanged -- kubelet-ns.sh STATE kubelet ARGS...
#
# In that namespace only:
#
#   - Six host-wide kernel settings read as the values the kubelet insists
#     on. At start it checks vm.overcommit_memory, vm.panic_on_oom,
#     kernel.panic, kernel.panic_on_oops, kernel.keys.root_maxkeys and
#     kernel.keys.root_maxbytes and rewrites any that differ (or, with
#     protectKernelDefaults: true, refuses to start). None belongs to a
#     network namespace: writing them would change the whole machine
#     (kernel.panic_on_oops=1 turns any kernel oops into a panic). Each file
#     STATE/kubelet-sysctl/<name> (e.g. vm.overcommit_memory, holding the
#     wanted value) is bind-mounted over /proc/sys/<name>.
#   - /var/lib/kubelet is STATE/kubelet (its --root-dir): the kubelet still
#     puts its device-plugin socket under the hard-coded
#     /var/lib/kubelet/device-plugins, whatever --root-dir says.
#
# Both vanish with the kubelet. Its volume mounts still reach containerd and
# runc outside: up.sh makes STATE/kubelet a shared mount first, so mounts
# made below it propagate back.
set -euo pipefail

state=$1
shift
# Refuse to run anywhere but in a fresh mount namespace: here the bind mounts
# would cover the real settings for every process on the machine.
self=$(readlink /proc/self/ns/mnt)
if [ "$self" = "$(readlink "/proc/$PPID/ns/mnt")" ] || [ "$self" = "$(readlink /proc/1/ns/mnt)" ]; then
  echo "kubelet-ns: not in a mount namespace of its own; run it under unshare -m" >&2
  exit 1
fi
# /proc private first, so the bind mounts cannot propagate to a peer.
mount --make-rprivate /proc
for f in "$state"/kubelet-sysctl/*; do
  name=${f##*/}
  mount --bind "$f" "/proc/sys/${name//.//}"
done
mount --bind "$state/kubelet" /var/lib/kubelet
exec "$@"
