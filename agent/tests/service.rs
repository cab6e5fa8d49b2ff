//! The `service` executor against the real `systemctl`, offline on a sandbox root: enabling and
//! disabling a unit made in the test, noop, the refusals (a missing unit, a bad name, another
//! provider) and `state`, which no sandbox can have because no systemd runs for it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::snapshot;
use vigo_agent::executors::Outcome;

const UNIT: &str =
    "[Unit]\nDescription=vigo test\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n";

/// A sandbox root with the test unit and the target it is wanted by, which is all `systemctl
/// --root` needs.
fn sandbox() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/systemd/system");
    let lib = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&etc).unwrap();
    fs::create_dir_all(&lib).unwrap();
    fs::write(etc.join("vigo-test.service"), UNIT).unwrap();
    fs::write(lib.join("multi-user.target"), "[Unit]\nDescription=Multi-User System\n").unwrap();
    root
}

fn run_refreshed(root: &Path, json: &serde_json::Value, noop: bool, refresh: bool) -> Outcome {
    common::apply_json("service", json["name"].as_str().unwrap_or_default(), root, json, noop, refresh)
}

fn run(root: &Path, json: &serde_json::Value, noop: bool) -> Outcome {
    run_refreshed(root, json, noop, false)
}

/// What systemctl itself says about the unit under `root`.
fn is_enabled(root: &Path) -> String {
    let output = Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args(["is-enabled", "vigo-test.service"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn wants_link(root: &Path) -> PathBuf {
    root.join("etc/systemd/system/multi-user.target.wants/vigo-test.service")
}

fn noop_then_real(root: &Path, json: &serde_json::Value) -> String {
    common::noop_then_real("service", json["name"].as_str().unwrap_or_default(), root, json)
}

#[test]
fn enable_then_disable_offline() {
    let root = sandbox();
    let enabled = serde_json::json!({"name": "vigo-test", "enabled": true});
    assert_eq!(is_enabled(root.path()), "disabled");

    assert_eq!(noop_then_real(root.path(), &enabled), "enabled");
    let link = wants_link(root.path());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("/etc/systemd/system/vigo-test.service"));
    assert_eq!(is_enabled(root.path()), "enabled");

    // Converged: a second run and a noop run change nothing, whichever way the unit is named.
    let before = snapshot(root.path());
    assert_eq!(run(root.path(), &enabled, false), Outcome::Unchanged);
    let full_name = serde_json::json!({"name": "vigo-test.service", "enabled": true, "provider": "systemd"});
    assert_eq!(run(root.path(), &full_name, true), Outcome::Unchanged);
    assert_eq!(snapshot(root.path()), before);

    let disabled = serde_json::json!({"name": "vigo-test.service", "enabled": false});
    assert_eq!(noop_then_real(root.path(), &disabled), "disabled");
    assert!(fs::symlink_metadata(&link).is_err(), "the wants link is gone");
    assert_eq!(is_enabled(root.path()), "disabled");
    assert_eq!(run(root.path(), &disabled, false), Outcome::Unchanged);
}

#[test]
fn a_refresh_without_state_changes_nothing() {
    let root = sandbox();
    let enabled = serde_json::json!({"name": "vigo-test", "enabled": true});
    assert_eq!(run(root.path(), &enabled, false), Outcome::Changed("enabled".into()));
    let before = snapshot(root.path());
    assert_eq!(run_refreshed(root.path(), &enabled, false, true), Outcome::Unchanged);
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn a_missing_unit_fails_in_one_line() {
    let root = sandbox();
    let before = snapshot(root.path());
    for json in [
        serde_json::json!({"name": "vigo-missing", "enabled": true}),
        serde_json::json!({"name": "vigo-missing", "enabled": false}),
    ] {
        let outcome = run(root.path(), &json, false);
        let expected = format!("service vigo-missing.service: no such unit under {}", root.path().display());
        assert_eq!(outcome, Outcome::Failed(expected));
    }
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn state_needs_a_running_systemd() {
    let root = sandbox();
    // A sandbox root has no systemd of its own, whether or not one runs the host.
    let before = snapshot(root.path());
    let json = serde_json::json!({"name": "vigo-test", "enabled": true, "state": "running"});
    for noop in [true, false] {
        let outcome = run(root.path(), &json, noop);
        let expected = format!(
            "service vigo-test.service: cannot manage state: no systemd runs for {} (that needs root / and /run/systemd/system)",
            root.path().display()
        );
        assert_eq!(outcome, Outcome::Failed(expected));
        assert!(!outcome.message().contains('\n'));
    }
    // Nothing was done, not even the enabling the resource also asks for.
    assert_eq!(snapshot(root.path()), before);
    assert_eq!(is_enabled(root.path()), "disabled");
}

#[test]
fn a_static_unit_cannot_be_enabled() {
    let root = sandbox();
    fs::write(root.path().join("etc/systemd/system/vigo-static.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    let before = snapshot(root.path());
    assert_eq!(
        run(root.path(), &serde_json::json!({"name": "vigo-static", "enabled": true}), false),
        Outcome::Failed(
            "service vigo-static.service: cannot enable a static unit (it has no [Install] section of its own)".into()
        )
    );
    assert_eq!(
        run(root.path(), &serde_json::json!({"name": "vigo-static", "enabled": false}), false),
        Outcome::Unchanged
    );
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn bad_names_and_providers_are_refused_before_systemctl_runs() {
    let root = sandbox();
    let before = snapshot(root.path());
    let cases = [
        (
            serde_json::json!({"name": "../vigo-test", "enabled": true}),
            "invalid service name \"../vigo-test\": holds a /",
        ),
        (
            serde_json::json!({"name": "vigo test", "enabled": true}),
            "invalid service name \"vigo test\": holds whitespace",
        ),
        (
            serde_json::json!({"name": "vigo-test", "enabled": true, "provider": "sysvinit"}),
            "service vigo-test: provider \"sysvinit\" is not supported (only systemd)",
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(run(root.path(), &json, false), Outcome::Failed(expected.into()), "{json}");
    }
    assert_eq!(snapshot(root.path()), before);
    assert_eq!(is_enabled(root.path()), "disabled");
}
