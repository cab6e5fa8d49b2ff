//! `envoy` fails with one line on stderr and a non-zero exit on bad input.

use std::process::Command;

fn envoy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_envoy")).args(args).output().unwrap()
}

fn one_line_failure(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
}

#[test]
fn run_without_enrollment_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = envoy(&["run", "--once", "--data-dir", tmp.path().to_str().unwrap()]);
    one_line_failure(&out, "holds no enrollment");
}

#[test]
fn a_malformed_token_is_refused_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let out =
        envoy(&["enroll", "--server", "127.0.0.1:9", "--token", "nope", "--data-dir", tmp.path().to_str().unwrap()]);
    one_line_failure(&out, "malformed enrollment token");
}
