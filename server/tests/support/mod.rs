//! Black-box test support: runs the real `vigosrv`, `vigocli` and `envoy` binaries over
//! loopback. Binaries come from the same target dir as the test (`cargo test --workspace`
//! builds them all before any test runs).

#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The file `vigosrv` on `data_dir` reads its armed crash points from.
pub fn crash_file(data_dir: &Path) -> PathBuf {
    data_dir.with_extension("crash")
}

/// Arms crash point `point` (`vigo_log::crash`) on the server of `data_dir`, running or not.
pub fn arm(data_dir: &Path, point: &str) {
    std::fs::write(crash_file(data_dir), point).expect("write crash file");
}

/// Disarms the crash points of `data_dir`'s server.
pub fn disarm(data_dir: &Path) {
    let _ = std::fs::remove_file(crash_file(data_dir));
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built: run the tests with `cargo test --workspace`", path.display());
    path
}

/// A running `vigosrv`.
pub struct Server {
    pub data_dir: PathBuf,
    pub addr: String,
    /// Address of the HTTP status listener, when started with `--http`.
    pub http: Option<String>,
    child: Child,
}

impl Server {
    /// Starts a server on `listen` ("127.0.0.1:0" for any port) and waits until it listens.
    pub fn start(data_dir: &Path, listen: &str) -> Server {
        Self::start_with(data_dir, listen, &[])
    }

    /// Starts a server with extra flags; with `--http`, also waits for the HTTP listener.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::spawn(data_dir, listen, extra).unwrap_or_else(|(mut child, why)| {
            let _ = child.kill();
            panic!("vigosrv did not start: {why}")
        })
    }

    /// Starts a server on `listen` that may die at an armed crash point ([`arm`]) before it
    /// says it listens; then [`Server::wait_crash`] is what to do next.
    pub fn start_or_crash(data_dir: &Path, listen: &str) -> Server {
        match Self::spawn(data_dir, listen, &[]) {
            Ok(server) => server,
            Err((child, _)) => Server { data_dir: data_dir.to_path_buf(), addr: listen.to_string(), http: None, child },
        }
    }

    fn spawn(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Server, (Child, String)> {
        let mut child = Command::new(bin("vigosrv"))
            .args(["run", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .args(if extra.contains(&"--check-in-interval") { &[][..] } else { &["--check-in-interval", "5"][..] })
            .args(extra)
            .env("RUST_LOG", "warn")
            .env(vigo_log::crash::CRASH_FILE_ENV, crash_file(data_dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vigosrv");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("vigosrv listening on ") {
                    let _ = tx.send(("grpc", addr.trim().to_string()));
                }
                if let Some(addr) = line.strip_prefix("vigosrv http on ") {
                    let _ = tx.send(("http", addr.trim().to_string()));
                }
            }
        });
        let wants_http = extra.contains(&"--http");
        let (mut addr, mut http) = (None, None);
        while addr.is_none() || (wants_http && http.is_none()) {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(("grpc", a)) => addr = Some(a),
                Ok((_, a)) => http = Some(a),
                Err(e) => return Err((child, format!("no listening line within 60 s ({e})"))),
            }
        }
        Ok(Server { data_dir: data_dir.to_path_buf(), addr: addr.expect("grpc address"), http, child })
    }

    /// Admin credentials folder.
    pub fn creds(&self) -> PathBuf {
        self.data_dir.join("admin")
    }

    /// Runs vigocli against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("vigocli"))
            .args(["--server", &self.addr, "--creds"])
            .arg(self.creds())
            .args(args)
            .output()
            .expect("run vigocli")
    }

    /// Runs vigocli and returns its stdout, failing the test if it failed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "vigocli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    }

    /// Runs vigocli with `-o json`.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.cli_ok(&all)).expect("vigocli -o json prints JSON")
    }

    /// A new single-use token.
    pub fn token(&self) -> String {
        self.cli_ok(&["token", "create"])
    }

    /// Waits up to `limit` for the server to exit by itself; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits up to `limit` for the server to die at an armed crash point ([`arm`]): killed by
    /// `SIGKILL`, by itself.
    pub fn wait_crash(&mut self, limit: Duration) {
        use std::os::unix::process::ExitStatusExt;
        let status = self.wait_exit(limit).expect("the peer dies at its armed crash point");
        assert_eq!(status.signal(), Some(9), "died by SIGKILL at the crash point: {status}");
        disarm(&self.data_dir);
    }

    /// Kills the server (SIGKILL) and starts it again on the same data and address.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Server::start(&self.data_dir.clone(), &self.addr.clone());
    }

    /// Kills the server at once (SIGKILL), like a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        // SAFETY-free: `kill` the command-line tool sends SIGTERM.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "vigosrv exited with {status} on SIGTERM");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("vigosrv did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Enrolls an envoy; returns its id.
pub fn enroll(server: &Server, token: &str, data_dir: &Path, hostname: &str) -> Output {
    Command::new(bin("envoy"))
        .args(["enroll", "--server", &server.addr, "--token", token, "--hostname", hostname, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run envoy enroll")
}

/// `envoy run --once` with a sandbox root.
pub fn envoy_once(data_dir: &Path, root: &Path, extra: &[&str]) -> Output {
    Command::new(bin("envoy"))
        .args(["run", "--once", "--data-dir"])
        .arg(data_dir)
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .expect("run envoy")
}

/// Stdout and stderr of a process, for assertion messages.
pub fn text(out: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Writes a stack from (relative path, contents) pairs.
pub fn write_stack(dir: &Path, files: &[(&str, &str)]) {
    for (rel, contents) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write stack file");
    }
}

/// A stack whose one module writes `/generation` holding `generation`: each publish of a new
/// generation is a change every envoy can be seen to converge to.
pub fn generation_stack(dir: &Path, generation: &str) {
    write_stack(
        dir,
        &[
            ("assign.yaml", &format!("- match: \"*\"\n  modules: [m]\n  vars:\n    generation: \"{generation}\"\n")),
            (
                "modules/m/module.yaml",
                "resources:\n  - { type: file, path: /generation, template: gen.j2, mode: \"0644\" }\n",
            ),
            ("modules/m/files/gen.j2", "{{ generation }}\n"),
        ],
    );
}
