//! `vigosrv`: the Vigo control-plane server.
//!
//! Start reading at `check_in.rs` (the hot path, invariant I-3), then `node.rs` (the control
//! write path), `services/` (gRPC), `stack/` (the stack compiler), `bundles.rs` (the bundle
//! cache), `pki.rs` (the cluster CA and keys) and `metrics.rs` (counters and histograms for
//! `/metrics`).

#![deny(missing_docs)]

pub mod admission;
pub mod bolt;
pub mod bundles;
pub mod check_in;
pub mod compliance;
pub mod error;
pub mod fanout;
pub mod flusher;
pub mod http;
pub mod join;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod query;
pub mod services;
pub mod session;
pub mod stack;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tonic::transport::Server;
use vigo_proto::admin::admin_server::AdminServer;
use vigo_proto::agent::agent_server::AgentServer;

use crate::node::{Node, Settings};
use crate::pki::{Paths, PeerIdentity, Pki};
use crate::services::peer::PeerService;
use std::sync::Arc;
use vigo_log::{LogNode, PeerSetup};
use vigo_proto::events::ClusterRecovered;
use vigo_proto::events::event::Kind;
use vigo_proto::peer::peer_server::PeerServer;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Data dir; initialized when empty.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// The address other peers and envoys reach this one at, when it is not the listen address
    /// (a wildcard listen address, NAT, a proxy in front).
    pub advertise: Option<String>,
    /// Seconds between check-ins.
    pub check_in_interval_s: u32,
    /// HTTP status listener address, if any.
    pub http: Option<SocketAddr>,
    /// How old, at most, the fleet snapshot (`DATA_DIR/fleet.sqlite`) may be.
    pub flush_interval: std::time::Duration,
    /// How long check-ins may wait for the server before they are told to back off.
    pub check_in_queue_max: std::time::Duration,
    /// Sessions and watches held at most at once; `None`: the open-file limit less
    /// [`limits::FDS_NOT_HELD`].
    pub held_max: Option<usize>,
    /// Join the cluster of another peer instead of founding one (on an empty data dir).
    pub join: Option<join::JoinConfig>,
    /// Be a bolt of a federation: this id, owning these hostname globs.
    pub bolt: Option<bolt::BoltConfig>,
}

/// Runs the server until `shutdown` resolves.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if let Some(bolt) = &config.bolt {
        vigo_state::control::check_bolt_id(&bolt.id).map_err(|e| anyhow::anyhow!("--bolt: {e}"))?;
        for pattern in &bolt.patterns {
            vigo_state::control::check_glob(pattern).map_err(|e| anyhow::anyhow!("--bolt-pattern: {e}"))?;
        }
    }
    let paths = Paths::new(&config.data_dir);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let open_files = match vigo_proto::fds::raise_open_files_limit() {
        Ok(n) => {
            tracing::info!(open_files = n, "open-file limit");
            n as usize
        }
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            2 * limits::FDS_NOT_HELD
        }
    };
    let held_max = config.held_max.unwrap_or(open_files.saturating_sub(limits::FDS_NOT_HELD).max(1));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let listen = config.advertise.clone().unwrap_or_else(|| bound.to_string());
    let joining = !paths.is_initialized() && config.join.is_some();
    if !paths.is_initialized() {
        match &config.join {
            None => {
                match config.bolt.as_ref().and_then(|b| b.federate.as_ref().map(|f| (&b.id, f))) {
                    Some((bolt, (addr, token))) => bolt::federate(&paths, bolt, addr, token).await?,
                    None => pki::init(&paths)?,
                }
                tracing::info!(admin = %paths.admin_dir().display(), "founded a new cluster; admin credentials written");
            }
            Some(join) => {
                join::request_identity(&paths, join, &listen).await?;
            }
        }
    } else if config.join.is_some() {
        tracing::warn!("this data dir already belongs to a peer; --join is ignored");
    }
    let identity = PeerIdentity::load(&paths)?;
    let founding = paths.founding_keys().exists();
    let setup = PeerSetup {
        node_id: identity.node_id,
        addr: listen.clone(),
        tls: Some(identity.peer_client_tls()?),
        bootstrap: founding,
        // Calls to other peers leave from the address this one listens on (unless that is a
        // wildcard), so they come from where the other peers know it to be.
        source: Some(bound.ip()).filter(|ip| !ip.is_unspecified()),
    };
    let log = Arc::new(LogNode::open_peer(&config.data_dir, setup).await.context("cannot open the event log")?);
    let tls = identity.server_tls()?;
    // One listening socket for both stages of a join.
    let listener = listener.into_std()?;
    if founding {
        join::found(&log, &paths, &identity, &listen).await?;
    } else if log.state().keys().is_none() {
        // Joining (or resuming a join): serve the peer service alone until this peer is a voter
        // and has the cluster keys.
        let stage = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(
            Server::builder()
                .add_service(peer_server(PeerService::new(log.clone(), None)))
                .serve_with_incoming_shutdown(listener::accept(stage, tls.clone(), None), async {
                    let _ = stopped.await;
                }),
        );
        let join_addr = config.join.as_ref().map(|j| j.addr.as_str()).filter(|_| joining);
        join::become_voter(&paths, &identity, join_addr).await?;
        let mut applied = log.watch_applied();
        let keys = applied.wait_for(|_| log.state().keys().is_some());
        tokio::time::timeout(limits::KEYS_WAIT, keys)
            .await
            .context("joined, but the cluster keys did not arrive")?
            .context("the log stopped")?;
        let _ = stop.send(());
        serving.await?.context("the peer service failed while joining")?;
        tracing::info!(node_id = identity.node_id, "joined the cluster as a voter");
    }
    if let Some(index) = log.state().peer_removed_at(identity.node_id) {
        log.shutdown().await.context("log shutdown")?;
        anyhow::bail!(
            "this peer (node {}) was removed from the cluster at event {index}; wipe {} and join again with a new \
             join token",
            identity.node_id,
            config.data_dir.display()
        );
    }
    let keys = log.state().keys().cloned().context("the log holds no cluster keys")?;
    let pki = Pki::unseal(identity, &keys)?;
    let settings = Settings {
        listen: listen.clone(),
        check_in_interval_s: config.check_in_interval_s,
        check_in_queue_max: config.check_in_queue_max,
        held_max,
        bolt: config.bolt.clone(),
    };
    let node = Node::new(log, pki, settings);
    if let Some(recovery) = node.log.pending_recovery()? {
        let event = ClusterRecovered { node_id: recovery.node_id, lost: recovery.lost.clone() };
        node.commit_event("server:force-recover", Kind::ClusterRecovered(event))
            .await
            .context("cannot record the forced recovery")?;
        node.log.clear_recovery()?;
        tracing::warn!(lost = ?recovery.lost, "forced recovery recorded in the history");
    }
    let state = node.control();
    tracing::info!(
        events = state.last_index(),
        envoys = state.n_envoys(),
        stack_version = state.stack_version(),
        "state rebuilt from the log"
    );
    let flusher = {
        let path = config.data_dir.join("fleet.sqlite");
        let (loading, started) = (node.clone(), std::time::Instant::now());
        let store = tokio::task::spawn_blocking(move || -> Result<_, vigo_state::StoreError> {
            let mut store = vigo_state::FleetStore::open(&path)?;
            let report = store.load(&loading.fleet)?;
            Ok((store, report))
        });
        let (store, report) = store.await?.context("cannot read the fleet snapshot")?;
        tracing::info!(
            envoys = report.envoys,
            with_traits = report.with_traits,
            traits_lost = report.traits_lost,
            unreadable = report.unreadable,
            trait_rows = report.nodes,
            rewrite = report.rewrite,
            ms = started.elapsed().as_millis() as u64,
            "fleet index rehydrated from its snapshot"
        );
        flusher::Flusher::start(node.clone(), store, config.flush_interval).context("cannot start the fleet flusher")?
    };

    let max = limits::GRPC_MESSAGE_BYTES_MAX;
    println!("vigosrv listening on {bound}");
    if listen != bound.to_string() {
        println!("vigosrv advertised as {listen}");
    }
    let _http = match config.http {
        Some(addr) => {
            let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            println!("vigosrv http on {}", http.local_addr()?);
            Some(AbortOnDrop(tokio::spawn(http::serve(http, node.clone()))))
        }
        None => None,
    };
    let _follow_stack = AbortOnDrop(tokio::spawn(node.clone().follow_stack()));
    let _register_bolt = config.bolt.clone().map(|bolt| AbortOnDrop(tokio::spawn(bolt::register(node.clone(), bolt))));
    let _gossip =
        config.bolt.clone().map(|bolt| AbortOnDrop(tokio::spawn(bolt::gossip(node.clone(), bolt, paths.clone()))));
    let _probe = AbortOnDrop(tokio::spawn(node.queue_delay.clone().probe()));
    let stopping = node.clone();
    let removed = node.clone();
    let shutdown = async move {
        // A peer taken out of the cluster stops: it would only serve a state that no longer moves.
        tokio::select! {
            _ = shutdown => {}
            index = removed.removed() => {
                tracing::warn!(index, "this peer was removed from the cluster; stopping");
            }
        }
        // Held watches end first; then the graceful shutdown has no stream left to wait for.
        stopping.stopping.send_replace(true);
    };
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let incoming = listener::accept(listener, tls, Some(node.clone()));
    Server::builder()
        .add_service(
            AgentServer::new(services::agent::AgentService::new(node.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AdminServer::new(services::admin::AdminService::new(node.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(peer_server(PeerService::new(node.log.clone(), Some(node.clone()))))
        .add_service(
            vigo_proto::spanner::spanner_server::SpannerServer::new(services::spanner::SpannerService::new(
                node.clone(),
            ))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || flusher.stop()).await?;
    node.log.shutdown().await.context("log shutdown")?;
    Ok(())
}

/// `vigosrv force-recover`: makes the peer whose (stopped) data dir is `data_dir` the sole
/// voter of its cluster; see `vigo_log::recovery`. Returns what to tell the operator.
pub fn force_recover(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let identity = PeerIdentity::load(&Paths::new(data_dir))?;
    let done = vigo_log::force_sole_voter(data_dir, identity.node_id)?;
    let lost: Vec<String> = done.lost.iter().map(u64::to_string).collect();
    Ok(format!(
        "peer {} is now the sole voter (term {}, log index {}); peers [{}] are no longer members. Start it with \
         `vigosrv run`; the recovery is recorded in the audit log. Never start the dropped peers on their old \
         data: wipe them and join them again with new join tokens.",
        done.node_id,
        done.term,
        done.log_index,
        lost.join(", ")
    ))
}

fn peer_server(service: PeerService) -> PeerServer<PeerService> {
    PeerServer::new(service)
        .max_decoding_message_size(vigo_log::limits::PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(vigo_log::limits::PEER_MESSAGE_BYTES_MAX)
}

/// Aborts a background task when dropped, so it ends with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
