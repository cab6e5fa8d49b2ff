//! Running an outside program for an executor: `sh -c` for exec, the host's own tools for the
//! rest (`dpkg-query`, `apt-get`, `git`, `useradd`, `systemctl`, `docker`, …).
//!
//! Every program runs in its own process group, with stdin from /dev/null, to its end or its
//! timeout; a timeout kills the whole group, not just the leader, so a pipeline or a daemon it
//! started cannot hold the envoy up. Stdout is kept up to [`STDOUT_BYTES_MAX`] (what the tools
//! print is what executors compare against); stderr only by its tail, for failure messages.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::limits::EXEC_STDERR_TAIL_BYTES;

/// How much of a program's stdout is kept; more is read and dropped, so it never blocks.
pub(crate) const STDOUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long to wait for the pipes to close after the program exited. A daemon started by it may
/// hold them open forever; the run must not wait for that.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// How often a running program is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A program that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr_tail: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Stdout as text (lossy).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// "exited with code N: LAST STDERR LINE", or the signal that ended it.
    pub fn describe_failure(&self) -> String {
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

/// Runs `command` to its end or `timeout` (an error, after killing its group). `what` names
/// the program in errors ("git", "sh").
pub(crate) fn run(command: Command, what: &str, timeout: Duration) -> Result<Finished, String> {
    run_keeping(command, what, timeout, STDOUT_BYTES_MAX)
}

/// [`run`], keeping at most `stdout_max` bytes of stdout (0: read and drop it all).
pub(crate) fn run_keeping(
    mut command: Command,
    what: &str,
    timeout: Duration,
    stdout_max: usize,
) -> Result<Finished, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|err| format!("cannot start {what}: {err}"))?;
    let (closed_tx, closed_rx) = mpsc::channel();
    let stdout = child.stdout.take().map(|pipe| drain(pipe, stdout_max, false, closed_tx.clone()));
    let stderr = child.stderr.take().map(|pipe| drain(pipe, EXEC_STDERR_TAIL_BYTES, true, closed_tx));

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_process_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} timed out after {}s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(err) => return Err(format!("cannot wait for {what}: {err}")),
        }
    };
    // Both pipes closed, or the grace is over: a reader still blocked keeps what it has.
    let grace_end = Instant::now() + PIPE_GRACE;
    for _ in 0..stdout.iter().chain(stderr.iter()).count() {
        if closed_rx.recv_timeout(grace_end.saturating_duration_since(Instant::now())).is_err() {
            break;
        }
    }
    let take = |reader: Option<Reader>| reader.map(|r| r.take()).unwrap_or_default();
    Ok(Finished { status, stdout: take(stdout), stderr_tail: take(stderr) })
}

/// A pipe read to its end on a thread of its own, keeping at most `max` bytes.
struct Reader {
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _thread: JoinHandle<()>,
}

impl Reader {
    fn take(self) -> Vec<u8> {
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Reads `pipe` until it closes; keeps the first `max` bytes, or with `tail` the last `max`.
fn drain(mut pipe: impl Read + Send + 'static, max: usize, tail: bool, closed: mpsc::Sender<()>) -> Reader {
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = std::sync::Arc::clone(&kept);
    let thread = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            let mut kept = shared.lock().unwrap_or_else(|p| p.into_inner());
            if tail {
                kept.extend_from_slice(&chunk[..n]);
                let excess = kept.len().saturating_sub(max);
                kept.drain(..excess);
            } else {
                let room = max.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&chunk[..room]);
            }
        }
        let _ = closed.send(());
    });
    Reader { kept, _thread: thread }
}

/// SIGKILL to the process group the program leads (it was spawned with `process_group(0)`), so
/// its children die with it and cannot hold the envoy's pipes or keep working.
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
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn stdout_is_kept_and_a_failure_names_the_last_stderr_line() {
        let done = run(sh("echo out; echo first >&2; echo last >&2; exit 3"), "sh", Duration::from_secs(10)).unwrap();
        assert_eq!(done.stdout(), "out\n");
        assert!(!done.success());
        assert_eq!(done.describe_failure(), "exited with code 3: last");
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let err = run(sh(&script), "sh", Duration::from_millis(200)).unwrap_err();
        assert_eq!(err, "sh timed out after 0s");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!marker.exists(), "the background child died with the group");
    }

    #[test]
    fn a_daemon_holding_the_pipes_does_not_hold_the_run() {
        let started = Instant::now();
        let done = run(sh("sleep 5 & echo started"), "sh", Duration::from_secs(10)).unwrap();
        assert!(done.success());
        assert_eq!(done.stdout(), "started\n");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
