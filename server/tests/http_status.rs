//! `vigosrv run --http ADDR` serves `/healthz` and `/status` over plain HTTP.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::{Server, enroll, text};

fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    // Sent in two writes on purpose: the server must read the whole head, however it arrives.
    stream.write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes()).unwrap();
    stream.write_all(b"host: vigo\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn health_and_status_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("server"), "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let http = server.http.clone().unwrap();
    assert_eq!(get(&http, "/healthz"), ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string()));

    let out = enroll(&server, &server.token(), &tmp.path().join("envoy"), "a.example.com");
    assert!(out.status.success(), "{}", text(&out));
    let (status, body) = get(&http, "/status");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["events"], 4, "the founding ClusterKeysSealed and PeerAdmitted, TokenCreated and EnvoyEnrolled");
    assert_eq!(status["envoys"], 1);
    assert_eq!(
        (status["node_id"].as_u64(), status["role"].as_str(), status["leader"].as_u64()),
        (Some(1), Some("leader"), Some(1))
    );
    assert_eq!(status["stack_version"], 0);

    assert_eq!(get(&http, "/nope").0, "HTTP/1.1 404 Not Found");
    server.stop();
}
