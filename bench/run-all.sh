#!/usr/bin/env bash
# Runs the full benchmark matrix (each configuration RUNS=2 times, through
# run.sh) and appends to bench/results/*.jsonl. About 23 minutes on the
# 2-core machine. Installs what it needs (setup.sh) and builds wsedge and
# the bench first. Progress on stderr.
#
#   bench/run-all.sh            # everything
#   ONLY=fanout bench/run-all.sh  # one workload (idle|fanout|rooms|storm|compression|floor|shards|
#                                 #   history-memory|recover-storm|presence|uring; remember = those three)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export RUNS="${RUNS:-2}"
only="${ONLY:-}"

"$here/setup.sh" || exit 1
# wsedge itself (the driver runs target/release/wsedge) and the bench.
cargo build --release --quiet --manifest-path "$here/../Cargo.toml" || exit 1
cargo build --release --quiet --manifest-path "$here/Cargo.toml" || exit 1
export SKIP_BUILD=1
targets=(wsedge tokio-fastws tokio-tungstenite node-ws bun)
baselines=(tokio-fastws tokio-tungstenite node-ws bun)

jobs=()
add() { jobs+=("|$*"); }
# add_env "VAR=VALUE [VAR=VALUE...]" WORKLOAD ARGS...: the same with server
# (or wsbench) environment variables (run.sh records WSEDGE_*, MIMALLOC_*
# and WSBENCH_* in the result line).
add_env() { jobs+=("$1|${*:2}"); }

want() { [[ -z "$only" || "$only" == "$1" ]]; }
# The wsedge-only workloads of issue 7 (history, recovery, presence).
want_remember() { want "$1" || [[ "$only" == remember ]]; }

if want floor; then
  add floor --sockets 9900 --batch 1,16,40,64 --frame-bytes 130
fi
if want idle; then
  for c in 1000 5000 10000 15000 19000; do add idle --target wsedge --conns "$c"; done
  # mimalloc backs its arena with transparent huge pages: 2 MiB pages
  # faulted at start blur the before/after difference. Without THP the
  # difference is exact to 4 KiB pages.
  for c in 10000 19000; do add_env MIMALLOC_ALLOW_THP=0 idle --target wsedge --conns "$c"; done
  for t in "${baselines[@]}"; do
    for c in 10000 19000; do add idle --target "$t" --conns "$c"; done
  done
fi
if want fanout; then
  for t in "${targets[@]}"; do
    add fanout --target "$t" --subs 1000 --duration 5
    add fanout --target "$t" --subs 10000 --duration 5
    add fanout --target "$t" --subs 10000 --duration 5 --rate 20
  done
fi
if want shards; then
  add fanout --target wsedge --shards 2 --subs 10000 --duration 5
  add fanout --target wsedge --shards 2 --subs 10000 --duration 5 --rate 20
  # Both shards on CPU 0: the cross-shard cost alone, the generator keeping
  # CPU 1 to itself.
  add fanout --target wsedge --shards 2 --server-cores 1 --subs 10000 --duration 5
fi
if want rooms; then
  for t in "${targets[@]}"; do add rooms --target "$t" --conns 10000 --rooms 1000 --rate-per-conn 0.5 --duration 10; done
fi
if want storm; then
  for t in "${targets[@]}"; do
    add storm --target "$t" --conns 19000 --limit-s 30
    # Lighter publishing: mostly the reconnect cost (50 ms x 19,000
    # subscribers is 380,000 deliveries/s, above one core's unbatched write
    # floor); 200 ms keeps "receiving" within 0.2 s of "subscribed".
    add storm --target "$t" --conns 19000 --interval-ms 200
  done
fi
if want compression; then
  for t in wsedge node-ws bun; do
    for d in on off; do
      add compression --target "$t" --deflate "$d" --subs 1000 --duration 5 --rate 20
      # Flat out, 1 subscriber in 100 inflates and verifies every push;
      # the rest count them (inflating 2M pushes/s would bound the run).
      add compression --target "$t" --deflate "$d" --subs 1000 --duration 3 --inflate-every 100
    done
  done
fi
# wsedge only: the baselines have no history, recovery or presence.
if want_remember history-memory; then
  add history-memory --target wsedge --channels 10000 --pubs-per-channel 100 --payload 100
fi
if want_remember recover-storm; then
  add recover-storm --target wsedge --conns 19000 --channels 1000 --missed 20
fi
if want_remember presence; then
  add presence --target wsedge --subs 5000 --churn 50 --duration 10
  add presence --target wsedge --subs 5000 --churn 50 --duration 10 --join-leave off
fi

# wsedge's two socket paths side by side (io = "epoll" | "uring"),
# interleaved, with the server's syscalls counted by perf over the window
# (fanout) or the connect phase (idle). bench/RESULTS.md "io_uring data path".
if want uring; then
  both() { for io in epoll uring; do add_env "WSEDGE_IO=$io $1" "${@:2}"; done; }
  both WSBENCH_COUNT_SYSCALLS=1 fanout --target wsedge --subs 10000 --duration 5
  both WSBENCH_COUNT_SYSCALLS=1 fanout --target wsedge --subs 10000 --duration 5 --rate 20
  both WSBENCH_COUNT_SYSCALLS=1 fanout --target wsedge --subs 1000 --duration 5
  both WSBENCH_COUNT_SYSCALLS=1 idle --target wsedge --conns 19000
  both MIMALLOC_ALLOW_THP=0 idle --target wsedge --conns 19000
  both "" storm --target wsedge --conns 19000 --interval-ms 200
fi

n=${#jobs[@]}
start=$(date +%s)
failed=0
for i in "${!jobs[@]}"; do
  now=$(date +%s)
  envv="${jobs[$i]%%|*}"
  job="${jobs[$i]#*|}"
  printf 'run-all: [%d/%d] +%ds  %s %s\n' "$((i + 1))" "$n" "$((now - start))" "$envv" "$job" >&2
  # shellcheck disable=SC2086
  env $envv "$here/run.sh" $job >/dev/null || failed=$((failed + 1))
done
printf 'run-all: done: %d configurations x %s runs in %ds, %d with failures\n' \
  "$n" "$RUNS" "$(($(date +%s) - start))" "$failed" >&2
