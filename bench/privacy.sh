#!/usr/bin/env bash
# What privacy costs (make bench-privacy; about 30 minutes, not part of make bench).
#
# 1. Secure aggregation against plain FedAvg, the same rounds: 2nn (199,210 parameters),
#    N clients all in the round, 2 rounds, one local epoch on 60 images each; per N the
#    mean round seconds, the server's unmasking seconds and the bytes each way, plain and
#    secure, and their ratios.  N = 10 and 100 with every client a neighbour of every
#    other (SecAgg), N = 500 with 40 neighbours each (SecAgg+).  All N clients run in one
#    fl-client process (one event loop), so a round's seconds hold every client's key
#    agreements and masks one after the other: per client, divide by N.  Bonawitz et al.
#    (2017) report 1.73x the bytes of plain sending for 2^10 users with 2^20 16-bit
#    elements; our inputs are 32-bit ring elements, the size of float32, so the byte
#    ratio measures the protocol's own messages (keys and shares: O(N) or O(k) a client).
# 2. Differential privacy against none (central noise): 2nn, 100 IID clients, 10 a round
#    by Poisson sampling (q = 0.1), 5 local epochs of batch 10 at lr 0.05, 50 rounds,
#    adaptive clipping from S = 1 towards the median norm; noise multiplier z = 0.5 and 1;
#    test accuracy at rounds 10, 20 and 50 and epsilon at delta 1e-5.
#
#   bench/privacy.sh          (FL_BIN_DIR, FL_SCALE_CERTS as make sets)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FL_BIN_DIR:-build}
certs=${FL_SCALE_CERTS:-build/scale-certs}
work=$(mktemp -d /tmp/fl-privacy-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
[ -f "$certs/client-0500.crt" ] || { echo "privacy: no client certificates in $certs" >&2; exit 1; }
runs=0

# run NAME CLIENTS ROUNDS [server flags...]: the metrics in $work/NAME.jsonl.
run() {
  local name=$1 n=$2 rounds=$3 per=$2 epochs=1 batch=20 lr=0.1 samples=$(($2 * 60))
  shift 3
  if [ "$name" != "${name#dp}" ]; then per=10 epochs=5 batch=10 lr=0.05 samples=60000; fi
  runs=$((runs + 1))
  local port=$((20000 + RANDOM % 9000 + runs))
  "$bin/fl-server" --listen "127.0.0.1:$port" --model 2nn --rounds "$rounds" \
    --clients-per-round "$per" --min-clients "$n" --epochs "$epochs" --batch-size "$batch" \
    --lr "$lr" --seed 1 --test-data fashion-mnist:test --eval-every 10 --metrics "$work/$name.jsonl" --out "$work/$name.bin" \
    --ca "$certs/ca.crt" --cert "$certs/server.crt" --key "$certs/server.key" \
    --round-timeout 600 "$@" 2>"$work/$name.server.log" &
  local spid=$!
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients "$n" \
    --certs-dir "$certs" --ca "$certs/ca.crt" --data fashion-mnist:train --partition iid \
    --max-samples "$samples" --seed 1 --workers 2 \
    --retry-base 0.05 --retry-max 0.5 2>"$work/$name.client.log" || {
    echo "privacy: $name: fl-client failed; its log:" >&2
    tail -5 "$work/$name.client.log" >&2
    exit 1
  }
  wait "$spid" || {
    echo "privacy: $name: fl-server failed; its log:" >&2
    tail -5 "$work/$name.server.log" >&2
    exit 1
  }
}
# mean KEY FILE: the mean of a numeric key over the rounds.
mean() { grep -o "\"$1\":[0-9.e+-]*" "$2" | cut -d: -f2 | awk '{ s += $1; n++ } END { printf "%.3f", n ? s / n : 0 }'; }
sum() { grep -o "\"$1\":[0-9]*" "$2" | cut -d: -f2 | awk '{ s += $1 } END { printf "%.2f", s / 1e6 }'; }
last() { tail -1 "$2" | grep -o "\"$1\":[0-9.e+-]*" | cut -d: -f2; }

echo "Secure aggregation: 2nn (199,210 parameters), every client in each of 2 rounds"
printf '  %-6s %-12s %7s %10s %10s %10s %10s %8s %8s\n' clients protocol summed "round s" "unmask s" "MB in" "MB out" "s ratio" "B ratio"
for n in 10 100 500; do
  flags=(--secagg --secagg-timeout 900) # the simulated clients' crypto is serial: no stage timeout
  proto=SecAgg
  [ "$n" -ge 500 ] && flags+=(--secagg-neighbors 40) && proto="SecAgg+ k=40"
  run "plain$n" "$n" 2
  run "secure$n" "$n" 2 "${flags[@]}"
  ps=$(mean seconds "$work/plain$n.jsonl"); ss=$(mean seconds "$work/secure$n.jsonl")
  pin=$(sum bytes_received "$work/plain$n.jsonl"); sin=$(sum bytes_received "$work/secure$n.jsonl")
  pout=$(sum bytes_sent "$work/plain$n.jsonl"); sout=$(sum bytes_sent "$work/secure$n.jsonl")
  printf '  %-6s %-12s %7s %10s %10s %10s %10s\n' "$n" plain "$(mean updates_accepted "$work/plain$n.jsonl")" "$ps" - "$pin" "$pout"
  printf '  %-6s %-12s %7s %10s %10s %10s %10s %8s %8s\n' "$n" "$proto" "$(mean inputs "$work/secure$n.jsonl")" "$ss" \
    "$(mean unmask_seconds "$work/secure$n.jsonl")" "$sin" "$sout" \
    "$(awk -v a="$ss" -v b="$ps" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$sin" -v b="$sout" -v c="$pin" -v d="$pout" 'BEGIN { printf "%.2f", (a + b) / (c + d) }')"
done

acc() { sed -n "s/.*\"round\":$2,.*\"test_accuracy\":\([0-9.]*\).*/\1/p" "$work/$1.jsonl"; }
echo "Differential privacy: 2nn, 100 IID clients, q = 0.1 (Poisson), adaptive clip from 1, 50 rounds"
printf '  %-10s %9s %9s %9s %10s\n' noise "round 10" "round 20" "round 50" epsilon
for z in 0 0.5 1; do
  if [ "$z" = 0 ]; then run dp0 100 50; else run "dp$z" 100 50 --dp-clip 1 --dp-quantile 0.5 --dp-noise "$z"; fi
  printf '  %-10s %9s %9s %9s %10s\n' "z=$z" "$(acc "dp$z" 10)" "$(acc "dp$z" 20)" "$(acc "dp$z" 50)" \
    "$(last epsilon "$work/dp$z.jsonl" || echo -)"
done
