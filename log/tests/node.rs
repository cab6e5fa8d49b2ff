//! `LogNode` end to end on a real RocksDB directory: propose, read verified history, restart,
//! compaction, refusals, and corruption of the archive (I-4).

mod common;

use std::path::Path;

use common::{stack, token};
use prost::Message;
use vigo_log::{History, LogError, LogNode, replay};
use vigo_proto::events::{EventEnvelope, EventProposal};
use vigo_state::chain::to_hash;
use vigo_state::{ChainError, ControlError, GENESIS_HASH, envelope_hash};

const ADDR: &str = "127.0.0.1:1530";

async fn open(dir: &Path) -> LogNode {
    LogNode::open(dir, 1, ADDR.to_string()).await.unwrap()
}

async fn close(node: LogNode) {
    node.shutdown().await.unwrap();
    drop(node);
}

/// Proposes token 1, stack 1, token 2 and returns their envelopes.
async fn propose_three(node: &LogNode) -> Vec<EventEnvelope> {
    let mut out = Vec::new();
    for proposal in [token(1), stack(1), token(2)] {
        out.push(node.propose(proposal).await.unwrap());
    }
    out
}

#[tokio::test]
async fn i4_proposals_are_sealed_into_a_chain_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let mut applied = node.watch_applied();
    assert_eq!(*applied.borrow_and_update(), 0);

    let events = propose_three(&node).await;
    assert_eq!(events.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[0].prev_hash, GENESIS_HASH.to_vec());
    for pair in events.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "event {} links to its predecessor", pair[1].index);
        assert!(pair[1].log_index > pair[0].log_index, "log indexes grow");
    }
    for env in &events {
        assert_eq!(env.hash, envelope_hash(env).to_vec());
        assert_eq!(env.actor, "admin:test");
    }
    assert!(applied.has_changed().unwrap());
    assert_eq!(*applied.borrow_and_update(), 3);

    assert_eq!(node.read_history(1, 10).unwrap(), events);
    assert_eq!(node.read_history(0, 10).unwrap(), events, "0 reads from 1");
    assert_eq!(node.read_history(2, 1).unwrap(), events[1..2]);
    assert_eq!(node.read_history(3, 10).unwrap(), events[2..]);
    assert!(node.read_history(4, 10).unwrap().is_empty());
    assert!(node.read_history(1, 0).unwrap().is_empty());
    assert_eq!(node.last_history_index(), 3);

    let state = node.state();
    assert_eq!(state.last_index(), 3);
    assert_eq!(state.last_hash().to_vec(), events[2].hash);
    assert_eq!(state.stack_version(), 1);
    assert!(state.token(&[2; 32]).is_some());

    node.shutdown().await.unwrap();
    assert!(matches!(node.propose(token(9)).await, Err(LogError::Shutdown)));
    assert_eq!(node.read_history(1, 10).unwrap(), events, "history stays readable after shutdown");
    drop(node);

    let node = open(dir.path()).await;
    let reopened = node.state();
    assert_eq!((reopened.last_index(), reopened.last_hash()), (state.last_index(), state.last_hash()));
    assert_eq!(reopened.stack_version(), 1);
    assert_eq!(*node.watch_applied().borrow(), 3);
    let next = node.propose(stack(2)).await.unwrap();
    assert_eq!(next.index, 4);
    assert_eq!(next.prev_hash, events[2].hash);
    assert!(next.log_index > events[2].log_index);
    assert_eq!(node.read_history(1, 10).unwrap().len(), 4);
    assert_eq!(node.state().stack_version(), 2);
    close(node).await;
}

#[tokio::test]
async fn i1_invalid_proposals_are_refused_before_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    node.propose(token(1)).await.unwrap();

    let empty = EventProposal { proposed_at_ms: 1, actor: "admin:test".into(), event: None };
    assert!(matches!(node.propose(empty).await, Err(LogError::Refused(ControlError::Empty))));
    assert!(matches!(node.propose(token(1)).await, Err(LogError::Refused(ControlError::TokenExists))));
    assert!(matches!(
        node.propose(stack(2)).await,
        Err(LogError::Refused(ControlError::StackVersion { live: 0, found: 2 }))
    ));
    assert_eq!(node.last_history_index(), 1, "nothing was appended");
    assert_eq!(node.propose(token(2)).await.unwrap().index, 2);
    close(node).await;
}

/// Two proposals each valid alone, committed one after the other: after a leader change the
/// new leader can append behind an entry of the old one that its own validation never saw.
/// The second must be dropped by every peer alike, not stop them.
#[tokio::test]
async fn i1_a_committed_proposal_no_longer_valid_is_dropped_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let first = node.raft().client_write(vigo_log::Proposal::new(&stack(1))).await.unwrap();
    assert_eq!(first.data.events[0].envelope.as_ref().map(|e| e.index), Some(1));
    let second = node.raft().client_write(vigo_log::Proposal::new(&stack(1))).await.unwrap();
    assert!(second.data.events[0].envelope.is_none(), "no event is sealed for it");
    let refusal = second.data.events[0].refused.clone().expect("the refusal is answered");
    assert!(refusal.contains("stack version 1 does not follow the live version 1"), "{refusal}");
    assert_eq!(node.last_history_index(), 1);
    assert_eq!(node.propose(token(2)).await.unwrap().index, 2, "the log goes on");
    close(node).await;
    let node = open(dir.path()).await;
    assert_eq!(node.last_history_index(), 2, "a restart replays the same way");
    close(node).await;
}
#[tokio::test]
async fn history_survives_log_compaction_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let mut events = propose_three(&node).await;
    let purged = node.compact().await.unwrap().expect("entries were applied");
    assert!(purged >= events[2].log_index, "the log is purged through the last event");
    assert_eq!(node.read_history(1, 10).unwrap(), events, "history is kept whole");
    events.push(node.propose(stack(2)).await.unwrap());
    close(node).await;

    let node = open(dir.path()).await;
    assert_eq!(node.read_history(1, 10).unwrap(), events);
    assert_eq!(node.state().last_hash().to_vec(), events[3].hash);
    assert_eq!(node.propose(token(5)).await.unwrap().index, 5);
    close(node).await;
}

/// Rewrites event `index` in the closed database under `dir` with `edit` applied.
fn tamper(dir: &Path, index: u64, edit: impl FnOnce(&mut EventEnvelope)) {
    let opts = rocksdb::Options::default();
    let db = rocksdb::DB::open_cf(&opts, dir.join("log"), ["logs", "store", "history", "sm"]).unwrap();
    let cf = db.cf_handle("history").unwrap();
    let mut env = EventEnvelope::decode(db.get_cf(cf, index.to_be_bytes()).unwrap().unwrap().as_slice()).unwrap();
    edit(&mut env);
    db.put_cf(cf, index.to_be_bytes(), env.encode_to_vec()).unwrap();
}

fn chain_index(result: Result<impl std::fmt::Debug, LogError>) -> u64 {
    match result {
        Err(LogError::Chain { index, .. }) => index,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[tokio::test]
async fn i4_an_altered_event_is_named_by_read_replay_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let events = propose_three(&node).await;
    close(node).await;

    tamper(dir.path(), 2, |env| env.actor = "admin:mallory".into());

    let err = LogNode::open(dir.path(), 1, ADDR.to_string()).await.err().expect("open refuses a corrupt history");
    assert!(err.to_string().contains("event 2"), "{err}");
    assert_eq!(chain_index(Err::<(), _>(err)), 2);

    let history = History::open(&dir.path().join("log")).unwrap();
    assert_eq!(chain_index(history.read(1, 10)), 2);
    assert_eq!(chain_index(history.read(3, 10)), 2, "a read trusts no altered predecessor");
    assert_eq!(history.read(1, 1).unwrap(), events[..1], "the intact prefix still reads");
    assert_eq!(chain_index(history.replay()), 2);

    let mut altered = events.clone();
    altered[1].actor = "admin:mallory".into();
    assert_eq!(replay(altered).err(), Some(ChainError::Altered { index: 2 }));
    assert_eq!(replay(events.clone()).unwrap().last_hash(), to_hash(&events[2].hash));
}

#[tokio::test]
async fn i4_a_resealed_event_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let events = propose_three(&node).await;
    close(node).await;

    // A forger who also recomputes the hash of the event they changed.
    let reseal = |env: &mut EventEnvelope| {
        env.actor = "admin:mallory".into();
        env.hash = envelope_hash(env).to_vec();
    };
    tamper(dir.path(), 2, reseal);

    let history = History::open(&dir.path().join("log")).unwrap();
    assert_eq!(chain_index(history.read(1, 10)), 3);
    assert_eq!(history.read(2, 1).unwrap().len(), 1, "event 2 alone is self-consistent from its stored predecessor");
    drop(history);
    assert_eq!(chain_index(LogNode::open(dir.path(), 1, ADDR.to_string()).await.map(drop)), 3);

    let mut forged = events.clone();
    reseal(&mut forged[1]);
    assert_eq!(replay(forged).err(), Some(ChainError::BrokenLink { index: 3 }));
}

/// Proposals run side by side (the log batches them); two that conflict cannot both land: the
/// one applied second is refused, whichever check catches it.
#[tokio::test]
async fn concurrent_proposals_all_land_and_conflicting_ones_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = std::sync::Arc::new(open(dir.path()).await);
    let tokens = (0..64u8).map(|n| {
        let node = node.clone();
        tokio::spawn(async move { node.propose(token(n)).await.map(|e| e.index) })
    });
    let mut indexes: Vec<u64> = futures_join(tokens).await.into_iter().map(Result::unwrap).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (1..=64).collect::<Vec<_>>(), "every token is one event, densely indexed");

    let publishes = (0..8).map(|_| {
        let node = node.clone();
        tokio::spawn(async move { node.propose(stack(1)).await })
    });
    let results = futures_join(publishes).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "version 1 is published once");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(refused, LogError::Stale(_) | LogError::Refused(ControlError::StackVersion { .. })),
            "{refused}"
        );
    }
    assert_eq!(node.last_history_index(), 65);
    assert_eq!(replay(node.read_history(1, 1000).unwrap()).unwrap().last_index(), 65);
    std::sync::Arc::into_inner(node).expect("no other handle").shutdown().await.unwrap();
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// A publish proposed with version 0 takes the next version when it commits: publishes made
/// at once each go live, in commit order, and the archived events hold their real versions.
#[tokio::test]
async fn publishes_of_the_next_version_all_land_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = std::sync::Arc::new(open(dir.path()).await);
    let publishes = (0..8).map(|_| {
        let node = node.clone();
        tokio::spawn(async move { node.propose(stack(0)).await })
    });
    let mut versions: Vec<(u64, u64)> = futures_join(publishes)
        .await
        .into_iter()
        .map(|r| {
            let env = r.unwrap();
            match env.event.and_then(|e| e.kind) {
                Some(vigo_proto::events::event::Kind::StackPublished(s)) => (env.index, s.version),
                other => panic!("not a publish: {other:?}"),
            }
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).map(|v| (v, v)).collect::<Vec<_>>(), "event n made version n live");
    assert_eq!(node.state().stack_version(), 8);
    std::sync::Arc::into_inner(node).expect("no other handle").shutdown().await.unwrap();
}
