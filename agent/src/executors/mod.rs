//! Resource executors: one per resource type the envoy manages. Every executor checks first and
//! changes only what differs, so a converged host is left untouched (not even rewritten with equal
//! bytes); in noop mode it computes the same difference and changes nothing.
//!
//! Executors never return errors: whatever stops a resource from converging is an [`Outcome`] to
//! report, and the run goes on with the resources that do not depend on it.

mod command;
pub mod cron;
pub mod directory;
pub mod docker;
pub mod exec;
pub mod file;
pub mod git;
pub mod group;
pub mod package;
pub mod repository;
pub mod service;
pub mod source_package;
pub mod symlink;
pub mod user;

mod attributes;

use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use vigo_proto::agent::resource_result::Status;
use vigo_proto::bundle::Resource;
use vigo_proto::bundle::resource::Spec;

/// What applying one resource did (or, in noop mode, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already as described; nothing touched.
    Unchanged,
    /// Changed (or would change in noop mode); the text summarizes the difference.
    Changed(String),
    /// Could not converge; the text says why.
    Failed(String),
    /// This envoy does not manage the resource's type yet.
    Unsupported(String),
}

impl Outcome {
    /// The status to report; a change in noop mode is reported as `WOULD_CHANGE`.
    pub fn status(&self, noop: bool) -> Status {
        match self {
            Outcome::Unchanged => Status::Unchanged,
            Outcome::Changed(_) if noop => Status::WouldChange,
            Outcome::Changed(_) => Status::Changed,
            Outcome::Failed(_) => Status::Failed,
            Outcome::Unsupported(_) => Status::Unsupported,
        }
    }

    /// The message to report (empty when unchanged).
    pub fn message(&self) -> &str {
        match self {
            Outcome::Unchanged => "",
            Outcome::Changed(text) | Outcome::Failed(text) | Outcome::Unsupported(text) => text,
        }
    }
}

/// What every executor needs besides its spec.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `--root`: every managed path lives under it. Should be absolute.
    pub root: &'a Path,
    /// Compute differences, change nothing.
    pub noop: bool,
    /// A resource that notifies this one changed earlier in this run.
    pub refresh: bool,
}

/// Applies one resource according to its spec. A refresh matters to exec (a `refreshonly`
/// command runs) and service (a running service restarts); for the others, converging is all a
/// refresh could mean, and a converged resource stays untouched.
pub fn apply(resource: &Resource, ctx: &Context<'_>) -> Outcome {
    match &resource.spec {
        Some(Spec::File(spec)) => file::apply(spec, ctx),
        Some(Spec::Directory(spec)) => directory::apply(spec, ctx),
        Some(Spec::Symlink(spec)) => symlink::apply(spec, ctx),
        Some(Spec::Exec(spec)) => exec::apply(spec, ctx),
        // Types shipped as their validated stack fields in JSON; each executor reads its own.
        Some(Spec::Opaque(spec)) => match resource.r#type.as_str() {
            // (one arm per JSON-specified type, in the order of the stack schema)
            "service" => service::apply(&spec.json, ctx),
            "docker" => docker::apply(&spec.json, ctx),
            "package" => package::apply(&spec.json, ctx),
            "user" => user::apply(&spec.json, ctx),
            "group" => group::apply(&spec.json, ctx),
            "cron" => cron::apply(&spec.json, ctx),
            "git" => git::apply(&spec.json, ctx),
            "source_package" => source_package::apply(&spec.json, ctx),
            "repository" => repository::apply(&spec.json, ctx),
            _ => Outcome::Unsupported(format!("resource type {} is not supported by this envoy yet", resource.r#type)),
        },
        None => Outcome::Failed(format!("resource {} carries no spec", resource.id)),
    }
}

/// True when ROOT is the host's own `/` (`--root /`, the default), not a sandbox: every
/// executor decides by this alone whether to point its tools at ROOT.
pub(super) fn is_host_root(root: &Path) -> bool {
    root.has_root() && root.components().all(|c| c == Component::RootDir)
}

/// The two values of `ensure`; empty means present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ensure {
    Present,
    Absent,
}

fn parse_ensure(ensure: &str) -> Result<Ensure, String> {
    match ensure {
        "" | "present" => Ok(Ensure::Present),
        "absent" => Ok(Ensure::Absent),
        other => Err(format!("unknown ensure value {other:?} (expected present or absent)")),
    }
}

/// `lstat`, with "does not exist" as `None` rather than an error.
fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Creates the missing ancestors of `path`, each with mode 0755 whatever the umask, the way a
/// package manager would lay out a fresh tree.
fn create_parent_dirs(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let missing: Vec<&Path> = parent.ancestors().take_while(|dir| matches!(lstat(dir), Ok(None))).collect();
    for dir in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?,
            // Someone else made it meanwhile; fine.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// `.NAME.vigo-tmp.PID.N` beside `path`, for building a replacement that is then renamed over
/// it: hidden, recognisable, and unique within and across processes.
fn temp_path(path: &Path) -> PathBuf {
    static N_TEMP_PATHS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let n = N_TEMP_PATHS.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.vigo-tmp.{}.{n}", std::process::id()))
}

/// Writes `content` to `path` through a temporary file in the same directory (same file system,
/// so the rename is atomic), with owner and mode set before the rename so the file never appears
/// with the wrong ones.
pub(super) fn write_atomically(
    path: &Path,
    content: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), String> {
    let temp = temp_path(path);
    let result = (|| -> io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(content)?;
        let temp_meta = file.metadata()?;
        let uid = uid.filter(|uid| *uid != temp_meta.uid());
        let gid = gid.filter(|gid| *gid != temp_meta.gid());
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&file, uid, gid)?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&temp);
        return Err(io_failure("write", path, &err));
    }
    // Persist the rename itself. The new content is in place either way, so a failure here
    // (some file systems refuse to fsync directories) does not make the change fail.
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Turns an I/O error into a failure message naming the path and what was being done.
fn io_failure(what: &str, path: &Path, err: &io::Error) -> String {
    format!("cannot {what} {}: {err}", path.display())
}

/// A file type's name for messages.
fn kind_of(meta: &fs::Metadata) -> &'static str {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symlink"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigo_proto::bundle::OpaqueSpec;

    #[test]
    fn opaque_is_unsupported() {
        let resource = Resource {
            id: "frobnicator:nginx".into(),
            r#type: "frobnicator".into(),
            spec: Some(Spec::Opaque(OpaqueSpec { json: "{}".into() })),
            ..Resource::default()
        };
        let ctx = Context { root: Path::new("/nonexistent"), noop: false, refresh: false };
        let outcome = apply(&resource, &ctx);
        assert_eq!(
            outcome,
            Outcome::Unsupported("resource type frobnicator is not supported by this envoy yet".into())
        );
        assert_eq!(outcome.status(false), Status::Unsupported);
    }

    #[test]
    fn parent_dirs_get_0755() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c/file");
        create_parent_dirs(&path).unwrap();
        for sub in ["a", "a/b", "a/b/c"] {
            let meta = fs::metadata(dir.path().join(sub)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{sub}");
        }
        assert!(!path.exists());
    }
}
