#!/usr/bin/env bash
# Autobahn|Testsuite conformance run against the echo endpoint of a release
# build: RFC 6455 cases 1-7, 9, 10 and RFC 7692 (permessage-deflate) cases
# 12 and 13, zero failures required.
#   scripts/conformance.sh [extra case patterns...]
# CONFORMANCE_BIN=<path> runs that binary instead of building one (the test
# suite passes the release build it has just made).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CONFORMANCE_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/wsedge
fi
log=$(mktemp /tmp/wsedge-conformance.XXXXXX.log)
# 9.* sends messages of up to 16 MiB.
WSEDGE_API_LISTEN=127.0.0.1:0 \
"$bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --echo-path /echo \
  --max-message-size 16777216 --log-format text 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 1 100); do
  addr=$(grep -o 'client=[0-9.:]*' "$log" | head -n1 | cut -d= -f2 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "conformance: server did not start"; cat "$log"; exit 2; }
cases=("1.*" "2.*" "3.*" "4.*" "5.*" "6.*" "7.*" "9.*" "10.*" "12.*" "13.*" "$@")
out=${AUTOBAHN_OUT:-$(mktemp -d /tmp/autobahn-wsedge.XXXXXX)}
tests/conformance/run-autobahn.sh -a wsedge -o "$out" "ws://$addr/echo" "${cases[@]}"
