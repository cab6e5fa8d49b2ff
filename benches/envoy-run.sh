#!/usr/bin/env bash
# The envoy's own cost: CPU and peak RSS of a no-change `envoy run --once` against a bundle of
# 200 resources (the issue's agent target: <= 50 ms CPU, <= 15 MB RSS).
#
#   bash benches/envoy-run.sh                # 200 resources, 20 measured runs
#   RESOURCES=400 RUNS=50 bash benches/envoy-run.sh
#
# A real vigosrv on loopback, a real enrollment, a stack with one module of RESOURCES resources
# (files from inline content and templates, directories, cron entries, symlinks, and exec
# resources guarded by `creates`) converged once into a sandbox root; then RUNS runs that find nothing to change, each
# a whole process: start, mTLS check-in, signature check, converge, report. Each run's user +
# system CPU and maximum RSS come from wait4's resource usage. Work files go to $ENVOY_DIR (removed unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/release.sh

RESOURCES="${RESOURCES:-200}"
RUNS="${RUNS:-20}"

ENVOY_DIR="${ENVOY_DIR:-$(mktemp -d /var/tmp/envoy-run.XXXXXX)}"
mkdir -p "$ENVOY_DIR"
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill -9 "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$ENVOY_DIR"
}
trap cleanup EXIT INT TERM

RUST_LOG=warn "$BIN/vigosrv" run --data-dir "$ENVOY_DIR/server" --listen 127.0.0.1:0 \
  > "$ENVOY_DIR/server.out" 2> "$ENVOY_DIR/server.log" &
server_pid=$!
for _ in $(seq 600); do
  grep -q '^vigosrv listening on ' "$ENVOY_DIR/server.out" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/^vigosrv listening on //p' "$ENVOY_DIR/server.out" | head -1)
[ -n "$addr" ] || { echo "envoy-run.sh: vigosrv did not start" >&2; exit 1; }
cli() { "$BIN/vigocli" --server "$addr" --creds "$ENVOY_DIR/server/admin" "$@"; }

# The stack: resources in the proportions of a typical role (most of them files).
stack="$ENVOY_DIR/stack"
mkdir -p "$stack/modules/bench/files"
printf -- '- match: "*"\n  modules: [bench]\n  vars:\n    greeting: hello\n' > "$stack/assign.yaml"
printf '{{ greeting }} from {{ hostname }}\n' > "$stack/modules/bench/files/greeting.j2"
{
  echo "resources:"
  for i in $(seq 1 "$RESOURCES"); do
    case $((i % 10)) in
      0) if [ $((i % 20)) = 0 ]; then
           echo "  - { type: directory, path: /srv/bench/d$i, mode: \"0755\" }"
         else
           echo "  - { type: cron, name: job-$i, command: /usr/local/bin/job-$i, schedule: \"*/5 * * * *\" }"
         fi ;;
      1) echo "  - { type: symlink, path: /srv/bench/l$i, target: /srv/bench/f$((i + 1)) }" ;;
      2 | 3 | 4 | 5) echo "  - { type: file, path: /srv/bench/f$i, content: \"line $i\\n\", mode: \"0644\" }" ;;
      6 | 7 | 8) echo "  - { type: file, path: /srv/bench/t$i, template: greeting.j2, mode: \"0640\" }" ;;
      9) echo "  - { type: exec, name: e$i, command: \"touch /dev/null\", creates: /srv/bench/f$((i - 5)) }" ;;
    esac
  done
} > "$stack/modules/bench/module.yaml"
cli config publish "$stack" > /dev/null

root="$ENVOY_DIR/root"
mkdir -p "$root"
"$BIN/envoy" enroll --server "$addr" --token "$(cli token create)" --data-dir "$ENVOY_DIR/envoy" \
  --hostname bench-1 > /dev/null
# The first run converges the sandbox; what follows finds nothing to change.
"$BIN/envoy" run --once --data-dir "$ENVOY_DIR/envoy" --root "$root" > "$ENVOY_DIR/first.log" 2>&1
made=$(find "$root/srv/bench" -mindepth 1 | wc -l)

# Each run twice: once straight from Python for its CPU (user + system, from wait4's rusage, in
# microseconds; GNU time prints 10 ms ticks), once under GNU time for its peak RSS (the exec'd
# envoy alone; a child forked from Python would count Python's pages too).
python3 - "$RUNS" "$ENVOY_DIR/runs.tsv" "$ENVOY_DIR/run.log" "$ENVOY_DIR/rss" \
  "$BIN/envoy" run --once --data-dir "$ENVOY_DIR/envoy" --root "$root" <<'PY'
import os, subprocess, sys
runs, out, log, rss, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def run(command):
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        return os.wait4(child.pid, 0)[2]
with open(out, "w") as table:
    for _ in range(runs):
        usage = run(argv)
        run(["/usr/bin/time", "-f", "%M", "-o", rss] + argv)
        with open(rss) as peak:
            table.write(f"{(usage.ru_utime + usage.ru_stime) * 1000:.2f}\t{int(peak.read().split()[-1])}\n")
PY
grep -Eq ': 0 changed, [0-9]+ unchanged, 0 failed, 0 skipped' "$ENVOY_DIR/run.log" || { echo "envoy-run.sh: a no-change run changed something:" >&2; cat "$ENVOY_DIR/run.log" >&2; exit 1; }

# Sorted by CPU: the median and the worst.
sort -n "$ENVOY_DIR/runs.tsv" > "$ENVOY_DIR/sorted.tsv"
awk -F'\t' -v runs="$RUNS" -v resources="$RESOURCES" -v made="$made" '
  { cpu[NR] = $1; if ($2 > max_rss) max_rss = $2 }
  END {
    printf "| resources | paths made | runs | CPU per run p50 / max (ms) | max RSS (MB) |\n"
    printf "|---|---|---|---|---|\n"
    printf "| %d | %d | %d | %.1f / %.1f | %.1f |\n", resources, made, runs, cpu[int((NR + 1) / 2)], cpu[NR], max_rss / 1024
  }' "$ENVOY_DIR/sorted.tsv"
