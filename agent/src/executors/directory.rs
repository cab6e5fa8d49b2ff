//! The `directory` executor: a directory with its mode, owner and group, or its absence.
//!
//! `ensure: absent` removes only an empty directory. Deleting a tree because a resource says
//! "absent" is too easy to get catastrophically wrong (a typo in a path), so a non-empty
//! directory is a failure the operator has to look at.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use vigo_proto::bundle::DirectorySpec;

use super::attributes::Attributes;
use super::{Context, Ensure, Outcome, create_parent_dirs, io_failure, kind_of, lstat, parse_ensure};
use crate::root::managed_path;

/// Mode of a new directory whose spec leaves the mode at 0.
const NEW_DIRECTORY_MODE: u32 = 0o755;

/// Converges one directory resource.
pub fn apply(spec: &DirectorySpec, ctx: &Context<'_>) -> Outcome {
    converge(spec, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(spec: &DirectorySpec, ctx: &Context<'_>) -> Result<Outcome, String> {
    let ensure = parse_ensure(&spec.ensure)?;
    let path = managed_path(ctx.root, &spec.path).map_err(|err| err.to_string())?;
    let meta = lstat(&path).map_err(|err| io_failure("inspect", &path, &err))?;
    match ensure {
        Ensure::Present => present(spec, ctx, &path, meta),
        Ensure::Absent => absent(ctx, &path, meta),
    }
}

fn present(
    spec: &DirectorySpec,
    ctx: &Context<'_>,
    path: &Path,
    meta: Option<fs::Metadata>,
) -> Result<Outcome, String> {
    let attrs = Attributes::resolve(ctx.root, spec.mode, &spec.owner, &spec.group)?;
    let Some(meta) = meta else {
        let mode = attrs.mode.unwrap_or(NEW_DIRECTORY_MODE);
        if !ctx.noop {
            create_parent_dirs(path).map_err(|err| io_failure("create parents of", path, &err))?;
            // Created 0700 and opened up only once owned right, so nobody else can slip files in
            // between creation and chown.
            fs::DirBuilder::new().mode(0o700).create(path).map_err(|err| io_failure("create", path, &err))?;
            let created = fs::symlink_metadata(path).map_err(|err| io_failure("inspect", path, &err))?;
            let ownership = Attributes { mode: None, ..attrs.clone() };
            ownership.apply_to(path, &created)?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|err| io_failure("change mode of", path, &err))?;
        }
        let mut summary = format!("created (mode {mode:04o}");
        if let Some(uid) = attrs.uid {
            summary.push_str(&format!(", owner {uid}"));
        }
        if let Some(gid) = attrs.gid {
            summary.push_str(&format!(", group {gid}"));
        }
        summary.push(')');
        return Ok(Outcome::Changed(summary));
    };
    if !meta.is_dir() {
        return Err(format!("{} is {}; refusing to replace it with a directory", path.display(), kind_of(&meta)));
    }
    let changes = attrs.differences(&meta);
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    if !ctx.noop {
        attrs.apply_to(path, &meta)?;
    }
    Ok(Outcome::Changed(changes.join(", ")))
}

fn absent(ctx: &Context<'_>, path: &Path, meta: Option<fs::Metadata>) -> Result<Outcome, String> {
    let Some(meta) = meta else {
        return Ok(Outcome::Unchanged);
    };
    if !meta.is_dir() {
        return Err(format!("{} is {}, not a directory; refusing to remove it", path.display(), kind_of(&meta)));
    }
    let is_empty = fs::read_dir(path).map_err(|err| io_failure("list", path, &err))?.next().is_none();
    if !is_empty {
        return Err(format!("{} is not empty; refusing to remove it", path.display()));
    }
    if !ctx.noop {
        match fs::remove_dir(path) {
            Ok(()) => {}
            // Something appeared in it since the check: the same refusal, just later.
            Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => {
                return Err(format!("{} is not empty; refusing to remove it", path.display()));
            }
            Err(err) => return Err(io_failure("remove", path, &err)),
        }
    }
    Ok(Outcome::Changed("removed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> DirectorySpec {
        DirectorySpec { path: path.into(), ..DirectorySpec::default() }
    }

    fn run(spec: &DirectorySpec, root: &Path, noop: bool) -> Outcome {
        apply(spec, &Context { root, noop, refresh: false })
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_then_leaves_alone_then_fixes_mode() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("srv/app/data");
        let wanted = DirectorySpec { mode: 0o750, ..spec("/srv/app/data") };
        assert_eq!(run(&wanted, root.path(), true), Outcome::Changed("created (mode 0750)".into()));
        assert!(!root.path().join("srv").exists());
        assert_eq!(run(&wanted, root.path(), false), Outcome::Changed("created (mode 0750)".into()));
        assert_eq!(mode_of(&path), 0o750);
        assert_eq!(mode_of(&root.path().join("srv/app")), 0o755);
        assert_eq!(run(&wanted, root.path(), false), Outcome::Unchanged);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(run(&wanted, root.path(), true), Outcome::Changed("mode 0777 -> 0750".into()));
        assert_eq!(mode_of(&path), 0o777);
        assert_eq!(run(&wanted, root.path(), false), Outcome::Changed("mode 0777 -> 0750".into()));
        assert_eq!(mode_of(&path), 0o750);
    }

    #[test]
    fn new_directory_defaults_to_0755() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(run(&spec("/d"), root.path(), false), Outcome::Changed(_)));
        assert_eq!(mode_of(&root.path().join("d")), 0o755);
        // Mode 0 leaves an existing directory's mode alone.
        fs::set_permissions(root.path().join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(run(&spec("/d"), root.path(), false), Outcome::Unchanged);
    }

    #[test]
    fn refuses_to_replace_a_file() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("f"), "x").unwrap();
        let outcome = run(&spec("/f"), root.path(), false);
        assert!(matches!(&outcome, Outcome::Failed(m) if m.contains("is a regular file")), "{outcome:?}");
    }

    #[test]
    fn absent_removes_only_empty_directories() {
        let root = tempfile::tempdir().unwrap();
        let absent = DirectorySpec { ensure: "absent".into(), ..spec("/d") };
        assert_eq!(run(&absent, root.path(), false), Outcome::Unchanged);
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/keep"), "x").unwrap();
        let outcome = run(&absent, root.path(), false);
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.ends_with("is not empty; refusing to remove it")),
            "{outcome:?}"
        );
        assert!(root.path().join("d/keep").exists());

        fs::remove_file(root.path().join("d/keep")).unwrap();
        assert_eq!(run(&absent, root.path(), true), Outcome::Changed("removed".into()));
        assert!(root.path().join("d").exists());
        assert_eq!(run(&absent, root.path(), false), Outcome::Changed("removed".into()));
        assert!(!root.path().join("d").exists());
    }
}
