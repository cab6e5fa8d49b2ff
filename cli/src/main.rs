//! `vigocli`: the operator's command line. Every failure is one line on stderr and a
//! non-zero exit; `-o json` output is stable and machine-readable.

mod audit;
mod pack;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tonic::transport::Channel;
use vigo_proto::admin::admin_client::AdminClient;
use vigo_proto::admin::{
    BoltUnanswered, ClusterMember, CompactLogRequest, Compliance, CreateTokenRequest, EnvoyInfo, ListEnvoysRequest,
    PromotePeerRequest, PublishStackRequest, RemovePeerRequest, ReportComplianceRequest, ReportComplianceResponse,
    RevokeEnvoyRequest, ServerStatusRequest, ServerStatusResponse, ShowEnvoyRequest, ShowEnvoyResponse, SpannerBolt,
    SpannerDrainRequest, SpannerReassignRequest, SpannerStatusRequest, SpannerStatusResponse,
};
use vigo_proto::tls::{client_config, connect, read_certs, read_key};

#[derive(Parser)]
#[command(name = "vigocli", version, about = "Vigo operator command line")]
struct Cli {
    /// Server address (host:port); several, comma-separated, are tried in turn until one answers.
    #[arg(long, env = "VIGO_SERVER", global = true, default_value = "127.0.0.1:1530")]
    server: String,
    /// Admin credentials folder (DATA_DIR/admin of the server).
    #[arg(long, env = "VIGO_CREDS", global = true)]
    creds: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The stack.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Enrolled envoys.
    #[command(subcommand)]
    Envoys(EnvoysCommand),
    /// The event history.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Fleet-wide reports.
    #[command(subcommand)]
    Report(ReportCommand),
    /// The server's cluster.
    #[command(subcommand)]
    Server(ServerCommand),
    /// The federation of bolts, as the bolt asked knows it.
    #[command(subcommand)]
    Spanner(SpannerCommand),
}

#[derive(Subcommand)]
enum SpannerCommand {
    /// Every bolt of the roster (addresses, hostname patterns, drains) and the reassignments.
    Status,
    /// One bolt of the roster.
    Bolt {
        /// Its id.
        id: String,
    },
    /// Envoys whose hostname matches GLOB belong to bolt ID from their next check-in.
    Reassign {
        /// A hostname or a hostname glob.
        #[arg(long)]
        hostname: String,
        /// The bolt they go to.
        #[arg(long, required_unless_present = "lift", conflicts_with = "lift")]
        to: Option<String>,
        /// Lift the reassignment of GLOB instead.
        #[arg(long)]
        lift: bool,
    },
    /// The envoys bolt ID owns go to another bolt.
    Drain {
        /// The bolt drained.
        #[arg(long)]
        bolt: String,
        /// The bolt its envoys go to.
        #[arg(long, required_unless_present = "end", conflicts_with = "end")]
        to: Option<String>,
        /// End the drain of the bolt instead.
        #[arg(long)]
        end: bool,
    },
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Members, roles, the leader, and each member's log and applied index.
    Status,
    /// Take a peer out of the cluster (move leadership away from it first).
    Remove {
        /// Its node id.
        node: u64,
    },
    /// Make a peer the leader.
    Promote {
        /// Its node id.
        node: u64,
    },
    /// Build a snapshot on the peer asked (`--server`) and purge the log entries it covers; the
    /// history is kept whole.
    Compact,
}

#[derive(Subcommand)]
enum ReportCommand {
    /// How many active envoys are compliant with the live stack, and which are not.
    Compliance,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it alone on stdout.
    Create {
        /// How many enrollments it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds until it expires (0 = never).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        /// A join token, admitting a new peer (`vigosrv run --join ADDR --token T`), instead
        /// of an enrollment token.
        #[arg(long, conflicts_with = "federate")]
        join: bool,
        /// A federation token, federating a new bolt with this server's
        /// (`vigosrv run --bolt ID --federate ADDR --token T`).
        #[arg(long)]
        federate: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Publish a stack directory; prints the new version.
    Publish {
        /// The stack directory (assign.yaml, modules/).
        stack_dir: PathBuf,
        /// A message recorded with the publish.
        #[arg(short, long, default_value = "")]
        message: String,
    },
}

#[derive(Subcommand)]
enum EnvoysCommand {
    /// List envoys, or those meeting every `--where`.
    List {
        /// A condition, such as `os.family=debian`, `packages.nginx exists`, `cpu.count>4`,
        /// `hostname=web-*`, `compliance=failing` or `last_seen>10m`; repeat for more.
        #[arg(long = "where", value_name = "EXPR")]
        conditions: Vec<String>,
        /// In a federation: this bolt's envoys only (by default every bolt is asked).
        #[arg(long)]
        local: bool,
    },
    /// One envoy: what the server observed of it, its compliance and its traits.
    Show {
        /// Hostname or envoy id.
        envoy: String,
    },
    /// Revoke an envoy by hostname or id.
    Revoke {
        /// Hostname or envoy id.
        envoy: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print the history from index 1, verifying its hash chain.
    Log {
        /// Wait until the peer asked holds every event committed before the request (through
        /// the leader; fails without a quorum). Without it, a peer answers with what it has.
        #[arg(long)]
        linearizable: bool,
    },
}

async fn admin_client(cli: &Cli) -> anyhow::Result<AdminClient<Channel>> {
    let Some(creds) = &cli.creds else { bail!("no admin credentials: pass --creds DIR or set VIGO_CREDS") };
    let file = |name: &str| -> PathBuf { creds.join(name) };
    let ca = read_certs(&file("ca.crt"))?.remove(0);
    let identity = (read_certs(&file("admin.crt"))?, read_key(&file("admin.key"))?);
    let config = client_config(&ca, Some(identity))?;
    let mut failures = Vec::new();
    let mut channel = None;
    for server in cli.server.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match connect(server, config.clone(), Duration::from_secs(5)).await {
            Ok(c) => {
                channel = Some(c);
                break;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let Some(channel) = channel else { bail!("no server answered: {}", failures.join("; ")) };
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json_out = cli.output == Output::Json;
    let mut client = admin_client(&cli).await?;
    match &cli.command {
        Command::Token(TokenCommand::Create { uses, ttl, join, federate }) => {
            let token = client
                .create_token(CreateTokenRequest { uses: *uses, ttl_s: *ttl, join: *join, federate: *federate })
                .await
                .map_err(status)?
                .into_inner()
                .token;
            if json_out {
                println!("{}", json!({ "token": token, "uses": uses }));
            } else {
                println!("{token}");
            }
        }
        Command::Config(ConfigCommand::Publish { stack_dir, message }) => {
            let archive = pack::pack_dir(stack_dir)?;
            let response = client
                .publish_stack(PublishStackRequest { archive, message: message.clone() })
                .await
                .map_err(|s| anyhow::anyhow!("publish refused: {}", s.message()))?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({ "version": response.version, "sha256": hex::encode(&response.sha256), "index": response.index })
                );
            } else {
                println!("{}", response.version);
            }
        }
        Command::Envoys(EnvoysCommand::List { conditions, local }) => {
            let request = ListEnvoysRequest { r#where: conditions.clone(), linearizable: false, local: *local };
            let listed = client.list_envoys(request).await.map_err(status)?.into_inner();
            print_envoys(&listed.envoys, json_out);
            warn_unanswered(&listed.unanswered);
        }
        Command::Envoys(EnvoysCommand::Revoke { envoy, reason }) => {
            let response = client
                .revoke_envoy(RevokeEnvoyRequest { envoy: envoy.clone(), reason: reason.clone() })
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                println!("{}", json!({ "envoy_id": response.envoy_id, "index": response.index }));
            } else {
                println!("revoked {}", response.envoy_id);
            }
        }
        Command::Audit(AuditCommand::Log { linearizable }) => audit::log(&mut client, *linearizable, json_out).await?,
        Command::Envoys(EnvoysCommand::Show { envoy }) => {
            let shown =
                client.show_envoy(ShowEnvoyRequest { envoy: envoy.clone() }).await.map_err(status)?.into_inner();
            print_envoy(&shown, json_out)?;
            warn_unanswered(&shown.unanswered);
        }
        Command::Server(ServerCommand::Status) => {
            let status = client.server_status(ServerStatusRequest {}).await.map_err(status)?.into_inner();
            print_server_status(&status, json_out);
        }
        Command::Server(ServerCommand::Remove { node }) => {
            client.remove_peer(RemovePeerRequest { node_id: *node }).await.map_err(status)?;
            if json_out {
                println!("{}", json!({ "removed": node }));
            } else {
                println!("removed peer {node}");
            }
        }
        Command::Server(ServerCommand::Compact) => {
            let purged = client.compact_log(CompactLogRequest {}).await.map_err(status)?.into_inner().purged_index;
            if json_out {
                println!("{}", json!({ "purged_index": purged }));
            } else {
                println!("log purged through index {purged}");
            }
        }
        Command::Server(ServerCommand::Promote { node }) => {
            let leader = client.promote_peer(PromotePeerRequest { node_id: *node }).await.map_err(status)?.into_inner();
            if json_out {
                println!("{}", json!({ "leader": leader.leader }));
            } else {
                println!("peer {} leads", leader.leader);
            }
        }
        Command::Spanner(SpannerCommand::Status) => {
            let roster = client.spanner_status(SpannerStatusRequest {}).await.map_err(status)?.into_inner();
            print_roster(&roster, None, json_out)?;
        }
        Command::Spanner(SpannerCommand::Bolt { id }) => {
            let roster = client.spanner_status(SpannerStatusRequest {}).await.map_err(status)?.into_inner();
            print_roster(&roster, Some(id), json_out)?;
        }
        Command::Spanner(SpannerCommand::Reassign { hostname, to, lift: _ }) => {
            let to = to.clone().unwrap_or_default();
            let request = SpannerReassignRequest { hostname: hostname.clone(), to: to.clone() };
            let index = client.spanner_reassign(request).await.map_err(status)?.into_inner().index;
            if json_out {
                println!("{}", json!({ "hostname": hostname, "to": to, "index": index }));
            } else if to.is_empty() {
                println!("reassignment of {hostname} lifted (event {index})");
            } else {
                println!("{hostname} reassigned to bolt {to} (event {index})");
            }
        }
        Command::Spanner(SpannerCommand::Drain { bolt, to, end: _ }) => {
            let to = to.clone().unwrap_or_default();
            let request = SpannerDrainRequest { bolt: bolt.clone(), to: to.clone() };
            let index = client.spanner_drain(request).await.map_err(status)?.into_inner().index;
            if json_out {
                println!("{}", json!({ "bolt": bolt, "to": to, "index": index }));
            } else if to.is_empty() {
                println!("drain of bolt {bolt} ended (event {index})");
            } else {
                println!("bolt {bolt} drained to bolt {to} (event {index})");
            }
        }
        Command::Report(ReportCommand::Compliance) => {
            let report = client.report_compliance(ReportComplianceRequest {}).await.map_err(status)?.into_inner();
            print_compliance(&report, json_out);
            warn_unanswered(&report.unanswered);
        }
    }
    Ok(())
}

/// Prints the roster, or one bolt of it (`only`; an unknown one is an error).
fn print_roster(roster: &SpannerStatusResponse, only: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let bolts: Vec<&SpannerBolt> = roster.bolts.iter().filter(|b| only.is_none_or(|id| b.id == id)).collect();
    if let Some(id) = only
        && bolts.is_empty()
    {
        anyhow::bail!("no bolt {id} in the roster");
    }
    let bolt_json = |b: &SpannerBolt| {
        let health = b.probed.then(|| {
            json!({ "online": b.online, "failed_probes": b.failed_probes, "probe_ms": b.probe_ms, "envoys": b.envoys,
                    "compliant": b.compliant })
        });
        json!({ "id": b.id, "addrs": b.addrs, "patterns": b.patterns,
                "drained_to": (!b.drained_to.is_empty()).then_some(&b.drained_to),
                "drained_automatically": b.drained_automatically, "this": b.id == roster.bolt,
                "health": health })
    };
    if json_out {
        let value = match only {
            Some(_) => bolt_json(bolts[0]),
            None => json!({
                "bolt": (!roster.bolt.is_empty()).then_some(&roster.bolt),
                "bolts": bolts.iter().map(|b| bolt_json(b)).collect::<Vec<_>>(),
                "reassigned": roster.reassigned.iter().map(|r| json!({ "hostname": r.hostname, "to": r.to })).collect::<Vec<_>>(),
                "revoked_envoys": roster.revoked_envoys,
            }),
        };
        println!("{value}");
        return Ok(());
    }
    if only.is_none() {
        match roster.bolt.as_str() {
            "" => println!("this server is not a bolt"),
            id => println!("this server is bolt {id}"),
        }
    }
    for b in &bolts {
        let this = if b.id == roster.bolt { " (this bolt)" } else { "" };
        println!("bolt {}{this}", b.id);
        println!("  addresses: {}", b.addrs.join(", "));
        println!("  owns: {}", if b.patterns.is_empty() { "(no patterns)".to_string() } else { b.patterns.join(", ") });
        if !b.drained_to.is_empty() {
            let how = if b.drained_automatically { " (auto-drain, until it answers again)" } else { "" };
            println!("  drained to: {}{how}", b.drained_to);
        }
        match (b.probed, b.online) {
            (false, _) => println!("  health: not probed yet"),
            (true, true) => {
                println!("  health: online, {} envoys ({} compliant), probe {} ms", b.envoys, b.compliant, b.probe_ms)
            }
            (true, false) => println!("  health: OFFLINE ({} probes failed in a row)", b.failed_probes),
        }
    }
    if only.is_none() {
        for r in &roster.reassigned {
            println!("reassigned: {} -> {}", r.hostname, r.to);
        }
    }
    Ok(())
}

/// `compliant`, `failing`, `drifted`, `behind`, `never_reported` (the enum's names, lowercase).
fn compliance_label(value: i32) -> String {
    Compliance::try_from(value).unwrap_or(Compliance::Unspecified).as_str_name().to_ascii_lowercase()
}

fn print_envoy(shown: &ShowEnvoyResponse, json_out: bool) -> anyhow::Result<()> {
    let info = shown.envoy.clone().unwrap_or_default();
    let traits: serde_json::Value = if shown.traits_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&shown.traits_json).context("the server sent traits that are not JSON")?
    };
    if json_out {
        let mut out = envoy_json(&info);
        out["compliance"] = json!(compliance_label(shown.compliance));
        out["last_counter"] = json!(shown.last_counter);
        out["traits_hash"] = json!(hex::encode(&shown.traits_hash));
        out["traits"] = traits;
        out["unanswered"] = unanswered_json(&shown.unanswered);
        println!("{out}");
        return Ok(());
    }
    println!("envoy       {}", info.envoy_id);
    println!("hostname    {}", info.hostname);
    println!("state       {}", if info.revoked { "revoked" } else { "active" });
    println!("compliance  {}", compliance_label(shown.compliance));
    println!(
        "last seen   {}",
        if info.last_seen_ms == 0 { "never".to_string() } else { format!("{} ms since epoch", info.last_seen_ms) }
    );
    match &info.last_run {
        Some(r) => println!(
            "last run    v{}: {} changed, {} unchanged, {} failed, {} skipped{}{}",
            r.stack_version,
            r.changed,
            r.unchanged,
            r.failed,
            r.skipped,
            if r.noop { " (noop)" } else { "" },
            if r.offline { " (offline)" } else { "" }
        ),
        None => println!("last run    none reported"),
    }
    match traits.as_object() {
        Some(members) => {
            let keys: Vec<&str> = members.keys().map(String::as_str).collect();
            println!("traits      {} ({} bytes; -o json prints them)", keys.join(", "), shown.traits_json.len());
        }
        None => println!("traits      none held"),
    }
    Ok(())
}

fn print_server_status(s: &ServerStatusResponse, json_out: bool) {
    let matched = |m: &ClusterMember| m.has_matched_index.then_some(m.matched_index);
    if json_out {
        let members: Vec<serde_json::Value> = s
            .members
            .iter()
            .map(|m| {
                let mut member = json!({ "node_id": m.node_id, "addr": m.addr, "voter": m.voter,
                    "matched_index": matched(m), "reachable": m.reachable });
                if m.reachable {
                    member["role"] = json!(m.role);
                    member["last_log_index"] = json!(m.last_log_index);
                    member["applied_index"] = json!(m.applied_index);
                    member["last_event_index"] = json!(m.last_event_index);
                    member["last_event_hash"] = json!(hex::encode(&m.last_event_hash));
                    member["snapshot_index"] = json!(m.snapshot_index);
                    member["purged_index"] = json!(m.purged_index);
                } else {
                    member["error"] = json!(m.error);
                }
                member
            })
            .collect();
        println!(
            "{}",
            json!({
                "node_id": s.node_id,
                "role": s.role,
                "term": s.term,
                "leader": (s.leader != 0).then_some(s.leader),
                "last_log_index": s.last_log_index,
                "applied_index": s.applied_index,
                "members": members,
            })
        );
        return;
    }
    let leader = if s.leader == 0 { "none".to_string() } else { s.leader.to_string() };
    println!(
        "node {} ({}, term {}); leader {}; log index {}, applied {}",
        s.node_id, s.role, s.term, leader, s.last_log_index, s.applied_index
    );
    println!(
        "{:<7} {:<22} {:<8} {:<10} {:>9} {:>9} {:>9}",
        "MEMBER", "ADDRESS", "KIND", "ROLE", "LOG", "APPLIED", "MATCHED"
    );
    for m in &s.members {
        let kind = if m.voter { "voter" } else { "learner" };
        let matched = matched(m).map_or("-".to_string(), |i| i.to_string());
        if m.reachable {
            println!(
                "{:<7} {:<22} {:<8} {:<10} {:>9} {:>9} {:>9}",
                m.node_id, m.addr, kind, m.role, m.last_log_index, m.applied_index, matched
            );
        } else {
            println!(
                "{:<7} {:<22} {:<8} {:<10} {:>9} {:>9} {:>9}  ({})",
                m.node_id, m.addr, kind, "unreachable", "-", "-", matched, m.error
            );
        }
    }
}

fn print_compliance(report: &ReportComplianceResponse, json_out: bool) {
    if json_out {
        let noncompliant: Vec<serde_json::Value> = report
            .noncompliant
            .iter()
            .map(|e| {
                json!({
                    "envoy_id": e.envoy_id,
                    "hostname": e.hostname,
                    "compliance": compliance_label(e.compliance),
                    "last_seen_ms": e.last_seen_ms,
                    "last_run_stack_version": e.last_run.map(|r| r.stack_version),
                    "last_run_failed": e.last_run.map(|r| r.failed),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "stack_version": report.stack_version,
                "envoys": report.envoys,
                "compliant": report.compliant,
                "failing": report.failing,
                "drifted": report.drifted,
                "behind": report.behind,
                "never_reported": report.never_reported,
                "offline": report.offline,
                "noncompliant": noncompliant,
                "unanswered": unanswered_json(&report.unanswered),
            })
        );
        return;
    }
    println!(
        "stack v{}: {} of {} active envoys compliant; {} failing, {} drifted, {} behind, {} never reported; {} offline",
        report.stack_version,
        report.compliant,
        report.envoys,
        report.failing,
        report.drifted,
        report.behind,
        report.never_reported,
        report.offline
    );
    for e in &report.noncompliant {
        println!("{:<32} {}", e.hostname, compliance_label(e.compliance));
    }
}

/// Names, on stderr, each bolt of the federation that did not answer a fanned-out query: its
/// envoys are missing from what was printed.
fn warn_unanswered(unanswered: &[BoltUnanswered]) {
    for u in unanswered {
        eprintln!("vigocli: bolt {} did not answer, its envoys are missing: {}", u.bolt, u.reason);
    }
}

fn unanswered_json(unanswered: &[BoltUnanswered]) -> serde_json::Value {
    unanswered.iter().map(|u| json!({ "bolt": u.bolt, "reason": u.reason })).collect()
}

fn envoy_json(e: &EnvoyInfo) -> serde_json::Value {
    json!({
        "envoy_id": e.envoy_id,
        "hostname": e.hostname,
        "revoked": e.revoked,
        "moved_to": (!e.moved_to.is_empty()).then_some(&e.moved_to),
        "bolt": (!e.bolt.is_empty()).then_some(&e.bolt),
        "enrolled_index": e.enrolled_index,
        "last_seen_ms": e.last_seen_ms,
        "bundle_fingerprint": hex::encode(&e.bundle_fingerprint),
        "reports_received": e.reports_received,
        "last_run": e.last_run.as_ref().map(|r| json!({
            "run_id": r.run_id,
            "started_at_ms": r.started_at_ms,
            "stack_version": r.stack_version,
            "offline": r.offline,
            "noop": r.noop,
            "changed": r.changed,
            "unchanged": r.unchanged,
            "failed": r.failed,
            "skipped": r.skipped,
            "unsupported": r.unsupported,
        })),
    })
}

fn print_envoys(envoys: &[EnvoyInfo], json_out: bool) {
    if json_out {
        println!("{}", serde_json::Value::Array(envoys.iter().map(envoy_json).collect()));
        return;
    }
    println!("{:<20} {:<32} {:<8} {:<10} LAST RUN", "ENVOY", "HOSTNAME", "STATE", "STACK");
    for e in envoys {
        let state = match (e.revoked, e.moved_to.as_str()) {
            (true, _) => "revoked".to_string(),
            (false, "") => "active".to_string(),
            (false, bolt) => format!("moved:{bolt}"),
        };
        let (stack, run) = match &e.last_run {
            Some(r) => (
                format!("v{}", r.stack_version),
                format!("{} changed, {} failed{}", r.changed, r.failed, if r.offline { " (offline)" } else { "" }),
            ),
            None => ("-".into(), "-".into()),
        };
        println!("{:<20} {:<32} {:<8} {:<10} {}", e.envoy_id, e.hostname, state, stack, run);
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("vigocli: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
