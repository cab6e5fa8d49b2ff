//! The `user`, `group` and `cron` executors against the real shadow tools (`useradd`, `usermod`,
//! `userdel`, `groupadd`, `groupmod`, `groupdel` with `--prefix`) on sandbox roots seeded with
//! minimal account files. Every test also checks that the host's own account files (and the
//! lastlog and faillog the tools know about) are untouched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use vigo_agent::executors::{self, Context, Outcome, cron};
use vigo_proto::bundle::resource::Spec;
use vigo_proto::bundle::{OpaqueSpec, Resource};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\nadm:x:4:\nstaff:x:50:\nusers:x:100:\n";
const SHADOW: &str = "root:*:19000:0:99999:7:::\n";
const GSHADOW: &str = "root:*::\nadm:*::\nstaff:*::\nusers:*::\n";
const LOGIN_DEFS: &str = "UID_MIN 1000\nUID_MAX 60000\nSYS_UID_MIN 100\nSYS_UID_MAX 999\n\
                          GID_MIN 1000\nGID_MAX 60000\nSYS_GID_MIN 100\nSYS_GID_MAX 999\nUSERGROUPS_ENAB yes\n";

/// Host files that must not change: what the tools would edit without their prefix, and the
/// logs that shadow 4.13 opens outside it.
const HOST_FILES: &[&str] =
    &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/var/log/lastlog", "/var/log/faillog"];

/// A sandbox root with minimal account files, and the host files as they were when it was made.
struct Sandbox {
    dir: tempfile::TempDir,
    host_before: BTreeMap<String, Option<Vec<u8>>>,
}

impl Sandbox {
    /// `None` (after printing why) where the shadow tools cannot act: not root, or not installed.
    fn new(test: &str) -> Option<Sandbox> {
        let dir = tempfile::tempdir().unwrap();
        if fs::metadata(dir.path()).unwrap().uid() != 0 {
            println!("skipped: {test} needs root for the shadow tools");
            return None;
        }
        for tool in ["useradd", "usermod", "userdel", "groupadd", "groupmod", "groupdel"] {
            if !Path::new("/usr/sbin").join(tool).exists() && !Path::new("/sbin").join(tool).exists() {
                println!("skipped: {test} needs {tool}");
                return None;
            }
        }
        let etc = dir.path().join("etc");
        fs::create_dir_all(etc.join("skel")).unwrap();
        fs::write(etc.join("skel/.profile"), "# sandbox skeleton\n").unwrap();
        for (name, content, mode) in [
            ("passwd", PASSWD, 0o644),
            ("group", GROUP, 0o644),
            ("shadow", SHADOW, 0o640),
            ("gshadow", GSHADOW, 0o640),
            ("login.defs", LOGIN_DEFS, 0o644),
        ] {
            fs::write(etc.join(name), content).unwrap();
            fs::set_permissions(etc.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        Some(Sandbox { dir, host_before: host_files() })
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, path: &str) -> String {
        fs::read_to_string(self.root().join(path)).unwrap()
    }

    fn write(&self, path: &str, content: &str) {
        fs::write(self.root().join(path), content).unwrap();
    }

    fn apply(&self, kind: &str, spec: serde_json::Value, noop: bool) -> Outcome {
        let resource = Resource {
            id: format!("{kind}:{}", spec["name"].as_str().unwrap_or_default()),
            r#type: kind.into(),
            spec: Some(Spec::Opaque(OpaqueSpec { json: spec.to_string() })),
            ..Resource::default()
        };
        executors::apply(&resource, &Context { root: self.root(), noop, refresh: false })
    }

    /// Noop, then a real run, then a second real run: noop announces exactly what the real run
    /// then does and leaves the sandbox byte-identical; the second run finds nothing to do and
    /// touches nothing. Returns the summary.
    fn converge(&self, kind: &str, spec: serde_json::Value) -> String {
        let before = snapshot(self.root());
        let noop = self.apply(kind, spec.clone(), true);
        let Outcome::Changed(summary) = &noop else { panic!("noop {kind}: {noop:?}") };
        assert_eq!(snapshot(self.root()), before, "noop changed the sandbox");
        assert_eq!(self.apply(kind, spec.clone(), false), noop, "the real run differs from noop");
        let after = snapshot(self.root());
        assert_ne!(after, before, "the real run changed nothing");
        assert_eq!(self.apply(kind, spec.clone(), false), Outcome::Unchanged, "second run");
        assert_eq!(self.apply(kind, spec, true), Outcome::Unchanged, "noop after the run");
        assert_eq!(snapshot(self.root()), after, "a converged run touched the sandbox");
        summary.clone()
    }

    /// Asserts a one-line failure containing `needle`, with the sandbox left as it was.
    fn refused(&self, kind: &str, spec: serde_json::Value, needle: &str) -> String {
        let before = snapshot(self.root());
        let outcome = self.apply(kind, spec, false);
        let Outcome::Failed(message) = outcome else { panic!("expected a failure, got {outcome:?}") };
        assert!(!message.contains('\n'), "one line: {message:?}");
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
        assert_eq!(snapshot(self.root()), before);
        message
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(host_files(), self.host_before, "a host account file changed");
        }
    }
}

fn host_files() -> BTreeMap<String, Option<Vec<u8>>> {
    HOST_FILES.iter().map(|path| (path.to_string(), fs::read(path).ok())).collect()
}

/// Every entry under `root`: type, mode, owner, group and content (or link target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                fs::read(&path).unwrap()
            } else if meta.is_symlink() {
                fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
            } else {
                pending.push(path.clone());
                Vec::new()
            };
            entries
                .insert(path.strip_prefix(root).unwrap().to_path_buf(), (meta.mode(), meta.uid(), meta.gid(), content));
        }
    }
    entries
}

/// The line of `name` in an account file.
fn line_of<'a>(content: &'a str, name: &str) -> Option<&'a str> {
    content.lines().find(|line| line.split(':').next() == Some(name))
}

#[test]
fn user_is_created_with_uid_shell_and_groups() {
    let Some(sb) = Sandbox::new("user_is_created_with_uid_shell_and_groups") else { return };
    let spec = json!({"name": "alice", "uid": 1500, "gid": "staff", "groups": ["adm", "users"],
                      "shell": "/bin/bash", "home": "/home/alice"});
    let summary = sb.converge("user", spec);
    assert_eq!(summary, "created (uid 1500, gid staff, groups adm,users, shell /bin/bash, home /home/alice)");

    assert_eq!(sb.read("etc/passwd"), format!("{PASSWD}alice:x:1500:50::/home/alice:/bin/bash\n"));
    assert_eq!(sb.read("etc/group"), "root:x:0:\nadm:x:4:alice\nstaff:x:50:\nusers:x:100:alice\n");
    assert_eq!(sb.read("etc/gshadow"), "root:*::\nadm:*::alice\nstaff:*::\nusers:*::alice\n");
    let shadow = sb.read("etc/shadow");
    let alice = line_of(&shadow, "alice").unwrap();
    assert!(alice.starts_with("alice:!:") && alice.split(':').count() == 9, "{alice}");
    // The home is made under the sandbox, from the sandbox's skeleton, owned by the new account.
    let home = sb.root().join("home/alice");
    assert_eq!((fs::metadata(&home).unwrap().uid(), fs::metadata(&home).unwrap().gid()), (1500, 50));
    assert_eq!(fs::read_to_string(home.join(".profile")).unwrap(), "# sandbox skeleton\n");
}

#[test]
fn user_defaults_come_from_the_sandbox_login_defs() {
    let Some(sb) = Sandbox::new("user_defaults_come_from_the_sandbox_login_defs") else { return };
    assert_eq!(sb.converge("user", json!({"name": "bob"})), "created");
    // USERGROUPS_ENAB yes: a group of its own, both ids from the sandbox's normal range.
    assert_eq!(line_of(&sb.read("etc/group"), "bob"), Some("bob:x:1000:"));
    let passwd = sb.read("etc/passwd");
    assert!(line_of(&passwd, "bob").unwrap().starts_with("bob:x:1000:1000::/home/bob:"), "{passwd}");

    // A system account takes its uid from the system range and gets no home.
    assert_eq!(sb.converge("user", json!({"name": "svc", "system": true, "gid": 100})), "created (system, gid 100)");
    let passwd = sb.read("etc/passwd");
    let uid: u32 = line_of(&passwd, "svc").unwrap().split(':').nth(2).unwrap().parse().unwrap();
    assert!((100..=999).contains(&uid), "{passwd}");
    assert!(!sb.root().join("home/svc").exists());
}

#[test]
fn user_is_modified_with_a_diff() {
    let Some(sb) = Sandbox::new("user_is_modified_with_a_diff") else { return };
    sb.write("etc/passwd", &format!("{PASSWD}alice:x:1500:50::/home/alice:/bin/sh\n"));
    sb.write("etc/shadow", &format!("{SHADOW}alice:!:19000:0:99999:7:::\n"));
    sb.write("etc/group", "root:x:0:\nadm:x:4:alice\nstaff:x:50:alice\nusers:x:100:\n");
    sb.write("etc/gshadow", "root:*::\nadm:*::alice\nstaff:*::alice\nusers:*::\n");

    let spec = json!({"name": "alice", "uid": 1600, "gid": 100, "groups": ["staff", "users", "users"],
                      "shell": "/bin/bash", "home": "/srv/alice"});
    assert_eq!(
        sb.converge("user", spec),
        "uid 1500 -> 1600; gid 50 -> 100; groups +users -adm; shell /bin/sh -> /bin/bash; home /home/alice -> /srv/alice"
    );
    assert_eq!(sb.read("etc/passwd"), format!("{PASSWD}alice:x:1600:100::/srv/alice:/bin/bash\n"));
    assert_eq!(sb.read("etc/group"), "root:x:0:\nadm:x:4:\nstaff:x:50:alice\nusers:x:100:alice\n");
    assert_eq!(sb.read("etc/gshadow"), "root:*::\nadm:*::\nstaff:*::alice\nusers:*::alice\n");
    assert!(!sb.root().join("srv").exists(), "a changed home is only recorded");

    // Fields the spec leaves out are not managed; an empty list leaves no supplementary group.
    assert_eq!(sb.converge("user", json!({"name": "alice", "groups": []})), "groups -staff -users");
    assert_eq!(sb.read("etc/group"), "root:x:0:\nadm:x:4:\nstaff:x:50:\nusers:x:100:\n");
    assert_eq!(sb.read("etc/passwd"), format!("{PASSWD}alice:x:1600:100::/srv/alice:/bin/bash\n"));
}

#[test]
fn user_absent_is_removed_and_keeps_its_home() {
    let Some(sb) = Sandbox::new("user_absent_is_removed_and_keeps_its_home") else { return };
    let created = sb.apply("user", json!({"name": "carol", "uid": 1700, "gid": "users", "groups": ["adm"]}), false);
    assert!(matches!(created, Outcome::Changed(_)), "{created:?}");
    assert!(sb.root().join("home/carol").is_dir());

    assert_eq!(sb.converge("user", json!({"name": "carol", "state": "absent"})), "removed (uid 1700)");
    assert_eq!(sb.read("etc/passwd"), PASSWD);
    assert_eq!(sb.read("etc/group"), GROUP);
    assert_eq!(line_of(&sb.read("etc/shadow"), "carol"), None);
    assert!(sb.root().join("home/carol/.profile").exists(), "the home stays");
}

#[test]
fn unknown_groups_are_refused_in_one_line() {
    let Some(sb) = Sandbox::new("unknown_groups_are_refused_in_one_line") else { return };
    let message = sb.refused("user", json!({"name": "dave", "gid": "nope"}), "unknown group nope (not in ");
    assert!(message.ends_with("/etc/group)"), "{message}");
    sb.refused("user", json!({"name": "dave", "gid": 4242}), "unknown group 4242");
    sb.refused("user", json!({"name": "dave", "groups": ["adm", "ghost", "spectre"]}), "unknown groups ghost, spectre");
    // Also for an account that exists.
    sb.write("etc/passwd", &format!("{PASSWD}dave:x:1800:100::/home/dave:/bin/sh\n"));
    sb.refused("user", json!({"name": "dave", "groups": ["ghost"]}), "unknown group ghost");
    // Not in noop mode: a group resource applied earlier in the run may be what creates it.
    let passwd = sb.read("etc/passwd");
    let noop = sb.apply("user", json!({"name": "dave", "gid": "nope", "groups": ["ghost"]}), true);
    assert_eq!(noop, Outcome::Changed("gid 100 -> nope; groups +ghost".into()));
    let noop = sb.apply("user", json!({"name": "erin", "gid": "nope"}), true);
    assert_eq!(noop, Outcome::Changed("created (gid nope)".into()));
    assert_eq!(sb.read("etc/passwd"), passwd, "noop changed nothing");
}

#[test]
fn invalid_user_specs_are_refused() {
    let Some(sb) = Sandbox::new("invalid_user_specs_are_refused") else { return };
    sb.refused("user", json!({"name": "eve", "colour": "blue"}), "invalid user spec: unknown field `colour`");
    sb.refused("user", json!({"name": "-o"}), "invalid user name \"-o\"");
    sb.refused("user", json!({"name": "eve:0"}), "invalid user name");
    sb.refused("user", json!({"name": "eve", "shell": "bash"}), "invalid shell \"bash\": not absolute");
    sb.refused("user", json!({"name": "eve", "home": "/home/../etc"}), "invalid home");
    sb.refused("user", json!({"name": "eve", "state": "gone"}), "invalid state \"gone\"");
    // A failure of the tool itself names the tool and its last stderr line.
    sb.write("etc/passwd", &format!("{PASSWD}eve:x:1900:100::/home/eve:/bin/sh\n"));
    sb.refused(
        "user",
        json!({"name": "frank", "uid": 1900, "gid": 100}),
        "useradd frank exited with code 4: useradd: UID 1900 is not unique",
    );
}

#[test]
fn group_is_created_modified_and_removed() {
    let Some(sb) = Sandbox::new("group_is_created_modified_and_removed") else { return };
    assert_eq!(sb.converge("group", json!({"name": "web", "gid": 3000})), "created (gid 3000)");
    assert_eq!(sb.read("etc/group"), format!("{GROUP}web:x:3000:\n"));
    assert_eq!(line_of(&sb.read("etc/gshadow"), "web"), Some("web:!::"));

    assert_eq!(sb.converge("group", json!({"name": "web", "gid": 3001})), "gid 3000 -> 3001");
    assert_eq!(sb.read("etc/group"), format!("{GROUP}web:x:3001:\n"));
    // Without a gid, an existing group is left as it is.
    assert_eq!(sb.apply("group", json!({"name": "web"}), false), Outcome::Unchanged);

    assert_eq!(sb.converge("group", json!({"name": "web", "state": "absent"})), "removed (gid 3001)");
    assert_eq!(sb.read("etc/group"), GROUP);
    assert_eq!(line_of(&sb.read("etc/gshadow"), "web"), None);

    assert_eq!(sb.converge("group", json!({"name": "daemons", "system": true})), "created (system)");
    let group = sb.read("etc/group");
    let gid: u32 = line_of(&group, "daemons").unwrap().split(':').nth(2).unwrap().parse().unwrap();
    assert!((100..=999).contains(&gid), "{group}");
}

#[test]
fn group_failures_name_the_tool() {
    let Some(sb) = Sandbox::new("group_failures_name_the_tool") else { return };
    sb.refused(
        "group",
        json!({"name": "web", "gid": 50}),
        "groupadd web exited with code 4: groupadd: GID '50' already exists",
    );
    sb.write("etc/passwd", &format!("{PASSWD}alice:x:1500:50::/home/alice:/bin/sh\n"));
    sb.refused(
        "group",
        json!({"name": "staff", "state": "absent"}),
        "groupdel staff exited with code 8: groupdel: cannot remove the primary group of user 'alice'",
    );
    sb.refused("group", json!({"name": "1234"}), "invalid group name \"1234\": all digits");
}

#[test]
fn cron_entry_is_created_changed_and_removed() {
    let Some(sb) = Sandbox::new("cron_entry_is_created_changed_and_removed") else { return };
    let name = "nightly backup";
    let file = format!("etc/cron.d/{}", cron::file_name(name));
    let spec = json!({"name": name, "command": "/usr/local/bin/backup --all", "schedule": "0 3 * * *"});
    assert_eq!(sb.converge("cron", spec), format!("created /{file} (0 3 * * * as root)"));
    let path = sb.root().join(&file);
    assert_eq!(
        sb.read(&file),
        "# Managed by Vigo (resource cron:nightly backup); changes made here are overwritten.\n\
         0 3 * * * root /usr/local/bin/backup --all\n"
    );
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o644, 0, 0));
    assert_eq!(fs::metadata(sb.root().join("etc/cron.d")).unwrap().mode() & 0o7777, 0o755);

    let spec = json!({"name": name, "command": "/usr/local/bin/backup --all", "schedule": "30  4 * * 1-5",
                      "user": "backup"});
    assert_eq!(sb.converge("cron", spec), "schedule \"0 3 * * *\" -> \"30 4 * * 1-5\"; user root -> backup");
    assert!(sb.read(&file).ends_with("\n30 4 * * 1-5 backup /usr/local/bin/backup --all\n"));

    let spec = json!({"name": name, "command": "/usr/local/bin/backup --all", "schedule": "@daily", "user": "backup"});
    assert_eq!(sb.converge("cron", spec), "schedule \"30 4 * * 1-5\" -> \"@daily\"");

    // A mode gone wrong is fixed in place, without rewriting the entry.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let inode = fs::metadata(&path).unwrap().ino();
    let spec = json!({"name": name, "command": "/usr/local/bin/backup --all", "schedule": "@daily", "user": "backup"});
    assert_eq!(sb.converge("cron", spec), "mode 0666 -> 0644");
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode);

    // A hand edit is replaced.
    sb.write(&file, "* * * * * root rm -rf /tmp/x\n");
    let spec = json!({"name": name, "command": "/usr/local/bin/backup --all", "schedule": "@daily", "user": "backup"});
    assert_eq!(sb.converge("cron", spec), "content replaced");

    assert_eq!(sb.converge("cron", json!({"name": name, "state": "absent"})), format!("removed /{file}"));
    assert!(!path.exists());
    let names: Vec<_> = fs::read_dir(sb.root().join("etc/cron.d")).unwrap().collect();
    assert!(names.is_empty(), "no temporary file is left behind: {names:?}");
}

#[test]
fn cron_file_names_are_stable_valid_and_distinct() {
    let Some(sb) = Sandbox::new("cron_file_names_are_stable_valid_and_distinct") else { return };
    let names = ["logrotate.daily/ÜBER app", "logrotate_daily_ ber app"];
    for name in names {
        let spec = json!({"name": name, "command": "true", "schedule": "@hourly"});
        assert!(matches!(sb.apply("cron", spec, false), Outcome::Changed(_)));
    }
    let mut files: Vec<String> = fs::read_dir(sb.root().join("etc/cron.d"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<String> = names.iter().map(|name| cron::file_name(name)).collect();
    expected.sort();
    assert_eq!(files, expected, "one file per name");
    for file in &files {
        assert!(file.starts_with("logrotate_daily__"), "{file}");
        assert!(file.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{file}");
    }
    // Pinned: a name must map to the same file in every run and every envoy version, or an old
    // file would be left behind beside the new one.
    assert_eq!(cron::file_name("nightly backup"), "nightly_backup-02bd51e4");
}

#[test]
fn invalid_cron_specs_are_refused() {
    let Some(sb) = Sandbox::new("invalid_cron_specs_are_refused") else { return };
    sb.refused("cron", json!({"name": "x", "schedule": "@daily"}), "needs command and schedule");
    sb.refused(
        "cron",
        json!({"name": "x", "command": "true", "schedule": "@often"}),
        "invalid cron schedule \"@often\"",
    );
    sb.refused(
        "cron",
        json!({"name": "x", "command": "true\n* * * * * root evil", "schedule": "@daily"}),
        "spanning lines",
    );
    sb.refused("cron", json!({"name": "x\ny", "command": "true", "schedule": "@daily"}), "invalid cron name");
    sb.refused(
        "cron",
        json!({"name": "x", "command": "true", "schedule": "@daily", "user": "a b"}),
        "invalid user name",
    );
    fs::create_dir_all(sb.root().join("etc/cron.d").join(cron::file_name("x")).join("sub")).unwrap();
    sb.refused("cron", json!({"name": "x", "command": "true", "schedule": "@daily"}), "is a directory; refusing");
}
