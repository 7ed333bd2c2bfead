#!/bin/sh
# Round time of the real fl-server sending a large model to many clients, with 1 and
# with 2 I/O threads (--io-threads), measured in the same run; prints both and the ratio.
#
# Each client trains on a couple of samples for one epoch, so a round is mostly the
# global model going out over TLS and the updates coming back.  The clients run in one
# fl-client process on the same machine: on a small machine they compete with the
# server for the cores, which caps the gain.  Rounds after the first are averaged (the
# first also waits for the clients to connect).
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

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Mean "seconds" of rounds 2..N in a metrics file.
mean_seconds() {
  python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
secs = [r["seconds"] for r in rows if r["round"] > 1]
print("%.3f" % (sum(secs) / len(secs)) if secs else "nan")
EOF
}

echo "fl-server round time, model $model, $clients clients, $rounds rounds (mean of rounds 2..$rounds)"
for t in $threads; do
  port=$(free_port)
  "$bin/fl-server" --listen "127.0.0.1:$port" --model "$model" --rounds "$rounds" \
    --clients-per-round "$clients" --min-clients "$clients" --epochs 1 --batch-size 2 \
    --metrics "$work/metrics-$t.jsonl" --out "$work/model-$t.bin" --io-threads "$t" \
    --ca "$certs/ca.crt" --cert "$certs/server.crt" --key "$certs/server.key" \
    --log-level warn 2>"$work/server-$t.log" &
  spid=$!
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients "$clients" \
    --data fashion-mnist:train --max-samples $((clients * 2)) --partition iid \
    --certs-dir "$certs" --ca "$certs/ca.crt" --log-level warn 2>"$work/client-$t.log" &
  cpid=$!
  if ! wait $spid; then
    echo "fl-server failed with --io-threads $t:" >&2
    tail -20 "$work/server-$t.log" >&2
    exit 1
  fi
  wait $cpid || true
  spid= cpid=
  s=$(mean_seconds "$work/metrics-$t.jsonl")
  eval "secs_$t=$s"
  printf '  --io-threads %-3s %8s s per round\n' "$t" "$s"
done
if [ -n "${secs_1:-}" ] && [ -n "${secs_2:-}" ]; then
  python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('  ratio 1 thread / 2 threads: %.2fx' % (a/b))" "$secs_1" "$secs_2"
fi
