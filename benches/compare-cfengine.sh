#!/usr/bin/env bash
# Side by side on this machine, in one session: CFEngine's cf-serverd CPU per no-change cf-agent
# run, and vigosrv's CPU per no-change check-in (fakefleet, held connections), and their ratio.
#
# CFEngine half (root; installs Debian's cfengine3 and iproute2 when missing):
# - a network namespace ($CF_NETNS, default vigo-cfclient) joined to this one by a veth pair:
#   10.213.0.1/24 here (the hub), 10.213.0.2/24 in the namespace (the client);
# - this host is bootstrapped as policy hub to 10.213.0.1; its masterfiles get
#   benches/cfengine/def.json (acl 10.213.0.0/24) unless they have a def.json already; the
#   evaluated def.acl must admit 10.213.0.2. cf-serverd is restarted, cf-execd and cf-monitord
#   stay stopped;
# - the client runs in that namespace, in its own PID namespace, with its own work directory
#   ($OUT/cfclient bind-mounted over /var/lib/cfengine3 in a private mount namespace), so it has
#   its own key, policy and state; it is bootstrapped to 10.213.0.1 (key exchange) when needed;
# - one warm-up run, then RUNS no-change runs of `cf-agent -K -f update.cf`: the half of
#   cf-execd's exec_command that contacts the hub (promises.cf moves no bytes to the hub).
#   cf-serverd's utime+stime over those runs, per run, is the figure.
# The namespace is removed on exit; the client's mount lives only in its namespaces.
#
#   bash benches/compare-cfengine.sh            # RUNS=100 agent runs; fakefleet: 2,000 envoys, 1 s cadence
#   RUNS=100 ENVOYS=5000 bash benches/compare-cfengine.sh
#   CF_ONLY=1 RUNS=20 bash benches/compare-cfengine.sh   # the CFEngine figure only
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-100}"
ENVOYS="${ENVOYS:-2000}"
OUT="${OUT:-/var/tmp/vigo-compare}"
CF_ONLY="${CF_ONLY:-0}"
NS="${CF_NETNS:-vigo-cfclient}"
HUB_IF=vigo-cfh                 # veth end in this namespace
CLIENT_IF=vigo-cfc              # veth end in $NS
HUB_IP=10.213.0.1
CLIENT_IP=10.213.0.2
WORKDIR=/var/lib/cfengine3      # Debian's CFEngine work directory, the hub's
CFCLIENT="$OUT/cfclient"        # the client's work directory
# The client is a separate host in all but its process table, which it sees only in its own PID
# namespace; there the update policy would start cf-execd, cf-serverd and cf-monitord on every run
# (and they would die with the namespace): it is told they are disabled, as for a host whose
# daemons are managed elsewhere.
CLIENT_CLASSES=persistent_disable_cf_execd,persistent_disable_cf_serverd,persistent_disable_cf_monitord
mkdir -p "$OUT"

die() { echo "compare: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (installs and bootstraps CFEngine, creates a network namespace)"
case "$RUNS" in ''|*[!0-9]*|0) die "RUNS must be a positive integer, not '$RUNS'" ;; esac

missing=()
command -v cf-agent >/dev/null 2>&1 || missing+=(cfengine3)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "compare: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v unshare >/dev/null 2>&1 || die "unshare (util-linux) is missing"
[ -d "$WORKDIR/masterfiles" ] || die "$WORKDIR/masterfiles is missing: cfengine3 is not installed as Debian installs it"

# --- the client's network namespace -------------------------------------------------------------
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$NS"; }
teardown() {
  if ns_exists; then
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill $pids 2>/dev/null || true
      sleep 1
      kill -KILL $(ip netns pids "$NS" 2>/dev/null || true) 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
  fi
  ip link del "$HUB_IF" 2>/dev/null || true
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

teardown   # leftovers of an interrupted run
if ip -o addr show 2>/dev/null | grep -qF " $HUB_IP/"; then
  die "$HUB_IP is already assigned to an interface other than $HUB_IF; cannot set up the client network"
fi
ip netns add "$NS" 2>/dev/null || die "cannot create network namespace $NS (ip netns add failed)"
{ ip link add "$HUB_IF" type veth peer name "$CLIENT_IF" &&
  ip link set "$CLIENT_IF" netns "$NS" &&
  ip addr add "$HUB_IP/24" dev "$HUB_IF" && ip link set "$HUB_IF" up &&
  ip -n "$NS" addr add "$CLIENT_IP/24" dev "$CLIENT_IF" && ip -n "$NS" link set "$CLIENT_IF" up &&
  ip -n "$NS" link set lo up; } 2>/dev/null || die "cannot create veth pair $HUB_IF/$CLIENT_IF into $NS"

# Runs "$@" as the client host: its network namespace, a fresh PID namespace (the client's
# processes, and only they, die with it) and a private mount namespace where $CFCLIENT is
# $WORKDIR. sh stays the namespace's init, so daemons the agent starts are not its children
# (cf-agent as init waits for them forever). In the background and waited for, so that a signal
# reaches the trap at once.
client() {
  ip netns exec "$NS" unshare --mount --pid --fork --kill-child --mount-proc \
    sh -c 'mount --bind "$0" "$1" || exit 97; shift; "$@"' "$CFCLIENT" "$WORKDIR" "$@" &
  wait $!
}

# --- the hub: this host, policy server at $HUB_IP -----------------------------------------------
self_net=$(readlink /proc/self/ns/net)
hub_serverd() {   # the cf-serverd of this namespace (a client's would live in $NS)
  local p
  for p in $(pgrep -x cf-serverd || true); do
    if [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$self_net" ]; then echo "$p"; return; fi
  done
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in 1/100 s
hz=$(getconf CLK_TCK)
veth_bytes() {
  echo $(( $(cat "/sys/class/net/$HUB_IF/statistics/rx_bytes") + $(cat "/sys/class/net/$HUB_IF/statistics/tx_bytes") ))
}

if [ ! -e "$WORKDIR/masterfiles/def.json" ]; then
  cp benches/cfengine/def.json "$WORKDIR/masterfiles/def.json"
  chmod 0600 "$WORKDIR/masterfiles/def.json"
fi
bootstrap_hub=0
[ "$(cat "$WORKDIR/policy_server.dat" 2>/dev/null)" = "$HUB_IP" ] || bootstrap_hub=1
[ -e "$WORKDIR/state/am_policy_hub" ] || bootstrap_hub=1
cmp -s "$WORKDIR/masterfiles/def.json" "$WORKDIR/inputs/def.json" || bootstrap_hub=1

# Only the server stays up: no scheduled agent runs or monitoring during the measurement. The server
# is restarted so that it serves the policy in inputs now.
pkill -x cf-execd 2>/dev/null || true
pkill -x cf-monitord 2>/dev/null || true
old=$(hub_serverd)
if [ -n "$old" ]; then
  kill "$old" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -d "/proc/$old" ] || break; sleep 0.2; done
  [ -d "/proc/$old" ] && die "cf-serverd ($old) did not stop"
fi
if [ "$bootstrap_hub" = 1 ]; then
  echo "compare: bootstrapping this host as policy hub at $HUB_IP" >&2
  cf-agent --bootstrap "$HUB_IP" > "$OUT/cfhub-bootstrap.log" 2>&1 ||
    die "bootstrapping the hub to $HUB_IP failed (see $OUT/cfhub-bootstrap.log)"
  grep -q "assumes the role of policy server" "$OUT/cfhub-bootstrap.log" ||
    die "bootstrapped to $HUB_IP, this host did not become the policy hub (see $OUT/cfhub-bootstrap.log)"
  # The bootstrap starts the daemons and a policy run in the background: let that run finish.
  for _ in $(seq 1 120); do pgrep -x cf-agent >/dev/null || break; sleep 1; done
  pkill -x cf-execd 2>/dev/null || true
  pkill -x cf-monitord 2>/dev/null || true
fi
[ -n "$(hub_serverd)" ] || cf-serverd
sleep 1
pid=$(hub_serverd)
[ -n "$pid" ] || die "cf-serverd is not running on the hub"

acl=$(cf-promises --show-vars=default:def.acl 2>/dev/null | sed -n 's/^default:def\.acl *//p')
python3 - "$CLIENT_IP" "$acl" <<'EOF' || die "the hub's def.acl ($acl) does not admit $CLIENT_IP: see $WORKDIR/masterfiles/def.json"
import ipaddress, json, re, sys
ip = ipaddress.ip_address(sys.argv[1])
m = re.match(r"\s*\{(.*?)\}", sys.argv[2])
ok = False
for entry in json.loads("[" + m.group(1) + "]") if m else []:
    try:
        ok = ok or ip in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass  # a host name or regular expression: not counted
sys.exit(0 if ok else 1)
EOF
timeout 5 ip netns exec "$NS" bash -c "exec 3<>/dev/tcp/$HUB_IP/5308" 2>/dev/null ||
  die "the client namespace cannot reach cf-serverd at $HUB_IP:5308"

# --- the client: its own work directory, bootstrapped to the hub --------------------------------
mkdir -p "$CFCLIENT"
if [ -L "$WORKDIR/bin" ] && [ ! -e "$CFCLIENT/bin" ]; then ln -s "$(readlink "$WORKDIR/bin")" "$CFCLIENT/bin"; fi
if [ ! -s "$CFCLIENT/ppkeys/localhost.priv" ]; then
  client cf-key > "$OUT/cfclient-key.log" 2>&1 || die "cf-key failed for the client (see $OUT/cfclient-key.log)"
fi
hub_key=$(cf-key -p "$WORKDIR/ppkeys/localhost.pub")
client_key=$(cf-key -p "$CFCLIENT/ppkeys/localhost.pub")
bootstrap_client=0
[ "$(cat "$CFCLIENT/policy_server.dat" 2>/dev/null)" = "$HUB_IP" ] || bootstrap_client=1
[ -e "$CFCLIENT/ppkeys/root-$hub_key.pub" ] || bootstrap_client=1     # the client trusts the hub
[ -e "$WORKDIR/ppkeys/root-$client_key.pub" ] || bootstrap_client=1   # the hub trusts the client
if [ "$bootstrap_client" = 1 ]; then
  echo "compare: bootstrapping the client ($CLIENT_IP, $CFCLIENT) to $HUB_IP" >&2
  client cf-agent --bootstrap "$HUB_IP" --skip-bootstrap-policy-run > "$OUT/cfclient-bootstrap.log" 2>&1 ||
    die "bootstrapping the client to $HUB_IP failed (see $OUT/cfclient-bootstrap.log)"
  [ -e "$CFCLIENT/ppkeys/root-$hub_key.pub" ] && [ -e "$WORKDIR/ppkeys/root-$client_key.pub" ] ||
    die "client bootstrap did not exchange keys with the hub (see $OUT/cfclient-bootstrap.log)"
fi

# Warm-up, verbose: the policy is current afterwards, and the log shows the connection.
client cf-agent -K -v -f update.cf "-D$CLIENT_CLASSES" > "$OUT/cfclient-warmup.log" 2>&1 ||
  die "the client's warm-up cf-agent run failed (see $OUT/cfclient-warmup.log)"
grep -q "Connected to host $HUB_IP" "$OUT/cfclient-warmup.log" ||
  die "the client's warm-up run did not connect to cf-serverd at $HUB_IP (see $OUT/cfclient-warmup.log)"

t0=$(ticks "$pid")
b0=$(veth_bytes)
start=$(date +%s.%N)
client sh -c 'n=$1; shift; i=0; failed=0
  while [ "$i" -lt "$n" ]; do "$@" >/dev/null 2>&1 || failed=$((failed + 1)); i=$((i + 1)); done
  echo "$failed"' sh "$RUNS" cf-agent -K -f update.cf "-D$CLIENT_CLASSES" > "$OUT/cfclient-runs.txt" ||
  die "the client's runs could not be started"
end=$(date +%s.%N)
t1=$(ticks "$pid")
b1=$(veth_bytes)
failed=$(cat "$OUT/cfclient-runs.txt")
[ "$failed" = 0 ] || die "$failed of $RUNS client cf-agent runs failed"
[ -d "/proc/$pid" ] || die "cf-serverd ($pid) exited during the measurement"
teardown

if [ "$t1" -le "$t0" ]; then
  echo "compare: cf-serverd spent no CPU over $RUNS agent runs from $CLIENT_IP: the agent never contacted it; no figure" >&2
  exit 2
fi
cf-key -s 2>/dev/null | awk -v ip="$CLIENT_IP" -v k="$client_key" '$1 == "Incoming" && $2 == ip && $NF == k' | grep -q . ||
  die "the hub's lastseen has no incoming connection from $CLIENT_IP ($client_key)"
cf_ms=$(python3 -c "print(round(($t1 - $t0) * 1000 / $hz / $RUNS, 3))")
echo "compare: cf-serverd: $((t1 - t0)) ticks over $RUNS no-change cf-agent runs from $CLIENT_IP" \
  "($(python3 -c "print(round($end - $start, 1))") s, $(( (b1 - b0) / RUNS )) bytes over the veth per run): $cf_ms ms per run" >&2
if [ "$CF_ONLY" = 1 ]; then
  echo "cf-serverd CPU per no-change cf-agent run: $cf_ms ms ($RUNS runs)"
  exit 0
fi

bash benches/fakefleet.sh --envoys "$ENVOYS" --interval 1 --duration 20 --mode held \
  --label "vigosrv, $ENVOYS envoys, held" --json "$OUT/fakefleet.json"
vigo_us=$(python3 -c "import json; print(json.load(open('$OUT/fakefleet.json'))['server_cpu_us_per_check_in'])")

python3 - "$cf_ms" "$vigo_us" "$RUNS" <<'EOF'
import sys
cf_ms, vigo_us, runs = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print()
print("| server CPU per no-change agent contact | figure |")
print("|---|---|")
print(f"| cf-serverd (cfengine3 3.21, `cf-agent -K -f update.cf` from a namespace client, {runs} runs) | {cf_ms * 1000:.0f} µs |")
print(f"| vigosrv (fakefleet, held mTLS, signature verified) | {vigo_us:.0f} µs |")
print(f"| ratio | {cf_ms * 1000 / vigo_us:.1f}× less CPU for vigosrv |" if vigo_us > 0 else "| ratio | n/a |")
EOF
