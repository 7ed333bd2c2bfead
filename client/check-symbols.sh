#!/bin/sh
# Checks that libflclient exports exactly the symbols of the committed list, so that an
# accidental change of the ABI (a new, renamed or vanished public function, an internal
# symbol leaking out) fails the build.
#   usage: client/check-symbols.sh LIST LIB.so [LIB.a]
set -eu
list=$1 so=$2 a=${3:-}
tmp=$(mktemp -d /tmp/fl-check-symbols-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
sort -u "$list" >"$tmp/want"

check() { # what, file of the symbols found
  if ! cmp -s "$tmp/want" "$2"; then
    echo "check-symbols: $1 exports other symbols than $list:" >&2
    diff "$tmp/want" "$2" | sed -n 's/^> /  exported but not listed: /p; s/^< /  listed but not exported: /p' >&2
    echo "check-symbols: if this change of the ABI is meant, update $list" \
         "(and the soname, FL_CLIENT_VERSION_MAJOR, when a symbol goes away or changes)" >&2
    exit 1
  fi
}

nm -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u >"$tmp/so"
check "$so" "$tmp/so"
if [ -n "$a" ]; then
  nm -g --defined-only "$a" | awk 'NF == 3 { print $3 }' | sort -u >"$tmp/a"
  check "$a" "$tmp/a"
fi
