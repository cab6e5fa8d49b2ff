//! The `source_package` executor against a loopback HTTP server started in the test, serving
//! tarballs built in the test whose `build.sh` installs a file under `$VIGO_ROOT/usr/local`:
//! download, digest check, unpacking, build, `creates` and the stamp, and the failures.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::snapshot;
use sha2::{Digest, Sha256};
use vigo_agent::executors::Outcome;

/// A one-thread HTTP/1.1 server on 127.0.0.1: `GET /PATH` answers the body stored under PATH,
/// or 404. Counts the requests it answered.
struct Server {
    base_url: String,
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    n_requests: Arc<AtomicUsize>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let n_requests = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&bodies), Arc::clone(&n_requests));
        // The thread ends with the test process; every read it does is bounded by a timeout.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let path = request.split(' ').nth(1).unwrap_or("").to_string();
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().get(&path).cloned();
                let (status, body) = match body {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", b"not found\n".to_vec()),
                };
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
            }
        });
        Server { base_url, bodies, n_requests }
    }

    /// Serves `body` at `path`; returns its URL.
    fn put(&self, path: &str, body: Vec<u8>) -> String {
        self.bodies.lock().unwrap().insert(path.to_string(), body);
        format!("{}{path}", self.base_url)
    }

    fn n_requests(&self) -> usize {
        self.n_requests.load(Ordering::SeqCst)
    }
}

/// One archive entry: a path, written into the header as is (so tests can craft escapes).
enum Entry<'a> {
    File(&'a str, &'a str, u32),
    Symlink(&'a str, &'a str),
}

/// A tar archive of `entries`, gzipped or not.
fn tarball(entries: &[Entry<'_>], gzip: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        let (name, data, mode) = match entry {
            Entry::File(name, content, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                (name, content.as_bytes(), *mode)
            }
            Entry::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                (name, &b""[..], 0o777)
            }
        };
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    if !gzip {
        return tar;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&tar).unwrap();
    encoder.finish().unwrap()
}

/// `hello-VERSION/` with a program and a `build.sh` that installs it and its version under
/// `$VIGO_ROOT/usr/local`. Relative paths in build.sh prove it runs inside the stripped top dir.
fn hello(version: &str) -> Vec<u8> {
    let program = format!("#!/bin/sh\necho hello {version}\n");
    let build = "#!/bin/sh\nset -e\n\
        mkdir -p \"$VIGO_ROOT/usr/local/bin\" \"$VIGO_ROOT/usr/local/share/hello\"\n\
        cp hello \"$VIGO_ROOT/usr/local/bin/hello\"\n\
        cp VERSION \"$VIGO_ROOT/usr/local/share/hello/VERSION\"\n";
    let top = format!("hello-{version}");
    let (program_path, build_path, version_path) =
        (format!("{top}/hello"), format!("{top}/build.sh"), format!("{top}/VERSION"));
    tarball(
        &[
            Entry::File(&program_path, &program, 0o755),
            Entry::File(&build_path, build, 0o755),
            Entry::File(&version_path, version, 0o644),
        ],
        true,
    )
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn run(root: &Path, json: &serde_json::Value, noop: bool) -> Outcome {
    common::apply_json("source_package", "hello", root, json, noop, false)
}

/// Noop first (which must change nothing and download nothing), then the real run; both must
/// say the same.
fn noop_then_real(root: &Path, json: &serde_json::Value, server: &Server) -> String {
    let (before, n_requests) = (snapshot(root), server.n_requests());
    let Outcome::Changed(would) = run(root, json, true) else { panic!("noop of {json} did not report a change") };
    assert_eq!(snapshot(root), before, "noop changed the sandbox");
    assert_eq!(server.n_requests(), n_requests, "noop downloaded");
    assert_eq!(run(root, json, false), Outcome::Changed(would.clone()), "noop and the real run disagree");
    would
}

/// The work area holds nothing once a run is over, whatever happened.
fn assert_no_work_left(root: &Path) {
    let work = root.join("var/cache/vigo/source_package");
    if work.exists() {
        let left: Vec<_> = fs::read_dir(&work).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "work files left behind: {left:?}");
    }
}

#[test]
fn builds_once_and_creates_is_the_guard() {
    let server = Server::start();
    let archive = hello("1.0");
    let url = server.put("/hello-1.0.tar.gz", archive.clone());
    let root = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "name": "hello",
        "url": url,
        "sha256": sha256(&archive),
        "build": ["sh build.sh", "test -x \"$VIGO_ROOT/usr/local/bin/hello\""],
        "creates": "/usr/local/bin/hello",
    });

    let summary = noop_then_real(root.path(), &spec, &server);
    assert_eq!(summary, format!("built hello from {url} (sha256 {})", &sha256(&archive)[..12]));
    assert_eq!(server.n_requests(), 1);
    let installed = root.path().join("usr/local/bin/hello");
    assert_eq!(fs::read_to_string(&installed).unwrap(), "#!/bin/sh\necho hello 1.0\n");
    assert_eq!(fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755, "archive modes kept");
    assert_no_work_left(root.path());
    assert!(!root.path().join("var/lib/vigo/source_package/hello").exists(), "creates needs no stamp");

    let before = snapshot(root.path());
    assert_eq!(run(root.path(), &spec, false), Outcome::Unchanged);
    assert_eq!(run(root.path(), &spec, true), Outcome::Unchanged);
    assert_eq!(server.n_requests(), 1, "a built package is not downloaded again");
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn without_creates_a_stamp_remembers_the_sha256() {
    let server = Server::start();
    let (first, second) = (hello("1.0"), hello("2.0"));
    let first_url = server.put("/hello-1.0.tar.gz", first.clone());
    let second_url = server.put("/hello-2.0.tar.gz", second.clone());
    let root = tempfile::tempdir().unwrap();
    let version = root.path().join("usr/local/share/hello/VERSION");
    let stamp = root.path().join("var/lib/vigo/source_package/hello");
    let spec = |url: &str, archive: &[u8]| serde_json::json!({"name": "hello", "url": url, "sha256": sha256(archive), "build": ["./build.sh"]});

    noop_then_real(root.path(), &spec(&first_url, &first), &server);
    assert_eq!(fs::read_to_string(&version).unwrap(), "1.0");
    assert_eq!(fs::read_to_string(&stamp).unwrap(), format!("{}\n", sha256(&first)));
    assert_eq!(run(root.path(), &spec(&first_url, &first), false), Outcome::Unchanged);
    assert_eq!(server.n_requests(), 1);

    let summary = noop_then_real(root.path(), &spec(&second_url, &second), &server);
    assert_eq!(
        summary,
        format!("rebuilt hello from {second_url} (sha256 {} -> {})", &sha256(&first)[..12], &sha256(&second)[..12])
    );
    assert_eq!(fs::read_to_string(&version).unwrap(), "2.0");
    assert_eq!(fs::read_to_string(&stamp).unwrap(), format!("{}\n", sha256(&second)));
    assert_eq!(run(root.path(), &spec(&second_url, &second), false), Outcome::Unchanged);
    assert_eq!(server.n_requests(), 2);
    assert_no_work_left(root.path());
}

#[test]
fn a_wrong_sha256_stops_everything_before_unpacking() {
    let server = Server::start();
    let archive = hello("1.0");
    let url = server.put("/hello-1.0.tar.gz", archive.clone());
    let root = tempfile::tempdir().unwrap();
    let wrong = "ab".repeat(32);
    let spec = serde_json::json!({"name": "hello", "url": url, "sha256": wrong, "build": ["sh build.sh"]});

    assert_eq!(
        run(root.path(), &spec, false),
        Outcome::Failed(format!("sha256 mismatch for {url}: expected {wrong}, got {}", sha256(&archive)))
    );
    assert_eq!(server.n_requests(), 1);
    assert!(!root.path().join("usr").exists(), "nothing built");
    assert!(!root.path().join("var/lib").exists(), "no stamp");
    assert_no_work_left(root.path());
}

#[test]
fn a_failing_build_is_reported_with_its_stderr_and_retried() {
    let server = Server::start();
    let archive = hello("1.0");
    let url = server.put("/hello-1.0.tar.gz", archive.clone());
    let root = tempfile::tempdir().unwrap();
    let failing = "echo compiling; echo 'cc: error: missing.c: No such file' >&2; exit 2";
    let spec = serde_json::json!({
        "name": "hello",
        "url": url,
        "sha256": sha256(&archive),
        "build": ["sh build.sh", failing, "touch \"$VIGO_ROOT/never\""],
    });
    let expected =
        format!("build command 2 of hello ({failing}) exited with code 2: cc: error: missing.c: No such file");
    assert_eq!(run(root.path(), &spec, false), Outcome::Failed(expected.clone()));
    assert!(root.path().join("usr/local/bin/hello").exists(), "the first command ran");
    assert!(!root.path().join("never").exists(), "no command runs after a failure");
    assert!(!root.path().join("var/lib/vigo/source_package/hello").exists(), "no stamp for a failed build");
    assert_no_work_left(root.path());
    assert_eq!(run(root.path(), &spec, false), Outcome::Failed(expected));
    assert_eq!(server.n_requests(), 2, "a failed build is tried again");

    // A build that succeeds but does not make `creates`.
    let spec = serde_json::json!({"name": "hello", "url": url, "sha256": sha256(&archive), "creates": "/opt/hello"});
    assert_eq!(
        run(root.path(), &spec, false),
        Outcome::Failed(format!("the build of hello did not create {}", root.path().join("opt/hello").display()))
    );
}

#[test]
fn a_missing_archive_is_reported_clearly() {
    let server = Server::start();
    let url = format!("{}/nowhere-1.0.tar.gz", server.base_url);
    let root = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({"name": "nowhere", "url": url, "sha256": "00".repeat(32)});
    assert_eq!(
        run(root.path(), &spec, false),
        Outcome::Failed(format!("cannot download {url}: the server answered 404 Not Found"))
    );
    assert_eq!(server.n_requests(), 1);
    assert_no_work_left(root.path());

    let file_url = serde_json::json!({"name": "nowhere", "url": "file:///srv/none.tar", "sha256": "00".repeat(32)});
    let Outcome::Failed(message) = run(root.path(), &file_url, false) else { panic!("read a missing file") };
    assert!(message.starts_with("cannot download file:///srv/none.tar: No such file"), "{message}");
}

#[test]
fn escaping_entries_are_refused() {
    let server = Server::start();
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let link_target = outside.path().to_str().unwrap();
    let cases = [
        ("/dotdot.tar.gz", tarball(&[Entry::File("pkg/../../escaped", "x", 0o644)], true)),
        ("/absolute.tar.gz", tarball(&[Entry::File("/tmp/escaped-by-vigo-test", "x", 0o644)], true)),
        (
            "/through-link.tar.gz",
            tarball(&[Entry::Symlink("pkg/out", link_target), Entry::File("pkg/out/escaped", "x", 0o644)], true),
        ),
    ];
    for (path, archive) in cases {
        let url = server.put(path, archive.clone());
        let spec = serde_json::json!({
            "name": "evil", "url": url, "sha256": sha256(&archive), "build": ["touch \"$VIGO_ROOT/built\""],
        });
        let Outcome::Failed(message) = run(root.path(), &spec, false) else { panic!("{path} was unpacked") };
        assert!(message.starts_with(&format!("cannot unpack {url}: ")), "{message}");
        assert!(!root.path().join("built").exists(), "{path}: built");
        assert_no_work_left(root.path());
    }
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "written outside the work directory");
    assert!(!Path::new("/tmp/escaped-by-vigo-test").exists());
}

#[test]
fn a_plain_tar_from_a_file_url_is_read_under_root() {
    let root = tempfile::tempdir().unwrap();
    let archive = tarball(
        &[
            // Two top-level entries: nothing is stripped.
            Entry::File(
                "install.sh",
                "mkdir -p \"$VIGO_ROOT/usr/local/lib\" && cp data \"$VIGO_ROOT/usr/local/lib/\"",
                0o644,
            ),
            Entry::File("data", "payload", 0o644),
        ],
        false,
    );
    fs::create_dir_all(root.path().join("srv/dist")).unwrap();
    fs::write(root.path().join("srv/dist/data.tar"), &archive).unwrap();
    let spec = serde_json::json!({
        "name": "data",
        "url": "file:///srv/dist/data.tar",
        "sha256": sha256(&archive).to_uppercase(),
        "build": ["sh install.sh"],
        "creates": "/usr/local/lib/data",
    });
    assert_eq!(
        run(root.path(), &spec, false),
        Outcome::Changed(format!("built data from file:///srv/dist/data.tar (sha256 {})", &sha256(&archive)[..12]))
    );
    assert_eq!(fs::read_to_string(root.path().join("usr/local/lib/data")).unwrap(), "payload");
    assert_eq!(run(root.path(), &spec, false), Outcome::Unchanged);
    assert_no_work_left(root.path());

    let bad = serde_json::json!({"name": "../x", "url": "file:///srv/dist/data.tar", "sha256": sha256(&archive)});
    assert!(matches!(run(root.path(), &bad, false), Outcome::Failed(m) if m.starts_with("source_package name")));
    let typo = serde_json::json!({"name": "x", "url": "file:///srv/dist/data.tar", "sha265": "00"});
    assert!(
        matches!(run(root.path(), &typo, false), Outcome::Failed(m) if m.starts_with("invalid source_package spec"))
    );
}
