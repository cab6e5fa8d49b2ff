//! `vigocli envoys show`, `envoys list --where` and `report compliance` over real processes:
//! they follow what the envoys sent and their runs reported, against the live stack.

mod support;

use std::path::Path;

use support::{Server, enroll, envoy_once, text, write_stack};

fn stack(dir: &Path, greeting: &str) {
    write_stack(
        dir,
        &[
            ("assign.yaml", "- match: \"*\"\n  modules: [m]\n"),
            ("modules/m/module.yaml", "resources:\n  - type: file\n    path: /etc/motd\n    template: motd.j2\n"),
            ("modules/m/files/motd.j2", &format!("{greeting} {{{{ hostname }}}}\n")),
        ],
    );
}

fn hostnames(report: &serde_json::Value) -> Vec<(&str, &str)> {
    report["noncompliant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["hostname"].as_str().unwrap(), e["compliance"].as_str().unwrap()))
        .collect()
}

#[test]
fn show_and_compliance_follow_the_envoys_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    let token = server.cli_ok(&["token", "create", "--uses", "3"]);
    let edir = |h: &str| tmp.path().join("envoys").join(h);
    let root = |h: &str| tmp.path().join("roots").join(h);
    for h in ["web-1", "web-2", "db-1"] {
        let out = enroll(&server, &token, &edir(h), h);
        assert!(out.status.success(), "{}", text(&out));
        std::fs::create_dir_all(root(h)).unwrap();
    }
    let stack_dir = tmp.path().join("stack");
    stack(&stack_dir, "hello");
    server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]);

    // web-1 converges; web-2 only looks (noop) and finds the file to write; db-1 never runs.
    let out = envoy_once(&edir("web-1"), &root("web-1"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = envoy_once(&edir("web-2"), &root("web-2"), &["--noop"]);
    assert!(out.status.success(), "{}", text(&out));

    let report = server.cli_json(&["report", "compliance"]);
    assert_eq!(report["stack_version"], 1);
    assert_eq!((report["envoys"].as_u64(), report["compliant"].as_u64()), (Some(3), Some(1)), "{report}");
    assert_eq!((report["drifted"].as_u64(), report["never_reported"].as_u64()), (Some(1), Some(1)), "{report}");
    assert_eq!(hostnames(&report), [("db-1", "never_reported"), ("web-2", "drifted")]);
    let summary = server.cli_ok(&["report", "compliance"]);
    assert!(summary.starts_with("stack v1: 1 of 3 active envoys compliant"), "{summary}");

    // Queries: on traits (db-1 never sent any), hostnames, compliance, last seen.
    let listed = |conditions: &[&str]| -> Vec<String> {
        let mut args = vec!["envoys", "list"];
        for c in conditions {
            args.extend(["--where", c]);
        }
        let mut hosts: Vec<String> = server
            .cli_json(&args)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["hostname"].as_str().unwrap().to_string())
            .collect();
        hosts.sort();
        hosts
    };
    assert_eq!(listed(&["kernel.release exists", "cpu.count>0"]), ["web-1", "web-2"]);
    assert_eq!(listed(&["kernel.release missing"]), ["db-1"]);
    assert_eq!(listed(&["hostname=web-*", "compliance=drifted"]), ["web-2"]);
    assert_eq!(listed(&["last_seen<10m"]), ["web-1", "web-2"]);
    assert_eq!(listed(&["last_seen>10m"]), ["db-1"], "never seen");
    assert_eq!(listed(&[]).len(), 3);
    let out = server.cli(&["envoys", "list", "--where", "os.family"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad --where \"os.family\": expected PATH=VALUE"), "{stderr}");

    // A new stack: web-1's last run applied the old one.
    stack(&stack_dir, "good day");
    server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]);
    let report = server.cli_json(&["report", "compliance"]);
    assert_eq!((report["compliant"].as_u64(), report["behind"].as_u64()), (Some(0), Some(1)), "{report}");

    let web1 = server.cli_json(&["envoys", "show", "web-1"]);
    assert_eq!(web1["hostname"], "web-1");
    assert_eq!(web1["compliance"], "behind");
    assert_eq!(web1["last_run"]["stack_version"], 1);
    assert_eq!(web1["traits"]["hostname"], "web-1", "the traits it sent: {web1}");
    assert!(web1["traits"]["os"]["family"].is_string(), "{web1}");
    assert!(web1["last_counter"].as_u64().unwrap() > 0);
    // By id too.
    let by_id = server.cli_json(&["envoys", "show", web1["envoy_id"].as_str().unwrap()]);
    assert_eq!(by_id["hostname"], "web-1");

    let db1 = server.cli_json(&["envoys", "show", "db-1"]);
    assert_eq!((db1["compliance"].as_str(), db1["traits"].is_null()), (Some("never_reported"), true), "{db1}");
    let text_out = server.cli_ok(&["envoys", "show", "web-1"]);
    assert!(text_out.contains("compliance  behind"), "{text_out}");

    let out = server.cli(&["envoys", "show", "nosuch"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown envoy \"nosuch\""), "{stderr}");
}
