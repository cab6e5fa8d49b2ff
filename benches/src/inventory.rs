//! Synthetic but realistic host inventories for `fakefleet`.
//!
//! The base is a real package list (`data/packages.tsv`, every package of a Debian 12 host
//! as `dpkg-query` lists it). Each synthetic host varies it deterministically from its
//! index: a few packages missing, some at newer versions, a few host-specific packages, its
//! own addresses, mounts and users. So hosts share most of their inventory, as real fleets do,
//! yet no two hash alike. The document is canonical JSON (keys sorted), ~150 KB.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The real package list the inventories derive from.
const PACKAGES_TSV: &str = include_str!("../data/packages.tsv");

/// One package line of the base list.
struct Package<'a> {
    name: &'a str,
    version: &'a str,
    arch: &'a str,
    installed_kb: u64,
    section: &'a str,
    source: &'a str,
    summary: &'a str,
}

fn packages() -> impl Iterator<Item = Package<'static>> {
    PACKAGES_TSV.lines().filter_map(|line| {
        let mut f = line.split('\t');
        Some(Package {
            name: f.next()?,
            version: f.next()?,
            arch: f.next()?,
            installed_kb: f.next()?.parse().unwrap_or(0),
            section: f.next()?,
            source: f.next()?,
            summary: f.next().unwrap_or(""),
        })
    })
}

/// A small deterministic generator (SplitMix64), so host `i` always gets the same inventory.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The inventory of synthetic host `index` named `hostname`, as canonical JSON, and its SHA-256.
pub fn for_host(index: u32, hostname: &str) -> (String, [u8; 32]) {
    let mut mix = Mix(u64::from(index).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let mut pkgs = Map::new();
    for p in packages() {
        if mix.chance(3) {
            continue; // not installed on this host
        }
        let version =
            if mix.chance(8) { format!("{}+deb12u{}", p.version, 1 + mix.next() % 4) } else { p.version.into() };
        pkgs.insert(
            p.name.into(),
            json!({
                "version": version,
                "arch": p.arch,
                "installed_kb": p.installed_kb,
                "section": p.section,
                "source": p.source,
                "summary": p.summary,
                "status": "installed",
            }),
        );
    }
    for k in 0..(8 + mix.next() % 16) {
        let name = format!("site-app-{}", (mix.next() % 400) + k);
        pkgs.insert(
            name.clone(),
            json!({
                "version": format!("{}.{}.{}-1", mix.next() % 5, mix.next() % 20, mix.next() % 50),
                "arch": "amd64", "installed_kb": mix.next() % 50_000, "section": "local", "source": name,
                "summary": "in-house application", "status": "installed",
            }),
        );
    }
    let services: Vec<Value> =
        ["cron", "ssh", "rsyslog", "systemd-journald", "systemd-timesyncd", "nginx", "postgresql"]
            .iter()
            .chain(["docker", "containerd", "node-exporter", "unattended-upgrades", "apparmor", "dbus"].iter())
            .filter(|_| !mix.chance(15))
            .map(|s| json!({ "name": s, "enabled": true, "state": "running" }))
            .collect();
    let users: Vec<Value> = (0..(20 + mix.next() % 20))
        .map(|u| {
            json!({ "name": format!("user{u}"), "uid": 1000 + u, "gid": 1000 + u, "home": format!("/home/user{u}"), "shell": "/bin/bash" })
        })
        .collect();
    let octet = |m: &mut Mix| m.next() % 254 + 1;
    let ips = vec![
        format!("10.{}.{}.{}", (index >> 16) & 0xff, (index >> 8) & 0xff, index & 0xff),
        format!("172.16.{}.{}", octet(&mut mix), octet(&mut mix)),
    ];
    let mounts: Vec<Value> = ["/", "/boot", "/var", "/srv", "/home"]
        .iter()
        .map(|m| json!({ "path": m, "fs": "ext4", "size_bytes": (mix.next() % 500 + 10) << 30 }))
        .collect();
    let doc = json!({
        "hostname": hostname,
        "fqdn": format!("{hostname}.fleet.example.com"),
        "os": { "family": "debian", "name": "Debian GNU/Linux", "release": "12", "codename": "bookworm" },
        "kernel": { "name": "Linux", "release": format!("6.1.0-{}-amd64", 20 + mix.next() % 8), "arch": "x86_64" },
        "cpu": { "count": 2 << (mix.next() % 5), "model": "Intel(R) Xeon(R) CPU" },
        "memory": { "total_bytes": (4u64 << (mix.next() % 6)) << 30 },
        "ips": ips,
        "mounts": mounts,
        "packages": pkgs,
        "services": services,
        "users": users,
    });
    let text = doc.to_string();
    let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    (text, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventory_is_about_150_kb_and_canonical() {
        let (text, hash) = for_host(7, "fleet-7");
        assert!((120_000..200_000).contains(&text.len()), "{} bytes", text.len());
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.to_string(), text, "keys are sorted, so re-serializing gives the same bytes");
        assert!(parsed["packages"].as_object().unwrap().len() > 600);
        assert_eq!(for_host(7, "fleet-7").1, hash, "deterministic per host");
    }

    #[test]
    fn hosts_differ_but_share_most_packages() {
        let a: Value = serde_json::from_str(&for_host(1, "a").0).unwrap();
        let b: Value = serde_json::from_str(&for_host(2, "b").0).unwrap();
        let (pa, pb) = (a["packages"].as_object().unwrap(), b["packages"].as_object().unwrap());
        let shared = pa.keys().filter(|k| pb.contains_key(*k)).count();
        assert!(shared * 10 > pa.len() * 9, "{shared} of {} shared", pa.len());
        assert_ne!(for_host(1, "a").1, for_host(2, "b").1);
    }
}
