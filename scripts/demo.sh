#!/usr/bin/env bash
# The main job: a vigosrv with three envoys converging the example stack in sandbox roots.
# Stays up until interrupted (Ctrl-C), printing what each envoy does.
#
#   bash scripts/demo.sh            # state under ./demo (kept between runs: restart = rebuild from the log)
#   DEMO_DIR=/tmp/x bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vigo-target}"
echo "demo: building (the first build compiles RocksDB and takes a while)..."
# The same build as the tests (`cargo test` mode builds every binary too), so RocksDB compiles once.
cargo test --workspace --no-run --quiet
BIN="$CARGO_TARGET_DIR/debug"

DEMO_DIR="${DEMO_DIR:-$PWD/demo}"
ADDR="${DEMO_ADDR:-127.0.0.1:1530}"
mkdir -p "$DEMO_DIR"
export VIGO_SERVER="$ADDR" VIGO_CREDS="$DEMO_DIR/server/admin"

pids=()
cleanup() {
  echo
  echo "demo: stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$BIN/vigosrv" run --data-dir "$DEMO_DIR/server" --listen "$ADDR" --check-in-interval 10 \
  > >(sed -u 's/^/[vigosrv] /') 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  [ -f "$DEMO_DIR/server/admin/admin.key" ] && "$BIN/vigocli" envoys list >/dev/null 2>&1 && break
  sleep 0.2
done

hosts=(web-1.example.com web-2.example.com db-1.example.com)
for h in "${hosts[@]}"; do
  if [ ! -f "$DEMO_DIR/envoys/$h/identity/enrollment.json" ]; then
    token=$("$BIN/vigocli" token create)
    id=$("$BIN/envoy" enroll --token "$token" --data-dir "$DEMO_DIR/envoys/$h" --hostname "$h")
    echo "demo: enrolled $h as $id"
  fi
  mkdir -p "$DEMO_DIR/roots/$h"
done

version=$("$BIN/vigocli" config publish examples/stack -m "demo publish")
echo "demo: published examples/stack as version $version"

for h in "${hosts[@]}"; do
  "$BIN/envoy" run --data-dir "$DEMO_DIR/envoys/$h" --root "$DEMO_DIR/roots/$h" \
    > >(sed -u "s/^/[envoy $h] /") 2>&1 &
  pids+=($!)
done

sleep 3
echo
echo "demo: envoys"
"$BIN/vigocli" envoys list
echo
echo "demo: web-1's nginx.conf, rendered for it:"
sed 's/^/    /' "$DEMO_DIR/roots/web-1.example.com/etc/nginx/nginx.conf" 2>/dev/null || echo "    (not yet converged)"
echo
echo "demo: running. Try: edit examples/stack and run"
echo "        VIGO_SERVER=$ADDR VIGO_CREDS=$VIGO_CREDS $BIN/vigocli config publish examples/stack"
echo "      or delete a file under $DEMO_DIR/roots/ and watch it come back; Ctrl-C to stop."
wait
