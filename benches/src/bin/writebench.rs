//! `writebench`: control-write latency and throughput of a three-peer cluster, for vigo and for
//! etcd the same way, so the two figures sit side by side (`benches/ha.sh` runs both).
//!
//! - **latency**: one client, one write at a time, `--writes` of them: p50, p99 and mean of the
//!   time from sending a write to its acknowledgement (committed on a quorum and applied).
//!   For vigo the write is a stack publish (the operator's write that matters), and also a token;
//!   for etcd a `Put`.
//! - **throughput**: `--clients` clients spread over every peer, each writing back to back for
//!   `--duration` seconds: writes per second, and p50/p99 under that load. vigo: tokens (a
//!   control write of the same size class as a `Put`); etcd: `Put` of a 100-byte value.
//! - **failover** (`--kill-pid`, the leader's process; the leader's endpoint first): SIGKILL the
//!   leader, then write through the other peers until one succeeds (vigo: a publish; etcd: a
//!   `Put`): the time from the kill to that acknowledgement.
//!
//! Prints one JSON object on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;
use tonic::transport::Channel;
use vigo_benches::report::quantile;

#[derive(Parser, Debug)]
#[command(name = "writebench", about = "Control-write latency and throughput of a three-peer cluster")]
struct Args {
    /// What the endpoints run.
    #[arg(long, value_enum)]
    target: Target,
    /// host:port of every peer, comma-separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// vigo: admin credentials directory.
    #[arg(long)]
    creds: Option<PathBuf>,
    /// Sequential writes for the latency figures.
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Concurrent clients for the throughput figures.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// After the runs, SIGKILL this process (the leader, whose endpoint comes first) and time
    /// the next write the others acknowledge.
    #[arg(long)]
    kill_pid: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Vigo,
    Etcd,
}

/// One kind of write against one peer.
#[derive(Clone)]
enum Writer {
    Vigo(vigo_proto::admin::admin_client::AdminClient<Channel>),
    Etcd(tonic::client::Grpc<Channel>),
}

impl Writer {
    async fn connect(args: &Args, endpoint: &str) -> anyhow::Result<Self> {
        match args.target {
            Target::Vigo => {
                let creds = args.creds.as_ref().context("--creds is required for vigo")?;
                let ca = vigo_proto::tls::read_certs(&creds.join("ca.crt"))?.remove(0);
                let identity = (
                    vigo_proto::tls::read_certs(&creds.join("admin.crt"))?,
                    vigo_proto::tls::read_key(&creds.join("admin.key"))?,
                );
                let config = vigo_proto::tls::client_config(&ca, Some(identity))?;
                let channel = vigo_proto::tls::connect(endpoint, config, Duration::from_secs(5)).await?;
                Ok(Writer::Vigo(
                    vigo_proto::admin::admin_client::AdminClient::new(channel)
                        .max_encoding_message_size(64 << 20)
                        .max_decoding_message_size(64 << 20),
                ))
            }
            Target::Etcd => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to etcd at {endpoint}"))?;
                Ok(Writer::Etcd(tonic::client::Grpc::new(channel)))
            }
        }
    }

    /// One small write: a token for vigo, a 100-byte `Put` for etcd.
    async fn small(&mut self, n: u64) -> anyhow::Result<()> {
        match self {
            Writer::Vigo(client) => {
                let request = vigo_proto::admin::CreateTokenRequest { uses: 1, ttl_s: 0, join: false, federate: false };
                client.create_token(request).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            }
            Writer::Etcd(grpc) => {
                let request = etcd::PutRequest { key: format!("bench/{n}").into_bytes(), value: vec![b'v'; 100] };
                grpc.ready().await?;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
                grpc.unary::<_, etcd::PutResponse, _>(
                    tonic::Request::new(request),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            }
        }
        Ok(())
    }

    /// One publish of a new stack (vigo only).
    async fn publish(&mut self, n: u64) -> anyhow::Result<()> {
        let Writer::Vigo(client) = self else { bail!("publish is a vigo write") };
        let request = vigo_proto::admin::PublishStackRequest { archive: stack_archive(n)?, message: "bench".into() };
        client.publish_stack(request).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(())
    }
}

/// The few etcd v3 messages a `Put` needs, by their documented field numbers.
mod etcd {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {}
}

/// A small stack: one module, one file, whose content carries `n`, so each archive is a new
/// stack (publishing the live one again appends nothing).
fn stack_archive(n: u64) -> anyhow::Result<Vec<u8>> {
    let module = format!("resources:\n  - {{ type: file, path: /etc/motd, content: \"managed {n}\\n\" }}\n");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let files: [(&str, &str); 2] =
        [("assign.yaml", "- match: \"*\"\n  modules: [motd]\n"), ("modules/motd/module.yaml", &module)];
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, contents.as_bytes())?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// p50, p99 and mean of `micros`, in milliseconds.
fn summary(mut micros: Vec<u32>) -> serde_json::Value {
    micros.sort_unstable();
    let ms = |us: u32| f64::from(us) / 1000.0;
    let mean = micros.iter().map(|&u| f64::from(u)).sum::<f64>() / micros.len().max(1) as f64 / 1000.0;
    json!({
        "n": micros.len(),
        "p50_ms": ms(quantile(&micros, 0.50)),
        "p99_ms": ms(quantile(&micros, 0.99)),
        "mean_ms": (mean * 1000.0).round() / 1000.0,
        "max_ms": ms(micros.last().copied().unwrap_or(0)),
    })
}

async fn sequential(
    writer: &mut Writer,
    n: usize,
    mut write: impl AsyncFnMut(&mut Writer, u64) -> anyhow::Result<()>,
) -> anyhow::Result<serde_json::Value> {
    let mut micros = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        write(writer, i as u64).await?;
        micros.push(started.elapsed().as_micros() as u32);
    }
    Ok(summary(micros))
}

/// CPU seconds this process has used so far (user and system), from `/proc/self/stat`.
fn own_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn throughput(args: &Args) -> anyhow::Result<serde_json::Value> {
    let cpu_before = own_cpu_s();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let endpoint = &args.endpoints[c % args.endpoints.len()];
        let mut writer = Writer::connect(args, endpoint).await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut micros, mut failures) = (Vec::new(), 0u64);
            let mut n = (c as u64) << 40;
            while !stop.load(Relaxed) {
                let started = Instant::now();
                match writer.small(n).await {
                    Ok(()) => micros.push(started.elapsed().as_micros() as u32),
                    Err(_) => failures += 1,
                }
                n += 1;
            }
            (micros, failures)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Relaxed);
    let (mut micros, mut failures) = (Vec::new(), 0);
    for task in tasks {
        let (m, f) = task.await?;
        micros.extend(m);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes = micros.len();
    let mut out = summary(micros);
    out["clients"] = json!(args.clients);
    out["seconds"] = json!((elapsed * 100.0).round() / 100.0);
    out["writes_per_s"] = json!((writes as f64 / elapsed).round());
    out["failures"] = json!(failures);
    out["client_cpu_us_per_write"] = json!(((own_cpu_s() - cpu_before) * 1e6 / writes.max(1) as f64).round());
    Ok(out)
}

/// Kills the leader and writes through the others until one acknowledges: a publish for vigo,
/// a `Put` for etcd.
async fn failover(args: &Args, pid: i32) -> anyhow::Result<serde_json::Value> {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    if !status.success() {
        bail!("cannot kill {pid}");
    }
    let killed = Instant::now();
    let (mut attempts, deadline) = (0u32, killed + Duration::from_secs(30));
    loop {
        for endpoint in &args.endpoints {
            attempts += 1;
            let published = async {
                let mut writer = Writer::connect(args, endpoint).await?;
                let write = async {
                    match args.target {
                        Target::Vigo => writer.publish(1 << 50 | u64::from(attempts)).await,
                        Target::Etcd => writer.small(u64::from(attempts)).await,
                    }
                };
                tokio::time::timeout(Duration::from_millis(500), write).await?
            };
            if published.await.is_ok() {
                let ms = killed.elapsed().as_secs_f64() * 1000.0;
                return Ok(json!({ "ms": ms.round(), "attempts": attempts, "via": endpoint }));
            }
        }
        if Instant::now() > deadline {
            bail!("no publish succeeded within 30 s of killing the leader");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.endpoints.is_empty() {
        bail!("--endpoints is required");
    }
    let mut writer = Writer::connect(&args, &args.endpoints[0]).await?;
    let mut report = json!({ "target": format!("{:?}", args.target).to_lowercase(), "peers": args.endpoints.len() });
    match args.target {
        Target::Vigo => {
            report["publish_latency"] = sequential(&mut writer, args.writes, async |w, n| w.publish(n).await).await?;
            report["write_latency"] = sequential(&mut writer, args.writes, async |w, n| w.small(n).await).await?;
        }
        Target::Etcd => {
            report["write_latency"] = sequential(&mut writer, args.writes, async |w, n| w.small(n).await).await?;
        }
    }
    report["throughput"] = throughput(&args).await?;
    if let Some(pid) = args.kill_pid {
        let rest: Vec<String> = args.endpoints[1..].to_vec();
        let after = Args { endpoints: rest, kill_pid: None, ..args };
        report["failover"] = failover(&after, pid).await?;
    }
    println!("{report}");
    Ok(())
}
