//! The walking skeleton end to end, over real processes on loopback: enrollment, publish,
//! converge, idempotence, a second version, offline converge from the cache with queued
//! results, restart with state rebuilt from the log, and the audit log's hash chain.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{Server, enroll, envoy_once, text, write_stack};

const HOSTS: [&str; 3] = ["web-1.example.com", "web-2.example.com", "db-1.example.com"];

fn stack(dir: &Path, greeting: &str) {
    write_stack(
        dir,
        &[
            (
                "assign.yaml",
                &format!("- match: \"web-*\"\n  modules: [site]\n  vars: {{ greeting: \"{greeting}\" }}\n"),
            ),
            (
                "modules/site/module.yaml",
                "resources:\n\
                 \x20 - type: file\n\
                 \x20   path: /etc/site/greeting\n\
                 \x20   template: greeting.j2\n\
                 \x20   mode: \"0640\"\n\
                 \x20 - type: file\n\
                 \x20   path: /etc/site/static\n\
                 \x20   content: \"static\\n\"\n\
                 \x20   mode: \"0600\"\n",
            ),
            ("modules/site/files/greeting.j2", "{{ greeting }} from {{ hostname }}\n"),
        ],
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn enroll_publish_converge_offline_restart_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, "127.0.0.1:0");
    let addr = server.addr.clone();

    // Enroll three envoys with one three-use token.
    let token = server.cli_ok(&["token", "create", "--uses", "3"]);
    let edir = |h: &str| tmp.path().join("envoys").join(h);
    let root = |h: &str| tmp.path().join("roots").join(h);
    for h in HOSTS {
        let out = enroll(&server, &token, &edir(h), h);
        assert!(out.status.success(), "enroll {h}: {}", text(&out));
        std::fs::create_dir_all(root(h)).unwrap();
    }

    // Publish a stack that matches the two web hosts.
    let stack_dir = tmp.path().join("stack");
    stack(&stack_dir, "hello");
    assert_eq!(server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]), "1");

    for h in HOSTS {
        let out = envoy_once(&edir(h), &root(h), &[]);
        assert!(out.status.success(), "first run {h}: {}", text(&out));
    }
    for h in &HOSTS[..2] {
        let greeting = root(h).join("etc/site/greeting");
        assert_eq!(std::fs::read_to_string(&greeting).unwrap(), format!("hello from {h}\n"));
        assert_eq!(mode(&greeting), 0o640);
        assert_eq!(std::fs::read_to_string(root(h).join("etc/site/static")).unwrap(), "static\n");
        assert_eq!(mode(&root(h).join("etc/site/static")), 0o600);
    }
    assert_eq!(std::fs::read_dir(root(HOSTS[2])).unwrap().count(), 0, "db-1 matches no entry and gets nothing");

    // A second run changes nothing and rewrites nothing.
    let web1 = HOSTS[0];
    let greeting = root(web1).join("etc/site/greeting");
    let before = mtime(&greeting);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = envoy_once(&edir(web1), &root(web1), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 changed, 2 unchanged"), "{}", text(&out));
    assert_eq!(mtime(&greeting), before, "a converged file is not rewritten");

    // Version 2: the changed file follows.
    stack(&stack_dir, "good day");
    assert_eq!(server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]), "2");
    let out = envoy_once(&edir(web1), &root(web1), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&greeting).unwrap(), format!("good day from {web1}\n"));

    let audit_before = server.cli_json(&["audit", "log"]);

    // Server away: a deleted managed file is restored from the cached bundle, results queue.
    server.kill();
    std::fs::remove_file(&greeting).unwrap();
    let out = envoy_once(&edir(web1), &root(web1), &[]);
    assert!(out.status.success(), "offline run: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("offline"), "{}", text(&out));
    assert!(stdout.contains("1 queued"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&greeting).unwrap(), format!("good day from {web1}\n"));

    // Restart on the same address: state is rebuilt from the log, the queued results arrive.
    let server = Server::start(&data, &addr);
    let out = envoy_once(&edir(web1), &root(web1), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 report(s) sent, 0 queued"), "{}", text(&out));
    let envoys = server.cli_json(&["envoys", "list"]);
    let envoys = envoys.as_array().unwrap();
    assert_eq!(envoys.len(), 3, "enrollments survive the restart");
    let web1_info = envoys.iter().find(|e| e["hostname"] == web1).unwrap();
    assert_eq!(web1_info["reports_received"], 2, "the offline run and the online run both arrived");
    assert_eq!(web1_info["last_run"]["stack_version"], 2);

    // The audit log: the same history before and after the restart, in order, chained.
    let audit = server.cli_json(&["audit", "log"]);
    assert_eq!(audit, audit_before, "restart rebuilds the same history");
    assert_eq!(audit["chain"], "verified");
    let events = audit["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ClusterKeysSealed",
            "PeerAdmitted",
            "TokenCreated",
            "EnvoyEnrolled",
            "EnvoyEnrolled",
            "EnvoyEnrolled",
            "StackPublished",
            "StackPublished"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["index"], i as u64 + 1);
        let expected_prev = if i == 0 { "0".repeat(64) } else { events[i - 1]["hash"].as_str().unwrap().to_string() };
        assert_eq!(e["prev_hash"], expected_prev.as_str(), "I-4: event {} links to its predecessor", i + 1);
    }
    server.stop();
}
