//! `vigosrv`: the Vigo control-plane server binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// jemalloc: it hands memory freed after bursts (traits uploads, publishes) back to the system,
/// and reports the live heap for `/metrics`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "vigosrv", version, about = "Vigo control-plane server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of the `run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server. An empty data dir founds a new cluster of one peer, or, with `--join`,
    /// joins an existing cluster as a new peer.
    Run {
        /// Where the log, key material and admin credentials live.
        #[arg(long)]
        data_dir: PathBuf,
        /// gRPC address for envoys and vigocli.
        #[arg(long, default_value = "127.0.0.1:1530")]
        listen: SocketAddr,
        /// host:port other peers and envoys reach this peer at [default: the listen address].
        #[arg(long)]
        advertise: Option<String>,
        /// HTTP address serving `/healthz` and `/status`.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Seconds between check-ins envoys are asked to keep.
        #[arg(long, default_value_t = 60)]
        check_in_interval: u32,
        /// Seconds the fleet snapshot (`DATA_DIR/fleet.sqlite`) may lag behind: at most this
        /// much of the observations is lost on a crash.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        flush_interval: f64,
        /// Milliseconds check-ins may wait for the server; beyond, they are answered `Backoff`.
        #[arg(long, default_value_t = vigo_server::limits::CHECK_IN_QUEUE_MAX_MS, value_parser = clap::value_parser!(u64).range(1..=60_000))]
        check_in_queue_max_ms: u64,
        /// Sessions held open at most at once; past it, envoys check in by calls
        /// [default: the open-file limit less 1024].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        held_max: Option<u64>,
        /// host:port of any peer of the cluster to join (only on an empty data dir).
        #[arg(long, requires = "token")]
        join: Option<String>,
        /// The join token (`vigocli token create --join`).
        #[arg(long, requires = "join")]
        token: Option<String>,
        /// Be a bolt of a federation, with this id in the admissions roster.
        #[arg(long)]
        bolt: Option<String>,
        /// A hostname glob this bolt owns (repeatable), e.g. `*.eu.example.com`.
        #[arg(long = "bolt-pattern", requires = "bolt")]
        bolt_patterns: Vec<String>,
        /// host:port of a bolt of the federation to join as a new bolt, founding this bolt's
        /// cluster with the federation's keys (only on an empty data dir; needs `--bolt` and a
        /// `--federation-token` from `vigocli token create --federate` on that bolt).
        #[arg(long, requires_all = ["bolt", "federation_token"], conflicts_with = "join")]
        federate: Option<String>,
        /// The federation token (`vgf1_…`).
        #[arg(long, requires = "federate")]
        federation_token: Option<String>,
        /// Auto-drain: a bolt that failed this many probes in a row (one every 2 s) has its
        /// envoys sent to the healthy bolt holding the fewest, until it answers again.
        #[arg(long, requires = "bolt", value_parser = clap::value_parser!(u32).range(1..))]
        auto_drain_after: Option<u32>,
    },
    /// FORCED RECOVERY, for a cluster that has lost its quorum for good: make this stopped peer
    /// the sole voter. Writes the lost peers committed without it are gone; they must never run
    /// again on their old data. Recorded in the audit log at the next start.
    ForceRecover {
        /// The surviving peer's data dir (its vigosrv stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// Required: says you know the other peers are gone and will be wiped.
        #[arg(long)]
        i_understand_this_discards_the_other_peers: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            data_dir,
            listen,
            advertise,
            http,
            check_in_interval,
            flush_interval,
            check_in_queue_max_ms,
            held_max,
            join,
            token,
            bolt,
            bolt_patterns,
            federate,
            federation_token,
            auto_drain_after,
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let flush_interval = std::time::Duration::from_secs_f64(flush_interval);
            runtime.block_on(vigo_server::run(
                vigo_server::RunConfig {
                    data_dir,
                    listen,
                    advertise,
                    check_in_interval_s: check_in_interval,
                    http,
                    flush_interval,
                    check_in_queue_max: std::time::Duration::from_millis(check_in_queue_max_ms),
                    held_max: held_max.map(|n| n as usize),
                    join: join.zip(token).map(|(addr, token)| vigo_server::join::JoinConfig { addr, token }),
                    bolt: bolt.map(|id| vigo_server::bolt::BoltConfig {
                        id,
                        patterns: bolt_patterns,
                        federate: federate.zip(federation_token),
                        auto_drain_after,
                    }),
                },
                shutdown_signal(),
            ))
        }
        Command::ForceRecover { data_dir, i_understand_this_discards_the_other_peers } => {
            if i_understand_this_discards_the_other_peers {
                vigo_server::force_recover(&data_dir).map(|done| println!("{done}"))
            } else {
                Err(anyhow::anyhow!(
                    "force-recover rebuilds the cluster from this peer alone and drops every other peer; if quorum \
                     is lost for good, stop this peer and run again with --i-understand-this-discards-the-other-peers"
                ))
            }
        }
    };
    if let Err(e) = result {
        eprintln!("vigosrv: {e:#}");
        std::process::exit(1);
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.01..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!("'{text}' is not a number of seconds between 0.01 and 86400")),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
