//! The `exec` executor: runs `sh -c COMMAND`, guarded so that a converged host runs nothing.
//!
//! Guards, in order: `refreshonly` (run only when a notifying resource changed this run),
//! `creates` (skip when that path exists under ROOT), `onlyif` (run only when that command exits
//! 0), `unless` (skip when that command exits 0). Guard commands are checks, so they run in noop
//! mode too and must not change anything. A notification to an exec that is not `refreshonly`
//! adds nothing: it runs once whenever its guards let it. With `user`, the command and its
//! guards run as that account of ROOT/etc/passwd (its uid and primary gid, with `HOME`, `USER`
//! and `LOGNAME` set from it; no supplementary groups); a user it does not list is a failure.
//!
//! Commands run in their own process group, so a timeout kills the whole pipeline and not just
//! the shell (`command.rs`). Stdin is /dev/null and stdout is read and dropped; the tail of
//! stderr is kept for the failure message.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vigo_proto::bundle::ExecSpec;

use super::command::{self, Finished};
use super::user::{PasswdEntry, read_passwd};
use super::{Context, Outcome};
use crate::limits::EXEC_TIMEOUT_DEFAULT_S;
use crate::root::managed_path;

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
        return Ok(Outcome::Changed(summary(spec)));
    }
    let finished = runner.run(&spec.command)?;
    if finished.success() { Ok(Outcome::Changed(summary(spec))) } else { Err(finished.describe_failure()) }
}

/// What a run of the command is reported as: the same in noop mode (the status says whether it
/// ran or would have).
fn summary(spec: &ExecSpec) -> String {
    format!("command: {}", spec.command)
}

/// Where and how an exec's commands run: the same for the command and its guards.
struct Runner<'a> {
    spec: &'a ExecSpec,
    root: &'a Path,
    cwd: PathBuf,
    timeout_s: u32,
    /// `user`: the account to run as, from ROOT/etc/passwd.
    account: Option<PasswdEntry>,
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
        let account = match spec.user.as_str() {
            "" => None,
            user => {
                let accounts = read_passwd(root).map_err(|err| format!("user: {err}"))?;
                let found = accounts.into_iter().find(|a| a.name == user || user.parse() == Ok(a.uid));
                Some(
                    found
                        .ok_or_else(|| format!("unknown user {user} (not in {})", root.join("etc/passwd").display()))?,
                )
            }
        };
        Ok(Runner { spec, root, cwd, timeout_s, account })
    }

    /// Runs `sh -c command` to its end or its timeout (an error, after killing its group).
    fn run(&self, command: &str) -> Result<Finished, String> {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(command).current_dir(&self.cwd);
        if let Some(account) = &self.account {
            // The account's own groups are not looked up: supplementary groups are dropped.
            sh.uid(account.uid).gid(account.gid);
            sh.env("HOME", &account.home).env("USER", &account.name).env("LOGNAME", &account.name);
        }
        sh.envs(&self.spec.environment).env("VIGO_ROOT", self.root);
        command::run_keeping(sh, "sh", Duration::from_secs(self.timeout_s.into()), 0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs;
    use std::time::Instant;

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
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Changed(format!("command: {}", spec.command)));
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
        assert_eq!(run(&spec, root.path(), true, false), Outcome::Changed("command: touch done".into()));
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
        assert_eq!(run(&spec, root.path(), true, true), Outcome::Changed("command: echo x >> reloaded".into()));
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
        assert_eq!(run(&spec, root.path(), false, false), Outcome::Failed("sh timed out after 1s".into()));
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
        assert_eq!(run(&guard, root.path(), false, false), Outcome::Failed("unless: sh timed out after 1s".into()));
    }

    #[test]
    fn escaping_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let creates = ExecSpec { creates: "/../x".into(), ..spec("true") };
        assert!(matches!(run(&creates, root.path(), false, false), Outcome::Failed(m) if m.starts_with("creates:")));
        let cwd = ExecSpec { cwd: "/a/../..".into(), ..spec("true") };
        assert!(matches!(run(&cwd, root.path(), false, false), Outcome::Failed(m) if m.starts_with("cwd:")));
    }

    #[test]
    fn user_runs_the_command_and_its_guards_as_that_account() {
        let root = tempfile::tempdir().unwrap();
        if !running_as_root() {
            println!("skipped: running as another user needs root");
            return;
        }
        fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh
runner:x:4321:4322::/home/runner:/bin/sh
",
        )
        .unwrap();
        let spec = ExecSpec {
            user: "runner".into(),
            onlyif: "test \"$(id -u):$(id -g):$HOME:$USER\" = 4321:4322:/home/runner:runner".into(),
            ..spec("echo \"$(id -u) $(id -G)\" >&2; exit 1")
        };
        assert_eq!(
            run(&spec, root.path(), false, false),
            Outcome::Failed("exited with code 1: 4321 4322".into()),
            "the guard passed as the account, and the command ran as it, without root's groups"
        );
        let by_uid = ExecSpec { user: "4321".into(), ..spec.clone() };
        assert_eq!(run(&by_uid, root.path(), false, false), Outcome::Failed("exited with code 1: 4321 4322".into()));
        let unknown = ExecSpec { user: "ghost".into(), ..spec };
        let Outcome::Failed(message) = run(&unknown, root.path(), false, false) else {
            panic!("an unknown user fails")
        };
        assert!(message.starts_with("unknown user ghost (not in "), "{message}");
    }

    fn running_as_root() -> bool {
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
    }
}
