//! The `docker` executor against the real `docker` client. Without an engine (as on a build
//! machine with only the client), a resource fails in one line carrying the client's own reason,
//! and the real cycle is skipped. With an engine, the cycle runs on an image already there (a
//! test never pulls): create, converge, noop, drift and recreation, stop, removal; the container
//! gets a name of its own and is removed at the end, whatever happens.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigo_agent::executors::Outcome;

/// How long the test's own docker commands may take.
const DOCKER_TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `docker ARGS` for the test's own checks: success, stdout and the last stderr line.
fn docker(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the docker client runs");
    let deadline = Instant::now() + DOCKER_TEST_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, String::new(), format!("docker {args:?} timed out"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().map(str::trim).rfind(|line| !line.is_empty()).unwrap_or("").to_string();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_string(), last)
}

/// `Err(last line)` when no engine answers `docker info`.
fn engine() -> Result<(), String> {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        (true, _, _) => Ok(()),
        (false, _, last) => Err(last),
    }
}

fn run(root: &std::path::Path, json: &serde_json::Value, noop: bool) -> Outcome {
    common::apply_json("docker", json["name"].as_str().unwrap_or_default(), root, json, noop, false)
}

#[test]
fn without_an_engine_a_resource_fails_in_one_line() {
    let Err(reason) = engine() else {
        println!("skipped: a docker engine answers, so its absence cannot be tested here");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    for state in ["running", "absent"] {
        let json = serde_json::json!({"name": "vigo-test-web", "image": "nginx:1.27", "state": state,
            "volumes": ["/srv/www:/usr/share/nginx/html:ro"]});
        let Outcome::Failed(message) = run(root.path(), &json, false) else { panic!("{state}: did not fail") };
        assert!(message.starts_with("docker vigo-test-web: "), "{message}");
        assert!(message.ends_with(&reason), "{message} does not carry {reason:?}");
        assert!(!message.contains('\n'), "{message}");
    }
    // The volume's host directory was not made: nothing was done.
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

/// Removes the test's container however the test ends.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = docker(&["container", "rm", "--force", "--", &self.0]);
    }
}

/// The container's run status and its spec label.
fn inspect(name: &str) -> Option<(String, String)> {
    let (ok, stdout, _) =
        docker(&["container", "inspect", "--format", "{{.State.Status}} {{index .Config.Labels \"vigo.spec\"}}", name]);
    ok.then(|| {
        let (status, label) = stdout.split_once(' ').unwrap_or((&stdout, ""));
        (status.to_string(), label.to_string())
    })
}

#[test]
fn real_cycle_on_a_local_image() {
    if let Err(reason) = engine() {
        println!("skipped: no docker engine answers: {reason}");
        return;
    }
    let (_, images, _) = docker(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]);
    let Some(image) = images.lines().find(|image| !image.contains("<none>")).map(str::to_string) else {
        println!("skipped: no image is present and tests never pull");
        return;
    };
    let name = format!("vigo-test-{}", std::process::id());
    let _guard = ContainerGuard(name.clone());
    let root = tempfile::tempdir().unwrap();
    let stopped = serde_json::json!({"name": name, "image": image, "state": "stopped",
        "env": {"GREETING": "hello"}, "ports": ["127.0.0.1::80"], "volumes": ["/data:/data:ro"]});

    // Noop says what the real run does, and creates nothing.
    let would = run(root.path(), &stopped, true);
    assert_eq!(would, Outcome::Changed(format!("created container {name} from {image} (not started)")));
    assert_eq!(inspect(&name), None);
    assert_eq!(run(root.path(), &stopped, false), would);
    let (status, label) = inspect(&name).expect("the container exists");
    assert_eq!(status, "created");
    assert_eq!(label.len(), 64, "{label}");
    let (_, env, _) = docker(&["container", "inspect", "--format", "{{json .Config.Env}}", &name]);
    assert!(env.contains("\"GREETING=hello\""), "{env}");
    let (_, binds, _) = docker(&["container", "inspect", "--format", "{{json .HostConfig.Binds}}", &name]);
    assert!(binds.contains(&format!("{}:/data:ro", root.path().join("data").display())), "{binds}");

    // Converged: unchanged, in noop too.
    assert_eq!(run(root.path(), &stopped, false), Outcome::Unchanged);
    assert_eq!(run(root.path(), &stopped, true), Outcome::Unchanged);

    // Drift: another environment recreates it, with a new label.
    let changed = serde_json::json!({"name": name, "image": image, "state": "stopped",
        "env": {"GREETING": "bye"}, "ports": ["127.0.0.1::80"], "volumes": ["/data:/data:ro"]});
    let summary = format!("recreated container {name}: spec changed");
    assert_eq!(run(root.path(), &changed, true), Outcome::Changed(summary.clone()));
    assert_eq!(inspect(&name).unwrap().1, label);
    assert_eq!(run(root.path(), &changed, false), Outcome::Changed(summary));
    let (status, new_label) = inspect(&name).unwrap();
    assert_eq!(status, "created");
    assert_ne!(new_label, label);
    assert_eq!(run(root.path(), &changed, false), Outcome::Unchanged);

    // Running starts it (the image's own command may exit at once; that it started is what counts).
    let running = serde_json::json!({"name": name, "image": image,
        "env": {"GREETING": "bye"}, "ports": ["127.0.0.1::80"], "volumes": ["/data:/data:ro"]});
    let summary = format!("started container {name} (was created)");
    assert_eq!(run(root.path(), &running, true), Outcome::Changed(summary.clone()));
    assert_eq!(run(root.path(), &running, false), Outcome::Changed(summary));
    let (_, started_at, _) = docker(&["container", "inspect", "--format", "{{.State.StartedAt}}", &name]);
    assert!(!started_at.starts_with("0001-"), "{started_at}");

    // Absent removes the container and keeps the image.
    let absent = serde_json::json!({"name": name, "state": "absent"});
    let summary = format!("removed container {name}");
    assert_eq!(run(root.path(), &absent, true), Outcome::Changed(summary.clone()));
    assert!(inspect(&name).is_some());
    assert_eq!(run(root.path(), &absent, false), Outcome::Changed(summary));
    assert_eq!(inspect(&name), None);
    assert!(docker(&["image", "inspect", "--", &image]).0, "the image stays");
    assert_eq!(run(root.path(), &absent, false), Outcome::Unchanged);
}
