//! The admissions roster: what every bolt of a federation agrees on, as a state-based CRDT.
//!
//! Which bolts exist and where (`bolts`), how each is doing (`health`), which hostnames each owns
//! (the glob patterns in its entry), and what operators changed by hand: `reassign` (`overrides`:
//! a hostname or a glob → a bolt) and `drain` (`drains`: a bolt → the bolt its envoys go to).
//!
//! Every value sits in a last-writer-wins register (`crdts::LWWReg`) whose marker is a [`Stamp`]:
//! a hybrid logical clock reading made unique by the writing bolt's id. A roster is a map of
//! such registers, and two rosters merge key by key, each register keeping the value with the
//! greater stamp. That is a join on a semilattice, so merging is commutative, associative and
//! idempotent: bolts that saw the same updates hold the same roster whatever the order they saw
//! them in, and gossip may repeat or reorder freely (property-tested below). Removal is a value
//! too (`None`), never a deleted key, so a later merge cannot resurrect what was removed unless a
//! newer write says so.

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};
use vigo_proto::events::{BoltDrained, BoltRegistered, EnvoysReassigned, RosterDelta, RosterStamp};

/// A bolt's id, as operators name it ("eu-1").
pub type BoltId = String;

/// A hybrid logical clock reading: wall-clock milliseconds, a counter for writes within the same
/// millisecond (or while the wall clock lags a stamp seen from another bolt), and the writing
/// bolt, which makes every stamp unique across the federation.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, never behind any stamp this bolt has seen.
    pub ms: u64,
    /// Orders writes within one `ms`.
    pub counter: u32,
    /// The bolt that wrote.
    pub actor: BoltId,
}

/// One bolt's clock: each stamp it hands out is greater than every stamp it has handed out or
/// observed, whatever the wall clock does.
#[derive(Debug, Clone)]
pub struct Clock {
    actor: BoltId,
    last: Stamp,
}

impl Clock {
    /// A clock for `actor`, starting from nothing seen.
    pub fn new(actor: impl Into<BoltId>) -> Clock {
        let actor = actor.into();
        Clock { last: Stamp { ms: 0, counter: 0, actor: actor.clone() }, actor }
    }

    /// The next stamp, given the wall clock's `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Stamp {
        let (ms, counter) = if now_ms > self.last.ms { (now_ms, 0) } else { (self.last.ms, self.last.counter + 1) };
        self.last = Stamp { ms, counter, actor: self.actor.clone() };
        self.last.clone()
    }

    /// Moves the clock past a stamp seen from another bolt.
    pub fn observe(&mut self, seen: &Stamp) {
        if (seen.ms, seen.counter) > (self.last.ms, self.last.counter) {
            self.last = Stamp { ms: seen.ms, counter: seen.counter, actor: self.actor.clone() };
        }
    }
}

/// Where a bolt is reached and which hostnames it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BoltEntry {
    /// host:port of each of its peers.
    pub addrs: Vec<String>,
    /// Hostname globs it owns (`web-*.eu.example.com`).
    pub patterns: Vec<String>,
}

/// How a bolt is doing, as last measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Health {
    /// It answered its last probe.
    pub online: bool,
    /// Probes failed in a row.
    pub failed_probes: u32,
    /// Envoys it holds.
    pub envoys: u64,
    /// Of those, compliant ones.
    pub compliant: u64,
    /// How long its last answered probe took.
    pub probe_ms: u32,
}

type Reg<V> = LWWReg<V, Stamp>;

/// The roster. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    bolts: BTreeMap<BoltId, Reg<Option<BoltEntry>>>,
    health: BTreeMap<BoltId, Reg<Health>>,
    overrides: BTreeMap<String, Reg<Option<BoltId>>>,
    drains: BTreeMap<BoltId, Reg<Option<Drain>>>,
    /// Certificates (SHA-256) of envoys revoked at any bolt: a grow-only set, so no bolt takes
    /// a revoked envoy in again, whichever bolt it turns to.
    #[serde(default)]
    revoked: std::collections::BTreeSet<[u8; 32]>,
}

/// Where a drained bolt's envoys go, and whether auto-drain made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Drain {
    /// The bolt its envoys go to.
    pub to: BoltId,
    /// Made by auto-drain after failed probes (lifted by it again), not by an operator.
    pub automatic: bool,
}

/// Writes `val` at `stamp` into the register under `key`, keeping whichever is newer.
fn write<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, Reg<V>>, key: K, val: V, stamp: Stamp) {
    match map.get_mut(&key) {
        Some(reg) => reg.update(val, stamp),
        None => {
            map.insert(key, LWWReg { val, marker: stamp });
        }
    }
}

fn merge_map<K: Ord, V: PartialEq>(into: &mut BTreeMap<K, Reg<V>>, from: BTreeMap<K, Reg<V>>) {
    for (key, reg) in from {
        write(into, key, reg.val, reg.marker);
    }
}

impl Roster {
    /// Adds or changes bolt `id`.
    pub fn put_bolt(&mut self, id: &str, entry: BoltEntry, stamp: Stamp) {
        write(&mut self.bolts, id.to_string(), Some(entry), stamp);
    }

    /// Removes bolt `id` (a tombstone: it stays removed until a newer `put_bolt`).
    pub fn remove_bolt(&mut self, id: &str, stamp: Stamp) {
        write(&mut self.bolts, id.to_string(), None, stamp);
    }

    /// Records how bolt `id` is doing.
    pub fn put_health(&mut self, id: &str, health: Health, stamp: Stamp) {
        write(&mut self.health, id.to_string(), health, stamp);
    }

    /// `reassign`: envoys whose hostname is `hostname_or_glob` belong to bolt `to`; `None` lifts
    /// the override.
    pub fn reassign(&mut self, hostname_or_glob: &str, to: Option<&str>, stamp: Stamp) {
        write(&mut self.overrides, hostname_or_glob.to_string(), to.map(str::to_string), stamp);
    }

    /// `drain`: the envoys bolt `from` owns go to bolt `to`; `None` ends the drain.
    pub fn drain(&mut self, from: &str, to: Option<&str>, automatic: bool, stamp: Stamp) {
        let drain = to.map(|to| Drain { to: to.to_string(), automatic });
        write(&mut self.drains, from.to_string(), drain, stamp);
    }

    /// The bolts that exist, by id.
    pub fn bolts(&self) -> impl Iterator<Item = (&BoltId, &BoltEntry)> {
        self.bolts.iter().filter_map(|(id, reg)| reg.val.as_ref().map(|entry| (id, entry)))
    }

    /// Bolt `id`'s entry, if it exists.
    pub fn bolt(&self, id: &str) -> Option<&BoltEntry> {
        self.bolts.get(id).and_then(|reg| reg.val.as_ref())
    }

    /// How bolt `id` was last seen doing.
    pub fn health(&self, id: &str) -> Option<&Health> {
        self.health.get(id).map(|reg| &reg.val)
    }

    /// The overrides in force: hostname or glob → bolt.
    pub fn overrides(&self) -> impl Iterator<Item = (&String, &BoltId)> {
        self.overrides.iter().filter_map(|(key, reg)| reg.val.as_ref().map(|to| (key, to)))
    }

    /// Records that the envoy with this certificate was revoked (at any bolt), for good.
    pub fn revoke(&mut self, cert_sha256: [u8; 32]) {
        self.revoked.insert(cert_sha256);
    }

    /// How many envoys were revoked at any bolt.
    pub fn n_revoked(&self) -> usize {
        self.revoked.len()
    }

    /// Whether the envoy with this certificate was revoked at some bolt.
    pub fn is_revoked(&self, cert_sha256: &[u8; 32]) -> bool {
        self.revoked.contains(cert_sha256)
    }

    /// Where bolt `from` is drained to, if it is.
    pub fn drained_to(&self, from: &str) -> Option<&BoltId> {
        self.drain_of(from).map(|d| &d.to)
    }

    /// Bolt `from`'s drain, if it is drained.
    pub fn drain_of(&self, from: &str) -> Option<&Drain> {
        self.drains.get(from).and_then(|reg| reg.val.as_ref())
    }

    /// Every stamp in the roster, for a clock to observe after a merge.
    pub fn stamps(&self) -> impl Iterator<Item = &Stamp> {
        let bolts = self.bolts.values().map(|reg| &reg.marker);
        let health = self.health.values().map(|reg| &reg.marker);
        let overrides = self.overrides.values().map(|reg| &reg.marker);
        let drains = self.drains.values().map(|reg| &reg.marker);
        bolts.chain(health).chain(overrides).chain(drains)
    }
}

/// How specific a hostname glob is: its characters that are not wildcards. An exact hostname
/// beats `web-*.eu`, which beats `*.eu`, which beats `*`.
fn specificity(pattern: &str) -> usize {
    pattern.chars().filter(|c| !matches!(c, '*' | '?' | '[' | ']')).count()
}

/// A roster's routing with its globs compiled, for deciding the owner of many hostnames.
#[derive(Debug, Default)]
pub struct Router {
    /// Reassigns to existing bolts: (matcher, specificity, pattern, bolt).
    overrides: Vec<(globset::GlobMatcher, usize, String, BoltId)>,
    /// Every existing bolt's patterns: (matcher, specificity, bolt).
    patterns: Vec<(globset::GlobMatcher, usize, BoltId)>,
    /// Drains between existing bolts.
    drains: BTreeMap<BoltId, BoltId>,
}

impl Router {
    /// Compiles `roster`'s routing; a glob that does not compile matches nothing.
    pub fn new(roster: &Roster) -> Router {
        let compile = |pattern: &str| globset::Glob::new(pattern).ok().map(|g| g.compile_matcher());
        let overrides = roster
            .overrides()
            .filter(|(_, to)| roster.bolt(to).is_some())
            .filter_map(|(pattern, to)| Some((compile(pattern)?, specificity(pattern), pattern.clone(), to.clone())))
            .collect();
        let patterns = roster
            .bolts()
            .flat_map(|(id, entry)| entry.patterns.iter().map(move |pattern| (id, pattern)))
            .filter_map(|(id, pattern)| Some((compile(pattern)?, specificity(pattern), id.clone())))
            .collect();
        let drains = roster
            .bolts()
            .filter_map(|(id, _)| {
                Some((id.clone(), roster.drained_to(id).filter(|to| roster.bolt(to).is_some())?.clone()))
            })
            .collect();
        Router { overrides, patterns, drains }
    }

    /// The bolt that owns `hostname`: the most specific `reassign` that matches it, else the
    /// bolt whose pattern matches it most specifically (ties: the smaller bolt id); then, if
    /// that bolt is drained, where its drain leads (followed through further drains, never in a
    /// circle). Only bolts that exist are owners; `None` when none matches.
    pub fn owner(&self, hostname: &str) -> Option<&str> {
        let reassigned = self
            .overrides
            .iter()
            .filter(|(matcher, ..)| matcher.is_match(hostname))
            .max_by(|(_, a, a_pattern, _), (_, b, b_pattern, _)| a.cmp(b).then_with(|| b_pattern.cmp(a_pattern)))
            .map(|(.., to)| to);
        let owner = reassigned.or_else(|| {
            self.patterns
                .iter()
                .filter(|(matcher, ..)| matcher.is_match(hostname))
                .max_by(|(_, a, a_id), (_, b, b_id)| a.cmp(b).then_with(|| b_id.cmp(a_id)))
                .map(|(.., id)| id)
        })?;
        // At most one hop per drain: a circle of drains ends where the hops run out, the same
        // bolt on every bolt (no allocation: this runs on every check-in of a bolt).
        let mut at = owner;
        for _ in 0..self.drains.len() {
            match self.drains.get(at) {
                Some(next) => at = next,
                None => break,
            }
        }
        Some(at)
    }
}

impl Roster {
    /// Merges `other` into this roster (the CRDT join; see [`CvRDT::merge`]).
    pub fn merge_in(&mut self, other: Roster) {
        CvRDT::merge(self, other);
    }

    /// The whole roster as the protobuf that gossip and `RosterMerged` events carry.
    pub fn to_delta(&self) -> RosterDelta {
        let stamp = |s: &Stamp| Some(RosterStamp { ms: s.ms, counter: s.counter, actor: s.actor.clone() });
        let mut delta = RosterDelta::default();
        for (id, reg) in &self.bolts {
            let registered = |entry: &BoltEntry| BoltRegistered {
                bolt: id.clone(),
                addrs: entry.addrs.clone(),
                patterns: entry.patterns.clone(),
                stamp: stamp(&reg.marker),
            };
            match &reg.val {
                Some(entry) => delta.bolts.push(registered(entry)),
                None => delta.removed.push(registered(&BoltEntry::default())),
            }
        }
        for (hostname, reg) in &self.overrides {
            let to = reg.val.clone().unwrap_or_default();
            delta.reassigned.push(EnvoysReassigned { hostname: hostname.clone(), to, stamp: stamp(&reg.marker) });
        }
        for (bolt, reg) in &self.drains {
            let (to, automatic) = reg.val.as_ref().map_or((String::new(), false), |d| (d.to.clone(), d.automatic));
            delta.drains.push(BoltDrained { bolt: bolt.clone(), to, stamp: stamp(&reg.marker), automatic });
        }
        delta.revoked = self.revoked.iter().map(|c| c.to_vec()).collect();
        delta
    }
}

impl CvRDT for Roster {
    type Validation = std::convert::Infallible;

    /// Stamps are unique per write (the actor is part of them), so two registers never hold
    /// different values under one stamp: every merge is valid.
    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        merge_map(&mut self.bolts, other.bolts);
        merge_map(&mut self.health, other.health);
        merge_map(&mut self.overrides, other.overrides);
        merge_map(&mut self.drains, other.drains);
        self.revoked.extend(other.revoked);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_clock_never_goes_back_and_passes_what_it_saw() {
        let mut clock = Clock::new("a");
        let first = clock.tick(100);
        let second = clock.tick(90);
        assert!(second > first, "a wall clock going back does not");
        assert_eq!((second.ms, second.counter), (100, 1));
        clock.observe(&Stamp { ms: 500, counter: 7, actor: "b".into() });
        let third = clock.tick(200);
        assert_eq!((third.ms, third.counter, third.actor.as_str()), (500, 8, "a"));
    }

    #[test]
    fn removal_and_lifted_overrides_are_values_that_newer_writes_replace() {
        let mut clock = Clock::new("a");
        let mut roster = Roster::default();
        roster.put_bolt(
            "eu-1",
            BoltEntry { addrs: vec!["10.0.0.1:1530".into()], patterns: vec!["*.eu".into()] },
            clock.tick(1),
        );
        let removed = {
            let mut r = roster.clone();
            r.remove_bolt("eu-1", clock.tick(2));
            r
        };
        let mut merged = roster.clone();
        merged.merge(removed.clone());
        assert_eq!(merged.bolt("eu-1"), None, "an older put does not bring it back");
        merged.put_bolt("eu-1", BoltEntry::default(), clock.tick(3));
        assert!(merged.bolt("eu-1").is_some());
        merged.reassign("web-1.eu", Some("us-1"), clock.tick(4));
        merged.reassign("web-1.eu", None, clock.tick(5));
        assert_eq!(merged.overrides().count(), 0);
    }

    #[test]
    fn the_owner_is_the_most_specific_match_then_where_drains_lead() {
        let mut clock = Clock::new("a");
        let mut roster = Roster::default();
        let entry = |patterns: &[&str]| BoltEntry {
            addrs: vec!["127.0.0.1:1".into()],
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        };
        roster.put_bolt("eu-1", entry(&["*.eu.example.com"]), clock.tick(1));
        roster.put_bolt("eu-2", entry(&["db-*.eu.example.com"]), clock.tick(2));
        roster.put_bolt("us-1", entry(&["*"]), clock.tick(3));
        assert_eq!(Router::new(&roster).owner("web-1.eu.example.com"), Some("eu-1"));
        assert_eq!(Router::new(&roster).owner("db-1.eu.example.com"), Some("eu-2"));
        assert_eq!(Router::new(&roster).owner("anything"), Some("us-1"));

        roster.reassign("web-*.eu.example.com", Some("us-1"), clock.tick(4));
        roster.reassign("web-7.eu.example.com", Some("eu-2"), clock.tick(5));
        assert_eq!(Router::new(&roster).owner("web-1.eu.example.com"), Some("us-1"));
        assert_eq!(Router::new(&roster).owner("web-7.eu.example.com"), Some("eu-2"), "exact beats glob");

        // eu-2 drains to eu-1, eu-1 to us-1: its envoys end on us-1; a circle stops where it closes.
        roster.drain("eu-2", Some("eu-1"), false, clock.tick(6));
        roster.drain("eu-1", Some("us-1"), false, clock.tick(7));
        assert_eq!(Router::new(&roster).owner("db-1.eu.example.com"), Some("us-1"));
        roster.drain("us-1", Some("eu-2"), false, clock.tick(8));
        assert!(Router::new(&roster).owner("db-1.eu.example.com").is_some());
        // A removed bolt owns nothing, and nothing is reassigned or drained to it.
        roster.drain("us-1", None, false, clock.tick(9));
        roster.remove_bolt("us-1", clock.tick(10));
        assert_eq!(Router::new(&roster).owner("anything"), None);
        assert_eq!(Router::new(&roster).owner("web-1.eu.example.com"), Some("eu-1"));
    }

    /// One write by one of three bolts.
    #[derive(Debug, Clone)]
    enum Op {
        PutBolt(usize, u8, u8),
        RemoveBolt(usize),
        Health(usize, bool, u8),
        Reassign(u8, Option<usize>),
        Drain(usize, Option<usize>),
        Revoke(u8),
    }

    const BOLTS: [&str; 3] = ["eu-1", "us-1", "ap-1"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..4u8, 0..4u8).prop_map(|(b, a, p)| Op::PutBolt(b, a, p)),
            (0..3usize).prop_map(Op::RemoveBolt),
            (0..3usize, any::<bool>(), 0..5u8).prop_map(|(b, on, n)| Op::Health(b, on, n)),
            (0..4u8, proptest::option::of(0..3usize)).prop_map(|(h, to)| Op::Reassign(h, to)),
            (0..3usize, proptest::option::of(0..3usize)).prop_map(|(b, to)| Op::Drain(b, to)),
            (0..4u8).prop_map(Op::Revoke),
        ]
    }

    /// Each write as a roster of its own, stamped by the clock of the bolt (`actor`) that made it,
    /// at a wall time that may repeat or go back.
    fn writes() -> impl Strategy<Value = Vec<Roster>> {
        proptest::collection::vec((0..3usize, 0..20u64, op()), 1..24).prop_map(|ops| {
            let mut clocks: Vec<Clock> = BOLTS.iter().map(|b| Clock::new(*b)).collect();
            ops.into_iter()
                .map(|(actor, now, op)| {
                    let stamp = clocks[actor].tick(now);
                    let mut r = Roster::default();
                    match op {
                        Op::PutBolt(b, a, p) => r.put_bolt(
                            BOLTS[b],
                            BoltEntry { addrs: vec![format!("10.0.{b}.{a}:1530")], patterns: vec![format!("*-{p}")] },
                            stamp,
                        ),
                        Op::RemoveBolt(b) => r.remove_bolt(BOLTS[b], stamp),
                        Op::Health(b, online, n) => r.put_health(
                            BOLTS[b],
                            Health { online, failed_probes: n.into(), envoys: n.into(), ..Health::default() },
                            stamp,
                        ),
                        Op::Reassign(h, to) => r.reassign(&format!("web-{h}"), to.map(|t| BOLTS[t]), stamp),
                        Op::Drain(b, to) => r.drain(BOLTS[b], to.map(|t| BOLTS[t]), b % 2 == 0, stamp),
                        Op::Revoke(c) => r.revoke([c; 32]),
                    }
                    r
                })
                .collect()
        })
    }

    fn fold(parts: impl IntoIterator<Item = Roster>) -> Roster {
        let mut all = Roster::default();
        for part in parts {
            all.merge(part);
        }
        all
    }

    fn merged(a: &Roster, b: &Roster) -> Roster {
        let mut m = a.clone();
        m.merge(b.clone());
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn merge_is_commutative_associative_and_idempotent(w in writes(), split in any::<(prop::sample::Index, prop::sample::Index)>()) {
            let (i, j) = (split.0.index(w.len() + 1), split.1.index(w.len() + 1));
            let (i, j) = (i.min(j), i.max(j));
            let a = fold(w[..i].iter().cloned());
            let b = fold(w[i..j].iter().cloned());
            let c = fold(w[j..].iter().cloned());
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab);
        }

        #[test]
        fn any_delivery_order_with_repeats_gives_the_same_roster(
            w in writes(),
            order in any::<u64>(),
        ) {
            let expected = fold(w.iter().cloned());
            // Deliver in a shuffled order, some updates twice, some merged via a third bolt first.
            let mut shuffled: Vec<Roster> = w.iter().cloned().chain(w.iter().step_by(3).cloned()).collect();
            let mut state = order;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let (half, rest) = shuffled.split_at(shuffled.len() / 2);
            let relay = fold(half.iter().cloned());
            let got = fold(rest.iter().cloned().chain(std::iter::once(relay)));
            prop_assert_eq!(got, expected);
        }
    }
}
