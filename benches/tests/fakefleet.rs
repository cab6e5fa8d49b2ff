//! fakefleet end to end: a real vigosrv process, a handful of synthetic envoys enrolled over
//! mTLS, a publish mid-run, and the JSON report read back. Asserts behaviour, not speed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use vigo_benches::fleet::{Cluster, FakeEnvoy, Transport};
use vigo_proto::agent::CheckInResponse;
use vigo_proto::agent::check_in_response::Reply;

fn bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    dir.join(name)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fakefleet_enrolls_checks_in_publishes_and_reports() {
    run_fleet("held");
}

/// The same over `Session` streams: check-ins as messages, the publish pushed on the stream.
#[test]
fn fakefleet_over_sessions_checks_in_and_gets_the_publish_pushed() {
    let report = run_fleet("session");
    assert!(report["pushes"].as_u64().unwrap() >= 1, "the publish was pushed on the sessions: {report}");
}

/// Traits travel on a session like a check-in without them: asked for, they are sent on it and
/// taken, and the same session goes on.
#[test]
fn a_session_carries_traits_when_asked_and_goes_on() {
    let (dir, server, grpc, _http) = start_server(&[]);
    let token = token(&dir, &grpc, 1);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cluster = Cluster::discover(&grpc, &token).await.unwrap();
        let channel = cluster.enroll_channel().await.unwrap();
        let (mut envoy, _) = FakeEnvoy::enroll(&cluster, channel, &token, 0, None).await.unwrap();
        let traits = r#"{"os":{"family":"debian"}}"#.to_string();
        let hash: [u8; 32] = Sha256::digest(traits.as_bytes()).into();

        let req = envoy.signed_request(&hash, String::new());
        let asked = envoy.exchange(&grpc, req, Transport::Session).await.unwrap();
        assert!(asked.send_traits, "unknown traits are asked for on the session");
        let req = envoy.signed_request(&hash, traits.clone());
        let taken = envoy.exchange(&grpc, req, Transport::Session).await.unwrap();
        assert!(!taken.send_traits, "traits sent on the session are taken");
        assert!(envoy.has_session(), "and the session stays open");
        let req = envoy.signed_request(&hash, String::new());
        let next = envoy.exchange(&grpc, req, Transport::Session).await.unwrap();
        assert!(!next.send_traits, "the next check-in goes without them");
    });
    drop(server);
}

/// A burst the server cannot keep up with (every envoy uploading its 150 KB inventory at once,
/// against a 5 ms queue-delay cap): every check-in is answered, those that came while the
/// server was behind with `Backoff`, none with an error or a timeout; the envoys told to back
/// off are served when they come back.
#[test]
fn a_burst_beyond_the_queue_delay_cap_is_answered_with_backoff_not_errors() {
    const ENVOYS: u32 = 40;
    let (dir, server, grpc, _http) = start_server(&["--check-in-queue-max-ms", "5"]);
    let token = token(&dir, &grpc, ENVOYS);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    runtime.block_on(async {
        let cluster = Cluster::discover(&grpc, &token).await.unwrap();
        let mut envoys = Vec::new();
        for index in 0..ENVOYS {
            let channel = cluster.enroll_channel().await.unwrap();
            let (mut envoy, _) = FakeEnvoy::enroll(&cluster, channel, &token, index, None).await.unwrap();
            let (inventory, hash) = vigo_benches::inventory::for_host(index, &envoy.hostname);
            // One check-in each, one at a time, opens the connections the burst goes over.
            let asked = served(&mut envoy, &grpc, &hash, "").await;
            assert!(asked.send_traits, "{}: {asked:?}", envoy.hostname);
            envoys.push((envoy, inventory, hash));
        }
        // Signed first, sent together.
        let burst = envoys.into_iter().map(|(mut envoy, inventory, hash)| {
            let grpc = grpc.clone();
            let req = envoy.signed_request(&hash, inventory.clone());
            tokio::spawn(async move {
                let answer = envoy.exchange(&grpc, req, Transport::Held).await;
                (envoy, inventory, hash, answer)
            })
        });
        let (mut taken, mut backed_off) = (0, Vec::new());
        for answered in futures::future::join_all(burst).await {
            let (envoy, inventory, hash, answer) = answered.unwrap();
            let answer = answer.unwrap_or_else(|e| panic!("{}: {e:#}", envoy.hostname));
            match answer.reply {
                Some(Reply::Backoff(b)) => {
                    assert!(b.retry_after_s >= 1, "{b:?}");
                    backed_off.push((envoy, inventory, hash));
                }
                _ => {
                    assert!(!answer.send_traits, "{}: {answer:?}", envoy.hostname);
                    taken += 1;
                }
            }
        }
        assert!(!backed_off.is_empty(), "{ENVOYS} uploads at once against a 5 ms cap: some must back off");
        assert!(taken > 0, "the server took uploads until it fell behind");
        for (envoy, inventory, hash) in &mut backed_off {
            let answer = served(envoy, &grpc, hash.as_slice(), inventory).await;
            assert!(!answer.send_traits, "{} is served when it comes back: {answer:?}", envoy.hostname);
        }
    });
    drop(server);
}

/// Past the cap on held sessions a new session is served its check-in and then closed; once a
/// held one goes, a place is free again.
#[test]
fn sessions_past_the_held_cap_are_served_then_closed() {
    let (dir, server, grpc, _http) = start_server(&["--held-max", "2"]);
    let token = token(&dir, &grpc, 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cluster = Cluster::discover(&grpc, &token).await.unwrap();
        let mut envoys = Vec::new();
        for index in 0..3 {
            let channel = cluster.enroll_channel().await.unwrap();
            let (mut envoy, _) = FakeEnvoy::enroll(&cluster, channel, &token, index, None).await.unwrap();
            let req = envoy.signed_request(&[1; 32], String::new());
            let answer = envoy.exchange(&grpc, req, Transport::Session).await.unwrap();
            assert!(answer.send_traits, "served: {answer:?}");
            envoys.push(envoy);
        }
        assert!(!closes(&mut envoys[0]).await, "the first two are held");
        assert!(!closes(&mut envoys[1]).await);
        assert!(closes(&mut envoys[2]).await, "the third is closed after its answer");

        envoys[0].disconnect();
        let mut held = false;
        for _ in 0..50 {
            let req = envoys[2].signed_request(&[1; 32], String::new());
            envoys[2].exchange(&grpc, req, Transport::Session).await.unwrap();
            if !closes(&mut envoys[2]).await {
                held = true;
                break;
            }
        }
        assert!(held, "a place freed up when the first envoy left");
    });
    drop(server);
}

/// Whether the server closes `envoy`'s session within half a second.
async fn closes(envoy: &mut FakeEnvoy) -> bool {
    matches!(tokio::time::timeout(Duration::from_millis(500), envoy.next_session_push()).await, Ok(None))
}

/// A check-in, sent again (bounded) while the server says to back off: on a machine busy with
/// other tests the server may be behind at any time.
async fn served(envoy: &mut FakeEnvoy, grpc: &str, hash: &[u8], traits: &str) -> CheckInResponse {
    for _ in 0..200 {
        let req = envoy.signed_request(hash, traits.to_string());
        let answer = envoy.exchange(grpc, req, Transport::Held).await.unwrap();
        if !matches!(answer.reply, Some(Reply::Backoff(_))) {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} still told to back off after 200 tries", envoy.hostname);
}

/// A token for `uses` enrollments.
fn token(dir: &tempfile::TempDir, grpc: &str, uses: u32) -> String {
    let out = Command::new(bin("vigocli"))
        .args(["--server", grpc, "--creds"])
        .arg(dir.path().join("server/admin"))
        .args(["-o", "json", "token", "create", "--uses", &uses.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    created["token"].as_str().unwrap().to_string()
}

/// A fresh vigosrv on loopback with `extra` flags: its data dir, the process, and its gRPC and
/// HTTP addresses.
fn start_server(extra: &[&str]) -> (tempfile::TempDir, Server, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("vigosrv"))
        .args(["run", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("server"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let server = Server(child);
    let mut addr = |prefix: &str| {
        let line = lines.next().expect("vigosrv printed its addresses").unwrap();
        line.strip_prefix(prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).to_string()
    };
    let grpc = addr("vigosrv listening on ");
    let http = addr("vigosrv http on ");
    (dir, server, grpc, http)
}

/// Runs 6 envoys in `mode` against a fresh vigosrv, publishing mid-run; checks the report and
/// returns it.
fn run_fleet(mode: &str) -> serde_json::Value {
    let (dir, server, grpc, http) = start_server(&[]);

    let json = dir.path().join("report.json");
    let out = Command::new(bin("fakefleet"))
        .args(["--server", &grpc, "--http", &http, "--creds"])
        .arg(dir.path().join("server/admin"))
        .arg("--vigocli")
        .arg(bin("vigocli"))
        .args(["--envoys", "6", "--interval", "0.5", "--warmup", "2", "--duration", "3", "--publish-at", "0.2"])
        .args(["--sources", "3", "--label", "smoke", "--mode", mode, "--json"])
        .arg(&json)
        .output()
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fakefleet failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| server CPU per check-in |"), "{stdout}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["envoys"], 6);
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["check_ins"].as_u64().unwrap() >= 6, "{report}");
    assert!(report["server_rss_bytes"].as_u64().unwrap() > 0);
    // CPU comes in 10 ms ticks: a window this small may show none, so only its presence is checked.
    assert!(report["server_cpu_us_per_check_in"].as_f64().is_some_and(f64::is_finite), "{report}");
    let publish = &report["publish"];
    assert_eq!(publish["version"], 2, "the run's first publish is v1, the mid-run one v2");
    assert_eq!(publish["envoys_updated"], 6, "{report}");
    assert!(publish["all_updated_after_s"].as_f64().is_some(), "{report}");
    report
}
