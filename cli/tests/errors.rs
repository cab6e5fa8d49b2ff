//! `vigocli` fails with one line on stderr and a non-zero exit on bad input.

use std::process::Command;

fn vigocli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigocli")).args(args).env_remove("VIGO_CREDS").output().unwrap()
}

fn one_line_failure(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{stderr:?} should mention {needle:?}");
}

#[test]
fn missing_credentials_are_named() {
    one_line_failure(&vigocli(&["envoys", "list"]), "no admin credentials");
}

#[test]
fn unreadable_credentials_are_named() {
    one_line_failure(&vigocli(&["--creds", "/nonexistent/creds", "envoys", "list"]), "/nonexistent/creds/ca.crt");
}

#[test]
fn a_stack_without_assign_yaml_is_refused_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let out = vigocli(&["--creds", creds.to_str().unwrap(), "config", "publish", tmp.path().to_str().unwrap()]);
    one_line_failure(&out, "ca.crt");
}
