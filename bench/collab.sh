#!/usr/bin/env bash
# Story collaboration benchmarks (issue 9, docs/COLLABORATION.md): builds
# wsedge and the bench, then runs against wsedge, each once,
#   fanout  wsbench collab-fanout: 1 story, 10 editors x 5 updates/s, 5,000
#           viewers: update-to-viewer latency, server CPU per update
#   join    wsbench collab-join: collab_join snapshot round trip for a
#           story of 200 sections of ~200 B (200 fresh viewers, one at a time)
#   many    wsbench collab-many: 1,000 stories x (3 editors + 16 viewers),
#           1 update/s per editor: latency, CPU per update, RSS per connection
#           (the issue's 20 viewers make 23,000 connections, more than one
#           wsedge process can hold under a 20,000 open-file limit; with a
#           higher limit: MANY_ARGS="--viewers 20")
# and appends each JSON result line, with ts, commit, cmd and scale, to
# bench/results/collab.jsonl (stderr of a failed run: bench/results/logs/).
# Each wsbench run starts its own wsedge with a config holding the story
# namespace ([[namespace]] name = "story", collaboration = true, history 100
# / 5m, recover, no presence) and stops it afterwards.
#
#   bench/collab.sh [fanout|join|many ...]       (default: all three)
#   SCALE=small bench/collab.sh                  500 viewers, 50 stories, 50 join samples
#   FANOUT_ARGS="--viewers 2000 --duration 5" bench/collab.sh fanout
#   JOIN_ARGS=..., MANY_ARGS=...                 more wsbench options per scenario
#   SKIP_BUILD=1 bench/collab.sh                 use the binaries as they are
#   WSEDGE_BIN=path/to/wsedge bench/collab.sh    another wsedge
#
# Read generator_saturated (and gen_core_busy against server_core_busy) in
# each line: when the generator's CPU is full, latency is the generator's.
#
# Noise: before each run the script waits (QUIET_WAIT, default 300 s at
# most) until both CPUs are at least 90 % idle over 2 s; a run whose
# background_busy still exceeds NOISE_MAX (0.10) on either CPU is repeated
# up to RETRIES (2) more times, and recorded with "noisy": true if it stays
# noisy.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(fanout join many)
scale="${SCALE:-full}"

if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$root" && nice -n 15 cargo build --release --quiet) || exit 1
  # The bench has its own target dir (bench/target), whatever the caller's
  # CARGO_TARGET_DIR says.
  (cd "$here" && env -u CARGO_TARGET_DIR nice -n 15 cargo build --release --quiet) || exit 1
fi
wsbench="$here/target/release/wsbench"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target_dir" = /* ]] || target_dir="$root/$target_dir"
bin="${WSEDGE_BIN:-$target_dir/release/wsedge}"
[[ -x "$bin" ]] || { echo "collab.sh: no wsedge binary at $bin" >&2; exit 1; }
mkdir -p "$here/results/logs"
out="$here/results/collab.jsonl"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

case "$scale" in
  small) fanout_scale=(--viewers 500); many_scale=(--stories 50 --viewers 16); join_scale=(--samples 50) ;;
  full) fanout_scale=(); many_scale=(--viewers 16); join_scale=() ;;
  *) echo "collab.sh: SCALE is small or full" >&2; exit 2 ;;
esac

prog=collab.sh
logs="$here/results/logs"
# shellcheck source=lib.sh
. "$here/lib.sh"
extras=("scale=$scale")

# summary JSON_LINE: one human line per result.
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
w = r.get("workload", "?") + (" (noisy)" if r.get("noisy") else "")
if "error" in r:
    print(f"{w}: ERROR {r['error']}")
elif w == "collab-join":
    print(f"{w:14} {r['sections']} sections x {r['section_bytes']} B, {r['samples']} joins: "
          f"p50 {r['join_p50_us']} us  p99 {r['join_p99_us']} us  max {r['join_max_us']} us  "
          f"reply {r['reply_bytes']:.0f} B  server cpu {r['server_cpu_per_join_us']} us/join  "
          f"errors {r['join_errors']}")
else:
    print(f"{w:14} {r['stories']} x ({r['editors_per_story']} ed + {r['viewers_per_story']} vw): "
          f"{r['updates_per_s']} updates/s  lat p50 {r['lat_p50_us']} p99 {r['lat_p99_us']} "
          f"p99.9 {r['lat_p999_us']} us  server cpu {r['server_cpu_per_update_us']} us/update  "
          f"rss {r['rss_per_conn']} B/conn  losses {r['losses']}  gen saturated {r['generator_saturated']} "
          f"(gen busy {r['gen_core_busy']}, server busy {r['server_core_busy']})")
PY
}

status=0
for s in "${scenarios[@]}"; do
  case "$s" in
    fanout) scale_args=("${fanout_scale[@]}"); read -ra extra <<<"${FANOUT_ARGS:-}" ;;
    join) scale_args=("${join_scale[@]}"); read -ra extra <<<"${JOIN_ARGS:-}" ;;
    many) scale_args=("${many_scale[@]}"); read -ra extra <<<"${MANY_ARGS:-}" ;;
    *) echo "collab.sh: unknown scenario $s (fanout, join, many)" >&2; exit 2 ;;
  esac
  # The scale's options (pairs), unless the extra options give them again.
  args=()
  for ((i = 0; i < ${#scale_args[@]}; i += 2)); do
    [[ " ${extra[*]} " == *" ${scale_args[i]} "* ]] || args+=("${scale_args[i]}" "${scale_args[i + 1]}")
  done
  args+=("${extra[@]}")
  cmd="wsbench collab-$s --target wsedge ${args[*]}"
  record "collab-$s" "$cmd" "$wsbench" "collab-$s" --target wsedge --wsedge-bin "$bin" "${args[@]}" || status=1
  summary "$last_line"
done
exit $status
