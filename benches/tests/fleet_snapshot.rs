//! The fleet snapshot over real processes: `kill -9` while vigosrv writes it leaves SQLite
//! whole, the restart rehydrates the fleet index from it, and envoys whose observations were
//! written are neither asked for their ~150 KB of traits again nor open to a replay.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vigo_benches::fleet::{Cluster, FakeEnvoy, Transport};
use vigo_proto::agent::CheckInRequest;
use vigo_state::{FleetIndex, FleetStore};

const ROUNDS: usize = 3;
const ENVOYS_PER_ROUND: u32 = 12;

fn bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    dir.join(name)
}

/// A vigosrv whose stderr is read line by line.
struct Server {
    child: Child,
    grpc: String,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let mut child = Command::new(bin("vigosrv"))
            .args(["run", "--listen", "127.0.0.1:0", "--flush-interval", "0.4", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn,vigo_state::fleet_store=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let first = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
        let grpc = first.strip_prefix("vigosrv listening on ").expect("vigosrv printed its address").to_string();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Server { child, grpc, lines }
    }

    /// Kills the server (SIGKILL) as soon as it starts writing envoys to the snapshot.
    fn kill_during_a_flush(mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a flush");
            if line.contains("writing the fleet snapshot") && !line.contains("envoys=0") {
                break;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until every envoy's record is in the snapshot with its traits and as of its
/// request `answered`.
fn wait_until_written(snapshot: &Path, envoys: &[(FakeEnvoy, CheckInRequest)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let store = FleetStore::open(snapshot).unwrap();
        let written = envoys
            .iter()
            .filter(|(envoy, answered)| {
                let record = store.record(&envoy.envoy_id).unwrap();
                record.is_some_and(|r| r.traits_root != 0 && r.last_counter >= answered.counter)
            })
            .count();
        if written == envoys.len() {
            return;
        }
        assert!(Instant::now() < deadline, "only {written} of {} envoys written within 60 s", envoys.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_during_flushes_leaves_the_snapshot_whole_and_the_restart_rehydrates_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    let snapshot = data_dir.join("fleet.sqlite");
    let mut server = Server::start(&data_dir);
    let out = Command::new(bin("vigocli"))
        .args(["--server", &server.grpc, "--creds"])
        .arg(data_dir.join("admin"))
        .args(["token", "create", "--uses", &(ROUNDS as u32 * ENVOYS_PER_ROUND).to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Envoys whose records were written before the kill, with a request each that was
    // answered before then.
    let mut written: Vec<(FakeEnvoy, CheckInRequest)> = Vec::new();
    for round in 0..ROUNDS as u32 {
        let grpc = server.grpc.clone();
        let fresh: Vec<FakeEnvoy> = runtime.block_on(async {
            let cluster = Cluster::discover(&grpc, &token).await.unwrap();
            let mut fresh = Vec::new();
            for i in 0..ENVOYS_PER_ROUND {
                let channel = cluster.enroll_channel().await.unwrap();
                let index = round * ENVOYS_PER_ROUND + i;
                let (mut envoy, bundle_key) = FakeEnvoy::enroll(&cluster, channel, &token, index, None).await.unwrap();
                // The first check-in is asked for the inventory and sends it.
                envoy.check_in(&grpc, &bundle_key, Transport::Held).await.unwrap();
                fresh.push(envoy);
            }
            fresh
        });
        // Last round's envoys were all written; this round's are being written when the
        // server dies.
        server.kill_during_a_flush();

        let conn = rusqlite::Connection::open(&snapshot).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(check, "ok", "round {round}");
        drop(conn);
        let fleet = FleetIndex::default();
        let report = FleetStore::open(&snapshot).unwrap().load(&fleet).unwrap();
        assert_eq!((report.traits_lost, report.unreadable), (0, 0), "round {round}: {report:?}");
        assert!(report.envoys >= written.len(), "round {round}: {report:?}");

        server = Server::start(&data_dir);
        let grpc = server.grpc.clone();
        runtime.block_on(async {
            for (envoy, answered) in &mut written {
                // The old server's connection is gone.
                envoy.disconnect();
                // An old request is a replay, also after the restart.
                let replayed = envoy.exchange(&grpc, answered.clone(), Transport::Held).await.unwrap_err();
                assert!(format!("{replayed:#}").contains("replay"), "{}: {replayed:#}", envoy.hostname);
                // Its traits came back from the snapshot: it is not asked for them.
                let hash = envoy.traits_hash().unwrap();
                let request = envoy.signed_request(&hash, String::new());
                let response = envoy.exchange(&grpc, request.clone(), Transport::Held).await.unwrap();
                assert!(!response.send_traits, "{} was asked for its traits again", envoy.hostname);
                *answered = request;
            }
            for mut envoy in fresh {
                envoy.disconnect();
                // Written or not before the kill, this round's envoys go on (sending their
                // traits again if they were not).
                let hash = envoy.traits_hash().unwrap();
                let mut request = envoy.signed_request(&hash, String::new());
                if envoy.exchange(&grpc, request.clone(), Transport::Held).await.unwrap().send_traits {
                    let inventory = vigo_benches::inventory::for_host(envoy.index, &envoy.hostname).0;
                    request = envoy.signed_request(&hash, inventory);
                    assert!(!envoy.exchange(&grpc, request.clone(), Transport::Held).await.unwrap().send_traits);
                }
                let answered = envoy.signed_request(&hash, String::new());
                envoy.exchange(&grpc, answered.clone(), Transport::Held).await.unwrap();
                written.push((envoy, answered));
            }
        });
        wait_until_written(&snapshot, &written);
    }
}
