//! The `service` executor: a systemd unit, enabled or not at boot, running or not now.
//!
//! Fields, each managed only when given:
//! - `name`: the unit. A name without a unit type suffix is a service (`nginx` is
//!   `nginx.service`), the way `systemctl` reads it. Anything but the characters systemd allows
//!   in unit names (ASCII letters, digits, `:_.@-` and `\` escapes) is refused, so `/` and
//!   whitespace never reach a command line; so is a leading `-`. The unit must exist under ROOT:
//!   `is-enabled` finds its file offline, and with `state` the running manager must load it
//!   (it also knows units made by generators, which have no file of their own).
//! - `enabled`: whether the unit's `[Install]` links exist, through `systemctl --root=ROOT
//!   is-enabled / enable / disable`. That works offline, on the files under ROOT, with or without
//!   a running systemd. A unit without install information (`static`, `indirect`, `generated`,
//!   `transient`, an alias) cannot be enabled, which is a failure; `enabled: false` leaves such a
//!   unit, and a masked one, alone. After enable or disable the state is read again, so a
//!   `systemctl` that did nothing is reported rather than believed.
//! - `state`: `running` or `stopped`, through `systemctl is-active / start / stop`. That needs
//!   the systemd that runs ROOT, which exists only when ROOT is `/` and `/run/systemd/system`
//!   exists (systemd's own test for "booted with systemd"). Otherwise a resource that sets
//!   `state` fails before anything is changed, saying so; `enabled` alone still works. A unit
//!   that is `activating` or `reloading` counts as running; `failed` counts as stopped. Before a
//!   start or restart, a unit whose file changed on disk gets a `systemctl daemon-reload`, so
//!   the new file is what runs.
//! - `provider`: only `systemd` (the default) exists; anything else is a failure.
//!
//! A refresh (a resource this one subscribes to changed in this run) restarts a unit whose
//! `state` is `running` and that was already running; one that was not is started, which is
//! refresh enough. Without `state: running` a refresh does nothing, since nothing says the unit
//! should run.
//!
//! Order: the unit is looked up and every check is made first; then enable/disable, then
//! start/stop/restart. Summaries read like `enabled; started (was inactive)`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::command::{self, Finished};
use super::{Context, Outcome};
use crate::limits::{SERVICE_CHANGE_TIMEOUT_S, SERVICE_QUERY_TIMEOUT_S, SERVICE_UNIT_NAME_CHARS_MAX};

/// The directory that exists only when systemd is the running init (`sd_booted()`).
const SYSTEMD_RUNNING_MARKER: &str = "/run/systemd/system";

/// Unit type suffixes; a name ending in none of them is a service.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

/// The stack fields of a service resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    state: Option<String>,
    enabled: Option<bool>,
    provider: Option<String>,
}

/// The wanted run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Stopped,
}

/// What `systemctl is-enabled` says, grouped by what the executor can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UnitFileState {
    /// `enabled`, `enabled-runtime`.
    Enabled,
    /// `disabled`, `linked`, `linked-runtime`: enable would create the install links.
    Disabled,
    /// Masked: it cannot start, and enable refuses it.
    Masked,
    /// No install information of its own (`static`, `indirect`, `generated`, `transient`,
    /// `alias`): neither enable nor disable applies. Holds the word systemctl printed.
    NotInstallable(String),
    /// `bad` or a word this executor does not know.
    Other(String),
}

/// Converges one service resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

/// The unit a service name stands for: `nginx` → `nginx.service`, `nginx.service` and
/// `cron.timer` as given. Refuses what is not a valid systemd unit name.
pub fn unit_name(name: &str) -> Result<String, String> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.chars().count() > SERVICE_UNIT_NAME_CHARS_MAX {
        Some("too long")
    } else if name.starts_with('-') {
        Some("starts with -")
    } else if name.contains('/') {
        Some("holds a /")
    } else if name.chars().any(char::is_whitespace) {
        Some("holds whitespace")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b":_.@-\\".contains(&b)) {
        Some("holds a character systemd does not allow in unit names")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(format!("invalid service name {name:?}: {reason}"));
    }
    let unit = if UNIT_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
        name.to_string()
    } else {
        format!("{name}.service")
    };
    if unit.chars().count() > SERVICE_UNIT_NAME_CHARS_MAX || UNIT_SUFFIXES.contains(&unit.as_str()) {
        return Err(format!("invalid service name {name:?}: not a unit name"));
    }
    Ok(unit)
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: ServiceSpec = serde_json::from_str(json).map_err(|err| format!("invalid service spec: {err}"))?;
    match spec.provider.as_deref() {
        None | Some("systemd") => {}
        Some(other) => {
            return Err(format!("service {}: provider {other:?} is not supported (only systemd)", spec.name));
        }
    }
    let unit = unit_name(&spec.name)?;
    let state = match spec.state.as_deref() {
        None => None,
        Some("running") => Some(RunState::Running),
        Some("stopped") => Some(RunState::Stopped),
        Some(other) => return Err(format!("service {unit}: invalid state {other:?} (expected running or stopped)")),
    };
    if state.is_some() && !systemd_runs_for(ctx.root) {
        return Err(format!(
            "service {unit}: cannot manage state: no systemd runs for {} (that needs root / and {SYSTEMD_RUNNING_MARKER})",
            ctx.root.display()
        ));
    }

    // Every check first. The unit must exist whatever is managed: is-enabled says so offline;
    // with a state, the running manager says so too, and it also knows generated units.
    let enable = match spec.enabled {
        Some(wanted) => enable_change(&unit, &unit_file_state(ctx.root, &unit)?, wanted)?,
        None if state.is_none() => {
            unit_file_state(ctx.root, &unit)?;
            None
        }
        None => None,
    };
    let active = match state {
        Some(_) => {
            check_loaded(ctx.root, &unit)?;
            Some(active_state(&unit)?)
        }
        None => None,
    };
    let run_change = match (state, active.as_deref()) {
        (Some(wanted), Some(active)) => run_change(wanted, active, ctx.refresh),
        _ => None,
    };

    let mut changes = Vec::new();
    if let Some(wanted) = enable {
        if !ctx.noop {
            set_enabled(ctx.root, &unit, wanted)?;
        }
        changes.push(if wanted { "enabled" } else { "disabled" }.to_string());
    }
    if let (Some(change), Some(active)) = (run_change, active) {
        if !ctx.noop {
            change_run_state(&unit, change)?;
        }
        changes.push(match change {
            RunChange::Start => format!("started (was {active})"),
            RunChange::Stop => format!("stopped (was {active})"),
            RunChange::Restart => "restarted (notified)".to_string(),
        });
    }
    if changes.is_empty() { Ok(Outcome::Unchanged) } else { Ok(Outcome::Changed(changes.join("; "))) }
}

/// Whether the systemd managing ROOT runs, so `is-active`, `start` and `stop` mean something.
fn systemd_runs_for(root: &Path) -> bool {
    super::is_host_root(root) && Path::new(SYSTEMD_RUNNING_MARKER).is_dir()
}

/// Reads what `is-enabled` prints: one word on stdout, whatever the exit code (disabled exits 1).
fn parse_unit_file_state(word: &str) -> UnitFileState {
    match word {
        "enabled" | "enabled-runtime" => UnitFileState::Enabled,
        "disabled" | "linked" | "linked-runtime" => UnitFileState::Disabled,
        "masked" | "masked-runtime" => UnitFileState::Masked,
        "static" | "indirect" | "generated" | "transient" | "alias" => UnitFileState::NotInstallable(word.into()),
        other => UnitFileState::Other(other.into()),
    }
}

/// `enable` (`Some(true)`), `disable` (`Some(false)`) or nothing, for the wanted `enabled`.
fn enable_change(unit: &str, have: &UnitFileState, wanted: bool) -> Result<Option<bool>, String> {
    match (have, wanted) {
        (UnitFileState::Enabled, true) | (UnitFileState::Disabled, false) => Ok(None),
        (UnitFileState::Masked | UnitFileState::NotInstallable(_), false) => Ok(None),
        (UnitFileState::Disabled, true) => Ok(Some(true)),
        (UnitFileState::Enabled, false) => Ok(Some(false)),
        (UnitFileState::Masked, true) => Err(format!("service {unit}: cannot enable a masked unit")),
        (UnitFileState::NotInstallable(word), true) => {
            Err(format!("service {unit}: cannot enable a {word} unit (it has no [Install] section of its own)"))
        }
        (UnitFileState::Other(word), _) => Err(format!("service {unit}: systemctl is-enabled says {word:?}")),
    }
}

/// `systemctl --root=ROOT is-enabled UNIT`; a unit that does not exist is a failure.
fn unit_file_state(root: &Path, unit: &str) -> Result<UnitFileState, String> {
    let finished = systemctl_offline(root, "is-enabled", unit, SERVICE_QUERY_TIMEOUT_S)?;
    let stdout = finished.stdout();
    match stdout.lines().next().map(str::trim).filter(|word| !word.is_empty()) {
        Some("not-found") => Err(not_found(root, unit)),
        Some(word) => Ok(parse_unit_file_state(word)),
        None if String::from_utf8_lossy(&finished.stderr_tail).contains("No such file or directory") => {
            Err(not_found(root, unit))
        }
        None => Err(format!("service {unit}: systemctl is-enabled {}", finished.describe_failure())),
    }
}

fn not_found(root: &Path, unit: &str) -> String {
    format!("service {unit}: no such unit under {}", root.display())
}

/// `systemctl --root=ROOT enable|disable UNIT`, then reads the state back.
fn set_enabled(root: &Path, unit: &str, wanted: bool) -> Result<(), String> {
    let verb = if wanted { "enable" } else { "disable" };
    let finished = systemctl_offline(root, verb, unit, SERVICE_CHANGE_TIMEOUT_S)?;
    if !finished.success() {
        return Err(format!("service {unit}: systemctl {verb} {}", finished.describe_failure()));
    }
    match (unit_file_state(root, unit)?, wanted) {
        (UnitFileState::Enabled, true) | (UnitFileState::Disabled, false) => Ok(()),
        (have, _) => Err(format!("service {unit}: systemctl {verb} left the unit {have:?}")),
    }
}

/// `systemctl --root=ROOT VERB -- UNIT`: acts on the unit files under ROOT, not on a manager.
fn systemctl_offline(root: &Path, verb: &str, unit: &str, timeout_s: u64) -> Result<Finished, String> {
    let mut systemctl = Command::new("systemctl");
    systemctl.arg(format!("--root={}", root.display())).args([verb, "--", unit]);
    command::run(systemctl, "systemctl", Duration::from_secs(timeout_s))
}

/// What the running systemd must do to the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunChange {
    Start,
    Stop,
    Restart,
}

/// Decides from `is-active`'s word (`active`, `inactive`, `failed`, `activating`, …).
fn run_change(wanted: RunState, active: &str, refresh: bool) -> Option<RunChange> {
    let running = matches!(active, "active" | "activating" | "reloading" | "refreshing");
    let stopped = matches!(active, "inactive" | "failed");
    match wanted {
        RunState::Running if !running => Some(RunChange::Start),
        RunState::Running if refresh => Some(RunChange::Restart),
        RunState::Running => None,
        RunState::Stopped if !stopped => Some(RunChange::Stop),
        RunState::Stopped => None,
    }
}

/// `systemctl is-active UNIT` on the running systemd: one word, whatever the exit code.
fn active_state(unit: &str) -> Result<String, String> {
    let finished = systemctl_live(&["is-active", "--", unit], SERVICE_QUERY_TIMEOUT_S)?;
    let stdout = finished.stdout();
    match stdout.lines().next().map(str::trim).filter(|word| !word.is_empty()) {
        Some(word) => Ok(word.to_string()),
        None => Err(format!("service {unit}: systemctl is-active {}", finished.describe_failure())),
    }
}

/// Start, stop or restart on the running systemd; a start or restart first reloads the
/// manager when the unit's file changed since it was loaded.
fn change_run_state(unit: &str, change: RunChange) -> Result<(), String> {
    let verb = match change {
        RunChange::Start => "start",
        RunChange::Stop => "stop",
        RunChange::Restart => "restart",
    };
    if change != RunChange::Stop && needs_daemon_reload(unit)? {
        let finished = systemctl_live(&["daemon-reload"], SERVICE_CHANGE_TIMEOUT_S)?;
        if !finished.success() {
            return Err(format!("service {unit}: systemctl daemon-reload {}", finished.describe_failure()));
        }
    }
    let finished = systemctl_live(&[verb, "--", unit], SERVICE_CHANGE_TIMEOUT_S)?;
    if finished.success() {
        Ok(())
    } else {
        Err(format!("service {unit}: systemctl {verb} {}", finished.describe_failure()))
    }
}

/// Fails unless the running manager finds the unit (`LoadState` other than `not-found`).
fn check_loaded(root: &Path, unit: &str) -> Result<(), String> {
    let finished = systemctl_live(&["show", "--property=LoadState", "--value", "--", unit], SERVICE_QUERY_TIMEOUT_S)?;
    if !finished.success() {
        return Err(format!("service {unit}: systemctl show {}", finished.describe_failure()));
    }
    if finished.stdout().trim() == "not-found" { Err(not_found(root, unit)) } else { Ok(()) }
}

/// `systemctl show --property=NeedDaemonReload --value UNIT` says `yes`.
fn needs_daemon_reload(unit: &str) -> Result<bool, String> {
    let finished =
        systemctl_live(&["show", "--property=NeedDaemonReload", "--value", "--", unit], SERVICE_QUERY_TIMEOUT_S)?;
    if !finished.success() {
        return Err(format!("service {unit}: systemctl show {}", finished.describe_failure()));
    }
    Ok(finished.stdout().trim() == "yes")
}

/// `systemctl ARGS` against the running manager, never asking for a password.
fn systemctl_live(args: &[&str], timeout_s: u64) -> Result<Finished, String> {
    let mut systemctl = Command::new("systemctl");
    systemctl.arg("--no-ask-password").args(args);
    command::run(systemctl, "systemctl", Duration::from_secs(timeout_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("nginx").unwrap(), "nginx.service");
        assert_eq!(unit_name("nginx.service").unwrap(), "nginx.service");
        assert_eq!(unit_name("getty@tty1").unwrap(), "getty@tty1.service");
        assert_eq!(unit_name("logrotate.timer").unwrap(), "logrotate.timer");
        assert_eq!(unit_name("dev-disk-by\\x2dlabel.device").unwrap(), "dev-disk-by\\x2dlabel.device");
        for bad in ["", "a/b", "../etc/x", "my service", "tab\tname", "-nginx", "nginx;reboot", "ngïnx", ".service"] {
            let err = unit_name(bad).unwrap_err();
            assert!(err.starts_with("invalid service name"), "{bad:?}: {err}");
        }
        assert!(unit_name(&"a".repeat(300)).is_err());
    }

    #[test]
    fn enable_decisions() {
        let unit = "x.service";
        let state = |word: &str| parse_unit_file_state(word);
        assert_eq!(enable_change(unit, &state("enabled"), true), Ok(None));
        assert_eq!(enable_change(unit, &state("disabled"), true), Ok(Some(true)));
        assert_eq!(enable_change(unit, &state("linked"), true), Ok(Some(true)));
        assert_eq!(enable_change(unit, &state("enabled"), false), Ok(Some(false)));
        assert_eq!(enable_change(unit, &state("static"), false), Ok(None));
        assert_eq!(enable_change(unit, &state("masked"), false), Ok(None));
        assert_eq!(
            enable_change(unit, &state("static"), true),
            Err("service x.service: cannot enable a static unit (it has no [Install] section of its own)".into())
        );
        assert_eq!(
            enable_change(unit, &state("masked"), true),
            Err("service x.service: cannot enable a masked unit".into())
        );
        assert!(enable_change(unit, &state("bad"), false).is_err());
    }

    #[test]
    fn run_decisions() {
        use RunState::{Running, Stopped};
        assert_eq!(run_change(Running, "inactive", false), Some(RunChange::Start));
        assert_eq!(run_change(Running, "failed", true), Some(RunChange::Start));
        assert_eq!(run_change(Running, "active", false), None);
        assert_eq!(run_change(Running, "activating", false), None);
        assert_eq!(run_change(Running, "active", true), Some(RunChange::Restart));
        assert_eq!(run_change(Stopped, "active", false), Some(RunChange::Stop));
        assert_eq!(run_change(Stopped, "deactivating", false), Some(RunChange::Stop));
        assert_eq!(run_change(Stopped, "failed", false), None);
        assert_eq!(run_change(Stopped, "inactive", true), None);
    }

    #[test]
    fn other_providers_fail() {
        let ctx = Context { root: Path::new("/nonexistent"), noop: false, refresh: false };
        assert_eq!(
            apply(r#"{"name":"nginx","provider":"upstart"}"#, &ctx),
            Outcome::Failed("service nginx: provider \"upstart\" is not supported (only systemd)".into())
        );
        assert!(
            matches!(apply(r#"{"name":"nginx","colour":"red"}"#, &ctx), Outcome::Failed(m) if m.starts_with("invalid service spec:"))
        );
    }
}
