//! Large trait values (a host's package list) live in the fleet snapshot only once it holds
//! them: read back the same on every path, freed when replaced, and brought back into memory
//! before the snapshot is written anew.

use vigo_state::{FleetIndex, FleetStore, Scope};

/// A host's traits: shared package entries, one version of its own, a package list of 40.
fn doc(host: u32, version: u32) -> String {
    let packages: Vec<String> = (0..40)
        .map(|p| {
            let v = if p == host % 40 { format!("2.{version}") } else { "1.0".to_string() };
            format!(r#""pkg{p:02}":{{"arch":"amd64","version":"{v}"}}"#)
        })
        .collect();
    format!(r#"{{"host":"h{host}","os":{{"family":"debian"}},"packages":{{{}}}}}"#, packages.join(","))
}

fn check_in(fleet: &FleetIndex, envoy: &str, counter: u64, json: &str) {
    fleet.accept(envoy, counter, counter as i64).unwrap();
    let root = fleet.trait_store().intern_json(json).unwrap();
    fleet.record_check_in(envoy, b"fp", &json.len().to_le_bytes(), Some(root));
}

fn traits_of(fleet: &FleetIndex, envoy: &str) -> Option<String> {
    fleet.get(envoy)?.traits.map(|root| fleet.trait_store().to_json(root))
}

/// A fleet backed by the snapshot at `path` (loaded, so large values may leave memory).
fn backed(path: &std::path::Path) -> (FleetIndex, FleetStore, vigo_state::LoadReport) {
    let fleet = FleetIndex::default();
    let mut store = FleetStore::open(path).unwrap();
    let report = store.load(&fleet).unwrap();
    (fleet, store, report)
}

fn sorted(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json).unwrap().to_string()
}

#[test]
fn large_values_leave_memory_once_written_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let (fleet, mut store, _) = backed(&path);
    for host in 0..10 {
        check_in(&fleet, &format!("e{host}"), 1, &doc(host, 1));
    }
    let hot = fleet.trait_store().stats();
    assert_eq!(hot.cold, 0, "nothing leaves memory before the snapshot holds it");

    store.flush(&fleet, Scope::All).unwrap();
    let cold = fleet.trait_store().stats();
    assert_eq!(cold.cold, 10, "each host's package list, and nothing else");
    assert_eq!(cold.nodes, hot.nodes, "the same values, fewer of them in memory");
    assert!(cold.heap_bytes + 10 * 80 * 4 <= hot.heap_bytes, "{cold:?} against {hot:?}");

    let store_ = fleet.trait_store();
    for host in 0..10 {
        let envoy = format!("e{host}");
        assert_eq!(traits_of(&fleet, &envoy).unwrap(), sorted(&doc(host, 1)), "{envoy}");
        let root = fleet.get(&envoy).unwrap().traits.unwrap();
        let packages = store_.member(root, "packages").unwrap();
        assert_eq!(store_.len(packages), 40);
        assert_eq!(store_.kind(packages), vigo_state::NodeKind::Object);
        let own = store_.member(packages, &format!("pkg{:02}", host % 40)).unwrap();
        assert_eq!(store_.to_json(store_.member(own, "version").unwrap()), r#""2.1""#);
        assert_eq!(store_.members(packages).len(), 40);
    }
    drop(store);

    // A restart reads the large values back on demand, not into memory.
    let (back, _store, report) = backed(&path);
    assert_eq!((report.with_traits, report.cold), (10, 10));
    assert_eq!(back.trait_store().stats().cold, 10);
    for host in 0..10 {
        assert_eq!(traits_of(&back, &format!("e{host}")).unwrap(), sorted(&doc(host, 1)));
    }
}

#[test]
fn a_replaced_document_frees_its_cold_values_and_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let (fleet, mut store, _) = backed(&path);
    for host in 0..4 {
        check_in(&fleet, &format!("e{host}"), 1, &doc(host, 1));
    }
    store.flush(&fleet, Scope::All).unwrap();
    assert_eq!(fleet.trait_store().stats().cold, 4);

    // e0 sends new traits: the check-in only queues the change; the writer frees the old
    // package list (read back from the file) and, a round later, its rows.
    check_in(&fleet, "e0", 2, &doc(0, 2));
    assert_eq!(fleet.trait_store().stats().cold, 4, "the old list waits for the writer");
    store.flush(&fleet, Scope::All).unwrap();
    store.flush(&fleet, Scope::All).unwrap();
    let stats = fleet.trait_store().stats();
    assert_eq!(stats.cold, 4, "e0's old list went, its new one went cold");
    assert_eq!(store.counts().unwrap().1, stats.nodes, "the file holds what the store holds");
    assert_eq!(traits_of(&fleet, "e0").unwrap(), sorted(&doc(0, 2)));
    drop(store);
    let (back, _store, report) = backed(&path);
    assert_eq!(report.traits_lost, 0);
    assert_eq!(traits_of(&back, "e0").unwrap(), sorted(&doc(0, 2)));
    assert_eq!(traits_of(&back, "e3").unwrap(), sorted(&doc(3, 1)));
}

#[test]
fn a_failed_write_reads_cold_values_back_before_the_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let (fleet, mut store, _) = backed(&path);
    check_in(&fleet, "e1", 1, &doc(1, 1));
    check_in(&fleet, "e2", 1, &doc(2, 1));
    store.flush(&fleet, Scope::All).unwrap();
    assert_eq!(fleet.trait_store().stats().cold, 2);

    // Another connection holds the write lock: the next write fails, and the one after
    // rewrites the whole file from empty tables, so the cold lists come back into memory.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE; DELETE FROM trait_nodes;").unwrap();
    check_in(&fleet, "e1", 2, &doc(1, 2));
    assert!(store.flush(&fleet, Scope::All).is_err());
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    let rewritten = store.flush(&fleet, Scope::Group(1, 4)).unwrap();
    assert_eq!(rewritten.envoys, 2, "the whole fleet, whatever the group");
    assert_eq!(rewritten.nodes, fleet.trait_store().stats().nodes);
    assert_eq!(fleet.trait_store().stats().cold, 2, "cold again once rewritten");
    assert_eq!(traits_of(&fleet, "e2").unwrap(), sorted(&doc(2, 1)));
    drop(store);
    let (back, _store, report) = backed(&path);
    assert_eq!(report.traits_lost, 0);
    assert_eq!(traits_of(&back, "e1").unwrap(), sorted(&doc(1, 2)));
    assert_eq!(traits_of(&back, "e2").unwrap(), sorted(&doc(2, 1)));
}

#[test]
fn queries_see_changes_to_documents_whose_old_values_are_cold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.sqlite");
    let (fleet, mut store, _) = backed(&path);
    for host in 0..3 {
        check_in(&fleet, &format!("e{host}"), 1, &doc(host, 1));
    }
    store.flush(&fleet, Scope::All).unwrap();
    let key = |path: &[&str]| vigo_state::IndexKey { path: path.iter().map(|s| s.to_string()).collect(), value: None };
    let with = |name: &str| {
        let mut envoys = fleet.having(&[vec![key(&["packages", name])]]).unwrap();
        envoys.sort();
        envoys
    };
    assert_eq!(with("pkg01"), ["e0", "e1", "e2"]);
    // e1 drops pkg01 altogether: its old (cold) list is read back to find the keys it lost.
    let without = doc(1, 1).replace(r#""pkg01":{"arch":"amd64","version":"2.1"},"#, "");
    assert!(!without.contains("pkg01"));
    check_in(&fleet, "e1", 2, &without);
    assert_eq!(with("pkg01"), ["e0", "e2"], "a query applies pending changes first");
    store.flush(&fleet, Scope::All).unwrap();
    assert_eq!(with("pkg01"), ["e0", "e2"]);
}
