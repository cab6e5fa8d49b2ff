//! A three-peer cluster of real `vigosrv` processes on loopback: joining with a token, writes
//! from any peer, `kill -9` of the leader and failover, catch-up of the restarted peer with the
//! same hash chain everywhere, `promote`, `remove`, and the refusal of writes without a quorum
//! while check-ins are still answered.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Server, arm, enroll, envoy_once, generation_stack, text};
use vigo_log::crash;

fn stack(dir: &Path, generation: u32) {
    generation_stack(dir, &generation.to_string());
}

/// Runs `attempt` until it returns `Some`, for at most `limit`; panics with `what` after.
fn eventually<T>(what: &str, limit: Duration, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = attempt() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `server status -o json` on `peer`, if it answers.
fn status(peer: &Server) -> Option<Value> {
    let out = peer.cli(&["server", "status", "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

/// Waits until `peer` sees `n` voters, every one reachable and applied as far as it.
fn wait_for_voters(peer: &Server, n: usize) -> Value {
    eventually(&format!("{n} voters in step, seen from {}", peer.addr), Duration::from_secs(60), || {
        let s = status(peer)?;
        let members = s["members"].as_array()?;
        let applied = s["applied_index"].as_u64()?;
        let all = members.len() == n
            && members.iter().all(|m| m["voter"] == true && m["reachable"] == true && m["applied_index"] == applied)
            && s["leader"].is_u64();
        all.then_some(s)
    })
}

/// The hashes of the whole history as `peer` serves it, verified by vigocli.
fn chain(peer: &Server) -> Vec<String> {
    events(peer).iter().map(|e| e["hash"].as_str().expect("hash").to_string()).collect()
}

/// The verified history as `peer` serves it.
fn events(peer: &Server) -> Vec<Value> {
    let log = peer.cli_json(&["audit", "log"]);
    assert_eq!(log["chain"], "verified");
    log["events"].as_array().expect("events").clone()
}

/// The index of the last event `peer` holds.
fn last_index(peer: &Server) -> u64 {
    peer.cli_json(&["audit", "log"])["last_index"].as_u64().expect("last_index")
}

/// Creates a join token for `uses` peers on `peer`.
fn join_token(peer: &Server, uses: u32) -> String {
    peer.cli_ok(&["token", "create", "--join", "--uses", &uses.to_string()])
}

/// Starts a peer joining the cluster of `via`. The operator's admin credentials (written where
/// the cluster was founded) work on every peer; the test keeps a copy in each data dir.
fn join(dir: &Path, via: &Server, token: &str) -> Server {
    let peer = Server::start_with(dir, "127.0.0.1:0", &["--join", &via.addr, "--token", token]);
    std::fs::create_dir_all(peer.creds()).unwrap();
    for file in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(via.creds().join(file), peer.creds().join(file)).unwrap();
    }
    peer
}

#[test]
fn three_peers_fail_over_catch_up_and_refuse_writes_without_quorum() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start(&tmp.path().join("a"), "127.0.0.1:0");
    let token = join_token(&a, 2);
    let b = join(&tmp.path().join("b"), &a, &token);
    let c = join(&tmp.path().join("c"), &b, &token);
    let s = wait_for_voters(&a, 3);
    assert_eq!(s["leader"], 1, "the founder still leads: {s}");

    // Writes from any peer: enrollment through a follower, a publish through another.
    let envoy_dir = tmp.path().join("envoy");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = enroll(&b, &c.token(), &envoy_dir, "web-1");
    assert!(out.status.success(), "{}", text(&out));
    stack(&tmp.path().join("stack1"), 1);
    assert_eq!(c.cli_ok(&["config", "publish", tmp.path().join("stack1").to_str().unwrap()]), "1");
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "1\n");
    // Every peer serves the same history; the keys and the three admissions are on it.
    let history = chain(&a);
    assert_eq!(chain(&b), history);
    assert_eq!(chain(&c), history);
    let kinds: Vec<String> = events(&a).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "PeerAdmitted").count(), 3, "{kinds:?}");
    assert_eq!(kinds[0], "ClusterKeysSealed", "{kinds:?}");

    // The leader dies; another is elected and takes writes; the envoy checks in to a survivor.
    let (a_dir, a_addr) = (a.data_dir.clone(), a.addr.clone());
    a.kill();
    stack(&tmp.path().join("stack2"), 2);
    let stack2 = tmp.path().join("stack2");
    let version = eventually("a publish after the leader died", Duration::from_secs(15), || {
        let out = b.cli(&["config", "publish", stack2.to_str().unwrap()]);
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
    });
    assert_eq!(version, "2");
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "2\n");

    // The old leader comes back on its address, catches up, and holds the same chain; a
    // linearizable read from it waits until it holds every committed event.
    let a = Server::start(&a_dir, &a_addr);
    let read = a.cli_json(&["audit", "log", "--linearizable"]);
    assert_eq!(read["last_index"], last_index(&b), "a linearizable read from the restarted peer is current");
    wait_for_voters(&b, 3);
    let history = chain(&b);
    assert_eq!(history.len(), chain(&c).len());
    eventually("the restarted peer to hold the whole history", Duration::from_secs(20), || {
        (chain(&a) == history).then_some(())
    });

    // promote moves leadership on purpose.
    let s = status(&b).unwrap();
    let leader = s["leader"].as_u64().unwrap();
    let target = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let out = b.cli_ok(&["server", "promote", &target.to_string()]);
    assert_eq!(out, format!("peer {target} leads"));
    let s = wait_for_voters(&c, 3);
    assert_eq!(s["leader"], target, "{s}");

    // Two of three down: writes are refused with a clear error, check-ins are still answered.
    let (survivor, survivor_id, others) = match target {
        1 => (b, 2, [a, c]),
        2 => (c, 3, [a, b]),
        _ => (a, 1, [b, c]),
    };
    for peer in others {
        peer.kill();
    }
    let out = survivor.cli(&["token", "create"]);
    assert!(!out.status.success(), "a write without quorum must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no leader") || err.contains("no quorum") || err.contains("writes are refused until a quorum"),
        "{err}"
    );
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(out.status.success(), "check-ins are answered from the survivor's projection: {}", text(&out));
    assert_eq!(survivor.cli_json(&["audit", "log"])["chain"], "verified", "the history is still readable");
    let out = survivor.cli(&["audit", "log", "--linearizable"]);
    assert!(!out.status.success(), "a linearizable read needs a quorum");

    // Quorum is lost for good: a forced recovery on the survivor, which says so loudly first.
    let (dir, addr) = (survivor.data_dir.clone(), survivor.addr.clone());
    survivor.stop();
    let recover = |confirm: bool| {
        let mut cmd = std::process::Command::new(support::bin("vigosrv"));
        cmd.args(["force-recover", "--data-dir"]).arg(&dir);
        if confirm {
            cmd.arg("--i-understand-this-discards-the-other-peers");
        }
        cmd.output().unwrap()
    };
    let out = recover(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--i-understand-this-discards-the-other-peers"));
    let out = recover(true);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("peer {survivor_id} is now the sole voter")),
        "{}",
        text(&out)
    );
    let survivor = Server::start(&dir, &addr);
    let s = wait_for_voters(&survivor, 1);
    assert_eq!(s["leader"], survivor_id, "{s}");
    survivor.token();
    let history = events(&survivor);
    let recovered: Vec<&Value> = history.iter().filter(|e| e["event"] == "ClusterRecovered").collect();
    assert_eq!(recovered.len(), 1, "the recovery is in the audit log once");
    assert_eq!(recovered[0]["details"]["node_id"], survivor_id);
    assert_eq!(recovered[0]["details"]["lost"].as_array().unwrap().len(), 2);
    assert_eq!(history.last().unwrap()["event"], "TokenCreated", "writes are taken again");
}

#[test]
fn join_refusals_are_clear_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start(&tmp.path().join("a"), "127.0.0.1:0");
    let before = chain(&a);
    // An enrollment token does not admit a peer; the join token's kind is checked before any call.
    let envoy_token = a.token();
    let out = std::process::Command::new(support::bin("vigosrv"))
        .args(["run", "--listen", "127.0.0.1:0", "--join", &a.addr, "--token", &envoy_token, "--data-dir"])
        .arg(tmp.path().join("b"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("malformed join token (expected vgp1_"), "{err}");
    // A used-up join token is refused by the cluster, by name.
    let token = join_token(&a, 1);
    let mut b = join(&tmp.path().join("b2"), &a, &token);
    wait_for_voters(&a, 2);
    let out = std::process::Command::new(support::bin("vigosrv"))
        .args(["run", "--listen", "127.0.0.1:0", "--join", &a.addr, "--token", &token, "--data-dir"])
        .arg(tmp.path().join("c"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused to admit this peer: ") && err.contains("used up"), "{err}");
    let after = chain(&a);
    assert_eq!(after.len(), before.len() + 3, "two tokens, one admission; the refusals stored nothing");
    // remove takes a peer out; it stops, and refuses to start again on its old data.
    let err = a.cli(&["server", "remove", "1"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("peer 1 leads; promote another peer"), "{err:?}");
    a.cli_ok(&["server", "remove", "2"]);
    let s = status(&a).unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 1, "{s}");
    let exited = b.wait_exit(Duration::from_secs(20)).expect("a removed peer stops by itself");
    assert!(exited.success(), "{exited}");
    let out = std::process::Command::new(support::bin("vigosrv"))
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&b.data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("was removed from the cluster at event"), "{err}");
    let err = a.cli(&["server", "remove", "7"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("no peer 7 in the cluster"));
    a.token();
}

/// Creates `n` tokens on `peer` over one admin connection: `n` events on the log.
fn many_events(peer: &Server, n: usize) {
    use vigo_proto::admin::CreateTokenRequest;
    use vigo_proto::admin::admin_client::AdminClient;
    use vigo_proto::tls::{client_config, connect, read_certs, read_key};
    let creds = peer.creds();
    let ca = read_certs(&creds.join("ca.crt")).unwrap().remove(0);
    let identity = (read_certs(&creds.join("admin.crt")).unwrap(), read_key(&creds.join("admin.key")).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = client_config(&ca, Some(identity)).unwrap();
        let mut client = AdminClient::new(connect(&peer.addr, config, Duration::from_secs(10)).await.unwrap());
        for _ in 0..n {
            client.create_token(CreateTokenRequest { uses: 1, ttl_s: 0, join: false, federate: false }).await.unwrap();
        }
    });
}

#[test]
fn a_peer_joining_after_10k_events_catches_up_by_snapshot_and_its_history_starts_at_1() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start(&tmp.path().join("a"), "127.0.0.1:0");
    many_events(&a, 10_000);
    let token = join_token(&a, 1);
    let b = join(&tmp.path().join("b"), &a, &token);
    let s = wait_for_voters(&a, 2);
    let members = s["members"].as_array().unwrap();
    let (leader, joined) = (&members[0], &members[1]);
    assert!(leader["purged_index"].as_u64().unwrap() > 1_000, "the leader compacted its log: {s}");
    assert!(joined["snapshot_index"].as_u64().unwrap() > 1_000, "the new peer installed a snapshot: {s}");
    let history = events(&b);
    assert_eq!(history.len(), 10_000 + 4, "keys, founder, 10,000 tokens, join token, admission");
    assert_eq!(history[0]["index"], 1);
    assert_eq!(history[0]["event"], "ClusterKeysSealed");
    assert_eq!(chain(&b), chain(&a), "the same hash chain from index 1 on both peers");
}

#[test]
fn an_envoy_enrolled_before_the_peers_joined_learns_them_and_moves_when_its_peer_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start(&tmp.path().join("a"), "127.0.0.1:0");
    let (envoy_dir, root) = (tmp.path().join("envoy"), tmp.path().join("root"));
    std::fs::create_dir_all(&root).unwrap();
    let out = enroll(&a, &a.token(), &envoy_dir, "web-1");
    assert!(out.status.success(), "{}", text(&out));
    let servers = |dir: &Path| -> Vec<String> {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("identity/enrollment.json")).unwrap()).unwrap();
        meta["servers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(servers(&envoy_dir), vec![a.addr.clone()]);

    let token = join_token(&a, 2);
    let b = join(&tmp.path().join("b"), &a, &token);
    let c = join(&tmp.path().join("c"), &a, &token);
    wait_for_voters(&a, 3);
    stack(&tmp.path().join("stack1"), 1);
    a.cli_ok(&["config", "publish", tmp.path().join("stack1").to_str().unwrap()]);
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(servers(&envoy_dir), [a.addr.clone(), b.addr.clone(), c.addr.clone()], "learned with a check-in");

    a.kill();
    stack(&tmp.path().join("stack2"), 2);
    let stack2 = tmp.path().join("stack2");
    eventually("a publish after the leader died", Duration::from_secs(15), || {
        b.cli(&["config", "publish", stack2.to_str().unwrap()]).status.success().then_some(())
    });
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "2\n", "converged through another peer");
    drop(c);
}

#[test]
fn a_peer_that_dies_in_the_middle_of_a_snapshot_build_or_install_restarts_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start(&tmp.path().join("a"), "127.0.0.1:0");
    let token = join_token(&a, 2);
    let mut b = join(&tmp.path().join("b"), &a, &token);
    let c = join(&tmp.path().join("c"), &a, &token);
    wait_for_voters(&a, 3);

    // A follower builds a snapshot and dies before, then after, recording it.
    for point in [crash::SNAPSHOT_BUILD_BEFORE_RECORD, crash::SNAPSHOT_BUILD_AFTER_RECORD] {
        many_events(&a, 20);
        wait_for_voters(&a, 3);
        arm(&b.data_dir, point);
        let _ = b.cli(&["server", "compact"]);
        b.wait_crash(Duration::from_secs(20));
        many_events(&a, 5);
        b = Server::start(&b.data_dir.clone(), &b.addr.clone());
        wait_for_voters(&a, 3);
        let history = chain(&a);
        eventually(
            &format!("the peer that died at {point} to hold the whole history"),
            Duration::from_secs(20),
            || (chain(&b) == history).then_some(()),
        );
        // Its own next snapshot is whole: it compacts, and a restart reads it back.
        b.cli_ok(&["server", "compact"]);
        b.kill_and_restart();
        assert_eq!(chain(&b), history, "after {point}");
    }

    // A follower that was away catches up by snapshot, and dies before, then after, writing it.
    for point in [crash::SNAPSHOT_INSTALL_BEFORE_WRITE, crash::SNAPSHOT_INSTALL_AFTER_WRITE] {
        // It holds log entries past its own last snapshot when it goes away.
        b.cli_ok(&["server", "compact"]);
        many_events(&a, 5);
        wait_for_voters(&a, 3);
        let (dir, addr) = (b.data_dir.clone(), b.addr.clone());
        b.kill();
        many_events(&a, 30);
        a.cli_ok(&["server", "compact"]);
        let purged = status(&a).unwrap()["members"][0]["purged_index"].as_u64().unwrap();
        arm(&dir, point);
        b = Server::start_or_crash(&dir, &addr);
        b.wait_crash(Duration::from_secs(20));
        b = Server::start(&dir, &addr);
        let s = wait_for_voters(&a, 3);
        let installed = s["members"].as_array().unwrap().iter().find(|m| m["addr"] == addr.as_str()).cloned();
        let installed = installed.expect("the restarted peer is a member");
        assert!(
            installed["snapshot_index"].as_u64().unwrap() >= purged,
            "it caught up by snapshot after dying at {point}: {s}"
        );
        assert_eq!(chain(&b), chain(&a), "after {point}");
        assert_eq!(chain(&c), chain(&a));
        // Its log after the install holds no gap: it takes more entries and starts again.
        many_events(&a, 10);
        wait_for_voters(&a, 3);
        b.kill_and_restart();
        wait_for_voters(&a, 3);
        assert_eq!(chain(&b), chain(&a), "restarted after {point}");
    }
    // And the cluster still takes writes everywhere.
    b.token();
    assert_eq!(chain(&b), chain(&a));
}
