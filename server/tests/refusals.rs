//! Bad input, over real processes: each refused with a clear one-line reason, and nothing
//! already stored is lost or changed.

mod support;

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use support::{Server, enroll, envoy_once, text, write_stack};
use tokio::io::AsyncWriteExt;
use vigo_proto::agent::agent_client::AgentClient;
use vigo_proto::agent::{CheckInRequest, SessionEvent, SessionRequest, session_event, session_request};
use vigo_proto::session::{encode_frame, read_frame};
use vigo_proto::tls::{client_config, connect, ed25519_seed, read_certs, read_key};

const GOOD_MODULE: &str = "resources:\n  - type: file\n    path: /etc/motd\n    template: motd.j2\n";

fn good_stack(dir: &Path) {
    write_stack(
        dir,
        &[
            ("assign.yaml", "- match: \"*\"\n  modules: [m]\n  vars: { who: ops }\n"),
            ("modules/m/module.yaml", GOOD_MODULE),
            ("modules/m/files/motd.j2", "managed by {{ who }}\n"),
        ],
    );
}

/// Publishes `files` on top of a good stack; expects a refusal mentioning every `needles`.
fn refused(server: &Server, tmp: &Path, name: &str, files: &[(&str, &str)], needles: &[&str]) {
    let dir = tmp.join(name);
    good_stack(&dir);
    write_stack(&dir, files);
    let out = server.cli(&["config", "publish", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{name}: publish should be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{name}: one-line error, got {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{name}: {stderr:?} should mention {needle:?}");
    }
}

#[test]
fn bad_stacks_are_refused_with_file_line_and_reason_and_the_live_version_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    let good = tmp.path().join("good");
    good_stack(&good);
    assert_eq!(server.cli_ok(&["config", "publish", good.to_str().unwrap()]), "1");

    let m = "modules/m/module.yaml";
    refused(
        &server,
        tmp.path(),
        "yaml",
        &[(m, "resources:\n  - type: file\n    path: [unclosed\n")],
        &[m, ":4", "invalid YAML"],
    );
    refused(
        &server,
        tmp.path(),
        "unknown-type",
        &[(m, "resources:\n  - type: file\n    path: /a\n    content: x\n  - type: pkg\n    name: x\n")],
        &[m, ":5", "pkg"],
    );
    refused(
        &server,
        tmp.path(),
        "unknown-field",
        &[(m, "resources:\n  - type: file\n    path: /a\n    contnet: x\n")],
        &[m, ":", "contnet"],
    );
    refused(
        &server,
        tmp.path(),
        "cycle",
        &[(
            m,
            "resources:\n  - type: file\n    path: /a\n    content: x\n    requires: [file:/b]\n  - type: file\n    path: /b\n    content: y\n    requires: [file:/a]\n",
        )],
        &[m, "cycle"],
    );
    refused(
        &server,
        tmp.path(),
        "unknown-ref",
        &[(m, "resources:\n  - type: file\n    path: /a\n    content: x\n    requires: [file:/nope]\n")],
        &[m, ":5", "file:/nope"],
    );
    refused(
        &server,
        tmp.path(),
        "dotdot",
        &[(m, "resources:\n  - type: file\n    path: /etc/../root/x\n    content: x\n")],
        &[m, ":3", ".."],
    );
    refused(
        &server,
        tmp.path(),
        "undefined-var",
        &[("modules/m/files/motd.j2", "line one\nhello {{ nobody }}\n")],
        &["modules/m/files/motd.j2:2", "nobody"],
    );

    // Nothing moved: the live version is still 1, and the next good publish is version 2.
    let audit = server.cli_json(&["audit", "log"]);
    let publishes = audit["events"].as_array().unwrap().iter().filter(|e| e["event"] == "StackPublished").count();
    assert_eq!(publishes, 1);
    // Publishing the live stack again is a no-op; a changed stack becomes version 2.
    assert_eq!(server.cli_ok(&["config", "publish", good.to_str().unwrap()]), "1");
    write_stack(&good, &[("modules/m/files/motd.j2", "managed by {{ who }}, v2\n")]);
    assert_eq!(server.cli_ok(&["config", "publish", good.to_str().unwrap()]), "2");
    let audit = server.cli_json(&["audit", "log"]);
    let publishes = audit["events"].as_array().unwrap().iter().filter(|e| e["event"] == "StackPublished").count();
    assert_eq!(publishes, 2, "the identical publish appended no event");
}

#[test]
fn wrong_and_used_up_tokens_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    let token = server.token();
    let out = enroll(&server, &token, &tmp.path().join("a"), "a.example.com");
    assert!(out.status.success(), "{}", text(&out));

    let out = enroll(&server, &token, &tmp.path().join("b"), "b.example.com");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("used up"), "{}", text(&out));

    // Right cluster pin, unknown secret.
    let pin = token.rsplit('_').next().unwrap();
    let forged = format!("vgt1_{}_{pin}", "ab".repeat(16));
    let out = enroll(&server, &forged, &tmp.path().join("c"), "c.example.com");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"), "{}", text(&out));

    let out = enroll(&server, "not-a-token", &tmp.path().join("d"), "d.example.com");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed enrollment token"), "{}", text(&out));

    // Only the one good enrollment is on record.
    let envoys = server.cli_json(&["envoys", "list"]);
    assert_eq!(envoys.as_array().unwrap().len(), 1);
}

/// A signed check-in built by hand from an envoy's identity files.
struct Forger {
    envoy_id: String,
    key: SigningKey,
    client: AgentClient<tonic::transport::Channel>,
    /// Its mTLS configuration.
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Forger {
    async fn new(server: &Server, envoy_dir: &Path) -> Forger {
        let id = envoy_dir.join("identity");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(id.join("enrollment.json")).unwrap()).unwrap();
        let key_der = read_key(&id.join("envoy.key")).unwrap();
        let key = SigningKey::from_bytes(&ed25519_seed(key_der.secret_pkcs8_der()).unwrap());
        let ca = read_certs(&id.join("ca.crt")).unwrap().remove(0);
        let config = client_config(&ca, Some((read_certs(&id.join("envoy.crt")).unwrap(), key_der))).unwrap();
        let channel = connect(&server.addr, config.clone(), Duration::from_secs(10)).await.unwrap();
        let envoy_id = meta["envoy_id"].as_str().unwrap().to_string();
        Forger { envoy_id, key, client: AgentClient::new(channel), tls: config }
    }

    fn request(&self, counter: u64, key: &SigningKey) -> CheckInRequest {
        let mut req = CheckInRequest { envoy_id: self.envoy_id.clone(), counter, ..Default::default() };
        req.signature = key.sign(&vigo_proto::signing::check_in_bytes(&req)).to_bytes().to_vec();
        req
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_revoked_check_ins_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    let envoy_dir = tmp.path().join("envoy");
    let out = enroll(&server, &server.token(), &envoy_dir, "web-9.example.com");
    assert!(out.status.success(), "{}", text(&out));
    let mut forger = Forger::new(&server, &envoy_dir).await;

    // Signed with another key: refused.
    let other = SigningKey::from_bytes(&[42; 32]);
    let req = forger.request(u64::MAX / 2, &other);
    let status = forger.client.check_in(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("signature"), "{status:?}");

    // A good check-in is answered; the same request sent again is a replay.
    let req = forger.request(u64::MAX / 2, &forger.key);
    forger.client.check_in(req.clone()).await.expect("a well-signed check-in is answered");
    let status = forger.client.check_in(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("replay"), "{status:?}");

    // Revoked: the envoy's own run is refused.
    server.cli_ok(&["envoys", "revoke", "web-9.example.com"]);
    let req = forger.request(u64::MAX / 2 + 1, &forger.key);
    let status = forger.client.check_in(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"), "{}", text(&out));
    let out = server.cli(&["envoys", "revoke", "web-9.example.com"]);
    assert!(!out.status.success(), "revoking twice is refused");
}

/// A session of `forger`'s, and the first event the server answers `bytes` with.
async fn session_answer(server: &Server, forger: &Forger, bytes: &[u8]) -> SessionEvent {
    let config = vigo_proto::session::client_config(&forger.tls);
    let mut tls = vigo_proto::session::connect(&server.addr, None, config, Duration::from_secs(10)).await.unwrap();
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    let answer = read_frame::<SessionEvent>(&mut tls, 1 << 20).await.unwrap().expect("an answer before the close");
    if matches!(answer.kind, Some(session_event::Kind::Ended(_))) {
        let closed = read_frame::<SessionEvent>(&mut tls, 1 << 20).await;
        assert!(matches!(closed, Ok(None) | Err(_)), "nothing comes after the end: {closed:?}");
    }
    answer
}

fn ended(event: &SessionEvent) -> (tonic::Code, &str) {
    match &event.kind {
        Some(session_event::Kind::Ended(e)) => (tonic::Code::from(e.code), e.message.as_str()),
        other => panic!("the session goes on: {other:?}"),
    }
}

fn check_in_frame(req: CheckInRequest) -> Vec<u8> {
    encode_frame(&SessionRequest { kind: Some(session_request::Kind::CheckIn(req)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_frames_end_the_session_with_the_reason_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    let envoy_dir = tmp.path().join("envoy");
    let out = enroll(&server, &server.token(), &envoy_dir, "web-7");
    assert!(out.status.success(), "{}", text(&out));
    let forger = Forger::new(&server, &envoy_dir).await;

    let over = session_answer(&server, &forger, &u32::MAX.to_be_bytes()).await;
    assert_eq!(
        ended(&over),
        (
            tonic::Code::InvalidArgument,
            "bad session frame: a frame of 4294967295 bytes is over the limit of 8388608 bytes"
        )
    );
    let garbage = session_answer(&server, &forger, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    let (code, message) = ended(&garbage);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(
        message.starts_with("bad session frame: a frame of 3 bytes does not decode as SessionRequest: "),
        "{message}"
    );
    let empty = session_answer(&server, &forger, &encode_frame(&SessionRequest { kind: None })).await;
    assert_eq!(ended(&empty), (tonic::Code::InvalidArgument, "bad session frame: a request with nothing in it"));
    let other = SigningKey::from_bytes(&[42; 32]);
    let forged = session_answer(&server, &forger, &check_in_frame(forger.request(10, &other))).await;
    let (code, message) = ended(&forged);
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");

    // None of it counted: the envoy never checked in, and its next counter is still good.
    let shown = server.cli_json(&["envoys", "show", "web-7"]);
    assert_eq!(shown["last_seen_ms"], 0, "{shown}");
    let good = session_answer(&server, &forger, &check_in_frame(forger.request(10, &forger.key))).await;
    assert!(matches!(good.kind, Some(session_event::Kind::CheckIn(_))), "{good:?}");
    assert!(server.cli_json(&["envoys", "show", "web-7"])["last_seen_ms"].as_i64().unwrap() > 0);
}
