//! `envoy`: the Vigo agent binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vigo_agent::run::{Envoy, RunOptions};

#[derive(Parser)]
#[command(name = "envoy", version, about = "Vigo agent: converges this host to its bundle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host with a server using a token from `vigocli token create`.
    Enroll {
        /// Server address (host:port).
        #[arg(long, env = "VIGO_SERVER")]
        server: String,
        /// Enrollment token.
        #[arg(long)]
        token: String,
        /// Where the envoy keeps its identity and cache.
        #[arg(long)]
        data_dir: PathBuf,
        /// Hostname to enroll as (default: this machine's).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Check in and converge, every interval (or once).
    Run {
        /// Where the envoy keeps its identity and cache.
        #[arg(long)]
        data_dir: PathBuf,
        /// Prefix of every managed path, so a sandbox can stand in for the host.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// One check-in and converge, then exit (non-zero if a resource failed).
        #[arg(long)]
        once: bool,
        /// Report what would change, change nothing.
        #[arg(long)]
        noop: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result: anyhow::Result<bool> = runtime.block_on(async {
        match cli.command {
            Command::Enroll { server, token, data_dir, hostname } => {
                let hostname = hostname.unwrap_or_else(vigo_agent::enroll::system_hostname);
                let id = vigo_agent::enroll::enroll(&server, &token, &data_dir, &hostname).await?;
                println!("{id}");
                Ok(true)
            }
            Command::Run { data_dir, root, once, noop } => {
                Envoy::open(RunOptions { data_dir, root, once, noop })?.run().await
            }
        }
    });
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("envoy: {}", format!("{e:#}").replace('\n', " "));
            std::process::exit(1);
        }
    }
}
