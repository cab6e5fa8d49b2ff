//! The peers of a run as real `vigosrv` processes on loopback: founding one, joining the others
//! to it, and the process-level faults — `kill -9` and restart on the same address and data,
//! `SIGSTOP` and `SIGCONT`. Every peer is killed when the cluster is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// One peer.
pub struct Peer {
    /// Its data dir.
    pub dir: PathBuf,
    /// host:port it serves on (fixed once chosen: restarts reuse it).
    pub addr: String,
    child: Option<Child>,
    paused: bool,
}

impl Peer {
    /// Whether its process runs (and is not paused).
    pub fn up(&self) -> bool {
        self.child.is_some() && !self.paused
    }
}

/// The running peers.
pub struct Cluster {
    vigosrv: PathBuf,
    vigocli: PathBuf,
    /// The peers, in the order they joined; peer 0 founded the cluster.
    pub peers: Vec<Peer>,
}

/// How long a peer may take to start listening (the founding peer builds its keys; a joining
/// one catches up first).
const START_WAIT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts `n` peers under `dir`: peer 0 founds the cluster, the others join it.
    pub fn start(vigosrv: &Path, vigocli: &Path, dir: &Path, n: usize) -> anyhow::Result<Self> {
        let mut cluster = Cluster { vigosrv: vigosrv.to_path_buf(), vigocli: vigocli.to_path_buf(), peers: Vec::new() };
        let first = dir.join("peer-0");
        let (child, addr) = cluster.spawn(&first, "127.0.0.1:0", &[])?;
        cluster.peers.push(Peer { dir: first, addr, child: Some(child), paused: false });
        if n > 1 {
            let token = cluster.join_token(n - 1)?;
            for i in 1..n {
                let peer_dir = dir.join(format!("peer-{i}"));
                let via = cluster.peers[0].addr.clone();
                let (child, addr) = cluster.spawn(&peer_dir, "127.0.0.1:0", &["--join", &via, "--token", &token])?;
                cluster.peers.push(Peer { dir: peer_dir, addr, child: Some(child), paused: false });
            }
        }
        Ok(cluster)
    }

    /// The admin credentials written where the cluster was founded; they work on every peer.
    pub fn creds(&self) -> PathBuf {
        self.peers[0].dir.join("admin")
    }

    /// Every peer's address, by peer number.
    pub fn addrs(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.addr.clone()).collect()
    }

    fn join_token(&self, uses: usize) -> anyhow::Result<String> {
        let out = Command::new(&self.vigocli)
            .args(["--server", &self.peers[0].addr, "--creds"])
            .arg(self.creds())
            .args(["token", "create", "--join", "--uses", &uses.to_string()])
            .output()
            .context("cannot run vigocli")?;
        if !out.status.success() {
            bail!("cannot create a join token: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Starts `vigosrv` on `dir` and `listen`; returns it with the address it listens on.
    fn spawn(&self, dir: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<(Child, String)> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log"))?;
        let mut child = Command::new(&self.vigosrv)
            .args(["run", "--data-dir"])
            .arg(dir)
            .args(["--listen", listen, "--check-in-interval", "5"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.vigosrv.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("vigosrv listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(START_WAIT) {
            Ok(addr) => Ok((child, addr)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "vigosrv on {} did not start within {START_WAIT:?}; see {}",
                    dir.display(),
                    dir.with_extension("log").display()
                )
            }
        }
    }

    /// `kill -9` peer `i` (a paused one too).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.peers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.peers[i].paused = false;
    }

    /// Restarts peer `i` on its address and data, if it is down.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.peers[i].child.is_some() {
            return Ok(());
        }
        let (dir, addr) = (self.peers[i].dir.clone(), self.peers[i].addr.clone());
        let (child, _) = self.spawn(&dir, &addr, &[])?;
        self.peers[i].child = Some(child);
        Ok(())
    }

    /// `SIGSTOP` peer `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(child) = &self.peers[i].child
            && signal(child.id(), "STOP")
        {
            self.peers[i].paused = true;
        }
    }

    /// `SIGCONT` peer `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(child) = &self.peers[i].child
            && self.peers[i].paused
        {
            signal(child.id(), "CONT");
            self.peers[i].paused = false;
        }
    }

    /// Ends every fault: resumes paused peers and restarts killed ones.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for i in 0..self.peers.len() {
            self.resume(i);
            self.restart(i)?;
        }
        Ok(())
    }
}

fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().is_ok_and(|s| s.success())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.peers.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}
