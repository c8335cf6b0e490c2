#!/usr/bin/env bash
# Installs what the bench needs beyond Rust on a fresh Debian/Ubuntu
# machine (run as root; idempotent): Node.js + npm for the node-ws
# baseline (the `ws` package itself is installed by wsbench from the
# committed lockfile) and for Bun (the `bun` npm package ships the binary:
# `npm ci` in baselines/bun, from its committed lockfile), taskset
# (util-linux) for pinning, python3-venv for the plots. run-all.sh calls it.
set -euo pipefail
need=()
{ command -v node && command -v npm; } >/dev/null || need+=(nodejs npm)
command -v taskset >/dev/null || need+=(util-linux)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "bench/setup.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bench/setup.sh: please install: ${need[*]}" >&2
    exit 1
  fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if ((major < 18)); then
  echo "bench/setup.sh: Node.js >= 18 is needed (found $(node --version))" >&2
  exit 1
fi
# Bun for the `bun` baseline: its npm package's postinstall puts the
# platform binary at node_modules/bun/bin/bun.exe (a small placeholder
# before that).
bun_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/baselines/bun"
bun_bin="$bun_dir/node_modules/bun/bin/bun.exe"
if [[ ! -x "$bun_bin" || $(stat -c %s "$bun_bin") -lt 1048576 ]]; then
  echo "bench/setup.sh: installing Bun (npm ci in $bun_dir)" >&2
  (cd "$bun_dir" && npm ci --no-audit --no-fund >&2)
fi
"$bun_bin" --version >/dev/null || {
  echo "bench/setup.sh: $bun_bin does not run" >&2
  exit 1
}
