#!/usr/bin/env bash
# Tears down what the test node created outside its own processes, from the record the
# e2e crate wrote when it started the node (ENV_DIR/node.env):
#   - the pods' processes (everything in the node's cgroups) and containerd's shims,
#   - the pods' network namespaces (/run/netns/cni-*, matched by inode to those processes),
#   - every mount under ENV_DIR (kubelet volumes, container root filesystems, shm),
#   - the node's cgroups, in every hierarchy,
#   - the kernel sysctls the kubelet changes (restored to the values recorded in
#     /run/servicelog-node when no other node runs any more),
#   - the kubelet's /var/log/containers links into ENV_DIR,
# and with `all` also every process left in the node's network namespace, the processes
# naming ENV_DIR, and the namespace itself (what the watchdog runs when the test process
# died without dropping the environment). Idempotent; leaves alone what it did not create.
#
#   node-down.sh ENV_DIR [node|all]
set -uo pipefail
env_dir="$1" scope="${2:-node}"
state="$env_dir/node.env"
[[ -f $state ]] || exit 0
# shellcheck source=/dev/null
source "$state"
: "${NETNS:=}" "${CGROUP:=}" "${CONTAINERD_SOCK:=}"

cgroup_dirs() { # every hierarchy's copy of the node's cgroup that exists
  [[ -n $CGROUP ]] || return 0
  awk '$9 == "cgroup" || $9 == "cgroup2" {print $5}' /proc/self/mountinfo 2>/dev/null | while read -r mnt; do
    [[ -d "$mnt/$CGROUP" ]] && echo "$mnt/$CGROUP"
  done
}

cgroup_pids() {
  for dir in $(cgroup_dirs); do
    find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

# The pods' network namespaces: those a process of the node's cgroups is in.
pod_netns=()
shim_sockets=()
if compgen -G "/run/netns/cni-*" >/dev/null; then
  declare -A inodes=()
  for pid in $(cgroup_pids); do
    link=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || continue
    link=${link#net:[}; inodes[${link%]}]=1
  done
  for ns in /run/netns/cni-*; do
    ino=$(stat -c %i "$ns" 2>/dev/null) || continue
    [[ -n ${inodes[$ino]:-} ]] && pod_netns+=("$ns")
  done
  # Pods the kubelet was still tearing down when the node stopped (deleted with
  # --wait=false: their processes gone, containerd's CNI DEL and the namespace's removal
  # not yet done): namespaces made since this node started that no process is in. Another
  # node's pod between its namespace's creation and its sandbox's start would look the
  # same for a moment; its kubelet makes the sandbox again.
  for ns in /run/netns/cni-*; do
    [[ $ns -nt $state && -z $(ip netns pids "${ns##*/}" 2>/dev/null) ]] && pod_netns+=("$ns")
  done
  # Recorded by an earlier, interrupted teardown.
  if [[ -f $env_dir/pod-netns ]]; then
    while read -r ns; do [[ -e $ns ]] && pod_netns+=("$ns"); done <"$env_dir/pod-netns"
  fi
  printf '%s\n' "${pod_netns[@]}" >"$env_dir/pod-netns"
fi

for _ in $(seq 1 50); do
  pids=$(cgroup_pids)
  [[ -z $pids ]] && break
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  sleep 0.2
done

kill_matching() { # PATTERN: every process whose command line contains it
  local pid cmd
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [[ $pid == "$$" || $pid == "$PPID" ]] && continue
    cmd=$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
    [[ $cmd == *"$1"* && $cmd != *node-down.sh* ]] && kill -KILL "$pid" 2>/dev/null
  done
}
# The shims name containerd's socket; containerd (if still up) its config in ENV_DIR. A
# killed shim leaves its socket in /run/containerd/s, named (containerd 1.6) by the
# sha256 of <containerd address>/<namespace>/<id>.
if [[ -n $CONTAINERD_SOCK ]]; then
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    cmdline=$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
    read -r -a args <<<"$cmdline"
    [[ ${args[0]:-} == *containerd-shim* && " ${args[*]} " == *" $CONTAINERD_SOCK "* ]] || continue
    ns="" id=""
    for ((i = 0; i < ${#args[@]} - 1; i++)); do
      case ${args[i]} in -namespace) ns=${args[i + 1]} ;; -id) id=${args[i + 1]} ;; esac
    done
    [[ -n $ns && -n $id ]] && shim_sockets+=("/run/containerd/s/$(printf '%s' "$CONTAINERD_SOCK/$ns/$id" | sha256sum | cut -d' ' -f1)")
  done
  kill_matching "$CONTAINERD_SOCK"
fi
kill_matching "$env_dir/node/containerd.toml"
if [[ $scope == all ]]; then
  if [[ -n $NETNS && -e /run/netns/$NETNS ]]; then
    # shellcheck disable=SC2046
    kill -KILL $(ip netns pids "$NETNS" 2>/dev/null) 2>/dev/null
  fi
  kill_matching "$env_dir/"
fi
sleep 0.2

# Mounts under ENV_DIR and the pods' namespaces, deepest first, until none is left.
for _ in 1 2 3 4 5; do
  mounts=$(awk -v d="$env_dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r -u)
  for ns in "${pod_netns[@]}"; do grep -q " $ns " /proc/self/mountinfo && mounts+=$'\n'"$ns"; done
  [[ -z ${mounts//$'\n'/} ]] && break
  while read -r m; do
    [[ -n $m ]] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
  done <<<"$mounts"
done
for ns in "${pod_netns[@]}"; do rm -f "$ns"; done
rm -f "$env_dir/pod-netns"

for dir in $(cgroup_dirs); do
  find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# The kubelet's sysctls, back to what they were before the first running node started —
# once no other node runs (a user whose environment has no process left is gone).
sysctl_state=/run/servicelog-node
if [[ -n $NETNS && -d $sysctl_state/users ]]; then
  rm -f "$sysctl_state/users/$NETNS"
  others=0
  for user in "$sysctl_state"/users/*; do
    [[ -f $user ]] || continue
    other=$(cat "$user")
    if [[ -n $other ]] && grep -qsF -- "$other/" /proc/[0-9]*/cmdline; then
      others=1
    else
      rm -f "$user"
    fi
  done
  if ((others == 0)) && [[ -f $sysctl_state/sysctls ]]; then
    # shellcheck source=/dev/null
    source "$sysctl_state/sysctls"
    for key in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
      var="SYSCTL_${key//./_}"
      [[ -n ${!var:-} ]] && echo "${!var}" >"/proc/sys/${key//.//}" 2>/dev/null
    done
    rm -f "$sysctl_state/sysctls"
    rmdir "$sysctl_state/users" "$sysctl_state" 2>/dev/null
  fi
fi

if [[ -d /var/log/containers ]]; then
  for link in /var/log/containers/*; do
    [[ -L $link && $(readlink "$link") == "$env_dir/"* ]] && rm -f "$link"
  done
  [[ -n ${CREATED_VAR_LOG_CONTAINERS:-} ]] && rmdir /var/log/containers 2>/dev/null
fi
# containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state dir; the
# directories go when empty (a system containerd's are never empty while it runs).
for sock in "${shim_sockets[@]}"; do rm -f "$sock"; done
rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null

if [[ $scope == all && -n $NETNS ]]; then
  ip netns del "$NETNS" 2>/dev/null
fi
# Done: a later reap of this directory has nothing to undo (and must not restore sysctls
# another node has set since).
if [[ $scope == all ]]; then
  mv "$state" "$state.done" 2>/dev/null
fi
# `ip netns add` turned /run/netns into a mount point if it was not one; undo that once no
# namespace is left in it.
if [[ $scope == all && -n ${RUN_NETNS_WAS_UNMOUNTED:-} ]] && [[ -z $(ls -A /run/netns 2>/dev/null) ]]; then
  grep -q ' /run/netns ' /proc/self/mountinfo && umount /run/netns 2>/dev/null && rmdir /run/netns 2>/dev/null
fi
exit 0
