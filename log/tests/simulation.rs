//! Deterministic simulation of the log layer: three `LogNode`s on RocksDB in one thread, with
//! tokio's clock paused (it jumps to the next timer whenever everything waits) and a simulated
//! network between them that loses, delays (and so reorders) messages, partitions nodes, and
//! crashes and restarts them — every decision drawn from the seed, as are openraft's election
//! timeouts (`vigo_log::runtime::seed_thread_rng`). A seed replays the same run: the test checks
//! that it does, and that whatever the faults, no acknowledged proposal is lost and every node
//! ends with the same verified history.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rand08::rngs::StdRng;
use rand08::{Rng, SeedableRng};
use vigo_log::{LogError, LogNode, PeerSetup, Peers, TypeConfig};

const NODES: u64 = 3;

/// Why a simulated message did not arrive.
#[derive(Debug, thiserror::Error)]
#[error("simulated network: {0}")]
struct Lost(&'static str);

/// The simulated network: which nodes are up, which links are cut, and the seeded generator
/// that decides the fate of every message. It records every decision, to compare runs.
struct Switchboard {
    nodes: Mutex<HashMap<u64, Arc<LogNode>>>,
    cut: Mutex<HashSet<(u64, u64)>>,
    rng: Mutex<StdRng>,
    trace: Mutex<Vec<String>>,
    loss: f64,
    max_delay_ms: u64,
}

impl Switchboard {
    fn node(&self, id: u64) -> Option<Arc<LogNode>> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    fn note(&self, what: String) {
        self.trace.lock().unwrap().push(what);
    }

    /// Whether a message from `from` to `to` arrives, and after how long.
    fn fate(&self, from: u64, to: u64, what: &str) -> Option<Duration> {
        let cut = self.cut.lock().unwrap().contains(&(from, to));
        let (lost, delay) = {
            let mut rng = self.rng.lock().unwrap();
            (rng.gen_bool(self.loss), rng.gen_range(0..=self.max_delay_ms))
        };
        let arrives = !cut && !lost && self.nodes.lock().unwrap().contains_key(&to);
        self.note(format!("{from}->{to} {what} {}", if arrives { delay.to_string() } else { "lost".into() }));
        arrives.then(|| Duration::from_millis(delay))
    }

    /// Carries one RPC: the request, then its answer, each subject to its own fate.
    async fn carry<Resp, E, F, Fut>(
        &self,
        from: u64,
        to: u64,
        what: &str,
        call: F,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error,
        F: FnOnce(Arc<LogNode>) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftError<u64, E>>>,
    {
        let unreachable = |why| RPCError::Unreachable(Unreachable::new(&Lost(why)));
        let delay = self.fate(from, to, what).ok_or_else(|| unreachable("request lost"))?;
        tokio::time::sleep(delay).await;
        let node = self.node(to).ok_or_else(|| unreachable("node down"))?;
        let answer = call(node).await;
        let delay =
            self.fate(to, from, "answer").ok_or_else(|| RPCError::Network(NetworkError::new(&Lost("answer lost"))))?;
        tokio::time::sleep(delay).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

struct SimFactory {
    from: u64,
    board: Arc<Switchboard>,
}

struct SimConnection {
    from: u64,
    to: u64,
    board: Arc<Switchboard>,
}

impl RaftNetworkFactory<TypeConfig> for SimFactory {
    type Network = SimConnection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimConnection {
        SimConnection { from: self.from, to: target, board: self.board.clone() }
    }
}

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.board
            .carry(self.from, self.to, "append", |node| async move { node.raft().append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.board
            .carry(self.from, self.to, "snapshot", |node| async move { node.raft().install_snapshot(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.board.carry(self.from, self.to, "vote", |node| async move { node.raft().vote(rpc).await }).await
    }
}

fn addr(id: u64) -> String {
    format!("sim-{id}:1530")
}

async fn open(dir: &Path, id: u64, board: &Arc<Switchboard>) -> Arc<LogNode> {
    let setup = PeerSetup { node_id: id, addr: addr(id), tls: None, bootstrap: id == 1, source: None };
    let network = SimFactory { from: id, board: board.clone() };
    let node = LogNode::open_with_network(&dir.join(format!("n{id}")), setup, network, Peers::default()).await.unwrap();
    Arc::new(node)
}

/// Takes node `id` down: out of the network first, then its Raft stopped and its database closed.
async fn crash(board: &Switchboard, id: u64) {
    let Some(node) = board.nodes.lock().unwrap().remove(&id) else { return };
    node.shutdown().await.unwrap();
    // Messages in flight may still hold it for a moment; the database closes with the last one.
    let mut node = node;
    loop {
        match Arc::try_unwrap(node) {
            Ok(owned) => {
                drop(owned);
                return;
            }
            Err(shared) => {
                node = shared;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// What a run ended with: the last event's index and hash on every node, every acknowledged
/// proposal's event index, and the network's trace.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    heads: Vec<(u64, [u8; 32])>,
    acknowledged: BTreeMap<u8, u64>,
    trace_len: usize,
    trace_hash: u64,
    crashes: usize,
    cuts: usize,
    lost: usize,
}

async fn simulate(dir: &Path, seed: u64) -> Outcome {
    vigo_log::runtime::seed_thread_rng(seed);
    let board = Arc::new(Switchboard {
        nodes: Mutex::default(),
        cut: Mutex::default(),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        trace: Mutex::default(),
        loss: 0.05,
        max_delay_ms: 20,
    });
    let first = open(dir, 1, &board).await;
    board.nodes.lock().unwrap().insert(1, first.clone());
    for id in 2..=NODES {
        let node = open(dir, id, &board).await;
        board.nodes.lock().unwrap().insert(id, node);
        first.add_voter(id, &addr(id)).await.unwrap();
    }
    drop(first);

    let mut schedule = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(7));
    let mut acknowledged = BTreeMap::new();
    let mut down: Option<(u64, u32)> = None;
    for step in 0u8..60 {
        // A fault now and then: crash a node, or cut one off; each lasts a few steps.
        match down {
            Some((id, 0)) => {
                if board.node(id).is_none() {
                    let node = open(dir, id, &board).await;
                    board.nodes.lock().unwrap().insert(id, node);
                }
                board.cut.lock().unwrap().clear();
                board.note(format!("heal {id}"));
                down = None;
            }
            Some((id, left)) => down = Some((id, left - 1)),
            None if schedule.gen_bool(0.15) => {
                let id = schedule.gen_range(1..=NODES);
                if schedule.gen_bool(0.5) {
                    crash(&board, id).await;
                    board.note(format!("crash {id}"));
                } else {
                    let mut cut = board.cut.lock().unwrap();
                    for other in (1..=NODES).filter(|o| *o != id) {
                        cut.insert((id, other));
                        cut.insert((other, id));
                    }
                    drop(cut);
                    board.note(format!("cut {id}"));
                }
                down = Some((id, schedule.gen_range(2..6)));
            }
            None => {}
        }
        // A proposal through a node chosen by the seed; only the leader takes it.
        let target = schedule.gen_range(1..=NODES);
        if let Some(node) = board.node(target) {
            let proposed =
                tokio::time::timeout(Duration::from_secs(2), node.propose_forwarded(common::token(step))).await;
            match proposed {
                Ok(Ok(env)) => {
                    acknowledged.insert(step, env.index);
                }
                Ok(Err(LogError::NotLeader { .. } | LogError::NoQuorum(_) | LogError::Stale(_))) | Err(_) => {}
                Ok(Err(e)) => panic!("seed {seed}: proposal {step} failed unexpectedly: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(schedule.gen_range(10..200))).await;
    }

    // Heal everything; then every node must hold the same history, with every acknowledged
    // proposal in it.
    board.cut.lock().unwrap().clear();
    for id in 1..=NODES {
        if board.node(id).is_none() {
            let node = open(dir, id, &board).await;
            board.nodes.lock().unwrap().insert(id, node);
        }
    }
    // A last proposal through whichever node leads, so the entries of every term are committed.
    let mut committed = None;
    // Each attempt proposes a token of its own: one that timed out may still have committed.
    'leader: for token in 60u8..=255 {
        for id in 1..=NODES {
            if let Some(node) = board.node(id)
                && let Ok(Ok(env)) =
                    tokio::time::timeout(Duration::from_secs(1), node.propose_forwarded(common::token(token))).await
            {
                committed = Some(env.index);
                break 'leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = committed.unwrap_or_else(|| panic!("seed {seed}: no leader took a write after the heal"));
    let mut heads = Vec::new();
    for id in 1..=NODES {
        let node = board.node(id).unwrap();
        node.wait_applied(last, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: node {id}: {e}"));
        let history = node.read_history(1, usize::MAX).unwrap();
        for (step, index) in &acknowledged {
            let env = &history[(*index - 1) as usize];
            assert_eq!(
                env.event.as_ref().and_then(|e| e.kind.as_ref()),
                common::token(*step).event.as_ref().and_then(|e| e.kind.as_ref()),
                "seed {seed}: node {id} lost acknowledged proposal {step} at index {index}"
            );
        }
        heads.push((node.state().last_index(), node.state().last_hash()));
    }
    for id in 1..=NODES {
        crash(&board, id).await;
    }
    let trace = board.trace.lock().unwrap();
    let trace_hash = trace.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, line| {
        line.bytes().fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    });
    let count = |f: &dyn Fn(&String) -> bool| trace.iter().filter(|line| f(line)).count();
    Outcome {
        heads,
        acknowledged,
        trace_len: trace.len(),
        trace_hash,
        crashes: count(&|l| l.starts_with("crash")),
        cuts: count(&|l| l.starts_with("cut")),
        lost: count(&|l| l.ends_with("lost")),
    }
}

fn run(seed: u64) -> Outcome {
    let dir = tempfile::tempdir_in(shm()).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(simulate(dir.path(), seed))
}

/// Memory-backed when the system has it: the simulation's fsyncs then cost nothing.
fn shm() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}

#[test]
fn every_seed_keeps_acknowledged_proposals_and_converges() {
    let (mut crashes, mut cuts, mut lost, mut acknowledged) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let outcome = run(seed);
        let heads: HashSet<_> = outcome.heads.iter().collect();
        assert_eq!(heads.len(), 1, "seed {seed}: the nodes ended with different histories: {:?}", outcome.heads);
        crashes += outcome.crashes;
        cuts += outcome.cuts;
        lost += outcome.lost;
        acknowledged += outcome.acknowledged.len();
    }
    // The seeds did break things, and writes got through anyway.
    assert!(crashes >= SEEDS as usize / 4 && cuts >= SEEDS as usize / 4, "{crashes} crashes, {cuts} cuts");
    assert!(lost > 100, "{lost} messages lost");
    assert!(acknowledged > 10 * SEEDS as usize, "{acknowledged} proposals acknowledged");
}

/// Seeds the CI runs; each takes a fraction of a second.
const SEEDS: u64 = 100;

#[test]
fn a_seed_replays_the_same_run() {
    for seed in [3, 17] {
        assert_eq!(run(seed), run(seed), "seed {seed} ran differently twice");
    }
}
