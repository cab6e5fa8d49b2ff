#!/usr/bin/env bash
# Two bolts of one federation on loopback, each driven by its own fakefleet with as many envoys
# as one server gets alone, against that one server alone, measured the same way: does a
# federation of two hold twice the envoys at the same server CPU per check-in?
#
#   bash benches/spanner.sh                                 # 8,000 envoys per bolt, every 4 s
#   bash benches/spanner.sh --envoys 5000 --interval 2
#
# Every argument goes to each fakefleet (both bolts' and the lone server's). The bolts own the
# hostname patterns `a-*` and `b-*`; each fakefleet enrolls its envoys under its bolt's prefix.
# Work files go to $SPANNER_DIR (a temporary folder, removed afterwards unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/release.sh


SPANNER_DIR="${SPANNER_DIR:-$(mktemp -d /var/tmp/spanner.XXXXXX)}"
mkdir -p "$SPANNER_DIR"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$SPANNER_DIR"
}
trap cleanup EXIT INT TERM

[ $# -gt 0 ] || set -- --envoys 8000 --interval 4 --duration 30 --mode session

# Starts vigosrv with data dir $1 and the remaining flags; sets $grpc and $http.
start() {
  start_vigosrv "$@"
  pids+=("$vigosrv_pid")
}

# Waits until the roster of the bolt at $1 (admin creds $2) lists $3 bolts.
await_bolts() {
  for _ in $(seq 1 300); do
    n=$("$BIN/vigocli" --server "$1" --creds "$2" -o json spanner status | jq '.bolts | length')
    [ "$n" = "$3" ] && return 0
    sleep 0.2
  done
  echo "spanner.sh: the roster at $1 never listed $3 bolts" >&2
  exit 1
}

fleet() { # grpc http creds prefix label json, then the caller's arguments
  local grpc="$1" http="$2" creds="$3" prefix="$4" label="$5" json="$6"
  shift 6
  "$BIN/fakefleet" --server "$grpc" --http "$http" --creds "$creds" --vigocli "$BIN/vigocli" \
    --hostname-prefix "$prefix" --label "$label" --json "$json" "$@"
}

echo "spanner.sh: one server alone" >&2
start "$SPANNER_DIR/alone"
fleet "$grpc" "$http" "$SPANNER_DIR/alone/admin" a- "one server" "$SPANNER_DIR/alone.json" "$@" \
  > "$SPANNER_DIR/alone.md"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
pids=()

echo "spanner.sh: two bolts" >&2
start "$SPANNER_DIR/bolt-a" --bolt a --bolt-pattern 'a-*'
a_grpc="$grpc" a_http="$http"
await_bolts "$a_grpc" "$SPANNER_DIR/bolt-a/admin" 1
token=$("$BIN/vigocli" --server "$a_grpc" --creds "$SPANNER_DIR/bolt-a/admin" token create --federate)
start "$SPANNER_DIR/bolt-b" --bolt b --bolt-pattern 'b-*' --federate "$a_grpc" --federation-token "$token"
b_grpc="$grpc" b_http="$http"
await_bolts "$a_grpc" "$SPANNER_DIR/bolt-a/admin" 2
await_bolts "$b_grpc" "$SPANNER_DIR/bolt-b/admin" 2
fleet "$a_grpc" "$a_http" "$SPANNER_DIR/bolt-a/admin" a- "bolt a of 2" "$SPANNER_DIR/a.json" "$@" \
  > "$SPANNER_DIR/a.md" &
fa=$!
fleet "$b_grpc" "$b_http" "$SPANNER_DIR/bolt-b/admin" b- "bolt b of 2" "$SPANNER_DIR/b.json" "$@" \
  > "$SPANNER_DIR/b.md" &
fb=$!
wait "$fa" "$fb"
listed=$("$BIN/vigocli" --server "$a_grpc" --creds "$SPANNER_DIR/bolt-a/admin" -o json envoys list | jq length)

cat "$SPANNER_DIR/alone.md" "$SPANNER_DIR/a.md" "$SPANNER_DIR/b.md"
echo
echo "| run | envoys | check-ins/s | server CPU per check-in | server RSS per envoy | p50 / p99 |"
echo "|---|---|---|---|---|---|"
for f in alone a b; do
  jq -r '"| \(.label) | \(.envoys) | \(.check_ins_per_s | round) | \(.server_cpu_us_per_check_in * 10 | round / 10) µs | \(.server_rss_bytes_per_envoy / 1024 * 10 | round / 10) KiB | \(.latency_ms_p50) / \(.latency_ms_p99) ms |"' \
    "$SPANNER_DIR/$f.json"
done
echo
echo "envoys list asked of bolt a (fanned out to both): $listed envoys"
