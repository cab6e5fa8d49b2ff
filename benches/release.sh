# Sourced by the benchmark scripts (from the repository root): installs what the build needs and
# builds the release binaries once (the first build compiles RocksDB once more in release mode,
# ~20 min on 2 cores); they are in $BIN.
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vigo-target}"
cargo build --release --workspace --bins --quiet
BIN="$CARGO_TARGET_DIR/release"

# start_vigosrv DIR [FLAGS...]: starts $VIGOSRV (default: the release vigosrv) on a fresh port
# with its data in DIR and its HTTP listener on, waits until it listens, and sets $grpc, $http
# and $vigosrv_pid. Its output goes to DIR.out and DIR.log.
start_vigosrv() {
  local dir="$1"
  shift
  RUST_LOG="${RUST_LOG:-warn}" "${VIGOSRV:-$BIN/vigosrv}" run --data-dir "$dir" --listen 127.0.0.1:0 \
    --http 127.0.0.1:0 "$@" > "$dir.out" 2> "$dir.log" &
  vigosrv_pid=$!
  for _ in $(seq 1 300); do
    grep -q '^vigosrv http on' "$dir.out" 2>/dev/null && break
    sleep 0.1
  done
  grpc=$(sed -n 's/^vigosrv listening on //p' "$dir.out")
  http=$(sed -n 's/^vigosrv http on //p' "$dir.out")
  if [ -z "$grpc" ] || [ -z "$http" ]; then
    echo "vigosrv did not start:" >&2
    cat "$dir.log" >&2
    exit 1
  fi
}
