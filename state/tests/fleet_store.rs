//! The fleet snapshot in SQLite: what is written comes back, unchanged traits cost no
//! writes, freed trait rows go a round later, and a failed write leads to a full rewrite.

use proptest::prelude::*;
use vigo_proto::admin::RunSummary;
use vigo_state::{FleetIndex, FleetStore, Scope};

const GROUPS: usize = 4;

fn check_in(fleet: &FleetIndex, envoy: &str, counter: u64, traits: Option<&str>) {
    fleet.accept(envoy, counter, counter as i64 * 1_000).unwrap();
    let root = traits.map(|json| fleet.trait_store().intern_json(json).unwrap());
    let hash = traits.map(|json| json.len().to_le_bytes().to_vec()).unwrap_or_default();
    fleet.record_check_in(envoy, b"fp", &hash, root);
}

fn traits_of(fleet: &FleetIndex, envoy: &str) -> Option<String> {
    let obs = fleet.get(envoy)?;
    obs.traits.map(|root| fleet.trait_store().to_json(root))
}

fn reload(path: &std::path::Path) -> (FleetIndex, vigo_state::LoadReport) {
    let fleet = FleetIndex::default();
    let report = FleetStore::open(path).unwrap().load(&fleet).unwrap();
    (fleet, report)
}

#[test]
fn a_flushed_fleet_comes_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let fleet = FleetIndex::default();
    check_in(&fleet, "e1", 3, Some(r#"{"os":{"family":"debian"},"packages":[{"name":"nginx","version":"1.22"}]}"#));
    check_in(&fleet, "e2", 7, Some(r#"{"os":{"family":"debian"},"packages":[]}"#));
    check_in(&fleet, "e3", 1, None);
    fleet.record_run("e2", RunSummary { run_id: 9, started_at_ms: 5, changed: 2, ..Default::default() });

    let mut store = FleetStore::open(&path).unwrap();
    let written = store.flush(&fleet, Scope::All).unwrap();
    assert_eq!(written.envoys, 3);
    assert_eq!(written.nodes, fleet.trait_store().stats().nodes, "every distinct value once");
    drop(store);

    let (back, report) = reload(&path);
    assert_eq!((report.envoys, report.with_traits, report.traits_lost, report.unreadable), (3, 2, 0, 0));
    for envoy in ["e1", "e2", "e3"] {
        let (was, is) = (fleet.get(envoy).unwrap(), back.get(envoy).unwrap());
        assert_eq!(traits_of(&back, envoy), traits_of(&fleet, envoy), "{envoy}");
        assert_eq!(
            (
                is.last_seen_ms,
                is.last_counter,
                &is.traits_hash,
                &is.bundle_fingerprint,
                &is.last_run,
                is.reports_received
            ),
            (
                was.last_seen_ms,
                was.last_counter,
                &was.traits_hash,
                &was.bundle_fingerprint,
                &was.last_run,
                was.reports_received
            ),
            "{envoy}"
        );
    }
    assert_eq!(back.trait_store().stats(), fleet.trait_store().stats());
    assert_eq!(back.n_with_traits(), 2);
    // The anti-replay counter survives the restart.
    assert!(back.accept("e2", 7, 99).is_err());
    back.accept("e2", 8, 99).unwrap();
}

#[test]
fn an_envoy_that_only_checks_in_writes_its_record_and_no_trait_rows() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FleetIndex::default();
    let mut store = FleetStore::open(&dir.path().join("fleet.sqlite")).unwrap();
    check_in(&fleet, "e1", 1, Some(r#"{"packages":["a","b","c"]}"#));
    assert!(store.flush(&fleet, Scope::All).unwrap().nodes > 0);
    assert_eq!(store.flush(&fleet, Scope::All).unwrap().envoys, 0, "nothing changed, nothing written");

    check_in(&fleet, "e1", 2, None);
    let written = store.flush(&fleet, Scope::All).unwrap();
    assert_eq!((written.envoys, written.nodes), (1, 0));
    assert_eq!(store.record("e1").unwrap().unwrap().last_counter, 2);

    // A second host with the same traits writes no rows either: they are the first one's.
    check_in(&fleet, "e2", 1, Some(r#"{"packages":["a","b","c"]}"#));
    assert_eq!(store.flush(&fleet, Scope::All).unwrap().nodes, 0);
    // One more package is one new string and the arrays and objects above it.
    check_in(&fleet, "e3", 1, Some(r#"{"packages":["a","b","c","d"]}"#));
    assert_eq!(store.flush(&fleet, Scope::All).unwrap().nodes, 3);
}

#[test]
fn groups_write_their_own_shards_and_freed_rows_go_a_round_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let fleet = FleetIndex::default();
    let mut store = FleetStore::open(&path).unwrap();
    let envoys: Vec<String> = (0..64).map(|i| format!("envoy-{i}")).collect();
    for (i, envoy) in envoys.iter().enumerate() {
        check_in(&fleet, envoy, 1, Some(&format!(r#"{{"n":{i},"shared":"yes"}}"#)));
    }
    let mut written = 0;
    for group in 0..GROUPS {
        written += store.flush(&fleet, Scope::Group(group, GROUPS)).unwrap().envoys;
    }
    assert_eq!(written, envoys.len(), "every envoy is in exactly one group");
    let (_, rows) = store.counts().unwrap();
    assert_eq!(rows, fleet.trait_store().stats().nodes);

    // New traits for every envoy free the old documents. Their rows stay until every group
    // has written its envoys' new records, so a crash at any point still finds them.
    for (i, envoy) in envoys.iter().enumerate() {
        check_in(&fleet, envoy, 2, Some(&format!(r#"{{"n":{},"shared":"yes"}}"#, i + 1000)));
    }
    for group in 0..GROUPS {
        assert_eq!(store.flush(&fleet, Scope::Group(group, GROUPS)).unwrap().deleted, 0, "group {group}");
        let (back, report) = reload(&path);
        assert_eq!(report.traits_lost, 0, "after group {group}");
        assert_eq!(back.len(), envoys.len());
    }
    let deleted: usize = (0..GROUPS).map(|g| store.flush(&fleet, Scope::Group(g, GROUPS)).unwrap().deleted).sum();
    assert_eq!(deleted, 2 * envoys.len(), "each old document and its number");
    let (_, rows) = store.counts().unwrap();
    assert_eq!(rows, fleet.trait_store().stats().nodes, "the file holds what the store holds");
    let (back, _) = reload(&path);
    assert_eq!(traits_of(&back, "envoy-5").unwrap(), r#"{"n":1005,"shared":"yes"}"#);
}

#[test]
fn a_failed_write_is_followed_by_a_full_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let fleet = FleetIndex::default();
    let mut store = FleetStore::open(&path).unwrap();
    check_in(&fleet, "e1", 1, Some(r#"{"a":[1,2]}"#));
    check_in(&fleet, "e2", 1, Some(r#"{"b":[1,2]}"#));
    store.flush(&fleet, Scope::All).unwrap();

    // Another connection holds the write lock: the next write fails.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE; DELETE FROM trait_nodes;").unwrap();
    check_in(&fleet, "e1", 2, Some(r#"{"a":[1,2,3]}"#));
    assert!(store.flush(&fleet, Scope::All).is_err());
    // What the other connection did never commits; the file is as the last flush left it.
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    let rewritten = store.flush(&fleet, Scope::Group(1, GROUPS)).unwrap();
    assert_eq!(rewritten.envoys, 2, "the whole fleet, whatever the group");
    assert_eq!(rewritten.nodes, fleet.trait_store().stats().nodes);
    let (back, report) = reload(&path);
    assert_eq!(report.traits_lost, 0);
    assert_eq!(traits_of(&back, "e1").unwrap(), r#"{"a":[1,2,3]}"#);
    assert_eq!(traits_of(&back, "e2").unwrap(), r#"{"b":[1,2]}"#);
}

#[test]
fn missing_rows_cost_an_envoy_its_traits_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let fleet = FleetIndex::default();
    let mut store = FleetStore::open(&path).unwrap();
    check_in(&fleet, "e1", 4, Some(r#"{"own":"one","shared":"x"}"#));
    check_in(&fleet, "e2", 5, Some(r#"{"own":"two","shared":"x"}"#));
    store.flush(&fleet, Scope::All).unwrap();
    drop(store);
    // Damage the file from outside: drop e1's root row and garble another.
    let e1_root = FleetStore::open(&path).unwrap().record("e1").unwrap().unwrap().traits_root;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("DELETE FROM trait_nodes WHERE row = ?1", [e1_root]).unwrap();
    conn.execute("INSERT INTO trait_nodes (row, node) VALUES (9999, x'ffff')", []).unwrap();
    drop(conn);

    let (back, report) = reload(&path);
    assert_eq!((report.envoys, report.with_traits, report.traits_lost), (2, 1, 1));
    let e1 = back.get("e1").unwrap();
    assert_eq!((e1.traits, e1.traits_hash.is_empty(), e1.last_counter), (None, true, 4));
    assert!(!back.has_traits("e1", &fleet.get("e1").unwrap().traits_hash), "e1 will be asked again");
    assert_eq!(traits_of(&back, "e2").unwrap(), r#"{"own":"two","shared":"x"}"#);
    // The rows nothing uses (e1's "one", the garbled row) are shed by the next flushes.
    let mut store = FleetStore::open(&path).unwrap();
    store.flush(&back, Scope::All).unwrap();
    assert_eq!(store.counts().unwrap().1, back.trait_store().stats().nodes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the mix of check-ins and flushes (groups in turn, as the server takes them), a
    /// reload at any point rebuilds every envoy's traits as of its group's last flush, and
    /// nothing is lost.
    #[test]
    fn a_reload_at_any_point_finds_every_flushed_document(
        steps in prop::collection::vec((0usize..12, 0u8..4, any::<bool>()), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.sqlite");
        let fleet = FleetIndex::default();
        let mut store = FleetStore::open(&path).unwrap();
        // Loaded, so large values (`big`) leave memory once written and are read back.
        store.load(&fleet).unwrap();
        let (mut counter, mut group) = (0, 0);
        let big: Vec<String> = (0..80).map(|i| i.to_string()).collect();
        for (envoy, doc, flush) in steps {
            counter += 1;
            let big = if doc % 2 == 0 { format!(r#","big":[{doc},{}]"#, big.join(",")) } else { String::new() };
            let traits = format!(r#"{{"doc":{doc},"list":[{doc},"common"],"host":"h{envoy}"{big}}}"#);
            check_in(&fleet, &format!("e{envoy}"), counter, Some(&traits));
            if flush {
                store.flush(&fleet, Scope::Group(group, GROUPS)).unwrap();
                group = (group + 1) % GROUPS;
                let (back, report) = reload(&path);
                prop_assert_eq!(report.traits_lost, 0);
                prop_assert_eq!(report.unreadable, 0);
                for envoy in 0..12 {
                    let envoy = format!("e{envoy}");
                    if let Some(obs) = back.get(&envoy) {
                        // A document this envoy sent, and the hash it came with (keys sorted,
                        // the text is as long as the one sent).
                        let json = traits_of(&back, &envoy).unwrap();
                        prop_assert!(json.contains(&format!(r#""host":"h{}""#, &envoy[1..])), "{}", json);
                        prop_assert_eq!(json.len().to_le_bytes().to_vec(), obs.traits_hash);
                    }
                }
            }
        }
        store.flush(&fleet, Scope::All).unwrap();
        let (back, _) = reload(&path);
        for envoy in 0..12 {
            let envoy = format!("e{envoy}");
            prop_assert_eq!(traits_of(&back, &envoy), traits_of(&fleet, &envoy));
        }
        prop_assert_eq!(store.counts().unwrap().1, fleet.trait_store().stats().nodes);
    }
}
