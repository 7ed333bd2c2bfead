#!/usr/bin/env bash
# The tabular path end to end: a binary outcome predicted from a table of features, the
# classic business case, here the breast-cancer Wisconsin table (569 tumours, 30
# features, malignant or benign) that Debian ships in python3-sklearn.
#
#   1. the table becomes a CSV with a header (label 1 = malignant), split 80/20 into
#      training and test data with a fixed seed;
#   2. a federation: fl-server and 5 clients (one fl-client process) holding non-IID
#      parts of the training data (Dirichlet 0.5 over the labels).  Features are
#      standardised without sharing data: each client sends per-feature counts, sums
#      and sums of squares (--share-feature-stats), the server combines them
#      (--standardize).  The model is mlp64's shape with the table's width: in:30
#      dense:64 relu dense:1 sigmoid_bce, Adam 1e-3, binary cross-entropy;
#   3. the same model trained centrally by fl-train on all the training data
#      (--standardize);
#   4. fl-predict scores both model files on the test data: AUC and accuracy side by
#      side.  `make tabular` runs it.
#
# Environment: FL_BIN_DIR (default build), FL_TABULAR_DIR (default build/tabular),
# FL_TABULAR_CSV (the table; default: python3-sklearn's, or extracted from its package,
# which `apt-get download` fetches without installing it), FL_TABULAR_ROUNDS (30).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${FL_BIN_DIR:-build}
work=${FL_TABULAR_DIR:-build/tabular}
rounds=${FL_TABULAR_ROUNDS:-30}
clients=5
model='in:30 dense:64 relu dense:1 sigmoid_bce'
mkdir -p "$work"
rm -f "$work/metrics.jsonl" "$work/server.log" "$work/clients.log" "$work/federated.bin.ckpt"

table=${FL_TABULAR_CSV:-/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv}
if [ ! -f "$table" ]; then
  table=$work/pkg/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv
  if [ ! -f "$table" ]; then
    echo "tabular: extracting breast_cancer.csv from Debian's python3-sklearn package"
    rm -rf "$work/pkg" && mkdir -p "$work/pkg"
    (cd "$work/pkg" && apt-get download python3-sklearn >/dev/null 2>&1 &&
       dpkg-deb -x python3-sklearn_*.deb .) ||
      { echo "tabular: cannot get python3-sklearn (apt-get download failed); set FL_TABULAR_CSV" >&2; exit 1; }
  fi
fi

# sklearn's file: a first line "569,30,malignant,benign", then 30 features and the
# target (0 malignant, 1 benign) per row.
awk -F, -v train="$work/train.csv" -v test="$work/test.csv" 'BEGIN { srand(1) }
  NR == 1 { h = ""; for (j = 0; j < 30; j++) h = h "f" j ","; h = h "malignant";
            print h > train; print h > test; next }
  { row = $1; for (j = 2; j <= 30; j++) row = row "," $j; row = row "," (1 - $31);
    if (rand() < 0.2) print row > test; else print row > train }' "$table"
echo "tabular: $(($(wc -l < "$work/train.csv") - 1)) training rows, $(($(wc -l < "$work/test.csv") - 1)) test rows, 30 features"

certs/gen.sh --out "$work/certs" --clients "$clients" --quiet

cleanup() { kill "${spid:-}" "${cpid:-}" 2>/dev/null || true; }
trap cleanup EXIT

echo "tabular: fl-server and $clients clients (non-IID), $rounds rounds"
"$bin/fl-server" --listen 127.0.0.1:0 --model "$model" --rounds "$rounds" \
  --clients-per-round "$clients" --min-clients "$clients" --epochs 1 --batch-size 16 \
  --optimizer adam --lr 0.001 --seed 1 --standardize --test-data "$work/test.csv" \
  --keep-best test_auc --ca "$work/certs/ca.crt" --cert "$work/certs/server.crt" \
  --key "$work/certs/server.key" --out "$work/federated.bin" \
  --metrics "$work/metrics.jsonl" 2>"$work/server.log" &
spid=$!
port=
for _ in $(seq 1 200); do
  port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\);.*/\1/p' "$work/server.log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$spid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.05
done
[ -n "$port" ] || { echo "tabular: fl-server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
"$bin/fl-client" --server "127.0.0.1:$port" --server-name localhost --clients "$clients" \
  --certs-dir "$work/certs" --ca "$work/certs/ca.crt" --data "$work/train.csv" \
  --partition dirichlet:0.5 --seed 1 --share-feature-stats 2>"$work/clients.log" &
cpid=$!
wait "$spid" || { echo "tabular: fl-server failed (see $work/server.log)" >&2; exit 1; }
wait "$cpid" || { echo "tabular: fl-client failed (see $work/clients.log)" >&2; exit 1; }
grep -o 'features standardised.*' "$work/server.log" | sed 's/^/tabular: /'

echo "tabular: the same model trained centrally by fl-train, $rounds epochs"
"$bin/fl-train" --model "$model" --data "$work/train.csv" --test none --epochs "$rounds" \
  --batch-size 16 --optimizer adam --lr 0.001 --seed 1 --standardize --threads 1 \
  --out "$work/central.bin" --log-level warn >"$work/central.log"

printf '%-28s %8s %8s\n' "model (on the test rows)" auc accuracy
for m in federated central; do
  "$bin/fl-predict" --model "$work/$m.bin" --data "$work/test.csv" --out "$work/$m-predictions.csv" \
    --report "$work/$m-report.json" --log-level warn >/dev/null
  awk -v name="$m" '{ match($0, /"auc":[-0-9.e+]*/); auc = substr($0, RSTART + 6, RLENGTH - 6);
                      match($0, /"accuracy":[-0-9.e+]*/); acc = substr($0, RSTART + 11, RLENGTH - 11);
                      printf "%-28s %8.4f %8.4f\n", name, auc, acc }' "$work/$m-report.json"
done
echo "tabular: model files $work/federated.bin (and .best, the round of the best test AUC), $work/central.bin"
