#!/usr/bin/env bash
# The whole test suite, run repeatedly on a machine made busy or small on purpose: a suite
# that passes only on an idle machine of one speed is a failing suite.
#
#   tests/stress.sh [RUNS] [CONDITION...]     (make test-stress RUNS=3)
#
# Conditions (all three by default):
#   idle    the suite alone
#   hog     one CPU hog per core, at the suite's priority, for the whole run
#   pinned  the suite and everything it starts pinned to one core (taskset -c 0)
# Each run is `make test` (the flags of the environment: SANITIZER=..., EXTRA_CFLAGS=...).
# Prints one line per run and a table at the end; exits 1 if any run failed.  Logs of
# failed runs are kept in build/stress/.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
shift || true
conditions=("$@")
[ ${#conditions[@]} -eq 0 ] && conditions=(idle hog pinned)
cores=$(nproc --all 2>/dev/null || echo 2)
outdir=build/stress
mkdir -p "$outdir"

# Build first, so that every run measures the suite, not the compiler.
make -s all >/dev/null || { echo "stress: build failed" >&2; exit 1; }

hogs=()
start_hogs() {
  for ((i = 0; i < cores; i++)); do
    ( while :; do :; done ) &
    hogs+=($!)
  done
}
stop_hogs() {
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  hogs=()
}
trap stop_hogs EXIT

declare -A passed total_s
failures=0
for cond in "${conditions[@]}"; do
  case $cond in
    idle|hog|pinned) ;;
    *) echo "stress: unknown condition '$cond' (idle, hog, pinned)" >&2; exit 2 ;;
  esac
  passed[$cond]=0
  total_s[$cond]=""
  for ((r = 1; r <= runs; r++)); do
    log=$outdir/$cond-$r.log
    [ "$cond" = hog ] && start_hogs
    pre=()
    [ "$cond" = pinned ] && pre=(taskset -c 0)
    t0=$(date +%s.%N)
    "${pre[@]}" make -s test >"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    [ "$cond" = hog ] && stop_hogs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", b-a}')
    summary=$(grep -a 'Synthesis:' "$log" | tail -1 | sed 's/.*Synthesis: //')
    if [ $rc -eq 0 ]; then
      passed[$cond]=$((passed[$cond] + 1))
      rm -f "$log"
      echo "stress: $cond run $r/$runs: passed in ${secs} s ($summary)"
    else
      failures=$((failures + 1))
      echo "stress: $cond run $r/$runs: FAILED in ${secs} s ($summary); log $log"
      grep -a -E '^\[FAIL\]|Assertion Failed' -A3 "$log" | head -40
    fi
    total_s[$cond]="${total_s[$cond]} $secs"
  done
done

echo
printf '%-8s %-8s %s\n' condition passed "suite seconds per run"
for cond in "${conditions[@]}"; do
  printf '%-8s %-8s %s\n' "$cond" "${passed[$cond]}/$runs" "${total_s[$cond]# }"
done
[ $failures -eq 0 ]
