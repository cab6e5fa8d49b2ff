//! fakefleet end to end: a real vigosrv process, a handful of synthetic envoys enrolled over
//! mTLS, a publish mid-run, and the JSON report read back. Asserts behaviour, not speed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};
use vigo_benches::fleet::{Cluster, FakeEnvoy, Transport};

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

/// Traits sent on a session end it with a clear refusal; sent with a call on the same
/// connection they are taken, and a new session goes on without them.
#[test]
fn a_session_refuses_traits_and_a_call_takes_them() {
    let (dir, server, grpc, _http) = start_server();
    let out = Command::new(bin("vigocli"))
        .args(["--server", &grpc, "--creds"])
        .arg(dir.path().join("server/admin"))
        .args(["-o", "json", "token", "create", "--uses", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = created["token"].as_str().unwrap().to_string();

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
        let refused = format!("{:#}", envoy.exchange(&grpc, req, Transport::Session).await.unwrap_err());
        assert!(refused.contains("InvalidArgument"), "{refused}");
        assert!(refused.contains("traits are sent with CheckIn, not on a session"), "{refused}");

        let req = envoy.signed_request(&hash, traits.clone());
        let taken = envoy.exchange(&grpc, req, Transport::Held).await.unwrap();
        assert!(!taken.send_traits, "traits sent with a call are taken");
        let req = envoy.signed_request(&hash, String::new());
        let next = envoy.exchange(&grpc, req, Transport::Session).await.unwrap();
        assert!(!next.send_traits, "and a new session goes on without them");
    });
    drop(server);
}

/// A fresh vigosrv on loopback: its data dir, the process, and its gRPC and HTTP addresses.
fn start_server() -> (tempfile::TempDir, Server, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("vigosrv"))
        .args(["run", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("server"))
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
    let (dir, server, grpc, http) = start_server();

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
