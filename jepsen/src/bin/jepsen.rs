//! `jepsen`: runs real `vigosrv` peers under concurrent clients and injected faults, checks what
//! was recorded, and writes the results folder. Exits non-zero when a checker finds a violation.
//!
//!   jepsen --seed 7 --duration 30 --faults kill,kill-leader,pause,partition,partition-leader --results results/7
//!   jepsen --check results/7/history.json      # check a recorded history again

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vigo_jepsen::run::{FaultKind, RunConfig};

#[derive(Parser, Debug)]
#[command(name = "jepsen", about = "Fault injection against real vigosrv peers, with checkers")]
struct Args {
    /// The seed; a run is reproducible from it (its schedule of operations and faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Peers.
    #[arg(long, default_value_t = 3)]
    peers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Seconds of clients and faults.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Faults to inject, comma-separated; empty for none.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = FaultKind::ALL)]
    faults: Vec<FaultKind>,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 2.0)]
    fault_gap: f64,
    /// Longest fault, in seconds.
    #[arg(long, default_value_t = 3.0)]
    fault_length: f64,
    /// Seconds the healed cluster has to acknowledge a write.
    #[arg(long, default_value_t = 20.0)]
    liveness: f64,
    /// Results folder [default: results/<seed>].
    #[arg(long)]
    results: Option<PathBuf>,
    /// Where the `vigosrv` and `vigocli` binaries are [default: next to this one].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the peers' data dirs and logs (`<dir>/peer-N.log`; `JEPSEN_PEER_LOG` sets their
    /// level, `warn` by default) even when every checker passes.
    #[arg(long)]
    keep: bool,
    /// Check a recorded `history.json` instead of running.
    #[arg(long, conflicts_with = "seed")]
    check: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    match run(Args::parse()).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("jepsen: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(path) = &args.check {
        let history: vigo_jepsen::history::History =
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
                .with_context(|| format!("{} is not a recorded history", path.display()))?;
        let report = vigo_jepsen::check::check_all(&history);
        print!("{}", vigo_jepsen::report::summary(&history, &report));
        return Ok(report.ok());
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("no folder for this binary")?.to_path_buf(),
    };
    let work = tempfile::Builder::new().prefix("jepsen-").tempdir_in(std::env::temp_dir())?;
    let config = RunConfig {
        vigosrv: bin_dir.join("vigosrv"),
        vigocli: bin_dir.join("vigocli"),
        work_dir: work.path().to_path_buf(),
        peers: args.peers,
        seed: args.seed,
        clients: args.clients,
        duration: Duration::from_secs_f64(args.duration),
        faults: args.faults.clone(),
        fault_gap: Duration::from_secs_f64(args.fault_gap),
        fault_length: Duration::from_secs_f64(args.fault_length),
        liveness: Duration::from_secs_f64(args.liveness),
    };
    let history = match vigo_jepsen::run::run(&config).await {
        Ok(history) => history,
        Err(e) => {
            // Keep the peers' data and logs for whoever looks into it.
            let kept = work.keep();
            return Err(e.context(format!("peer data and logs kept in {}", kept.display())));
        }
    };
    let report = vigo_jepsen::check::check_all(&history);
    let results = args.results.clone().unwrap_or_else(|| PathBuf::from(format!("results/{}", args.seed)));
    vigo_jepsen::report::write(&results, &history, &report)?;
    print!("{}", vigo_jepsen::report::summary(&history, &report));
    println!("results in {}", results.display());
    if !report.ok() || args.keep {
        // Keep the peers' data and logs for whoever looks into it.
        let kept = work.keep();
        println!("peer data and logs kept in {}", kept.display());
    }
    Ok(report.ok())
}
