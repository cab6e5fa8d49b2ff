//! The `user` executor: a local account in ROOT/etc/passwd (and its shadow entry), or its
//! absence. Changes go through the host's shadow tools (`useradd`, `usermod`, `userdel`), which
//! lock and edit passwd, group, shadow and gshadow together; they get `--prefix ROOT` unless ROOT
//! is `/`. The current state is read from ROOT/etc/passwd and ROOT/etc/group directly (no NSS,
//! no LDAP), so the decision and the reported difference are about exactly the files the tools
//! edit.
//!
//! Fields, each managed only when given:
//! - `uid`: the account's uid.
//! - `gid`: the primary group, a number or a group name; it must exist in ROOT/etc/group.
//! - `groups`: the supplementary groups, exactly as listed: the user is added to the missing
//!   ones and removed from the others (`groups: []` removes every membership). Each must exist.
//!   In noop mode a group that does not exist yet is not a failure: a group resource that the
//!   run would have applied first may create it; it is reported as the spec names it.
//! - `shell`, `home`: the passwd fields. A changed `home` is only recorded; the directory is
//!   neither moved nor created.
//! - A changed `uid` or `gid` also re-owns the files in the home directory, as `usermod` always
//!   does; a process still running under the old uid makes `usermod` refuse, which is reported.
//! - `system`: only used when creating (`useradd --system`, a uid from the system range).
//! - `state: absent`: `userdel` without `--remove`; the home directory and mail spool stay,
//!   because deleting someone's files is not something a typo should be able to do.
//!
//! Home directory: a new non-system account gets its home created (`useradd --create-home`), as
//! Debian's `adduser` does, since a login account without its home is broken on first login. A
//! system account gets none (`--no-create-home`): daemons name a data directory that a directory
//! resource or their package makes. Under a sandbox ROOT, useradd makes the home below ROOT and
//! is given ROOT/etc/skel as skeleton (an absent skeleton gives an empty home), so nothing is
//! copied from the host's own /etc/skel.
//!
//! Under a sandbox ROOT, `--no-log-init` keeps `useradd` away from the host's lastlog and
//! faillog. `usermod --uid` (shadow 4.13) has no such switch: it copies the old uid's record over
//! the new uid's (or clears the new uid's) in the host's /var/log/lastlog and faillog even under
//! `--prefix`. That touches nothing unless those uids have records on the host, i.e. only when a
//! sandbox's uid change uses uids that really log in there.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::attributes::account_entries;
use super::command;
use super::{Context, Ensure, Outcome, is_host_root};
use crate::limits::{ACCOUNT_FILE_BYTES_MAX, ACCOUNT_NAME_CHARS_MAX, ACCOUNT_TOOL_TIMEOUT_S};
use crate::root::managed_path;

/// Where the account files live, relative to ROOT.
const PASSWD_FILE: &str = "/etc/passwd";
const GROUP_FILE: &str = "/etc/group";

/// The stack fields of a user resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    name: String,
    uid: Option<u32>,
    gid: Option<IdOrName>,
    groups: Option<Vec<String>>,
    shell: Option<String>,
    home: Option<String>,
    state: Option<String>,
    #[serde(default)]
    system: bool,
}

/// `gid: 1000` or `gid: staff`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdOrName {
    Id(u32),
    Name(String),
}

/// One line of ROOT/etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PasswdEntry {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: String,
    pub(super) shell: String,
}

/// One line of ROOT/etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupEntry {
    pub(super) name: String,
    pub(super) gid: u32,
    pub(super) members: Vec<String>,
}

/// What the spec asks of an account, with group names resolved against ROOT/etc/group.
struct Wanted {
    uid: Option<u32>,
    /// The primary gid (`None`: a group that does not exist yet, in noop mode only), and how
    /// the spec wrote it (for the creation summary).
    gid: Option<(Option<u32>, String)>,
    /// Supplementary group names, sorted and without duplicates.
    groups: Option<BTreeSet<String>>,
    shell: Option<String>,
    home: Option<String>,
}

/// Converges one user resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: UserSpec = serde_json::from_str(json).map_err(|err| format!("invalid user spec: {err}"))?;
    check_account_name("user", &spec.name)?;
    let state = parse_state(spec.state.as_deref())?;
    if spec.uid == Some(u32::MAX) {
        return Err(format!("invalid uid {} (it means \"no uid\" to the kernel)", u32::MAX));
    }
    if let Some(shell) = &spec.shell {
        check_passwd_path("shell", shell)?;
    }
    if let Some(home) = &spec.home {
        check_passwd_path("home", home)?;
    }
    let users = read_passwd(ctx.root)?;
    let current = users.iter().find(|user| user.name == spec.name);
    match (state, current) {
        (Ensure::Absent, None) => Ok(Outcome::Unchanged),
        (Ensure::Absent, Some(user)) => {
            if !ctx.noop {
                let mut userdel = account_tool(ctx.root, "userdel");
                userdel.arg(&spec.name);
                run_tool(userdel, "userdel", &spec.name)?;
            }
            Ok(Outcome::Changed(format!("removed (uid {})", user.uid)))
        }
        (Ensure::Present, current) => {
            let groups = read_group(ctx.root)?;
            let wanted = resolve(&spec, &groups, ctx)?;
            match current {
                None => create(&spec, &wanted, ctx),
                Some(user) => modify(user, &groups, &wanted, ctx),
            }
        }
    }
}

/// Checks the groups the spec names against `groups` (ROOT/etc/group); every unknown one is
/// named. Group names are resolved to gids here; the tools are given numbers. In noop mode an
/// unknown group is no failure: a group resource this run would have applied first may be the
/// one that creates it, so it is kept as the spec wrote it.
fn resolve(spec: &UserSpec, groups: &[GroupEntry], ctx: &Context<'_>) -> Result<Wanted, String> {
    let mut unknown = Vec::new();
    let gid = match &spec.gid {
        None => None,
        Some(IdOrName::Id(gid)) => {
            let known = groups.iter().any(|group| group.gid == *gid);
            if !known {
                unknown.push(gid.to_string());
            }
            Some((known.then_some(*gid), gid.to_string()))
        }
        Some(IdOrName::Name(key)) => {
            let found = find_group(groups, key).map(|group| group.gid);
            if found.is_none() {
                unknown.push(key.clone());
            }
            Some((found, key.clone()))
        }
    };
    let supplementary = spec.groups.as_ref().map(|keys| {
        keys.iter()
            .map(|key| match find_group(groups, key) {
                Some(group) => group.name.clone(),
                None => {
                    unknown.push(key.clone());
                    key.clone()
                }
            })
            .collect::<BTreeSet<String>>()
    });
    if !unknown.is_empty() && !ctx.noop {
        let noun = if unknown.len() == 1 { "group" } else { "groups" };
        let path = managed_path(ctx.root, GROUP_FILE).map_err(|err| err.to_string())?;
        return Err(format!("unknown {noun} {} (not in {})", unknown.join(", "), path.display()));
    }
    Ok(Wanted { uid: spec.uid, gid, groups: supplementary, shell: spec.shell.clone(), home: spec.home.clone() })
}

fn create(spec: &UserSpec, wanted: &Wanted, ctx: &Context<'_>) -> Result<Outcome, String> {
    let mut parts = Vec::new();
    let mut useradd = account_tool(ctx.root, "useradd");
    if spec.system {
        parts.push("system".to_string());
        useradd.arg("--system");
    }
    if let Some(uid) = wanted.uid {
        parts.push(format!("uid {uid}"));
        useradd.arg("--uid").arg(uid.to_string());
    }
    if let Some((gid, written)) = &wanted.gid {
        parts.push(format!("gid {written}"));
        if let Some(gid) = gid {
            useradd.arg("--gid").arg(gid.to_string());
        }
    }
    if let Some(groups) = wanted.groups.as_ref().filter(|groups| !groups.is_empty()) {
        let list = groups.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        parts.push(format!("groups {list}"));
        useradd.arg("--groups").arg(list);
    }
    if let Some(shell) = &wanted.shell {
        parts.push(format!("shell {shell}"));
        useradd.arg("--shell").arg(shell);
    }
    if let Some(home) = &wanted.home {
        parts.push(format!("home {home}"));
        useradd.arg("--home-dir").arg(home);
    }
    if spec.system {
        useradd.arg("--no-create-home");
    } else {
        useradd.arg("--create-home");
        if !is_host_root(ctx.root) {
            let skel = managed_path(ctx.root, "/etc/skel").map_err(|err| err.to_string())?;
            useradd.arg("--skel").arg(skel);
        }
    }
    if !is_host_root(ctx.root) {
        useradd.arg("--no-log-init");
    }
    useradd.arg(&spec.name);
    if !ctx.noop {
        run_tool(useradd, "useradd", &spec.name)?;
    }
    Ok(Outcome::Changed(if parts.is_empty() { "created".into() } else { format!("created ({})", parts.join(", ")) }))
}

fn modify(user: &PasswdEntry, groups: &[GroupEntry], wanted: &Wanted, ctx: &Context<'_>) -> Result<Outcome, String> {
    let name = user.name.as_str();
    let mut changes = Vec::new();
    let mut usermod = account_tool(ctx.root, "usermod");
    if let Some(uid) = wanted.uid.filter(|uid| *uid != user.uid) {
        changes.push(format!("uid {} -> {uid}", user.uid));
        usermod.arg("--uid").arg(uid.to_string());
    }
    match &wanted.gid {
        Some((Some(gid), _)) if *gid != user.gid => {
            changes.push(format!("gid {} -> {gid}", user.gid));
            usermod.arg("--gid").arg(gid.to_string());
        }
        // noop only: the group does not exist yet.
        Some((None, written)) => changes.push(format!("gid {} -> {written}", user.gid)),
        _ => {}
    }
    if let Some(want) = &wanted.groups {
        let have: BTreeSet<String> = groups
            .iter()
            .filter(|group| group.members.iter().any(|member| member == name))
            .map(|group| group.name.clone())
            .collect();
        if *want != have {
            let added = want.difference(&have).map(|group| format!("+{group}"));
            let removed = have.difference(want).map(|group| format!("-{group}"));
            changes.push(format!("groups {}", added.chain(removed).collect::<Vec<_>>().join(" ")));
            usermod.arg("--groups").arg(want.iter().map(String::as_str).collect::<Vec<_>>().join(","));
        }
    }
    if let Some(shell) = wanted.shell.as_ref().filter(|shell| **shell != user.shell) {
        changes.push(format!("shell {} -> {shell}", user.shell));
        usermod.arg("--shell").arg(shell);
    }
    if let Some(home) = wanted.home.as_ref().filter(|home| **home != user.home) {
        changes.push(format!("home {} -> {home}", user.home));
        usermod.arg("--home").arg(home);
    }
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    if !ctx.noop {
        usermod.arg(name);
        run_tool(usermod, "usermod", name)?;
    }
    Ok(Outcome::Changed(changes.join("; ")))
}

/// The entries of ROOT/etc/passwd; lines that are not seven fields with numeric ids are skipped
/// (they are not accounts these tools would match either).
pub(super) fn read_passwd(root: &Path) -> Result<Vec<PasswdEntry>, String> {
    let content = read_account_file(root, PASSWD_FILE)?;
    Ok(account_entries(&content)
        .filter_map(|fields| match fields[..] {
            [name, _, uid, gid, _, home, shell] => Some(PasswdEntry {
                name: name.to_string(),
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home: home.to_string(),
                shell: shell.to_string(),
            }),
            _ => None,
        })
        .collect())
}

/// The entries of ROOT/etc/group; malformed lines are skipped.
pub(super) fn read_group(root: &Path) -> Result<Vec<GroupEntry>, String> {
    let content = read_account_file(root, GROUP_FILE)?;
    Ok(account_entries(&content)
        .filter_map(|fields| match fields[..] {
            [name, _, gid, members] => Some(GroupEntry {
                name: name.to_string(),
                gid: gid.parse().ok()?,
                members: members.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            }),
            _ => None,
        })
        .collect())
}

/// A group by name, or by gid when `key` is a number that names no group.
fn find_group<'a>(groups: &'a [GroupEntry], key: &str) -> Option<&'a GroupEntry> {
    groups.iter().find(|group| group.name == key).or_else(|| {
        let gid: u32 = key.parse().ok()?;
        groups.iter().find(|group| group.gid == gid)
    })
}

/// ROOT/`file`, read whole up to [`ACCOUNT_FILE_BYTES_MAX`]. A missing file is a failure: the
/// tools could not work without it either, and "no accounts" would be a wrong answer.
fn read_account_file(root: &Path, file: &str) -> Result<String, String> {
    let path = managed_path(root, file).map_err(|err| err.to_string())?;
    let mut content = String::new();
    fs::File::open(&path)
        .and_then(|handle| handle.take(ACCOUNT_FILE_BYTES_MAX + 1).read_to_string(&mut content))
        .map_err(|err| super::io_failure("read", &path, &err))?;
    if content.len() as u64 > ACCOUNT_FILE_BYTES_MAX {
        return Err(format!("{} is larger than {ACCOUNT_FILE_BYTES_MAX} bytes", path.display()));
    }
    Ok(content)
}

/// `state`: absent means present.
pub(super) fn parse_state(state: Option<&str>) -> Result<Ensure, String> {
    match state {
        None | Some("present") => Ok(Ensure::Present),
        Some("absent") => Ok(Ensure::Absent),
        Some(other) => Err(format!("invalid state {other:?} (expected present or absent)")),
    }
}

/// Refuses names the account files or the tools' command lines could misread: empty, too long,
/// starting with `-`, all digits (it would read as an id), or holding anything but ASCII letters,
/// digits, `.`, `_`, `-` and a final `$` (Samba machine accounts). `kind` is "user" or "group".
pub(super) fn check_account_name(kind: &str, name: &str) -> Result<(), String> {
    let reason = if name.is_empty() {
        "empty".to_string()
    } else if name.chars().count() > ACCOUNT_NAME_CHARS_MAX {
        format!("longer than {ACCOUNT_NAME_CHARS_MAX} characters")
    } else if name.starts_with('-') {
        "starts with -".to_string()
    } else if name == "." || name == ".." {
        "not a name".to_string()
    } else if name.bytes().all(|b| b.is_ascii_digit()) {
        "all digits".to_string()
    } else if !name
        .strip_suffix('$')
        .unwrap_or(name)
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        || name == "$"
    {
        "only letters, digits, '.', '_', '-' and a final '$' are allowed".to_string()
    } else {
        return Ok(());
    };
    Err(format!("invalid {kind} name {name:?}: {reason}"))
}

/// An absolute path without `..`, `:` or control characters, fit for a passwd field.
fn check_passwd_path(field: &str, path: &str) -> Result<(), String> {
    let reason = if !path.starts_with('/') {
        "not absolute"
    } else if path.contains(':') || path.chars().any(char::is_control) {
        "holds ':' or a control character"
    } else if Path::new(path).components().any(|c| c == Component::ParentDir) {
        "holds '..'"
    } else {
        return Ok(());
    };
    Err(format!("invalid {field} {path:?}: {reason}"))
}

/// A shadow tool (`useradd`, `groupmod`, …) aimed at ROOT: `--prefix ROOT` unless ROOT is `/`,
/// and the C locale so its messages read the same everywhere.
pub(super) fn account_tool(root: &Path, program: &str) -> Command {
    let mut tool = Command::new(program);
    tool.env("LC_ALL", "C");
    if !is_host_root(root) {
        tool.arg("--prefix").arg(absolute(root));
    }
    tool
}

/// Runs a shadow tool to its end; a failure names the tool, the account and the tool's last
/// stderr line.
pub(super) fn run_tool(tool: Command, program: &str, name: &str) -> Result<(), String> {
    let finished = command::run(tool, program, Duration::from_secs(ACCOUNT_TOOL_TIMEOUT_S))?;
    if finished.success() { Ok(()) } else { Err(format!("{program} {name} {}", finished.describe_failure())) }
}

/// The tools join the prefix with /etc/…, so it must not depend on their working directory.
fn absolute(root: &Path) -> PathBuf {
    std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for good in ["alice", "www-data", "_apt", "a.b", "host$", "Debian-exim", "u1"] {
            assert_eq!(check_account_name("user", good), Ok(()), "{good}");
        }
        for bad in ["", "-rf", "1000", "a:b", "a,b", "a b", "a\nb", "..", "$", "a$$", "x".repeat(33).as_str(), "é"] {
            let err = check_account_name("user", bad).unwrap_err();
            assert!(err.starts_with("invalid user name"), "{err}");
        }
    }

    #[test]
    fn passwd_paths() {
        assert_eq!(check_passwd_path("shell", "/bin/bash"), Ok(()));
        for bad in ["bin/bash", "/bin:/x", "/home/a\n", "/home/../etc"] {
            assert!(check_passwd_path("home", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_root() {
        assert!(is_host_root(Path::new("/")));
        assert!(is_host_root(Path::new("//")));
        assert!(!is_host_root(Path::new("/tmp/x")));
        assert!(!is_host_root(Path::new("")));
        assert!(!is_host_root(Path::new("tmp")));
    }

    #[test]
    fn parses_account_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "# c\nroot:x:0:0:root:/root:/bin/sh\nbad:x:zz:0::/:/bin/sh\nshort:x:1:1\n\nalice:x:1000:100::/home/alice:/bin/bash\n",
        )
        .unwrap();
        fs::write(root.path().join("etc/group"), "root:x:0:\nadm:x:4:alice,bob\nbroken:x:7\n").unwrap();
        let users = read_passwd(root.path()).unwrap();
        assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["root", "alice"]);
        assert_eq!(
            users[1],
            PasswdEntry {
                name: "alice".into(),
                uid: 1000,
                gid: 100,
                home: "/home/alice".into(),
                shell: "/bin/bash".into()
            }
        );
        let groups = read_group(root.path()).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].members, Vec::<String>::new());
        assert_eq!(groups[1].members, ["alice", "bob"]);
        assert_eq!(find_group(&groups, "adm").map(|g| g.gid), Some(4));
        assert_eq!(find_group(&groups, "4").map(|g| g.name.as_str()), Some("adm"));
        assert!(find_group(&groups, "5").is_none());
    }

    #[test]
    fn missing_passwd_is_a_failure() {
        let root = tempfile::tempdir().unwrap();
        let err = read_passwd(root.path()).unwrap_err();
        assert!(err.starts_with("cannot read ") && err.contains("etc/passwd"), "{err}");
    }
}
