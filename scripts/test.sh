#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the RocksDB store against openraft's
# conformance suite, and black-box tests that start real vigosrv/envoy/vigocli processes
# on loopback. Then clippy and rustfmt, as CI enforces them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# One build mode and one feature set for the whole run, so RocksDB compiles once.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all --check
