//! A bolt's side of the federation, over real processes: `vigosrv --bolt` puts itself on the
//! admissions roster once, `vigocli spanner` shows the roster and changes it with reassigns and
//! drains, each an event on the bolt's log with a stamp that only grows, refusals are one line
//! and change nothing, and the roster comes back from the log after a restart.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Server, bin, text};

fn roster(server: &Server) -> Value {
    server.cli_json(&["spanner", "status"])
}

fn last_index(server: &Server) -> u64 {
    server.cli_json(&["audit", "log"])["last_index"].as_u64().unwrap()
}

fn events_of(server: &Server, kind: &str) -> Vec<Value> {
    let log = server.cli_json(&["audit", "log"]);
    log["events"].as_array().unwrap().iter().filter(|e| e["event"] == kind).cloned().collect()
}

/// Runs vigocli expecting a refusal; returns its one-line error.
fn refused(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(!out.status.success(), "{args:?} should be refused: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn a_bolt_registers_itself_and_takes_reassigns_and_drains_as_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("eu-1");
    let flags = ["--bolt", "eu-1", "--bolt-pattern", "*.eu.example.com", "--bolt-pattern", "eu-*"];
    let server = Server::start_with(&dir, "127.0.0.1:0", &flags);
    let deadline = Instant::now() + Duration::from_secs(30);
    while roster(&server)["bolts"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the bolt did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = roster(&server);
    assert_eq!(status["bolt"], "eu-1");
    assert_eq!(status["bolts"][0]["id"], "eu-1");
    assert_eq!(status["bolts"][0]["this"], true);
    assert_eq!(status["bolts"][0]["addrs"], serde_json::json!([server.addr]));
    assert_eq!(status["bolts"][0]["patterns"], serde_json::json!(["*.eu.example.com", "eu-*"]));
    assert_eq!(server.cli_json(&["spanner", "bolt", "eu-1"])["id"], "eu-1");

    // Refusals: one line each, and nothing is written.
    let before = last_index(&server);
    let err = refused(&server, &["spanner", "reassign", "--hostname", "web-*", "--to", "us-1"]);
    assert!(err.contains("no bolt us-1 in the roster"), "{err}");
    let err = refused(&server, &["spanner", "drain", "--bolt", "eu-1", "--to", "eu-1"]);
    assert!(err.contains("a bolt cannot be drained to itself"), "{err}");
    let err = refused(&server, &["spanner", "reassign", "--hostname", "web-[", "--to", "eu-1"]);
    assert!(err.contains("invalid hostname pattern \"web-[\""), "{err}");
    let err = refused(&server, &["spanner", "bolt", "ap-1"]);
    assert!(err.contains("no bolt ap-1 in the roster"), "{err}");
    assert_eq!(last_index(&server), before, "refused requests wrote nothing");

    // A reassignment and its lifting: events with growing stamps.
    let out = server.cli_ok(&["spanner", "reassign", "--hostname", "web-*.eu.example.com", "--to", "eu-1"]);
    assert!(out.starts_with("web-*.eu.example.com reassigned to bolt eu-1 (event "), "{out}");
    assert_eq!(
        roster(&server)["reassigned"],
        serde_json::json!([{ "hostname": "web-*.eu.example.com", "to": "eu-1" }])
    );
    server.cli_ok(&["spanner", "reassign", "--hostname", "web-*.eu.example.com", "--lift"]);
    assert_eq!(roster(&server)["reassigned"], serde_json::json!([]));
    let reassigns = events_of(&server, "EnvoysReassigned");
    assert_eq!(reassigns.len(), 2);
    let stamp = |e: &Value| {
        let s = e["details"]["stamp"].as_str().unwrap().to_string();
        assert!(s.ends_with("@eu-1"), "{s}");
        let (ms, counter) = s.trim_end_matches("@eu-1").split_once('.').unwrap();
        (ms.parse::<u64>().unwrap(), counter.parse::<u32>().unwrap())
    };
    assert!(stamp(&reassigns[1]) > stamp(&reassigns[0]), "stamps grow: {reassigns:?}");

    // The roster is control state: it comes back from the log, and the bolt does not register
    // again when its entry is unchanged.
    let (addr, registered) = (server.addr.clone(), events_of(&server, "BoltRegistered").len());
    assert_eq!(registered, 1);
    server.stop();
    let server = Server::start_with(&dir, &addr, &flags);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(roster(&server)["bolts"][0]["id"], "eu-1");
    assert_eq!(events_of(&server, "BoltRegistered").len(), 1, "no second registration");

    // A server that is not a bolt refuses roster writes.
    let plain = Server::start(&tmp.path().join("plain"), "127.0.0.1:0");
    let err = refused(&plain, &["spanner", "drain", "--bolt", "eu-1", "--end"]);
    assert!(err.contains("this server is not a bolt"), "{err}");
    assert_eq!(roster(&plain)["bolt"], Value::Null);

    // A bad bolt id is refused at start, in one line.
    let out = std::process::Command::new(bin("vigosrv"))
        .args(["run", "--data-dir"])
        .arg(tmp.path().join("bad"))
        .args(["--listen", "127.0.0.1:0", "--bolt", "eu 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bolt: invalid bolt id \"eu 1\""), "{err}");
}

/// Polls `check` on a bolt's roster for at most `limit`.
fn eventually_roster(server: &Server, what: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = roster(server);
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}; last roster: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `check(server)` holds; panics naming `what` after `limit`.
fn eventually(server: &Server, what: &str, limit: Duration, check: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + limit;
    while !check(server) {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The version and sha256 of the last stack `server` published or took.
fn live_stack(server: &Server) -> (u64, String) {
    let published = events_of(server, "StackPublished");
    match published.last() {
        Some(e) => (e["details"]["version"].as_u64().unwrap(), e["details"]["sha256"].as_str().unwrap().to_string()),
        None => (0, String::new()),
    }
}

fn bolt_ids(status: &Value) -> Vec<String> {
    status["bolts"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

fn health_of<'a>(status: &'a Value, id: &str) -> &'a Value {
    &status["bolts"].as_array().unwrap().iter().find(|b| b["id"] == id).unwrap()["health"]
}

#[test]
fn three_bolts_federate_gossip_their_rosters_and_report_a_dead_bolt() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start_with(&tmp.path().join("eu-1"), "127.0.0.1:0", &["--bolt", "eu-1", "--bolt-pattern", "*.eu"]);
    eventually_roster(&a, "eu-1 registered", Duration::from_secs(30), |s| bolt_ids(s) == ["eu-1"]);

    // A token of the wrong kind, or from a server that is not a bolt, is refused clearly.
    let out = std::process::Command::new(bin("vigosrv"))
        .args(["run", "--data-dir"])
        .arg(tmp.path().join("refused"))
        .args(["--listen", "127.0.0.1:0", "--bolt", "xx-1", "--federate", &a.addr, "--federation-token", &a.token()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed federation token"), "{}", text(&out));

    // us-1 federates through eu-1, ap-1 through us-1: one CA, three clusters.
    let token = a.cli_ok(&["token", "create", "--federate"]);
    assert!(token.starts_with("vgf1_"), "{token}");
    let b_flags = ["--bolt", "us-1", "--bolt-pattern", "*.us", "--federate", &a.addr, "--federation-token", &token];
    let b = Server::start_with(&tmp.path().join("us-1"), "127.0.0.1:0", &b_flags);
    let token_b = b.cli_ok(&["token", "create", "--federate"]);
    let c_flags = ["--bolt", "ap-1", "--bolt-pattern", "*.ap", "--federate", &b.addr, "--federation-token", &token_b];
    let c_dir = tmp.path().join("ap-1");
    let c = Server::start_with(&c_dir, "127.0.0.1:0", &c_flags);
    let all = ["ap-1", "eu-1", "us-1"];
    for bolt in [&a, &b, &c] {
        eventually_roster(bolt, "every bolt knows all three", Duration::from_secs(40), |s| bolt_ids(s) == all);
    }
    assert_eq!(events_of(&a, "BoltFederated").len(), 1, "eu-1 federated us-1");
    assert!(!events_of(&a, "RosterMerged").is_empty(), "eu-1 merged what gossip brought");

    // A reassign on one bolt reaches the others; the owner of a hostname is the same everywhere.
    c.cli_ok(&["spanner", "reassign", "--hostname", "web-*.eu", "--to", "us-1"]);
    for bolt in [&a, &b] {
        eventually_roster(bolt, "the reassign gossiped", Duration::from_secs(30), |s| {
            s["reassigned"] == serde_json::json!([{ "hostname": "web-*.eu", "to": "us-1" }])
        });
    }

    // A publish on any bolt reaches the others at the same version; a later one elsewhere too.
    let stack = tmp.path().join("stack");
    support::generation_stack(&stack, "one");
    a.cli_ok(&["config", "publish", stack.to_str().unwrap()]);
    let first = live_stack(&a);
    for bolt in [&b, &c] {
        eventually(bolt, "the publish on eu-1 synced", Duration::from_secs(30), |s| live_stack(s) == first);
    }
    support::generation_stack(&stack, "two");
    assert_eq!(c.cli_ok(&["config", "publish", stack.to_str().unwrap()]).trim(), "2");
    let second = live_stack(&c);
    for bolt in [&a, &b] {
        eventually(bolt, "the publish on ap-1 synced", Duration::from_secs(30), |s| live_stack(s) == second);
    }
    // Publishing the live stack again is no change, here or anywhere.
    assert_eq!(b.cli_ok(&["config", "publish", stack.to_str().unwrap()]).trim(), "2");

    // A killed bolt is reported offline; back, it is online again.
    let status =
        eventually_roster(&a, "ap-1 probed", Duration::from_secs(20), |s| health_of(s, "ap-1")["online"] == true);
    assert_eq!(health_of(&status, "ap-1")["envoys"], 0);
    let c_addr = c.addr.clone();
    c.kill();
    eventually_roster(&a, "ap-1 reported offline", Duration::from_secs(20), |s| {
        health_of(s, "ap-1")["online"] == false && health_of(s, "ap-1")["failed_probes"].as_u64() >= Some(1)
    });
    assert_eq!(health_of(&roster(&a), "us-1")["online"], true, "the others stay online");
    // A fleet query names the bolt that did not answer instead of leaving its envoys out quietly.
    let out = a.cli(&["envoys", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bolt ap-1 did not answer, its envoys are missing"), "{err}");
    let compliance = a.cli_json(&["report", "compliance"]);
    assert_eq!(compliance["unanswered"][0]["bolt"], "ap-1", "{compliance}");
    // A publish while ap-1 is away reaches it when it is back.
    support::generation_stack(&stack, "three");
    assert_eq!(a.cli_ok(&["config", "publish", stack.to_str().unwrap()]).trim(), "3");
    let third = live_stack(&a);
    let c = Server::start_with(&c_dir, &c_addr, &c_flags);
    eventually_roster(&a, "ap-1 online again", Duration::from_secs(20), |s| health_of(s, "ap-1")["online"] == true);
    eventually(&c, "ap-1 catches up with the publish it missed", Duration::from_secs(30), |s| live_stack(s) == third);
    assert_eq!(bolt_ids(&roster(&c)), all);
}

/// The hostnames `server` holds as active envoys, and the ones it handed off (to which bolt).
fn held(server: &Server) -> (Vec<String>, Vec<(String, String)>) {
    let list = server.cli_json(&["envoys", "list", "--local"]);
    let (mut active, mut moved) = (Vec::new(), Vec::new());
    for e in list.as_array().unwrap() {
        let hostname = e["hostname"].as_str().unwrap().to_string();
        match e["moved_to"].as_str() {
            Some(bolt) => moved.push((hostname, bolt.to_string())),
            None => active.push(hostname),
        }
    }
    active.sort();
    moved.sort();
    (active, moved)
}

#[test]
fn envoys_land_on_the_owning_bolt_and_a_reassign_moves_them_at_their_next_check_in() {
    let tmp = tempfile::tempdir().unwrap();
    let eu = Server::start_with(&tmp.path().join("eu-1"), "127.0.0.1:0", &["--bolt", "eu-1", "--bolt-pattern", "*.eu"]);
    eventually_roster(&eu, "eu-1 registered", Duration::from_secs(30), |s| bolt_ids(s) == ["eu-1"]);
    let token = eu.cli_ok(&["token", "create", "--federate"]);
    let us_flags = ["--bolt", "us-1", "--bolt-pattern", "*.us", "--federate", &eu.addr, "--federation-token", &token];
    let us = Server::start_with(&tmp.path().join("us-1"), "127.0.0.1:0", &us_flags);
    // Published on eu-1, the stack reaches us-1 by config sync: same version, same content.
    both_known_then_publish(&eu, &us, &tmp.path().join("stack"));
    assert_eq!(events_of(&us, "StackPublished")[0]["details"]["synced_from"], "eu-1");

    // Both enroll through eu-1; the one whose hostname us-1 owns lands there.
    let tokens = eu.cli_ok(&["token", "create", "--uses", "2"]);
    let (web_us, web_eu) = (tmp.path().join("web-1.us"), tmp.path().join("web-2.eu"));
    for (dir, hostname) in [(&web_us, "web-1.us"), (&web_eu, "web-2.eu")] {
        let out = support::enroll(&eu, &tokens, dir, hostname);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(held(&us), (vec!["web-1.us".to_string()], vec![]));
    // Asked of either bolt, the fleet is one: each envoy once, from the bolt that holds it.
    for bolt in [&eu, &us] {
        let listed = bolt.cli_json(&["envoys", "list"]);
        let rows: Vec<(&str, &str)> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["hostname"].as_str().unwrap(), e["bolt"].as_str().unwrap()))
            .collect();
        assert_eq!(rows, [("web-1.us", "us-1"), ("web-2.eu", "eu-1")], "{listed}");
        assert_eq!(bolt.cli_json(&["envoys", "show", "web-1.us"])["bolt"], "us-1");
        let compliance = bolt.cli_json(&["report", "compliance"]);
        assert_eq!(compliance["envoys"], 2, "{compliance}");
        assert_eq!(compliance["unanswered"], serde_json::json!([]), "{compliance}");
    }
    assert_eq!(held(&eu), (vec!["web-2.eu".to_string()], vec![("web-1.us".to_string(), "us-1".to_string())]));
    let servers = |dir: &std::path::Path| -> Value {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("identity/enrollment.json")).unwrap()).unwrap();
        meta["servers"].clone()
    };
    assert_eq!(servers(&web_us), serde_json::json!([us.addr]), "the envoy was given its bolt's servers");
    for (dir, root) in [(&web_us, "root-us"), (&web_eu, "root-eu")] {
        let root = tmp.path().join(root);
        let out = support::envoy_once(dir, &root, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "7\n");
    }

    // Reassigned on eu-1, web-2.eu moves at its next check-in: handed off, redirected, served.
    eu.cli_ok(&["spanner", "reassign", "--hostname", "web-2.eu", "--to", "us-1"]);
    eventually_roster(&us, "us-1 learns the reassign", Duration::from_secs(30), |s| {
        s["reassigned"].as_array().is_some_and(|r| !r.is_empty())
    });
    let root = tmp.path().join("root-eu");
    std::fs::remove_file(root.join("generation")).unwrap();
    let out = support::envoy_once(&web_eu, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("redirected to another bolt"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "7\n", "converged from the new bolt");
    assert_eq!(servers(&web_eu), serde_json::json!([us.addr]));
    let (active, _) = held(&us);
    assert_eq!(active, ["web-1.us", "web-2.eu"]);
    assert_eq!(held(&eu).1.len(), 2, "eu-1 holds both as handed off");
    assert_eq!(events_of(&us, "EnvoyAdopted").len(), 2);
    assert_eq!(events_of(&eu, "EnvoyHandedOff").len(), 2);
}

/// Waits until bolts eu-1 and us-1 know each other, publishes a stack (generation 7, written to
/// `stack`) on eu-1 and waits until us-1 has taken it.
fn both_known_then_publish(eu: &Server, us: &Server, stack: &std::path::Path) {
    for bolt in [eu, us] {
        eventually_roster(bolt, "both bolts known", Duration::from_secs(30), |s| bolt_ids(s) == ["eu-1", "us-1"]);
    }
    support::generation_stack(stack, "7");
    eu.cli_ok(&["config", "publish", stack.to_str().unwrap()]);
    let published = live_stack(eu);
    eventually(us, "us-1 takes eu-1's stack", Duration::from_secs(30), |us| live_stack(us) == published);
}

/// The bolt named in a roster entry's drain, if it is drained.
fn drained_to(status: &Value, id: &str) -> Option<String> {
    status["bolts"].as_array()?.iter().find(|b| b["id"] == id)?["drained_to"].as_str().map(str::to_string)
}

#[test]
fn a_dead_bolt_is_auto_drained_its_envoys_turn_to_a_healthy_one_and_go_back_when_it_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let eu_flags = ["--bolt", "eu-1", "--bolt-pattern", "*.eu", "--auto-drain-after", "2"];
    let eu = Server::start_with(&tmp.path().join("eu-1"), "127.0.0.1:0", &eu_flags);
    eventually_roster(&eu, "eu-1 registered", Duration::from_secs(30), |s| bolt_ids(s) == ["eu-1"]);
    let token = eu.cli_ok(&["token", "create", "--federate"]);
    let us_flags = [
        "--bolt",
        "us-1",
        "--bolt-pattern",
        "*.us",
        "--auto-drain-after",
        "2",
        "--federate",
        &eu.addr,
        "--federation-token",
        &token,
    ];
    let us_dir = tmp.path().join("us-1");
    let us = Server::start_with(&us_dir, "127.0.0.1:0", &us_flags);
    both_known_then_publish(&eu, &us, &tmp.path().join("stack"));

    // An envoy of us-1, which knows eu-1's peers as its fallback.
    let envoy = tmp.path().join("web-1.us");
    let out = support::enroll(&us, &us.cli_ok(&["token", "create"]), &envoy, "web-1.us");
    assert!(out.status.success(), "{}", text(&out));
    let meta: Value = serde_json::from_slice(&std::fs::read(envoy.join("identity/enrollment.json")).unwrap()).unwrap();
    assert_eq!(meta["fallback"], serde_json::json!([eu.addr]), "{meta}");
    let root = tmp.path().join("root");
    let out = support::envoy_once(&envoy, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // us-1 dies: after two failed probes eu-1 drains it to itself, automatically.
    let us_addr = us.addr.clone();
    us.kill();
    let status = eventually_roster(&eu, "us-1 auto-drained", Duration::from_secs(30), |s| {
        drained_to(s, "us-1").as_deref() == Some("eu-1")
    });
    let us_entry = status["bolts"].as_array().unwrap().iter().find(|b| b["id"] == "us-1").unwrap().clone();
    assert_eq!(us_entry["drained_automatically"], true, "{us_entry}");

    // Its envoy turns to eu-1, which takes it in on its certificate and serves it.
    let mut served = false;
    for _ in 0..5 {
        let out = support::envoy_once(&envoy, &root, &[]);
        assert!(out.status.success(), "{}", text(&out));
        // Served there, it holds eu-1's peers as its servers from then on.
        let meta: Value =
            serde_json::from_slice(&std::fs::read(envoy.join("identity/enrollment.json")).unwrap()).unwrap();
        if meta["servers"] == serde_json::json!([eu.addr]) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(served, "the envoy was served by eu-1");
    assert_eq!(held(&eu).0, ["web-1.us"]);
    let adopted = events_of(&eu, "EnvoyAdopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");

    // us-1 is back: eu-1 lifts the drain, and the envoy goes home at its next check-in.
    let us = Server::start_with(&us_dir, &us_addr, &us_flags);
    eventually_roster(&eu, "the drain lifted", Duration::from_secs(30), |s| drained_to(s, "us-1").is_none());
    eventually_roster(&us, "us-1 sees the drain lifted", Duration::from_secs(30), |s| drained_to(s, "us-1").is_none());
    let (mut home, mut last) = (false, String::new());
    for _ in 0..5 {
        let out = support::envoy_once(&envoy, &root, &[]);
        assert!(out.status.success(), "{}", text(&out));
        last = text(&out);
        if held(&eu).1 == [("web-1.us".to_string(), "us-1".to_string())] {
            home = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(home, "eu-1 handed the envoy back: {:?}; the envoy's last run: {last}", held(&eu));
    assert_eq!(held(&us).0, ["web-1.us"]);

    // Revoked at us-1, the envoy is revoked for every bolt: with us-1 gone again, eu-1 does not
    // take it back in.
    us.cli_ok(&["envoys", "revoke", "web-1.us"]);
    eventually_roster(&eu, "eu-1 learns the revocation", Duration::from_secs(30), |s| s["revoked_envoys"] == 1);
    us.kill();
    eventually_roster(&eu, "us-1 auto-drained again", Duration::from_secs(30), |s| {
        drained_to(s, "us-1").as_deref() == Some("eu-1")
    });
    for _ in 0..2 {
        let out = support::envoy_once(&envoy, &root, &[]);
        assert!(out.status.success(), "the envoy goes on offline: {}", text(&out));
    }
    assert!(held(&eu).0.is_empty(), "eu-1 holds no revoked envoy: {:?}", held(&eu));
    assert_eq!(events_of(&eu, "EnvoyAdopted").len(), 1, "taken in once, before the revocation");
}

#[test]
fn thirty_envoys_enrolled_through_one_bolt_land_by_pattern_and_a_partition_between_bolts_heals() {
    use std::sync::{Arc, Mutex};
    use support::proxy::Proxy;
    let tmp = tempfile::tempdir().unwrap();
    // Each bolt is reached by the others only through a proxy, which can cut it off.
    let targets: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(None))).collect();
    let proxies: Vec<Proxy> = targets.iter().map(|t| Proxy::start(t.clone())).collect();
    let (eu_adv, us_adv, ap_adv) =
        (proxies[0].addr.to_string(), proxies[1].addr.to_string(), proxies[2].addr.to_string());
    let eu_flags = ["--bolt", "eu-1", "--bolt-pattern", "*.eu", "--advertise", &eu_adv];
    let eu = Server::start_with(&tmp.path().join("eu-1"), "127.0.0.1:0", &eu_flags);
    *targets[0].lock().unwrap() = Some(eu.addr.parse().unwrap());
    eventually_roster(&eu, "eu-1 registered", Duration::from_secs(30), |s| bolt_ids(s) == ["eu-1"]);
    let token = eu.cli_ok(&["token", "create", "--federate", "--uses", "2"]);
    let us_flags = [
        "--bolt",
        "us-1",
        "--bolt-pattern",
        "*.us",
        "--advertise",
        &us_adv,
        "--federate",
        &eu.addr,
        "--federation-token",
        &token,
    ];
    let us = Server::start_with(&tmp.path().join("us-1"), "127.0.0.1:0", &us_flags);
    *targets[1].lock().unwrap() = Some(us.addr.parse().unwrap());
    let ap_flags = [
        "--bolt",
        "ap-1",
        "--bolt-pattern",
        "*.ap",
        "--advertise",
        &ap_adv,
        "--federate",
        &eu.addr,
        "--federation-token",
        &token,
    ];
    let ap = Server::start_with(&tmp.path().join("ap-1"), "127.0.0.1:0", &ap_flags);
    *targets[2].lock().unwrap() = Some(ap.addr.parse().unwrap());
    let all = ["ap-1", "eu-1", "us-1"];
    for bolt in [&eu, &us, &ap] {
        eventually_roster(bolt, "every bolt knows all three", Duration::from_secs(40), |s| bolt_ids(s) == all);
    }

    // Thirty envoys enroll through eu-1; each lands on the bolt its hostname's pattern names.
    let tokens = eu.cli_ok(&["token", "create", "--uses", "30"]);
    let mut expected = Vec::new();
    for i in 0..30 {
        let (region, bolt) = [("eu", "eu-1"), ("us", "us-1"), ("ap", "ap-1")][i % 3];
        let hostname = format!("web-{i:02}.{region}");
        let out = support::enroll(&eu, &tokens, &tmp.path().join(&hostname), &hostname);
        assert!(out.status.success(), "{hostname}: {}", text(&out));
        expected.push((hostname, bolt.to_string()));
    }
    expected.sort();
    for bolt in [&eu, &us, &ap] {
        let listed = bolt.cli_json(&["envoys", "list"]);
        let mut rows: Vec<(String, String)> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["hostname"].as_str().unwrap().to_string(), e["bolt"].as_str().unwrap().to_string()))
            .collect();
        rows.sort();
        assert_eq!(rows, expected, "every bolt lists all thirty, each once, from its bolt");
    }
    assert_eq!(held(&us).0.len(), 10);
    assert_eq!(held(&ap).0.len(), 10);
    // Every bolt's status counts the others' envoys (none has reported a run: none compliant).
    eventually_roster(&eu, "eu-1 probes the others' counts", Duration::from_secs(20), |s| {
        health_of(s, "us-1")["envoys"] == 10 && health_of(s, "ap-1")["envoys"] == 10
    });
    assert_eq!(health_of(&roster(&eu), "eu-1")["envoys"], 10);
    assert_eq!(health_of(&roster(&eu), "us-1")["compliant"], 0);

    // The bolts are cut off from each other; eu-1 and us-1 each take a reassign of the same
    // hostnames that no other bolt sees. Healed, all three rosters agree on one of them.
    for proxy in &proxies {
        proxy.cut();
    }
    eventually_roster(&ap, "ap-1 sees both gone", Duration::from_secs(20), |s| {
        health_of(s, "eu-1")["online"] == false && health_of(s, "us-1")["online"] == false
    });
    eu.cli_ok(&["spanner", "reassign", "--hostname", "db-*", "--to", "eu-1"]);
    us.cli_ok(&["spanner", "reassign", "--hostname", "db-*", "--to", "us-1"]);
    std::thread::sleep(Duration::from_secs(3));
    let apart: Vec<Value> = [&eu, &us].iter().map(|b| roster(b)["reassigned"].clone()).collect();
    assert_ne!(apart[0], apart[1], "apart, each bolt holds its own write: {apart:?}");
    for proxy in &proxies {
        proxy.heal();
    }
    let healed = eventually_roster(&ap, "ap-1 hears from both again", Duration::from_secs(30), |s| {
        health_of(s, "eu-1")["online"] == true && health_of(s, "us-1")["online"] == true
    });
    let settled = |s: &Value| s["reassigned"].as_array().is_some_and(|r| r.len() == 1);
    let winner =
        eventually_roster(&ap, "ap-1 takes one of the writes", Duration::from_secs(30), settled)["reassigned"].clone();
    assert!(apart.contains(&winner), "the later write wins: {winner} of {apart:?} ({healed})");
    for bolt in [&eu, &us] {
        eventually_roster(bolt, "the rosters converge", Duration::from_secs(30), |s| s["reassigned"] == winner);
    }
}
