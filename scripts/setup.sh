#!/usr/bin/env bash
# Installs what the build needs beyond the Rust toolchain: libclang, which RocksDB's bindings
# generator loads at build time. Idempotent; sourced by demo.sh and test.sh.
set -euo pipefail

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "setup: installing libclang-dev (needed to build RocksDB's bindings)" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libclang-dev >/dev/null
fi
