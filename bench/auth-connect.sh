#!/usr/bin/env bash
# Connect rate and idle memory under authentication and TLS, side by side in
# one run: `wsbench idle` against the same wsedge binary with
#   plain   [auth] mode = "none", ws://
#   hs256   mode = "jwt", every connection sends an HS256 token in `connect`
#   es256   mode = "jwt", an ES256 token (tests/fixtures/auth keys)
#   ticket  mode = "ticket", connection i redeems its own one-time ticket
#           from a real redis-server (started here on a free loopback port)
#   tls     mode = "none" over wss:// (rustls on the server, tokio-rustls in
#           the generator; certificate made here with openssl)
# and prints one line per case: connections, setup wall time, server CPU
# spent during setup, connects per server-CPU-second (= per core), and idle
# RSS per connection. Two more cases (not in the default set) run
# `wsbench fanout` flat out to CONNS subscribers, 100-byte payloads, 5 s:
#   fanout-plain, fanout-tls   server CPU per delivery, ws:// against wss://
#
#   bench/auth-connect.sh [CONNS] [CASES...]      (default 19000, all idle cases)
#   WSEDGE_BIN=path/to/wsedge bench/auth-connect.sh 19000 plain tls
#   bench/auth-connect.sh 10000 fanout-plain fanout-tls
#
# Raw JSON lines go to bench/results/auth-connect.jsonl. The generator runs
# on CPU 1 and the server on CPU 0 (wsbench defaults); on 2 cores the
# generator's own TLS work competes with nothing but itself, but the
# connect *rate* can still be bounded by the generator: compare
# connect_gen_cpu_s with the wall time in the JSON line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
conns="${1:-19000}"
shift || true
cases=("$@")
[[ ${#cases[@]} -gt 0 ]] || cases=(plain hs256 es256 ticket tls)
bin="${WSEDGE_BIN:-$root/target/release/wsedge}"
wsbench="$here/target/release/wsbench"
mint="$root/target/release/examples/mint_token"
out="$here/results/auth-connect.jsonl"
[[ -x "$wsbench" ]] || cargo build --release --quiet --manifest-path "$here/Cargo.toml"
[[ -x "$mint" ]] || cargo build --release --quiet --manifest-path "$root/Cargo.toml" --example mint_token
tmp=$(mktemp -d /tmp/wsedge-authbench.XXXXXX)
redis_pid=""
cleanup() {
  [[ -n "$redis_pid" ]] && kill "$redis_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

secret="bench-secret-0123456789abcdef0123456789abcdef"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

# run_case NAME WORKLOAD [ENV=VALUE...]: one wsbench run of WORKLOAD
# (idle or fanout) with the given environment; prints the summary line.
run_case() {
  local name="$1" workload="$2"
  shift 2
  local args=(--conns "$conns")
  [[ "$workload" == fanout ]] && args=(--subs "$conns" --duration 5)
  local line
  line=$(env "$@" MIMALLOC_ALLOW_THP=0 "$wsbench" "$workload" --target wsedge --wsedge-bin "$bin" \
    "${args[@]}" 2>"$tmp/$name.log") || {
    echo "$name: failed (log below)" >&2
    tail -20 "$tmp/$name.log" >&2
    return 1
  }
  grep -m2 "failed; errors" "$tmp/$name.log" >&2 || true
  echo "{\"case\":\"$name\",\"commit\":\"$commit\",\"at\":\"$(date -u +%FT%TZ)\",\"result\":$line}" >>"$out"
  python3 - "$name" "$line" <<'EOF'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
if r["workload"] == "fanout":
    print(f"{name:12} subs {r['subs_connected']:6} delivered {r['delivered_per_s']:9.0f}/s  "
          f"server cpu {r['server_cpu_per_msg_ns']:6.0f} ns/delivery  gen busy {r['gen_core_busy']:.2f}  "
          f"generator saturated {r['generator_saturated']}  losses {r['losses']} gaps {r['gaps']}")
else:
    per_core = r["connected"] / r["connect_server_cpu_s"] if r["connect_server_cpu_s"] else float("nan")
    print(f"{name:12} conns {r['connected']:6} failed {r['failed']:4} setup {r['elapsed_s']:6.2f} s "
          f"rate {r['connect_rate']:8.0f}/s  server cpu {r['connect_server_cpu_s']:5.2f} s "
          f"= {per_core:7.0f} connects per core-s  gen cpu {r['connect_gen_cpu_s']:5.2f} s  "
          f"rss {r['rss_per_conn']:7.1f} B/conn")
EOF
}

# A CA and a P-256 leaf for localhost (webpki refuses a CA as the leaf);
# sets TLS_ENV to the server's and the generator's settings.
make_cert() {
  [[ -f "$tmp/cert.pem" ]] || {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=wsbench-ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout "$tmp/key.pem" -out "$tmp/leaf.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$tmp/leaf.ext"
    openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
      -days 2 -extfile "$tmp/leaf.ext" -out "$tmp/cert.pem" 2>/dev/null
  }
  TLS_ENV=(WSEDGE_TLS_CERT_FILE="$tmp/cert.pem" WSEDGE_TLS_KEY_FILE="$tmp/key.pem" WSBENCH_TLS_CA="$tmp/ca.pem")
}

for c in "${cases[@]}"; do
  case "$c" in
    plain) run_case plain idle WSEDGE_AUTH_MODE=none ;;
    hs256)
      tok=$(WSEDGE_AUTH_HMAC_SECRET="$secret" "$mint" HS256 - bench 3600)
      run_case hs256 idle WSEDGE_AUTH_MODE=jwt WSEDGE_AUTH_HMAC_SECRET="$secret" WSBENCH_CONNECT_TOKEN="$tok"
      ;;
    es256)
      tok=$("$mint" ES256 "$root/tests/fixtures/auth/ec256_private.pem" bench 3600)
      run_case es256 idle WSEDGE_AUTH_MODE=jwt \
        WSEDGE_AUTH_PUBLIC_KEY_FILE="$root/tests/fixtures/auth/ec256_public.pem" WSBENCH_CONNECT_TOKEN="$tok"
      ;;
    ticket)
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
      redis_pid=$!
      for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
      # One ticket per connection: wsbench connection i (1-based) sends t<i>.
      python3 - "$conns" >"$tmp/tickets.txt" <<'EOF'
import sys
claims = '{"sub":"bench","exp":4102444800}'
for i in range(1, int(sys.argv[1]) + 1):
    key = f"wsedge:ticket:t{i}"
    print(f"*5\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(claims)}\r\n{claims}\r\n$2\r\nEX\r\n$3\r\n600\r", end="\n")
EOF
      redis-cli -p "$port" --pipe <"$tmp/tickets.txt" >/dev/null
      run_case ticket idle WSEDGE_AUTH_MODE=ticket WSEDGE_AUTH_REDIS_URL="redis://127.0.0.1:$port" \
        WSBENCH_CONNECT_TICKET_PREFIX=t
      left=$(redis-cli -p "$port" dbsize)
      echo "ticket  tickets left unredeemed in Redis: $left"
      kill "$redis_pid"
      redis_pid=""
      ;;
    tls)
      make_cert
      run_case tls idle WSEDGE_AUTH_MODE=none "${TLS_ENV[@]}"
      ;;
    fanout-plain) run_case fanout-plain fanout WSEDGE_AUTH_MODE=none ;;
    fanout-tls)
      make_cert
      run_case fanout-tls fanout WSEDGE_AUTH_MODE=none "${TLS_ENV[@]}"
      ;;
    *)
      echo "unknown case $c (plain hs256 es256 ticket tls fanout-plain fanout-tls)" >&2
      exit 2
      ;;
  esac
done
