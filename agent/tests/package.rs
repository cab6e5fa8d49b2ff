//! The `package` and `repository` executors against the real dpkg, apt and gpg of this machine,
//! in sandbox roots: two versions of a tiny package are built with `dpkg-deb`, served as a local
//! `file:` repository (signed with a key made for the test when gpg is here), added to a sandbox
//! with an empty dpkg database by the repository executor, then installed, upgraded, downgraded
//! and removed by the package executor. Every step checks the tools' own answer (`dpkg-query`
//! under the root, the installed file), that noop announces exactly the next real run and leaves
//! the sandbox byte-identical, that a second run is unchanged, and that the host's dpkg database
//! and log never move.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use vigo_agent::executors::{self, Context, Outcome};
use vigo_proto::bundle::resource::Spec;
use vigo_proto::bundle::{OpaqueSpec, Resource};

const PACKAGE: &str = "vigo-hello";

fn apply(r#type: &str, spec: &Value, root: &Path, noop: bool) -> Outcome {
    let resource = Resource {
        id: format!("{type}:{}", spec["name"].as_str().unwrap_or("?")),
        r#type: r#type.into(),
        spec: Some(Spec::Opaque(OpaqueSpec { json: spec.to_string() })),
        ..Default::default()
    };
    executors::apply(&resource, &Context { root, noop, refresh: false })
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|out| out.status.success())
}

fn run(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn one_line_failure(outcome: &Outcome, needles: &[&str]) {
    let Outcome::Failed(message) = outcome else { panic!("expected a failure, got {outcome:?}") };
    assert!(!message.contains('\n'), "one line: {message:?}");
    for needle in needles {
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
    }
}

/// The host's dpkg database and log, and apt's sources: none of them may change.
struct Host {
    status: Vec<u8>,
    dpkg_log: Option<Vec<u8>>,
    sources: Vec<PathBuf>,
}

impl Host {
    fn record() -> Host {
        Host {
            status: fs::read("/var/lib/dpkg/status").unwrap_or_default(),
            dpkg_log: fs::read("/var/log/dpkg.log").ok(),
            sources: Self::sources(),
        }
    }

    fn sources() -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> =
            fs::read_dir("/etc/apt/sources.list.d").map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        names.sort();
        names
    }

    fn assert_untouched(&self) {
        assert!(fs::read("/var/lib/dpkg/status").unwrap_or_default() == self.status, "host dpkg status changed");
        assert!(fs::read("/var/log/dpkg.log").ok() == self.dpkg_log, "host dpkg log changed");
        assert_eq!(Self::sources(), self.sources, "host apt sources changed");
    }
}

/// A local apt repository holding vigo-hello 1.0 and 2.0, flat (`Suites: ./`).
struct Repo {
    dir: TempDir,
    /// The armored public key its InRelease is signed with; `None`: unsigned.
    key: Option<String>,
}

impl Repo {
    fn build(signed: bool) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        // Readable by apt's unprivileged download user, as a repository directory would be.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let pool = dir.path().join("repo");
        fs::create_dir(&pool).unwrap();
        for version in ["1.0", "2.0"] {
            let tree = dir.path().join(format!("build-{version}"));
            fs::create_dir_all(tree.join("DEBIAN")).unwrap();
            fs::create_dir_all(tree.join("usr/share/vigo-test")).unwrap();
            fs::write(
                tree.join("DEBIAN/control"),
                format!(
                    "Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: Vigo Test <test@example.invalid>\nDescription: test package\n"
                ),
            )
            .unwrap();
            fs::write(tree.join("usr/share/vigo-test/hello.txt"), format!("{PACKAGE} {version}\n")).unwrap();
            let deb = pool.join(format!("{PACKAGE}_{version}_all.deb"));
            run(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&tree).arg(&deb));
        }
        let packages = run(Command::new("dpkg-scanpackages").args(["--multiversion", "."]).current_dir(&pool));
        fs::write(pool.join("Packages"), &packages).unwrap();
        let mut repo = Repo { dir, key: None };
        if signed {
            repo.sign(&packages);
        }
        repo
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn url(&self) -> String {
        format!("file:{}", self.path().display())
    }

    fn gnupg_home(&self) -> PathBuf {
        self.dir.path().join("gnupg")
    }

    /// A Release naming the Packages file by its SHA-256, clearsigned into InRelease with a key
    /// made for this repository.
    fn sign(&mut self, packages: &[u8]) {
        let home = self.gnupg_home();
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = || {
            let mut command = Command::new("gpg");
            command.arg("--homedir").arg(&home).args(["--batch", "--quiet", "--passphrase", ""]);
            command
        };
        run(gpg().args(["--quick-gen-key", "Vigo Test <test@example.invalid>", "ed25519", "sign", "never"]));
        self.key = Some(String::from_utf8(run(gpg().args(["--armor", "--export"]))).unwrap());
        let release = format!(
            "Origin: vigo-test\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n {} {} Packages\n",
            hex::encode(Sha256::digest(packages)),
            packages.len()
        );
        fs::write(self.path().join("Release"), release).unwrap();
        run(gpg()
            .args(["--yes", "--clearsign", "-o"])
            .arg(self.path().join("InRelease"))
            .arg(self.path().join("Release")));
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        if self.gnupg_home().exists() {
            // gpg started an agent for this home; it ends with it.
            let _ =
                Command::new("gpgconf").arg("--homedir").arg(self.gnupg_home()).args(["--kill", "gpg-agent"]).output();
        }
    }
}

/// A root laid out like a fresh Debian system: an empty dpkg database, apt's directories.
fn sandbox(os_release: Option<&str>) -> TempDir {
    let root = tempfile::tempdir().unwrap();
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "etc/apt/sources.list.d",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
    ] {
        fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    fs::write(root.path().join("var/lib/dpkg/available"), "").unwrap();
    if let Some(text) = os_release {
        fs::write(root.path().join("etc/os-release"), text).unwrap();
    }
    root
}

/// Every entry under `root`: type, mode, mtime, and content or target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.mode())
            } else if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else {
                let sha = hex::encode(Sha256::digest(fs::read(&path).unwrap()));
                format!("file {:o} {}.{} {sha}", meta.mode(), meta.mtime(), meta.mtime_nsec())
            };
            entries.insert(path, what);
        }
    }
    entries
}

/// The installed version of `name` under `root`, as dpkg-query itself reports it.
fn dpkg_installed(root: &Path, name: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f", "${Status}|${Version}", name])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, version) = text.split_once('|')?;
    (out.status.success() && status.ends_with(" installed")).then(|| version.to_owned())
}

/// The contract for one change: noop announces `summary` and leaves the sandbox (the dpkg status
/// file included) byte-identical; the real run makes the same change; then nothing is left to do.
fn converges(r#type: &str, spec: &Value, root: &Path, summary: &str) {
    let before = snapshot(root);
    let status = fs::read(root.join("var/lib/dpkg/status")).ok();
    let noop = apply(r#type, spec, root, true);
    assert_eq!(noop, Outcome::Changed(summary.into()), "noop of {spec}");
    assert!(fs::read(root.join("var/lib/dpkg/status")).ok() == status, "noop changed the dpkg status file");
    assert_eq!(snapshot(root), before, "noop changed the sandbox");
    assert_eq!(apply(r#type, spec, root, false), noop, "the real run does what noop announced");
    assert_eq!(apply(r#type, spec, root, false), Outcome::Unchanged, "second run of {spec}");
    assert_eq!(apply(r#type, spec, root, true), Outcome::Unchanged, "noop after the run of {spec}");
}

fn installed_file(root: &Path) -> Option<String> {
    fs::read_to_string(root.join("usr/share/vigo-test/hello.txt")).ok()
}

#[test]
fn signed_repository_then_package_install_upgrade_downgrade_remove() {
    let host = Host::record();
    let signed = have("gpg");
    if !signed {
        println!("gpg is not installed: the repository is served unsigned (file: URLs may be)");
    }
    let repo = Repo::build(signed);
    let root = sandbox(None);
    let root = root.path();

    let mut repository = json!({ "name": "test", "kind": "apt", "url": repo.url(), "suites": ["./"] });
    if let Some(key) = &repo.key {
        repository["key"] = json!(key);
    }
    let created = if signed {
        "created /etc/apt/keyrings/vigo-test.asc, created /etc/apt/sources.list.d/vigo-test.sources"
    } else {
        "created /etc/apt/sources.list.d/vigo-test.sources"
    };
    converges("repository", &repository, root, created);
    let sources = fs::read_to_string(root.join("etc/apt/sources.list.d/vigo-test.sources")).unwrap();
    assert!(sources.contains(&format!("URIs: {}\nSuites: ./\n", repo.url())), "{sources}");
    if let Some(key) = &repo.key {
        let key_path = root.join("etc/apt/keyrings/vigo-test.asc");
        assert!(sources.ends_with(&format!("Signed-By: {}\n", key_path.display())), "{sources}");
        assert_eq!(fs::read_to_string(&key_path).unwrap(), format!("{}\n", key.trim()));
    }

    // The lists are empty: the real run refreshes them (through the signature check) and still
    // finds no such package.
    let unknown = apply("package", &json!({ "name": "vigo-nope", "provider": "apt" }), root, false);
    one_line_failure(&unknown, &["package vigo-nope", "no installable version", "even after refreshing"]);
    assert_eq!(dpkg_installed(root, "vigo-nope"), None);

    let pinned = |version: &str| json!({ "name": PACKAGE, "version": version, "provider": "apt" });
    converges("package", &pinned("1.0"), root, "installed vigo-hello 1.0 (was absent)");
    assert_eq!(dpkg_installed(root, PACKAGE).as_deref(), Some("1.0"));
    assert_eq!(installed_file(root).as_deref(), Some("vigo-hello 1.0\n"));

    // present without a pin is satisfied by any version.
    assert_eq!(apply("package", &json!({ "name": PACKAGE, "provider": "apt" }), root, false), Outcome::Unchanged);

    let latest = json!({ "name": PACKAGE, "state": "latest", "provider": "apt" });
    converges("package", &latest, root, "upgraded vigo-hello 1.0 -> 2.0");
    assert_eq!(dpkg_installed(root, PACKAGE).as_deref(), Some("2.0"));
    assert_eq!(installed_file(root).as_deref(), Some("vigo-hello 2.0\n"));

    converges("package", &pinned("1.0"), root, "downgraded vigo-hello 2.0 -> 1.0");
    assert_eq!(dpkg_installed(root, PACKAGE).as_deref(), Some("1.0"));
    assert_eq!(installed_file(root).as_deref(), Some("vigo-hello 1.0\n"));

    let pin_missing = apply("package", &pinned("3.0"), root, false);
    one_line_failure(&pin_missing, &["package vigo-hello", "version 3.0 is not in the package lists", "2.0, 1.0"]);
    assert_eq!(dpkg_installed(root, PACKAGE).as_deref(), Some("1.0"));

    let absent = json!({ "name": PACKAGE, "state": "absent", "provider": "apt" });
    converges("package", &absent, root, "removed vigo-hello 1.0");
    assert_eq!(dpkg_installed(root, PACKAGE), None);
    assert_eq!(installed_file(root), None);
    assert!(root.join("var/log/dpkg.log").exists(), "dpkg logged under the root");

    let removed = if signed {
        "removed /etc/apt/sources.list.d/vigo-test.sources, removed /etc/apt/keyrings/vigo-test.asc"
    } else {
        "removed /etc/apt/sources.list.d/vigo-test.sources"
    };
    repository["state"] = json!("absent");
    converges("repository", &repository, root, removed);
    assert!(!root.join("etc/apt/sources.list.d/vigo-test.sources").exists());
    assert!(!root.join("etc/apt/keyrings/vigo-test.asc").exists());
    host.assert_untouched();
}

#[test]
fn unsigned_file_repository_and_provider_from_os_release() {
    let host = Host::record();
    let repo = Repo::build(false);
    let root = sandbox(Some("PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n"));
    let root = root.path();
    let repository = json!({ "name": "local", "kind": "apt", "url": repo.url(), "suites": ["./"] });
    assert_eq!(
        apply("repository", &repository, root, false),
        Outcome::Changed("created /etc/apt/sources.list.d/vigo-local.sources".into())
    );
    let sources = fs::read_to_string(root.join("etc/apt/sources.list.d/vigo-local.sources")).unwrap();
    assert!(sources.ends_with("Suites: ./\nTrusted: yes\n"), "{sources}");

    // No provider: os-release says debian, so apt; latest on an absent package installs the
    // candidate, once the lists are refreshed.
    let latest = json!({ "name": PACKAGE, "state": "latest" });
    assert_eq!(
        apply("package", &latest, root, false),
        Outcome::Changed("installed vigo-hello 2.0 (was absent)".into())
    );
    assert_eq!(dpkg_installed(root, PACKAGE).as_deref(), Some("2.0"));
    assert_eq!(apply("package", &latest, root, false), Outcome::Unchanged);
    converges("package", &json!({ "name": PACKAGE, "state": "absent" }), root, "removed vigo-hello 2.0");
    assert_eq!(dpkg_installed(root, PACKAGE), None);
    host.assert_untouched();
}

#[test]
fn provider_choice_and_bad_specs_fail_with_one_line() {
    let host = Host::record();
    let root = sandbox(None);
    let root = root.path();
    let before = snapshot(root);
    let package = |spec: Value| apply("package", &spec, root, false);

    one_line_failure(&package(json!({ "name": "hello" })), &["package hello", "no provider given", "os-release"]);
    fs::write(root.join("etc/os-release"), "ID=arch\n").unwrap();
    one_line_failure(&package(json!({ "name": "hello" })), &["names no Debian- or Red Hat-like system"]);
    fs::write(root.join("etc/os-release"), "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n").unwrap();
    let rocky = package(json!({ "name": "hello" }));
    if have("rpm") {
        assert!(!matches!(rocky, Outcome::Failed(ref m) if m.contains("provider")), "{rocky:?}");
    } else {
        // dnf was chosen, and its first query names the missing tool.
        one_line_failure(&rocky, &["package hello", "cannot start rpm"]);
    }
    fs::remove_file(root.join("etc/os-release")).unwrap();

    one_line_failure(&package(json!({ "name": "hello", "provider": "pacman" })), &["unknown provider \"pacman\""]);
    one_line_failure(&package(json!({ "name": "hello", "colour": "red" })), &["invalid package spec", "colour"]);
    one_line_failure(&package(json!({ "name": "-oDir=/" })), &["invalid package name"]);
    one_line_failure(&package(json!({ "name": "hello", "state": "purged" })), &["unknown state \"purged\""]);
    one_line_failure(
        &package(json!({ "name": "hello", "state": "latest", "version": "1.0", "provider": "apt" })),
        &["state latest takes no version"],
    );
    one_line_failure(&package(json!({ "name": "hello", "version": "1.0 || true" })), &["invalid version"]);

    let repository = |spec: Value| apply("repository", &spec, root, false);
    one_line_failure(
        &repository(
            json!({ "name": "web", "kind": "apt", "url": "https://deb.example.org", "suites": ["stable"], "components": ["main"] }),
        ),
        &["repository web", "needs a key"],
    );
    one_line_failure(
        &repository(json!({ "name": "../up", "kind": "apt", "url": "file:/srv" })),
        &["invalid repository spec"],
    );
    one_line_failure(
        &repository(
            json!({ "name": "x", "kind": "apt", "url": "file:/srv", "suites": ["./"], "key": "ssh-ed25519 AAAA" }),
        ),
        &["ASCII-armored"],
    );
    // Nothing was written for any of them (the os-release this test wrote is gone again).
    assert_eq!(snapshot(root), before);
    host.assert_untouched();
}

#[test]
fn dnf_repository_files_are_written_replaced_and_removed_under_the_root() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let key =
        |body: &str| format!("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{body}\n-----END PGP PUBLIC KEY BLOCK-----\n");
    let mut spec = json!({ "name": "tools", "kind": "dnf", "url": "https://rpm.example.org/el9/$basearch", "key": key("mDMEAAAA") });
    converges(
        "repository",
        &spec,
        root,
        "created /etc/pki/rpm-gpg/vigo-tools.asc, created /etc/yum.repos.d/vigo-tools.repo",
    );
    let repo_file = root.join("etc/yum.repos.d/vigo-tools.repo");
    let key_file = root.join("etc/pki/rpm-gpg/vigo-tools.asc");
    let text = fs::read_to_string(&repo_file).unwrap();
    assert!(
        text.contains(
            "[vigo-tools]\nname=tools\nbaseurl=https://rpm.example.org/el9/$basearch\nenabled=1\ngpgcheck=1\n"
        )
    );
    assert!(text.ends_with(&format!("gpgkey=file://{}\n", key_file.display())), "{text}");
    assert_eq!(fs::read_to_string(&key_file).unwrap(), key("mDMEAAAA"));
    assert_eq!(fs::metadata(&repo_file).unwrap().mode() & 0o7777, 0o644);

    // A new key replaces the old file by a rename; the repo file, unchanged, is not touched.
    let repo_inode = fs::metadata(&repo_file).unwrap().ino();
    let key_inode = fs::metadata(&key_file).unwrap().ino();
    spec["key"] = json!(key("mDMEBBBB"));
    converges("repository", &spec, root, "updated /etc/pki/rpm-gpg/vigo-tools.asc");
    assert_eq!(fs::read_to_string(&key_file).unwrap(), key("mDMEBBBB"));
    assert_ne!(fs::metadata(&key_file).unwrap().ino(), key_inode);
    assert_eq!(fs::metadata(&repo_file).unwrap().ino(), repo_inode);
    let names: Vec<_> = fs::read_dir(root.join("etc/pki/rpm-gpg")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["vigo-tools.asc"], "no temporary file is left behind");

    spec["state"] = json!("absent");
    converges(
        "repository",
        &spec,
        root,
        "removed /etc/yum.repos.d/vigo-tools.repo, removed /etc/pki/rpm-gpg/vigo-tools.asc",
    );
    assert!(!repo_file.exists() && !key_file.exists());
}

#[test]
fn dnf_backend_against_rpm() {
    if !have("rpm") {
        println!("skipped: rpm is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    run(Command::new("rpm").arg("--root").arg(root).arg("--initdb"));
    let absent = json!({ "name": "vigo-nope", "state": "absent", "provider": "dnf" });
    assert_eq!(apply("package", &absent, root, false), Outcome::Unchanged);
    let out = run(Command::new("rpm").arg("--root").arg(root).arg("-qa"));
    assert!(out.is_empty(), "the sandbox rpm database stays empty");
}

#[test]
fn a_repository_signed_by_another_key_is_refused() {
    if !have("gpg") {
        println!("skipped: gpg is not installed");
        return;
    }
    let host = Host::record();
    let (repo, stranger) = (Repo::build(true), Repo::build(true));
    let root = sandbox(None);
    let root = root.path();
    let repository = json!({ "name": "test", "kind": "apt", "url": repo.url(), "suites": ["./"], "key": stranger.key });
    assert!(matches!(apply("repository", &repository, root, false), Outcome::Changed(_)));
    let outcome = apply("package", &json!({ "name": PACKAGE, "provider": "apt" }), root, false);
    one_line_failure(&outcome, &["package vigo-hello", "apt-get update", "is not signed"]);
    assert_eq!(dpkg_installed(root, PACKAGE), None);
    assert_eq!(installed_file(root), None);
    host.assert_untouched();
}
