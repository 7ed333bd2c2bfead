#!/usr/bin/env bash
# Generate the certificates fl needs for mutual TLS: a CA, a server certificate and
# N client certificates (CN = client id), ECDSA P-256 with SHA-256.  Private keys are
# created here, mode 0600, and never committed.  Client certificates are signed by
# --jobs parallel workers (default: one per core), one openssl call each.
#
# usage: certs/gen.sh [--out DIR] [--clients N] [--client-prefix P] [--days D]
#                     [--jobs N] [--force] [--quiet] [HOSTNAME ...]
#        certs/gen.sh [--out DIR] --revoke NAME [--revoke NAME ...]
#        certs/gen.sh [--out DIR] --crl
# The server certificate names localhost, 127.0.0.1, ::1 and every HOSTNAME; re-run
# without HOSTNAME, it keeps the names it had.  --revoke adds NAME.crt (client-0007) to
# the CA's revocation list and writes DIR/crl.pem (for fl-server --crl; send it SIGHUP
# to reload); --crl writes it again (a CRL is valid for --days days: renew it before).
set -euo pipefail

out=certs/out clients=3 prefix=client days=825 force=0 quiet=0 hosts=() revoke=() crl=0
jobs=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --client-prefix) prefix=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --force) force=1; shift ;;
    --revoke) revoke+=("$2"); shift 2 ;;
    --crl) crl=1; shift ;;
    --quiet) quiet=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "gen.sh: unknown option '$1'" >&2; usage 2 ;;
    *) hosts+=("$1"); shift ;;
  esac
done
case "$clients" in ''|*[!0-9]*) echo "gen.sh: --clients needs a number, got '$clients'" >&2; exit 2 ;; esac
case "$days" in ''|*[!0-9]*) echo "gen.sh: --days needs a number, got '$days'" >&2; exit 2 ;; esac
case "$jobs" in ''|*[!0-9]*|0) echo "gen.sh: --jobs needs a number >= 1, got '$jobs'" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "gen.sh: openssl not found (make deps installs it)" >&2; exit 1; }

log() { [ "$quiet" = 1 ] || echo "gen.sh: $*"; }
umask 077
mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# Revocation: an openssl ca database beside the CA (DIR/ca-db), and DIR/crl.pem.
if [ "${#revoke[@]}" -gt 0 ] || [ "$crl" = 1 ]; then
  [ -f "$out/ca.crt" ] && [ -f "$out/ca.key" ] ||
    { echo "gen.sh: no CA in $out (ca.crt and ca.key) to revoke with" >&2; exit 1; }
  mkdir -p "$out/ca-db"
  [ -f "$out/ca-db/index.txt" ] || : > "$out/ca-db/index.txt"
  [ -f "$out/ca-db/crlnumber" ] || echo 1000 > "$out/ca-db/crlnumber"
  cat > "$tmp/ca.cnf" <<CNF
[ca]
default_ca = fl
[fl]
database = $out/ca-db/index.txt
crlnumber = $out/ca-db/crlnumber
certificate = $out/ca.crt
private_key = $out/ca.key
default_md = sha256
default_crl_days = $days
CNF
  for name in "${revoke[@]+"${revoke[@]}"}"; do
    crt=$out/${name%.crt}.crt
    [ -f "$crt" ] || { echo "gen.sh: --revoke $name: no certificate $crt" >&2; exit 1; }
    serial=$(openssl x509 -in "$crt" -noout -serial | sed 's/^serial=//')
    if grep -q "^R.*	$serial	" "$out/ca-db/index.txt"; then
      log "$name (serial $serial) is revoked already"
    elif ! openssl ca -batch -config "$tmp/ca.cnf" -revoke "$crt" 2>"$tmp/revoke.err"; then
      echo "gen.sh: revoking $name failed:" >&2; cat "$tmp/revoke.err" >&2; exit 1
    else
      log "revoked $name (serial $serial)"
    fi
  done
  openssl ca -batch -config "$tmp/ca.cnf" -gencrl -out "$out/crl.pem.tmp" 2>"$tmp/crl.err" ||
    { echo "gen.sh: writing the CRL failed:" >&2; cat "$tmp/crl.err" >&2; exit 1; }
  chmod 644 "$out/crl.pem.tmp"
  mv "$out/crl.pem.tmp" "$out/crl.pem"
  log "CRL $out/crl.pem ($(grep -c '^R' "$out/ca-db/index.txt") revoked, valid $days days); fl-server --crl $out/crl.pem reloads it on SIGHUP"
  exit 0
fi

if [ -f "$out/ca.crt" ] && [ "$force" != 1 ]; then
  log "keeping the existing CA in $out (use --force to replace it)"
else
  newkey "$out/ca.key"
  openssl req -new -x509 -sha256 -key "$out/ca.key" -days $((days + 365)) \
    -subj "/CN=fl test CA" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  chmod 644 "$out/ca.crt"
  rm -rf "$out"/server.crt "$out"/client-*.crt "$out/ca-db" "$out/crl.pem"
  log "created CA $out/ca.crt"
fi

# Re-run without host names over a server certificate of this CA: it keeps its names.
if [ "${#hosts[@]}" -eq 0 ] && [ -f "$out/server.crt" ]; then
  old=$(openssl x509 -in "$out/server.crt" -noout -ext subjectAltName 2>/dev/null |
        tail -n +2 | tr ',' '\n' | sed 's/^ *//; s/^IP Address:/IP:/' | grep -E '^(DNS|IP):' || true)
  cn=$(openssl x509 -in "$out/server.crt" -noout -subject -nameopt RFC2253 2>/dev/null |
       sed -n 's/^subject=.*CN=\([^,]*\).*/\1/p')
  [ -n "$cn" ] && [ "$cn" != localhost ] && hosts+=("$cn")
  for n in $old; do
    v=${n#*:}
    case "$v" in localhost|127.0.0.1|0:0:0:0:0:0:0:1|::1|"$cn") continue ;; esac
    hosts+=("$v")
  done
  [ "${#hosts[@]}" -gt 0 ] && log "no host names given: keeping those of $out/server.crt (${hosts[*]})"
fi

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for h in "${hosts[@]+"${hosts[@]}"}"; do
  case "$h" in localhost|127.0.0.1|::1) continue ;; esac
  if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
cat > "$tmp/ext.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
CNF

# sign NAME CN SECTION SERIAL: a key (kept if present) and a certificate signed by the
# CA with the extensions of SECTION, in one openssl call (req -CA signs directly, no CSR
# file; it costs a fifth of genpkey + req + x509).  The certificate is made 0644 by the
# caller.  Runs in the parallel workers too, so it only uses exported variables.
sign() {
  local name=$1 cn=$2 section=$3 serial=$4 key=(-key "$out/$1.key")
  [ -f "$out/$name.key" ] ||
    key=(-newkey EC -pkeyopt ec_paramgen_curve:P-256 -noenc -keyout "$out/$name.key")
  if ! openssl req -new -sha256 "${key[@]}" -subj "/CN=$cn" -CA "$out/ca.crt" \
      -CAkey "$out/ca.key" -set_serial "$serial" -days "$days" -config "$tmp/ext.cnf" \
      -extensions "$section" -out "$out/$name.crt" 2>"$tmp/$name.err"; then
    echo "gen.sh: signing $name failed:" >&2
    cat "$tmp/$name.err" >&2
    return 1
  fi
  rm -f "$tmp/$name.err"
}
# clients FIRST...: client certificates FIRST onwards, one at a time (one worker's share).
clients() {
  local i id
  for i; do
    id=$(printf '%s-%04d' "$prefix" "$i")
    sign "$id" "$id" client $((serial + i)) || return 1
  done
}
export -f sign clients
export out days tmp prefix

export serial=$(date +%s%N)
sign server "${hosts[0]:-localhost}" server "$serial"
chmod 644 "$out/server.crt"
log "server certificate $out/server.crt ($san)"

# Batches of 50 per worker: a bash start-up is cheap next to 50 openssl calls.
seq 1 "$clients" | xargs -r -n 50 -P "$jobs" bash -c 'clients "$@"' _
if [ "$clients" -gt 0 ]; then
  find "$out" -maxdepth 1 -name "$prefix-*.crt" -exec chmod 644 {} +
fi
log "$clients client certificates in $out ($prefix-0001 ...)"
