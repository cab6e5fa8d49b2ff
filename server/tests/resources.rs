//! The resource catalogue end to end, over real processes: a stack with groups, users, cron
//! entries, a git checkout, a file that notifies an exec, and an exec that fails, published to a
//! real server and converged by a real envoy into a sandbox root. `--noop` first (it reports
//! what would change and changes nothing), then the real run (what noop said is what happens,
//! and the failure skips exactly its dependent), then a run that changes nothing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::{Server, enroll, envoy_once, text, write_stack};

/// A bare repository with one commit on `main` holding `README`.
fn bare_repository(dir: &Path) -> String {
    let git = |cwd: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(cwd)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    };
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "app\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(dir, &["clone", "-q", "--bare", "work", "app.git"]);
    dir.join("app.git").to_str().unwrap().to_string()
}

/// A sandbox root with the account files the shadow tools edit.
fn sandbox(root: &Path) {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    for (name, content) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("group", "root:x:0:\nusers:x:100:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\nusers:*::\n"),
        ("login.defs", "UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\nUSERGROUPS_ENAB yes\n"),
    ] {
        std::fs::write(etc.join(name), content).unwrap();
    }
}

/// Every file under `root`, with its bytes: what a noop run must leave as it was.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() && !path.is_symlink() {
                files.insert(format!("{name}/"), Vec::new());
                dirs.push(path);
            } else {
                files.insert(name, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    files
}

/// The `  STATUS ID MESSAGE` lines of an envoy run, by id (ids may hold spaces: each is
/// matched against the ids the stack has).
fn results(out: &std::process::Output) -> BTreeMap<String, (String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("  ")?;
            let (status, rest) = line.split_once(' ')?;
            let rest = rest.trim_start();
            let id = IDS
                .iter()
                .filter(|id| rest == **id || rest.starts_with(&format!("{id} ")))
                .max_by_key(|id| id.len())?;
            let message = rest[id.len()..].trim_start();
            Some((id.to_string(), (status.to_string(), message.to_string())))
        })
        .collect()
}

/// The ids of the stack's resources.
const IDS: [&str; 8] = [
    "group:deploy",
    "user:deploy",
    "cron:nightly backup",
    "git:/srv/app",
    "file:/srv/app.conf",
    "exec:reload",
    "exec:broken",
    "file:/srv/after-broken",
];

#[test]
fn a_catalogue_stack_converges_after_a_noop_that_said_so_and_a_failure_skips_only_its_dependent() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = bare_repository(&tmp.path().join("git"));
    let module = format!(
        "resources:\n\
         \x20 - {{ type: group, name: deploy, gid: 4100 }}\n\
         \x20 - {{ type: user, name: deploy, uid: 4100, gid: deploy, shell: /bin/bash, home: /home/deploy, requires: [group:deploy] }}\n\
         \x20 - {{ type: cron, name: nightly backup, command: /usr/local/bin/backup, user: deploy, schedule: \"0 3 * * *\", requires: [user:deploy] }}\n\
         \x20 - {{ type: git, path: /srv/app, source: \"{repo}\", revision: main }}\n\
         \x20 - {{ type: file, path: /srv/app.conf, content: \"port 8080\\n\", mode: \"0644\", requires: [git:/srv/app], notify: [exec:reload] }}\n\
         \x20 - {{ type: exec, name: reload, command: \"echo reloaded >> $VIGO_ROOT/srv/reloads\", refreshonly: true }}\n\
         \x20 - {{ type: exec, name: broken, command: \"echo cannot >&2; exit 3\" }}\n\
         \x20 - {{ type: file, path: /srv/after-broken, content: \"x\\n\", requires: [exec:broken] }}\n"
    );
    let stack = tmp.path().join("stack");
    write_stack(&stack, &[("assign.yaml", "- match: \"*\"\n  modules: [app]\n"), ("modules/app/module.yaml", &module)]);
    let server = Server::start(&tmp.path().join("server"), "127.0.0.1:0");
    server.cli_ok(&["config", "publish", stack.to_str().unwrap()]);
    let envoy = tmp.path().join("envoy");
    let out = enroll(&server, &server.token(), &envoy, "app-1");
    assert!(out.status.success(), "{}", text(&out));
    let root = tmp.path().join("root");
    sandbox(&root);

    // noop: every resource would change (the failing exec too: noop does not run it), and
    // nothing under the root moves.
    let before = snapshot(&root);
    let noop = envoy_once(&envoy, &root, &["--noop"]);
    assert!(noop.status.success(), "{}", text(&noop));
    let said = results(&noop);
    assert_eq!(snapshot(&root), before, "noop changed the root");
    for id in ["group:deploy", "user:deploy", "cron:nightly backup", "git:/srv/app", "file:/srv/app.conf"] {
        assert_eq!(said.get(id).map(|r| r.0.as_str()), Some("would_change"), "{id}: {}", text(&noop));
    }

    // The real run does what noop said, fails the broken exec and skips only what needs it.
    let run = envoy_once(&envoy, &root, &[]);
    assert!(!run.status.success(), "a failed resource makes the run fail: {}", text(&run));
    let done = results(&run);
    for id in ["group:deploy", "user:deploy", "cron:nightly backup", "git:/srv/app", "file:/srv/app.conf"] {
        let (status, message) = &done[id];
        assert_eq!(status, "changed", "{id}: {}", text(&run));
        assert_eq!(message, &said[id].1, "{id}: the real run applies the diff noop reported");
    }
    assert_eq!(done["exec:reload"].0, "changed", "notified by the file");
    assert_eq!(done["exec:broken"], ("failed".into(), "exited with code 3: cannot".into()));
    assert_eq!(done["file:/srv/after-broken"].0, "skipped");
    assert!(done["file:/srv/after-broken"].1.contains("exec:broken"), "{:?}", done["file:/srv/after-broken"]);
    assert!(!root.join("srv/after-broken").exists());

    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert!(read("etc/group").lines().any(|l| l.starts_with("deploy:x:4100:")), "{}", read("etc/group"));
    assert!(read("etc/passwd").contains("deploy:x:4100:4100::/home/deploy:/bin/bash\n"), "{}", read("etc/passwd"));
    let cron: Vec<_> = std::fs::read_dir(root.join("etc/cron.d")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cron.len(), 1, "{cron:?}");
    assert!(std::fs::read_to_string(&cron[0]).unwrap().contains("0 3 * * * deploy /usr/local/bin/backup\n"));
    assert_eq!(read("srv/app/README"), "app\n");
    assert_eq!(read("srv/reloads"), "reloaded\n");

    // Converged: nothing changes, nothing is refreshed; the broken exec still fails alone.
    let again = envoy_once(&envoy, &root, &[]);
    let again_results = results(&again);
    let changed: Vec<_> = again_results.iter().filter(|(_, (s, _))| s == "changed").collect();
    assert!(changed.is_empty(), "a second run changed {changed:?}");
    assert_eq!(again_results["exec:broken"].0, "failed");
    assert_eq!(again_results["file:/srv/after-broken"].0, "skipped");
    assert_eq!(read("srv/reloads"), "reloaded\n");
}
