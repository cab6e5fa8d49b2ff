//! `fakefleet`: drives a real `vigosrv` with many synthetic envoys and reports what it cost
//! the server. See `benches/README.md` for how to run it.
//!
//! Phases: publish a stack (so there are bundles to hand out), create one token, enroll every
//! envoy through the real path, start every envoy's check-in loop (first check-ins spread
//! over one interval; each sends its ~150 KB inventory when asked), wait out the warm-up,
//! then measure a window between two scrapes of the server's `/metrics`. Optionally publish
//! again mid-window and time how long until every envoy holds the new bundle.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use rand::Rng;
use vigo_benches::fleet::{Cluster, FakeEnvoy, Outcome, Transport, next_push};
use vigo_benches::report::{PublishReport, Report, quantile};
use vigo_benches::scrape::{Sample, scrape};

#[derive(Parser, Debug)]
#[command(name = "fakefleet", about = "Load generator: synthetic envoys against a real vigosrv")]
struct Args {
    /// vigosrv gRPC address.
    #[arg(long, default_value = "127.0.0.1:1530")]
    server: String,
    /// vigosrv HTTP address (`vigosrv run --http`), scraped for CPU, memory and counters.
    #[arg(long)]
    http: String,
    /// Admin credentials directory (DATA_DIR/admin), to create the token and publish.
    #[arg(long)]
    creds: PathBuf,
    /// The vigocli binary; defaults to the one next to this program.
    #[arg(long)]
    vigocli: Option<PathBuf>,
    /// How many envoys.
    #[arg(long, default_value_t = 1000)]
    envoys: u32,
    /// Seconds between one envoy's check-ins.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Relative jitter on each interval (0.1 = ±10%).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// `held`: each envoy keeps its connection between check-ins and a watch open on it, so
    /// a publish is pushed; `poll`: it connects anew for every check-in.
    #[arg(long, value_enum, default_value_t = Mode::Held)]
    mode: Mode,
    /// Seconds of check-ins before the measured window, counted once every envoy holds its
    /// first bundle (default: one interval).
    #[arg(long)]
    warmup: Option<f64>,
    /// Longest wait for every envoy to hold its first bundle before measuring anyway.
    #[arg(long, default_value_t = 600.0)]
    settle_max: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Publish a new stack this many seconds into the window and time its spread.
    #[arg(long)]
    publish_at: Option<f64>,
    /// Loopback source addresses to spread connections over (127.0.0.1 .. 127.0.0.N).
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Envoy N enrolls as PREFIX followed by N: against a bolt, a prefix its patterns own.
    #[arg(long, default_value = "fleet-")]
    hostname_prefix: String,
    /// A name for the run, shown in the table.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Held,
    Poll,
    /// Held, with check-ins and pushes on one `Session` stream instead of a call each.
    Session,
}

/// What every envoy task shares with the conductor.
struct Shared {
    server: String,
    bundle_key: VerifyingKey,
    interval: Duration,
    jitter: f64,
    transport: Transport,
    measuring: AtomicBool,
    check_ins: AtomicU64,
    backoffs: AtomicU64,
    errors: AtomicU64,
    pushes: AtomicU64,
    settled: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
    publish_version: AtomicU64,
    publish_started: OnceLock<Instant>,
    updated_after_s: Mutex<Vec<f64>>,
}

impl Shared {
    fn jittered(&self) -> Duration {
        let factor = 1.0 + self.jitter * rand::rng().random_range(-1.0..=1.0);
        self.interval.mul_f64(factor.max(0.01))
    }
}

async fn envoy_loop(mut envoy: FakeEnvoy, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut next = shared.interval.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut holds_published = false;
    let mut settled = false;
    let mut watch = None;
    loop {
        let sleep = tokio::time::sleep(next);
        tokio::pin!(sleep);
        let stopped = loop {
            tokio::select! {
                _ = &mut sleep => break false,
                _ = stop.changed() => break true,
                pushed = next_push(watch.as_mut()) => match pushed {
                    Some(_) => {
                        shared.pushes.fetch_add(1, Relaxed);
                        break false;
                    }
                    None => watch = None,
                },
                Some(()) = envoy.next_session_push() => {
                    shared.pushes.fetch_add(1, Relaxed);
                    break false;
                }
            }
        };
        if stopped {
            break;
        }
        let started = Instant::now();
        let result = envoy.check_in(&shared.server, &shared.bundle_key, shared.transport).await;
        let took = started.elapsed();
        let measuring = shared.measuring.load(Relaxed);
        next = shared.jittered();
        match result {
            Ok(outcome) => {
                if !settled && envoy.stack_version > 0 {
                    settled = true;
                    shared.settled.fetch_add(1, Relaxed);
                }
                if shared.transport == Transport::Held && watch.is_none() {
                    watch = envoy.watch(&shared.server).await.ok();
                }
                if measuring {
                    shared.check_ins.fetch_add(1, Relaxed);
                    shared.latencies_us.lock().unwrap().push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                }
                if let Outcome::Backoff(s) = outcome {
                    shared.backoffs.fetch_add(u64::from(measuring), Relaxed);
                    next = Duration::from_secs(u64::from(s.max(1)));
                }
                let target = shared.publish_version.load(Relaxed);
                if !holds_published && target > 0 && envoy.stack_version >= target {
                    holds_published = true;
                    if let Some(t0) = shared.publish_started.get() {
                        shared.updated_after_s.lock().unwrap().push(t0.elapsed().as_secs_f64());
                    }
                }
            }
            Err(e) => {
                shared.errors.fetch_add(u64::from(measuring), Relaxed);
                shared.first_error.lock().unwrap().get_or_insert_with(|| format!("{}: {e:#}", envoy.hostname));
            }
        }
    }
    drop(watch);
    envoy.disconnect();
}

/// Runs `vigocli` with the admin credentials; returns its JSON output.
async fn vigocli(args: &Args, rest: &[&str]) -> anyhow::Result<serde_json::Value> {
    let exe = match &args.vigocli {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("vigocli"),
    };
    let output = tokio::process::Command::new(&exe)
        .args(["--server", &args.server, "--creds"])
        .arg(&args.creds)
        .args(["-o", "json"])
        .args(rest)
        .output()
        .await
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !output.status.success() {
        bail!("vigocli {} failed: {}", rest.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout).context("vigocli printed something other than JSON")
}

/// Writes a small stack whose bundles differ per host, per `generation` and per the host's
/// openssl version.
fn write_stack(dir: &Path, generation: &str) -> anyhow::Result<()> {
    let module = dir.join("modules/fleet");
    std::fs::create_dir_all(module.join("files"))?;
    std::fs::write(
        dir.join("assign.yaml"),
        format!("- match: \"*\"\n  modules: [fleet]\n  vars:\n    generation: \"{generation}\"\n"),
    )?;
    std::fs::write(
        module.join("module.yaml"),
        "resources:\n\
         \x20 - { type: directory, path: /etc/fleet, mode: \"0755\" }\n\
         \x20 - { type: file, path: /etc/fleet/generation, template: generation.j2, mode: \"0644\", requires: [directory:/etc/fleet] }\n\
         \x20 - { type: file, path: /etc/fleet/motd, content: \"managed by vigo\\n\", mode: \"0644\", requires: [directory:/etc/fleet] }\n\
         \x20 - { type: symlink, path: /etc/fleet/current, target: /etc/fleet/generation, requires: [file:/etc/fleet/generation] }\n\
         \x20 - { type: exec, name: reload, command: \"true\", refreshonly: true }\n",
    )?;
    // Reads the host's package list, as real templates do: after a publish every compile reads
    // it back from the fleet snapshot, where the server keeps it.
    std::fs::write(
        module.join("files/generation.j2"),
        "{{ hostname }} runs generation {{ generation }} with openssl \
         {% if traits.packages.openssl is defined %}{{ traits.packages.openssl.version }}{% else %}none{% endif %}\n",
    )?;
    Ok(())
}

async fn publish(args: &Args, generation: &str) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    write_stack(dir.path(), generation)?;
    let out = vigocli(args, &["config", "publish", &dir.path().to_string_lossy(), "-m", "fakefleet"]).await?;
    out["version"].as_u64().context("publish answered no version")
}

fn source_for(i: u32, sources: u8) -> Option<IpAddr> {
    (sources > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % u32::from(sources)) as u8)))
}

async fn run(args: Args) -> anyhow::Result<Report> {
    match vigo_proto::fds::raise_open_files_limit() {
        Ok(n) => eprintln!("fakefleet: open-file limit {n}"),
        Err(e) => eprintln!("fakefleet: cannot raise the open-file limit: {e}"),
    }
    let before = scrape(&args.http).await?;
    let nonce = format!("{:x}", rand::rng().random::<u64>());
    let v1 = publish(&args, &format!("{nonce}-1")).await?;
    eprintln!("fakefleet: published stack v{v1}");
    let token = vigocli(&args, &["token", "create", "--uses", &args.envoys.to_string()]).await?["token"]
        .as_str()
        .context("token create answered no token")?
        .to_string();
    let mut cluster = Cluster::discover(&args.server, &token).await?;
    cluster.hostname_prefix = args.hostname_prefix.clone();

    // Enrollment, through a few shared channels: each one a committed event.
    let enroll_started = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(cluster.enroll_channel().await?);
    }
    let sources = args.sources;
    let mut enrolled = futures::stream::iter(0..args.envoys)
        .map(|i| {
            let (cluster, channel, token) = (&cluster, channels[i as usize % channels.len()].clone(), &token);
            async move { FakeEnvoy::enroll(cluster, channel, token, i, source_for(i, sources)).await }
        })
        .buffer_unordered(args.enroll_concurrency.max(1));
    let mut envoys = Vec::with_capacity(args.envoys as usize);
    let mut bundle_key = None;
    while let Some(result) = enrolled.next().await {
        let (envoy, key) = result?;
        bundle_key.get_or_insert(key);
        envoys.push(envoy);
        if envoys.len() % 5000 == 0 {
            eprintln!("fakefleet: {} enrolled", envoys.len());
        }
    }
    drop(enrolled);
    drop(channels);
    let enroll_s = enroll_started.elapsed().as_secs_f64();
    let Some(bundle_key) = bundle_key else { bail!("--envoys must be at least 1") };
    eprintln!("fakefleet: {} envoys enrolled in {enroll_s:.1} s", envoys.len());

    let interval = Duration::from_secs_f64(args.interval);
    let shared = Arc::new(Shared {
        server: args.server.clone(),
        bundle_key,
        interval,
        jitter: args.jitter.clamp(0.0, 0.9),
        transport: match args.mode {
            Mode::Held => Transport::Held,
            Mode::Poll => Transport::Poll,
            Mode::Session => Transport::Session,
        },
        measuring: AtomicBool::new(false),
        check_ins: AtomicU64::new(0),
        backoffs: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        pushes: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        first_error: Mutex::new(None),
        publish_version: AtomicU64::new(0),
        publish_started: OnceLock::new(),
        updated_after_s: Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> =
        envoys.into_iter().map(|e| tokio::spawn(envoy_loop(e, shared.clone(), stop_rx.clone()))).collect();

    // Cold start: every envoy sends its inventory, and gets its first bundle compiled and signed.
    let settle_started = Instant::now();
    let settle_deadline = settle_started + Duration::from_secs_f64(args.settle_max);
    while shared.settled.load(Relaxed) < u64::from(args.envoys) && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle_s = settle_started.elapsed().as_secs_f64();
    eprintln!("fakefleet: {} envoys hold their first bundle after {settle_s:.1} s", shared.settled.load(Relaxed));
    let warmup = args.warmup.unwrap_or(args.interval);
    eprintln!("fakefleet: warming up for {warmup:.0} s more");
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let m0 = scrape(&args.http).await?;
    let window_started = Instant::now();
    shared.measuring.store(true, Relaxed);
    eprintln!("fakefleet: measuring for {:.0} s", args.duration);

    let mut publish_report = None;
    if let Some(at) = args.publish_at.filter(|at| *at < args.duration) {
        tokio::time::sleep(Duration::from_secs_f64(at)).await;
        let started = Instant::now();
        let _ = shared.publish_started.set(started);
        let version = publish(&args, &format!("{nonce}-2")).await?;
        shared.publish_version.store(version, Relaxed);
        publish_report =
            Some(PublishReport { version, commit_s: started.elapsed().as_secs_f64(), ..Default::default() });
        eprintln!("fakefleet: published stack v{version} mid-run");
    }
    let end = window_started + Duration::from_secs_f64(args.duration);
    tokio::time::sleep_until(end.into()).await;
    let m1 = scrape(&args.http).await?;
    let window_s = window_started.elapsed().as_secs_f64();
    shared.measuring.store(false, Relaxed);
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
    }

    let mut report = summarize(&args, &shared, &before, &m0, &m1, window_s);
    report.enrollments_per_s = f64::from(args.envoys) / enroll_s;
    report.first_bundle_all_s = settle_s;
    if let Some(mut p) = publish_report {
        let mut after = shared.updated_after_s.lock().unwrap().clone();
        after.sort_by(f64::total_cmp);
        p.envoys_updated = after.len() as u32;
        p.all_updated_after_s = (p.envoys_updated == args.envoys).then(|| after.last().copied().unwrap_or(0.0));
        p.median_updated_after_s = after.get(after.len() / 2).copied().unwrap_or(0.0);
        report.publish = Some(p);
    }
    Ok(report)
}

fn summarize(args: &Args, shared: &Shared, before: &Sample, m0: &Sample, m1: &Sample, window_s: f64) -> Report {
    let mut lat = std::mem::take(&mut *shared.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let ms = |us: u32| f64::from(us) / 1000.0;
    let cpu = m1.get("process_cpu_seconds_total") - m0.get("process_cpu_seconds_total");
    let server_check_ins = m1.sum("vigo_check_ins_total") - m0.sum("vigo_check_ins_total");
    let check_ins = shared.check_ins.load(Relaxed);
    let rss = m1.get("process_resident_memory_bytes");
    Report {
        label: args.label.clone(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        envoys: args.envoys,
        interval_s: args.interval,
        window_s,
        enrollments_per_s: 0.0,
        first_bundle_all_s: 0.0,
        check_ins,
        check_ins_per_s: check_ins as f64 / window_s,
        server_cpu_us_per_check_in: if server_check_ins > 0.0 { cpu * 1e6 / server_check_ins } else { 0.0 },
        server_cpu_cores: cpu / window_s,
        server_rss_bytes: rss as u64,
        server_rss_bytes_per_envoy: (rss - before.get("process_resident_memory_bytes")) / f64::from(args.envoys),
        server_heap_bytes_per_envoy: (m1.get("vigo_heap_allocated_bytes") - before.get("vigo_heap_allocated_bytes"))
            / f64::from(args.envoys),
        trait_heap_bytes_per_envoy: m1.get("vigo_trait_heap_bytes") / f64::from(args.envoys),
        latency_ms_p50: ms(quantile(&lat, 0.5)),
        latency_ms_p99: ms(quantile(&lat, 0.99)),
        latency_ms_max: ms(lat.last().copied().unwrap_or(0)),
        backoffs: shared.backoffs.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        pushes: shared.pushes.load(Relaxed),
        first_error: shared.first_error.lock().unwrap().clone(),
        publish: None,
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let json = args.json.clone();
    match runtime.block_on(run(args)) {
        Ok(report) => {
            print!("{}", report.markdown());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("report serializes");
                if let Err(e) = std::fs::write(&path, text + "\n") {
                    eprintln!("fakefleet: cannot write {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fakefleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
