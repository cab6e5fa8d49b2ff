//! One run: start the cluster, drive the clients while the nemesis injects faults, heal, check
//! liveness, read every peer's history, and record it all in a [`History`].
//!
//! Everything random comes from the seed: which operation each client issues next and against
//! which peer, and which fault the nemesis injects, when, on which peer and for how long. The
//! processes' own timing is not under the seed's control, so a run repeats its schedule, not its
//! exact interleaving.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use vigo_log::crash;

use crate::client::Client;
use crate::cluster::Cluster;
use crate::history::{Fault, History, LeaderView, Op, OpKind, Outcome, Write};

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum FaultKind {
    /// `kill -9` a peer, restart it later on the same address and data.
    Kill,
    /// `kill -9` the leader, restart it later.
    KillLeader,
    /// `SIGSTOP` a peer, `SIGCONT` it later.
    Pause,
    /// Cut one peer off from the others (a minority of one), heal later.
    Partition,
    /// Cut the leader off from the others, heal later.
    PartitionLeader,
    /// Split the peers into a majority and a minority at random, heal later.
    MajorityMinority,
    /// Split the peers into two sides that only one peer in the middle still sees both of
    /// (needs five peers), heal later.
    Bridge,
    /// Ask a peer to build a snapshot and have it die (`SIGKILL`) at a crash point in the
    /// build, before or after the snapshot is recorded; restart it later.
    CrashInSnapshot,
    /// Take a follower down, compact the leader's log so that it must catch up by snapshot,
    /// restart it and have it die at a crash point in the install, before or after the
    /// snapshot is written; restart it later.
    CrashInInstall,
}

impl FaultKind {
    /// Every kind of fault.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::PartitionLeader,
        FaultKind::MajorityMinority,
        FaultKind::Bridge,
        FaultKind::CrashInSnapshot,
        FaultKind::CrashInInstall,
    ];
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `vigosrv` binary.
    pub vigosrv: PathBuf,
    /// The `vigocli` binary.
    pub vigocli: PathBuf,
    /// Where the peers' data dirs go.
    pub work_dir: PathBuf,
    /// Peers.
    pub peers: usize,
    /// The seed.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// How long clients run and faults happen.
    pub duration: Duration,
    /// The faults to choose from; none: a run without faults.
    pub faults: Vec<FaultKind>,
    /// Time between the end of one fault and the start of the next, on average.
    pub fault_gap: Duration,
    /// How long a fault lasts, at most (at least a quarter of it).
    pub fault_length: Duration,
    /// How long after the heal the cluster has to acknowledge a write.
    pub liveness: Duration,
}

/// How long a peer armed at a crash point has to get there.
const CRASH_WAIT: Duration = Duration::from_secs(10);

/// Microseconds since `start`.
fn us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Runs the whole schedule and returns what happened.
pub async fn run(config: &RunConfig) -> anyhow::Result<History> {
    let mut proxies = Vec::new();
    for i in 0..config.peers {
        proxies.push(crate::proxy::Proxy::start(crate::proxy::peer_ip(i)).await?);
    }
    let cluster =
        tokio::task::block_in_place(|| Cluster::start(&config.vigosrv, &config.vigocli, &config.work_dir, proxies))?;
    let addrs = cluster.addrs();
    let tls = crate::client::tls(&cluster.creds())?;
    let cluster = Arc::new(Mutex::new(cluster));
    let start = Instant::now();
    let ops = Arc::new(Mutex::new(Vec::new()));
    let views = Arc::new(Mutex::new(Vec::new()));
    let faults = Arc::new(Mutex::new(Vec::new()));
    let next_id = Arc::new(AtomicU64::new(0));
    let end = start + config.duration;

    let nemesis = {
        let (cluster, faults, config, addrs) = (cluster.clone(), faults.clone(), config.clone(), addrs.clone());
        tokio::task::spawn_blocking(move || nemesis(&cluster, &faults, &config, &addrs, start, end))
    };
    let mut clients = Vec::new();
    for c in 0..config.clients {
        let worker = Worker {
            client: c as u32,
            seed: config.seed,
            addrs: addrs.clone(),
            tls: tls.clone(),
            ops: ops.clone(),
            views: views.clone(),
            next_id: next_id.clone(),
            start,
        };
        clients.push(tokio::spawn(worker.run(end)));
    }
    for client in clients {
        client.await?;
    }
    nemesis.await?.context("the nemesis failed")?;

    // Heal, then the cluster must take a write within the liveness window.
    {
        let mut cluster = cluster.lock().expect("cluster lock");
        tokio::task::block_in_place(|| cluster.heal())?;
    }
    let healed_us = us(start);
    faults.lock().expect("faults lock").push(Fault {
        at_us: healed_us,
        what: "heal".into(),
        peers: (0..addrs.len()).collect(),
        point: None,
    });
    let live = liveness(&addrs, &tls, config, &ops, &next_id, start).await;
    let (finals, projections) = final_reads(&addrs, &tls, config.liveness).await;
    let mut ops = std::mem::take(&mut *ops.lock().expect("ops lock"));
    ops.sort_by_key(|op: &Op| op.complete_us);
    let faults = std::mem::take(&mut *faults.lock().expect("faults lock"));
    Ok(History {
        seed: config.seed,
        peers: config.peers,
        ops,
        faults,
        healed_us: Some(healed_us),
        live_after_heal: Some(live),
        finals,
        projections,
        views: std::mem::take(&mut *views.lock().expect("views lock")),
    })
}

/// What a client does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Publish,
    Token,
    Enroll,
    Revoke,
    Read,
    Envoys,
    Status,
}

/// One client: one operation at a time, each against a peer chosen by the seed.
struct Worker {
    client: u32,
    seed: u64,
    addrs: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    ops: Arc<Mutex<Vec<Op>>>,
    views: Arc<Mutex<Vec<LeaderView>>>,
    next_id: Arc<AtomicU64>,
    start: Instant,
}

impl Worker {
    async fn run(self, end: Instant) {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (u64::from(self.client) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut connections: Vec<Option<Client>> = self.addrs.iter().map(|_| None).collect();
        // Tokens this client created and has not used, envoys it enrolled and has not revoked.
        let (mut tokens, mut envoys): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        let mut n = 0u64;
        while Instant::now() < end {
            let peer = rng.random_range(0..self.addrs.len());
            let choice = rng.random_range(0..11);
            let id = self.next_id.fetch_add(1, Relaxed);
            let invoke_us = us(self.start);
            let connection = match &mut connections[peer] {
                Some(c) => Ok(c),
                slot => match Client::connect(&self.addrs[peer], self.tls.clone()).await {
                    Ok(c) => Ok(slot.insert(c)),
                    Err(e) => Err(e),
                },
            };
            let tag = format!("seed {} client {} op {n}", self.seed, self.client);
            let hostname = format!("s{}-c{}-n{n}", self.seed, self.client);
            let envoy_seed: [u8; 32] = rng.random();
            // What to do: a write of some kind or a read. An enrollment needs a token this client
            // holds, a revocation an envoy it enrolled; without one it makes one first.
            let plan = match choice {
                0..=2 => Plan::Publish,
                3..=4 => Plan::Token,
                5 if !tokens.is_empty() => Plan::Enroll,
                5 => Plan::Token,
                6 if !envoys.is_empty() => Plan::Revoke,
                6 => Plan::Publish,
                7..=8 => Plan::Read,
                9 => Plan::Envoys,
                _ => Plan::Status,
            };
            let (kind, outcome) = match connection {
                // Never sent: it cannot have taken effect.
                Err(e) => {
                    let write = match plan {
                        Plan::Publish => Write::Publish { key: crate::client::publish_key(&tag) },
                        Plan::Token => Write::Token { key: String::new() },
                        Plan::Enroll => Write::Enroll { key: hostname.clone() },
                        Plan::Revoke => Write::Revoke { key: format!("revoked:{}", envoys[0]) },
                        Plan::Read | Plan::Envoys | Plan::Status => Write::Token { key: String::new() },
                    };
                    let kind = if matches!(plan, Plan::Read | Plan::Envoys | Plan::Status) {
                        OpKind::Read { peer }
                    } else {
                        OpKind::Write(write)
                    };
                    (kind, Outcome::Failed { reason: format!("not sent: {e:#}") })
                }
                Ok(client) => match plan {
                    Plan::Publish => {
                        let (write, outcome) = client.publish(&tag).await;
                        (OpKind::Write(write), outcome)
                    }
                    Plan::Token => {
                        let (write, outcome, token) = client.create_token().await;
                        tokens.extend(token);
                        (OpKind::Write(write), outcome)
                    }
                    Plan::Enroll => {
                        let token = tokens.remove(0);
                        let (write, outcome, envoy_id) = client.enroll(&token, &hostname, envoy_seed).await;
                        envoys.extend(envoy_id);
                        (OpKind::Write(write), outcome)
                    }
                    Plan::Revoke => {
                        let envoy_id = envoys.remove(0);
                        let (write, outcome) = client.revoke(&envoy_id).await;
                        (OpKind::Write(write), outcome)
                    }
                    Plan::Read => (OpKind::Read { peer }, client.read(peer, true).await),
                    Plan::Envoys => (OpKind::Read { peer }, client.read_envoys(peer).await),
                    Plan::Status => {
                        // Not an operation on the history: a view of who leads, for the
                        // election-safety checker. The next operation goes on at once.
                        if let Some((node_id, role, term, leader)) = client.status().await {
                            let view = LeaderView { at_us: us(self.start), peer, node_id, role, term, leader };
                            self.views.lock().expect("views lock").push(view);
                        }
                        continue;
                    }
                },
            };
            if !matches!(outcome, Outcome::Ok { .. }) {
                // Start afresh with this peer next time: the connection may be what failed.
                connections[peer] = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let complete_us = us(self.start);
            self.ops.lock().expect("ops lock").push(Op {
                id,
                client: self.client,
                kind,
                invoke_us,
                complete_us,
                outcome,
            });
            n += 1;
        }
    }
}

/// Injects faults until `end`, one at a time, each healed before the next.
fn nemesis(
    cluster: &Mutex<Cluster>,
    faults: &Mutex<Vec<Fault>>,
    config: &RunConfig,
    addrs: &[String],
    start: Instant,
    end: Instant,
) -> anyhow::Result<()> {
    if config.faults.is_empty() {
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let record_at = |what: &str, peer: usize, point: Option<String>| {
        faults.lock().expect("faults lock").push(Fault {
            at_us: us(start),
            what: what.into(),
            peers: vec![peer],
            point,
        });
    };
    let record = |what: &str, peer: usize| record_at(what, peer, None);
    // Dies at the armed point, or is killed if it never gets there in time (recorded as a
    // plain kill, so a crash counted at a point is one that happened there).
    let crash = |peer: usize, what: &str| {
        let died_at = cluster.lock().expect("cluster lock").await_crash(peer, CRASH_WAIT);
        if died_at.is_none() {
            cluster.lock().expect("cluster lock").kill(peer);
        }
        match died_at {
            Some(point) => record_at(what, peer, Some(point)),
            None => record("kill", peer),
        }
    };
    loop {
        let gap = config.fault_gap.mul_f64(rng.random_range(0.5..1.5));
        let length = config.fault_length.mul_f64(rng.random_range(0.25..1.0));
        if Instant::now() + gap + length >= end {
            return Ok(());
        }
        std::thread::sleep(gap);
        let kind = config.faults[rng.random_range(0..config.faults.len())];
        let mut peer = rng.random_range(0..addrs.len());
        if matches!(kind, FaultKind::KillLeader | FaultKind::PartitionLeader)
            && let Some(leader) = leader(&config.vigocli, addrs, &cluster.lock().expect("cluster lock").creds())
        {
            peer = leader;
        }
        match kind {
            FaultKind::Kill | FaultKind::KillLeader => {
                cluster.lock().expect("cluster lock").kill(peer);
                record("kill", peer);
                std::thread::sleep(length);
                cluster.lock().expect("cluster lock").restart(peer)?;
                record("restart", peer);
            }
            FaultKind::CrashInSnapshot => {
                let point =
                    [crash::SNAPSHOT_BUILD_BEFORE_RECORD, crash::SNAPSHOT_BUILD_AFTER_RECORD][rng.random_range(0..2)];
                cluster.lock().expect("cluster lock").arm(peer, point)?;
                cluster.lock().expect("cluster lock").compact(peer, false)?;
                crash(peer, "crash-in-snapshot");
                std::thread::sleep(length);
                cluster.lock().expect("cluster lock").restart(peer)?;
                record("restart", peer);
            }
            FaultKind::CrashInInstall => {
                let creds = cluster.lock().expect("cluster lock").creds();
                let Some(leader) = leader(&config.vigocli, addrs, &creds) else { continue };
                let follower = (leader + 1 + rng.random_range(0..addrs.len() - 1)) % addrs.len();
                cluster.lock().expect("cluster lock").kill(follower);
                record("kill", follower);
                // Writes go on without it meanwhile; the compaction then purges them from the
                // leader's log, so it can only catch up by snapshot.
                std::thread::sleep(length / 2);
                cluster.lock().expect("cluster lock").compact(leader, true)?;
                let point =
                    [crash::SNAPSHOT_INSTALL_BEFORE_WRITE, crash::SNAPSHOT_INSTALL_AFTER_WRITE][rng.random_range(0..2)];
                cluster.lock().expect("cluster lock").arm(follower, point)?;
                cluster.lock().expect("cluster lock").restart(follower)?;
                record("restart", follower);
                crash(follower, "crash-in-install");
                std::thread::sleep(length / 2);
                cluster.lock().expect("cluster lock").restart(follower)?;
                record("restart", follower);
            }
            FaultKind::MajorityMinority | FaultKind::Bridge => {
                let n = addrs.len();
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                let (what, a, b) = if kind == FaultKind::Bridge && n >= 5 {
                    // One in the middle; the rest split in two, neither side a majority alone.
                    let half = (n - 1) / 2;
                    ("bridge", order[1..=half].to_vec(), order[half + 1..].to_vec())
                } else {
                    let minority = (n - 1) / 2;
                    ("partition", order[..minority.max(1)].to_vec(), order[minority.max(1)..].to_vec())
                };
                cluster.lock().expect("cluster lock").cut(&a, &b);
                faults.lock().expect("faults lock").push(Fault {
                    at_us: us(start),
                    what: what.into(),
                    peers: a.iter().chain(&b).copied().collect(),
                    point: None,
                });
                std::thread::sleep(length);
                cluster.lock().expect("cluster lock").heal_network();
                faults.lock().expect("faults lock").push(Fault {
                    at_us: us(start),
                    what: "heal-partition".into(),
                    peers: (0..n).collect(),
                    point: None,
                });
            }
            FaultKind::Partition | FaultKind::PartitionLeader => {
                cluster.lock().expect("cluster lock").partition(&[peer]);
                record("partition", peer);
                std::thread::sleep(length);
                cluster.lock().expect("cluster lock").heal_network();
                record("heal-partition", peer);
            }
            FaultKind::Pause => {
                cluster.lock().expect("cluster lock").pause(peer);
                record("pause", peer);
                std::thread::sleep(length);
                cluster.lock().expect("cluster lock").resume(peer);
                record("resume", peer);
            }
        }
    }
}

/// The peer number of the leader, as the first peer that answers says.
fn leader(vigocli: &std::path::Path, addrs: &[String], creds: &std::path::Path) -> Option<usize> {
    let out = std::process::Command::new(vigocli)
        .args(["--server", &addrs.join(","), "--creds"])
        .arg(creds)
        .args(["server", "status", "-o", "json"])
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let leader = status["leader"].as_u64()?;
    let members = status["members"].as_array()?;
    let addr = members.iter().find(|m| m["node_id"] == leader)?["addr"].as_str()?;
    addrs.iter().position(|a| a == addr)
}

/// After the heal: whether some peer acknowledges a publish within the liveness window. Every
/// attempt is recorded as an operation of its own client (number `config.clients`).
async fn liveness(
    addrs: &[String],
    tls: &Arc<rustls::ClientConfig>,
    config: &RunConfig,
    ops: &Mutex<Vec<Op>>,
    next_id: &AtomicU64,
    start: Instant,
) -> bool {
    let deadline = Instant::now() + config.liveness;
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        let addr = &addrs[attempt % addrs.len()];
        let tag = format!("seed {} liveness {attempt}", config.seed);
        let invoke_us = us(start);
        let (write, outcome) = match Client::connect(addr, tls.clone()).await {
            Ok(mut client) => client.publish(&tag).await,
            Err(e) => (
                Write::Publish { key: crate::client::publish_key(&tag) },
                Outcome::Failed { reason: format!("not sent: {e:#}") },
            ),
        };
        let acknowledged = matches!(outcome, Outcome::Ok { .. });
        let op = Op {
            id: next_id.fetch_add(1, Relaxed),
            client: config.clients as u32,
            kind: OpKind::Write(write),
            invoke_us,
            complete_us: us(start),
            outcome,
        };
        ops.lock().expect("ops lock").push(op);
        if acknowledged {
            return true;
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Final reads, as each peer's history and projection.
type Finals = (Vec<Option<Vec<crate::history::Event>>>, Vec<Option<crate::history::Projection>>);

/// Each peer's whole history after the heal, read linearizably (so it holds every committed
/// event), and then its projection; `None` for a peer that never answered within `limit`.
async fn final_reads(addrs: &[String], tls: &Arc<rustls::ClientConfig>, limit: Duration) -> Finals {
    let (mut finals, mut projections) = (Vec::new(), Vec::new());
    for addr in addrs {
        let deadline = Instant::now() + limit;
        let mut read = None;
        while read.is_none() && Instant::now() < deadline {
            if let Ok(mut client) = Client::connect(addr, tls.clone()).await
                && let Some(events) = client.read_events().await
                && let Some(projection) = client.projection().await
            {
                read = Some((events, projection));
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let (events, projection) = read.unzip();
        finals.push(events);
        projections.push(projection);
    }
    (finals, projections)
}
