//! The `exec` executor: runs `sh -c COMMAND`, guarded so that a converged host runs nothing.
//!
//! Guards, in order: `refreshonly` (run only when a notifying resource changed this run),
//! `creates` (skip when that path exists under ROOT), `onlyif` (run only when that command exits
//! 0), `unless` (skip when that command exits 0). Guard commands are checks, so they run in noop
//! mode too and must not change anything. A notification to an exec that is not `refreshonly`
//! adds nothing: it runs once whenever its guards let it.
//!
//! Commands run in their own process group, so a timeout kills the whole pipeline and not just
//! the shell. Stdin and stdout are /dev/null; the tail of stderr is kept for the failure message.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use vigo_proto::bundle::ExecSpec;

use super::{Context, Outcome, io_failure};
use crate::limits::{EXEC_STDERR_TAIL_BYTES, EXEC_TIMEOUT_DEFAULT_S};
use crate::root::managed_path;

/// How long to wait for stderr to close after the command exited. A daemon started by the
/// command may hold it open forever; the run must not wait for that.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// How often a running command is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Converges one exec resource.
pub fn apply(spec: &ExecSpec, ctx: &Context<'_>) -> Outcome {
    converge(spec, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(spec: &ExecSpec, ctx: &Context<'_>) -> Result<Outcome, String> {
    if spec.command.trim().is_empty() {
        return Err("exec has an empty command".into());
    }
    if spec.refreshonly && !ctx.refresh {
        return Ok(Outcome::Unchanged);
    }
    if !spec.creates.is_empty() {
        let creates = managed_path(ctx.root, &spec.creates).map_err(|err| format!("creates: {err}"))?;
        if creates.symlink_metadata().is_ok() {
            return Ok(Outcome::Unchanged);
        }
    }
    let runner = Runner::new(spec, ctx.root)?;
    if !spec.onlyif.is_empty() && !runner.run(&spec.onlyif).map_err(|e| format!("onlyif: {e}"))?.success() {
        return Ok(Outcome::Unchanged);
    }
    if !spec.unless.is_empty() && runner.run(&spec.unless).map_err(|e| format!("unless: {e}"))?.success() {
        return Ok(Outcome::Unchanged);
    }
    if ctx.noop {
        return Ok(Outcome::Changed(format!("would run: {}", spec.command)));
    }
    let finished = runner.run(&spec.command)?;
    if finished.success() {
        Ok(Outcome::Changed(format!("ran: {}", spec.command)))
    } else {
        Err(finished.describe_failure())
    }
}

/// Where and how an exec's commands run: the same for the command and its guards.
struct Runner<'a> {
    spec: &'a ExecSpec,
    root: &'a Path,
    cwd: PathBuf,
    timeout_s: u32,
}

/// A command that ran to its end.
struct Finished {
    status: ExitStatus,
    stderr_tail: Vec<u8>,
}

impl<'a> Runner<'a> {
    fn new(spec: &'a ExecSpec, root: &'a Path) -> Result<Runner<'a>, String> {
        let cwd = if spec.cwd.is_empty() {
            root.to_path_buf()
        } else {
            managed_path(root, &spec.cwd).map_err(|err| format!("cwd: {err}"))?
        };
        let timeout_s = match spec.timeout_s {
            0 => EXEC_TIMEOUT_DEFAULT_S,
            n => n,
        };
        Ok(Runner { spec, root, cwd, timeout_s })
    }

    /// Runs `sh -c command` to its end or its timeout (an error, after killing its group).
    fn run(&self, command: &str) -> Result<Finished, String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.cwd)
            .envs(&self.spec.environment)
            .env("VIGO_ROOT", self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|err| io_failure("start sh in", &self.cwd, &err))?;

        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed_rx) = mpsc::channel();
        if let Some(mut stderr) = child.stderr.take() {
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                    tail.extend_from_slice(&chunk[..n]);
                    let excess = tail.len().saturating_sub(EXEC_STDERR_TAIL_BYTES);
                    tail.drain(..excess);
                }
                let _ = closed_tx.send(());
            });
        }

        let deadline = Instant::now() + Duration::from_secs(self.timeout_s.into());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    kill_process_group(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("timed out after {}s", self.timeout_s));
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(err) => return Err(format!("cannot wait for sh: {err}")),
            }
        };
        let _ = closed_rx.recv_timeout(STDERR_GRACE);
        let stderr_tail = stderr_tail.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Finished { status, stderr_tail })
    }
}

impl Finished {
    fn success(&self) -> bool {
        self.status.success()
    }

    /// "exited with code N: LAST STDERR LINE", or the signal that ended it.
    fn describe_failure(&self) -> String {
        let mut message = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("ended with {}", self.status),
        };
        let stderr = String::from_utf8_lossy(&self.stderr_tail);
        if let Some(line) = stderr.lines().map(str::trim).rfind(|line| !line.is_empty()) {
            message.push_str(": ");
            message.push_str(line);
        }
        message
    }
}

/// SIGKILL to the process group the command leads (it was spawned with `process_group(0)`), so
/// the shell's children die with it and cannot hold the envoy's pipe or keep working.
#[allow(unsafe_code)]
fn kill_process_group(leader_pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(leader_pid) else {
        return;
    };
    if pgid <= 1 {
        // Never signal "every process" (-1) or our own group (0) by mistake.
        return;
    }
    // SAFETY: kill(2) takes two integers and touches no memory of this process. The group is
    // the child's own, which has not been reaped yet, so its id cannot have been reused.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs;

    use super::*;

    fn spec(command: &str) -> ExecSpec {
        ExecSpec { command: command.into(), ..ExecSpec::default() }
    }

    fn run(spec: &ExecSpec, root: &Path, noop: bool, refresh: bool) -> Outcome {
        apply(spec, &Context { root, noop, refresh })
    }

    #[test]
    fn runs_in_root_with_environment() {
        let root = tempfile::tempdir().unwrap();
        let spec = ExecSpec {
            environment: HashMap::from([("GREETING".into(), "hi".into())]),
            ..spec("echo \"$GREETING $VIGO_ROOT\" > out")
        };
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Changed(format!("ran: {}", spec.command)));
        assert_eq!(fs::read_to_string(root.path().join("out")).unwrap(), format!("hi {}\n", root.path().display()));
    }

    #[test]
    fn cwd_is_under_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("work")).unwrap();
        let spec = ExecSpec { cwd: "/work".into(), ..spec("touch here") };
        assert!(matches!(run(&spec, root.path(), false, false), Outcome::Changed(_)));
        assert!(root.path().join("work/here").exists());
    }

    #[test]
    fn creates_skips_when_path_exists() {
        let root = tempfile::tempdir().unwrap();
        let spec = ExecSpec { creates: "/done".into(), ..spec("touch done") };
        assert_eq!(run(&spec, root.path(), true, false), Outcome::Changed("would run: touch done".into()));
        assert!(!root.path().join("done").exists());
        assert!(matches!(run(&spec, root.path(), false, false), Outcome::Changed(_)));
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Unchanged);
    }

    #[test]
    fn unless_and_onlyif_guard_the_command() {
        let root = tempfile::tempdir().unwrap();
        let unless = ExecSpec { unless: "test -e flag".into(), ..spec("echo x >> ran-unless") };
        let onlyif = ExecSpec { onlyif: "test -e flag".into(), ..spec("echo x >> ran-onlyif") };
        assert!(matches!(run(&unless, root.path(), false, false), Outcome::Changed(_)));
        assert_eq!(run(&onlyif, root.path(), false, false), Outcome::Unchanged);
        fs::write(root.path().join("flag"), "").unwrap();
        assert_eq!(run(&unless, root.path(), false, false), Outcome::Unchanged);
        assert!(matches!(run(&onlyif, root.path(), false, false), Outcome::Changed(_)));
        assert_eq!(fs::read_to_string(root.path().join("ran-unless")).unwrap(), "x\n");
        assert_eq!(fs::read_to_string(root.path().join("ran-onlyif")).unwrap(), "x\n");
    }

    #[test]
    fn refreshonly_runs_only_when_notified() {
        let root = tempfile::tempdir().unwrap();
        let spec = ExecSpec { refreshonly: true, ..spec("echo x >> reloaded") };
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Unchanged);
        assert!(!root.path().join("reloaded").exists());
        assert_eq!(run(&spec, root.path(), true, true), Outcome::Changed("would run: echo x >> reloaded".into()));
        assert!(!root.path().join("reloaded").exists());
        assert!(matches!(run(&spec, root.path(), false, true), Outcome::Changed(_)));
        assert_eq!(fs::read_to_string(root.path().join("reloaded")).unwrap(), "x\n");
    }

    #[test]
    fn failure_reports_code_and_last_stderr_line() {
        let root = tempfile::tempdir().unwrap();
        let spec = spec("echo first >&2; echo 'no space left' >&2; exit 3");
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Failed("exited with code 3: no space left".into()));
        assert_eq!(run(&self::spec("exit 1"), root.path(), false, false), Outcome::Failed("exited with code 1".into()));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let root = tempfile::tempdir().unwrap();
        let spec = ExecSpec {
            timeout_s: 1,
            // A background child: killing only the shell would leave it running.
            ..spec("sleep 5 & echo $! > sleeper.pid; wait")
        };
        let started = Instant::now();
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Failed("timed out after 1s".into()));
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        let pid = fs::read_to_string(root.path().join("sleeper.pid")).unwrap();
        let stat = Path::new("/proc").join(pid.trim()).join("stat");
        let gone = (0..100).any(|_| {
            // Gone, or a zombie waiting for init to reap it: either way no longer running.
            let dead = fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z "));
            if !dead {
                std::thread::sleep(Duration::from_millis(20));
            }
            dead
        });
        assert!(gone, "the background sleep survived the timeout");

        let guard = ExecSpec { timeout_s: 1, unless: "sleep 5".into(), ..self::spec("true") };
        assert_eq!(run(&guard, root.path(), false, false), Outcome::Failed("unless: timed out after 1s".into()));
    }

    #[test]
    fn escaping_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let creates = ExecSpec { creates: "/../x".into(), ..spec("true") };
        assert!(matches!(run(&creates, root.path(), false, false), Outcome::Failed(m) if m.starts_with("creates:")));
        let cwd = ExecSpec { cwd: "/a/../..".into(), ..spec("true") };
        assert!(matches!(run(&cwd, root.path(), false, false), Outcome::Failed(m) if m.starts_with("cwd:")));
    }
}
