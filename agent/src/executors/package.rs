//! The `package` executor: one package installed (at any version, at a pinned `version`, or at
//! the newest the package manager offers) or absent, through apt/dpkg or dnf/rpm.
//!
//! - `state: present` (the default): installed at any version, or at `version` when pinned (a
//!   pin lower than the installed version downgrades). `state: latest`: at the version the
//!   package manager would pick from its current lists (apt's candidate, dnf's newest), or newer.
//!   `latest` takes no `version`. `state: absent`: removed (apt `remove`: conffiles stay, and a
//!   package left with only its conffiles counts as absent).
//! - `provider: apt|dnf`; without one it is chosen from `ID`/`ID_LIKE` in ROOT's os-release:
//!   debian, ubuntu → apt; fedora, rhel, centos, rocky, almalinux → dnf. Anything else fails.
//! - Checks are read-only queries (`dpkg-query`, `apt-cache policy`, `apt-get -s`, `rpm -q`,
//!   `dnf repoquery`), so noop reports the same difference as the real run and changes nothing.
//! - The package lists are not refreshed on every run: `latest` means newest in the lists the
//!   host has (apt's daily timer refreshes them where enabled). A real run refreshes them (`apt-get update`,
//!   `dnf makecache`) once when the package, or its pinned version, is not in them; noop never
//!   does, so there such a package fails rather than guess what a refresh would bring.
//! - Every change names the exact version it installs, never recommends or weak dependencies,
//!   never removes another package to install this one, and a removal that would take other
//!   packages with it is refused (checked by simulation first, in noop too).
//!
//! ROOT is `/` on a host; any other root is a sandbox: dpkg and rpm get `--root`/`--admindir`,
//! dnf `--installroot`, and apt runs with a configuration of its own whose `Dir` is ROOT, so it
//! reads ROOT's sources, keys, lists and configuration and not the host's (whose hooks, such as
//! `DPkg::Post-Invoke`, would otherwise run against the host). That configuration is one line in
//! a temporary file, removed when the resource is done. dnf is kept to ROOT's repositories the same
//! way (`reposdir`). dpkg runs maintainer scripts chrooted into ROOT, so a sandbox only takes
//! packages whose scripts find what they need there. A sandbox root must be laid out as the
//! tools expect (the dpkg database, apt's `var/lib/apt/lists`, `var/cache/apt/archives` and
//! `var/log/apt`); the executor does not create them.

use std::cmp::Ordering;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use serde::Deserialize;

use super::command::{self, Finished};
use super::{Context, Outcome};
use crate::limits::{PACKAGE_CHANGE_TIMEOUT_S, PACKAGE_LOCK_WAIT_S, PACKAGE_QUERY_TIMEOUT_S};

/// Converges one package resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

/// The stack fields of a package, as the server ships them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageSpec {
    name: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    provider: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Present,
    Latest,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Apt,
    Dnf,
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: PackageSpec = serde_json::from_str(json).map_err(|err| format!("invalid package spec: {err}"))?;
    check_name(&spec.name).map_err(|err| format!("invalid package spec: {err}"))?;
    let name = spec.name.as_str();
    let result = (|| {
        let state = match spec.state.as_deref() {
            None | Some("present") => State::Present,
            Some("latest") => State::Latest,
            Some("absent") => State::Absent,
            Some(other) => return Err(format!("unknown state {other:?} (expected present, absent or latest)")),
        };
        let pin = spec.version.as_deref();
        if let Some(pin) = pin {
            check_version(pin)?;
            if state == State::Latest {
                return Err("state latest takes no version (a version is a pin: use state present)".into());
            }
        }
        let root = check_root(ctx.root)?;
        let provider = match spec.provider.as_deref() {
            Some("apt") => Provider::Apt,
            Some("dnf") => Provider::Dnf,
            Some(other) => return Err(format!("unknown provider {other:?} (expected apt or dnf)")),
            None => detect_provider(root)?,
        };
        match provider {
            Provider::Apt => converge_with(&Apt::new(root)?, name, state, pin, ctx.noop),
            Provider::Dnf => converge_with(&Dnf::new(root), name, state, pin, ctx.noop),
        }
    })();
    result.map_err(|err| format!("package {name}: {err}"))
}

/// What the executor needs from a package manager. The first five never change anything.
trait Backend {
    /// The installed version, `None` when the package is not installed.
    fn installed(&self, name: &str) -> Result<Option<String>, String>;
    /// What the package lists offer for `name`.
    fn available(&self, name: &str) -> Result<Available, String>;
    /// Fails when removing `name` would remove other packages too.
    fn check_removal(&self, name: &str) -> Result<(), String>;
    /// The package manager's version order.
    fn compare(&self, a: &str, b: &str) -> Ordering;
    /// Whether `version` satisfies the pin `pin`.
    fn matches_pin(&self, version: &str, pin: &str) -> bool {
        self.compare(version, pin) == Ordering::Equal
    }
    /// Refreshes the package lists from the repositories.
    fn refresh(&self) -> Result<(), String>;
    /// Installs exactly `version` of `name`; `downgrade` when it is older than the installed one.
    fn install(&self, name: &str, version: &str, downgrade: bool) -> Result<(), String>;
    /// Removes `name`.
    fn remove(&self, name: &str) -> Result<(), String>;
}

/// The versions of one package in the package lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Available {
    /// The version the package manager would install for the bare name.
    candidate: Option<String>,
    /// Every version the lists know, the installed one included.
    versions: Vec<String>,
}

/// The state machine shared by every backend: query, decide, and (unless noop) change and
/// verify.
fn converge_with(
    backend: &impl Backend,
    name: &str,
    state: State,
    pin: Option<&str>,
    noop: bool,
) -> Result<Outcome, String> {
    let installed = backend.installed(name)?;
    if state == State::Absent {
        let Some(version) = installed else {
            return Ok(Outcome::Unchanged);
        };
        backend.check_removal(name)?;
        if !noop {
            backend.remove(name)?;
            if let Some(left) = backend.installed(name)? {
                return Err(format!("still installed at {left} after the removal"));
            }
        }
        return Ok(Outcome::Changed(format!("removed {name} {version}")));
    }
    match (&installed, pin) {
        (Some(version), Some(pin)) if backend.matches_pin(version, pin) => return Ok(Outcome::Unchanged),
        (Some(_), None) if state == State::Present => return Ok(Outcome::Unchanged),
        _ => {}
    }

    let mut available = backend.available(name)?;
    let mut target = pick_target(backend, pin, &available);
    if target.is_none() {
        if noop {
            return Err(not_available(pin, &available, "noop does not refresh the package lists"));
        }
        backend.refresh()?;
        available = backend.available(name)?;
        target = pick_target(backend, pin, &available);
    }
    let Some(target) = target else {
        return Err(not_available(pin, &available, "even after refreshing the package lists"));
    };

    let summary = match &installed {
        None => format!("installed {name} {target} (was absent)"),
        Some(version) => match backend.compare(&target, version) {
            Ordering::Greater => format!("upgraded {name} {version} -> {target}"),
            Ordering::Less if state == State::Latest => return Ok(Outcome::Unchanged),
            Ordering::Less => format!("downgraded {name} {version} -> {target}"),
            Ordering::Equal => return Ok(Outcome::Unchanged),
        },
    };
    if !noop {
        let downgrade = installed.as_deref().is_some_and(|v| backend.compare(&target, v) == Ordering::Less);
        backend.install(name, &target, downgrade)?;
        match backend.installed(name)? {
            Some(now) if backend.compare(&now, &target) == Ordering::Equal => {}
            Some(now) => return Err(format!("installed {now} instead of {target}")),
            None => return Err(format!("not installed after installing {target}")),
        }
    }
    Ok(Outcome::Changed(summary))
}

/// The version to install: the newest one matching the pin, or the candidate.
fn pick_target(backend: &impl Backend, pin: Option<&str>, available: &Available) -> Option<String> {
    match pin {
        Some(pin) => available
            .versions
            .iter()
            .filter(|v| backend.matches_pin(v, pin))
            .max_by(|a, b| backend.compare(a, b))
            .cloned(),
        None => available.candidate.clone(),
    }
}

fn not_available(pin: Option<&str>, available: &Available, why: &str) -> String {
    match pin {
        Some(pin) if !available.versions.is_empty() => {
            format!("version {pin} is not in the package lists (they offer {}; {why})", available.versions.join(", "))
        }
        _ => format!("no installable version in the package lists ({why})"),
    }
}

/// Package names as both dpkg and rpm allow them, and never mistaken for an option or a pattern.
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "+-._:".contains(c));
    if valid { Ok(()) } else { Err(format!("invalid package name {name:?}")) }
}

/// Versions as dpkg and rpm write them (epoch, upstream, revision or release).
fn check_version(version: &str) -> Result<(), String> {
    let valid = version.len() <= 255
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version.chars().all(|c| c.is_ascii_alphanumeric() || "+-._:~^".contains(c));
    if valid { Ok(()) } else { Err(format!("invalid version {version:?}")) }
}

/// The root as text the tools' options and configuration can carry unquoted; the host's own
/// root is always `"/"`, which the backends compare against.
pub(super) fn check_root(root: &Path) -> Result<&str, String> {
    if super::is_host_root(root) {
        return Ok("/");
    }
    let text = root.to_str().filter(|t| t.starts_with('/'));
    match text {
        Some(text) if !text.chars().any(|c| c.is_whitespace() || c.is_control() || "\"\\'#;".contains(c)) => Ok(text),
        _ => Err(format!(
            "root {} must be an absolute path without spaces, quotes or control characters",
            root.display()
        )),
    }
}

/// Chooses apt or dnf from ROOT's os-release.
fn detect_provider(root: &str) -> Result<Provider, String> {
    let root = Path::new(root);
    let path = ["etc/os-release", "usr/lib/os-release"].iter().map(|p| root.join(p)).find(|p| p.exists());
    let Some(path) = path else {
        return Err(format!("no provider given and no os-release under {} to choose one", root.display()));
    };
    let text = fs::read_to_string(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    provider_from_os_release(&text).ok_or_else(|| {
        format!("no provider given and {} names no Debian- or Red Hat-like system; set provider", path.display())
    })
}

fn provider_from_os_release(text: &str) -> Option<Provider> {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            Some(value.trim().trim_matches(|c| c == '"' || c == '\'').to_ascii_lowercase())
        })
    };
    let id = value("ID").unwrap_or_default();
    let id_like = value("ID_LIKE").unwrap_or_default();
    std::iter::once(id.as_str()).chain(id_like.split_whitespace()).find_map(|word| match word {
        "debian" | "ubuntu" => Some(Provider::Apt),
        "fedora" | "rhel" | "centos" | "rocky" | "almalinux" | "alma" => Some(Provider::Dnf),
        _ => None,
    })
}

/// Runs a tool; a non-zero exit is an error naming it and its last stderr line.
fn run_ok(command: Command, what: &str, timeout_s: u64) -> Result<Finished, String> {
    let finished = command::run(command, what, Duration::from_secs(timeout_s))?;
    if finished.success() { Ok(finished) } else { Err(format!("{what} {}", finished.describe_failure())) }
}

// ---------------------------------------------------------------------------------------------
// apt and dpkg

/// apt-get, apt-cache and dpkg-query, pointed at one root.
struct Apt {
    root: String,
    /// For a sandbox root: apt's configuration file naming it as `Dir`.
    sandbox: Option<TempConfig>,
}

impl Apt {
    fn new(root: &str) -> Result<Apt, String> {
        let sandbox = if root == "/" { None } else { Some(TempConfig::create(&format!("Dir \"{root}/\";\n"))?) };
        Ok(Apt { root: root.to_owned(), sandbox })
    }

    /// `apt-get` or `apt-cache` with what every call needs: a fixed locale to parse, no
    /// questions, no binary cache written (apt rebuilds it on demand; not writing it keeps
    /// queries read-only), and for a sandbox root the sandbox configuration and dpkg's `--root`.
    fn apt(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("LC_ALL", "C").env("DEBIAN_FRONTEND", "noninteractive").env("APT_LISTCHANGES_FRONTEND", "none");
        command.args(["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]);
        if let Some(config) = &self.sandbox {
            command.env("APT_CONFIG", &config.path);
            command.arg("-o").arg(format!("DPkg::Options::=--root={}", self.root));
            // dpkg's log file comes from the host's dpkg.cfg and is not taken under --root.
            command.arg("-o").arg(format!("DPkg::Options::=--log={}/var/log/dpkg.log", self.root));
        }
        command
    }

    /// `apt-get` for a change: unattended, keeping locally changed conffiles, waiting a bounded
    /// time for another apt or dpkg to finish.
    fn apt_get_change(&self) -> Command {
        let mut command = self.apt("apt-get");
        command.args(["-o", "DPkg::Options::=--force-confdef", "-o", "DPkg::Options::=--force-confold"]);
        command.arg("-o").arg(format!("DPkg::Lock::Timeout={PACKAGE_LOCK_WAIT_S}"));
        command.args(["-y", "-q"]);
        command
    }

    fn dpkg_query(&self, name: &str) -> Command {
        let mut command = Command::new("dpkg-query");
        command.env("LC_ALL", "C");
        if self.root != "/" {
            command.arg(format!("--admindir={}/var/lib/dpkg", self.root));
        }
        command.args(["-W", "-f", "${Status}\\t${Version}\\n", name]);
        command
    }
}

impl Backend for Apt {
    fn installed(&self, name: &str) -> Result<Option<String>, String> {
        let finished = command::run(self.dpkg_query(name), "dpkg-query", Duration::from_secs(PACKAGE_QUERY_TIMEOUT_S))?;
        match finished.status.code() {
            Some(0) => Ok(parse_dpkg_query(&finished.stdout())),
            // "no packages found matching NAME": dpkg has never heard of it.
            Some(1) => Ok(None),
            _ => Err(format!("dpkg-query {}", finished.describe_failure())),
        }
    }

    fn available(&self, name: &str) -> Result<Available, String> {
        let mut command = self.apt("apt-cache");
        command.args(["policy", name]);
        let finished = run_ok(command, "apt-cache policy", PACKAGE_QUERY_TIMEOUT_S)?;
        Ok(parse_apt_policy(&finished.stdout()))
    }

    fn check_removal(&self, name: &str) -> Result<(), String> {
        let mut command = self.apt("apt-get");
        // A simulation still writes the planner log (var/log/apt/eipp.log.xz) unless told not to.
        command.args(["-o", "Dir::Log::Planner=", "-s", "-q", "remove", name]);
        let finished = run_ok(command, "apt-get -s remove", PACKAGE_QUERY_TIMEOUT_S)?;
        let others = removed_by_simulation(&finished.stdout(), name);
        if others.is_empty() {
            Ok(())
        } else {
            Err(format!("removing it would also remove {}; refusing", others.join(", ")))
        }
    }

    fn compare(&self, a: &str, b: &str) -> Ordering {
        deb_compare(a, b)
    }

    fn refresh(&self) -> Result<(), String> {
        let mut command = self.apt_get_change();
        command.arg("update");
        run_ok(command, "apt-get update", PACKAGE_CHANGE_TIMEOUT_S).map(drop)
    }

    fn install(&self, name: &str, version: &str, downgrade: bool) -> Result<(), String> {
        let mut command = self.apt_get_change();
        command.args(["--no-install-recommends", "--no-remove"]);
        if downgrade {
            command.arg("--allow-downgrades");
        }
        command.arg("install").arg(format!("{name}={version}"));
        run_ok(command, "apt-get install", PACKAGE_CHANGE_TIMEOUT_S).map(drop)
    }

    fn remove(&self, name: &str) -> Result<(), String> {
        let mut command = self.apt_get_change();
        command.args(["remove", name]);
        run_ok(command, "apt-get remove", PACKAGE_CHANGE_TIMEOUT_S).map(drop)
    }
}

/// The installed version from `${Status}\t${Version}` lines (one per architecture). Only
/// "installed" counts: `config-files` is what a removal leaves, and a half-installed package is
/// one that `apt-get install` must finish.
fn parse_dpkg_query(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let (status, version) = line.split_once('\t')?;
        (status.split_whitespace().last() == Some("installed") && !version.is_empty()).then(|| version.to_owned())
    })
}

/// The candidate and the version table of `apt-cache policy NAME`. Version lines are indented
/// five columns (`     2.0 500`, or ` *** 1.0 100` for the installed one); the sources under
/// them are indented eight.
fn parse_apt_policy(stdout: &str) -> Available {
    let mut available = Available::default();
    let mut in_table = false;
    for line in stdout.lines() {
        let trimmed = line.trim();
        if let Some(candidate) = trimmed.strip_prefix("Candidate:") {
            let candidate = candidate.trim();
            if candidate != "(none)" && !candidate.is_empty() {
                available.candidate = Some(candidate.to_owned());
            }
        } else if trimmed == "Version table:" {
            in_table = true;
        } else if in_table {
            let indent = line.len() - line.trim_start().len();
            let entry = line.strip_prefix(" *** ").or((indent == 5).then_some(trimmed));
            if let Some(version) = entry.and_then(|e| e.split_whitespace().next())
                && !available.versions.iter().any(|v| v == version)
            {
                available.versions.push(version.to_owned());
            }
        }
    }
    available
}

/// The packages other than `name` an `apt-get -s remove` would remove (`Remv PKG [VERSION]`).
fn removed_by_simulation(stdout: &str, name: &str) -> Vec<String> {
    let base = |pkg: &str| pkg.split(':').next().unwrap_or(pkg).to_owned();
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("Remv ")?.split_whitespace().next())
        .filter(|pkg| base(pkg) != base(name))
        .map(str::to_owned)
        .collect()
}

/// Debian version order (deb-version(7)): epoch numerically, then upstream version and
/// revision, each compared as alternating non-digit runs (`~` before everything, even the end;
/// letters before other characters) and digit runs (numerically).
fn deb_compare(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = deb_split(a);
    let (epoch_b, upstream_b, revision_b) = deb_split(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| deb_compare_part(upstream_a, upstream_b))
        .then_with(|| deb_compare_part(revision_a, revision_b))
}

fn deb_split(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|c| c.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, version),
    };
    let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
    (epoch, upstream, revision)
}

fn deb_compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        let (text_a, rest_a) = split_run(a, |c| !c.is_ascii_digit());
        let (text_b, rest_b) = split_run(b, |c| !c.is_ascii_digit());
        for i in 0..text_a.len().max(text_b.len()) {
            let ord = deb_char_order(text_a.get(i).copied()).cmp(&deb_char_order(text_b.get(i).copied()));
            if ord != Ordering::Equal {
                return ord;
            }
        }
        let (digits_a, rest_a) = split_run(rest_a, |c| c.is_ascii_digit());
        let (digits_b, rest_b) = split_run(rest_b, |c| c.is_ascii_digit());
        let ord = compare_digit_runs(digits_a, digits_b);
        if ord != Ordering::Equal {
            return ord;
        }
        (a, b) = (rest_a, rest_b);
    }
    Ordering::Equal
}

fn deb_char_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Splits off the longest prefix whose bytes satisfy `pred`.
fn split_run(bytes: &[u8], pred: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    let end = bytes.iter().position(|&c| !pred(c)).unwrap_or(bytes.len());
    bytes.split_at(end)
}

/// Compares two runs of digits as numbers of any length.
fn compare_digit_runs(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |run: &[u8]| -> Vec<u8> { run.iter().copied().skip_while(|&c| c == b'0').collect() };
    let (a, b) = (strip(a), strip(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

// ---------------------------------------------------------------------------------------------
// dnf and rpm

/// dnf and rpm, pointed at one root.
struct Dnf {
    root: String,
}

impl Dnf {
    fn new(root: &str) -> Dnf {
        Dnf { root: root.to_owned() }
    }

    fn rpm(&self) -> Command {
        let mut command = Command::new("rpm");
        command.env("LC_ALL", "C");
        if self.root != "/" {
            command.args(["--root", &self.root]);
        }
        command
    }

    fn dnf(&self) -> Command {
        let mut command = Command::new("dnf");
        command.env("LC_ALL", "C");
        if self.root != "/" {
            command.arg(format!("--installroot={}", self.root));
            // Without it, dnf falls back to the host's repositories when ROOT has none.
            command.arg(format!("--setopt=reposdir={}/etc/yum.repos.d", self.root));
        }
        command
    }

    fn dnf_change(&self) -> Command {
        let mut command = self.dnf();
        command.args(["-y", "-q", "--setopt=install_weak_deps=False", "--setopt=clean_requirements_on_remove=False"]);
        command
    }

    fn rpm_query(&self, name: &str) -> Command {
        let mut command = self.rpm();
        command.args(["-q", "--qf", "%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n", name]);
        command
    }

    fn repoquery(&self, name: &str) -> Command {
        let mut command = self.dnf();
        command.args(["-q", "repoquery", "--qf", "%{evr}\\n", name]);
        command
    }

    fn install_command(&self, name: &str, version: &str, downgrade: bool) -> Command {
        let mut command = self.dnf_change();
        command.arg(if downgrade { "downgrade" } else { "install" }).arg(format!("{name}-{version}"));
        command
    }
}

impl Backend for Dnf {
    fn installed(&self, name: &str) -> Result<Option<String>, String> {
        let finished = command::run(self.rpm_query(name), "rpm -q", Duration::from_secs(PACKAGE_QUERY_TIMEOUT_S))?;
        parse_rpm_query(finished.status.code(), &finished.stdout())
            .ok_or_else(|| format!("rpm -q {}", finished.describe_failure()))
    }

    fn available(&self, name: &str) -> Result<Available, String> {
        let finished = run_ok(self.repoquery(name), "dnf repoquery", PACKAGE_QUERY_TIMEOUT_S)?;
        Ok(parse_repoquery(&finished.stdout()))
    }

    fn check_removal(&self, name: &str) -> Result<(), String> {
        let mut command = self.rpm();
        command.args(["-e", "--test", name]);
        let finished = command::run(command, "rpm -e --test", Duration::from_secs(PACKAGE_QUERY_TIMEOUT_S))?;
        if finished.success() {
            Ok(())
        } else {
            Err(format!(
                "removing it would break other packages (rpm -e --test {}); refusing",
                finished.describe_failure()
            ))
        }
    }

    fn compare(&self, a: &str, b: &str) -> Ordering {
        rpm_compare_evr(a, b)
    }

    /// A pin may leave out the epoch and the release: `1.2` matches `1:1.2-3.fc40`.
    fn matches_pin(&self, version: &str, pin: &str) -> bool {
        let (epoch, upstream, release) = rpm_split(version);
        let (pin_epoch, pin_upstream, pin_release) = rpm_split(pin);
        (pin_epoch.is_none() || pin_epoch == epoch)
            && rpmvercmp(upstream, pin_upstream) == Ordering::Equal
            && (pin_release.is_none() || rpmvercmp(release.unwrap_or(""), pin_release.unwrap_or("")) == Ordering::Equal)
    }

    fn refresh(&self) -> Result<(), String> {
        let mut command = self.dnf();
        command.args(["-q", "makecache"]);
        run_ok(command, "dnf makecache", PACKAGE_CHANGE_TIMEOUT_S).map(drop)
    }

    fn install(&self, name: &str, version: &str, downgrade: bool) -> Result<(), String> {
        let what = if downgrade { "dnf downgrade" } else { "dnf install" };
        run_ok(self.install_command(name, version, downgrade), what, PACKAGE_CHANGE_TIMEOUT_S).map(drop)
    }

    fn remove(&self, name: &str) -> Result<(), String> {
        let mut command = self.dnf_change();
        command.args(["remove", name]);
        run_ok(command, "dnf remove", PACKAGE_CHANGE_TIMEOUT_S).map(drop)
    }
}

/// `rpm -q --qf EVR` output: the newest installed EVR (several for install-only packages such as
/// kernels); exit 1 with "package NAME is not installed" is absence; anything else `None` (an
/// error).
fn parse_rpm_query(code: Option<i32>, stdout: &str) -> Option<Option<String>> {
    match code {
        Some(0) => {
            let newest = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).max_by(|a, b| rpm_compare_evr(a, b));
            Some(newest.map(str::to_owned))
        }
        Some(1) if stdout.contains("is not installed") => Some(None),
        _ => None,
    }
}

/// `dnf repoquery --qf %{evr}` output: every EVR, newest first; the newest is the candidate.
fn parse_repoquery(stdout: &str) -> Available {
    let mut versions: Vec<String> = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !versions.iter().any(|v| v == line) {
            versions.push(line.to_owned());
        }
    }
    versions.sort_by(|a, b| rpm_compare_evr(b, a));
    Available { candidate: versions.first().cloned(), versions }
}

/// `[EPOCH:]VERSION[-RELEASE]`.
fn rpm_split(evr: &str) -> (Option<u64>, &str, Option<&str>) {
    let (epoch, rest) = match evr.split_once(':') {
        Some((epoch, rest)) if epoch.bytes().all(|c| c.is_ascii_digit()) => (epoch.parse().ok(), rest),
        _ => (None, evr),
    };
    match rest.rsplit_once('-') {
        Some((version, release)) => (epoch, version, Some(release)),
        None => (epoch, rest, None),
    }
}

/// rpm's order of two EVRs: epoch (missing is 0), then version, then release.
fn rpm_compare_evr(a: &str, b: &str) -> Ordering {
    let (epoch_a, version_a, release_a) = rpm_split(a);
    let (epoch_b, version_b, release_b) = rpm_split(b);
    epoch_a
        .unwrap_or(0)
        .cmp(&epoch_b.unwrap_or(0))
        .then_with(|| rpmvercmp(version_a, version_b))
        .then_with(|| rpmvercmp(release_a.unwrap_or(""), release_b.unwrap_or("")))
}

/// rpm's version segment order: separators are ignored, digit runs compare numerically and are
/// newer than letter runs, `~` sorts before anything (even the end), `^` after the end but
/// before anything else, and the side with segments left over is newer.
fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let is_separator = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        a = split_run(a, is_separator).1;
        b = split_run(b, is_separator).1;
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) | (Some(b'^'), Some(b'^')) => {
                (a, b) = (&a[1..], &b[1..]);
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (Some(b'^'), None) => return Ordering::Greater,
            (None, Some(b'^')) => return Ordering::Less,
            (Some(b'^'), _) => return Ordering::Less,
            (_, Some(b'^')) => return Ordering::Greater,
            (None, _) | (_, None) => break,
            _ => {}
        }
        let numeric = a[0].is_ascii_digit();
        let in_segment = |c: u8| if numeric { c.is_ascii_digit() } else { c.is_ascii_alphabetic() };
        let (segment_a, rest_a) = split_run(a, in_segment);
        let (segment_b, rest_b) = split_run(b, in_segment);
        if segment_b.is_empty() {
            // Segments of different kinds: a number is newer than letters.
            return if numeric { Ordering::Greater } else { Ordering::Less };
        }
        let ord = if numeric { compare_digit_runs(segment_a, segment_b) } else { segment_a.cmp(segment_b) };
        if ord != Ordering::Equal {
            return ord;
        }
        (a, b) = (rest_a, rest_b);
    }
    a.len().min(1).cmp(&b.len().min(1))
}

// ---------------------------------------------------------------------------------------------

/// A private temporary file (mode 0600, in the system's temporary directory), removed on drop.
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn create(content: &str) -> Result<TempConfig, String> {
        static N_CONFIGS: AtomicU64 = AtomicU64::new(0);
        let n = N_CONFIGS.fetch_add(1, AtomicOrdering::Relaxed);
        let path = std::env::temp_dir().join(format!("vigo-apt.{}.{n}.conf", std::process::id()));
        let written = (|| -> io::Result<()> {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            file.write_all(content.as_bytes())
        })();
        let config = TempConfig { path };
        written.map_err(|err| format!("cannot write apt configuration {}: {err}", config.path.display()))?;
        Ok(config)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::ffi::OsStr;

    use super::*;

    fn args(command: &Command) -> Vec<String> {
        command.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn env(command: &Command, key: &str) -> Option<String> {
        command.get_envs().find(|(k, _)| *k == OsStr::new(key)).and_then(|(_, v)| v.map(|v| v.to_string_lossy().into()))
    }

    #[test]
    fn debian_version_order() {
        let less = [
            ("1.0", "2.0"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("1.9", "1.10"),
            ("1.0-1", "1.0-2"),
            ("1.0-9", "1.0-10"),
            ("9.9", "1:0.1"),
            ("2.30-1", "2.30-1+b1"),
            ("1.0~~", "1.0~"),
        ];
        for (a, b) in less {
            assert_eq!(deb_compare(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(deb_compare(b, a), Ordering::Greater, "{b} > {a}");
        }
        for (a, b) in [("1.0", "0:1.0"), ("1.0", "1.0-0"), ("1.01", "1.1"), ("1.0", "1.0")] {
            assert_eq!(deb_compare(a, b), Ordering::Equal, "{a} == {b}");
        }
    }

    #[test]
    fn rpm_version_order() {
        let less = [
            ("1.0", "2.0"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0^git1"),
            ("1.0^git1", "1.0.1"),
            ("1.9", "1.10"),
            ("1.0a", "1.0.1"),
            ("a", "1"),
            ("1.0", "1.0.0"),
            ("1.0-1.fc39", "1.0-2.fc39"),
            ("9.9-1", "1:0.1-1"),
        ];
        for (a, b) in less {
            assert_eq!(rpm_compare_evr(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(rpm_compare_evr(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(rpm_compare_evr("1.0-1", "0:1.0-1"), Ordering::Equal);
        assert_eq!(rpmvercmp("1.0", "1_0"), Ordering::Equal);
    }

    #[test]
    fn rpm_pins_may_leave_out_epoch_and_release() {
        let dnf = Dnf::new("/");
        assert!(dnf.matches_pin("1:1.2-3.fc40", "1.2"));
        assert!(dnf.matches_pin("1:1.2-3.fc40", "1.2-3.fc40"));
        assert!(dnf.matches_pin("1:1.2-3.fc40", "1:1.2"));
        assert!(!dnf.matches_pin("1:1.2-3.fc40", "2:1.2"));
        assert!(!dnf.matches_pin("1:1.2-3.fc40", "1.2-4.fc40"));
        assert!(!dnf.matches_pin("1.20-1", "1.2"));
    }

    #[test]
    fn parses_apt_policy() {
        let out = "vigo-hello:\n  Installed: 1.0\n  Candidate: 2.0\n  Version table:\n     2.0 500\n        500 file:/repo ./ Packages\n *** 1.0 500\n        500 file:/repo ./ Packages\n        100 /var/lib/dpkg/status\n";
        assert_eq!(
            parse_apt_policy(out),
            Available { candidate: Some("2.0".into()), versions: vec!["2.0".into(), "1.0".into()] }
        );
        let none = "ghost:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        assert_eq!(parse_apt_policy(none), Available::default());
        assert_eq!(parse_apt_policy(""), Available::default());
    }

    #[test]
    fn parses_dpkg_query_and_removal_simulation() {
        assert_eq!(parse_dpkg_query("install ok installed\t1.0\n"), Some("1.0".into()));
        assert_eq!(parse_dpkg_query("hold ok installed\t2:1.0-1\n"), Some("2:1.0-1".into()));
        assert_eq!(parse_dpkg_query("deinstall ok config-files\t1.0\n"), None);
        assert_eq!(parse_dpkg_query("unknown ok not-installed\t\n"), None);
        assert_eq!(parse_dpkg_query("install ok half-installed\t1.0\n"), None);
        let sim = "Reading package lists...\nRemv libfoo:amd64 [1.0]\nRemv foo-tools [1.0]\n";
        assert_eq!(removed_by_simulation(sim, "libfoo"), ["foo-tools"]);
        assert!(removed_by_simulation("Remv hello [2.0]\n", "hello").is_empty());
    }

    #[test]
    fn parses_rpm_and_repoquery_output() {
        assert_eq!(parse_rpm_query(Some(0), "1.0-1.fc40\n"), Some(Some("1.0-1.fc40".into())));
        assert_eq!(parse_rpm_query(Some(0), "6.1-1\n6.10-1\n6.9-1\n"), Some(Some("6.10-1".into())));
        assert_eq!(parse_rpm_query(Some(1), "package ghost is not installed\n"), Some(None));
        assert_eq!(parse_rpm_query(Some(1), ""), None);
        assert_eq!(parse_rpm_query(Some(2), "error"), None);
        let available = parse_repoquery("1.0-1.fc40\n2.0-1.fc40\n1:0.5-1\n2.0-1.fc40\n");
        assert_eq!(available.candidate.as_deref(), Some("1:0.5-1"));
        assert_eq!(available.versions, ["1:0.5-1", "2.0-1.fc40", "1.0-1.fc40"]);
    }

    #[test]
    fn dnf_commands_are_pointed_at_the_root() {
        let sandbox = Dnf::new("/sandbox");
        assert_eq!(sandbox.rpm_query("hello").get_program(), "rpm");
        assert_eq!(
            args(&sandbox.rpm_query("hello")),
            ["--root", "/sandbox", "-q", "--qf", "%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n", "hello"]
        );
        assert_eq!(
            args(&sandbox.repoquery("hello")),
            [
                "--installroot=/sandbox",
                "--setopt=reposdir=/sandbox/etc/yum.repos.d",
                "-q",
                "repoquery",
                "--qf",
                "%{evr}\\n",
                "hello"
            ]
        );
        let install = sandbox.install_command("hello", "2.0-1", false);
        assert_eq!(install.get_program(), "dnf");
        assert_eq!(
            args(&install),
            [
                "--installroot=/sandbox",
                "--setopt=reposdir=/sandbox/etc/yum.repos.d",
                "-y",
                "-q",
                "--setopt=install_weak_deps=False",
                "--setopt=clean_requirements_on_remove=False",
                "install",
                "hello-2.0-1"
            ]
        );
        assert_eq!(args(&sandbox.install_command("hello", "1.0-1", true))[6], "downgrade");
        let host = Dnf::new("/");
        assert_eq!(args(&host.rpm_query("hello"))[0], "-q");
        assert_eq!(args(&host.repoquery("hello"))[0], "-q");
        assert_eq!(env(&host.dnf(), "LC_ALL").as_deref(), Some("C"));
    }

    #[test]
    fn apt_commands_for_a_sandbox_use_its_own_configuration() {
        let apt = Apt::new("/sandbox").unwrap();
        let config = apt.sandbox.as_ref().unwrap().path.clone();
        assert_eq!(fs::read_to_string(&config).unwrap(), "Dir \"/sandbox/\";\n");
        let command = apt.apt_get_change();
        assert_eq!(env(&command, "APT_CONFIG"), Some(config.to_string_lossy().into_owned()));
        assert_eq!(env(&command, "DEBIAN_FRONTEND").as_deref(), Some("noninteractive"));
        let args = args(&command);
        for expected in ["DPkg::Options::=--root=/sandbox", "DPkg::Options::=--log=/sandbox/var/log/dpkg.log", "-y"] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert_eq!(
            super::tests::args(&apt.dpkg_query("hello")),
            ["--admindir=/sandbox/var/lib/dpkg", "-W", "-f", "${Status}\\t${Version}\\n", "hello"]
        );
        drop(apt);
        assert!(!config.exists(), "the configuration is removed with the backend");

        let host = Apt::new("/").unwrap();
        assert!(host.sandbox.is_none());
        assert_eq!(env(&host.apt("apt-get"), "APT_CONFIG"), None);
        assert!(!super::tests::args(&host.apt("apt-get")).iter().any(|a| a.contains("--root")));
        assert_eq!(super::tests::args(&host.dpkg_query("hello"))[0], "-W");
    }

    #[test]
    fn provider_comes_from_os_release() {
        assert_eq!(provider_from_os_release("ID=debian\n"), Some(Provider::Apt));
        assert_eq!(provider_from_os_release("ID=\"linuxmint\"\nID_LIKE=\"ubuntu debian\"\n"), Some(Provider::Apt));
        assert_eq!(provider_from_os_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n"), Some(Provider::Dnf));
        assert_eq!(provider_from_os_release("ID=almalinux\n"), Some(Provider::Dnf));
        assert_eq!(provider_from_os_release("ID=arch\n"), None);
        assert_eq!(provider_from_os_release("ID_LIKE_X=debian\n"), None);
    }

    #[test]
    fn names_versions_and_roots_are_checked() {
        for good in ["hello", "libc6:amd64", "g++", "python3.11", "0ad"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-rf", "hello world", "a;b", "~pattern", "?name(x)", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["1.0", "1:2.3-4", "1.0~rc1+dfsg", "1.0^git1"] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in ["", "-1", "1 0", ">=1.0"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        assert!(check_root(Path::new("relative")).is_err());
        assert!(check_root(Path::new("/a b")).is_err());
        assert!(check_root(Path::new("/a\"b")).is_err());
        assert_eq!(check_root(Path::new("/tmp/x")), Ok("/tmp/x"));
        assert_eq!(check_root(Path::new("//")), Ok("/"), "the host root is always \"/\" to the backends");
    }

    /// A package manager in memory, recording what it was asked to change.
    #[derive(Default)]
    struct Fake {
        installed: RefCell<Option<String>>,
        available: Available,
        /// What a refresh brings.
        refreshed: Option<Available>,
        lists: RefCell<Option<Available>>,
        changes: RefCell<Vec<String>>,
    }

    impl Backend for Fake {
        fn installed(&self, _: &str) -> Result<Option<String>, String> {
            Ok(self.installed.borrow().clone())
        }
        fn available(&self, _: &str) -> Result<Available, String> {
            Ok(self.lists.borrow().clone().unwrap_or_else(|| self.available.clone()))
        }
        fn check_removal(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn compare(&self, a: &str, b: &str) -> Ordering {
            deb_compare(a, b)
        }
        fn refresh(&self) -> Result<(), String> {
            self.changes.borrow_mut().push("refresh".into());
            *self.lists.borrow_mut() = self.refreshed.clone();
            Ok(())
        }
        fn install(&self, name: &str, version: &str, downgrade: bool) -> Result<(), String> {
            self.changes.borrow_mut().push(format!("install {name}={version} downgrade={downgrade}"));
            *self.installed.borrow_mut() = Some(version.into());
            Ok(())
        }
        fn remove(&self, name: &str) -> Result<(), String> {
            self.changes.borrow_mut().push(format!("remove {name}"));
            *self.installed.borrow_mut() = None;
            Ok(())
        }
    }

    fn lists(candidate: &str, versions: &[&str]) -> Available {
        Available { candidate: Some(candidate.into()), versions: versions.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn latest_keeps_a_newer_installed_version_and_pins_downgrade() {
        let fake = Fake {
            installed: RefCell::new(Some("3.0".into())),
            available: lists("2.0", &["3.0", "2.0", "1.0"]),
            ..Fake::default()
        };
        assert_eq!(converge_with(&fake, "hello", State::Latest, None, false), Ok(Outcome::Unchanged));
        let outcome = converge_with(&fake, "hello", State::Present, Some("1.0"), false);
        assert_eq!(outcome, Ok(Outcome::Changed("downgraded hello 3.0 -> 1.0".into())));
        assert_eq!(*fake.changes.borrow(), ["install hello=1.0 downgrade=true"]);
        assert_eq!(converge_with(&fake, "hello", State::Present, Some("0:1.0"), false), Ok(Outcome::Unchanged));
    }

    #[test]
    fn a_missing_version_refreshes_the_lists_once_and_never_in_noop() {
        let fake = Fake { available: Available::default(), refreshed: Some(lists("2.0", &["2.0"])), ..Fake::default() };
        let noop = converge_with(&fake, "hello", State::Present, None, true);
        assert_eq!(
            noop,
            Err("no installable version in the package lists (noop does not refresh the package lists)".into())
        );
        assert!(fake.changes.borrow().is_empty());
        let outcome = converge_with(&fake, "hello", State::Present, None, false);
        assert_eq!(outcome, Ok(Outcome::Changed("installed hello 2.0 (was absent)".into())));
        assert_eq!(*fake.changes.borrow(), ["refresh", "install hello=2.0 downgrade=false"]);

        let pinned =
            Fake { available: lists("2.0", &["2.0"]), refreshed: Some(lists("2.0", &["2.0"])), ..Fake::default() };
        let outcome = converge_with(&pinned, "hello", State::Present, Some("3.0"), false);
        assert_eq!(
            outcome,
            Err("version 3.0 is not in the package lists (they offer 2.0; even after refreshing the package lists)"
                .into())
        );
        assert_eq!(*pinned.changes.borrow(), ["refresh"]);
    }
}
