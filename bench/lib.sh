# Shared by the recording scripts (collab.sh, cluster.sh); source it.
#
# The caller sets: prog (its name, for messages), out (the .jsonl to append
# to), commit (of the repository), logs (directory for failed runs' stderr).
# Environment: NOISE_MAX (0.10), RETRIES (2), QUIET_WAIT (300 s).
#
#   record NAME CMD ARGV...   waits until the CPUs are quiet, runs ARGV (a
#                             wsbench command printing one JSON line), repeats
#                             a noisy run, records a failure as
#                             {"workload":NAME,"error":..}, appends the line
#                             annotated (ts, commit, cmd = CMD, extras) to
#                             $out; the line is in $last_line, the command
#                             as run in $last_cmdline; returns 1 on failure.
#   extras=(key=value ...)    extra string fields for annotate (e.g. scale).

# WSEDGE_BIN names the binary for the scripts; wsedge would read it as a
# configuration key (`bin`, refused) if it reached it.
unset WSEDGE_BIN
noise_max="${NOISE_MAX:-0.10}"
retries="${RETRIES:-2}"
extras=()

# wait_quiet: until both CPUs are >= 90 % idle over 2 s (QUIET_WAIT s at most).
wait_quiet() {
  local deadline=$((SECONDS + ${QUIET_WAIT:-300}))
  while ((SECONDS < deadline)); do
    python3 - <<'PY' && return 0
import time
def snap():
    out = {}
    for l in open("/proc/stat"):
        f = l.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            v = list(map(int, f[1:]))
            out[f[0]] = (sum(v), v[3] + v[4])
    return out
a = snap(); time.sleep(2); b = snap()
busy = max(1 - (b[c][1] - a[c][1]) / max(1, b[c][0] - a[c][0]) for c in a)
raise SystemExit(0 if busy < 0.10 else 1)
PY
    sleep 3
  done
  echo "$prog: the CPUs are still busy after ${QUIET_WAIT:-300} s; running anyway" >&2
}

# is_noisy JSON_LINE: background_busy above NOISE_MAX on either CPU.
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

# annotate JSON_LINE CMD NOISY: the line with ts, commit, cmd, $extras (and
# noisy) added.
annotate() {
  python3 - "$1" "$commit" "$2" "$3" "${extras[@]}" <<'PY'
import json, os, sys, datetime
line, commit, cmd, noisy = sys.argv[1:5]
try:
    d = json.loads(line)
except ValueError:
    d = {"error": "unparsable output", "output": line[:500]}
d["ts"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
d["commit"] = commit
d["cmd"] = cmd
for kv in sys.argv[5:]:
    k, _, v = kv.partition("=")
    d[k] = v
env = {k: v for k, v in os.environ.items() if k.startswith(("WSEDGE_", "MIMALLOC_"))}
if env:
    d["env"] = env
if noisy == "1":
    d["noisy"] = True
print(json.dumps(d, separators=(",", ":")))
PY
}

record() {
  local name="$1" cmd="$2"
  shift 2
  local attempt=0 rc log line noisy err
  last_cmdline="$*"
  while :; do
    attempt=$((attempt + 1))
    wait_quiet
    mkdir -p "$logs"
    log="$logs/$name-$(date +%Y%m%d-%H%M%S)-$$.err"
    echo "$prog: $*" >&2
    line="$("$@" 2>"$log" | tail -n 1)"
    rc=${PIPESTATUS[0]}
    noisy=0
    if [[ $rc -ne 0 || -z "$line" ]]; then
      echo "$prog: $name FAILED (exit $rc); stderr in $log:" >&2
      tail -n 8 "$log" >&2
      err="$(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-400)"
      line="$(python3 -c 'import json,sys; print(json.dumps({"workload": sys.argv[1], "error": "exit " + sys.argv[2], "stderr": sys.argv[3]}))' "$name" "$rc" "$err")"
      last_line="$(annotate "$line" "$cmd" 0)"
      echo "$last_line" >>"$out"
      return 1
    fi
    grep -E "WARNING|error|still arriving" "$log" >&2 || true
    rm -f "$log"
    if is_noisy "$line"; then
      if [[ $attempt -le $retries ]]; then
        echo "$prog: noisy run (background_busy above $noise_max), retrying" >&2
        continue
      fi
      noisy=1
    fi
    break
  done
  last_line="$(annotate "$line" "$cmd" "$noisy")"
  echo "$last_line" >>"$out"
  return 0
}
