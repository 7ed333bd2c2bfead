#!/usr/bin/env bash
# The Secrets the manifests mount, from certificates made by certs/gen.sh:
#   fl-server-tls   ca.crt, server.crt, server.key
#   fl-client-tls   ca.crt and every client-NNNN.crt/.key
# The server certificate must name the Service (certs/gen.sh --clients 4 fl-server
# fl-server.NAMESPACE.svc).  Every client pod mounts all client keys and uses its own;
# where that is too much, make one Secret per client and one Job per Secret instead.
# Prints the Secrets as YAML for `kubectl apply -f -` (nothing is written to disk).
# usage: examples/kubernetes/secrets.sh [CERTS_DIR] | kubectl apply -f -
set -euo pipefail
dir=${1:-certs/out}
kubectl=${KUBECTL:-kubectl}
for f in ca.crt server.crt server.key client-0001.crt; do
  [ -f "$dir/$f" ] || { echo "secrets.sh: no $dir/$f (make it with certs/gen.sh)" >&2; exit 1; }
done
"$kubectl" create secret generic fl-server-tls --dry-run=client -o yaml \
  --from-file="$dir/ca.crt" --from-file="$dir/server.crt" --from-file="$dir/server.key"
echo ---
args=(--from-file="$dir/ca.crt")
for f in "$dir"/client-*.crt "$dir"/client-*.key; do args+=(--from-file="$f"); done
"$kubectl" create secret generic fl-client-tls --dry-run=client -o yaml "${args[@]}"
