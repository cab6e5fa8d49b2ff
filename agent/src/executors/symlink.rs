//! The `symlink` executor: a symbolic link at `path` pointing at `target`, or its absence.
//!
//! Targets under `--root`: an absolute target is prefixed with ROOT, so a link made in a sandbox
//! points inside the sandbox, just as it would point inside the host's tree without `--root` (with
//! the default root `/` nothing changes). A relative target is written verbatim: the kernel
//! resolves it against the link's own directory, which is already under ROOT, and `..` in it is
//! ordinary (`../lib/libfoo.so`), so it is not checked.
//!
//! A wrong link is replaced atomically (a new link renamed over it). A regular file or directory
//! in the way is never replaced: that would destroy data the bundle does not describe.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use vigo_proto::bundle::SymlinkSpec;

use super::{Context, Ensure, Outcome, create_parent_dirs, io_failure, kind_of, lstat, parse_ensure, temp_path};
use crate::root::managed_path;

/// Converges one symlink resource.
pub fn apply(spec: &SymlinkSpec, ctx: &Context<'_>) -> Outcome {
    converge(spec, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(spec: &SymlinkSpec, ctx: &Context<'_>) -> Result<Outcome, String> {
    let ensure = parse_ensure(&spec.ensure)?;
    let path = managed_path(ctx.root, &spec.path).map_err(|err| err.to_string())?;
    let meta = lstat(&path).map_err(|err| io_failure("inspect", &path, &err))?;
    if ensure == Ensure::Absent {
        return match meta {
            None => Ok(Outcome::Unchanged),
            Some(meta) if meta.file_type().is_symlink() => {
                if !ctx.noop {
                    fs::remove_file(&path).map_err(|err| io_failure("remove", &path, &err))?;
                }
                Ok(Outcome::Changed("removed".into()))
            }
            Some(meta) => {
                Err(format!("{} is {}, not a symlink; refusing to remove it", path.display(), kind_of(&meta)))
            }
        };
    }

    let target = link_target(ctx.root, &spec.target)?;
    let Some(meta) = meta else {
        if !ctx.noop {
            create_parent_dirs(&path).map_err(|err| io_failure("create parents of", &path, &err))?;
            symlink(&target, &path).map_err(|err| io_failure("create", &path, &err))?;
        }
        return Ok(Outcome::Changed(format!("created -> {}", target.display())));
    };
    if !meta.file_type().is_symlink() {
        return Err(format!("{} is {}; refusing to replace it with a symlink", path.display(), kind_of(&meta)));
    }
    let current = fs::read_link(&path).map_err(|err| io_failure("read", &path, &err))?;
    if current == target {
        return Ok(Outcome::Unchanged);
    }
    if !ctx.noop {
        let temp = temp_path(&path);
        symlink(&target, &temp).map_err(|err| io_failure("create", &temp, &err))?;
        if let Err(err) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            return Err(io_failure("replace", &path, &err));
        }
    }
    Ok(Outcome::Changed(format!("target {} -> {}", current.display(), target.display())))
}

/// The link's content: absolute targets moved under ROOT, relative ones verbatim.
fn link_target(root: &Path, target: &str) -> Result<PathBuf, String> {
    if target.is_empty() {
        return Err("symlink has no target".into());
    }
    if target.starts_with('/') {
        // A relative ROOT would make the link relative to its own directory, not to the cwd.
        let root = std::path::absolute(root).map_err(|err| io_failure("resolve", root, &err))?;
        managed_path(&root, target).map_err(|err| format!("target: {err}"))
    } else if target.contains('\0') {
        Err(format!("target {target:?} contains a NUL byte"))
    } else {
        Ok(PathBuf::from(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, target: &str) -> SymlinkSpec {
        SymlinkSpec { path: path.into(), target: target.into(), ..SymlinkSpec::default() }
    }

    fn run(spec: &SymlinkSpec, root: &Path, noop: bool) -> Outcome {
        apply(spec, &Context { root, noop, refresh: false })
    }

    #[test]
    fn creates_absolute_target_under_root_then_leaves_it() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("etc/alternatives/editor");
        let wanted = spec("/etc/alternatives/editor", "/usr/bin/vim");
        let expected_target = root.path().join("usr/bin/vim");
        assert_eq!(
            run(&wanted, root.path(), true),
            Outcome::Changed(format!("created -> {}", expected_target.display()))
        );
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(matches!(run(&wanted, root.path(), false), Outcome::Changed(_)));
        assert_eq!(fs::read_link(&link).unwrap(), expected_target);
        assert_eq!(run(&wanted, root.path(), false), Outcome::Unchanged);
    }

    #[test]
    fn relative_target_is_verbatim_and_wrong_link_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("lib/libfoo.so");
        fs::create_dir(root.path().join("lib")).unwrap();
        symlink("libfoo.so.1", &link).unwrap();
        let wanted = spec("/lib/libfoo.so", "../lib/libfoo.so.2");
        assert_eq!(
            run(&wanted, root.path(), true),
            Outcome::Changed("target libfoo.so.1 -> ../lib/libfoo.so.2".into())
        );
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("libfoo.so.1"));
        assert!(matches!(run(&wanted, root.path(), false), Outcome::Changed(_)));
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../lib/libfoo.so.2"));
        assert_eq!(run(&wanted, root.path(), false), Outcome::Unchanged);
        let names: Vec<_> = fs::read_dir(root.path().join("lib")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["libfoo.so"]);
    }

    #[test]
    fn refuses_to_replace_files_and_directories() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("file"), "data").unwrap();
        fs::create_dir(root.path().join("dir")).unwrap();
        for (path, kind) in [("/file", "a regular file"), ("/dir", "a directory")] {
            let outcome = run(&spec(path, "/elsewhere"), root.path(), false);
            let Outcome::Failed(message) = &outcome else { panic!("{outcome:?}") };
            assert!(message.contains(kind) && message.contains("refusing"), "{message}");
        }
        assert_eq!(fs::read_to_string(root.path().join("file")).unwrap(), "data");
        assert!(root.path().join("dir").is_dir());
    }

    #[test]
    fn absent_removes_only_links() {
        let root = tempfile::tempdir().unwrap();
        let absent = SymlinkSpec { ensure: "absent".into(), ..spec("/link", "") };
        assert_eq!(run(&absent, root.path(), false), Outcome::Unchanged);
        symlink("/x", root.path().join("link")).unwrap();
        assert_eq!(run(&absent, root.path(), false), Outcome::Changed("removed".into()));
        assert!(fs::symlink_metadata(root.path().join("link")).is_err());
        fs::write(root.path().join("link"), "x").unwrap();
        assert!(matches!(run(&absent, root.path(), false), Outcome::Failed(_)));
    }

    #[test]
    fn absolute_target_with_parent_components_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outcome = run(&spec("/link", "/../../etc/shadow"), root.path(), false);
        assert!(matches!(&outcome, Outcome::Failed(m) if m.starts_with("target:")), "{outcome:?}");
    }
}
