//! Held connections: an envoy waiting out a long check-in interval gets a publish at once,
//! pushed through its session; and a server with sessions open still stops cleanly on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use support::{Server, bin, enroll, generation_stack, text};

/// Waits for a line containing `needle`; panics with what was seen after `limit`.
fn wait_for(lines: &Receiver<String>, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {limit:?}; envoy printed:\n{}", seen.join("\n"));
}

#[test]
fn a_publish_is_pushed_to_a_waiting_envoy_and_the_server_still_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    // An hour between check-ins: without the push, v2 would not arrive during this test.
    let server = Server::start_with(&tmp.path().join("server"), "127.0.0.1:0", &["--check-in-interval", "3600"]);
    let stack_dir = tmp.path().join("stack");
    generation_stack(&stack_dir, "one");
    server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]);
    let envoy_dir = tmp.path().join("envoy");
    let out = enroll(&server, &server.token(), &envoy_dir, "web-1");
    assert!(out.status.success(), "{}", text(&out));

    let root = tmp.path().join("root");
    let mut envoy = Command::new(bin("envoy"))
        .args(["run", "--data-dir"])
        .arg(&envoy_dir)
        .arg("--root")
        .arg(&root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = envoy.stdout.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The run's report goes on the session too.
    let first = wait_for(&lines, "stack v1", Duration::from_secs(30));
    assert!(first.contains("1 report(s) sent"), "{first}");
    assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "one\n");

    generation_stack(&stack_dir, "two");
    assert_eq!(server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]).trim(), "2");
    wait_for(&lines, "push: stack v2 is live", Duration::from_secs(30));
    wait_for(&lines, "stack v2", Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(root.join("generation")).unwrap(), "two\n");

    // The envoy's session is still open: SIGTERM must still end the server cleanly.
    server.stop();
    let _ = envoy.kill();
    let _ = envoy.wait();
}
