//! The short schedule CI runs: three real `vigosrv` peers, four clients, kills, pauses and
//! partitions (of any peer and of the leader), then the heal, liveness and every checker. Binaries come from the
//! same target dir as the test (`cargo test --workspace` builds them first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vigo_jepsen::check::check_all;
use vigo_jepsen::history::Outcome;
use vigo_jepsen::run::{FaultKind, RunConfig, run};

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    assert!(dir.join("vigosrv").exists(), "vigosrv not built: run the tests with `cargo test --workspace`");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_schedule_of_kills_pauses_and_partitions_breaks_no_invariant() {
    let work = tempfile::tempdir().unwrap();
    let bins = bin_dir();
    let config = RunConfig {
        vigosrv: bins.join("vigosrv"),
        vigocli: bins.join("vigocli"),
        work_dir: work.path().to_path_buf(),
        peers: 3,
        seed: 11,
        clients: 4,
        duration: Duration::from_secs(15),
        faults: FaultKind::ALL.to_vec(),
        fault_gap: Duration::from_millis(1500),
        fault_length: Duration::from_secs(2),
        liveness: Duration::from_secs(20),
    };
    let history = run(&config).await.unwrap();
    let report = check_all(&history);
    let results = work.path().join("results");
    vigo_jepsen::report::write(&results, &history, &report).unwrap();
    assert!(report.ok(), "{}", vigo_jepsen::report::summary(&history, &report));
    // The run did what it claims: faults happened, writes were acknowledged through them,
    // and every peer was read at the end.
    let injected = ["kill", "pause", "partition", "crash-in-snapshot", "crash-in-install"];
    let faults = history.faults.iter().filter(|f| injected.contains(&f.what.as_str())).count();
    assert!(faults >= 3, "{:?}", history.faults);
    let acknowledged = history.ops.iter().filter(|op| matches!(op.outcome, Outcome::Ok { .. })).count();
    assert!(acknowledged > 50, "only {acknowledged} operations acknowledged");
    assert!(history.finals.iter().all(Option::is_some));
    for file in ["history.json", "result.json", "summary.txt", "timeline.svg"] {
        assert!(results.join(file).exists(), "{file} written");
    }
}
