//! The checkers: one per invariant, each reading only a [`crate::history::History`].
//!
//! Every checker returns its violations rather than stopping at the first or panicking: a
//! malformed history (a gap, a broken link, an operation that completes before it starts) is
//! itself something to report. Details name the operation id, peer or event index involved so a
//! failure can be found in the saved history. Each checker reports at most `MAX_DETAILS` (20)
//! violations followed by one "… and N more", so a run that goes badly wrong stays readable.
//!
//! Several checkers share the *reference history*: the longest final history any peer served
//! after the heal. Acknowledged writes must be in it, nothing else may be, and it is the
//! candidate total order the linearizability checker tests real time against. Whether the peers
//! agree with it is the concern of `chain` and `converged`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::history::{Event, History, Op, OpKind, Outcome, ReadResult, Write};

const LOST_WRITES: &str = "lost-writes";
const PHANTOM_WRITES: &str = "phantom-writes";
const CHAIN: &str = "chain";
const CONVERGED: &str = "converged";
const LINEARIZABLE: &str = "linearizable";
const LIVENESS: &str = "liveness";
const PROJECTIONS: &str = "projections";
const ELECTION_SAFETY: &str = "election-safety";

/// The `prev_hash` of the first event of every history.
const GENESIS_PREV_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many violations one checker reports before summarising the rest as "… and N more".
const MAX_DETAILS: usize = 20;

/// A checker: reads a history, returns what it violates.
type Checker = fn(&History) -> Vec<Violation>;

/// One violation, named by the checker that found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The checker's name (`lost-writes`, `chain`, …).
    pub checker: &'static str,
    /// What is wrong, naming the operations, peers or indexes involved.
    pub detail: String,
}

/// What [`check_all`] found: every checker's name with its violations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Each checker in the order it ran, with its violations (empty when it passed).
    pub checkers: Vec<(&'static str, Vec<Violation>)>,
}

impl Report {
    /// Whether every checker passed.
    pub fn ok(&self) -> bool {
        self.checkers.iter().all(|(_, violations)| violations.is_empty())
    }

    /// Every violation of every checker, in checker order.
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.checkers.iter().flat_map(|(_, violations)| violations.iter())
    }

    /// One line per checker: `name: ok`, or `name: N violation(s): first detail`, where N counts
    /// the violations summarised by a trailing "… and N more" too.
    pub fn summary(&self) -> String {
        let lines: Vec<String> = self
            .checkers
            .iter()
            .map(|(name, violations)| match violations.first() {
                None => format!("{name}: ok"),
                Some(first) => format!("{name}: {} violation(s): {}", total_violations(violations), first.detail),
            })
            .collect();
        lines.join("\n")
    }
}

/// Runs every checker, in a fixed order, over the history.
pub fn check_all(h: &History) -> Report {
    let checkers: [(&'static str, Checker); 8] = [
        (LOST_WRITES, lost_writes),
        (PHANTOM_WRITES, phantom_writes),
        (CHAIN, chain),
        (CONVERGED, converged),
        (PROJECTIONS, projections),
        (LINEARIZABLE, linearizable),
        (ELECTION_SAFETY, election_safety),
        (LIVENESS, liveness),
    ];
    Report { checkers: checkers.into_iter().map(|(name, check)| (name, check(h))).collect() }
}

/// Checker `lost-writes`: every acknowledged write is in the reference history.
///
/// An acknowledged write is committed, so losing it (a leader that acknowledged before a quorum
/// stored it, a recovery that truncated committed entries) is the worst outcome. A write
/// applied twice is reported by [`phantom_writes`], so one fault is reported once.
pub fn lost_writes(h: &History) -> Vec<Violation> {
    let Some((peer, reference)) = reference_history(h) else {
        return capped(LOST_WRITES, vec!["no peer's final history could be read".to_string()]);
    };
    let present: HashSet<&str> = client_keys(reference).map(|event| event.key.as_str()).collect();
    let details = acknowledged_writes(h)
        .filter(|(_, key)| !present.contains(key))
        .map(|(op, key)| {
            format!(
                "acknowledged write op {} (client {}, key {key}) is missing from peer {peer}'s final history",
                op.id, op.client
            )
        })
        .collect();
    capped(LOST_WRITES, details)
}

/// Checker `phantom-writes`: every client event of the reference history comes from a write of
/// the run that may have taken effect, and took effect once.
///
/// A key no client wrote, or the key of a write the server refused, means the log holds
/// something nobody asked for; a key on two events means a write (retried by a client, or
/// replayed by a recovery) was applied twice.
pub fn phantom_writes(h: &History) -> Vec<Violation> {
    let Some((peer, reference)) = reference_history(h) else {
        // `lost-writes` reports the missing reference; there is nothing to look for phantoms in.
        return Vec::new();
    };
    let writers = writes_by_key(h);
    // A token write whose answer was lost is known by no key (the server makes the secret):
    // each such write may account for one token nobody claims.
    let mut unclaimed_tokens = h
        .ops
        .iter()
        .filter(|op| {
            matches!(&op.kind, OpKind::Write(Write::Token { key }) if key.is_empty())
                && matches!(op.outcome, Outcome::Unknown { .. })
        })
        .count();
    let mut first_seen: HashMap<&str, u64> = HashMap::new();
    let mut details = Vec::new();
    for event in client_keys(reference) {
        let key = event.key.as_str();
        if let Some(first) = first_seen.get(key) {
            details.push(format!(
                "key {key} ({}) is on events {first} and {} of peer {peer}'s final history: applied twice",
                describe_writers(writers.get(key)),
                event.index
            ));
            continue;
        }
        first_seen.insert(key, event.index);
        match writers.get(key) {
            None if event.kind == "TokenCreated" && unclaimed_tokens > 0 => unclaimed_tokens -= 1,
            None => details.push(format!(
                "event {} ({}) of peer {peer}'s final history carries key {key}, which no client of the run wrote",
                event.index, event.kind
            )),
            Some(ops) if ops.iter().all(|op| matches!(op.outcome, Outcome::Failed { .. })) => details.push(format!(
                "event {} ({}) of peer {peer}'s final history carries key {key} of {}, which failed",
                event.index,
                event.kind,
                describe_writers(Some(ops))
            )),
            Some(_) => {}
        }
    }
    capped(PHANTOM_WRITES, details)
}

/// Checker `chain`: every history served (each peer's final history, each successful read) is a
/// well-formed hash chain, and all of them are prefixes of one history.
///
/// Final histories are held whole and checked event by event. A read is recorded only by its
/// length, its last hash and whether the client found its events one hash chain from index 1;
/// a well-formed read is a prefix of the reference history exactly when it is no longer than
/// it and its last hash is the reference's hash at that index (the hashes chain, so the last
/// one vouches for every event before it).
///
/// Two histories that disagree at some index mean two different entries were committed at the
/// same index: the replicated log forked.
pub fn chain(h: &History) -> Vec<Violation> {
    let finals = final_histories(h);
    let mut details = Vec::new();
    for (source, events) in &finals {
        details.extend(chain_breaks(*source, events));
    }
    details.extend(forks(&finals));
    details.extend(read_forks(h));
    capped(CHAIN, details)
}

/// Checker `converged`: after the heal every peer was read and all served the same history.
///
/// Once faults stop, replication must bring every peer up to date; a peer that cannot be read
/// or lags behind means the cluster did not recover.
pub fn converged(h: &History) -> Vec<Violation> {
    let mut details = Vec::new();
    if h.finals.len() > h.peers {
        details.push(format!("{} final histories were recorded for {} peers", h.finals.len(), h.peers));
    }
    for peer in 0..h.peers.max(h.finals.len()) {
        if h.finals.get(peer).is_none_or(Option::is_none) {
            details.push(format!("peer {peer}'s final history could not be read"));
        }
    }
    if let Some((reference_peer, reference)) = reference_history(h) {
        for (peer, events) in h.finals.iter().enumerate() {
            let Some(events) = events else { continue };
            if tip(events) != tip(reference) {
                details.push(format!(
                    "peer {peer} ended with {}, peer {reference_peer} with {}",
                    describe_tip(events),
                    describe_tip(reference)
                ));
            }
        }
    }
    capped(CONVERGED, details)
}

/// Checker `linearizable`: the reference history is a total order of the writes consistent with
/// real time, and every successful read returned the history as it stood at some instant
/// between its invocation and completion.
///
/// Constraints are checked against running maxima over operations sorted by completion time
/// and over positions of the reference history, so the cost is O(n log n) in the number of
/// operations plus O(n) in the length of the reference history.
pub fn linearizable(h: &History) -> Vec<Violation> {
    let reference = reference_history(h).map(|(_, events)| events).unwrap_or_default();
    let positions = first_positions(reference);
    let placed: Vec<PlacedWrite<'_>> = placed_writes(h, &positions);
    let acknowledged = MaxBefore::new(
        placed
            .iter()
            .filter(|write| is_ok(write.op))
            .filter_map(|write| Some((write.op.complete_us, write.position?, write.op)))
            .collect(),
    );
    let reads = successful_reads(h);

    let mut details = time_travel(h);
    details.extend(real_time_order(&placed, &acknowledged));
    details.extend(answered_indexes(&placed));
    details.extend(reads_without_result(h));
    details.extend(stale_reads(&reads, &acknowledged));
    details.extend(reads_from_the_future(h, reference, &reads));
    details.extend(reads_going_back(&reads));
    capped(LINEARIZABLE, details)
}

/// Checker `projections`: after the heal every peer serves the state its history folds to —
/// the live stack version is the number of publishes, every envoy enrolled is listed, and one
/// is revoked exactly when the history revokes it.
///
/// The histories being equal is `converged`'s concern; this checks what peers serve from them,
/// so a fault in applying events (a peer whose state drifted from its own log) shows.
/// Histories recorded without projections are not checked. Envoy lists read during the run
/// are held to the history up to the event each was read at.
pub fn projections(h: &History) -> Vec<Violation> {
    let Some((reference_peer, reference)) = reference_history(h) else { return Vec::new() };
    let mut details = envoy_lists(h, reference);
    let publishes = reference.iter().filter(|e| e.kind == "StackPublished").count() as u64;
    let enrolled: HashSet<&str> =
        reference.iter().filter(|e| e.kind == "EnvoyEnrolled").map(|e| e.key.as_str()).collect();
    let revoked: HashSet<&str> =
        reference.iter().filter(|e| e.kind == "EnvoyRevoked").filter_map(|e| e.key.strip_prefix("revoked:")).collect();
    for (peer, projection) in h.projections.iter().enumerate() {
        let Some(projection) = projection else {
            details.push(format!("peer {peer}'s projection could not be read after the heal"));
            continue;
        };
        if projection.stack_version != publishes {
            details.push(format!(
                "peer {peer} serves stack version {}, but peer {reference_peer}'s history holds {publishes} publishes",
                projection.stack_version
            ));
        }
        let listed: HashSet<&str> = projection.envoys.iter().map(|e| e.hostname.as_str()).collect();
        for missing in enrolled.difference(&listed) {
            details.push(format!("peer {peer} does not list envoy {missing}, which the history enrolls"));
        }
        for extra in listed.difference(&enrolled) {
            details.push(format!("peer {peer} lists envoy {extra}, which the history never enrolls"));
        }
        for envoy in &projection.envoys {
            if envoy.revoked != revoked.contains(envoy.envoy_id.as_str()) {
                details.push(format!(
                    "peer {peer} shows envoy {} ({}) as {}, but the history {} it",
                    envoy.envoy_id,
                    envoy.hostname,
                    if envoy.revoked { "revoked" } else { "active" },
                    if envoy.revoked { "never revokes" } else { "revokes" }
                ));
            }
        }
    }
    capped(PROJECTIONS, details)
}

/// Every envoy list read during the run lists as many envoys, and as many revoked, as the
/// reference history enrolls and revokes up to the event it was read at.
fn envoy_lists(h: &History, reference: &[Event]) -> Vec<String> {
    // counts[i]: enrollments and revocations among the first i events.
    let mut counts = vec![(0u64, 0u64)];
    for event in reference {
        let (enrolled, revoked) = *counts.last().unwrap_or(&(0, 0));
        counts.push((
            enrolled + u64::from(event.kind == "EnvoyEnrolled"),
            revoked + u64::from(event.kind == "EnvoyRevoked"),
        ));
    }
    let mut details = Vec::new();
    for (op, read) in successful_reads(h) {
        let Some(listed) = read.envoys else { continue };
        // A read past the end of the reference is `chain`'s to report.
        let Some(&(enrolled, revoked)) = usize::try_from(read.len).ok().and_then(|at| counts.get(at)) else { continue };
        if (listed.listed, listed.revoked) != (enrolled, revoked) {
            details.push(format!(
                "envoy list op {} (of peer {}) read at event {} listed {} envoy(s), {} revoked, but the history up to \
                 there enrolls {enrolled} and revokes {revoked}",
                op.id, read.peer, read.len, listed.listed, listed.revoked
            ));
        }
    }
    details
}

/// Checker `election-safety`: at most one leader per term. Every peer that said it leads in a
/// term, and every peer that named the leader of a term, must agree on who that is.
///
/// Two leaders in one term could both commit different entries at the same index: the fork
/// the `chain` checker would find later, caught here where it starts.
pub fn election_safety(h: &History) -> Vec<Violation> {
    let mut leaders: std::collections::BTreeMap<u64, (u64, &crate::history::LeaderView)> = Default::default();
    let mut details = Vec::new();
    for view in &h.views {
        let claimed = if view.role == "leader" { Some(view.node_id) } else { view.leader };
        let Some(leader) = claimed else { continue };
        match leaders.get(&view.term) {
            None => {
                leaders.insert(view.term, (leader, view));
            }
            Some((first, seen)) if *first != leader => details.push(format!(
                "term {}: peer {} (node {}) at {}µs says node {leader} leads, but peer {} (node {}) at {}µs \
                 said node {first}",
                view.term, view.peer, view.node_id, view.at_us, seen.peer, seen.node_id, seen.at_us
            )),
            Some(_) => {}
        }
    }
    capped(ELECTION_SAFETY, details)
}

/// Checker `liveness`: the run healed, and afterwards a leader acknowledged a write within the
/// liveness window. Safety alone is trivially satisfied by a cluster that never answers.
pub fn liveness(h: &History) -> Vec<Violation> {
    let detail = match (h.healed_us, h.live_after_heal) {
        (None, _) => Some("the run never healed"),
        (Some(_), Some(true)) => None,
        (Some(_), Some(false)) => Some("after the heal no leader acknowledged a write within the liveness window"),
        (Some(_), None) => Some("after the heal liveness was never established (no result recorded)"),
    };
    capped(LIVENESS, detail.into_iter().map(str::to_string).collect())
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Turns details into violations, keeping the first [`MAX_DETAILS`] and summarising the rest.
fn capped(checker: &'static str, details: Vec<String>) -> Vec<Violation> {
    let more = details.len().saturating_sub(MAX_DETAILS);
    let mut violations: Vec<Violation> =
        details.into_iter().take(MAX_DETAILS).map(|detail| Violation { checker, detail }).collect();
    if more > 0 {
        violations.push(Violation { checker, detail: overflow_detail(more) });
    }
    violations
}

fn overflow_detail(more: usize) -> String {
    format!("… and {more} more")
}

/// How many violations a checker found, counting those a trailing "… and N more" stands for.
fn total_violations(violations: &[Violation]) -> usize {
    let more = violations
        .last()
        .and_then(|last| last.detail.strip_prefix("… and ")?.strip_suffix(" more")?.parse::<usize>().ok());
    match more {
        Some(more) => violations.len() - 1 + more,
        None => violations.len(),
    }
}

/// The longest final history that could be read, with its peer (the first such peer on ties).
fn reference_history(h: &History) -> Option<(usize, &[Event])> {
    let mut best: Option<(usize, &[Event])> = None;
    for (peer, events) in h.finals.iter().enumerate() {
        if let Some(events) = events
            && best.is_none_or(|(_, longest)| events.len() > longest.len())
        {
            best = Some((peer, events));
        }
    }
    best
}

/// The events a workload client wrote (those with a key).
fn client_keys(events: &[Event]) -> impl Iterator<Item = &Event> {
    events.iter().filter(|event| !event.key.is_empty())
}

/// The index of the first event carrying each key.
fn first_positions(events: &[Event]) -> HashMap<&str, u64> {
    let mut positions = HashMap::new();
    for event in client_keys(events) {
        positions.entry(event.key.as_str()).or_insert(event.index);
    }
    positions
}

/// Every write operation with its key.
fn writes(h: &History) -> impl Iterator<Item = (&Op, &str)> {
    h.ops.iter().filter_map(|op| match &op.kind {
        OpKind::Write(write) => Some((op, write.key())),
        OpKind::Read { .. } => None,
    })
}

/// Every acknowledged write operation with its key.
fn acknowledged_writes(h: &History) -> impl Iterator<Item = (&Op, &str)> {
    writes(h).filter(|(op, _)| is_ok(op))
}

/// Every write operation, grouped by key (keys are meant to be unique, but a history may say
/// otherwise).
fn writes_by_key(h: &History) -> HashMap<&str, Vec<&Op>> {
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for (op, key) in writes(h) {
        by_key.entry(key).or_default().push(op);
    }
    by_key
}

fn describe_writers(ops: Option<&Vec<&Op>>) -> String {
    match ops.map(Vec::as_slice) {
        None | Some([]) => "no client wrote it".to_string(),
        Some(ops) => {
            let ids: Vec<String> =
                ops.iter().map(|op| format!("op {} ({})", op.id, outcome_name(&op.outcome))).collect();
            format!("written by {}", ids.join(", "))
        }
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok { .. } => "ok",
        Outcome::Failed { .. } => "failed",
        Outcome::Unknown { .. } => "unknown",
    }
}

fn is_ok(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Ok { .. })
}

/// The first 12 hex digits of a hash: enough to tell hashes apart in a message.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

// ---------------------------------------------------------------------------------------------
// chain
// ---------------------------------------------------------------------------------------------

/// Where a served history came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A peer's final history.
    Final { peer: usize },
    /// A successful read.
    Read { op: u64, peer: usize },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Final { peer } => write!(f, "peer {peer}'s final history"),
            Source::Read { op, peer } => write!(f, "read op {op} (of peer {peer})"),
        }
    }
}

/// Every final history that could be read, the reference leading. Comparing in this order
/// names the odd one out, not the reference.
fn final_histories(h: &History) -> Vec<(Source, &[Event])> {
    let reference = reference_history(h).map(|(peer, _)| peer);
    let finals = h.finals.iter().enumerate().filter_map(|(peer, events)| Some((peer, events.as_deref()?)));
    let (leading, others): (Vec<_>, Vec<_>) = finals.partition(|(peer, _)| Some(*peer) == reference);
    leading.into_iter().chain(others).map(|(peer, events)| (Source::Final { peer }, events)).collect()
}

/// Where one history is not a well-formed chain: the first index out of sequence and the first
/// broken `prev_hash` link.
fn chain_breaks(source: Source, events: &[Event]) -> Vec<String> {
    let mut breaks = Vec::new();
    if let Some((position, event)) =
        events.iter().enumerate().find(|(position, event)| event.index != *position as u64 + 1)
    {
        breaks.push(format!("{source}: event {} has index {}, expected {}", position + 1, event.index, position + 1));
    }
    let mut expected_prev = GENESIS_PREV_HASH;
    for event in events {
        if event.prev_hash != expected_prev {
            breaks.push(format!(
                "{source}: event at index {} has prev_hash {}, but the previous hash is {}",
                event.index,
                short(&event.prev_hash),
                short(expected_prev)
            ));
            break;
        }
        expected_prev = &event.hash;
    }
    breaks
}

/// Where served histories are not all prefixes of one history.
///
/// Each history is compared with the longest agreed history so far (the *spine*), and extends
/// it when it agrees and is longer. That is linear in the total size of the histories, where
/// comparing every pair would be quadratic in their number.
fn forks(served: &[(Source, &[Event])]) -> Vec<String> {
    let mut spine: Vec<(&Event, Source)> = Vec::new();
    let mut details = Vec::new();
    for (source, events) in served {
        let divergence = spine
            .iter()
            .zip(events.iter())
            .find(|((agreed, _), event)| (agreed.index, &agreed.hash) != (event.index, &event.hash));
        match divergence {
            Some(((agreed, agreed_source), event)) => details.push(format!(
                "{source} diverges from {agreed_source} at index {}: hash {} there, {} here",
                agreed.index,
                short(&agreed.hash),
                short(&event.hash)
            )),
            None => {
                let tail = events.get(spine.len()..).unwrap_or_default();
                spine.extend(tail.iter().map(|event| (event, *source)));
            }
        }
    }
    details
}

/// Successful reads whose events were not one hash chain, or that are not a prefix of the
/// reference history, in the order they completed. Without a reference there is nothing to
/// compare reads with (`lost-writes` reports that).
fn read_forks(h: &History) -> Vec<String> {
    let reference = reference_history(h);
    let mut details = Vec::new();
    for (op, read) in successful_reads(h) {
        let source = Source::Read { op: op.id, peer: read.peer };
        if let Some(error) = &read.chain_error {
            details.push(format!("{source}: the events it returned are not one hash chain from index 1: {error}"));
            continue;
        }
        let Some((reference_peer, reference)) = reference else { continue };
        if read.len > reference.len() as u64 {
            details.push(format!(
                "{source} returned {} events, more than any peer holds at the end (peer {reference_peer} holds {})",
                read.len,
                reference.len()
            ));
        } else if let Some(agreed) = read.len.checked_sub(1).and_then(|last| reference.get(last as usize))
            && agreed.hash != read.last_hash
        {
            details.push(format!(
                "{source} diverges from peer {reference_peer}'s final history at index {}: \
                 hash {} there, {} at the end of the read",
                read.len,
                short(&agreed.hash),
                short(&read.last_hash)
            ));
        }
    }
    details
}

// ---------------------------------------------------------------------------------------------
// converged
// ---------------------------------------------------------------------------------------------

/// What identifies a history once chains are checked: its length and last hash.
fn tip(events: &[Event]) -> (usize, Option<&str>) {
    (events.len(), events.last().map(|event| event.hash.as_str()))
}

fn describe_tip(events: &[Event]) -> String {
    match events.last() {
        None => "no events".to_string(),
        Some(last) => format!("{} event(s) ending at index {} hash {}", events.len(), last.index, short(&last.hash)),
    }
}

// ---------------------------------------------------------------------------------------------
// linearizable
// ---------------------------------------------------------------------------------------------

/// A write that may have taken effect (acknowledged or unknown), with its position in the
/// reference history when it is there.
struct PlacedWrite<'a> {
    op: &'a Op,
    key: &'a str,
    position: Option<u64>,
}

fn placed_writes<'a>(h: &'a History, positions: &HashMap<&str, u64>) -> Vec<PlacedWrite<'a>> {
    writes(h)
        .filter(|(op, _)| !matches!(op.outcome, Outcome::Failed { .. }))
        .map(|(op, key)| PlacedWrite { op, key, position: positions.get(key).copied() })
        .collect()
}

/// Every successful read that carries its result.
fn successful_reads(h: &History) -> Vec<(&Op, &ReadResult)> {
    h.ops
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::Read { .. }, Outcome::Ok { read: Some(read), .. }) => Some((op, read)),
            _ => None,
        })
        .collect()
}

/// For items that each finish at some time with some value, answers "of the items finished
/// strictly before time t, which has the greatest value?" in O(log n) after one sort.
struct MaxBefore<T> {
    /// Finish times, ascending.
    times: Vec<u64>,
    /// `best[i]`: the greatest value (and its item) among the first `i + 1` items by time.
    best: Vec<(u64, T)>,
}

impl<T: Copy> MaxBefore<T> {
    /// Builds from `(finish time, value, item)`.
    fn new(mut items: Vec<(u64, u64, T)>) -> Self {
        items.sort_by_key(|(time, _, _)| *time);
        let mut best: Vec<(u64, T)> = Vec::with_capacity(items.len());
        for (_, value, item) in &items {
            let running = match best.last() {
                Some(&(max, max_item)) if max >= *value => (max, max_item),
                _ => (*value, *item),
            };
            best.push(running);
        }
        MaxBefore { times: items.iter().map(|(time, _, _)| *time).collect(), best }
    }

    /// The greatest value, and its item, among items that finished strictly before `time`.
    fn before(&self, time: u64) -> Option<(u64, T)> {
        let finished = self.times.partition_point(|&finish| finish < time);
        finished.checked_sub(1).and_then(|last| self.best.get(last).copied())
    }
}

/// Operations recorded as completing before they were invoked: the clock or the recorder is
/// broken, and every real-time conclusion about them is suspect.
fn time_travel(h: &History) -> Vec<String> {
    h.ops
        .iter()
        .filter(|op| op.complete_us < op.invoke_us)
        .map(|op| {
            format!(
                "op {} (client {}) completed at {}µs, before it was invoked at {}µs",
                op.id, op.client, op.complete_us, op.invoke_us
            )
        })
        .collect()
}

/// A write that began after an acknowledged write completed must be ordered after it. An
/// unknown write has no completion to constrain, but its invocation does.
fn real_time_order(placed: &[PlacedWrite<'_>], acknowledged: &MaxBefore<&Op>) -> Vec<String> {
    let mut details = Vec::new();
    for write in placed {
        let Some(position) = write.position else { continue };
        if let Some((earlier_position, earlier)) = acknowledged.before(write.op.invoke_us)
            && earlier_position > position
        {
            details.push(format!(
                "write op {} completed at {}µs, before write op {} was invoked at {}µs, \
                 but is at index {earlier_position}, after it at index {position}",
                earlier.id, earlier.complete_us, write.op.id, write.op.invoke_us
            ));
        }
    }
    details
}

/// An acknowledged write that answered with its index must be at that index.
fn answered_indexes(placed: &[PlacedWrite<'_>]) -> Vec<String> {
    placed
        .iter()
        .filter_map(|write| {
            let Outcome::Ok { index: Some(answered), .. } = write.op.outcome else { return None };
            let position = write.position?;
            (answered != position).then(|| {
                format!(
                    "write op {} (key {}) was acknowledged at index {answered} but is at index {position}",
                    write.op.id, write.key
                )
            })
        })
        .collect()
}

/// A read that succeeded must say what it read.
fn reads_without_result(h: &History) -> Vec<String> {
    h.ops
        .iter()
        .filter(|op| matches!((&op.kind, &op.outcome), (OpKind::Read { .. }, Outcome::Ok { read: None, .. })))
        .map(|op| format!("read op {} (client {}) succeeded but recorded no result", op.id, op.client))
        .collect()
}

/// A read must contain every write acknowledged before it was invoked.
fn stale_reads(reads: &[(&Op, &ReadResult)], acknowledged: &MaxBefore<&Op>) -> Vec<String> {
    let mut details = Vec::new();
    for (read_op, read) in reads {
        let length = read.len;
        if let Some((position, write)) = acknowledged.before(read_op.invoke_us)
            && position > length
        {
            details.push(format!(
                "stale read: read op {} (of peer {}) invoked at {}µs returned {length} event(s), \
                 but write op {} completed at {}µs is at index {position}",
                read_op.id, read.peer, read_op.invoke_us, write.id, write.complete_us
            ));
        }
    }
    details
}

/// A read cannot contain a write that was invoked after the read completed.
///
/// A read of length L returned the writes at positions 1..=L of the reference history (`chain`
/// reports a read that is not a prefix of it). `latest[i]` is, among the client events at
/// positions up to i, the one whose write was first invoked latest, so each read is one lookup.
fn reads_from_the_future(h: &History, reference: &[Event], reads: &[(&Op, &ReadResult)]) -> Vec<String> {
    let mut first_invoked: HashMap<&str, &Op> = HashMap::new();
    for (op, key) in writes(h) {
        first_invoked
            .entry(key)
            .and_modify(|earliest| {
                if op.invoke_us < earliest.invoke_us {
                    *earliest = op;
                }
            })
            .or_insert(op);
    }
    let mut latest: Vec<Option<(&Op, &Event)>> = Vec::with_capacity(reference.len() + 1);
    latest.push(None);
    for event in reference {
        let before = latest.last().copied().flatten();
        let here = if event.key.is_empty() { None } else { first_invoked.get(event.key.as_str()).copied() };
        let running = match (before, here) {
            (Some((max, _)), Some(write)) if max.invoke_us >= write.invoke_us => before,
            (_, Some(write)) => Some((write, event)),
            (_, None) => before,
        };
        latest.push(running);
    }
    let mut details = Vec::new();
    for (read_op, read) in reads {
        let seen = usize::try_from(read.len).unwrap_or(usize::MAX).min(reference.len());
        if let Some((write, event)) = latest[seen]
            && write.invoke_us > read_op.complete_us
        {
            details.push(format!(
                "read op {} (of peer {}) completed at {}µs but contains write op {} at index {}, \
                 invoked later at {}µs",
                read_op.id, read.peer, read_op.complete_us, write.id, event.index, write.invoke_us
            ));
        }
    }
    details
}

/// A read that began after another read completed cannot return a shorter history.
fn reads_going_back(reads: &[(&Op, &ReadResult)]) -> Vec<String> {
    let earlier_reads = MaxBefore::new(reads.iter().map(|(op, read)| (op.complete_us, read.len, *op)).collect());
    let mut details = Vec::new();
    for (read_op, read) in reads {
        let length = read.len;
        if let Some((earlier_length, earlier)) = earlier_reads.before(read_op.invoke_us)
            && earlier_length > length
        {
            details.push(format!(
                "read op {} invoked at {}µs returned {length} event(s), but read op {} completed \
                 earlier at {}µs had returned {earlier_length}",
                read_op.id, read_op.invoke_us, earlier.id, earlier.complete_us
            ));
        }
    }
    details
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::history::{EnvoyCounts, EnvoyState, Fault, LeaderView, Projection, Write};

    /// A client write key, as unique as a real one.
    fn key(n: u64) -> String {
        format!("{:064x}", n * 7919)
    }

    /// A well-formed chain of `(kind, key)` entries: dense indexes, hashes linked from genesis.
    fn events(entries: &[(&str, String)]) -> Vec<Event> {
        let mut prev_hash = GENESIS_PREV_HASH.to_string();
        let mut chain = Vec::new();
        for (position, (kind, key)) in entries.iter().enumerate() {
            let hash = hex::encode(Sha256::digest(format!("{prev_hash}/{kind}/{key}")));
            chain.push(Event {
                index: position as u64 + 1,
                prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
                hash,
                kind: kind.to_string(),
                key: key.clone(),
            });
        }
        chain
    }

    fn ok(index: Option<u64>) -> Outcome {
        Outcome::Ok { index, read: None }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown { reason: "timeout".into() }
    }

    fn failed() -> Outcome {
        Outcome::Failed { reason: "invalid stack".into() }
    }

    fn publish(id: u64, client: u32, n: u64, (invoke_us, complete_us): (u64, u64), outcome: Outcome) -> Op {
        Op { id, client, kind: OpKind::Write(Write::Publish { key: key(n) }), invoke_us, complete_us, outcome }
    }

    fn token(id: u64, client: u32, n: u64, (invoke_us, complete_us): (u64, u64), outcome: Outcome) -> Op {
        Op { id, client, kind: OpKind::Write(Write::Token { key: key(n) }), invoke_us, complete_us, outcome }
    }

    fn read(id: u64, client: u32, peer: usize, (invoke_us, complete_us): (u64, u64), events: Vec<Event>) -> Op {
        Op {
            id,
            client,
            kind: OpKind::Read { peer },
            invoke_us,
            complete_us,
            outcome: Outcome::Ok { index: None, read: Some(ReadResult::of(peer, &events)) },
        }
    }

    /// The reference history of the valid run.
    fn entries() -> Vec<(&'static str, String)> {
        vec![
            ("ClusterKeyCreated", String::new()),
            ("PeerAdmitted", String::new()),
            ("StackPublished", key(1)), // op 1
            ("TokenCreated", key(2)),   // op 2
            ("StackPublished", key(3)), // op 3 (unknown, took effect)
            ("StackPublished", key(5)), // op 5
            ("PeerAdmitted", String::new()),
            ("TokenCreated", key(8)), // op 8
        ]
    }

    /// The valid run's history with its finals built from `entries`.
    fn history_with(entries: &[(&str, String)]) -> History {
        let chain = events(entries);
        let full = events(&self::entries());
        History {
            seed: 7,
            peers: 3,
            ops: vec![
                publish(1, 1, 1, (100, 200), ok(Some(3))),
                token(2, 2, 2, (150, 300), ok(None)),
                read(4, 3, 0, (350, 380), full[..4].to_vec()),
                publish(3, 1, 3, (400, 600), unknown()),
                token(6, 3, 6, (500, 550), failed()),
                publish(5, 2, 5, (700, 800), ok(Some(6))),
                read(7, 3, 1, (900, 950), full[..7].to_vec()),
                token(8, 1, 8, (1000, 1100), ok(None)),
                publish(9, 2, 9, (1200, 1300), unknown()),
            ],
            faults: vec![
                Fault { at_us: 320, what: "partition".into(), peers: vec![2], point: None },
                Fault { at_us: 1400, what: "heal".into(), peers: vec![0, 1, 2], point: None },
            ],
            healed_us: Some(1400),
            live_after_heal: Some(true),
            finals: vec![Some(chain.clone()), Some(chain.clone()), Some(chain)],
            projections: vec![Some(projection_of(entries)); 3],
            views: vec![
                view(0, 1, "leader", 1, Some(1)),
                view(1, 2, "follower", 1, Some(1)),
                view(2, 3, "candidate", 2, None),
                view(1, 2, "leader", 3, Some(2)),
                view(0, 1, "follower", 3, Some(2)),
            ],
        }
    }

    fn view(peer: usize, node_id: u64, role: &str, term: u64, leader: Option<u64>) -> LeaderView {
        LeaderView { at_us: 100 * term + peer as u64, peer, node_id, role: role.into(), term, leader }
    }

    #[test]
    fn election_safety_reports_two_leaders_in_one_term() {
        let mut h = valid();
        h.views.push(view(2, 3, "leader", 3, Some(3)));
        assert_reports(&h, &[ELECTION_SAFETY], ELECTION_SAFETY, &["term 3", "node 3 leads", "said node 2"]);
        let mut h = valid();
        h.views.push(view(2, 3, "follower", 1, Some(3)));
        assert_reports(&h, &[ELECTION_SAFETY], ELECTION_SAFETY, &["term 1: peer 2 (node 3)", "node 3 leads"]);
    }

    /// What a history of `entries` folds to: one stack version per publish, and each enrolled
    /// hostname as an envoy of that id, revoked when the history revokes it.
    fn projection_of(entries: &[(&str, String)]) -> Projection {
        let stack_version = entries.iter().filter(|(kind, _)| *kind == "StackPublished").count() as u64;
        let revoked: HashSet<&str> = entries.iter().filter_map(|(_, key)| key.strip_prefix("revoked:")).collect();
        let envoys = entries
            .iter()
            .filter(|(kind, _)| *kind == "EnvoyEnrolled")
            .map(|(_, host)| EnvoyState {
                envoy_id: host.clone(),
                hostname: host.clone(),
                revoked: revoked.contains(host.as_str()),
            })
            .collect();
        Projection { stack_version, envoys }
    }

    #[test]
    fn projections_report_a_peer_serving_other_than_its_history() {
        let mut h = valid();
        h.projections[1] = Some(Projection { stack_version: 2, envoys: Vec::new() });
        assert_reports(&h, &[PROJECTIONS], PROJECTIONS, &["peer 1 serves stack version 2", "3 publishes"]);
        let mut h = valid();
        h.projections[2] = None;
        assert_reports(&h, &[PROJECTIONS], PROJECTIONS, &["peer 2's projection could not be read"]);
        let mut h = valid();
        let ghost = EnvoyState { envoy_id: "e-1".into(), hostname: "ghost".into(), revoked: false };
        h.projections[0] = Some(Projection { stack_version: 3, envoys: vec![ghost] });
        assert_reports(&h, &[PROJECTIONS], PROJECTIONS, &["peer 0 lists envoy ghost", "never enrolls"]);
    }

    #[test]
    fn projections_follow_enrollments_and_revocations() {
        let mut with = entries();
        with.push(("EnvoyEnrolled", "web-1".into()));
        with.push(("EnvoyRevoked", "revoked:e-1".into()));
        let mut h = history_with(&with);
        let enroll = Op {
            id: 20,
            client: 4,
            kind: OpKind::Write(Write::Enroll { key: "web-1".into() }),
            invoke_us: 1310,
            complete_us: 1320,
            outcome: ok(None),
        };
        let revoke = Op {
            id: 21,
            client: 4,
            kind: OpKind::Write(Write::Revoke { key: "revoked:e-1".into() }),
            invoke_us: 1330,
            complete_us: 1340,
            outcome: ok(None),
        };
        h.ops.extend([enroll, revoke]);
        let revoked = EnvoyState { envoy_id: "e-1".into(), hostname: "web-1".into(), revoked: true };
        h.projections = vec![Some(Projection { stack_version: 3, envoys: vec![revoked.clone()] }); 3];
        assert!(check_all(&h).ok(), "{}", check_all(&h).summary());
        let active = EnvoyState { revoked: false, ..revoked };
        h.projections[1] = Some(Projection { stack_version: 3, envoys: vec![active] });
        assert_reports(&h, &[PROJECTIONS], PROJECTIONS, &["peer 1 shows envoy e-1 (web-1) as active", "revokes it"]);
        h.projections[1] = Some(Projection { stack_version: 3, envoys: Vec::new() });
        assert_reports(&h, &[PROJECTIONS], PROJECTIONS, &["peer 1 does not list envoy web-1"]);
    }

    #[test]
    fn an_envoy_list_must_match_the_history_up_to_where_it_was_read() {
        let mut with = entries();
        with.push(("EnvoyEnrolled", "web-1".into()));
        let mut h = history_with(&with);
        let enroll = Op {
            id: 20,
            client: 4,
            kind: OpKind::Write(Write::Enroll { key: "web-1".into() }),
            invoke_us: 1310,
            complete_us: 1320,
            outcome: ok(None),
        };
        let full = events(&with);
        let list = |listed: u64| {
            let mut read = ReadResult::of(0, &full);
            read.envoys = Some(EnvoyCounts { listed, revoked: 0 });
            Op {
                id: 21,
                client: 4,
                kind: OpKind::Read { peer: 0 },
                invoke_us: 1330,
                complete_us: 1340,
                outcome: Outcome::Ok { index: None, read: Some(read) },
            }
        };
        h.ops.extend([enroll, list(1)]);
        assert!(check_all(&h).ok(), "{}", check_all(&h).summary());
        h.ops.pop();
        h.ops.push(list(0));
        assert_reports(&h, &[PROJECTIONS], PROJECTIONS, &["envoy list op 21 (of peer 0) read at event 9", "enrolls 1"]);
    }

    fn valid() -> History {
        history_with(&entries())
    }

    fn op_mut(h: &mut History, id: u64) -> &mut Op {
        h.ops.iter_mut().find(|op| op.id == id).expect("op exists")
    }

    fn read_mut(h: &mut History, id: u64) -> &mut ReadResult {
        match &mut op_mut(h, id).outcome {
            Outcome::Ok { read: Some(read), .. } => read,
            _ => panic!("op {id} is not a successful read"),
        }
    }

    fn final_mut(h: &mut History, peer: usize) -> &mut Vec<Event> {
        h.finals[peer].as_mut().expect("peer was read")
    }

    /// The names of the checkers that reported something.
    fn failing(report: &Report) -> Vec<&'static str> {
        report.checkers.iter().filter(|(_, violations)| !violations.is_empty()).map(|(name, _)| *name).collect()
    }

    /// Asserts exactly `checkers` report, and `checker`'s details mention every one of `needles`.
    #[track_caller]
    fn assert_reports(h: &History, checkers: &[&str], checker: &str, needles: &[&str]) {
        let report = check_all(h);
        assert_eq!(failing(&report), checkers, "{}", report.summary());
        let details: Vec<&str> =
            report.violations().filter(|v| v.checker == checker).map(|v| v.detail.as_str()).collect();
        for needle in needles {
            assert!(
                details.iter().any(|detail| detail.contains(needle)),
                "no {checker} detail mentions {needle:?}: {details:#?}"
            );
        }
    }

    #[test]
    fn valid_history_passes_every_checker() {
        let report = check_all(&valid());
        assert!(report.ok(), "{}", report.summary());
        assert_eq!(report.violations().count(), 0);
    }

    #[test]
    fn check_all_runs_every_checker_in_order() {
        let names: Vec<&str> = check_all(&valid()).checkers.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [LOST_WRITES, PHANTOM_WRITES, CHAIN, CONVERGED, PROJECTIONS, LINEARIZABLE, ELECTION_SAFETY, LIVENESS]
        );
    }

    #[test]
    fn summary_names_every_checker() {
        let summary = check_all(&valid()).summary();
        for name in
            [LOST_WRITES, PHANTOM_WRITES, CHAIN, CONVERGED, PROJECTIONS, LINEARIZABLE, ELECTION_SAFETY, LIVENESS]
        {
            assert!(summary.lines().any(|line| line == format!("{name}: ok")), "{summary}");
        }
        let mut h = valid();
        h.live_after_heal = Some(false);
        let summary = check_all(&h).summary();
        assert_eq!(summary.lines().count(), 8);
        assert!(summary.lines().any(|line| line.starts_with("liveness: 1 violation(s): after the heal")), "{summary}");
    }

    #[test]
    fn a_reloaded_history_checks_the_same() {
        let text = serde_json::to_string(&valid()).expect("serialises");
        let reloaded: History = serde_json::from_str(&text).expect("parses");
        assert!(check_all(&reloaded).ok());
        assert!(serde_json::to_string(&check_all(&reloaded)).is_ok());
    }

    #[test]
    fn lost_writes_reports_an_acknowledged_write_missing_from_the_finals() {
        let mut without = entries();
        without.retain(|(_, k)| *k != key(8));
        let h = history_with(&without);
        assert_reports(&h, &[LOST_WRITES], LOST_WRITES, &["op 8", "client 1", &key(8)]);
    }

    #[test]
    fn lost_writes_reports_when_no_final_history_could_be_read() {
        let mut h = valid();
        h.finals = vec![None, None, None];
        assert_reports(&h, &[LOST_WRITES, CONVERGED], LOST_WRITES, &["no peer's final history could be read"]);
    }

    #[test]
    fn phantom_writes_reports_a_key_no_client_wrote() {
        let mut with = entries();
        with.push(("TokenCreated", key(77)));
        assert_reports(&history_with(&with), &[PHANTOM_WRITES], PHANTOM_WRITES, &["event 9", "no client", &key(77)]);
    }

    #[test]
    fn a_token_whose_answer_was_lost_may_account_for_one_unclaimed_token_only() {
        let mut with = entries();
        with.push(("TokenCreated", key(77)));
        let mut h = history_with(&with);
        let lost = Op {
            id: 90,
            client: 9,
            kind: OpKind::Write(Write::Token { key: String::new() }),
            invoke_us: 900,
            complete_us: 950,
            outcome: unknown(),
        };
        h.ops.push(lost);
        assert!(phantom_writes(&h).is_empty(), "{:?}", phantom_writes(&h));
        with.push(("TokenCreated", key(78)));
        let mut h2 = history_with(&with);
        h2.ops.push(h.ops.last().expect("pushed").clone());
        let found = phantom_writes(&h2);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains(&key(78)), "{found:?}");
    }

    #[test]
    fn phantom_writes_reports_a_failed_write_that_took_effect() {
        let mut with = entries();
        with.push(("TokenCreated", key(6)));
        assert_reports(&history_with(&with), &[PHANTOM_WRITES], PHANTOM_WRITES, &["event 9", "op 6 (failed)"]);
    }

    #[test]
    fn phantom_writes_reports_a_write_applied_twice() {
        let mut with = entries();
        with.push(("StackPublished", key(5)));
        assert_reports(&history_with(&with), &[PHANTOM_WRITES], PHANTOM_WRITES, &["events 6 and 9", "op 5", "twice"]);
    }

    #[test]
    fn chain_reports_a_broken_prev_hash_link() {
        let mut h = valid();
        final_mut(&mut h, 2)[3].prev_hash = key(1234);
        assert_reports(&h, &[CHAIN], CHAIN, &["peer 2's final history", "index 4", "prev_hash"]);
    }

    #[test]
    fn chain_reports_a_first_event_not_linked_to_genesis() {
        let mut h = valid();
        let mut unlinked = events(&entries())[..4].to_vec();
        unlinked[0].prev_hash = key(1);
        *read_mut(&mut h, 4) = ReadResult::of(0, &unlinked);
        assert_reports(&h, &[CHAIN], CHAIN, &["read op 4 (of peer 0)", "not one hash chain", "index 1"]);
    }

    #[test]
    fn chain_reports_a_gap_in_indexes() {
        let mut h = valid();
        final_mut(&mut h, 1)[4].index = 6;
        assert_reports(&h, &[CHAIN], CHAIN, &["peer 1's final history: event 5 has index 6, expected 5"]);
    }

    #[test]
    fn chain_reports_a_peer_that_diverges() {
        let mut forked = entries();
        forked[4] = ("PeerAdmitted", String::new());
        let mut h = valid();
        h.finals[2] = Some(events(&forked));
        // Same length, different last hash: the peers also did not converge.
        assert_reports(&h, &[CHAIN, CONVERGED], CHAIN, &["peer 2's final history diverges", "at index 5"]);
    }

    #[test]
    fn chain_reports_a_read_that_diverges() {
        let mut forked = entries();
        forked[4] = ("PeerAdmitted", String::new());
        let mut h = valid();
        *read_mut(&mut h, 7) = ReadResult::of(1, &events(&forked)[..7]);
        assert_reports(&h, &[CHAIN], CHAIN, &["read op 7 (of peer 1) diverges from peer 0's", "at index 7"]);
    }

    #[test]
    fn chain_reports_a_read_longer_than_every_final_history() {
        let mut longer = entries();
        longer.push(("TokenCreated", key(9)));
        let mut h = valid();
        h.ops.push(read(13, 3, 2, (1500, 1600), events(&longer)));
        assert_reports(
            &h,
            &[CHAIN],
            CHAIN,
            &["read op 13 (of peer 2) returned 9 events, more than any peer holds at the end"],
        );
    }

    #[test]
    fn converged_reports_finals_of_different_lengths() {
        let mut h = valid();
        final_mut(&mut h, 1).truncate(6);
        assert_reports(&h, &[CONVERGED], CONVERGED, &["peer 1 ended with 6 event(s)", "peer 0 with 8 event(s)"]);
    }

    #[test]
    fn converged_reports_a_peer_not_read() {
        let mut h = valid();
        h.finals[2] = None;
        assert_reports(&h, &[CONVERGED], CONVERGED, &["peer 2's final history could not be read"]);
        h.finals.truncate(2);
        assert_reports(&h, &[CONVERGED], CONVERGED, &["peer 2's final history could not be read"]);
    }

    #[test]
    fn linearizable_reports_acknowledged_writes_out_of_real_time_order() {
        // Op 10 starts after op 8 completed, yet is ordered before it.
        let mut swapped = entries();
        swapped.insert(7, ("TokenCreated", key(10)));
        let mut h = history_with(&swapped);
        h.ops.push(token(10, 3, 10, (1150, 1180), ok(None)));
        assert_reports(
            &h,
            &[LINEARIZABLE],
            LINEARIZABLE,
            &["write op 8 completed", "write op 10 was invoked", "index 9"],
        );
    }

    #[test]
    fn linearizable_reports_an_unknown_write_ordered_before_an_earlier_acknowledged_write() {
        // Unknown op 9 was invoked after op 8 completed, yet took effect before it.
        let mut swapped = entries();
        swapped.insert(7, ("StackPublished", key(9)));
        let h = history_with(&swapped);
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["write op 8 completed", "write op 9 was invoked"]);
    }

    #[test]
    fn linearizable_reports_a_stale_read() {
        let mut h = valid();
        let before_op_8 = events(&entries())[..7].to_vec();
        h.ops.push(read(11, 3, 0, (1150, 1160), before_op_8));
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["stale read: read op 11", "write op 8", "index 8"]);
    }

    #[test]
    fn linearizable_reports_a_read_that_sees_the_future() {
        // Read op 4 returns op 2's token, but now completes before op 2 was invoked.
        let mut h = valid();
        let read_op = op_mut(&mut h, 4);
        (read_op.invoke_us, read_op.complete_us) = (110, 140);
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["read op 4", "contains write op 2 at index 4"]);
        // One event shorter, it stops before op 2's token: only op 1's publish, invoked at 100.
        *read_mut(&mut h, 4) = ReadResult::of(0, &events(&entries())[..3]);
        assert!(check_all(&h).ok(), "{}", check_all(&h).summary());
    }

    #[test]
    fn linearizable_reports_an_answered_index_that_differs_from_the_position() {
        let mut h = valid();
        op_mut(&mut h, 1).outcome = ok(Some(4));
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["write op 1", "acknowledged at index 4 but is at index 3"]);
    }

    #[test]
    fn linearizable_reports_reads_going_back_in_time() {
        // Read op 12 starts after read op 7 returned 7 events, and returns 6.
        let mut h = valid();
        let shorter = events(&entries())[..6].to_vec();
        h.ops.push(read(12, 2, 0, (960, 990), shorter));
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["read op 12", "read op 7", "returned 7"]);
    }

    #[test]
    fn linearizable_reports_an_operation_completing_before_its_invocation() {
        let mut h = valid();
        let write = op_mut(&mut h, 9);
        (write.invoke_us, write.complete_us) = (1300, 1200);
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["op 9 (client 2) completed at 1200µs"]);
    }

    #[test]
    fn linearizable_reports_a_successful_read_without_result() {
        let mut h = valid();
        op_mut(&mut h, 7).outcome = ok(None);
        assert_reports(&h, &[LINEARIZABLE], LINEARIZABLE, &["read op 7 (client 3) succeeded but recorded no result"]);
    }

    #[test]
    fn liveness_reports_a_cluster_not_live_after_the_heal() {
        let mut h = valid();
        h.live_after_heal = Some(false);
        assert_reports(&h, &[LIVENESS], LIVENESS, &["no leader acknowledged a write within the liveness window"]);
        h.live_after_heal = None;
        assert_reports(&h, &[LIVENESS], LIVENESS, &["never established"]);
    }

    #[test]
    fn liveness_reports_a_run_that_never_healed() {
        let mut h = valid();
        h.healed_us = None;
        h.live_after_heal = None;
        assert_reports(&h, &[LIVENESS], LIVENESS, &["the run never healed"]);
    }

    #[test]
    fn violations_are_capped_per_checker() {
        let mut h = valid();
        for n in 0..25 {
            h.ops.push(token(100 + n, 9, 100 + n, (2000 + n * 10, 2005 + n * 10), ok(None)));
        }
        let lost = lost_writes(&h);
        assert_eq!(lost.len(), MAX_DETAILS + 1);
        assert_eq!(lost[MAX_DETAILS].detail, "… and 5 more");
        let summary = check_all(&h).summary();
        assert!(summary.lines().any(|line| line.starts_with("lost-writes: 25 violation(s): ")), "{summary}");
    }

    #[test]
    fn an_empty_history_is_reported_not_a_crash() {
        let report = check_all(&History::default());
        assert_eq!(failing(&report), [LOST_WRITES, LIVENESS]);
        let mut h = History { peers: 2, finals: vec![Some(Vec::new()), Some(Vec::new())], ..History::default() };
        h.healed_us = Some(0);
        h.live_after_heal = Some(true);
        assert!(check_all(&h).ok());
    }

    #[test]
    fn a_large_valid_history_passes() {
        const WRITES: u64 = 20_000;
        let entries: Vec<(&str, String)> = (0..WRITES).map(|n| ("TokenCreated", key(n + 1))).collect();
        let chain = events(&entries);
        let mut ops = Vec::new();
        for n in 0..WRITES {
            // Ten clients, each write overlapping its neighbours, ordered by invocation.
            let invoke = n * 10;
            ops.push(token(n, (n % 10) as u32, n + 1, (invoke, invoke + 95), ok(None)));
        }
        for r in 0..40 {
            let at = r * 5_000 + 3;
            // Writes complete at 10n + 95: those completed by `at` all precede the read's prefix.
            let seen = (at / 10 + 1).min(WRITES) as usize;
            ops.push(read(WRITES + r, 100 + r as u32, 0, (at, at + 1), chain[..seen].to_vec()));
        }
        let h = History {
            peers: 3,
            ops,
            healed_us: Some(WRITES * 10 + 100),
            live_after_heal: Some(true),
            finals: vec![Some(chain.clone()), Some(chain.clone()), Some(chain)],
            ..History::default()
        };
        let report = check_all(&h);
        assert!(report.ok(), "{}", report.summary());
    }
}
