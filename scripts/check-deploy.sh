#!/usr/bin/env bash
# Offline checks of what operators deploy: the Prometheus alert rules (syntax
# and their unit tests on synthetic series), the example Prometheus
# configuration, every Grafana dashboard query (parsed as PromQL), and the
# systemd unit (`systemd-analyze verify`, and `systemd-analyze security`
# held to the exposure level recorded in docs/OPERATIONS.md).
#
# Needs promtool (Debian: `apt-get install prometheus`) and python3;
# systemd-analyze is used when present. The release binary must be built
# (the unit's ExecStart is verified against it). That every metric named here
# exists is checked against a running node by tests/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
promtool check config deploy/prometheus/prometheus.yml

# Each dashboard query as a recording rule, with the dashboard's variables
# filled in, so promtool parses it.
python3 - deploy/grafana/wsedge.json "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
fill = {"$__rate_interval": "1m", "$instance": ".*", "$shard": ".*"}
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        for k, v in fill.items():
            e = e.replace(k, v)
        assert "$" not in e, f"unfilled variable in {e}"
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} dashboard queries")
PY
promtool check rules "$tmp/dashboard-rules.yml"

if command -v systemd-analyze >/dev/null; then
  # The unit as installed, but pointing at the binary just built.
  sed "s#/usr/local/bin/wsedge#$target/release/wsedge#g" systemd/wsedge.service \
    > "$tmp/wsedge.service"
  systemd-analyze verify "$tmp/wsedge.service"
  # The blue/green template, as an instance.
  sed "s#/usr/local/bin/wsedge#$target/release/wsedge#g" systemd/wsedge@.service \
    > "$tmp/wsedge@.service"
  cp "$tmp/wsedge@.service" "$tmp/wsedge@blue.service"
  systemd-analyze verify "$tmp/wsedge@blue.service"
  # Exposure 1.4 today (docs/OPERATIONS.md); fail if hardening is lost.
  systemd-analyze security --offline=true --threshold=15 systemd/wsedge.service | tail -1
else
  echo "systemd-analyze not found: unit checks skipped"
fi
echo "deploy checks passed"
