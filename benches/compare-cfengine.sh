#!/usr/bin/env bash
# Side by side on this machine, in one session: CFEngine's cf-serverd CPU per no-change cf-agent
# run, and vigosrv's CPU per no-change check-in (fakefleet, held connections), and their ratio.
# Installs Debian's cfengine3 and bootstraps it to 127.0.0.1 when it is not there yet (root).
#
#   bash benches/compare-cfengine.sh            # RUNS=100 agent runs; fakefleet: 2,000 envoys, 1 s cadence
#   RUNS=100 ENVOYS=5000 bash benches/compare-cfengine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-100}"
ENVOYS="${ENVOYS:-2000}"
OUT="${OUT:-/var/tmp/vigo-compare}"
mkdir -p "$OUT"

if ! command -v cf-agent >/dev/null 2>&1; then
  echo "compare: installing cfengine3" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cfengine3 >/dev/null
fi
if [ ! -s /var/lib/cfengine3/policy_server.dat ]; then
  cf-agent --bootstrap 127.0.0.1 >/dev/null
fi
# Only the server stays up: no scheduled agent runs or monitoring during the measurement.
pkill -x cf-execd 2>/dev/null || true
pkill -x cf-monitord 2>/dev/null || true
pgrep -x cf-serverd >/dev/null || cf-serverd
sleep 1
pid=$(pgrep -x cf-serverd | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in 1/100 s
hz=$(getconf CLK_TCK)

cf-agent -K >/dev/null 2>&1 || true   # warm-up: policy already current afterwards
t0=$(ticks "$pid")
start=$(date +%s.%N)
for _ in $(seq 1 "$RUNS"); do cf-agent -K >/dev/null 2>&1 || true; done
t1=$(ticks "$pid")
end=$(date +%s.%N)
if [ "$t1" -le "$t0" ]; then
  # Bootstrapped to itself, this host is its own policy hub: update.cf copies policy from the
  # local masterfiles and cf-serverd is never asked. A separate client host (network namespace)
  # is needed for a real figure.
  echo "compare: cf-serverd spent no CPU over $RUNS agent runs: the agent never contacted it; no figure" >&2
  exit 2
fi
cf_ms=$(python3 -c "print(round(($t1 - $t0) * 1000 / $hz / $RUNS, 3))")
echo "compare: cf-serverd: $((t1 - t0)) ticks over $RUNS no-change cf-agent runs ($(python3 -c "print(round($end - $start, 1))") s): $cf_ms ms per run" >&2

bash benches/fakefleet.sh --envoys "$ENVOYS" --interval 1 --duration 20 --mode held \
  --label "vigosrv, $ENVOYS envoys, held" --json "$OUT/fakefleet.json"
vigo_us=$(python3 -c "import json; print(json.load(open('$OUT/fakefleet.json'))['server_cpu_us_per_check_in'])")

python3 - "$cf_ms" "$vigo_us" "$RUNS" <<'EOF'
import sys
cf_ms, vigo_us, runs = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print()
print("| server CPU per no-change agent contact | figure |")
print("|---|---|")
print(f"| cf-serverd (cfengine3 3.21, cf-agent -K, {runs} runs) | {cf_ms * 1000:.0f} µs |")
print(f"| vigosrv (fakefleet, held mTLS, signature verified) | {vigo_us:.0f} µs |")
print(f"| ratio | {cf_ms * 1000 / vigo_us:.1f}× less CPU for vigosrv |" if vigo_us > 0 else "| ratio | n/a |")
EOF
