//! The HTTP listener (`--http`): `/healthz` for load balancers, `/status` (JSON) for
//! operators and `/metrics` (Prometheus text format 0.0.4) for scrapers. Plain HTTP/1.1, one
//! request per connection, read-only: it reads the control snapshot, the fleet index and the
//! counters in `metrics.rs`, and never touches the log.
//!
//! A scrape counts the envoys online by scanning the fleet index (one shard lock at a time):
//! fleet-sized work, which is why it happens here, per scrape, and not per check-in (I-3).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::{self, render_gauge};
use crate::node::{Node, now_ms};

/// Largest request head read; status requests are a single line.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            let Ok(Some(head)) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await else { return };
            let (status, content_type, body) = respond(&node, head.lines().next().unwrap_or_default());
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Reads until the end of the request head (a blank line), within the size limit.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > REQUEST_BYTES_MAX {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(node: &Node, request_line: &str) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "only GET is served\n".into());
    }
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/status" => {
            let control = node.control();
            let cluster = node.log.status();
            let body = json!({
                "listen": node.settings.listen,
                "node_id": cluster.node_id,
                "role": cluster.role,
                "leader": cluster.leader,
                "term": cluster.term,
                "applied_index": cluster.applied_index,
                "events": control.last_index(),
                "envoys": control.n_envoys(),
                "envoys_seen": node.fleet.len(),
                "stack_version": control.stack_version(),
                "distinct_bundles": node.bundles.n_distinct(),
            });
            ("200 OK", "application/json", format!("{body}\n"))
        }
        "/metrics" => ("200 OK", metrics::CONTENT_TYPE, metrics_page(node, now_ms())),
        _ => ("404 Not Found", "text/plain", "not found: try /healthz, /status or /metrics\n".into()),
    }
}

/// The `/metrics` page: the counters and histograms, the gauges computed now, the process.
fn metrics_page(node: &Node, now_ms: i64) -> String {
    let control = node.control();
    let mut out = String::with_capacity(8 * 1024);
    node.metrics.render(&mut out);
    render_gauge(&mut out, "vigo_envoys_known", "Envoys enrolled, revoked ones included.", control.n_envoys());
    render_gauge(
        &mut out,
        "vigo_envoys_online",
        "Envoys whose last accepted request is within 3 check-in intervals.",
        node.fleet.count_seen_since(node.online_since_ms(now_ms)),
    );
    render_gauge(&mut out, "vigo_events", "Index of the last applied event.", control.last_index());
    render_gauge(
        &mut out,
        "vigo_stack_version",
        "Version of the live stack; 0 before the first publish.",
        control.stack_version(),
    );
    render_gauge(&mut out, "vigo_bundles_distinct", "Distinct bundles in the bundle cache.", node.bundles.n_distinct());
    let traits = node.fleet.trait_store().stats();
    render_gauge(&mut out, "vigo_trait_nodes", "Distinct trait values held, shared across the fleet.", traits.nodes);
    render_gauge(
        &mut out,
        "vigo_trait_heap_bytes",
        "Bytes of the trait values' strings, numbers and member lists held in memory.",
        traits.heap_bytes,
    );
    render_gauge(
        &mut out,
        "vigo_trait_nodes_cold",
        "Large trait arrays and objects (package lists) held in the fleet snapshot only.",
        traits.cold,
    );
    render_gauge(
        &mut out,
        "vigo_queue_delay_seconds",
        "How late the server's probe timer last fired: how long work waits; past the cap, check-ins back off.",
        node.queue_delay.lag().as_secs_f64(),
    );
    render_gauge(
        &mut out,
        "vigo_queue_delay_max_seconds",
        "The queue delay beyond which check-ins are told to back off.",
        node.queue_delay.max().as_secs_f64(),
    );
    render_gauge(&mut out, "vigo_held_sessions", "Sessions and watches open now.", node.held.current());
    render_gauge(
        &mut out,
        "vigo_held_sessions_max",
        "Sessions and watches held at most; past it, envoys check in by calls.",
        node.held.max(),
    );
    metrics::render_heap(&mut out);
    metrics::render_process(&mut out);
    out
}
