#!/bin/sh
# Certificates the connection tests must refuse, made with the test CA:
#   expired.crt/key  CN=expired-client, valid 2020-2021
#   revoked.crt/key  CN=revoked-client, revoked in crl.pem
#   other/           an unrelated CA and its client-0001 (certs/gen.sh)
# usage: tests/mkcerts_extra.sh CERTS_DIR OUT_DIR SRC_DIR
set -eu
certs=$(cd "$1" && pwd) out=$2 src=$(cd "$3" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
umask 077
mkdir -p "$out"
cd "$out"
serial=1000
. "$here/test_ca.sh"
req() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
  openssl req -new -sha256 -key "$1.key" -subj "/CN=$2" -out "$1.csr"
}
req expired expired-client
openssl ca -batch -config ca.cnf -extensions client -notext \
  -startdate 20200101000000Z -enddate 20210101000000Z -in expired.csr -out expired.crt 2>/dev/null
req revoked revoked-client
openssl ca -batch -config ca.cnf -extensions client -notext -days 30 \
  -in revoked.csr -out revoked.crt 2>/dev/null
openssl ca -batch -config ca.cnf -revoke revoked.crt 2>/dev/null
openssl ca -batch -config ca.cnf -gencrl -out crl.pem 2>/dev/null
"$src/certs/gen.sh" --quiet --out other --clients 1
