//! The running server's shared parts and the control write path.
//!
//! Control writes are validated against the current state and proposed; the log validates each
//! again against the state it follows when it applies, and drops (and reports) one that no
//! longer holds, on every peer alike (I-1). Writes that stand alone (tokens, enrollments,
//! revocations) are proposed concurrently, so the log batches them ([`Node::commit_event`]).
//! Writes derived from the state (an admission takes the next node id, a revocation finds the
//! envoy by hostname) are made and committed one at a time under `write_lock`
//! ([`Node::commit`]), so two of them never derive from the same state. A publish needs no lock:
//! it proposes "the next version", filled in when it commits (`ControlState::assign`). This is the admin path, never the check-in path.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vigo_log::{LogError, LogNode};
use vigo_proto::agent::CheckInResponse;
use vigo_proto::events::{Event, EventEnvelope, EventProposal, event::Kind};
use vigo_state::{ControlError, ControlState, FleetIndex};

use crate::admission::{Held, QueueDelay, UploadBudget};
use crate::bundles::BundleCache;
use crate::check_in::{CheckInContext, Refusal};
use crate::metrics::{CheckInOutcome, LogCommitOutcome, Metrics};
use crate::pki::Pki;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address check-ins and admin calls arrive on.
    pub listen: String,
    /// Seconds between check-ins envoys are asked to keep.
    pub check_in_interval_s: u32,
    /// How long check-ins may wait before they are told to back off.
    pub check_in_queue_max: std::time::Duration,
    /// Sessions and watches held at most at once.
    pub held_max: usize,
    /// Set when this server is a bolt of a federation.
    pub bolt: Option<crate::bolt::BoltConfig>,
}

/// Why a control write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request is not valid against the current state; nothing was stored.
    #[error(transparent)]
    Refused(#[from] ControlError),
    /// The log could not commit it.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Everything the services share.
pub struct Node {
    /// The replicated log and its projection.
    pub log: Arc<LogNode>,
    /// Observations.
    pub fleet: FleetIndex,
    /// Compiled bundles.
    pub bundles: BundleCache,
    /// Traits uploads the server may still ask for this second.
    pub uploads: UploadBudget,
    /// How far behind the server is; past its cap, check-ins are told to back off.
    pub queue_delay: Arc<QueueDelay>,
    /// Sessions and watches open; past the cap, new ones are closed after one check-in.
    pub held: Arc<Held>,
    /// Key material.
    pub pki: Pki,
    /// Settings.
    pub settings: Settings,
    /// Counters and histograms, served at `/metrics`.
    pub metrics: Metrics,
    /// The live stack version, followed by every open watch (see [`Node::follow_stack`]).
    pub stack_version: tokio::sync::watch::Sender<u64>,
    /// Set when the server stops: open watches end, so the graceful shutdown can finish.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Stamps this bolt's roster writes.
    pub roster_clock: crate::bolt::RosterClock,
    /// How the other bolts answer this peer's probes.
    pub bolt_health: crate::bolt::BoltHealth,
    write_lock: tokio::sync::Mutex<()>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Node {
    /// Assembles a node.
    pub fn new(log: Arc<LogNode>, pki: Pki, settings: Settings) -> Arc<Self> {
        let bundles = BundleCache::new(pki.bundle_key.clone());
        let stack_version = tokio::sync::watch::Sender::new(log.state().stack_version());
        let roster_clock = crate::bolt::RosterClock::new(settings.bolt.as_ref().map_or("", |b| b.id.as_str()));
        Arc::new(Self {
            log,
            fleet: FleetIndex::default(),
            bundles,
            uploads: UploadBudget::new(crate::limits::TRAITS_UPLOADS_PER_S_PER_CORE * cores() as u32),
            queue_delay: QueueDelay::new(settings.check_in_queue_max),
            held: Held::new(settings.held_max),
            pki,
            settings,
            metrics: Metrics::default(),
            stack_version,
            stopping: tokio::sync::watch::Sender::new(false),
            roster_clock,
            bolt_health: Default::default(),
            write_lock: Default::default(),
        })
    }

    /// Keeps [`Node::stack_version`] equal to the live stack's version as events apply. One
    /// task for the whole server, so watches wake on publishes only, not on every event.
    pub async fn follow_stack(self: Arc<Self>) {
        let mut applied = self.log.watch_applied();
        // The publish's event index, not only its version: a bolt that takes another bolt's
        // stack at the version it already has (two bolts published at once) pushes it too.
        let mut pushed_index = None;
        loop {
            let control = self.control();
            let (live, index) = (control.stack_version(), control.stack().map(|s| s.index));
            self.stack_version.send_if_modified(|current| {
                let moved = index != pushed_index;
                pushed_index = index;
                *current = live;
                moved
            });
            if applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves with the event index once this peer has applied its own removal from the cluster
    /// and the leader has taken it out of the membership — or [`crate::limits::REMOVED_GRACE`]
    /// after the removal, since the leader may stop replicating to it before it learns that.
    /// Until then it keeps answering the leader, whose membership change needs its vote.
    pub async fn removed(&self) -> u64 {
        let mut applied = self.log.watch_applied();
        let index = loop {
            if let Some(index) = self.control().peer_removed_at(self.log.node_id()) {
                break index;
            }
            if applied.changed().await.is_err() {
                return std::future::pending().await;
            }
        };
        let node_id = self.log.node_id();
        let mut metrics = self.log.raft().metrics();
        let left = metrics.wait_for(|m| m.membership_config.membership().get_node(&node_id).is_none());
        let _ = tokio::time::timeout(crate::limits::REMOVED_GRACE, left).await;
        index
    }

    /// The earliest last-seen time (ms) of an envoy counted online at `now_ms`: within
    /// [`crate::limits::ONLINE_INTERVALS`] check-in intervals.
    pub fn online_since_ms(&self, now_ms: i64) -> i64 {
        now_ms - crate::limits::ONLINE_INTERVALS * i64::from(self.settings.check_in_interval_s) * 1000
    }

    /// Where envoys reach the cluster: this peer first, then every other current peer.
    pub fn servers(&self) -> Vec<String> {
        let others = self.control().peer_addrs().into_iter().filter(|addr| *addr != self.settings.listen);
        std::iter::once(self.settings.listen.clone()).chain(others).collect()
    }

    /// The control snapshot as of the last applied event.
    pub fn control(&self) -> Arc<ControlState> {
        self.log.state()
    }

    /// Runs `f` with what a check-in may touch (I-3).
    pub fn with_check_in<R>(&self, f: impl FnOnce(&CheckInContext<'_>) -> R) -> R {
        let control = self.control();
        let ctx = CheckInContext {
            control: &control,
            fleet: &self.fleet,
            bundles: &self.bundles,
            check_in_interval_s: self.settings.check_in_interval_s,
            uploads: &self.uploads,
            queue_delay: &self.queue_delay,
            bolt: self.settings.bolt.as_ref().map(|b| b.id.as_str()),
        };
        f(&ctx)
    }

    /// Answers one check-in with `answer` and counts it for `/metrics` (outcome and time in the
    /// handler): two clock reads and two atomic adds, nothing that waits or grows with the fleet
    /// (I-3). Every way a check-in arrives (a call, a session message) goes through here.
    pub fn answer_check_in(
        &self,
        answer: impl FnOnce(&CheckInContext<'_>) -> Result<CheckInResponse, Refusal>,
    ) -> Result<CheckInResponse, Refusal> {
        let started = Instant::now();
        let answered = self.with_check_in(answer);
        self.metrics.record_check_in(CheckInOutcome::of(&answered), started.elapsed());
        answered
    }

    /// Validates `kind` and commits it, concurrently with other writes; answers after the
    /// commit.
    pub async fn commit_event(&self, actor: &str, kind: Kind) -> Result<EventEnvelope, WriteError> {
        self.propose(actor, |_| Ok(kind)).await
    }

    /// Validates `make(state)`'s event and commits it; answers after the commit.
    ///
    /// `make` sees the state under the write lock, so it can derive the event from it
    /// (the next stack version, for instance). Counted in `metrics` by outcome; the time the
    /// log takes to commit is observed, the wait for the write lock is not.
    pub async fn commit(
        &self,
        actor: &str,
        make: impl FnOnce(&ControlState) -> Result<Kind, ControlError>,
    ) -> Result<EventEnvelope, WriteError> {
        let _guard = self.write_lock.lock().await;
        // On a follower, catch up first: a write derived from a stale state (the next stack
        // version, say) would only be refused by the leader.
        if !self.log.is_leader() {
            self.log.read_barrier().await?;
        }
        self.propose(actor, make).await
    }

    async fn propose(
        &self,
        actor: &str,
        make: impl FnOnce(&ControlState) -> Result<Kind, ControlError>,
    ) -> Result<EventEnvelope, WriteError> {
        let proposal = match prepare(&self.control(), actor, make) {
            Ok(proposal) => proposal,
            Err(refusal) => {
                self.metrics.record_log_commit(LogCommitOutcome::Refused, None);
                return Err(refusal.into());
            }
        };
        let started = Instant::now();
        let committed = self.log.propose(proposal).await;
        let outcome = if committed.is_ok() { LogCommitOutcome::Committed } else { LogCommitOutcome::Failed };
        self.metrics.record_log_commit(outcome, Some(started.elapsed()));
        Ok(committed?)
    }
}

/// Makes the event from `state`, stamps it with the time and validates it (I-1).
fn prepare(
    state: &ControlState,
    actor: &str,
    make: impl FnOnce(&ControlState) -> Result<Kind, ControlError>,
) -> Result<EventProposal, ControlError> {
    let event = Event { kind: Some(make(state)?) };
    let proposed_at_ms = now_ms();
    state.validate(&event, proposed_at_ms)?;
    Ok(EventProposal { proposed_at_ms, actor: actor.to_string(), event: Some(event) })
}
