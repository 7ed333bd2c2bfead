#!/usr/bin/env bash
# Round benchmark: the real fl-server and one `fl-client --clients N --workers 2` process
# over mutually authenticated TLS on loopback, small data per client (--max-samples).
#
#   i.   server peak memory in a round of 100 cnn clients, beside the model's size, and
#        the server's RSS with 100 idle connected clients and no round;
#   ii.  a round's server-side overhead: round seconds - slowest_client_seconds (2nn, 100),
#        and the server's CPU time per round (from /proc, rounds 2 and later);
#   iii. a round of 100 and of 1000 clients of 2nn (1000 connected) and the growth factor;
#   iv.  server peak memory vs clients per round (2nn; 10, 20, 50, 100 of 100 connected),
#        and memory per connected client: (RSS with N idle connections - RSS with 0) / N.
#        The server sends the model to 4 clients per I/O thread at once (8 here) and takes
#        2 updates at once, so from about 10 clients per round on nothing it holds grows.
#
# Round times come from the metrics lines of rounds 2 and later (round 1 runs while the
# simulation is still busy with its connections and data).  Every figure is measured in this run; the targets are
# ratios (to the model size, to each other), never absolute times.  Needs 1000 client
# certificates in FL_SCALE_CERTS (make bench makes them).  usage: bench/bench_round.sh
set -euo pipefail

bin=${FL_BIN_DIR:-build}
certs=${FL_SCALE_CERTS:-build/scale-certs}
work=$(mktemp -d /tmp/fl-bench-round-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
[ -f "$certs/client-1000.crt" ] || { echo "bench_round: no 1000 client certificates in $certs" >&2; exit 1; }

tls_server=(--ca "$certs/ca.crt" --cert "$certs/server.crt" --key "$certs/server.key")
tls_client=(--server-name localhost --certs-dir "$certs" --ca "$certs/ca.crt")

# server NAME MODEL CONNECTED PER_ROUND ROUNDS [MIN_CLIENTS]: starts fl-server; sets spid
# and port.  MIN_CLIENTS above CONNECTED means no round ever starts.
server() {
  local name=$1 model=$2 per=$4 rounds=$5 min=${6:-$3}
  "$bin/fl-server" --listen 127.0.0.1:0 --model "$model" --rounds "$rounds" \
    --clients-per-round "$per" --min-clients "$min" --batch-size 20 \
    --metrics "$work/$name.jsonl" --out "$work/$name.bin" "${tls_server[@]}" \
    >"$work/$name.server.log" 2>&1 &
  spid=$! cpid=
  pids+=("$spid")
  for _ in $(seq 300); do
    port=$(sed -n 's/.*\[server\] listening on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$work/$name.server.log")
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  echo "bench_round: fl-server did not start (see $work/$name.server.log)" >&2
  exit 1
}

# clients NAME N SAMPLES_EACH: one fl-client process with N virtual clients; sets cpid.
clients() {
  local name=$1 n=$2 each=$3
  "$bin/fl-client" --server "127.0.0.1:$port" "${tls_client[@]}" --clients "$n" --workers 2 \
    --data fashion-mnist:train --max-samples $((n * each)) --partition iid \
    --num-partitions "$n" >"$work/$name.client.log" 2>&1 &
  cpid=$!
  pids+=("$cpid")
}

# wait_ready NAME N: until the server has N clients ready.
wait_ready() {
  for _ in $(seq 1800); do
    grep -q "; $2 clients ready" "$work/$1.server.log" && return 0
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench_round: $2 clients never got ready (see $work/$1.server.log)" >&2
  exit 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# stop: SIGTERM to the server and the clients (if any), then wait for them.
stop() {
  kill -TERM "$spid" ${cpid:+"$cpid"} 2>/dev/null || true
  wait "$spid" ${cpid:+"$cpid"} 2>/dev/null || true
}

# server_cpu NAME FROM TO: the server's CPU seconds between the first log line holding
# FROM and the first holding TO (polled from /proc every 20 ms).
server_cpu() {
  local t0= t1= now
  while kill -0 "$spid" 2>/dev/null; do
    now=$(awk '{print $14 + $15}' "/proc/$spid/stat" 2>/dev/null) || break
    [ -z "$t0" ] && grep -q "$2" "$work/$1.server.log" && t0=$now
    [ -n "$t0" ] && grep -q "$3" "$work/$1.server.log" && { t1=$now; break; }
    sleep 0.02
  done
  [ -n "$t1" ] || { echo "bench_round: no '$3' in $work/$1.server.log" >&2; exit 1; }
  calc %.3f "($t1 - $t0) / $(getconf CLK_TCK)"
}

# finish NAME: waits for a run to end by itself; both must exit 0.
finish() {
  local rc=0
  wait "$spid" || rc=$?
  [ "$rc" = 0 ] || { echo "bench_round: fl-server failed ($rc; $work/$1.server.log)" >&2; exit 1; }
  wait "$cpid" || rc=$?
  [ "$rc" = 0 ] || { echo "bench_round: fl-client failed ($rc; $work/$1.client.log)" >&2; exit 1; }
}

# metric NAME ROUND KEY: a number from a metrics line.
metric() {
  sed -n "/\"round\":$2,/s/.*\"$3\":\([0-9.e+-]*\).*/\1/p" "$work/$1.jsonl"
}

calc() { awk "BEGIN { printf \"$1\", $2 }"; }
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

cnn_params=1663370
two_params=199210
model_kib() { echo $(($1 * 4 / 1024)); }

# ---- iv (baseline part): RSS with 0, 100 and 1000 idle connections (2nn) ----
server idle0 2nn 0 1 1 100000
sleep 1
rss0=$(rss_kib "$spid")
stop

server idle 2nn 1000 100 1 100000
clients idle 1000 60
wait_ready idle 100
rss100=$(rss_kib "$spid")
wait_ready idle 1000
sleep 1
rss1000=$(rss_kib "$spid")
stop

# ---- i: cnn, 100 clients: idle, then one round ----
server cnnidle cnn 100 100 1 101
clients cnnidle 100 10
wait_ready cnnidle 100
sleep 1
cnn_idle=$(rss_kib "$spid")
stop
server cnn cnn 100 100 2
clients cnn 100 10
finish cnn
cnn_peak=$(metric cnn 2 peak_rss_kib)

# ---- ii, iii: 2nn, 1000 connected, rounds of 100, then rounds of 1000 ----
server r100 2nn 1000 100 4
clients r100 1000 60
cpu100=$(server_cpu r100 'round 2/4: ' 'round 4/4 done')
finish r100
sec100=() over100=()
for r in 2 3 4; do
  s=$(metric r100 $r seconds) slow=$(metric r100 $r slowest_client_seconds)
  sec100+=("$s")
  over100+=("$(calc %.4f "$s - $slow")")
done
server r1000 2nn 1000 1000 2
clients r1000 1000 60
cpu1000=$(server_cpu r1000 'round 2/2: ' 'round 2/2 done')
finish r1000
t100=$(median3 "${sec100[@]}")
o100=$(median3 "${over100[@]}")
t1000=$(metric r1000 2 seconds)
o1000=$(calc %.4f "$t1000 - $(metric r1000 2 slowest_client_seconds)")

# ---- iv: peak memory vs clients per round, 100 connected ----
peaks=()
for k in 10 20 50 100; do
  server "k$k" 2nn 100 "$k" 2
  clients "k$k" 100 60
  finish "k$k"
  peaks+=("$(metric "k$k" 2 peak_rss_kib)")
done

# ---- report ----
cnn_kib=$(model_kib $cnn_params)
budget=$((4 * cnn_kib + 256 * 100))
echo "i. server memory, cnn ($cnn_params parameters = $cnn_kib KiB), 100 clients connected"
printf '  %-44s %10s %12s\n' "" "KiB" "model sizes"
printf '  %-44s %10d %12s\n' "RSS, 100 idle clients, no round" "$cnn_idle" "$(calc %.2f "$cnn_idle / $cnn_kib")"
printf '  %-44s %10d %12s\n' "peak RSS, round of 100 (metrics peak_rss_kib)" "$cnn_peak" "$(calc %.2f "$cnn_peak / $cnn_kib")"
printf '  %-44s %10d %12s\n' "target: 4 model sizes + 256 KiB x 100 conns" "$budget" "$(calc %.2f "$budget / $cnn_kib")"
printf '  peak / target = %s (<= 1 meets it)\n' "$(calc %.2f "$cnn_peak / $budget")"
echo
echo "ii, iii. 2nn rounds, 1000 clients connected, 60 samples each, one fl-client process"
c100=$(calc %.3f "$cpu100 / 3")
printf '  %-27s %9s %11s %15s %15s %13s\n' "clients per round" "round s" "overhead s" "overhead/round" "server CPU s" "CPU/update"
printf '  %-27s %9s %11s %15s %15s %13s\n' "100 (median of rounds 2-4)" "$t100" "$o100" \
  "$(calc %.3f "$o100 / $t100")" "$c100" "$(calc %.2f "1000 * $c100 / 100") ms"
printf '  %-27s %9s %11s %15s %15s %13s\n' "1000 (round 2)" "$t1000" "$o1000" \
  "$(calc %.3f "$o1000 / $t1000")" "$cpu1000" "$(calc %.2f "1000 * $cpu1000 / 1000") ms"
printf '  growth factor, 1000 vs 100 per round: %s (10 = linear in clients)\n' "$(calc %.2f "$t1000 / $t100")"
echo "  overhead = round seconds - slowest_client_seconds: all but one client's training,"
echo "  so here mostly the other clients' training, queued on the simulation's 2 workers;"
echo "  server CPU (mean of rounds 2-4, resp. round 2) is what the server itself spends:"
echo "  sending the model, receiving and folding the updates, TLS both ways."
echo
echo "iv. server memory, 2nn ($two_params parameters = $(model_kib $two_params) KiB)"
printf '  %-44s %10s\n' "clients per round (100 connected)" "peak KiB"
i=0
for k in 10 20 50 100; do
  printf '  %-44s %10s\n' "$k" "${peaks[$i]}"
  i=$((i + 1))
done
printf '  peak(100) / peak(10) = %s, peak(100) / peak(20) = %s (flat = 1)\n' \
  "$(calc %.3f "${peaks[3]} / ${peaks[0]}")" "$(calc %.3f "${peaks[3]} / ${peaks[1]}")"
printf '  %-44s %10s %16s\n' "idle connections" "RSS KiB" "KiB / connection"
printf '  %-44s %10s %16s\n' "0" "$rss0" "-"
printf '  %-44s %10s %16s\n' "100" "$rss100" "$(calc %.1f "($rss100 - $rss0) / 100")"
printf '  %-44s %10s %16s\n' "1000" "$rss1000" "$(calc %.1f "($rss1000 - $rss0) / 1000")"
