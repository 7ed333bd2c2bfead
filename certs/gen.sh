#!/usr/bin/env bash
# Generate the certificates fl needs for mutual TLS: a CA, a server certificate and
# N client certificates (CN = client id), ECDSA P-256 with SHA-256.  Private keys are
# created here, mode 0600, and never committed.
#
# usage: certs/gen.sh [--out DIR] [--clients N] [--client-prefix P] [--days D]
#                     [--force] [--quiet] [HOSTNAME ...]
set -euo pipefail

out=certs/out clients=3 prefix=client days=825 force=0 quiet=0 hosts=()
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --client-prefix) prefix=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --force) force=1; shift ;;
    --quiet) quiet=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "gen.sh: unknown option '$1'" >&2; usage 2 ;;
    *) hosts+=("$1"); shift ;;
  esac
done
case "$clients" in ''|*[!0-9]*) echo "gen.sh: --clients needs a number, got '$clients'" >&2; exit 2 ;; esac
case "$days" in ''|*[!0-9]*) echo "gen.sh: --days needs a number, got '$days'" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "gen.sh: openssl not found (make deps installs it)" >&2; exit 1; }

log() { [ "$quiet" = 1 ] || echo "gen.sh: $*"; }
umask 077
mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

if [ -f "$out/ca.crt" ] && [ "$force" != 1 ]; then
  log "keeping the existing CA in $out (use --force to replace it)"
else
  newkey "$out/ca.key"
  openssl req -new -x509 -sha256 -key "$out/ca.key" -days $((days + 365)) \
    -subj "/CN=fl test CA" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  chmod 644 "$out/ca.crt"
  rm -f "$out"/server.crt "$out"/client-*.crt
  log "created CA $out/ca.crt"
fi

# sign NAME CN EXT: a key (kept if present) and a certificate signed by the CA.
serial=$(date +%s%N)
sign() {
  local name=$1 cn=$2 ext=$3
  [ -f "$out/$name.key" ] || newkey "$out/$name.key"
  openssl req -new -sha256 -key "$out/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  printf '%s\n' "$ext" > "$tmp/$name.ext"
  serial=$((serial + 1))
  openssl x509 -req -sha256 -in "$tmp/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "$serial" -days "$days" -extfile "$tmp/$name.ext" -out "$out/$name.crt" 2>/dev/null
  chmod 644 "$out/$name.crt"
}

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for h in "${hosts[@]+"${hosts[@]}"}"; do
  case "$h" in localhost|127.0.0.1|::1) continue ;; esac
  if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
sign server "${hosts[0]:-localhost}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"
log "server certificate $out/server.crt ($san)"

for i in $(seq 1 "$clients"); do
  id=$(printf '%s-%04d' "$prefix" "$i")
  sign "$id" "$id" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
log "$clients client certificates in $out ($prefix-0001 ...)"
