#!/usr/bin/env bash
# A server and N separate fl-client processes on one machine, each process one client
# with its own certificate and its own IID partition of Fashion-MNIST: the same layout
# as a real deployment, where each client runs on its own host.
#
# usage: examples/run-local.sh [N_CLIENTS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
rounds=${2:-5}
bin=${FL_BIN_DIR:-build}
work=${FL_RUN_DIR:-build/run-local}
mkdir -p "$work"
rm -f "$work/model.bin.ckpt" "$work/metrics.jsonl" # a new run each time
certs/gen.sh --out "$work/certs" --clients "$n" --quiet

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

"$bin/fl-server" --config examples/server.ini --listen 127.0.0.1:0 --rounds "$rounds" \
  --clients-per-round "$n" --min-clients "$n" --min-updates 1 \
  --ca "$work/certs/ca.crt" --cert "$work/certs/server.crt" --key "$work/certs/server.key" \
  --out "$work/model.bin" --metrics "$work/metrics.jsonl" 2>"$work/server.log" &
spid=$!
pids+=("$spid")
port=
for _ in $(seq 1 200); do
  port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\);.*/\1/p' "$work/server.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { echo "fl-server did not start; see $work/server.log" >&2; exit 1; }

for i in $(seq 1 "$n"); do
  id=$(printf 'client-%04d' "$i")
  "$bin/fl-client" --config examples/client.ini --server "127.0.0.1:$port" \
    --ca "$work/certs/ca.crt" --cert "$work/certs/$id.crt" --key "$work/certs/$id.key" \
    --partition iid --num-partitions "$n" --partition-index $((i - 1)) 2>"$work/$id.log" &
  pids+=("$!")
done
wait "$spid"
echo "server done: model $work/model.bin, metrics $work/metrics.jsonl, logs in $work/"
for p in "${pids[@]:1}"; do wait "$p"; done
trap - EXIT
