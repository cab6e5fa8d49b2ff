//! `vigocli server status` over a real process: members, roles, the leader, log and applied index.

mod support;

use support::Server;

#[test]
fn status_shows_the_single_voter_leading_and_its_indexes_moving() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    let before = server.cli_json(&["server", "status"]);
    assert_eq!(before["node_id"], 1);
    assert_eq!(before["role"], "leader");
    assert_eq!(before["leader"], 1);
    let members = before["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{before}");
    assert_eq!(members[0]["node_id"], 1);
    assert_eq!(members[0]["addr"], server.addr.as_str());
    assert_eq!(members[0]["voter"], true);
    let (log, applied) = (before["last_log_index"].as_u64().unwrap(), before["applied_index"].as_u64().unwrap());
    assert!(applied >= 1 && applied <= log, "{before}");

    // A control write is one more entry, committed and applied before it is acknowledged.
    server.token();
    let after = server.cli_json(&["server", "status"]);
    assert_eq!(after["applied_index"].as_u64().unwrap(), applied + 1, "{after}");
    assert_eq!(after["last_log_index"], after["applied_index"]);

    let text = server.cli_ok(&["server", "status"]);
    assert!(text.starts_with("node 1 (leader, term "), "{text}");
    assert!(text.contains(&server.addr), "{text}");
}

#[test]
fn the_advertised_address_is_the_one_peers_and_envoys_are_given() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let advertised = format!("localhost:{port}");
    let server =
        Server::start_with(&tmp.path().join("server"), &format!("127.0.0.1:{port}"), &["--advertise", &advertised]);
    let status = server.cli_json(&["server", "status"]);
    assert_eq!(status["members"][0]["addr"], advertised.as_str(), "{status}");
    let out = support::enroll(&server, &server.token(), &tmp.path().join("envoy"), "web-1");
    assert!(out.status.success(), "{}", support::text(&out));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("envoy/identity/enrollment.json")).unwrap()).unwrap();
    assert_eq!(meta["servers"], serde_json::json!([advertised]));
}

#[test]
fn compact_purges_the_log_and_keeps_the_history_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    for _ in 0..3 {
        server.token();
    }
    let purged = server.cli_json(&["server", "compact"])["purged_index"].as_u64().unwrap();
    assert!(purged >= 5, "purged through the writes: {purged}");
    let status = server.cli_json(&["server", "status"]);
    assert_eq!(status["members"][0]["purged_index"], purged, "{status}");
    let history = server.cli_json(&["audit", "log"]);
    assert_eq!(history["events"][0]["index"], 1, "the history still starts at 1");
    assert_eq!(history["chain"], "verified");
}
