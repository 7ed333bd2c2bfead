#!/bin/sh
# Certificates whose validity ends during a test, made with the test CA:
#   expiring.crt/key  CN=expiring-client, valid until SECONDS from now
#   crl-expired.pem   a CRL whose next update was in 2021
#   crl-soon.pem      a CRL whose next update is SECONDS from now
# usage: tests/mkcerts_timed.sh CERTS_DIR OUT_DIR SECONDS
set -eu
certs=$(cd "$1" && pwd) out=$2 secs=$3
here=$(cd "$(dirname "$0")" && pwd)
umask 077
mkdir -p "$out"
cd "$out"
serial=2000
. "$here/test_ca.sh"
at() { date -u -d "@$(( $(date +%s) + $1 ))" +%Y%m%d%H%M%SZ; }
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out expiring.key 2>/dev/null
openssl req -new -sha256 -key expiring.key -subj "/CN=expiring-client" -out expiring.csr
openssl ca -batch -config ca.cnf -extensions client -notext -startdate "$(at -3600)" \
  -enddate "$(at "$secs")" -in expiring.csr -out expiring.crt 2>/dev/null
openssl ca -batch -config ca.cnf -gencrl -crl_lastupdate 20200101000000Z \
  -crl_nextupdate 20210101000000Z -out crl-expired.pem 2>/dev/null
openssl ca -batch -config ca.cnf -gencrl -crl_lastupdate "$(at -3600)" \
  -crl_nextupdate "$(at "$secs")" -out crl-soon.pem 2>/dev/null
