#!/usr/bin/env bash
# Hosts of a test on one machine: network namespaces joined by a switch, an isolated
# network that exists only inside them (nothing of it is in the machine's own namespace,
# and it has no route out).
#
#   tests/netns.sh up NAME HOST...   namespaces NAME-sw (a bridge) and NAME-HOST for each
#                                    HOST given as NAME=ADDRESS/PREFIX; in each host eth0
#                                    carries the address, its peer p-HOST is a port of the
#                                    switch's bridge
#   tests/netns.sh link NAME HOST up|down   the switch port of HOST (a pulled cable)
#   tests/netns.sh down NAME         deletes every namespace NAME-* (their links go too)
#   tests/netns.sh stale PREFIX      deletes the namespaces PREFIX<PID>-* whose test
#                                    process PID is gone (a run that was killed)
# Needs root and iproute2.
set -euo pipefail
cmd=$1
shift
case $cmd in
up)
  name=$1
  shift
  sw=$name-sw
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  for spec in "$@"; do
    host=${spec%%=*} addr=${spec#*=}
    ns=$name-$host
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "p-$host" netns "$sw"
    ip -n "$ns" addr add "$addr" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$sw" link set "p-$host" master br0
    ip -n "$sw" link set "p-$host" up
  done
  ;;
link)
  ip -n "$1-sw" link set "p-$2" "$3"
  ;;
down)
  for ns in $(ip netns list | awk '{print $1}'); do
    case $ns in "$1"-*) ip netns del "$ns" ;; esac
  done
  ;;
stale)
  for ns in $(ip netns list | awk '{print $1}'); do
    case $ns in
    "$1"[0-9]*-*)
      pid=${ns#"$1"}
      pid=${pid%%-*}
      kill -0 "$pid" 2>/dev/null || ip netns del "$ns"
      ;;
    esac
  done
  ;;
*)
  echo "usage: tests/netns.sh up|link|down|stale ..." >&2
  exit 2
  ;;
esac
