//! Traits: facts about the host sent to the server when their hash changes, usable in
//! templates and `assign.yaml` conditions. The fuller catalogue (packages, services, users)
//! comes with the fleet work; this set is what the skeleton's stacks need.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Collects the traits of this host, as seen under `root`'s perspective of identity.
pub fn collect(hostname: &str) -> Value {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "hostname": hostname,
        "os": {
            "family": if field("ID_LIKE").is_empty() { field("ID") } else { field("ID_LIKE") },
            "id": field("ID"),
            "release": field("VERSION_ID"),
        },
        "kernel": { "release": kernel.trim() },
        "cpu": { "count": cpus },
        "arch": std::env::consts::ARCH,
    })
}

/// Canonical JSON text of `traits` (object keys sorted) and its SHA-256.
pub fn canonical(traits: &Value) -> (String, Vec<u8>) {
    let text = serde_json::to_string(traits).expect("JSON values always serialize");
    let hash = Sha256::digest(text.as_bytes()).to_vec();
    (text, hash)
}
