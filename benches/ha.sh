#!/usr/bin/env bash
# Three peers on loopback, vigo then etcd in the same run, measured the same way by
# `writebench`: control-write latency (p50, p99), sustained writes per second, and failover
# (leader killed with SIGKILL → next acknowledged write). Prints both reports and a table.
#
#   bash benches/ha.sh                       # defaults: 500 sequential writes, 32 clients, 10 s
#   bash benches/ha.sh --clients 64 --duration 20
#
# Every argument goes to writebench for both systems. etcd is Debian's `etcd-server`, installed
# when missing. Work files go to $HA_DIR (a temporary folder, removed afterwards unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/release.sh
if ! command -v etcd >/dev/null; then
  echo "ha.sh: installing etcd-server (Debian) for the comparison" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
fi

HA_DIR="${HA_DIR:-$(mktemp -d /var/tmp/ha.XXXXXX)}"
mkdir -p "$HA_DIR"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$HA_DIR"
}
trap cleanup EXIT INT TERM

# CPU seconds (user + system) the processes `$@` have used so far.
cpu_s() {
  local ticks=0 pid
  for pid in "$@"; do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "scale=3; $ticks / $(getconf CLK_TCK)" | bc
}

# Adds the peers' CPU per acknowledged write (over the whole writebench run) to report $1.
add_cpu() { # report, cpu seconds
  local writes
  writes=$(jq '[.write_latency.n, (.publish_latency.n // 0), .throughput.n] | add' "$1")
  jq --argjson cpu "$2" --argjson writes "$writes" \
    '. + {peers_cpu_s: $cpu, cpu_us_per_write: (($cpu * 1e6 / $writes) | round)}' "$1" > "$1.tmp"
  mv "$1.tmp" "$1"
}

# --- vigo: a founding peer and two that join it --------------------------------------------
start_vigo() { # name, extra args...
  local name=$1
  shift
  RUST_LOG=warn "$BIN/vigosrv" run --data-dir "$HA_DIR/$name" --listen 127.0.0.1:0 "$@" \
    > "$HA_DIR/$name.out" 2> "$HA_DIR/$name.log" &
  echo $! > "$HA_DIR/$name.pid"
  for _ in $(seq 1 300); do
    grep -q '^vigosrv listening on' "$HA_DIR/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  local addr
  addr=$(sed -n 's/^vigosrv listening on //p' "$HA_DIR/$name.out")
  [ -n "$addr" ] || { echo "ha.sh: vigosrv $name did not start:" >&2; cat "$HA_DIR/$name.log" >&2; exit 1; }
  echo "$addr"
}
a=$(start_vigo a)
cli() { "$BIN/vigocli" --server "$a" --creds "$HA_DIR/a/admin" "$@"; }
token=$(cli token create --join --uses 2)
b=$(start_vigo b --join "$a" --token "$token")
c=$(start_vigo c --join "$a" --token "$token")
for name in a b c; do pids+=("$(cat "$HA_DIR/$name.pid")"); done
pid_of() { grep -l "^vigosrv listening on $1\$" "$HA_DIR"/*.out | sed 's/\.out$/.pid/' | xargs cat; }
for _ in $(seq 1 300); do
  reachable=$(cli server status -o json | jq '[.members[] | select(.voter and .reachable)] | length')
  [ "$reachable" = 3 ] && break
  sleep 0.1
done
leader_addr=$(cli server status -o json | jq -r '.leader as $l | .members[] | select(.node_id == $l) | .addr')
others=$(printf '%s\n' "$a" "$b" "$c" | grep -v "^$leader_addr$" | paste -sd,)
echo "ha.sh: vigo peers $a $b $c, leader $leader_addr" >&2
vigo_pids=("${pids[@]}")
before=$(cpu_s "${vigo_pids[@]}")
"$BIN/writebench" --target vigo --endpoints "$leader_addr,$others" --creds "$HA_DIR/a/admin" "$@" > "$HA_DIR/vigo.json"
add_cpu "$HA_DIR/vigo.json" "$(echo "$(cpu_s "${vigo_pids[@]}") - $before" | bc)"
"$BIN/writebench" --target vigo --endpoints "$leader_addr,$others" --creds "$HA_DIR/a/admin" \
  --kill-pid "$(pid_of "$leader_addr")" --writes 0 --duration 0 > "$HA_DIR/vigo-failover.json"
for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done

# --- etcd: three members, default durability (fsync on every commit) -----------------------
declare -A etcd_pid
cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:2380$i"; done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$HA_DIR/e$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token vigo-bench \
    --log-level error > "$HA_DIR/e$i.log" 2>&1 &
  pids+=("$!")
  etcd_pid["127.0.0.1:2379$i"]=$!
done
endpoints="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
for _ in $(seq 1 300); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
etcd_leader=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json \
  | jq -r '.[] | select(.Status.header.member_id == .Status.leader) | .Endpoint' | sed 's|^http://||')
etcd_others=$(printf '%s\n' ${endpoints//,/ } | grep -v "^$etcd_leader$" | paste -sd,)
echo "ha.sh: etcd $(etcd --version | head -1), leader $etcd_leader" >&2
before=$(cpu_s "${etcd_pid[@]}")
"$BIN/writebench" --target etcd --endpoints "$etcd_leader,$etcd_others" "$@" > "$HA_DIR/etcd.json"
add_cpu "$HA_DIR/etcd.json" "$(echo "$(cpu_s "${etcd_pid[@]}") - $before" | bc)"
"$BIN/writebench" --target etcd --endpoints "$etcd_leader,$etcd_others" \
  --kill-pid "${etcd_pid[$etcd_leader]}" --writes 0 --duration 0 > "$HA_DIR/etcd-failover.json"

for system in vigo etcd; do
  jq --slurpfile f "$HA_DIR/$system-failover.json" '. + {failover: $f[0].failover}' "$HA_DIR/$system.json" \
    > "$HA_DIR/$system.tmp"
  mv "$HA_DIR/$system.tmp" "$HA_DIR/$system.json"
  echo "$system: $(cat "$HA_DIR/$system.json")"
done
jq -rs '
  def row(name; f): "| \(name) | \(.[0] | f) | \(.[1] | f) |";
  "| three peers on loopback | vigo | etcd |",
  "|---|---|---|",
  row("write latency p50 / p99 (ms), one client"; "\(.write_latency.p50_ms) / \(.write_latency.p99_ms)"),
  row("publish latency p50 / p99 (ms), one client"; if .publish_latency then "\(.publish_latency.p50_ms) / \(.publish_latency.p99_ms)" else "–" end),
  row("writes/s, \(.[0].throughput.clients) clients"; "\(.throughput.writes_per_s)"),
  row("latency under load p50 / p99 (ms)"; "\(.throughput.p50_ms) / \(.throughput.p99_ms)"),
  row("peers CPU per write (µs), all three"; "\(.cpu_us_per_write)"),
  row("client CPU per write under load (µs)"; "\(.throughput.client_cpu_us_per_write)"),
  row("failover: leader killed → next write acknowledged (ms)"; "\(.failover.ms)")
' "$HA_DIR/vigo.json" "$HA_DIR/etcd.json"
