#!/usr/bin/env bash
# What watching costs the rounds (make bench): the same federation (2nn, 10 virtual
# clients, ROUNDS rounds, 1 epoch on 100 samples each) without --http, and with --http
# and a scraper fetching /metrics every 100 ms, through the real binaries over
# TLS on loopback.  Runs alternate (PAIRS pairs); reported: the median of the summed round
# seconds (the metrics file's "seconds") and of the server's CPU seconds, and their ratios.
#
# Target: rounds with the scraper at most 2 % slower (ratio <= 1.02).  On a busy machine
# the figure may miss it; the script fails only when a run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FL_BIN_DIR:-build}
certs=${FL_CERTS:-build/test-certs}
ROUNDS=${ROUNDS:-15}
PAIRS=${PAIRS:-5}
work=$(mktemp -d /tmp/fl-bench-status-XXXXXX)
mkfifo "$work/pause.fifo"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
runs=0

# run WITH_HTTP: prints "ROUND_SECONDS CPU_SECONDS SCRAPES"
run() {
  runs=$((runs + 1))
  local port=$((20000 + (RANDOM % 5000) * 2)) hport=$((30000 + (RANDOM % 5000) * 2 + 1))
  local http=() name="run$runs"
  [ "$1" = 1 ] && http=(--http "127.0.0.1:$hport")
  rm -f "$work/m.jsonl"
  "$bin/fl-server" --listen "127.0.0.1:$port" --model 2nn --rounds "$ROUNDS" --clients-per-round 10 \
    --min-clients 10 --epochs 1 --batch-size 20 --seed 1 --metrics "$work/m.jsonl" \
    --out "$work/$name.bin" --ca "$certs/ca.crt" --cert "$certs/server.crt" --key "$certs/server.key" \
    "${http[@]}" 2>"$work/$name.server.log" &
  local spid=$! scrapes=0 spid2=
  if [ "$1" = 1 ]; then
    # The scraper spawns nothing: bash's /dev/tcp, and a read timing out on a FIFO no
    # one writes as its 100 ms pause, so it takes next to no CPU from the federation.  It
    # reads the response with read -N, in large reads: bash's line by line read takes a
    # socket one byte per system call (18,000 calls for an 18 KB response, strace -c),
    # which on 2 cores would be the scraper measuring itself.  A scrape counts when the
    # response is a 200 with a body.
    ( exec 5<>"$work/pause.fifo"; n=0
      while kill -0 "$spid" 2>/dev/null; do
        if exec 3<>"/dev/tcp/127.0.0.1/$hport" 2>/dev/null; then
          printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
          resp=; IFS= read -r -d '' -N 4194304 -u 3 resp || true; exec 3<&-
          [[ $resp == "HTTP/1.1 200"*$'\r\n\r\n'?* ]] && n=$((n + 1))
        fi
        read -r -t 0.1 -u 5 _ || true
      done; echo "$n" > "$work/scrapes" ) 2>/dev/null &
    spid2=$!
  fi
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients 10 \
    --certs-dir "$certs" --ca "$certs/ca.crt" --data fashion-mnist:train --max-samples 1000 \
    --partition iid --workers 2 --retry-base 0.05 --retry-max 0.5 2>"$work/$name.client.log" || {
    echo "bench_status: fl-client failed ($name):" >&2; tail -5 "$work/$name.client.log" >&2; exit 1; }
  wait "$spid" || { echo "bench_status: fl-server failed ($name):" >&2; tail -5 "$work/$name.server.log" >&2; exit 1; }
  [ -n "$spid2" ] && { wait "$spid2" || true; scrapes=$(cat "$work/scrapes"); }
  local secs cpu
  secs=$(sed -n 's/.*"seconds":\([0-9.e+-]*\).*/\1/p' "$work/m.jsonl" | awk '{s += $1} END {printf "%.4f", s}')
  cpu=$(sed -n 's/.*CPU \([0-9.]*\) s.*/\1/p' "$work/$name.server.log" | tail -1)
  echo "$secs ${cpu:-0} $scrapes"
}

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

: > "$work/off"; : > "$work/on"
for p in $(seq 1 "$PAIRS"); do
  run 0 >> "$work/off"
  run 1 >> "$work/on"
done
off_s=$(cut -d' ' -f1 "$work/off" | median); on_s=$(cut -d' ' -f1 "$work/on" | median)
off_c=$(cut -d' ' -f2 "$work/off" | median); on_c=$(cut -d' ' -f2 "$work/on" | median)
scr=$(cut -d' ' -f3 "$work/on" | median)
printf 'bench_status: %d rounds of 10 clients (2nn), median of %d runs each\n' "$ROUNDS" "$PAIRS"
printf '  round seconds (sum)  without --http %8.3f   with a scraper every 100 ms %8.3f   ratio %.3f (target <= 1.02)\n' \
  "$off_s" "$on_s" "$(echo "$on_s $off_s" | awk '{print $1 / $2}')"
printf '  server CPU seconds   without --http %8.3f   with a scraper every 100 ms %8.3f   ratio %.3f\n' \
  "$off_c" "$on_c" "$(echo "$on_c $off_c" | awk '{print ($2 > 0) ? $1 / $2 : 0}')"
printf '  scrapes of /metrics per run (median): %s\n' "$scr"
printf '  each run, round seconds / server CPU seconds: without %s; with %s\n' \
  "$(awk '{printf "%s%.3f/%.2f", (NR > 1 ? " " : ""), $1, $2}' "$work/off")" \
  "$(awk '{printf "%s%.3f/%.2f", (NR > 1 ? " " : ""), $1, $2}' "$work/on")"
