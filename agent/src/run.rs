//! `envoy run`: check in, take a new bundle when there is one, converge, report.
//!
//! One iteration is `check_in` → `converge` → `flush_reports`. The server being away is a
//! normal condition: the iteration then converges the cached bundle against fresh traits,
//! queues the results, and the loop backs off exponentially with jitter until the server
//! answers again, when the queue is flushed.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use prost::Message;
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use vigo_proto::agent::agent_client::AgentClient;
use vigo_proto::agent::check_in_response::Reply;
use vigo_proto::agent::resource_result::Status;
use vigo_proto::agent::{CheckInRequest, CheckInResponse, ReportRequest, RunReport};
use vigo_proto::bundle::{Bundle, SignedBundle};

use crate::cache::Cache;
use crate::identity::Identity;
use crate::session::Session;

/// How long one call to the server may take before the server counts as away.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First back-off after the server was unreachable.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Runs sent in one report call.
const REPORT_PAGE: usize = 50;

/// Options of `envoy run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Data dir of the enrollment.
    pub data_dir: PathBuf,
    /// Prefix of every managed path.
    pub root: PathBuf,
    /// One iteration, then exit.
    pub once: bool,
    /// Report what would change; change nothing.
    pub noop: bool,
}

/// What one iteration did.
#[derive(Debug)]
pub struct Iteration {
    /// The run's report as queued.
    pub report: Option<RunReport>,
    /// Whether the server answered.
    pub online: bool,
    /// Seconds the server asked to wait before the next check-in.
    pub next_check_in_s: u32,
    /// Runs delivered to the server by this iteration.
    pub reports_sent: usize,
}

/// The envoy's state between iterations.
pub struct Envoy {
    identity: Identity,
    cache: Cache,
    options: RunOptions,
    channel: Option<Channel>,
    /// The held session: check-ins and reports travel on it, and the server pushes on it when a
    /// new stack goes live. While it is open the envoy holds no other connection.
    session: Option<Session>,
    /// The envoy's mTLS configuration, negotiating sessions instead of gRPC.
    session_tls: std::sync::Arc<rustls::ClientConfig>,
    /// Talking to another bolt (its own not answering) that has not taken it in yet.
    on_fallback: bool,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn unreachable() -> tonic::Status {
    tonic::Status::unavailable("no server reachable")
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl Envoy {
    /// Loads identity and cache.
    pub fn open(options: RunOptions) -> anyhow::Result<Self> {
        let identity = crate::identity::load(&options.data_dir)?;
        let cache = Cache::open(&options.data_dir).context("cannot open the envoy cache")?;
        let session_tls = vigo_proto::session::client_config(&identity.tls);
        Ok(Self { identity, cache, options, channel: None, session: None, session_tls, on_fallback: false })
    }

    async fn client(&mut self) -> Option<AgentClient<Channel>> {
        if let Some(channel) = &self.channel {
            return Some(AgentClient::new(channel.clone()));
        }
        let tls = self.identity.tls.clone();
        let channel = self
            .connect_first(|server| {
                let tls = tls.clone();
                async move { vigo_proto::tls::connect(&server, tls, CALL_TIMEOUT).await }
            })
            .await?;
        self.channel = Some(channel.clone());
        Some(AgentClient::new(channel))
    }

    /// Connects with `connect` to the first address that answers: this envoy's servers, then
    /// the other bolts' (`fallback`).
    async fn connect_first<T, E, Fut>(&mut self, connect: impl Fn(String) -> Fut) -> Option<T>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let tried: Vec<String> = self.identity.servers.iter().chain(&self.identity.fallback).cloned().collect();
        for (i, server) in tried.into_iter().enumerate() {
            match connect(server.clone()).await {
                Ok(connected) => {
                    self.answered_at(i);
                    return Some(connected);
                }
                Err(e) => tracing::warn!("server {server} unreachable: {e}"),
            }
        }
        None
    }

    /// Remembers which address answered: `i` indexes the servers, then the fallback. A peer of
    /// its own cluster is tried first from now on; another bolt's (its own bolt away) becomes
    /// its one server, whose peers the next answer brings.
    fn answered_at(&mut self, i: usize) {
        if i < self.identity.servers.len() {
            let server = self.identity.servers.remove(i);
            self.identity.servers.insert(0, server);
        } else {
            let server = self.identity.fallback[i - self.identity.servers.len()].clone();
            tracing::warn!(server, "none of this envoy's servers answers: turning to another bolt");
            self.identity.servers = vec![server];
            self.identity.peers_index = 0;
            self.on_fallback = true;
        }
    }

    /// Back to the servers on record after another bolt would not take this envoy in.
    fn leave_fallback(&mut self) {
        self.session = None;
        self.channel = None;
        self.on_fallback = false;
        match crate::identity::load(&self.options.data_dir) {
            Ok(recorded) => {
                self.identity.servers = recorded.servers;
                self.identity.peers_index = recorded.peers_index;
            }
            Err(e) => tracing::warn!("cannot read the servers on record again: {e:#}"),
        }
    }

    fn signed_check_in(
        &self,
        traits: Option<&str>,
        traits_hash: &[u8],
        fingerprint: &[u8],
    ) -> anyhow::Result<CheckInRequest> {
        let mut req = CheckInRequest {
            envoy_id: self.identity.envoy_id.clone(),
            counter: self.cache.next_counter()?,
            traits_hash: traits_hash.to_vec(),
            bundle_fingerprint: fingerprint.to_vec(),
            signature: Vec::new(),
            traits_json: traits.unwrap_or_default().to_string(),
            peers_index: self.identity.peers_index,
        };
        req.signature = self.identity.key.sign(&vigo_proto::signing::check_in_bytes(&req)).to_bytes().to_vec();
        Ok(req)
    }

    /// Checks in; `Ok(None)` when the server is away.
    async fn check_in(
        &mut self,
        traits_json: &str,
        traits_hash: &[u8],
        fingerprint: &[u8],
    ) -> anyhow::Result<Option<CheckInResponse>> {
        let mut send_traits = false;
        for _ in 0..2 {
            // Connected first: turning to another bolt changes what the request says it holds
            // of the servers (`peers_index`), so that bolt sends its own.
            if self.options.once {
                self.client().await;
            } else {
                self.session().await;
            }
            let req = self.signed_check_in(send_traits.then_some(traits_json), traits_hash, fingerprint)?;
            // A single run (`--once`) holds nothing: a call on a connection of its own.
            let answered =
                if self.options.once { self.call_check_in(req).await } else { self.session_check_in(req).await };
            match answered {
                Ok(response) => {
                    if !response.servers.is_empty() {
                        self.learn_peers(&response.servers, response.peers_index, &response.fallback);
                    }
                    if response.send_traits && !send_traits {
                        send_traits = true;
                        continue;
                    }
                    return Ok(Some(response));
                }
                Err(status) if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown => {
                    tracing::warn!("check-in failed: {}", status_text(&status));
                    self.session = None;
                    self.channel = None;
                    return Ok(None);
                }
                Err(status) if self.on_fallback => {
                    // Another bolt that will not take this envoy in (nothing routes it there):
                    // as good as no server. Its own are tried first again next time.
                    tracing::warn!("another bolt refused this envoy: {}", status_text(&status));
                    self.leave_fallback();
                    return Ok(None);
                }
                Err(status) => anyhow::bail!("check-in refused: {}", status_text(&status)),
            }
        }
        anyhow::bail!("server keeps asking for traits it was sent")
    }

    /// One check-in as a `CheckIn` call.
    async fn call_check_in(&mut self, req: CheckInRequest) -> Result<CheckInResponse, tonic::Status> {
        let Some(mut client) = self.client().await else { return Err(unreachable()) };
        client.check_in(req).await.map(tonic::Response::into_inner)
    }

    /// Keeps the cluster's current peers (the server sends them when they changed), so the
    /// envoy moves to another peer by itself when its own goes away. The peer it talks to now
    /// stays first.
    fn learn_peers(&mut self, servers: &[String], peers_index: u64, fallback: &[String]) {
        let current = self.identity.servers.first().filter(|s| servers.contains(s)).cloned();
        let ordered: Vec<String> =
            current.iter().cloned().chain(servers.iter().filter(|s| Some(*s) != current.as_ref()).cloned()).collect();
        match crate::identity::update_servers(&self.options.data_dir, &ordered, peers_index, Some(fallback)) {
            Ok(()) => {
                tracing::info!(servers = ?ordered, "the cluster's peers changed");
                self.on_fallback = false;
                self.identity.servers = ordered;
                self.identity.peers_index = peers_index;
                self.identity.fallback = fallback.to_vec();
            }
            Err(e) => tracing::warn!("cannot record the cluster's peers: {e:#}"),
        }
    }

    /// Moves to the servers of the bolt that owns this envoy now: they replace the list, and the
    /// connection and session to the old bolt are dropped. Their peer list is learned at the next
    /// answer (`peers_index` 0 is never current).
    fn follow_redirect(&mut self, servers: &[String]) {
        self.session = None;
        self.channel = None;
        match crate::identity::update_servers(&self.options.data_dir, servers, 0, None) {
            Ok(()) => {
                self.identity.servers = servers.to_vec();
                self.identity.peers_index = 0;
            }
            Err(e) => tracing::warn!("cannot record the bolt redirected to: {e:#}"),
        }
    }

    /// The held session, opened to the first server that answers when there is none.
    async fn session(&mut self) -> Option<&mut Session> {
        if self.session.is_none() {
            let tls = self.session_tls.clone();
            self.session = self
                .connect_first(|server| {
                    let tls = tls.clone();
                    async move { Session::connect(&server, None, tls, CALL_TIMEOUT).await }
                })
                .await;
        }
        self.session.as_mut()
    }

    /// One check-in on the held session; a failed one closes it.
    async fn session_check_in(&mut self, req: CheckInRequest) -> Result<CheckInResponse, tonic::Status> {
        let answered = tokio::time::timeout(CALL_TIMEOUT, async {
            match self.session().await {
                Some(session) => session.check_in(req).await,
                None => Err(unreachable()),
            }
        })
        .await
        .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer on the session")));
        if answered.is_err() {
            self.session = None;
        }
        answered
    }

    fn verify(&self, signed: &SignedBundle) -> anyhow::Result<Bundle> {
        let key = VerifyingKey::from_bytes(&self.identity.bundle_pubkey).context("bad bundle key in enrollment")?;
        verify_bundle(&key, signed)
    }

    /// One check-in, converge and report.
    pub async fn iterate(&mut self) -> anyhow::Result<Iteration> {
        let traits = crate::traits::collect_managed(&self.options.root, &self.identity.hostname);
        let (traits_json, traits_hash) = crate::traits::canonical(&traits);
        let cached = self.cache.load_bundle()?;
        let fingerprint = cached.as_ref().map(|b| b.fingerprint.clone()).unwrap_or_default();
        let mut response = self.check_in(&traits_json, &traits_hash, &fingerprint).await?;
        // Another bolt of the federation owns this envoy now: move there and ask it at once.
        if let Some(CheckInResponse { reply: Some(Reply::Redirect(redirect)), .. }) = &response
            && !redirect.servers.is_empty()
        {
            let servers = redirect.servers.clone();
            println!("redirected to another bolt: {}", servers.join(", "));
            self.follow_redirect(&servers);
            response = self.check_in(&traits_json, &traits_hash, &fingerprint).await?;
        }
        let online = response.is_some();
        let mut next_check_in_s = self.identity.check_in_interval_s;
        let mut bundle_signed = cached;
        if let Some(response) = response {
            next_check_in_s = response.next_check_in_s.max(1);
            match response.reply {
                Some(Reply::Bundle(signed)) => {
                    self.verify(&signed)?;
                    self.cache.store_bundle(&signed)?;
                    bundle_signed = Some(signed);
                }
                Some(Reply::Backoff(b)) => next_check_in_s = b.retry_after_s.max(1),
                Some(Reply::Redirect(_)) | Some(Reply::NoChange(_)) | None => {}
            }
        }
        // Never apply anything unverified, also from the cache (it may have been tampered with).
        let bundle = match &bundle_signed {
            Some(signed) => Some(self.verify(signed)?),
            None => None,
        };
        let report = bundle.map(|bundle| {
            let started_at_ms = now_ms();
            let started = Instant::now();
            let results = crate::converge::converge(&bundle, &self.options.root, self.options.noop);
            RunReport {
                run_id: 0,
                started_at_ms,
                duration_ms: started.elapsed().as_millis() as u32,
                stack_version: bundle.stack_version,
                bundle_fingerprint: bundle_signed.as_ref().map(|b| b.fingerprint.clone()).unwrap_or_default(),
                offline: !online,
                noop: self.options.noop,
                results,
            }
        });
        let report = match report {
            Some(mut report) => {
                report.run_id = self.cache.enqueue_run(&report)?;
                Some(report)
            }
            None => None,
        };
        let reports_sent = if online { self.flush_reports().await? } else { 0 };
        Ok(Iteration { report, online, next_check_in_s, reports_sent })
    }

    /// Sends queued reports; returns how many the server accepted.
    async fn flush_reports(&mut self) -> anyhow::Result<usize> {
        let mut sent = 0;
        loop {
            let pending = self.cache.pending_runs(REPORT_PAGE)?;
            if pending.is_empty() {
                return Ok(sent);
            }
            let mut req = ReportRequest {
                envoy_id: self.identity.envoy_id.clone(),
                counter: self.cache.next_counter()?,
                runs: pending.iter().map(|(_, r)| r.clone()).collect(),
                signature: Vec::new(),
            };
            req.signature = self.identity.key.sign(&vigo_proto::signing::report_bytes(&req)).to_bytes().to_vec();
            // On the session when one is open, else as a call.
            let answered = match &mut self.session {
                Some(session) => tokio::time::timeout(CALL_TIMEOUT, session.report(req))
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer on the session"))),
                None => match self.client().await {
                    Some(mut client) => client.report_results(req).await.map(tonic::Response::into_inner),
                    None => return Ok(sent),
                },
            };
            match answered {
                Ok(_) => {
                    let keys: Vec<u64> = pending.iter().map(|(k, _)| *k).collect();
                    self.cache.ack_runs(&keys)?;
                    sent += keys.len();
                }
                Err(status) => {
                    tracing::warn!("report failed, results stay queued: {}", status_text(&status));
                    self.channel = None;
                    self.session = None;
                    return Ok(sent);
                }
            }
        }
    }

    /// Runs iterations until interrupted (or once).
    pub async fn run(&mut self) -> anyhow::Result<bool> {
        let mut backoff = BACKOFF_START;
        loop {
            let iteration = self.iterate().await?;
            print_iteration(&iteration, self.cache.n_pending_runs().unwrap_or(0));
            let failed =
                iteration.report.as_ref().is_some_and(|r| r.results.iter().any(|x| x.status == Status::Failed as i32));
            if self.options.once {
                return Ok(!failed);
            }
            let wait = if iteration.online {
                backoff = BACKOFF_START;
                jitter(Duration::from_secs(u64::from(iteration.next_check_in_s)))
            } else {
                let wait = jitter(backoff);
                let cap = Duration::from_secs(u64::from(self.identity.check_in_interval_s.max(1)));
                backoff = (backoff * 2).min(cap);
                wait
            };
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    pushed = next_session_push(&mut self.session) => match pushed {
                        Some(version) => {
                            println!("push: stack v{version} is live, checking in now");
                            break;
                        }
                        // The session ended (server restarting): wait out the interval as before.
                        None => {
                            if self.session.take().is_some_and(|s| s.refused_for_capacity()) {
                                // The next check-in opens a session again, closed again after
                                // its answer while the server is full: polling, in effect.
                                tracing::info!("the server holds all the sessions it may");
                            }
                        }
                    },
                    _ = tokio::signal::ctrl_c() => return Ok(!failed),
                }
            }
        }
    }
}

/// The bundle inside `signed`, if the cluster's bundle key signed it and its fingerprint is
/// right (I-6). Nothing is applied that did not pass here.
pub fn verify_bundle(key: &VerifyingKey, signed: &SignedBundle) -> anyhow::Result<Bundle> {
    let signature = Signature::from_slice(&signed.signature).context("bundle signature malformed")?;
    key.verify_strict(&vigo_proto::signing::bundle_bytes(&signed.bundle), &signature)
        .map_err(|_| anyhow::anyhow!("bundle signature does not verify: refusing it"))?;
    anyhow::ensure!(Sha256::digest(&signed.bundle).as_slice() == signed.fingerprint, "bundle fingerprint mismatch");
    Bundle::decode(signed.bundle.as_slice()).context("bundle does not decode")
}

/// The next push on the session; `None` when it ends. Never resolves without a session.
async fn next_session_push(session: &mut Option<Session>) -> Option<u64> {
    match session {
        Some(session) => session.next_push().await,
        None => std::future::pending().await,
    }
}

/// `d` ± 20%, so a fleet started together spreads out.
fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    d.mul_f64(factor)
}

fn print_iteration(it: &Iteration, pending: u64) {
    let mode = if it.online { "online" } else { "offline: server unreachable, applied the cached bundle" };
    let Some(report) = &it.report else {
        println!("no bundle yet ({mode})");
        return;
    };
    let count = |s: Status| report.results.iter().filter(|r| r.status == s as i32).count();
    for r in &report.results {
        if r.status != Status::Unchanged as i32 {
            let status = Status::try_from(r.status).map_or("?".to_string(), |s| s.as_str_name().to_lowercase());
            println!("  {status:<12} {} {}", r.id, r.message);
        }
    }
    println!(
        "run {}: stack v{}: {} changed, {} unchanged, {} failed, {} skipped, {} unsupported ({mode}); {} report(s) sent, {pending} queued",
        report.run_id,
        report.stack_version,
        count(Status::Changed) + count(Status::WouldChange),
        count(Status::Unchanged),
        count(Status::Failed),
        count(Status::Skipped),
        count(Status::Unsupported),
        it.reports_sent,
    );
}
