//! The `docker` executor: one named container, through the `docker` command-line client and
//! whatever engine it talks to (`DOCKER_HOST`, or the local socket).
//!
//! Fields:
//! - `name`: the container's name, as docker allows it (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
//! - `image`: required unless `state: absent`. A reference like `nginx:1.25` or one pinned to a
//!   digest, `nginx@sha256:<64 hex>`. When the engine does not have it, it is pulled; an image
//!   already there is never pulled again, so a tag stays where it was first pulled: pin a digest
//!   to move it on purpose.
//! - `state`: `running` (the default), `stopped`, `present` or `absent`. `present` makes the
//!   container exist and leaves it running or not; `absent` removes the container (stopping it
//!   first) but never its image.
//! - `ports`: `[IP:][HOST_PORT]:CONTAINER_PORT[/tcp|udp|sctp]`, each as `docker create --publish`.
//! - `env`: the container's environment, a map of variable to value.
//! - `volumes`: `/HOST:/CONTAINER[:ro|rw]` bind mounts. The host side is a path under ROOT, like
//!   every managed path; named volumes are not supported.
//!
//! Drift: a container made here carries the label `vigo.spec=<sha256>`, the hash of what
//! defines it (image, ports, env, volumes; the order of ports and of volumes does not matter).
//! A container of that name whose label is missing or differs was made from another spec, or
//! by hand, and is removed and created anew (`recreated container web: spec changed`). Under
//! `present`, a recreated container is started again when the old one was running.
//!
//! ROOT: the engine is not under ROOT (containers are the engine's, whatever ROOT is); only the
//! host side of volumes is. Every argument list is built by a pure function and passed with
//! `--flag=value` forms and a `--` before positional arguments, so no value from the bundle is
//! ever read as an option.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{self, Finished};
use super::{Context, Outcome};
use crate::limits::{DOCKER_CHANGE_TIMEOUT_S, DOCKER_PULL_TIMEOUT_S, DOCKER_QUERY_TIMEOUT_S};
use crate::root::managed_path;

/// The label that carries the spec's hash.
pub const SPEC_LABEL: &str = "vigo.spec";

/// The stack fields of a docker resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerSpec {
    name: String,
    image: Option<String>,
    state: Option<String>,
    ports: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    volumes: Option<Vec<String>>,
}

/// The wanted state of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    Present,
    Absent,
}

/// A validated container definition: what `docker create` gets and what the label hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The container's name.
    pub name: String,
    /// The image reference, as given.
    pub image: String,
    /// `--publish` values, as given.
    pub ports: Vec<String>,
    /// The environment.
    pub env: BTreeMap<String, String>,
    /// `--volume` values, with the host side already under ROOT.
    pub volumes: Vec<String>,
}

/// What `docker container inspect` says about a container, as far as this executor cares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspected {
    /// The container id.
    pub id: String,
    /// The name with docker's leading `/`.
    pub name: String,
    /// Its run state.
    pub state: InspectedState,
    /// Its configuration.
    pub config: InspectedConfig,
}

/// `State` of an inspected container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectedState {
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
    pub status: String,
}

/// `Config` of an inspected container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectedConfig {
    /// The image reference it was created from.
    #[serde(default)]
    pub image: String,
    /// Its labels (the image's and its own); `null` when there are none.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl Inspected {
    /// The spec hash this executor labelled the container with, if any.
    pub fn spec_label(&self) -> Option<&str> {
        self.config.labels.as_ref()?.get(SPEC_LABEL).map(String::as_str)
    }

    /// Whether the container's processes exist (paused and restarting ones included).
    fn is_up(&self) -> bool {
        matches!(self.state.status.as_str(), "running" | "paused" | "restarting")
    }
}

/// Converges one docker resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: DockerSpec = serde_json::from_str(json).map_err(|err| format!("invalid docker spec: {err}"))?;
    check_container_name(&spec.name)?;
    let name = spec.name.as_str();
    let state = match spec.state.as_deref() {
        None | Some("running") => State::Running,
        Some("stopped") => State::Stopped,
        Some("present") => State::Present,
        Some("absent") => State::Absent,
        Some(other) => {
            return Err(format!(
                "docker {name}: invalid state {other:?} (expected running, stopped, present or absent)"
            ));
        }
    };
    if state == State::Absent {
        return absent(name, ctx.noop);
    }
    let container = container(&spec, ctx.root)?;
    let hash = spec_hash(&container);

    let mut changes = Vec::new();
    if !image_present(&container.image, name)? {
        if !ctx.noop {
            run_change(&pull_args(&container.image), DOCKER_PULL_TIMEOUT_S, name)?;
        }
        changes.push(format!("pulled image {}", shown_image(&container.image)));
    }
    match inspect_container(name)? {
        None => {
            let start = state == State::Running;
            if !ctx.noop {
                create(&container, &hash, start)?;
            }
            let after = if start { "running" } else { "not started" };
            changes.push(format!("created container {name} from {} ({after})", shown_image(&container.image)));
        }
        Some(have) if have.spec_label() != Some(hash.as_str()) => {
            let start = state == State::Running || (state == State::Present && have.is_up());
            if !ctx.noop {
                run_change(&remove_args(name), DOCKER_CHANGE_TIMEOUT_S, name)?;
                create(&container, &hash, start)?;
            }
            let after = if start { " (running)" } else { "" };
            changes.push(format!("recreated container {name}: spec changed{after}"));
        }
        Some(have) => {
            if let Some((args, done)) = run_state_change(&have, state) {
                if !ctx.noop {
                    run_change(&args, DOCKER_CHANGE_TIMEOUT_S, name)?;
                }
                changes.push(format!("{done} container {name} (was {})", have.state.status));
            }
        }
    }
    if changes.is_empty() { Ok(Outcome::Unchanged) } else { Ok(Outcome::Changed(changes.join("; "))) }
}

/// Removes the container if it exists; the image stays.
fn absent(name: &str, noop: bool) -> Result<Outcome, String> {
    if inspect_container(name)?.is_none() {
        return Ok(Outcome::Unchanged);
    }
    if !noop {
        run_change(&remove_args(name), DOCKER_CHANGE_TIMEOUT_S, name)?;
    }
    Ok(Outcome::Changed(format!("removed container {name}")))
}

/// Creates the container and, with `start`, starts it.
fn create(container: &Container, hash: &str, start: bool) -> Result<(), String> {
    run_change(&create_args(container, hash), DOCKER_CHANGE_TIMEOUT_S, &container.name)?;
    if start {
        run_change(&start_args(&container.name), DOCKER_CHANGE_TIMEOUT_S, &container.name)?;
    }
    Ok(())
}

/// Refuses what docker would not accept as a container name (and so anything that could be
/// read as an option or a path).
pub fn check_container_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = name.len() >= 2 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!("invalid container name {name:?}: docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]+"))
    }
}

/// Validates the fields that define the container; volume host paths are put under `root`.
fn container(spec: &DockerSpec, root: &Path) -> Result<Container, String> {
    let name = &spec.name;
    let Some(image) = spec.image.as_deref() else {
        return Err(format!("docker {name}: image is required unless state is absent"));
    };
    check_image(image).map_err(|err| format!("docker {name}: {err}"))?;
    let ports = spec.ports.clone().unwrap_or_default();
    for port in &ports {
        check_port(port).map_err(|err| format!("docker {name}: {err}"))?;
    }
    let env = spec.env.clone().unwrap_or_default();
    for (key, value) in &env {
        let key_ok = key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(format!("docker {name}: invalid environment variable name {key:?}"));
        }
        if value.contains('\0') {
            return Err(format!("docker {name}: environment variable {key} holds a NUL byte"));
        }
    }
    let volumes = spec
        .volumes
        .iter()
        .flatten()
        .map(|volume| volume_arg(volume, root).map_err(|err| format!("docker {name}: {err}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Container { name: name.clone(), image: image.to_string(), ports, env, volumes })
}

/// An image reference: `[registry[:port]/]repo[:tag][@sha256:<64 hex>]`, in the characters
/// references use; a digest must be a full sha256.
pub fn check_image(image: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._/:@-".contains(&b);
    if image.is_empty()
        || !image.bytes().all(allowed)
        || !image.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!("invalid image {image:?}: not an image reference"));
    }
    if let Some((repo, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if repo.is_empty() || !hex_ok {
            return Err(format!("invalid image {image:?}: a digest is @sha256: and 64 lowercase hex digits"));
        }
    }
    Ok(())
}

/// A `--publish` value: `[IP:][HOST_PORT]:CONTAINER_PORT[/tcp|udp|sctp]`, ports or ranges.
pub fn check_port(port: &str) -> Result<(), String> {
    let invalid = || format!("invalid port {port:?}: expected [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp|sctp]");
    let (mapping, protocol) = port.rsplit_once('/').unwrap_or((port, "tcp"));
    if !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(invalid());
    }
    let (host, container) = mapping.rsplit_once(':').unwrap_or(("", mapping));
    let (ip, host_port) = host.rsplit_once(':').unwrap_or(("", host));
    let ip = ip.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')).unwrap_or(ip);
    let ip_ok = ip.is_empty() || ip.parse::<IpAddr>().is_ok();
    let host_port_ok = host_port.is_empty() || is_port_or_range(host_port);
    if ip_ok && host_port_ok && is_port_or_range(container) { Ok(()) } else { Err(invalid()) }
}

fn is_port_or_range(text: &str) -> bool {
    let is_port =
        |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0);
    match text.split_once('-') {
        Some((low, high)) => is_port(low) && is_port(high) && low.parse::<u16>().ok() <= high.parse::<u16>().ok(),
        None => is_port(text),
    }
}

/// `/HOST:/CONTAINER[:ro|rw]` → the `--volume` value with HOST under `root`.
pub fn volume_arg(volume: &str, root: &Path) -> Result<String, String> {
    let parts: Vec<&str> = volume.split(':').collect();
    let (host, target, mode) = match parts.as_slice() {
        [host, target] => (*host, *target, None),
        [host, target, mode @ ("ro" | "rw")] => (*host, *target, Some(*mode)),
        _ => return Err(format!("invalid volume {volume:?}: expected /HOST:/CONTAINER[:ro|rw]")),
    };
    if !host.starts_with('/') {
        return Err(format!("invalid volume {volume:?}: the host side must be an absolute path (no named volumes)"));
    }
    let host = managed_path(root, host).map_err(|err| format!("invalid volume {volume:?}: {err}"))?;
    let Some(host) = host.to_str().filter(|host| !host.contains(':')) else {
        return Err(format!("invalid volume {volume:?}: the host path under ROOT is not UTF-8 without :"));
    };
    let target_ok = target.starts_with('/') && !target.split('/').any(|part| part == "..") && !target.contains('\0');
    if !target_ok {
        return Err(format!("invalid volume {volume:?}: the container side must be an absolute path without .."));
    }
    Ok(match mode {
        Some(mode) => format!("{host}:{target}:{mode}"),
        None => format!("{host}:{target}"),
    })
}

/// The hash the label carries: SHA-256 of a canonical JSON of the image, the sorted ports, the
/// environment and the sorted volumes. The name is not in it (it is the key), nor the state.
pub fn spec_hash(container: &Container) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        version: u32,
        image: &'a str,
        ports: Vec<&'a str>,
        env: &'a BTreeMap<String, String>,
        volumes: Vec<&'a str>,
    }
    let canonical = Canonical {
        version: 1,
        image: &container.image,
        ports: sorted(&container.ports),
        env: &container.env,
        volumes: sorted(&container.volumes),
    };
    // Serializing strings, a number and a string map cannot fail.
    let text = serde_json::to_string(&canonical).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn sorted(list: &[String]) -> Vec<&str> {
    let mut list: Vec<&str> = list.iter().map(String::as_str).collect();
    list.sort_unstable();
    list
}

/// `docker container create` with the label, the ports, the environment and the volumes.
pub fn create_args(container: &Container, hash: &str) -> Vec<String> {
    let mut args = vec![
        "container".to_string(),
        "create".to_string(),
        format!("--name={}", container.name),
        format!("--label={SPEC_LABEL}={hash}"),
    ];
    args.extend(container.ports.iter().map(|port| format!("--publish={port}")));
    args.extend(container.env.iter().map(|(key, value)| format!("--env={key}={value}")));
    args.extend(container.volumes.iter().map(|volume| format!("--volume={volume}")));
    args.extend(["--".to_string(), container.image.clone()]);
    args
}

/// `docker container inspect -- NAME`.
pub fn inspect_args(name: &str) -> Vec<String> {
    to_args(&["container", "inspect", "--", name])
}

/// `docker image inspect --format={{.Id}} -- IMAGE`.
pub fn image_inspect_args(image: &str) -> Vec<String> {
    to_args(&["image", "inspect", "--format={{.Id}}", "--", image])
}

/// `docker image pull --quiet -- IMAGE`.
pub fn pull_args(image: &str) -> Vec<String> {
    to_args(&["image", "pull", "--quiet", "--", image])
}

/// `docker container start -- NAME`.
pub fn start_args(name: &str) -> Vec<String> {
    to_args(&["container", "start", "--", name])
}

/// `docker container stop -- NAME`.
pub fn stop_args(name: &str) -> Vec<String> {
    to_args(&["container", "stop", "--", name])
}

/// `docker container unpause -- NAME`.
pub fn unpause_args(name: &str) -> Vec<String> {
    to_args(&["container", "unpause", "--", name])
}

/// `docker container rm --force -- NAME`: stops it if needed; its anonymous volumes and its
/// image stay.
pub fn remove_args(name: &str) -> Vec<String> {
    to_args(&["container", "rm", "--force", "--", name])
}

fn to_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// Reads `docker container inspect` output (a JSON array) for the container named `name`.
/// An empty array, or a container of another name (inspect also matches id prefixes), is none.
pub fn parse_inspect(json: &str, name: &str) -> Result<Option<Inspected>, String> {
    let containers: Vec<Inspected> =
        serde_json::from_str(json).map_err(|err| format!("docker {name}: cannot read docker inspect output: {err}"))?;
    let wanted = format!("/{name}");
    Ok(containers.into_iter().find(|container| container.name == wanted))
}

/// For a container already as specified: the change its run state needs, as arguments and
/// the past tense for the summary.
fn run_state_change(have: &Inspected, state: State) -> Option<(Vec<String>, &'static str)> {
    let name = have.name.trim_start_matches('/');
    match (state, have.state.status.as_str()) {
        (State::Running, "running" | "restarting") => None,
        (State::Running, "paused") => Some((unpause_args(name), "unpaused")),
        (State::Running, _) => Some((start_args(name), "started")),
        (State::Stopped, _) if have.is_up() => Some((stop_args(name), "stopped")),
        _ => None,
    }
}

/// An image reference for a summary: a digest is cut to its first 12 hex digits.
pub fn shown_image(image: &str) -> String {
    match image.split_once("@sha256:") {
        Some((repo, hex)) if hex.len() > 12 => format!("{repo}@sha256:{}…", &hex[..12]),
        _ => image.to_string(),
    }
}

/// Whether the engine has the image; any answer but "no such image" that is not a yes fails.
fn image_present(image: &str, name: &str) -> Result<bool, String> {
    let finished = docker(&image_inspect_args(image), DOCKER_QUERY_TIMEOUT_S)?;
    if finished.success() {
        return Ok(true);
    }
    if String::from_utf8_lossy(&finished.stderr_tail).contains("No such image") {
        return Ok(false);
    }
    Err(format!("docker {name}: image inspect {image}: {}", finished.describe_failure()))
}

/// The container named `name`, or none.
fn inspect_container(name: &str) -> Result<Option<Inspected>, String> {
    let finished = docker(&inspect_args(name), DOCKER_QUERY_TIMEOUT_S)?;
    if finished.success() {
        return parse_inspect(&finished.stdout(), name);
    }
    if String::from_utf8_lossy(&finished.stderr_tail).contains("No such container") {
        return Ok(None);
    }
    Err(format!("docker {name}: container inspect: {}", finished.describe_failure()))
}

/// Runs a docker command that changes something; a failure names the container and the verb.
fn run_change(args: &[String], timeout_s: u64, name: &str) -> Result<(), String> {
    let finished = docker(args, timeout_s)?;
    if finished.success() {
        return Ok(());
    }
    let verb = args.iter().take(2).map(String::as_str).collect::<Vec<_>>().join(" ");
    Err(format!("docker {name}: {verb}: {}", finished.describe_failure()))
}

fn docker(args: &[String], timeout_s: u64) -> Result<Finished, String> {
    let mut docker = Command::new("docker");
    docker.args(args).env("DOCKER_CLI_HINTS", "false");
    command::run(docker, "docker", Duration::from_secs(timeout_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real `docker container inspect` of an nginx container (engine 28).
    const INSPECT_SAMPLE: &str = r#"[
    {
        "Id": "5f3c1c2a9b8e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f",
        "Created": "2025-03-14T09:26:53.589793238Z",
        "Path": "/docker-entrypoint.sh",
        "Args": ["nginx", "-g", "daemon off;"],
        "State": {
            "Status": "running",
            "Running": true,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": 41213,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2025-03-14T09:26:54.120394857Z",
            "FinishedAt": "0001-01-01T00:00:00Z"
        },
        "Image": "sha256:a830707172e8069c09cf6c67a04e23e5a1a332d70a90a54999b76273a928b9ce",
        "ResolvConfPath": "/var/lib/docker/containers/5f3c1c2a9b8e/resolv.conf",
        "HostnamePath": "/var/lib/docker/containers/5f3c1c2a9b8e/hostname",
        "HostsPath": "/var/lib/docker/containers/5f3c1c2a9b8e/hosts",
        "LogPath": "/var/lib/docker/containers/5f3c1c2a9b8e/5f3c1c2a9b8e-json.log",
        "Name": "/web",
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "docker-default",
        "ExecIDs": null,
        "HostConfig": {
            "Binds": ["/srv/www:/usr/share/nginx/html:ro"],
            "NetworkMode": "bridge",
            "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "AutoRemove": false
        },
        "Mounts": [
            {
                "Type": "bind",
                "Source": "/srv/www",
                "Destination": "/usr/share/nginx/html",
                "Mode": "ro",
                "RW": false,
                "Propagation": "rprivate"
            }
        ],
        "Config": {
            "Hostname": "5f3c1c2a9b8e",
            "Domainname": "",
            "User": "",
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "ExposedPorts": {"80/tcp": {}},
            "Tty": false,
            "OpenStdin": false,
            "StdinOnce": false,
            "Env": ["GREETING=hello", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.27.4"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "Image": "nginx@sha256:124b44bfc9ccd1f3cedf4b592d4d1e8bddb78b51ec2ed5056c52d3692baebc19",
            "Volumes": null,
            "WorkingDir": "",
            "Entrypoint": ["/docker-entrypoint.sh"],
            "OnBuild": null,
            "Labels": {
                "maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>",
                "vigo.spec": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
            },
            "StopSignal": "SIGQUIT"
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "9c1b2a3d4e5f",
            "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]},
            "IPAddress": "172.17.0.2",
            "MacAddress": "02:42:ac:11:00:02",
            "Networks": {"bridge": {"IPAddress": "172.17.0.2", "Gateway": "172.17.0.1"}}
        }
    }
]"#;

    const DIGEST: &str = "124b44bfc9ccd1f3cedf4b592d4d1e8bddb78b51ec2ed5056c52d3692baebc19";

    fn web() -> Container {
        Container {
            name: "web".into(),
            image: format!("nginx@sha256:{DIGEST}"),
            ports: vec!["8080:80".into(), "127.0.0.1:8443:443/tcp".into()],
            env: BTreeMap::from([("GREETING".into(), "hello world".into()), ("A".into(), "x=y".into())]),
            volumes: vec!["/srv/www:/usr/share/nginx/html:ro".into()],
        }
    }

    #[test]
    fn inspect_output_is_read() {
        let inspected = parse_inspect(INSPECT_SAMPLE, "web").unwrap().unwrap();
        assert_eq!(inspected.name, "/web");
        assert!(inspected.id.starts_with("5f3c1c2a9b8e"));
        assert_eq!(inspected.state.status, "running");
        assert!(inspected.is_up());
        assert_eq!(inspected.config.image, format!("nginx@sha256:{DIGEST}"));
        assert_eq!(inspected.spec_label(), Some("0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"));
        assert_eq!(run_state_change(&inspected, State::Running), None);
        assert_eq!(run_state_change(&inspected, State::Present), None);
        assert_eq!(run_state_change(&inspected, State::Stopped), Some((stop_args("web"), "stopped")));
    }

    #[test]
    fn inspect_edge_cases() {
        // What a failed inspect prints on stdout.
        assert_eq!(parse_inspect("[]", "web").unwrap(), None);
        // Inspect also matches an id prefix: a container of another name is not this one.
        assert_eq!(parse_inspect(INSPECT_SAMPLE, "5f3c").unwrap(), None);
        // A container without labels has `"Labels": null`.
        let unlabelled = INSPECT_SAMPLE.replace(r#""Status": "running""#, r#""Status": "exited""#).replace(
            r#""Labels": {
                "maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>",
                "vigo.spec": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
            }"#,
            r#""Labels": null"#,
        );
        let inspected = parse_inspect(&unlabelled, "web").unwrap().unwrap();
        assert_eq!(inspected.spec_label(), None);
        assert!(!inspected.is_up());
        assert_eq!(run_state_change(&inspected, State::Running), Some((start_args("web"), "started")));
        assert_eq!(run_state_change(&inspected, State::Stopped), None);
        let paused = INSPECT_SAMPLE.replace(r#""Status": "running""#, r#""Status": "paused""#);
        let inspected = parse_inspect(&paused, "web").unwrap().unwrap();
        assert_eq!(run_state_change(&inspected, State::Running), Some((unpause_args("web"), "unpaused")));
        assert!(parse_inspect("{not json", "web").unwrap_err().starts_with("docker web: cannot read docker inspect"));
    }

    #[test]
    fn create_arguments() {
        let container = web();
        assert_eq!(
            create_args(&container, "abc123"),
            vec![
                "container",
                "create",
                "--name=web",
                "--label=vigo.spec=abc123",
                "--publish=8080:80",
                "--publish=127.0.0.1:8443:443/tcp",
                "--env=A=x=y",
                "--env=GREETING=hello world",
                "--volume=/srv/www:/usr/share/nginx/html:ro",
                "--",
                &format!("nginx@sha256:{DIGEST}"),
            ]
        );
        let bare =
            Container { ports: vec![], env: BTreeMap::new(), volumes: vec![], image: "nginx:1.27".into(), ..web() };
        assert_eq!(
            create_args(&bare, "h"),
            vec!["container", "create", "--name=web", "--label=vigo.spec=h", "--", "nginx:1.27"]
        );
        assert_eq!(remove_args("web"), vec!["container", "rm", "--force", "--", "web"]);
        assert_eq!(pull_args("nginx:1"), vec!["image", "pull", "--quiet", "--", "nginx:1"]);
        assert_eq!(image_inspect_args("nginx:1"), vec!["image", "inspect", "--format={{.Id}}", "--", "nginx:1"]);
        assert_eq!(inspect_args("web"), vec!["container", "inspect", "--", "web"]);
    }

    #[test]
    fn spec_hash_follows_the_definition_not_its_order() {
        let base = spec_hash(&web());
        assert_eq!(base.len(), 64);
        assert_eq!(spec_hash(&web()), base);
        let reordered = Container { ports: web().ports.into_iter().rev().collect(), ..web() };
        assert_eq!(spec_hash(&reordered), base);
        let renamed = Container { name: "web2".into(), ..web() };
        assert_eq!(spec_hash(&renamed), base);
        let other_image = Container { image: "nginx:1.27".into(), ..web() };
        assert_ne!(spec_hash(&other_image), base);
        let mut other_env = web();
        other_env.env.insert("GREETING".into(), "hi".into());
        assert_ne!(spec_hash(&other_env), base);
        let rw = Container { volumes: vec!["/srv/www:/usr/share/nginx/html".into()], ..web() };
        assert_ne!(spec_hash(&rw), base);
        let fewer_ports = Container { ports: vec!["8080:80".into()], ..web() };
        assert_ne!(spec_hash(&fewer_ports), base);
    }

    #[test]
    fn names_images_ports_and_volumes_are_checked() {
        for good in ["web", "my-app_1.blue", "0x"] {
            assert!(check_container_name(good).is_ok(), "{good}");
        }
        for bad in ["", "w", "-web", "_web", "web/x", "web app", "wéb"] {
            assert!(check_container_name(bad).is_err(), "{bad:?}");
        }
        for good in ["nginx", "nginx:1.27", "registry.example.org:5000/team/app:v2", &format!("nginx@sha256:{DIGEST}")]
        {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        for bad in ["", "-nginx", "nginx latest", "nginx@sha256:abc", "nginx@md5:00", "@sha256:00", "ngin\nx"] {
            assert!(check_image(bad).is_err(), "{bad:?}");
        }
        for good in ["8080:80", "80", "127.0.0.1:8080:80", "127.0.0.1::80", "[::1]:53:53/udp", "8000-8010:8000-8010"] {
            assert_eq!(check_port(good), Ok(()), "{good}");
        }
        for bad in ["", "0:80", "8080:", "99999:80", "web:80", "8080:80/icmp", "-p", "8010-8000:80", "1.2.3:80:80"] {
            assert!(check_port(bad).is_err(), "{bad:?}");
        }
        let root = Path::new("/sandbox");
        assert_eq!(
            volume_arg("/srv/www:/usr/share/nginx/html:ro", root).unwrap(),
            "/sandbox/srv/www:/usr/share/nginx/html:ro"
        );
        assert_eq!(volume_arg("/data:/data", Path::new("/")).unwrap(), "/data:/data");
        for bad in ["data:/data", "/a", "/a:/b:rx", "/a:b", "/../etc:/x", "/a:/b/../c", "/a:/b:ro:x"] {
            assert!(volume_arg(bad, root).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_are_shortened_in_summaries() {
        assert_eq!(shown_image(&format!("nginx@sha256:{DIGEST}")), "nginx@sha256:124b44bfc9cc…");
        assert_eq!(shown_image("nginx:1.27"), "nginx:1.27");
    }

    #[test]
    fn specs_are_validated_before_docker_runs() {
        let ctx = Context { root: Path::new("/nonexistent"), noop: true, refresh: false };
        let failed = |json: &str| match apply(json, &ctx) {
            Outcome::Failed(message) => message,
            other => panic!("{json}: {other:?}"),
        };
        assert!(failed(r#"{"name":"web","image":"nginx","colour":"red"}"#).starts_with("invalid docker spec:"));
        assert!(failed(r#"{"name":"w b","image":"nginx"}"#).starts_with("invalid container name"));
        assert_eq!(failed(r#"{"name":"web"}"#), "docker web: image is required unless state is absent");
        assert_eq!(
            failed(r#"{"name":"web","image":"nginx","state":"paused"}"#),
            "docker web: invalid state \"paused\" (expected running, stopped, present or absent)"
        );
        assert_eq!(
            failed(r#"{"name":"web","image":"nginx","env":{"BAD-NAME":"x"}}"#),
            "docker web: invalid environment variable name \"BAD-NAME\""
        );
        assert!(failed(r#"{"name":"web","image":"nginx","ports":["eighty"]}"#).starts_with("docker web: invalid port"));
    }
}
