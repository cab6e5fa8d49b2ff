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
