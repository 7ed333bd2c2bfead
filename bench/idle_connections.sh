#!/usr/bin/env bash
# Idle connections at scale (make bench-scale): one fl-server holds N mutually
# authenticated TLS connections (default 10,000) from one `fl-client --clients N`
# process, with heartbeats every 5 s and no round (--min-clients N+1).  Reports the
# server's memory per connection (RSS with N ready clients minus RSS with none, / N),
# the client process's memory per virtual client, the handshake rate, and the CPU both
# spend keeping the idle connections alive over three heartbeat intervals.  Then the
# reconnect storm: the server is stopped with SIGTERM (it tells every client to come back
# in 2-3 s) and restarted with --resume, twice: first with TLS session resumption (the
# clients give back the tickets of the first server, whose keys it kept in its key file),
# then with --ticket-lifetime 0 (every client makes a full handshake); each time, the
# seconds from the SIGTERM until all N are ready again, and the restarted server's CPU
# seconds.  Finally both are stopped with SIGTERM.  Needs N client certificates in
# FL_SCALE10K_CERTS (make bench-scale makes them).  usage: bench/idle_connections.sh [N]
set -euo pipefail

n=${1:-10000}
bin=${FL_BIN_DIR:-build}
certs=${FL_SCALE10K_CERTS:-build/scale10k-certs}
hold=15
work=$(mktemp -d /tmp/fl-bench-idle-XXXXXX)
spid= cpid=
cleanup() {
  for p in $spid $cpid; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
last=$(printf 'client-%04d' "$n")
[ -f "$certs/$last.crt" ] || { echo "idle_connections: no $last.crt in $certs" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Seconds (with fraction) of a log line's ISO timestamp.
stamp() { date -d "$(cut -c1-23 <<<"$1" | tr T ' ')" +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# start_server LOG PORT [ARG...]: sets spid, and port once it listens.
start_server() {
  local log=$1 p=$2
  shift 2
  "$bin/fl-server" --listen "127.0.0.1:$p" --model 2nn --min-clients $((n + 1)) --heartbeat 5 \
    --idle-timeout 60 --out "$work/model.bin" --ca "$certs/ca.crt" --cert "$certs/server.crt" \
    --key "$certs/server.key" "$@" >"$log" 2>&1 &
  spid=$!
  port=
  for _ in $(seq 300); do
    port=$(sed -n 's/.*\[server\] listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$log")
    [ -n "$port" ] && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "idle_connections: fl-server did not start" >&2; cat "$log" >&2; exit 1; }
}
# wait_ready LOG: until the server in LOG has all n clients ready (or a process died).
wait_ready() {
  for _ in $(seq 18000); do
    grep -q "; $n clients ready" "$1" && return 0
    kill -0 "$spid" 2>/dev/null && kill -0 "$cpid" 2>/dev/null ||
      { echo "idle_connections: a process died (logs in $work)" >&2; trap - EXIT; exit 1; }
    sleep 0.1
  done
  echo "idle_connections: $n clients never got ready (logs in $work)" >&2
  trap - EXIT
  exit 1
}
start_server "$work/server.log" 0
sleep 1
rss0=$(rss_kib "$spid")

t_start=$(date +%s.%N)
"$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --certs-dir "$certs" \
  --ca "$certs/ca.crt" --clients "$n" --workers 1 --heartbeat 5 --idle-timeout 60 \
  --data fashion-mnist:train --max-samples "$n" --partition iid >"$work/client.log" 2>&1 &
cpid=$!
# The client's RSS before it connects: the data set and N TLS identities (its first line,
# "N clients, M training samples ..., W worker(s) of T training threads", comes once
# they are loaded).
loaded=
for _ in $(seq 36000); do
  grep -q ' training samples (' "$work/client.log" && { loaded=1; break; }
  kill -0 "$cpid" 2>/dev/null || { echo "idle_connections: fl-client died" >&2; tail "$work/client.log" >&2; exit 1; }
  sleep 0.05
done
[ -n "$loaded" ] || { echo "idle_connections: fl-client never said it had loaded its clients" >&2; exit 1; }
t_loaded=$(date +%s.%N)
crss_loaded=$(rss_kib "$cpid")
wait_ready "$work/server.log"
t_ready=$(date +%s.%N)
first=$(grep -m1 ' ready (' "$work/server.log")
all=$(grep -m1 "; $n clients ready" "$work/server.log")
hs_seconds=$(calc %.1f "$(stamp "$all") - $(stamp "$first")")
sleep 1
rss_n=$(rss_kib "$spid")
crss_n=$(rss_kib "$cpid")

# Idle: three heartbeat intervals; nobody may drop.
s0=$(cpu_ticks "$spid") c0=$(cpu_ticks "$cpid")
sleep "$hold"
s1=$(cpu_ticks "$spid") c1=$(cpu_ticks "$cpid")
rss_hold=$(rss_kib "$spid")
tick=$(getconf CLK_TCK)
dropped=$(grep -c 'disconnected' "$work/server.log" || true)

# restart LABEL [ARG...]: SIGTERM, restart on the same port with --resume; sets back
# (seconds from the SIGTERM to all n ready), cpu (the new server's CPU seconds until
# then) and resumed (connections that resumed a TLS session).
restart() {
  local label=$1 t0 t1 log="$work/server-$1.log"
  shift
  t0=$(date +%s.%N)
  kill -TERM "$spid"
  wait "$spid" || true
  start_server "$log" "$port" --resume "$@"
  wait_ready "$log"
  t1=$(date +%s.%N)
  cpu=$(calc %.1f "$(cpu_ticks "$spid") / $tick")
  back=$(calc %.1f "$t1 - $t0")
  resumed=$(grep -c 'TLS session resumed' "$log" || true)
}
restart resumption
back_r=$back cpu_r=$cpu resumed_r=$resumed
restart full --ticket-lifetime 0
back_f=$back cpu_f=$cpu resumed_f=$resumed

kill -TERM "$spid" "$cpid"
wait "$spid" || true
wait "$cpid" || true

echo "$n idle TLS connections, one fl-server, one fl-client --clients $n --workers 1 (heartbeat 5 s)"
printf '  %-52s %12s\n' "client start-up (data + $n TLS identities)" "$(calc %.1f "$t_loaded - $t_start") s"
printf '  %-52s %12s\n' "handshakes: first ready to all $n ready" "$hs_seconds s"
printf '  %-52s %12s\n' "handshake rate" "$(calc %.0f "$n / $hs_seconds") /s"
printf '  %-52s %12s\n' "start to all ready" "$(calc %.1f "$t_ready - $t_start") s"
printf '  %-52s %12s\n' "server RSS, no connections" "$rss0 KiB"
printf '  %-52s %12s\n' "server RSS, $n ready" "$rss_n KiB"
printf '  %-52s %12s\n' "server RSS after ${hold} s idle" "$rss_hold KiB"
printf '  %-52s %12s\n' "server memory per connection" "$(calc %.1f "($rss_n - $rss0) / $n") KiB"
printf '  %-52s %12s\n' "client RSS before connecting" "$crss_loaded KiB"
printf '  %-52s %12s\n' "client RSS, $n connected" "$crss_n KiB"
printf '  %-52s %12s\n' "client memory per connection" "$(calc %.1f "($crss_n - $crss_loaded) / $n") KiB"
printf '  %-52s %12s\n' "server CPU while idle (heartbeats)" "$(calc %.1f "100 * ($s1 - $s0) / $tick / $hold") %"
printf '  %-52s %12s\n' "client CPU while idle (heartbeats)" "$(calc %.1f "100 * ($c1 - $c0) / $tick / $hold") %"
printf '  %-52s %12s\n' "connections dropped while idle" "$dropped"
echo "reconnect storm: SIGTERM, restart with --resume, all $n back (from the SIGTERM; clients come back after 2-3 s)"
printf '  %-52s %12s\n' "with session resumption: back after" "$back_r s"
printf '  %-52s %12s\n' "  connections that resumed their TLS session" "$resumed_r"
printf '  %-52s %12s\n' "  restarted server's CPU until then" "$cpu_r s"
printf '  %-52s %12s\n' "without (--ticket-lifetime 0): back after" "$back_f s"
printf '  %-52s %12s\n' "  connections that resumed their TLS session" "$resumed_f"
printf '  %-52s %12s\n' "  restarted server's CPU until then" "$cpu_f s"
printf '  %-52s %12s\n' "ratio of the times, without / with" "$(calc %.1f "$back_f / $back_r")"
[ "$dropped" = 0 ] || { echo "idle_connections: connections dropped (logs in $work)" >&2; trap - EXIT; exit 1; }
