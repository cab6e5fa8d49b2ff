//! The `git` executor against the real `git`, with a bare repository made in the test as the
//! remote: clone, tags, commits, following a branch, removal, and the refusals that protect
//! someone's work. Everything lives in tempdirs; git runs with the user's configuration ignored.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::snapshot;
use vigo_agent::executors::Outcome;

/// Runs git for the test's own setup and inspection; panics on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.org")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.org")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A bare repository (the remote) and a work clone used to push commits to it.
struct Remote {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Remote {
    fn new() -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("src.git");
        let work = dir.path().join("work");
        git(dir.path(), &["init", "--quiet", "--bare", "--initial-branch=main", "src.git"]);
        git(dir.path(), &["init", "--quiet", "--initial-branch=main", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Remote { _dir: dir, bare, work }
    }

    /// Commits `content` as `app.txt` on main and pushes; returns the commit.
    fn commit(&self, content: &str) -> String {
        fs::write(self.work.join("app.txt"), content).unwrap();
        git(&self.work, &["add", "app.txt"]);
        git(&self.work, &["commit", "--quiet", "-m", content]);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Tags the last commit (annotated) and pushes the tag.
    fn tag(&self, name: &str) {
        git(&self.work, &["tag", "-a", "-m", name, name]);
        git(&self.work, &["push", "--quiet", "origin", name]);
    }

    fn source(&self) -> &str {
        self.bare.to_str().unwrap()
    }
}

fn run(root: &Path, json: &serde_json::Value, noop: bool) -> Outcome {
    common::apply_json("git", "/srv/app", root, json, noop, false)
}

fn noop_then_real(root: &Path, json: &serde_json::Value) -> String {
    common::noop_then_real("git", "/srv/app", root, json)
}

fn short(commit: &str) -> &str {
    &commit[..7]
}

#[test]
fn present_clones_the_default_branch_and_then_leaves_it_alone() {
    let remote = Remote::new();
    let first = remote.commit("one");
    let root = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({"path": "/srv/app", "source": remote.source()});

    let summary = noop_then_real(root.path(), &spec);
    assert_eq!(summary, format!("cloned {} at {} (default branch main)", remote.source(), short(&first)));
    let clone = root.path().join("srv/app");
    assert_eq!(fs::read_to_string(clone.join("app.txt")).unwrap(), "one");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), first);
    assert_eq!(git(&clone, &["config", "remote.origin.url"]), remote.source());
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    assert_eq!(fs::metadata(root.path().join("srv")).unwrap().permissions().mode() & 0o777, 0o755);

    // A new commit upstream: present does not follow it.
    remote.commit("two");
    let before = snapshot(root.path());
    assert_eq!(run(root.path(), &spec, false), Outcome::Unchanged);
    assert_eq!(run(root.path(), &spec, true), Outcome::Unchanged);
    assert_eq!(snapshot(root.path()), before);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), first);
}

#[test]
fn tags_and_commits_are_checked_out_detached() {
    let remote = Remote::new();
    let first = remote.commit("one");
    remote.tag("v1");
    let second = remote.commit("two");
    let root = tempfile::tempdir().unwrap();
    let clone = root.path().join("srv/app");

    let at_tag = serde_json::json!({"path": "/srv/app", "source": remote.source(), "revision": "v1"});
    let summary = noop_then_real(root.path(), &at_tag);
    assert_eq!(summary, format!("cloned {} at {} (tag v1)", remote.source(), short(&first)));
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), first);
    assert_eq!(fs::read_to_string(clone.join("app.txt")).unwrap(), "one");
    assert_eq!(run(root.path(), &at_tag, false), Outcome::Unchanged);

    let at_commit = serde_json::json!({"path": "/srv/app", "source": remote.source(), "revision": second});
    let summary = noop_then_real(root.path(), &at_commit);
    assert_eq!(summary, format!("{} -> {} (commit {})", short(&first), short(&second), short(&second)));
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), second);
    assert_eq!(fs::read_to_string(clone.join("app.txt")).unwrap(), "two");
    // Detached: no branch is checked out.
    assert_eq!(git(&clone, &["rev-parse", "--abbrev-ref", "HEAD"]), "HEAD");

    // Back to an abbreviated commit, then the tag.
    let abbreviated = serde_json::json!({"path": "/srv/app", "source": remote.source(), "revision": &first[..10]});
    let summary = noop_then_real(root.path(), &abbreviated);
    assert_eq!(summary, format!("{} -> {} (commit {})", short(&second), short(&first), short(&first)));
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), first);
    assert_eq!(run(root.path(), &at_tag, false), Outcome::Unchanged);

    // A tag or commit the clone holds needs no remote: with the remote gone, still unchanged.
    fs::rename(&remote.bare, remote.bare.with_extension("moved")).unwrap();
    assert_eq!(run(root.path(), &at_tag, false), Outcome::Unchanged);
    assert_eq!(run(root.path(), &abbreviated, false), Outcome::Unchanged);
    assert!(matches!(run(root.path(), &at_commit, true), Outcome::Changed(_)));
}

#[test]
fn latest_moves_to_the_newest_commit_of_the_branch() {
    let remote = Remote::new();
    let first = remote.commit("one");
    let root = tempfile::tempdir().unwrap();
    let clone = root.path().join("srv/app");
    let latest = serde_json::json!({"path": "/srv/app", "source": remote.source(), "state": "latest"});
    let on_main =
        serde_json::json!({"path": "/srv/app", "source": remote.source(), "revision": "main", "state": "latest"});

    noop_then_real(root.path(), &latest);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), first);
    assert_eq!(run(root.path(), &latest, false), Outcome::Unchanged);
    assert_eq!(run(root.path(), &on_main, false), Outcome::Unchanged);

    let second = remote.commit("two");
    let summary = noop_then_real(root.path(), &latest);
    assert_eq!(summary, format!("{} -> {} (default branch main)", short(&first), short(&second)));
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), second);
    assert_eq!(fs::read_to_string(clone.join("app.txt")).unwrap(), "two");
    assert_eq!(run(root.path(), &latest, false), Outcome::Unchanged);

    let third = remote.commit("three");
    let summary = noop_then_real(root.path(), &on_main);
    assert_eq!(summary, format!("{} -> {} (branch main)", short(&second), short(&third)));
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), third);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    assert_eq!(run(root.path(), &on_main, false), Outcome::Unchanged);
}

#[test]
fn absent_removes_the_clone() {
    let remote = Remote::new();
    let first = remote.commit("one");
    let root = tempfile::tempdir().unwrap();
    let present = serde_json::json!({"path": "/srv/app", "source": remote.source()});
    let absent = serde_json::json!({"path": "/srv/app", "source": remote.source(), "state": "absent"});
    assert_eq!(run(root.path(), &absent, false), Outcome::Unchanged);
    noop_then_real(root.path(), &present);

    let summary = noop_then_real(root.path(), &absent);
    assert_eq!(summary, format!("removed clone of {} at {}", remote.source(), short(&first)));
    assert!(!root.path().join("srv/app").exists());
    assert!(root.path().join("srv").is_dir());
    assert_eq!(run(root.path(), &absent, false), Outcome::Unchanged);
}

#[test]
fn local_changes_are_never_thrown_away() {
    let remote = Remote::new();
    let first = remote.commit("one");
    let root = tempfile::tempdir().unwrap();
    let clone = root.path().join("srv/app");
    let latest = serde_json::json!({"path": "/srv/app", "source": remote.source(), "state": "latest"});
    let absent = serde_json::json!({"path": "/srv/app", "source": remote.source(), "state": "absent"});
    noop_then_real(root.path(), &latest);
    remote.commit("two");

    fs::write(clone.join("app.txt"), "edited by hand").unwrap();
    let before = snapshot(root.path());
    for spec in [&latest, &absent] {
        let outcome = run(root.path(), spec, false);
        let Outcome::Failed(message) = &outcome else { panic!("{spec}: {outcome:?}") };
        assert!(message.contains("has local changes") || message.contains("changed or untracked"), "{message}");
        assert!(message.contains("refusing"), "{message}");
    }
    assert_eq!(snapshot(root.path()), before);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), first);

    // Untracked files do not stop a checkout, but do stop a removal.
    git(&clone, &["checkout", "--quiet", "--", "app.txt"]);
    fs::write(clone.join("notes.txt"), "mine").unwrap();
    let Outcome::Failed(message) = run(root.path(), &absent, false) else { panic!("removed untracked work") };
    assert!(message.contains("1 changed or untracked files (?? notes.txt)"), "{message}");
    assert_eq!(fs::read_to_string(clone.join("notes.txt")).unwrap(), "mine");

    // A commit made in the clone is not in the remote: removal refused.
    fs::remove_file(clone.join("notes.txt")).unwrap();
    fs::write(clone.join("app.txt"), "local commit").unwrap();
    git(&clone, &["commit", "--quiet", "-am", "local"]);
    let Outcome::Failed(message) = run(root.path(), &absent, false) else { panic!("removed a local commit") };
    assert!(message.contains("1 commits that no remote branch or tag holds"), "{message}");
    assert!(clone.join(".git").is_dir());
}

#[test]
fn foreign_paths_are_refused() {
    let remote = Remote::new();
    remote.commit("one");
    let other = Remote::new();
    other.commit("other");
    let root = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({"path": "/srv/app", "source": remote.source()});

    // A directory with someone's files in it.
    fs::create_dir_all(root.path().join("srv/app")).unwrap();
    fs::write(root.path().join("srv/app/data"), "keep").unwrap();
    let Outcome::Failed(message) = run(root.path(), &spec, false) else { panic!("took over a plain directory") };
    assert!(message.contains("is not a git clone"), "{message}");
    let absent = serde_json::json!({"path": "/srv/app", "state": "absent"});
    assert!(matches!(run(root.path(), &absent, false), Outcome::Failed(_)));
    assert_eq!(fs::read_to_string(root.path().join("srv/app/data")).unwrap(), "keep");

    // A clone of another repository, made in what is now an empty directory.
    fs::remove_file(root.path().join("srv/app/data")).unwrap();
    let of_other = serde_json::json!({"path": "/srv/app", "source": other.source()});
    noop_then_real(root.path(), &of_other);
    let Outcome::Failed(message) = run(root.path(), &spec, false) else { panic!("took over another clone") };
    assert_eq!(
        message,
        format!(
            "{} is a clone of {}, not {}; refusing to touch it",
            root.path().join("srv/app").display(),
            other.source(),
            remote.source()
        )
    );
    let absent_of_mine = serde_json::json!({"path": "/srv/app", "source": remote.source(), "state": "absent"});
    assert!(matches!(run(root.path(), &absent_of_mine, false), Outcome::Failed(_)));
    assert_eq!(fs::read_to_string(root.path().join("srv/app/app.txt")).unwrap(), "other");

    // A regular file, an unknown revision, a bad spec.
    fs::write(root.path().join("srv/file"), "x").unwrap();
    let at_file = serde_json::json!({"path": "/srv/file", "source": remote.source()});
    let Outcome::Failed(message) = run(root.path(), &at_file, false) else { panic!("replaced a file") };
    assert!(message.ends_with("is a regular file; refusing to replace it with a clone"), "{message}");
    let unknown = serde_json::json!({"path": "/srv/new", "source": remote.source(), "revision": "nope"});
    assert_eq!(
        run(root.path(), &unknown, false),
        Outcome::Failed(format!("revision nope is not a branch, tag or commit of {}", remote.source()))
    );
    assert!(!root.path().join("srv/new").exists());
    let missing = serde_json::json!({"path": "/srv/new", "source": "/nonexistent/repo.git"});
    let Outcome::Failed(message) = run(root.path(), &missing, false) else { panic!("cloned nothing?") };
    assert_eq!(
        message,
        "git ls-remote: exited with code 128: fatal: '/nonexistent/repo.git' does not appear to be a git repository"
    );
    let typo = serde_json::json!({"path": "/srv/new", "source": remote.source(), "revison": "v1"});
    let Outcome::Failed(message) = run(root.path(), &typo, false) else { panic!("accepted an unknown field") };
    assert!(message.starts_with("invalid git spec: unknown field `revison`"), "{message}");
    let entries: Vec<_> = fs::read_dir(root.path().join("srv")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 2, "no clone or temporary directory left behind: {entries:?}");
}
