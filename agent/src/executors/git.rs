//! The `git` executor: a clone of a repository, checked out at a revision.
//!
//! Fields: `path` (the work tree, under ROOT), `source` (handed to git as is: a URL, or an
//! absolute path on the host, which is only read), `revision` (a tag, a branch or a commit of at
//! least 7 hex digits; default: the remote's default branch) and `state`:
//! - `present`: clone when the path is missing (or an empty directory), then check out the
//!   commit the revision names. An existing clone whose HEAD already is the commit the revision
//!   names *locally* (a tag, a fetched branch, a commit) is left alone without asking the remote;
//!   only a revision unknown to the clone makes it fetch.
//! - `latest`: ask the remote where the revision points now, fetch when HEAD is elsewhere, and
//!   move to it. A remote that did not move means nothing is fetched or written.
//! - `absent`: remove the clone.
//!
//! HEAD is always detached at the commit (`git checkout --detach`), whatever the revision is: the
//! envoy manages a commit, not a branch someone could commit on. A tag is looked up before a
//! branch of the same name, as git itself does.
//!
//! Someone's work is never thrown away: a path that is not the top of a clone of `source`, or a
//! work tree with changes to tracked files, is a failure that changes nothing. Removal also
//! refuses untracked files, stashes, and commits that no remote branch or tag holds. A clone is
//! made in a temporary directory beside the path and renamed into place once checked out, so a
//! failed clone leaves nothing behind.
//!
//! Every git command runs with the user's global and the system configuration ignored, no
//! terminal prompt (a missing credential fails instead of hanging), no optional locks (a status
//! query in noop mode does not even refresh the index), and repository discovery stopped at the
//! path's parent. Git's own `safe.directory` check stays on: a clone owned by another user is
//! refused by git, because its configuration could run programs as the envoy's user.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::command::{self, Finished};
use super::{Context, Outcome, create_parent_dirs, io_failure, kind_of, lstat, temp_path};
use crate::limits::{GIT_LOCAL_TIMEOUT_S, GIT_NETWORK_TIMEOUT_S};
use crate::root::managed_path;

/// Converges one git resource from its JSON spec.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

/// The stack fields of a git resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GitSpec {
    path: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Present,
    Latest,
    Absent,
}

/// The commit a revision names, as far as it is known before fetching.
#[derive(Debug)]
enum Commit {
    /// The full object name.
    Full(String),
    /// A commit named by an abbreviation that is not in the clone yet.
    Abbreviated(String),
}

/// Where HEAD should be, and how to say so.
#[derive(Debug)]
struct Target {
    commit: Commit,
    /// "tag v1", "branch main", "default branch main", "commit 1a2b3c4".
    label: String,
}

impl Target {
    fn short(&self) -> &str {
        match &self.commit {
            Commit::Full(name) | Commit::Abbreviated(name) => short(name),
        }
    }

    fn is(&self, head: &str) -> bool {
        match &self.commit {
            Commit::Full(name) => name == head,
            Commit::Abbreviated(prefix) => head.starts_with(prefix.as_str()),
        }
    }
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: GitSpec = serde_json::from_str(json).map_err(|err| format!("invalid git spec: {err}"))?;
    let state = match spec.state.as_deref() {
        None | Some("present") => State::Present,
        Some("latest") => State::Latest,
        Some("absent") => State::Absent,
        Some(other) => return Err(format!("unknown git state {other:?} (expected present, latest or absent)")),
    };
    let path = managed_path(ctx.root, &spec.path).map_err(|err| err.to_string())?;
    let source = spec.source.as_deref().map(check_source).transpose()?;
    let revision = spec.revision.as_deref().filter(|r| !r.is_empty()).map(check_revision).transpose()?;
    let meta = lstat(&path).map_err(|err| io_failure("inspect", &path, &err))?;
    if state == State::Absent {
        return absent(ctx, &path, meta, source);
    }
    let source = source.ok_or_else(|| "git needs a source unless absent".to_string())?;
    match meta {
        None => clone(ctx, &path, source, revision),
        Some(meta) if meta.is_dir() && is_empty_dir(&path)? => clone(ctx, &path, source, revision),
        Some(meta) if !meta.is_dir() => {
            Err(format!("{} is {}; refusing to replace it with a clone", path.display(), kind_of(&meta)))
        }
        Some(_) => update(ctx, &path, source, revision, state),
    }
}

/// A URL (`scheme://…`, `host:path`) or an absolute path; nothing git could take for an option.
fn check_source(source: &str) -> Result<&str, String> {
    let url_like = source.contains("://") || source.find(':').is_some_and(|colon| !source[..colon].contains('/'));
    if source.starts_with('-') || source.chars().any(char::is_control) || !(url_like || source.starts_with('/')) {
        return Err(format!("git source {source:?} must be a URL or an absolute path"));
    }
    Ok(source)
}

/// A branch, tag or commit name; hex commit names are lowercased.
fn check_revision(revision: &str) -> Result<String, String> {
    if revision.starts_with('-') || revision.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("git revision {revision:?} is not a branch, tag or commit name"));
    }
    if is_commit_like(revision) { Ok(revision.to_ascii_lowercase()) } else { Ok(revision.to_string()) }
}

/// Between 7 hex digits (git's shortest abbreviation) and a full SHA-256 object name.
fn is_commit_like(revision: &str) -> bool {
    (7..=64).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn short(name: &str) -> &str {
    &name[..name.len().min(7)]
}

fn is_empty_dir(path: &Path) -> Result<bool, String> {
    let mut entries = fs::read_dir(path).map_err(|err| io_failure("list", path, &err))?;
    Ok(entries.next().is_none())
}

/// Clones `source` at `revision` into a missing (or empty) `path`.
fn clone(ctx: &Context<'_>, path: &Path, source: &str, revision: Option<String>) -> Result<Outcome, String> {
    let target = remote_target(source, revision.as_deref())?;
    let summary = format!("cloned {source} at {} ({})", target.short(), target.label);
    if ctx.noop {
        return Ok(Outcome::Changed(summary));
    }
    create_parent_dirs(path).map_err(|err| io_failure("create parents of", path, &err))?;
    let temp = temp_path(path);
    let cloned = clone_into(&temp, source, &target);
    // Renaming onto an empty directory replaces it; onto anything else it fails, and then the
    // path was filled meanwhile by someone else, whose content stays.
    let placed = cloned.and_then(|()| fs::rename(&temp, path).map_err(|err| io_failure("move clone to", path, &err)));
    if placed.is_err() {
        let _ = fs::remove_dir_all(&temp);
    }
    placed?;
    Ok(Outcome::Changed(summary))
}

fn clone_into(dir: &Path, source: &str, target: &Target) -> Result<(), String> {
    let dir_text = dir.to_string_lossy();
    // No hardlinks into a local source: the clone shares no inode with it, so nothing done to
    // one can alter the other.
    git_ok(None, &["clone", "--quiet", "--no-checkout", "--no-hardlinks", "--", source, &dir_text], network_timeout())?;
    // Git stores a local source as it resolved it; store it as given, so the next run's
    // "is this a clone of source" check compares like with like.
    git_ok(Some(dir), &["config", "remote.origin.url", source], local_timeout())?;
    let commit = fetched_commit(dir, target)?;
    // The fresh clone has an empty index; force makes the work tree and index the commit's.
    git_ok(Some(dir), &["checkout", "--quiet", "--force", "--detach", &commit], local_timeout())?;
    Ok(())
}

/// Moves an existing clone at `path` to where the revision points.
fn update(
    ctx: &Context<'_>,
    path: &Path,
    source: &str,
    revision: Option<String>,
    state: State,
) -> Result<Outcome, String> {
    check_clone(path, Some(source))?;
    refuse_local_changes(path)?;
    let head = rev_parse(path, "HEAD")?.ok_or_else(|| format!("{} has no commit checked out", path.display()))?;
    let local = match state {
        State::Present => local_target(path, revision.as_deref())?,
        State::Latest | State::Absent => None,
    };
    let from_remote = local.is_none();
    let target = match local {
        Some(target) => target,
        None => remote_target(source, revision.as_deref())?,
    };
    if target.is(&head) {
        return Ok(Outcome::Unchanged);
    }
    let summary = format!("{} -> {} ({})", short(&head), target.short(), target.label);
    if ctx.noop {
        return Ok(Outcome::Changed(summary));
    }
    if from_remote {
        git_ok(Some(path), &["fetch", "--quiet", "--force", "--tags", "origin"], network_timeout())?;
    }
    let commit = fetched_commit(path, &target)?;
    git_ok(Some(path), &["checkout", "--quiet", "--detach", &commit], local_timeout())?;
    Ok(Outcome::Changed(summary))
}

/// Removes the clone at `path`, unless that would lose someone's work.
fn absent(ctx: &Context<'_>, path: &Path, meta: Option<fs::Metadata>, source: Option<&str>) -> Result<Outcome, String> {
    let Some(meta) = meta else {
        return Ok(Outcome::Unchanged);
    };
    if !meta.is_dir() {
        return Err(format!("{} is {}, not a git clone; refusing to remove it", path.display(), kind_of(&meta)));
    }
    let url = check_clone(path, source)?;
    let changes = git_ok(Some(path), &["status", "--porcelain", "--untracked-files=normal"], local_timeout())?;
    if let Some(first) = changes.lines().next() {
        let n = changes.lines().count();
        return Err(format!("{} has {n} changed or untracked files ({first}); refusing to remove it", path.display()));
    }
    if rev_parse(path, "refs/stash")?.is_some() {
        return Err(format!("{} has stashed changes; refusing to remove it", path.display()));
    }
    let head = rev_parse(path, "HEAD")?;
    let mut unpushed = vec!["rev-list", "--count", "--branches"];
    unpushed.extend(head.as_deref());
    unpushed.extend(["--not", "--remotes", "--tags"]);
    let n_unpushed = git_ok(Some(path), &unpushed, local_timeout())?;
    if n_unpushed.trim() != "0" {
        return Err(format!(
            "{} has {} commits that no remote branch or tag holds; refusing to remove it",
            path.display(),
            n_unpushed.trim()
        ));
    }
    let mut summary = format!("removed clone of {}", url.as_deref().unwrap_or("an unknown remote"));
    if let Some(head) = &head {
        summary.push_str(&format!(" at {}", short(head)));
    }
    if !ctx.noop {
        fs::remove_dir_all(path).map_err(|err| io_failure("remove", path, &err))?;
    }
    Ok(Outcome::Changed(summary))
}

/// Fails unless `path` is the top of a git work tree whose origin is `source` (when given).
/// Returns the origin URL.
fn check_clone(path: &Path, source: Option<&str>) -> Result<Option<String>, String> {
    let not_a_clone =
        |why: String| format!("{} exists and is not a git clone ({why}); refusing to touch it", path.display());
    let top = run_git(Some(path), &["rev-parse", "--show-toplevel"], local_timeout())?;
    if !top.success() {
        return Err(not_a_clone(format!("git rev-parse {}", describe_failure(&top))));
    }
    let canonical = fs::canonicalize(path).map_err(|err| io_failure("resolve", path, &err))?;
    if Path::new(top.stdout().trim_end_matches('\n')) != canonical {
        return Err(not_a_clone(format!("it lies inside the work tree {}", top.stdout().trim())));
    }
    let url = run_git(Some(path), &["config", "--get", "remote.origin.url"], local_timeout())?;
    let url = url.success().then(|| url.stdout().trim().to_string());
    if let Some(source) = source {
        let same = url.as_deref().is_some_and(|url| url.trim_end_matches('/') == source.trim_end_matches('/'));
        if !same {
            let origin = url.as_deref().unwrap_or("no origin");
            return Err(format!("{} is a clone of {origin}, not {source}; refusing to touch it", path.display()));
        }
    }
    Ok(url)
}

/// Fails when tracked files differ from HEAD (staged or not). Untracked files are not work a
/// checkout could lose: git refuses to overwrite them.
fn refuse_local_changes(path: &Path) -> Result<(), String> {
    let changes = git_ok(Some(path), &["status", "--porcelain", "--untracked-files=no"], local_timeout())?;
    match changes.lines().next() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} has local changes in {} files ({first}); refusing to touch it",
            path.display(),
            changes.lines().count()
        )),
    }
}

/// The revision as the clone knows it, without asking the remote; `None` when the clone does
/// not know it.
fn local_target(dir: &Path, revision: Option<&str>) -> Result<Option<Target>, String> {
    let Some(revision) = revision else {
        let Some(commit) = rev_parse(dir, "refs/remotes/origin/HEAD^{commit}")? else {
            return Ok(None);
        };
        let branch = git_ok(Some(dir), &["symbolic-ref", "refs/remotes/origin/HEAD"], local_timeout())?;
        let branch = branch.trim().trim_start_matches("refs/remotes/origin/").to_string();
        return Ok(Some(Target { commit: Commit::Full(commit), label: format!("default branch {branch}") }));
    };
    if let Some(commit) = rev_parse(dir, &format!("refs/tags/{revision}^{{commit}}"))? {
        return Ok(Some(Target { commit: Commit::Full(commit), label: format!("tag {revision}") }));
    }
    if let Some(commit) = rev_parse(dir, &format!("refs/remotes/origin/{revision}^{{commit}}"))? {
        return Ok(Some(Target { commit: Commit::Full(commit), label: format!("branch {revision}") }));
    }
    if is_commit_like(revision)
        && let Some(commit) = rev_parse(dir, &format!("{revision}^{{commit}}"))?
    {
        return Ok(Some(Target { commit: Commit::Full(commit), label: format!("commit {}", short(revision)) }));
    }
    Ok(None)
}

/// The revision as the remote names it now (`git ls-remote`, which changes nothing).
fn remote_target(source: &str, revision: Option<&str>) -> Result<Target, String> {
    let patterns = match revision {
        None => vec!["HEAD".to_string()],
        Some(r) => vec![format!("refs/tags/{r}"), format!("refs/tags/{r}^{{}}"), format!("refs/heads/{r}")],
    };
    let mut args = vec!["ls-remote", "--symref", "--", source];
    args.extend(patterns.iter().map(String::as_str));
    let listing = git_ok(None, &args, network_timeout())?;
    // "<object>\t<ref>" lines, and "ref: <target>\tHEAD" for the default branch.
    let lookup = |name: &str| {
        listing.lines().find_map(|line| {
            let (object, refname) = line.split_once('\t')?;
            (refname == name && !object.starts_with("ref: ")).then(|| object.to_string())
        })
    };
    let Some(revision) = revision else {
        let branch = listing.lines().find_map(|line| {
            let (symref, refname) = line.split_once('\t')?;
            (refname == "HEAD").then_some(symref.strip_prefix("ref: refs/heads/")?)
        });
        return match (lookup("HEAD"), branch) {
            (Some(commit), Some(branch)) => {
                Ok(Target { commit: Commit::Full(commit), label: format!("default branch {branch}") })
            }
            (Some(commit), None) => Ok(Target { commit: Commit::Full(commit), label: "remote HEAD".to_string() }),
            (None, _) => Err(format!("{source} has no default branch (is it empty?)")),
        };
    };
    // A peeled tag names the commit an annotated tag points to.
    if let Some(commit) =
        lookup(&format!("refs/tags/{revision}^{{}}")).or_else(|| lookup(&format!("refs/tags/{revision}")))
    {
        return Ok(Target { commit: Commit::Full(commit), label: format!("tag {revision}") });
    }
    if let Some(commit) = lookup(&format!("refs/heads/{revision}")) {
        return Ok(Target { commit: Commit::Full(commit), label: format!("branch {revision}") });
    }
    if is_commit_like(revision) {
        let commit = match revision.len() {
            40 | 64 => Commit::Full(revision.to_string()),
            _ => Commit::Abbreviated(revision.to_string()),
        };
        return Ok(Target { commit, label: format!("commit {}", short(revision)) });
    }
    Err(format!("revision {revision} is not a branch, tag or commit of {source}"))
}

/// The full name of the target commit in the clone at `dir`, fetching it by name when a fresh
/// clone or fetch did not bring it (a commit no branch or tag reaches).
fn fetched_commit(dir: &Path, target: &Target) -> Result<String, String> {
    let name = match &target.commit {
        Commit::Full(name) | Commit::Abbreviated(name) => name,
    };
    if let Some(commit) = rev_parse(dir, &format!("{name}^{{commit}}"))? {
        return Ok(commit);
    }
    if let Commit::Full(name) = &target.commit {
        let fetched = run_git(Some(dir), &["fetch", "--quiet", "origin", name], network_timeout())?;
        if fetched.success()
            && let Some(commit) = rev_parse(dir, &format!("{name}^{{commit}}"))?
        {
            return Ok(commit);
        }
    }
    Err(format!(
        "commit {name} not found in {}",
        git_ok(Some(dir), &["config", "remote.origin.url"], local_timeout())?.trim()
    ))
}

/// `git rev-parse --verify`: the object name, or `None` when `expr` names nothing.
fn rev_parse(dir: &Path, expr: &str) -> Result<Option<String>, String> {
    let finished = run_git(Some(dir), &["rev-parse", "--verify", "--quiet", expr], local_timeout())?;
    match finished.status.code() {
        Some(0) => Ok(Some(finished.stdout().trim().to_string())),
        Some(1) => Ok(None),
        _ => Err(format!("git rev-parse {expr} in {}: {}", dir.display(), describe_failure(&finished))),
    }
}

fn network_timeout() -> Duration {
    Duration::from_secs(GIT_NETWORK_TIMEOUT_S)
}

fn local_timeout() -> Duration {
    Duration::from_secs(GIT_LOCAL_TIMEOUT_S)
}

/// Runs git and requires success; returns its stdout.
fn git_ok(dir: Option<&Path>, args: &[&str], timeout: Duration) -> Result<String, String> {
    let finished = run_git(dir, args, timeout)?;
    if finished.success() {
        return Ok(finished.stdout());
    }
    let subcommand = args.first().copied().unwrap_or_default();
    let place = match dir {
        Some(dir) => format!(" in {}", dir.display()),
        None => String::new(),
    };
    Err(format!("git {subcommand}{place}: {}", describe_failure(&finished)))
}

/// Like [`Finished::describe_failure`], but naming git's first `fatal:` or `error:` line: git
/// often ends with advice ("and the repository exists.") rather than the reason.
fn describe_failure(finished: &Finished) -> String {
    let stderr = String::from_utf8_lossy(&finished.stderr_tail);
    let reason = stderr.lines().map(str::trim).find(|line| line.starts_with("fatal:") || line.starts_with("error:"));
    match (reason, finished.status.code()) {
        (Some(reason), Some(code)) => format!("exited with code {code}: {reason}"),
        _ => finished.describe_failure(),
    }
}

/// Runs git in `dir` (an existing directory) or, without one, in `/`.
fn run_git(dir: Option<&Path>, args: &[&str], timeout: Duration) -> Result<Finished, String> {
    let mut git = Command::new("git");
    git.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C");
    // Variables that would point git at another repository or inject configuration.
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    ] {
        git.env_remove(var);
    }
    // ssh must not ask about host keys or passphrases on a terminal either.
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        git.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    match dir {
        Some(dir) => {
            git.current_dir(dir);
            if let Some(parent) = dir.parent() {
                git.env("GIT_CEILING_DIRECTORIES", parent);
            }
        }
        None => {
            git.current_dir("/");
        }
    }
    command::run(git, "git", timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_must_be_urls_or_absolute_paths() {
        for good in ["/srv/repo.git", "file:///srv/repo.git", "https://example.org/r.git", "git@example.org:r.git"] {
            assert!(check_source(good).is_ok(), "{good}");
        }
        for bad in ["repo.git", "./repo", "-uhack", "dir/with:colon", "/a\nb"] {
            assert!(check_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revisions_are_names_and_commits_are_lowercased() {
        assert_eq!(check_revision("v1.0").unwrap(), "v1.0");
        assert_eq!(check_revision("ABCDEF0").unwrap(), "abcdef0");
        assert!(check_revision("--upload-pack=x").is_err());
        assert!(check_revision("a b").is_err());
        assert!(is_commit_like("abcdef0") && !is_commit_like("abcdef") && !is_commit_like("main"));
    }

    #[test]
    fn abbreviated_targets_match_by_prefix() {
        let target = Target { commit: Commit::Abbreviated("abcdef0".into()), label: "commit abcdef0".into() };
        assert!(target.is("abcdef0123"));
        assert!(!target.is("bbcdef0123"));
        assert_eq!(target.short(), "abcdef0");
    }
}
