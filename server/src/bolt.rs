//! This server as a bolt of a federation (`vigosrv run --bolt ID --bolt-pattern GLOB…`): its
//! entry in the admissions roster, and the roster writes an operator makes through it
//! (`spanner reassign`, `spanner drain`). Each write is an event on this bolt's log, stamped by
//! the bolt's roster clock, so the audit log covers it and every peer of the bolt applies it
//! alike.

use std::sync::Mutex;
use std::time::Duration;

use vigo_proto::events::event::Kind;
use vigo_proto::events::{BoltDrained, BoltRegistered, EnvoysReassigned, RosterStamp};
use vigo_state::roster::{BoltEntry, Clock};
use vigo_state::{ControlError, ControlState};

use crate::node::{Node, WriteError, now_ms};

/// What makes this server a bolt.
#[derive(Debug, Clone)]
pub struct BoltConfig {
    /// Its id in the roster.
    pub id: String,
    /// The hostname globs it owns.
    pub patterns: Vec<String>,
}

/// The bolt's clock for roster writes.
pub struct RosterClock(Mutex<Clock>);

impl RosterClock {
    /// A clock for bolt `id`.
    pub fn new(id: &str) -> RosterClock {
        RosterClock(Mutex::new(Clock::new(id)))
    }

    /// A stamp greater than every stamp in `state`'s roster and every stamp handed out before.
    pub fn stamp(&self, state: &ControlState) -> RosterStamp {
        let mut clock = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for seen in state.roster().stamps() {
            clock.observe(seen);
        }
        let stamp = clock.tick(now_ms().max(0) as u64);
        RosterStamp { ms: stamp.ms, counter: stamp.counter, actor: stamp.actor }
    }
}

/// Why a roster write was refused before it was proposed.
fn not_a_bolt() -> WriteError {
    WriteError::Refused(ControlError::Malformed("this server is not a bolt: start it with --bolt ID"))
}

/// The entry this bolt should have in the roster: every peer's address, its patterns.
fn own_entry(state: &ControlState, config: &BoltConfig) -> BoltEntry {
    BoltEntry { addrs: state.peer_addrs(), patterns: config.patterns.clone() }
}

/// Puts this bolt's entry on the roster when it is missing or out of date (a new peer, other
/// patterns), retrying while the cluster has no leader; returns once the roster holds it.
pub async fn register(node: std::sync::Arc<Node>, config: BoltConfig) {
    for _ in 0..crate::limits::BOLT_REGISTER_ATTEMPTS {
        let state = node.log.state();
        let wanted = own_entry(&state, &config);
        if state.roster().bolt(&config.id) == Some(&wanted) {
            return;
        }
        let result = node
            .commit(&format!("bolt:{}", config.id), |state| {
                let entry = own_entry(state, &config);
                Ok(Kind::BoltRegistered(BoltRegistered {
                    bolt: config.id.clone(),
                    addrs: entry.addrs,
                    patterns: entry.patterns,
                    stamp: Some(node.roster_clock.stamp(state)),
                }))
            })
            .await;
        match result {
            Ok(env) => tracing::info!(bolt = config.id, index = env.index, "bolt registered in the roster"),
            Err(e) => tracing::warn!(bolt = config.id, "cannot register the bolt yet: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::error!(bolt = config.id, "gave up registering the bolt in the roster");
}

/// `spanner reassign`: `hostname` (a hostname or a glob) to bolt `to`, or lifted (`None`).
pub async fn reassign(node: &Node, actor: &str, hostname: &str, to: Option<&str>) -> Result<u64, WriteError> {
    roster_write(node, actor, |stamp| {
        Kind::EnvoysReassigned(EnvoysReassigned {
            hostname: hostname.to_string(),
            to: to.unwrap_or_default().to_string(),
            stamp: Some(stamp),
        })
    })
    .await
}

/// `spanner drain`: bolt `bolt`'s envoys to bolt `to`, or the drain ended (`None`).
pub async fn drain(node: &Node, actor: &str, bolt: &str, to: Option<&str>) -> Result<u64, WriteError> {
    roster_write(node, actor, |stamp| {
        Kind::BoltDrained(BoltDrained {
            bolt: bolt.to_string(),
            to: to.unwrap_or_default().to_string(),
            stamp: Some(stamp),
        })
    })
    .await
}

/// Commits the roster event `make` builds around a fresh stamp; only a bolt writes the roster.
async fn roster_write(node: &Node, actor: &str, make: impl FnOnce(RosterStamp) -> Kind) -> Result<u64, WriteError> {
    node.settings.bolt.as_ref().ok_or_else(not_a_bolt)?;
    let env = node.commit(actor, |state| Ok(make(node.roster_clock.stamp(state)))).await?;
    Ok(env.index)
}
