#!/usr/bin/env bash
# Compression against accuracy (make bench-compression; about 10-20 minutes, not part of
# make bench): Fashion-MNIST, the 2nn model, 100 clients on IID partitions of the 60,000
# training images, 10 a round, 5 local epochs of batch 10 at lr 0.05, 50 rounds, for each
# update encoding (the lossy ones with the clients' error feedback; models sent as float16
# beside the compressed updates).  Prints test accuracy at rounds 10, 20 and 50 and the
# bytes sent each way over the run.
#
# Targets: int8 updates with float16 models lose at most 0.5 points of accuracy at round
# 50 against float32; top-k 1 % with error feedback at most 2 points.
#
#   bench/compression.sh [ROUNDS [SEED]]   (FL_BIN_DIR, FL_SCALE_CERTS as make sets)
#
# SEED (default 1) seeds the model's initialisation, the partition and the clients'
# shuffles: the figures follow it, not the machine's timing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FL_BIN_DIR:-build}
certs=${FL_SCALE_CERTS:-build/scale-certs}
rounds=${1:-50}
seed=${2:-1}
work=$(mktemp -d /tmp/fl-compression-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
[ -f "$certs/client-0100.crt" ] || { echo "compression: no client certificates in $certs" >&2; exit 1; }
runs=0

# run NAME UPLINK DOWNLINK: the metrics in $work/NAME.jsonl.
run() {
  runs=$((runs + 1))
  local port=$((20000 + RANDOM % 9000 + runs))
  "$bin/fl-server" --listen "127.0.0.1:$port" --model 2nn --rounds "$rounds" \
    --clients-per-round 10 --min-clients 100 --epochs 5 --batch-size 10 --lr 0.05 --seed "$seed" \
    --uplink "$2" --downlink "$3" --test-data fashion-mnist:test --eval-every 10 \
    --metrics "$work/$1.jsonl" --out "$work/$1.bin" --ca "$certs/ca.crt" \
    --cert "$certs/server.crt" --key "$certs/server.key" 2>"$work/$1.server.log" &
  local spid=$!
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients 100 \
    --certs-dir "$certs" --ca "$certs/ca.crt" --data fashion-mnist:train --partition iid \
    --seed "$seed" --workers 2 --retry-base 0.05 --retry-max 0.5 2>"$work/$1.client.log" || {
    echo "compression: $1: fl-client failed; its log:" >&2
    tail -5 "$work/$1.client.log" >&2
    exit 1
  }
  wait "$spid" || {
    echo "compression: $1: fl-server failed; its log:" >&2
    tail -5 "$work/$1.server.log" >&2
    exit 1
  }
}
acc() { sed -n "s/.*\"round\":$2,.*\"test_accuracy\":\([0-9.]*\).*/\1/p" "$work/$1.jsonl"; }
total() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$work/$1.jsonl" | awk '{ s += $1 } END { printf "%.1f", s / 1e6 }'; }

echo "Compression and accuracy: 2nn, 100 IID clients, 10 a round, 5 epochs of batch 10, $rounds rounds, seed $seed"
printf '  %-20s %-9s %9s %9s %9s %14s %13s\n' updates models "round 10" "round 20" "round $rounds" "update MB" "model MB"
fail=0
ref=""
for row in "float32 float32" "float16 float16" "int8 float16" "int8:stochastic float16" "topk:0.01 float16"; do
  set -- $row
  name=${1%%:*}${1#*:}
  [ "$1" = "${1%%:*}" ] && name=$1
  name=$(echo "$name" | tr -c 'a-z0-9\n' '_')
  run "$name" "$1" "$2"
  last=$(acc "$name" "$rounds")
  printf '  %-20s %-9s %9s %9s %9s %14s %13s\n' "$1" "$2" "$(acc "$name" 10)" "$(acc "$name" 20)" \
    "$last" "$(total "$name" update_bytes)" "$(total "$name" model_bytes)"
  [ -z "$ref" ] && ref=$last
  case "$1" in
    int8) awk -v a="$last" -v r="$ref" 'BEGIN { exit !(a >= r - 0.005) }' || fail=1 ;;
    topk*) awk -v a="$last" -v r="$ref" 'BEGIN { exit !(a >= r - 0.02) }' || fail=1 ;;
  esac
done
echo "targets: int8 + float16 within 0.5 points of float32, top-k 1 % within 2 points, at round $rounds: $([ $fail = 0 ] && echo met || echo NOT MET)"
