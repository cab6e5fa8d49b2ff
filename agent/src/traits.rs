//! Traits: facts about the host sent to the server when their hash changes, usable in
//! templates, `assign.yaml` conditions and `vigocli envoys list --where`.
//!
//! The tree: `hostname`, `fqdn`, `os` (family, id, name, release, codename), `kernel` (name,
//! release, arch), `cpu` (count, model), `memory.total_bytes`, `ips` (IPv4 and global IPv6),
//! `packages` (dpkg's installed packages: name → version, arch), `services` (systemd units
//! enabled under `/etc/systemd/system`) and `users` (`/etc/passwd`). Everything is read from
//! files, sorted, so the same host gives the same bytes and the same hash every time: traits
//! are sent again only when something changed.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Collects the traits of this host.
pub fn collect(hostname: &str) -> Value {
    collect_from(Path::new("/"), hostname)
}

/// Collects the traits of the host whose `/etc`, `/proc` and `/var` are under `root`.
pub fn collect_from(root: &Path, hostname: &str) -> Value {
    collect_with(root, root, hostname)
}

/// Collects the traits of the host the envoy manages under `root` (`envoy run --root`): its
/// files (os-release, the package database, accounts, units) from under `root`, as the
/// executors see them, and what the kernel reports (CPU, memory, addresses) from the running
/// kernel's `/proc`.
pub fn collect_managed(root: &Path, hostname: &str) -> Value {
    collect_with(root, Path::new("/"), hostname)
}

fn collect_with(root: &Path, kernel_root: &Path, hostname: &str) -> Value {
    let read = |rel: &str| {
        let base = if rel.starts_with("proc/") { kernel_root } else { root };
        std::fs::read_to_string(base.join(rel)).unwrap_or_default()
    };
    let os_release = read("etc/os-release");
    let field = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let family = match field("ID_LIKE") {
        like if like.is_empty() => field("ID"),
        like => like,
    };
    let domain = read("proc/sys/kernel/domainname").trim().to_string();
    let fqdn =
        if domain.is_empty() || domain == "(none)" { hostname.to_string() } else { format!("{hostname}.{domain}") };
    let cpuinfo = read("proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("", |v| v.trim_start_matches([' ', '\t', ':']));
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let memory_kb: u64 = read("proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "hostname": hostname,
        "fqdn": fqdn,
        "os": {
            "family": family,
            "id": field("ID"),
            "name": field("NAME"),
            "release": field("VERSION_ID"),
            "codename": field("VERSION_CODENAME"),
        },
        "kernel": { "name": "Linux", "release": read("proc/sys/kernel/osrelease").trim(), "arch": std::env::consts::ARCH },
        "cpu": { "count": cpus.max(1), "model": cpu_model },
        "memory": { "total_bytes": memory_kb * 1024 },
        "ips": ips(&read("proc/net/fib_trie"), &read("proc/net/if_inet6")),
        "packages": packages(&read("var/lib/dpkg/status")),
        "services": services(&root.join("etc/systemd/system")),
        "users": users(&read("etc/passwd")),
        "arch": std::env::consts::ARCH,
    })
}

/// Installed packages from dpkg's status file: name → version and architecture.
fn packages(status: &str) -> Value {
    let mut out = serde_json::Map::new();
    for paragraph in status.split("\n\n") {
        let get = |key: &str| paragraph.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        let (Some(name), Some(version)) = (get("Package:"), get("Version:")) else { continue };
        if get("Status:").is_some_and(|s| s.ends_with(" installed")) {
            out.insert(name.to_string(), json!({ "version": version, "arch": get("Architecture:").unwrap_or("") }));
        }
    }
    Value::Object(out)
}

/// Units enabled under `/etc/systemd/system` (linked into a `*.wants` directory), sorted.
fn services(dir: &Path) -> Value {
    let mut names = std::collections::BTreeSet::new();
    for wants in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !wants.file_name().to_string_lossy().ends_with(".wants") {
            continue;
        }
        for unit in std::fs::read_dir(wants.path()).into_iter().flatten().flatten() {
            let name = unit.file_name().to_string_lossy().into_owned();
            if let Some(service) = name.strip_suffix(".service") {
                names.insert(service.to_string());
            }
        }
    }
    names.into_iter().map(|name| json!({ "name": name, "enabled": true })).collect()
}

/// Accounts from `/etc/passwd`, in file order.
fn users(passwd: &str) -> Value {
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let [name, _, uid, gid, _, home, shell] = f.as_slice() else { return None };
            let (uid, gid): (u32, u32) = (uid.parse().ok()?, gid.parse().ok()?);
            Some(json!({ "name": name, "uid": uid, "gid": gid, "home": home, "shell": shell }))
        })
        .collect()
}

/// The host's addresses, loopback and link-local left out, sorted: IPv4 from the kernel's
/// routing trie (`/proc/net/fib_trie`, the `/32 host LOCAL` entries), IPv6 from
/// `/proc/net/if_inet6`.
fn ips(fib_trie: &str, if_inet6: &str) -> Value {
    let mut out = std::collections::BTreeSet::new();
    let lines: Vec<&str> = fib_trie.lines().collect();
    for pair in lines.windows(2) {
        let (Some(addr), true) = (pair[0].trim().strip_prefix("|-- "), pair[1].contains("/32 host LOCAL")) else {
            continue;
        };
        if let Ok(ip) = addr.parse::<Ipv4Addr>()
            && !ip.is_loopback()
            && !ip.is_link_local()
        {
            out.insert(ip.to_string());
        }
    }
    for line in if_inet6.lines() {
        let Some(hex) = line.split_whitespace().next().filter(|h| h.len() == 32) else { continue };
        let Ok(bits) = u128::from_str_radix(hex, 16) else { continue };
        let ip = Ipv6Addr::from(bits);
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        if !ip.is_loopback() && !link_local {
            out.insert(ip.to_string());
        }
    }
    out.into_iter().collect()
}

/// Serializes traits canonically and hashes them (SHA-256).
pub fn canonical(traits: &Value) -> (String, Vec<u8>) {
    let text = serde_json::to_string(traits).expect("JSON values always serialize");
    let hash = Sha256::digest(text.as_bytes()).to_vec();
    (text, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A host's files under a temporary root.
    fn host() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "etc/os-release",
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n",
        );
        write(root, "proc/sys/kernel/osrelease", "6.1.0-28-amd64\n");
        write(root, "proc/sys/kernel/domainname", "(none)\n");
        write(
            root,
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n",
        );
        write(root, "proc/meminfo", "MemTotal:       24576000 kB\nMemFree: 1 kB\n");
        write(
            root,
            "proc/net/fib_trie",
            "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.5\n        /32 host LOCAL\n     |-- 10.0.0.0\n        /24 link UNICAST\n     |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.0.0.5\n        /32 host LOCAL\n",
        );
        write(
            root,
            "proc/net/if_inet6",
            "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000002 04 40 00 82     eth0\n",
        );
        write(
            root,
            "var/lib/dpkg/status",
            "Package: nginx\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.22.1-9\n\nPackage: old\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n",
        );
        write(
            root,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nbroken line\nops:x:1000:1000:Ops:/home/ops:/bin/zsh\n",
        );
        write(root, "etc/systemd/system/multi-user.target.wants/ssh.service", "");
        write(root, "etc/systemd/system/multi-user.target.wants/cron.service", "");
        write(root, "etc/systemd/system/timers.target.wants/fstrim.timer", "");
        write(root, "etc/systemd/system/not-a-wants/ignored.service", "");
        dir
    }

    #[test]
    fn the_catalogue_is_read_from_the_hosts_files() {
        let dir = host();
        let traits = collect_from(dir.path(), "web-1");
        assert_eq!(traits["fqdn"], "web-1");
        assert_eq!(
            traits["os"],
            json!({"family": "debian", "id": "debian", "name": "Debian GNU/Linux", "release": "12", "codename": "bookworm"})
        );
        assert_eq!(traits["kernel"]["release"], "6.1.0-28-amd64");
        assert_eq!(traits["cpu"], json!({"count": 2, "model": "AMD EPYC"}));
        assert_eq!(traits["memory"]["total_bytes"], 24_576_000u64 * 1024);
        assert_eq!(traits["ips"], json!(["10.0.0.5", "fd00::2"]), "loopback and link-local left out, once each");
        assert_eq!(
            traits["packages"],
            json!({"bash": {"version": "5.2.15-2+b7", "arch": "amd64"}, "nginx": {"version": "1.22.1-9", "arch": "amd64"}}),
            "only installed packages"
        );
        assert_eq!(traits["services"], json!([{"name": "cron", "enabled": true}, {"name": "ssh", "enabled": true}]));
        assert_eq!(
            traits["users"][1],
            json!({"name": "ops", "uid": 1000, "gid": 1000, "home": "/home/ops", "shell": "/bin/zsh"})
        );
        assert_eq!(traits["users"].as_array().unwrap().len(), 2, "a malformed line is skipped");
    }

    #[test]
    fn a_managed_root_gives_its_files_and_the_running_kernel_its_facts() {
        let dir = host();
        let traits = collect_managed(dir.path(), "web-1");
        assert_eq!(traits["packages"]["nginx"]["version"], "1.22.1-9", "the root's package database");
        assert_eq!(traits["os"]["codename"], "bookworm", "the root's os-release");
        assert_eq!(traits["users"][1]["name"], "ops", "the root's accounts");
        let running = collect_from(Path::new("/"), "web-1");
        assert_eq!(traits["kernel"], running["kernel"], "the running kernel, not the root's proc");
        assert_eq!(traits["memory"], running["memory"]);
    }

    #[test]
    fn the_same_host_hashes_the_same_and_a_new_package_changes_the_hash() {
        let dir = host();
        let (text, hash) = canonical(&collect_from(dir.path(), "web-1"));
        assert_eq!(canonical(&collect_from(dir.path(), "web-1")), (text, hash.clone()));
        let status = std::fs::read_to_string(dir.path().join("var/lib/dpkg/status")).unwrap();
        write(
            dir.path(),
            "var/lib/dpkg/status",
            &format!("{status}\nPackage: curl\nStatus: install ok installed\nVersion: 7.88\n"),
        );
        assert_ne!(canonical(&collect_from(dir.path(), "web-1")).1, hash);
    }

    #[test]
    fn a_host_without_these_files_still_has_traits() {
        let dir = tempfile::tempdir().unwrap();
        let traits = collect_from(dir.path(), "bare");
        assert_eq!(traits["hostname"], "bare");
        assert_eq!(traits["packages"], json!({}));
        assert_eq!(traits["cpu"]["count"], 1);
    }
}
