//! Snapshots carry the whole history: building one on a state machine and installing it into a
//! fresh one reproduces the same state and the same verified history from index 1, and a
//! tampered snapshot is refused before anything is replaced (I-4 at snapshot load).

mod common;

use std::collections::BTreeSet;

use common::{stack, token};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, RaftSnapshotBuilder};
use vigo_log::{Proposal, StateMachineStore, open_storage};
use vigo_proto::events::EventProposal;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, proposal: &EventProposal) -> vigo_log::types::Entry {
    vigo_log::types::Entry { log_id: log_id(index), payload: EntryPayload::Normal(Proposal::new(proposal)) }
}

/// A state machine with a membership entry, three events and a blank entry applied.
async fn populated(dir: &std::path::Path) -> StateMachineStore {
    let (_, mut sm) = open_storage(dir).unwrap();
    let membership = Membership::new(vec![BTreeSet::from([1])], None);
    let entries = vec![
        vigo_log::types::Entry { log_id: log_id(1), payload: EntryPayload::Membership(membership) },
        normal(2, &token(1)),
        normal(3, &stack(1)),
        vigo_log::types::Entry { log_id: log_id(4), payload: EntryPayload::Blank },
        normal(5, &token(2)),
        // openraft's default payload: applied, records nothing.
        vigo_log::types::Entry { log_id: log_id(6), payload: EntryPayload::Normal(Proposal::default()) },
    ];
    let replies = sm.apply(entries).await.unwrap();
    let indexes: Vec<Vec<u64>> = replies
        .iter()
        .map(|r| r.events.iter().filter_map(|e| e.envelope.as_ref().map(|e| e.index)).collect())
        .collect();
    assert_eq!(indexes, [vec![], vec![1], vec![2], vec![], vec![3], vec![]]);
    sm
}

#[tokio::test]
async fn i4_snapshot_install_reproduces_state_and_history() {
    let (dir_l, dir_f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = populated(dir_l.path()).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(6)));
    assert_eq!(snapshot.meta.last_membership.log_id(), &Some(log_id(1)));

    let (_, mut follower) = open_storage(dir_f.path()).unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    *receiving = *snapshot.snapshot;
    follower.install_snapshot(&snapshot.meta, receiving).await.unwrap();

    let (l, f) = (leader.state(), follower.state());
    assert_eq!((f.last_index(), f.last_hash()), (l.last_index(), l.last_hash()));
    assert_eq!(f.stack_version(), 1);
    assert_eq!(follower.applied_state().await.unwrap(), leader.applied_state().await.unwrap());
    let history = leader.history().read(1, 100).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(follower.history().read(1, 100).unwrap(), history, "the follower can be audited from index 1");

    let current_l = leader.get_current_snapshot().await.unwrap().unwrap();
    let current_f = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current_f.meta, current_l.meta);
    assert_eq!(current_f.snapshot.get_ref(), current_l.snapshot.get_ref());

    // Applying continues the chain on the follower exactly as on the leader.
    for sm in [&mut leader, &mut follower] {
        let reply = sm.apply([normal(7, &stack(2))]).await.unwrap();
        assert_eq!(reply[0].events[0].envelope.as_ref().unwrap().index, 4);
    }
    assert_eq!(leader.state().last_hash(), follower.state().last_hash());
    // One entry of several proposals: consecutive events, each checked against the one before.
    for sm in [&mut leader, &mut follower] {
        let batch = Proposal::batch(&[token(8), stack(2), token(9)]);
        let entry = vigo_log::types::Entry { log_id: log_id(8), payload: EntryPayload::Normal(batch) };
        let reply = sm.apply([entry]).await.unwrap();
        let events = &reply[0].events;
        assert_eq!(events[0].envelope.as_ref().map(|e| (e.index, e.log_index)), Some((5, 8)));
        assert!(events[1].refused.as_ref().unwrap().contains("stack version 2 does not follow the live version 2"));
        assert_eq!(events[2].envelope.as_ref().map(|e| (e.index, e.log_index)), Some((6, 8)));
    }
    assert_eq!(leader.state().last_hash(), follower.state().last_hash());
}

#[tokio::test]
async fn i4_a_tampered_snapshot_is_refused() {
    let (dir_l, dir_f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = populated(dir_l.path()).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut data = snapshot.snapshot.into_inner();
    // Change one letter of the second event's actor ("admin:test" → "admin:Test").
    let at = data.windows(10).enumerate().filter(|(_, w)| w == b"admin:test").nth(1).unwrap().0;
    data[at + 6] = b'T';

    let (_, mut follower) = open_storage(dir_f.path()).unwrap();
    let receiving = Box::new(std::io::Cursor::new(data));
    let err = follower.install_snapshot(&snapshot.meta, receiving).await.unwrap_err();
    assert!(err.to_string().contains("event 2"), "{err}");
    assert_eq!(follower.state().last_index(), 0);
    assert!(follower.history().read(1, 10).unwrap().is_empty(), "nothing was replaced");
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
}

/// openraft 0.9 has a follower's log purged up to a received snapshot while the state machine
/// may not have written it yet. Wherever the purge lands against the install, the log that is
/// left has no gap: after the install, entries appended past the snapshot follow the purge mark
/// directly, and a restart reads the log back whole (I-10).
#[tokio::test]
async fn i10_a_purge_asked_while_a_snapshot_comes_in_leaves_a_log_without_gaps() {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};

    let (dir_l, dir_f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = populated(dir_l.path()).await;
    leader.apply([normal(7, &token(3)), normal(8, &token(4)), normal(9, &token(5))]).await.unwrap();
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(9)));

    for purge_first in [true, false] {
        let dir = dir_f.path().join(format!("purge-first-{purge_first}"));
        {
            let (mut log, mut follower) = open_storage(&dir).unwrap();
            // The follower holds entries 1..=3 of its own when the leader's snapshot comes in.
            let membership = Membership::new(vec![BTreeSet::from([1])], None);
            let own = vec![
                vigo_log::types::Entry { log_id: log_id(1), payload: EntryPayload::Membership(membership) },
                normal(2, &token(1)),
                normal(3, &stack(1)),
            ];
            log.blocking_append(own).await.unwrap();
            let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
            *receiving = *snapshot.snapshot.clone();
            if purge_first {
                log.purge(log_id(9)).await.unwrap();
                follower.install_snapshot(&snapshot.meta, receiving).await.unwrap();
            } else {
                follower.install_snapshot(&snapshot.meta, receiving).await.unwrap();
                log.purge(log_id(9)).await.unwrap();
            }
            log.blocking_append([normal(10, &token(6)), normal(11, &token(7))]).await.unwrap();
        }
        let (mut log, _) = open_storage(&dir).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(9)), "purge first: {purge_first}");
        assert_eq!(state.last_log_id, Some(log_id(11)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, [10, 11], "purge first: {purge_first}: the log follows the snapshot directly");
    }
}
