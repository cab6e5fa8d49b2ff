//! The peers of a run as real `vigosrv` processes on loopback: founding one, joining the others
//! to it, and the faults — `kill -9` and restart on the same address and data, `SIGSTOP` and
//! `SIGCONT`, partitions through the proxies in front of the peers (`proxy.rs`), and crashes at
//! a named crash point (`vigo_log::crash`), armed through each peer's crash file. Every peer is
//! killed and every partition healed when the cluster is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::proxy::{Proxy, peer_ip};

/// One peer.
pub struct Peer {
    /// Its data dir.
    pub dir: PathBuf,
    /// host:port everyone reaches it at: its proxy's address, which it advertises.
    pub addr: String,
    /// host:port it listens on itself (fixed once chosen: restarts reuse it).
    listen: String,
    proxy: Proxy,
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
    /// The join token the peers after the first share.
    token: Option<String>,
    /// The peers, in the order they joined; peer 0 founded the cluster.
    pub peers: Vec<Peer>,
}

/// How long a peer may take to start listening (the founding peer builds its keys; a joining
/// one catches up first).
const START_WAIT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts one peer per proxy under `dir`: peer 0 founds the cluster, the others join it.
    /// Peer `i` listens on its own loopback address ([`peer_ip`]) and advertises proxy `i`.
    pub fn start(vigosrv: &Path, vigocli: &Path, dir: &Path, proxies: Vec<Proxy>) -> anyhow::Result<Self> {
        let mut cluster =
            Cluster { vigosrv: vigosrv.to_path_buf(), vigocli: vigocli.to_path_buf(), token: None, peers: Vec::new() };
        let n = proxies.len();
        for (i, proxy) in proxies.into_iter().enumerate() {
            // The port is chosen here, so the proxy forwards to it before the peer starts: a
            // joining peer is replicated to (through its proxy) before it reports it listens.
            let listen = std::net::TcpListener::bind((peer_ip(i), 0))?.local_addr()?.to_string();
            proxy.target(listen.parse()?);
            let peer_dir = dir.join(format!("peer-{i}"));
            let addr = proxy.addr.to_string();
            let extra: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                let token = match &cluster.token {
                    Some(token) => token.clone(),
                    None => cluster.token.insert(cluster.join_token(n - 1)?).clone(),
                };
                vec!["--join".into(), cluster.peers[0].addr.clone(), "--token".into(), token]
            };
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let child = cluster.spawn(&peer_dir, &listen, &addr, &extra)?;
            cluster.peers.push(Peer { dir: peer_dir, addr, listen, proxy, child: Some(child), paused: false });
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

    /// Starts `vigosrv` on `dir`, listening on `listen` and advertising `advertise`; returns once
    /// it listens.
    fn spawn(&self, dir: &Path, listen: &str, advertise: &str, extra: &[&str]) -> anyhow::Result<Child> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log"))?;
        let mut child = Command::new(&self.vigosrv)
            .args(["run", "--data-dir"])
            .arg(dir)
            .args(["--listen", listen, "--advertise", advertise, "--check-in-interval", "5"])
            .args(extra)
            .env(vigo_log::crash::CRASH_FILE_ENV, crash_file(dir))
            .env("RUST_LOG", std::env::var("JEPSEN_PEER_LOG").unwrap_or_else(|_| "warn".into()))
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
            Ok(_) => Ok(child),
            Err(_) => {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                if log.lines().last().is_some_and(|l| l.starts_with("crash point reached: ")) {
                    // It died where it was armed to, before it said it listens: `await_crash`
                    // reaps it.
                    return Ok(child);
                }
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                let last = log.lines().last().unwrap_or("(no log)").to_string();
                bail!(
                    "vigosrv on {} did not start within {START_WAIT:?} ({status}); its log ends: {last}",
                    dir.display()
                )
            }
        }
    }

    /// Asks peer `i` to build a snapshot now and purge its log (`vigocli server compact`); with
    /// `wait`, returns once it has, otherwise at once, the compaction under way.
    pub fn compact(&self, i: usize, wait: bool) -> anyhow::Result<()> {
        let mut command = Command::new(&self.vigocli);
        command
            .args(["--server", &self.peers[i].addr, "--creds"])
            .arg(self.creds())
            .args(["server", "compact"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if wait {
            command.status().context("cannot run vigocli")?;
        } else {
            let mut child = command.spawn().context("cannot run vigocli")?;
            // Reaped in the background, so it leaves no zombie.
            std::thread::spawn(move || child.wait());
        }
        Ok(())
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
        let (dir, listen, addr) = (self.peers[i].dir.clone(), self.peers[i].listen.clone(), self.peers[i].addr.clone());
        let child = self.spawn(&dir, &listen, &addr, &[])?;
        self.peers[i].child = Some(child);
        Ok(())
    }

    /// Arms crash point `point` on peer `i`: the next time it passes there, it dies.
    pub fn arm(&self, i: usize, point: &str) -> anyhow::Result<()> {
        std::fs::write(crash_file(&self.peers[i].dir), format!("{point}\n")).context("cannot arm a crash point")
    }

    /// Disarms peer `i`'s crash points.
    pub fn disarm(&self, i: usize) {
        let _ = std::fs::remove_file(crash_file(&self.peers[i].dir));
    }

    /// Waits up to `within` for peer `i` to die at an armed crash point, and disarms it either
    /// way. Returns the point it died at, read from its log; `None` if it is still running or
    /// died otherwise.
    pub fn await_crash(&mut self, i: usize, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        let mut exited = false;
        while let Some(child) = self.peers[i].child.as_mut()
            && std::time::Instant::now() < deadline
        {
            if child.try_wait().ok().flatten().is_some() {
                self.peers[i].child = None;
                self.peers[i].paused = false;
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.disarm(i);
        if !exited {
            return None;
        }
        // A peer that dies at a crash point writes that line last, then SIGKILLs itself.
        let log = std::fs::read_to_string(self.peers[i].dir.with_extension("log")).unwrap_or_default();
        log.lines().last().and_then(|l| l.strip_prefix("crash point reached: ")).map(str::to_string)
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

    /// Cuts the peers in `side` off from every other peer, both ways (clients still reach all).
    pub fn partition(&mut self, side: &[usize]) {
        let others: Vec<usize> = (0..self.peers.len()).filter(|i| !side.contains(i)).collect();
        self.cut(side, &others);
    }

    /// Cuts every link between a peer of `a` and a peer of `b`, both ways; links within each
    /// side, and to peers in neither, stay (a bridge: a peer in neither sees both sides).
    pub fn cut(&mut self, a: &[usize], b: &[usize]) {
        let ips = |peers: &[usize]| peers.iter().map(|i| peer_ip(*i)).collect::<Vec<_>>();
        for i in a {
            self.peers[*i].proxy.block(&ips(b));
        }
        for i in b {
            self.peers[*i].proxy.block(&ips(a));
        }
    }

    /// Ends every partition.
    pub fn heal_network(&mut self) {
        for peer in &self.peers {
            peer.proxy.heal();
        }
    }

    /// Ends every fault: heals the network, resumes paused peers and restarts killed ones.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.heal_network();
        for i in 0..self.peers.len() {
            self.resume(i);
            self.restart(i)?;
        }
        Ok(())
    }
}

/// Where peer `dir`'s armed crash points are written.
fn crash_file(dir: &Path) -> PathBuf {
    dir.with_extension("crash")
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
