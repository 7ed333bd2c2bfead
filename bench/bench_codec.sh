#!/usr/bin/env bash
# What compression saves the server (make bench): for 2nn and cnn, each update encoding
# with the model sent as float16 (float32 for the float32 row), bytes per update and per
# model sent, and the server's CPU milliseconds per update (model out, update in, TLS
# both ways, fold), through the real binaries over TLS on loopback.
#
# The CPU per update is the median over rounds 2 to R of the server's CPU seconds in the
# round (`cpu_seconds` in its metrics) over the round's updates (10 a round): round 1,
# which holds the TLS handshakes, is left out, and the median keeps a round that this
# shared machine slowed from moving the figure.  The clients train 1 epoch on 100 samples
# each (their work does not count; they share this machine's cores with the server).
#
# Target: int8 updates with float16 models cost the server at least 2.5x less CPU per
# update than float32 both ways.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FL_BIN_DIR:-build}
certs=${FL_CERTS:-build/test-certs}
work=$(mktemp -d /tmp/fl-codec-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
R=${FL_BENCH_CODEC_ROUNDS:-16}
runs=0

# cpu MODEL UPLINK DOWNLINK ROUNDS: the median server CPU milliseconds per update over rounds
# 2 to ROUNDS; the last metrics line in $work/last.jsonl.
cpu() {
  runs=$((runs + 1))
  local port=$((20000 + (RANDOM % 5000) * 2 + runs % 2)) name="$1-${2%%:*}-$4"
  rm -f "$work/m.jsonl"
  "$bin/fl-server" --listen "127.0.0.1:$port" --model "$1" --rounds "$4" --clients-per-round 10 \
    --min-clients 10 --epochs 1 --batch-size 20 --lr 0.05 --seed 1 --uplink "$2" \
    --downlink "$3" --metrics "$work/m.jsonl" --out "$work/$name.bin" --ca "$certs/ca.crt" \
    --cert "$certs/server.crt" --key "$certs/server.key" 2>"$work/$name.server.log" &
  local spid=$!
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients 10 \
    --certs-dir "$certs" --ca "$certs/ca.crt" --data fashion-mnist:train --max-samples 1000 \
    --partition iid --workers 2 --retry-base 0.05 --retry-max 0.5 2>"$work/$name.client.log" || {
    echo "bench_codec: fl-client failed ($name); its log:" >&2
    tail -5 "$work/$name.client.log" >&2
    exit 1
  }
  wait "$spid" || {
    echo "bench_codec: fl-server failed ($name); its log:" >&2
    tail -5 "$work/$name.server.log" >&2
    exit 1
  }
  tail -1 "$work/m.jsonl" >"$work/last.jsonl"
  sed -n '2,$p' "$work/m.jsonl" | awk '{
      c = $0; sub(/.*"cpu_seconds":/, "", c); sub(/[,}].*/, "", c)
      u = $0; sub(/.*"updates_accepted":/, "", u); sub(/[,}].*/, "", u)
      if (u > 0) print 1000 * c / u }' | sort -g | awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "nan"; exit }
      printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
num() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" "$work/last.jsonl"; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

echo "Compression, server side: 10 clients a round, $R rounds, median server CPU per update over rounds 2-$R"
printf '  %-5s %-12s %-9s %14s %14s %15s %10s\n' model updates models "update bytes" "model bytes" "server CPU/upd" "x float32"
fail=0
for model in 2nn cnn; do
  base=""
  for row in "float32 float32" "float16 float16" "int8 float16" "topk:0.01 float16"; do
    set -- $row
    ms=$(cpu "$model" "$1" "$2" "$R")
    ub=$(calc %.0f "$(num update_bytes) / $(num updates_accepted)")
    mb=$(calc %.0f "$(num model_bytes) / $(num clients_selected)")
    [ -z "$base" ] && base=$ms
    x=$(calc %.2f "$base / $ms")
    printf '  %-5s %-12s %-9s %14s %14s %12s ms %9sx\n' "$model" "$1" "$2" "$ub" "$mb" "$ms" "$x"
    [ "$1" = int8 ] && { awk -v x="$x" 'BEGIN { exit !(x >= 2.5) }' || fail=1; }
  done
done
echo "target: int8 updates with float16 models at least 2.5x less server CPU per update than float32: $([ $fail = 0 ] && echo met || echo NOT MET)"
