//! `vigosrv`: the Vigo control-plane server.
//!
//! Start reading at `check_in.rs` (the hot path, invariant I-3), then `node.rs` (the control
//! write path), `services/` (gRPC), `stack/` (the stack compiler), `bundles.rs` (the bundle
//! cache), `pki.rs` (the cluster CA and keys) and `metrics.rs` (counters and histograms for
//! `/metrics`).

#![deny(missing_docs)]

pub mod admission;
pub mod bundles;
pub mod check_in;
pub mod compliance;
pub mod error;
pub mod flusher;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod query;
pub mod services;
pub mod stack;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use vigo_proto::admin::admin_server::AdminServer;
use vigo_proto::agent::agent_server::AgentServer;

use crate::node::{Node, Settings};
use crate::pki::{Paths, Pki};

/// How to run a server.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Data dir; initialized when empty.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
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
}

/// Runs the server until `shutdown` resolves.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let paths = Paths::new(&config.data_dir);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    if !paths.is_initialized() {
        pki::init(&paths)?;
        tracing::info!(admin = %paths.admin_dir().display(), "initialized a new single-node cluster; admin credentials written");
    }
    let pki = Pki::load(&paths)?;
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
    let listen = listener.local_addr()?;
    let log =
        vigo_log::LogNode::open(&config.data_dir, 1, listen.to_string()).await.context("cannot open the event log")?;
    let settings = Settings {
        listen: listen.to_string(),
        check_in_interval_s: config.check_in_interval_s,
        check_in_queue_max: config.check_in_queue_max,
        held_max,
    };
    let node = Node::new(log, pki, settings);
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

    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&node.pki.server_cert_pem, &node.pki.server_key_pem))
        .client_ca_root(Certificate::from_pem(&node.pki.ca_pem))
        .client_auth_optional(true);
    let max = limits::GRPC_MESSAGE_BYTES_MAX;
    println!("vigosrv listening on {listen}");
    let _http = match config.http {
        Some(addr) => {
            let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            println!("vigosrv http on {}", http.local_addr()?);
            Some(AbortOnDrop(tokio::spawn(http::serve(http, node.clone()))))
        }
        None => None,
    };
    let _follow_stack = AbortOnDrop(tokio::spawn(node.clone().follow_stack()));
    let _probe = AbortOnDrop(tokio::spawn(node.queue_delay.clone().probe()));
    let stopping = node.clone();
    let shutdown = async move {
        shutdown.await;
        // Held watches end first; then the graceful shutdown has no stream left to wait for.
        stopping.stopping.send_replace(true);
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls)?
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
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || flusher.stop()).await?;
    node.log.shutdown().await.context("log shutdown")?;
    Ok(())
}

/// Aborts a background task when dropped, so it ends with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
