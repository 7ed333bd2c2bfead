#!/bin/sh
# fl-server sending a large model to many clients with 1 and with 2 I/O threads
# (--io-threads), measured in the same run: round time, and where the server's CPU
# went — its total, and its busiest thread's.  TLS is the server's heaviest work; with
# two I/O threads the busiest thread should carry about half of it, which is what lets
# a server with free cores go faster.  The clients run in one fl-client process on the
# same machine, so on a 2-core machine they take the other core and round time cannot
# show the gain; the busiest-thread share can.  Rounds after the first are averaged (the
# first runs while the simulation is still loading its data and connecting).
#
# usage: bench/bench_iothreads.sh [CLIENTS [ROUNDS [MODEL]]]   (defaults 50 4 cnn)
# Environment: FL_BIN_DIR (default build), BENCH_THREADS (default "1 2").
set -eu
clients=${1:-50}
rounds=${2:-4}
model=${3:-cnn}
bin=${FL_BIN_DIR:-build}
threads=${BENCH_THREADS:-1 2}
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-iothreads.XXXXXX")
trap 'kill $spid $cpid 2>/dev/null || true; rm -rf "$work"' EXIT INT TERM
spid= cpid=

# Certificates for every client, made once per size.
certs=build/bench-certs-$clients
if [ ! -f "$certs/client-$(printf %04d "$clients").crt" ]; then
  rm -rf "$certs"
  certs/gen.sh --out "$certs" --clients "$clients" --quiet
fi

# Mean "seconds" of rounds 2..N in a metrics file.
mean_seconds() {
  awk 'match($0, /"round":[0-9]+/) { r = substr($0, RSTART + 8, RLENGTH - 8) + 0
         if (r > 1 && match($0, /"seconds":[0-9.e+-]+/)) { s += substr($0, RSTART + 10, RLENGTH - 10); n++ } }
       END { if (n) printf "%.3f", s / n; else print "nan" }' "$1"
}

# CPU ticks of every thread of a process, one "tid ticks" line each (utime + stime).
thread_ticks() {
  for st in /proc/"$1"/task/*/stat; do
    sed 's/^[0-9]* (.*) //' "$st" 2>/dev/null | awk -v f="$st" '{ split(f, p, "/"); print p[5], $12 + $13 }'
  done
}

echo "fl-server, model $model, $clients clients, $rounds rounds (round time: mean of rounds 2..$rounds)"
printf '  %-14s %12s %14s %16s %10s\n' "" "s per round" "server CPU s" "busiest thread s" "busiest %"
for t in $threads; do
  "$bin/fl-server" --listen 127.0.0.1:0 --model "$model" --rounds "$rounds" \
    --clients-per-round "$clients" --min-clients "$clients" --epochs 1 --batch-size 2 \
    --metrics "$work/metrics-$t.jsonl" --out "$work/model-$t.bin" --io-threads "$t" \
    --ca "$certs/ca.crt" --cert "$certs/server.crt" --key "$certs/server.key" \
    2>"$work/server-$t.log" &
  spid=$!
  port=
  while [ -z "$port" ] && kill -0 $spid 2>/dev/null; do
    port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\);.*/\1/p' "$work/server-$t.log" | head -1)
    [ -n "$port" ] || sleep 0.05
  done
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients "$clients" \
    --data fashion-mnist:train --max-samples $((clients * 2)) --partition iid \
    --certs-dir "$certs" --ca "$certs/ca.crt" --log-level warn 2>"$work/client-$t.log" &
  cpid=$!
  # The last per-thread snapshot before the server exits.
  while kill -0 $spid 2>/dev/null; do
    thread_ticks $spid > "$work/ticks.new" 2>/dev/null && [ -s "$work/ticks.new" ] &&
      mv "$work/ticks.new" "$work/ticks-$t"
    sleep 0.1
  done
  if ! wait $spid; then
    echo "fl-server failed with --io-threads $t:" >&2
    tail -20 "$work/server-$t.log" >&2
    exit 1
  fi
  wait $cpid || true
  spid= cpid=
  hz=$(getconf CLK_TCK)
  awk -v t="$t" -v hz="$hz" -v secs="$(mean_seconds "$work/metrics-$t.jsonl")" '
    { total += $2; if ($2 > max) max = $2 }
    END { printf "  --io-threads %-2s %12s %14.2f %16.2f %9.0f%%\n", t, secs, total / hz, max / hz,
          total ? 100 * max / total : 0 }' "$work/ticks-$t"
done
