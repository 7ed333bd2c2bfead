#!/usr/bin/env bash
# Robust aggregation against simulated attackers (make bench-robust; minutes, not part of
# make bench).  Fashion-MNIST, the 2nn model, 100 clients on IID partitions of the 60,000
# training images, 10 selected per round, 1 local epoch of batch 10 at lr 0.05, 30 rounds;
# 20 % of the clients attack (fl-client --attack, drawn with the seed).  Every attack mode
# against fedavg, median, trimmed mean, Krum and norm bounding, and clean fedavg as the
# reference; the server's own norm bound is off (--max-update-norm 0) so that only the
# strategy stands in the way.  Then FedAdam and FedYogi against FedAvg on a strongly
# non-IID split (Dirichlet 0.1), 50 rounds.
#
# Target: with sign-flip or scaling attackers the robust strategies end within 3 points of
# clean fedavg while plain fedavg visibly collapses.  Trimmed mean drops 30 % at each end
# and Krum tolerates f = 3 of 10: a random selection of 10 from a population with 20 %
# attackers holds 3 or more of them in about a third of the rounds.  Beyond an
# aggregator's breakdown point (5 of 10 for the median, 4 for Krum with f = 3, about 2.5
# % of rounds here) a round can be lost; the constant attack, 5 identical vectors that
# agree with each other, shows it.  The server's default norm bound, off here, refuses
# such updates outright.
#
#   bench/robust.sh [ROUNDS] [ADAPTIVE_ROUNDS]      (FL_BIN_DIR, FL_SCALE_CERTS as make sets)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FL_BIN_DIR:-build}
certs=${FL_SCALE_CERTS:-build/scale-certs}
rounds=${1:-30}
adaptive_rounds=${2:-50}
work=$(mktemp -d /tmp/fl-robust-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
[ -f "$certs/client-0100.crt" ] || { echo "robust: no client certificates in $certs (make builds them)" >&2; exit 1; }

port_base=$((20000 + RANDOM % 9000))
runs=0
# run NAME ROUNDS PARTITION STRATEGY [CLIENT ARGS...]: the final test accuracy on stdout,
# and the accuracies of every round in $work/NAME.jsonl.
run() {
  local name=$1 r=$2 part=$3 strategy=$4
  shift 4
  runs=$((runs + 1))
  local port=$((port_base + runs))
  "$bin/fl-server" --listen "127.0.0.1:$port" --model 2nn --rounds "$r" --clients-per-round 10 \
    --min-clients 100 --epochs 1 --batch-size 10 --lr 0.05 --seed 1 --strategy "$strategy" \
    --max-update-norm 0 --test-data fashion-mnist:test --metrics "$work/$name.jsonl" \
    --out "$work/$name.bin" --ca "$certs/ca.crt" --cert "$certs/server.crt" \
    --key "$certs/server.key" 2>"$work/$name.server.log" &
  local spid=$!
  "$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients 100 \
    --certs-dir "$certs" --ca "$certs/ca.crt" --data fashion-mnist:train --partition "$part" \
    --seed 1 --workers 2 --retry-base 0.05 --retry-max 0.5 "$@" 2>"$work/$name.client.log" || {
    echo "robust: $name: fl-client failed; its log:" >&2
    tail -5 "$work/$name.client.log" >&2
    exit 1
  }
  wait "$spid" || {
    echo "robust: $name: fl-server failed; its log:" >&2
    tail -5 "$work/$name.server.log" >&2
    exit 1
  }
  acc_at "$name" "$r"
}
# acc_at NAME ROUND: that round's test accuracy.
acc_at() {
  sed -n "s/.*\"round\":$2,.*\"test_accuracy\":\([0-9.]*\).*/\1/p" "$work/$1.jsonl"
}

strategies=("fedavg" "median" "trimmed:beta=0.3" "krum:f=3,m=5" "normbound:bound=0.5")
names=("fedavg" "median" "trimmed" "krum" "normbound")
attacks=("signflip:10" "scale:100" "noise:1" "constant:1" "labelflip")

echo "Robust aggregation: 2nn, 100 IID clients, 10 per round, $rounds rounds, 20 % attackers"
clean=$(run clean "$rounds" iid fedavg)
printf '%-13s' "attack"
for n in "${names[@]}"; do printf ' %10s' "$n"; done
printf '\n%-13s %10s   (clean fedavg, the reference)\n' "none" "$clean"
fail=0
for a in "${attacks[@]}"; do
  printf '%-13s' "$a"
  fed=""
  for i in "${!strategies[@]}"; do
    acc=$(run "${names[$i]}-${a%%:*}" "$rounds" iid "${strategies[$i]}" --attack "$a" --attack-clients 0.2)
    printf ' %10s' "$acc"
    [ "$i" = 0 ] && fed=$acc
    # The target: sign flip and scaling, the robust aggregators (median, trimmed, krum).
    case "$a:${names[$i]}" in
      signflip*:median|signflip*:trimmed|signflip*:krum|scale*:median|scale*:trimmed|scale*:krum)
        awk -v a="$acc" -v c="$clean" 'BEGIN { exit !(a >= c - 0.03) }' || fail=1 ;;
    esac
  done
  case "$a" in
    signflip*|scale*) awk -v a="$fed" -v c="$clean" 'BEGIN { exit !(a < c - 0.10) }' || fail=1 ;;
  esac
  printf '\n'
done
echo "target: robust (median, trimmed, krum) within 3 points of clean fedavg under sign flip"
echo "        and scaling, while fedavg falls more than 10 points below it: $([ $fail = 0 ] && echo met || echo NOT MET)"

echo
echo "Server optimizers on a non-IID split (Dirichlet 0.1), $adaptive_rounds rounds"
printf '%-26s %10s %10s\n' "strategy" "round 20" "round $adaptive_rounds"
for s in fedavg fedadam:eta=0.003 fedyogi:eta=0.003; do
  name=dir-${s%%:*}
  run "$name" "$adaptive_rounds" dirichlet:0.1 "$s" >/dev/null
  printf '%-26s %10s %10s\n' "$s" "$(acc_at "$name" 20)" "$(acc_at "$name" "$adaptive_rounds")"
done
