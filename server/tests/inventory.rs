//! A host's inventory over real processes: once the fleet snapshot holds an envoy's package
//! list the server lets it go from memory, and templates, `envoys show` and
//! `envoys list --where` still read it from the snapshot, also after a restart.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{Server, enroll, envoy_once, text, write_stack};

/// A dpkg status file of `n` packages, nginx at `nginx`.
fn dpkg_status(root: &Path, n: usize, nginx: &str) {
    let mut status = format!("Package: nginx\nStatus: install ok installed\nVersion: {nginx}\nArchitecture: amd64\n");
    for p in 0..n {
        status.push_str(&format!(
            "\nPackage: lib{p:03}\nStatus: install ok installed\nVersion: 1.{p}\nArchitecture: amd64\n"
        ));
    }
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
}

fn stack(dir: &Path, greeting: &str) {
    write_stack(
        dir,
        &[
            ("assign.yaml", "- match: \"*\"\n  modules: [m]\n"),
            ("modules/m/module.yaml", "resources:\n  - type: file\n    path: /etc/motd\n    template: motd.j2\n"),
            (
                "modules/m/files/motd.j2",
                &format!(
                    "{greeting}: nginx {{{{ traits.packages.nginx.version }}}}, {{{{ traits.packages | length }}}} packages\n"
                ),
            ),
        ],
    );
}

/// The value of gauge `name` on the server's `/metrics`.
fn gauge(http: &str, name: &str) -> f64 {
    let mut stream = TcpStream::connect(http).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: vigo\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

/// Waits (bounded) until the package lists of `n` envoys are in the snapshot only.
fn wait_cold(server: &Server, n: f64) {
    let http = server.http.as_deref().expect("--http");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge(http, "vigo_trait_nodes_cold") < n {
        assert!(Instant::now() < deadline, "package lists still in memory after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn package_lists_live_in_the_snapshot_and_are_read_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--http", "127.0.0.1:0", "--flush-interval", "0.2"];
    let server_dir = tmp.path().join("server");
    let server = Server::start_with(&server_dir, "127.0.0.1:0", &flags);
    let token = server.cli_ok(&["token", "create", "--uses", "2"]);
    let edir = |h: &str| tmp.path().join("envoys").join(h);
    let root = |h: &str| tmp.path().join("roots").join(h);
    for (h, nginx) in [("web-1", "1.22.1-9"), ("web-2", "1.24.0-2")] {
        let out = enroll(&server, &token, &edir(h), h);
        assert!(out.status.success(), "{}", text(&out));
        dpkg_status(&root(h), 60, nginx);
    }
    let stack_dir = tmp.path().join("stack");
    stack(&stack_dir, "hello");
    server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]);
    for h in ["web-1", "web-2"] {
        let out = envoy_once(&edir(h), &root(h), &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let motd = |h: &str| std::fs::read_to_string(root(h).join("etc/motd")).unwrap();
    assert_eq!(motd("web-1"), "hello: nginx 1.22.1-9, 61 packages\n");
    wait_cold(&server, 2.0);

    // Read back from the snapshot: a deep query, `envoys show`, and a compile for a new stack.
    let listed = |condition: &str| -> Vec<String> {
        let list = server.cli_json(&["envoys", "list", "--where", condition]);
        list.as_array().unwrap().iter().map(|e| e["hostname"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(listed("packages.nginx.version=1.24.0-2"), ["web-2"]);
    assert_eq!(listed("packages.lib042 exists").len(), 2);
    let shown = server.cli_json(&["envoys", "show", "web-1"]);
    assert_eq!(shown["traits"]["packages"]["lib059"]["version"], "1.59", "{shown}");
    assert_eq!(shown["traits"]["packages"].as_object().unwrap().len(), 61);
    stack(&stack_dir, "good day");
    server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]);
    let out = envoy_once(&edir("web-2"), &root("web-2"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(motd("web-2"), "good day: nginx 1.24.0-2, 61 packages\n");

    // After a crash the lists stay on disk, and are read from there.
    let addr = server.addr.clone();
    server.kill();
    let server = Server::start_with(&server_dir, &addr, &flags);
    wait_cold(&server, 2.0);
    stack(&stack_dir, "after the crash");
    server.cli_ok(&["config", "publish", stack_dir.to_str().unwrap()]);
    let out = envoy_once(&edir("web-1"), &root("web-1"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(motd("web-1"), "after the crash: nginx 1.22.1-9, 61 packages\n");
    let shown = server.cli_json(&["envoys", "show", "web-2"]);
    assert_eq!(shown["traits"]["packages"]["nginx"]["version"], "1.24.0-2", "{shown}");
}
