//! `vigosrv run --http ADDR` serves Prometheus metrics at `/metrics`: a real server, a real
//! envoy, scraped over a real TCP socket. Counts are asserted exactly; timings never are.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::{Server, enroll, envoy_once, text, write_stack};

/// One GET; returns the status line, the head and the body.
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: vigo\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), head.to_lowercase(), body.to_string())
}

/// Scrapes `/metrics`, checking the status and content type.
fn scrape(http: &str) -> String {
    let (status, head, body) = get(http, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    body
}

/// The value of one series (`name` or `name{labels}`), which must appear exactly once.
fn value(page: &str, series: &str) -> f64 {
    let values: Vec<f64> = page
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| *s == series)
        .map(|(_, v)| v.parse().unwrap_or_else(|e| panic!("{series}: {v:?} is not a number: {e}")))
        .collect();
    assert_eq!(values.len(), 1, "{series} should appear exactly once in\n{page}");
    values[0]
}

fn check_ins(page: &str, outcome: &str) -> f64 {
    value(page, &format!("vigo_check_ins_total{{outcome=\"{outcome}\"}}"))
}

fn log_commits(page: &str, outcome: &str) -> f64 {
    value(page, &format!("vigo_log_commits_total{{outcome=\"{outcome}\"}}"))
}

#[test]
fn metrics_count_check_ins_reports_and_log_commits_of_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("server"), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let http = server.http.clone().unwrap();

    let page = scrape(&http);
    for family in [
        ("vigo_check_ins_total", "counter"),
        ("vigo_check_in_duration_seconds", "histogram"),
        ("vigo_reports_total", "counter"),
        ("vigo_log_commits_total", "counter"),
        ("vigo_log_commit_duration_seconds", "histogram"),
        ("vigo_envoys_known", "gauge"),
        ("vigo_envoys_online", "gauge"),
        ("vigo_events", "gauge"),
        ("vigo_stack_version", "gauge"),
        ("vigo_bundles_distinct", "gauge"),
        ("vigo_trait_nodes", "gauge"),
        ("vigo_trait_heap_bytes", "gauge"),
        ("vigo_heap_allocated_bytes", "gauge"),
        ("vigo_heap_resident_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert!(page.contains(&format!("\n# TYPE {} {}\n", family.0, family.1)), "{family:?} in\n{page}");
        assert!(page.contains(&format!("# HELP {} ", family.0)), "{family:?} in\n{page}");
    }
    assert_eq!(value(&page, "vigo_check_in_duration_seconds_count"), 0.0);
    assert_eq!(value(&page, "vigo_envoys_known"), 0.0);
    assert_eq!(value(&page, "vigo_trait_nodes"), 0.0, "no envoy sent traits yet");
    assert!(value(&page, "vigo_heap_allocated_bytes") > 0.0);
    assert!(value(&page, "vigo_heap_resident_bytes") >= value(&page, "vigo_heap_allocated_bytes"));
    assert!(value(&page, "process_resident_memory_bytes") > 0.0);
    assert!(value(&page, "process_cpu_seconds_total") >= 0.0);

    // Two log commits: TokenCreated, EnvoyEnrolled.
    let envoy_dir = tmp.path().join("envoy");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let out = enroll(&server, &server.token(), &envoy_dir, "a.example.com");
    assert!(out.status.success(), "{}", text(&out));

    // No stack yet: the server asks for traits, then answers no change. Nothing to report.
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(out.status.success(), "{}", text(&out));

    // A third commit; the next run gets a bundle and reports, the one after holds it.
    let stack = tmp.path().join("stack");
    write_stack(
        &stack,
        &[
            ("assign.yaml", "- match: \"*\"\n  modules: [m]\n"),
            ("modules/m/module.yaml", "resources:\n  - type: file\n    path: /etc/motd\n    content: \"hi\\n\"\n"),
        ],
    );
    assert_eq!(server.cli_ok(&["config", "publish", stack.to_str().unwrap()]), "1");
    for _ in 0..2 {
        let out = envoy_once(&envoy_dir, &root, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }

    let page = scrape(&http);
    assert_eq!(check_ins(&page, "send_traits"), 1.0);
    assert_eq!(check_ins(&page, "no_change"), 2.0);
    assert_eq!(check_ins(&page, "bundle"), 1.0);
    assert_eq!(check_ins(&page, "refused"), 0.0);
    assert_eq!(value(&page, "vigo_check_in_duration_seconds_count"), 4.0, "one observation per check-in");
    assert_eq!(value(&page, "vigo_check_in_duration_seconds_bucket{le=\"+Inf\"}"), 4.0);
    assert_eq!(value(&page, "vigo_reports_total{outcome=\"accepted\"}"), 2.0, "one report per run with a bundle");
    assert_eq!(value(&page, "vigo_reports_total{outcome=\"refused\"}"), 0.0);
    assert_eq!(log_commits(&page, "committed"), 3.0);
    assert_eq!(log_commits(&page, "refused"), 0.0);
    assert_eq!(log_commits(&page, "failed"), 0.0);
    assert_eq!(value(&page, "vigo_log_commit_duration_seconds_count"), 3.0);
    assert_eq!(value(&page, "vigo_envoys_known"), 1.0);
    assert_eq!(value(&page, "vigo_envoys_online"), 1.0);
    assert_eq!(value(&page, "vigo_events"), 5.0, "two founding events and three commits");
    assert_eq!(value(&page, "vigo_stack_version"), 1.0);
    assert_eq!(value(&page, "vigo_bundles_distinct"), 1.0);
    assert!(value(&page, "vigo_trait_nodes") > 0.0, "the envoy's traits are interned");
    assert!(value(&page, "vigo_trait_heap_bytes") > 0.0);
    assert!(value(&page, "process_resident_memory_bytes") > 0.0);

    // A refused write (no such envoy) never reaches the log; a revocation does, and the
    // revoked envoy's next check-in is refused.
    assert!(!server.cli(&["envoys", "revoke", "nobody.example.com"]).status.success());
    server.cli_ok(&["envoys", "revoke", "a.example.com"]);
    let out = envoy_once(&envoy_dir, &root, &[]);
    assert!(!out.status.success(), "a revoked envoy is refused: {}", text(&out));

    let page = scrape(&http);
    assert_eq!(check_ins(&page, "refused"), 1.0);
    assert_eq!(check_ins(&page, "no_change"), 2.0);
    assert_eq!(value(&page, "vigo_check_in_duration_seconds_count"), 5.0, "refusals are timed too");
    assert_eq!(log_commits(&page, "committed"), 4.0);
    assert_eq!(log_commits(&page, "refused"), 1.0);
    assert_eq!(value(&page, "vigo_log_commit_duration_seconds_count"), 4.0, "refused writes are not proposed");
    assert_eq!(value(&page, "vigo_events"), 6.0);
    assert_eq!(value(&page, "vigo_envoys_known"), 1.0, "revoked envoys stay known");

    let (status, _, body) = get(&http, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.contains("/metrics"), "{body}");
    server.stop();
}
