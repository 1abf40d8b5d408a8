#!/usr/bin/env bash
# Cuts the etcd leader off from the other two members, watches them elect a
# new leader, heals the partition and checks that the cluster is whole again.
#
#   hearth lab up examples/labs/etcd/lab.toml
#   examples/labs/etcd/partition-leader.sh
#
# TIMEOUT (seconds, default 120) bounds each wait.
set -euo pipefail

NODES=(etcd-1 etcd-2 etcd-3)
TIMEOUT=${TIMEOUT:-120}
FAULT=""

# etcdctl in a machine, against that machine's own member.
etcdctl_in() {
  local node=$1
  shift
  hearth machine exec "$node" -- env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 \
    --dial-timeout 2s --command-timeout 3s "$@"
}

# "true TERM" if the member in machine $1 is the leader, "false TERM" if
# not; fails if it does not answer. (`endpoint status -w simple` prints:
# endpoint, id, version, db size, is leader, is learner, raft term, ….)
status_of() {
  etcdctl_in "$1" endpoint status -w simple 2>/dev/null | awk -F', ' '{ print $5, $7 }'
}

# The leader among the given machines' members, as "NAME TERM", or nothing.
leader_among() {
  local node status
  for node in "$@"; do
    status=$(status_of "$node") || continue
    if [[ $status == true* ]]; then
      echo "$node ${status#true }"
      return
    fi
  done
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
too_long() { awk -v s="$(since "$1")" -v t="$TIMEOUT" 'BEGIN { exit !(s > t) }'; }

heal() {
  if [[ -n $FAULT ]]; then
    hearth fault heal "$FAULT" >/dev/null || true
    FAULT=""
  fi
}
trap heal EXIT

echo "== the cluster"
etcdctl_in etcd-1 endpoint status --cluster -w table

read -r LEADER TERM <<<"$(leader_among "${NODES[@]}")" || true
if [[ -z ${LEADER:-} ]]; then
  echo "no member says it is the leader; is the lab up? (hearth lab ls)" >&2
  exit 1
fi
OTHERS=()
for node in "${NODES[@]}"; do
  [[ $node == "$LEADER" ]] || OTHERS+=("$node")
done
echo "leader: $LEADER (term $TERM)"
etcdctl_in "${OTHERS[0]}" put /lab/before "written before the partition" >/dev/null

echo
echo "== partitioning $LEADER from ${OTHERS[*]}"
FAULT=$(hearth fault partition "$LEADER" --from "${OTHERS[0]},${OTHERS[1]}" | awk '{ print $1 }')
hearth fault ls
started=$(now)
NEW=""
while [[ -z $NEW ]]; do
  if too_long "$started"; then
    echo "no new leader among ${OTHERS[*]} after ${TIMEOUT}s" >&2
    exit 1
  fi
  read -r NEW NEW_TERM <<<"$(leader_among "${OTHERS[@]}")" || true
  [[ -n ${NEW:-} ]] || sleep 1
done
echo "new leader: $NEW (term $NEW_TERM), elected $(since "$started")s after the partition"
etcdctl_in "$NEW" put /lab/during "written by the majority during the partition" >/dev/null
echo "the majority, ${OTHERS[*]}, accepts writes"
if etcdctl_in "$LEADER" put /lab/lost "the old leader alone" >/dev/null 2>&1; then
  echo "the old leader accepted a write on its own: that must not happen" >&2
  exit 1
fi
echo "the old leader, $LEADER, alone, refuses writes (no quorum)"

echo
echo "== healing"
heal
started=$(now)
until etcdctl_in "$LEADER" get /lab/during >/dev/null 2>&1 &&
  etcdctl_in etcd-1 endpoint health --cluster >/dev/null 2>&1; do
  if too_long "$started"; then
    echo "the cluster was not healthy ${TIMEOUT}s after the heal" >&2
    exit 1
  fi
  sleep 1
done
echo "healthy again $(since "$started")s after the heal; $LEADER caught up and reads:"
etcdctl_in "$LEADER" get /lab/during --print-value-only
etcdctl_in etcd-1 endpoint status --cluster -w table
