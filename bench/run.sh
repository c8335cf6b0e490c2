#!/usr/bin/env bash
# Runs one wsbench configuration N times and appends the JSON result lines
# to bench/results/<workload>.jsonl, each with a timestamp, the git commit
# of the repository and the command.
#
#   bench/run.sh [-n N] WORKLOAD [wsbench args...]
#   RUNS=3 bench/run.sh fanout --target wsedge --subs 1000 --duration 5
#
# WORKLOAD: idle | fanout | rooms | storm | compression | floor |
#           history-memory | recover-storm | presence (the last three: wsedge only)
#   bench/run.sh history-memory --target wsedge
#   bench/run.sh recover-storm --target wsedge --conns 19000
#   bench/run.sh presence --target wsedge --subs 5000 --churn 50 [--join-leave off]
#
# A run whose background_busy (foreign load before the run) exceeds
# NOISE_MAX (default 0.10) on either CPU is repeated, up to RETRIES (2)
# more times; if it stays noisy it is recorded with "noisy": true.
# A failed run (non-zero exit) is recorded as {"workload":..,"error":..}
# and its stderr kept in bench/results/logs/.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
runs="${RUNS:-2}"
if [[ "${1:-}" == "-n" ]]; then
  runs="$2"
  shift 2
fi
if [[ $# -lt 1 ]]; then
  echo "usage: $0 [-n N] WORKLOAD [wsbench args...]" >&2
  echo "  WORKLOAD: idle fanout rooms storm compression floor history-memory recover-storm presence" >&2
  exit 2
fi
workload="$1"
shift
noise_max="${NOISE_MAX:-0.10}"
retries="${RETRIES:-2}"

bin="$here/target/release/wsbench"
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --quiet --manifest-path "$here/../Cargo.toml" >&2 || exit 1
  cargo build --release --quiet --manifest-path "$here/Cargo.toml" >&2 || exit 1
fi
mkdir -p "$here/results/logs"
out="$here/results/$workload.jsonl"
commit="$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
cmd="wsbench $workload $*"

# annotate JSON_LINE NOISY -> prints the line with ts, commit, cmd, noisy added
annotate() {
  python3 - "$1" "$2" "$commit" "$cmd" <<'PY'
import json, os, sys, datetime
line, noisy, commit, cmd = sys.argv[1:5]
try:
    d = json.loads(line)
except ValueError:
    d = {"error": "unparsable output", "output": line[:500]}
d["ts"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
d["commit"] = commit
d["cmd"] = cmd
# Server tuning passed through the environment is part of the configuration.
env = {k: v for k, v in os.environ.items() if k.startswith(("WSEDGE_", "MIMALLOC_", "WSBENCH_"))}
if env:
    d["env"] = env
if noisy == "1":
    d["noisy"] = True
print(json.dumps(d, separators=(",", ":")))
PY
}

is_noisy() {
  python3 - "$1" "$noise_max" <<'PY'
import json, sys
try:
    b = json.loads(sys.argv[1]).get("background_busy", [0, 0])
except ValueError:
    b = [0, 0]
sys.exit(0 if max(b) > float(sys.argv[2]) else 1)
PY
}

status=0
for ((i = 1; i <= runs; i++)); do
  attempt=0
  while :; do
    attempt=$((attempt + 1))
    log="$here/results/logs/$workload-$(date +%Y%m%d-%H%M%S)-$$.err"
    echo "run.sh: [$i/$runs] $cmd" >&2
    line="$("$bin" "$workload" "$@" 2>"$log" | tail -n 1)"
    rc=${PIPESTATUS[0]}
    if [[ $rc -ne 0 || -z "$line" ]]; then
      echo "run.sh: FAILED (exit $rc); stderr in $log:" >&2
      tail -n 5 "$log" >&2
      err="$(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-400)"
      annotate "$(python3 -c 'import json,sys; print(json.dumps({"workload": sys.argv[1], "error": "exit " + sys.argv[2], "stderr": sys.argv[3]}))' "$workload" "$rc" "$err")" 0 >>"$out"
      status=1
      break
    fi
    if is_noisy "$line" && [[ $attempt -le $retries ]]; then
      echo "run.sh: noisy run (background_busy above $noise_max), retrying in 5 s" >&2
      sleep 5
      continue
    fi
    noisy=0
    if is_noisy "$line"; then noisy=1; fi
    annotate "$line" "$noisy" | tee -a "$out"
    rm -f "$log"
    break
  done
done
exit $status
