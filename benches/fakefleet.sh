#!/usr/bin/env bash
# Runs fakefleet against a fresh release-built vigosrv on loopback and prints its report.
# Every argument goes to fakefleet, e.g.:
#
#   bash benches/fakefleet.sh --envoys 10000 --interval 2 --duration 30 --mode held
#   bash benches/fakefleet.sh --envoys 10000 --interval 10 --duration 40 --publish-at 5 --json out.json
#
# The server's log goes to $FLEET_DIR/vigosrv.log (FLEET_DIR defaults to a temporary folder,
# removed afterwards unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vigo-target}"
# Release binaries: the first build compiles RocksDB once more in release mode (~20 min on 2 cores).
cargo build --release --workspace --bins --quiet
BIN="$CARGO_TARGET_DIR/release"

FLEET_DIR="${FLEET_DIR:-$(mktemp -d /var/tmp/fakefleet.XXXXXX)}"
mkdir -p "$FLEET_DIR"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$FLEET_DIR"
}
trap cleanup EXIT INT TERM

# VIGOSRV=path runs another vigosrv build (e.g. one with frame pointers, to profile it).
RUST_LOG="${RUST_LOG:-warn}" "${VIGOSRV:-$BIN/vigosrv}" run --data-dir "$FLEET_DIR/server" --listen 127.0.0.1:0 \
  --http 127.0.0.1:0 > "$FLEET_DIR/vigosrv.out" 2> "$FLEET_DIR/vigosrv.log" &
server_pid=$!
for _ in $(seq 1 200); do
  grep -q '^vigosrv http on' "$FLEET_DIR/vigosrv.out" 2>/dev/null && break
  sleep 0.1
done
grpc=$(sed -n 's/^vigosrv listening on //p' "$FLEET_DIR/vigosrv.out")
http=$(sed -n 's/^vigosrv http on //p' "$FLEET_DIR/vigosrv.out")
if [ -z "$grpc" ] || [ -z "$http" ]; then
  echo "fakefleet.sh: vigosrv did not start:" >&2
  cat "$FLEET_DIR/vigosrv.log" >&2
  exit 1
fi
echo "fakefleet.sh: vigosrv (pid $server_pid) on $grpc, http on $http" >&2
"$BIN/fakefleet" --server "$grpc" --http "$http" --creds "$FLEET_DIR/server/admin" --vigocli "$BIN/vigocli" "$@"
