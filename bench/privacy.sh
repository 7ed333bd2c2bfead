#!/usr/bin/env bash
# What privacy costs (make bench-privacy; about 10 minutes, not part of make bench).
#
# 1. Secure aggregation against plain FedAvg, the same round: logreg (7,850 parameters),
#    N clients all in the round, 3 rounds, one local epoch on 60 images each; per N the
#    mean round seconds, the server's unmasking seconds and the bytes each way, plain and
#    secure, and their ratios.  N = 10 and 100 with every client a neighbour of every
#    other (SecAgg), N = 500 with 40 neighbours each (SecAgg+).  Bonawitz et al. (2017)
#    report 1.73x the bytes of plain sending for 500 clients with 2^20 16-bit elements;
#    our inputs are 32-bit ring elements, the same size as float32, so the byte ratio
#    measures the protocol's own messages (keys and shares, O(N) or O(k) per client).
# 2. Differential privacy against none: logreg, 100 IID clients sampled with q = 0.2
#    (Poisson), clip 1, 20 rounds, noise multiplier z = 0, 0.5, 1 (central); test
#    accuracy at round 20 and epsilon at delta 1e-5.
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
  local name=$1 n=$2 rounds=$3 per
  shift 3
  per=$n
  [ "$name" != "${name#dp}" ] && per=20
  runs=$((runs + 1))
  local port=$((20000 + RANDOM % 9000 + runs))
  "$bin/fl-server" --listen "127.0.0.1:$port" --model logreg --rounds "$rounds" \
    --clients-per-round "$per" --min-clients "$n" --epochs 1 --batch-size 20 --lr 0.1 --seed 1 \
    --test-data fashion-mnist:test --metrics "$work/$name.jsonl" --out "$work/$name.bin" \
    --ca "$certs/ca.crt" --cert "$certs/server.crt" --key "$certs/server.key" \
    --round-timeout 600 "$@" 2>"$work/$name.server.log" &
  local spid=$!
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients "$n" \
    --certs-dir "$certs" --ca "$certs/ca.crt" --data fashion-mnist:train --partition iid \
    --max-samples $((n * 60 > 60000 ? 60000 : n * 60)) --seed 1 --workers 2 \
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

echo "Secure aggregation: logreg (7,850 parameters), every client in each of 3 rounds"
printf '  %-6s %-12s %10s %10s %10s %10s %8s %8s\n' clients protocol "round s" "unmask s" "MB in" "MB out" "s ratio" "B ratio"
for n in 10 100 500; do
  flags=(--secagg)
  proto=SecAgg
  [ "$n" -ge 500 ] && flags+=(--secagg-neighbors 40) && proto="SecAgg+ k=40"
  run "plain$n" "$n" 3
  run "secure$n" "$n" 3 "${flags[@]}"
  ps=$(mean seconds "$work/plain$n.jsonl"); ss=$(mean seconds "$work/secure$n.jsonl")
  pin=$(sum bytes_received "$work/plain$n.jsonl"); sin=$(sum bytes_received "$work/secure$n.jsonl")
  pout=$(sum bytes_sent "$work/plain$n.jsonl"); sout=$(sum bytes_sent "$work/secure$n.jsonl")
  printf '  %-6s %-12s %10s %10s %10s %10s\n' "$n" plain "$ps" - "$pin" "$pout"
  printf '  %-6s %-12s %10s %10s %10s %10s %8s %8s\n' "$n" "$proto" "$ss" \
    "$(mean unmask_seconds "$work/secure$n.jsonl")" "$sin" "$sout" \
    "$(awk -v a="$ss" -v b="$ps" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$sin" -v b="$sout" -v c="$pin" -v d="$pout" 'BEGIN { printf "%.2f", (a + b) / (c + d) }')"
done

echo "Differential privacy: logreg, 100 IID clients, q = 0.2 (Poisson), clip 1, 20 rounds"
printf '  %-10s %10s %10s\n' noise accuracy epsilon
for z in 0 0.5 1; do
  if [ "$z" = 0 ]; then run dp0 100 20; else run "dp$z" 100 20 --dp-clip 1 --dp-noise "$z"; fi
  printf '  %-10s %10s %10s\n' "z=$z" "$(last test_accuracy "$work/dp$z.jsonl")" \
    "$(last epsilon "$work/dp$z.jsonl" || echo -)"
done
