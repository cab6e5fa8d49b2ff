#!/usr/bin/env bash
# Runs fakefleet against a fresh release-built vigosrv on loopback and prints its report.
# Every argument goes to fakefleet, e.g.:
#
#   bash benches/fakefleet.sh --envoys 10000 --interval 2 --duration 30 --mode held
#   bash benches/fakefleet.sh --envoys 10000 --interval 10 --duration 40 --publish-at 5 --json out.json
#
# The server's log goes to $FLEET_DIR/server.log (FLEET_DIR defaults to a temporary folder,
# removed afterwards unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/release.sh


FLEET_DIR="${FLEET_DIR:-$(mktemp -d /var/tmp/fakefleet.XXXXXX)}"
mkdir -p "$FLEET_DIR"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$FLEET_DIR"
}
trap cleanup EXIT INT TERM

# VIGOSRV=path runs another vigosrv build (e.g. one with frame pointers, to profile it).
start_vigosrv "$FLEET_DIR/server"
server_pid=$vigosrv_pid
echo "fakefleet.sh: vigosrv (pid $server_pid) on $grpc, http on $http" >&2
"$BIN/fakefleet" --server "$grpc" --http "$http" --creds "$FLEET_DIR/server/admin" --vigocli "$BIN/vigocli" "$@"
