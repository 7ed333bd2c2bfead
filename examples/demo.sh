#!/usr/bin/env bash
# The main job end to end on one machine: certificates, fl-server, and 10 virtual
# clients (one fl-client process) on IID partitions of Fashion-MNIST, 2nn, 20 rounds;
# then a table of test accuracy by round, and its plot (fl-plot).  The server's status
# page (--http) is on while it runs.  `make demo` runs it.
#
# Environment: FL_BIN_DIR (default build), FL_DEMO_DIR (default build/demo),
# FL_DEMO_ROUNDS (default 20), FL_DEMO_CLIENTS (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FL_BIN_DIR:-build}
work=${FL_DEMO_DIR:-build/demo}
rounds=${FL_DEMO_ROUNDS:-20}
clients=${FL_DEMO_CLIENTS:-10}
mkdir -p "$work"
rm -f "$work/metrics.jsonl" "$work/server.log" "$work/clients.log" "$work/model.bin.ckpt"

certs/gen.sh --out "$work/certs" --clients "$clients" --quiet

cleanup() { kill "${spid:-}" "${cpid:-}" 2>/dev/null || true; }
trap cleanup EXIT

echo "demo: fl-server and $clients clients, 2nn on Fashion-MNIST (IID), $rounds rounds"
"$bin/fl-server" --config examples/server.ini --listen 127.0.0.1:0 --rounds "$rounds" \
  --clients-per-round "$clients" --min-clients "$clients" --min-updates 1 \
  --ca "$work/certs/ca.crt" --cert "$work/certs/server.crt" --key "$work/certs/server.key" \
  --out "$work/model.bin" --metrics "$work/metrics.jsonl" --http 127.0.0.1:0 2>"$work/server.log" &
spid=$!

port=
for _ in $(seq 1 200); do
  port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\);.*/\1/p' "$work/server.log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$spid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.05
done
[ -n "$port" ] || { echo "demo: fl-server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
status=$(sed -n 's/.*status page on \(http:[^ ]*\) .*/\1/p' "$work/server.log" | head -1)
echo "demo: watch it live at $status (Prometheus metrics at ${status}metrics)"

"$bin/fl-client" --config examples/client.ini --server "127.0.0.1:$port" \
  --clients "$clients" --partition iid --num-partitions "$clients" --certs-dir "$work/certs" \
  --ca "$work/certs/ca.crt" 2>"$work/clients.log" &
cpid=$!

# Progress: one table row per round as the metrics file grows.
printf '%6s %10s %10s %10s %8s\n' round train_loss test_loss test_acc seconds
shown=0
show_new_rows() {
  [ -f "$work/metrics.jsonl" ] || return 0
  local n
  n=$(wc -l < "$work/metrics.jsonl")
  [ "$n" -gt "$shown" ] || return 0
  sed -n "$((shown + 1)),${n}p" "$work/metrics.jsonl" | awk '
    function num(key) { return match($0, "\"" key "\":[-0-9.e+]*") ? substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3) : "-" }
    { printf "%6s %10.4f %10.4f %10.4f %8.2f\n", num("round"), num("train_loss"), num("test_loss"), num("test_accuracy"), num("seconds") }'
  shown=$n
}
while kill -0 "$spid" 2>/dev/null; do
  show_new_rows
  sleep 0.2
done
show_new_rows
wait "$spid" || { echo "demo: fl-server failed; see $work/server.log" >&2; tail -20 "$work/server.log" >&2; exit 1; }
wait "$cpid" || { echo "demo: fl-client failed; see $work/clients.log" >&2; tail -20 "$work/clients.log" >&2; exit 1; }
trap - EXIT

acc=$(tail -1 "$work/metrics.jsonl" | sed -n 's/.*"test_accuracy":\([0-9.]*\).*/\1/p')
echo "demo: final test accuracy $acc after $rounds rounds"
"$bin/fl-plot" -o "$work/accuracy.png" -t "demo: 2nn on Fashion-MNIST, $clients clients" \
  "demo=$work/metrics.jsonl" >/dev/null || echo "demo: no plot (fl-plot failed)" >&2
[ -f "$work/accuracy.png" ] && echo "demo: plot    $work/accuracy.png"
echo "demo: model   $work/model.bin"
echo "demo: metrics $work/metrics.jsonl"
echo "demo: logs    $work/server.log, $work/clients.log"
