//! `--root ROOT`: every managed path is taken relative to ROOT, so a sandbox directory can stand in
//! for a host in tests and dry runs. Paths from the bundle are never trusted: they must be absolute
//! and must not contain `..`, so a bundle cannot reach outside ROOT by path arithmetic.
//!
//! Symlinks already inside ROOT are followed by the kernel as usual; ROOT is a convenience for
//! sandboxes, not a security boundary against a hostile host.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Maps a bundle path onto the managed tree: `root` joined with `path` minus its leading `/`.
///
/// Refuses relative paths, `..` components and NUL bytes.
pub fn managed_path(root: &Path, path: &str) -> Result<PathBuf> {
    if path.contains('\0') {
        return Err(Error::PathNul(path.to_owned()));
    }
    if !path.starts_with('/') {
        return Err(Error::PathNotAbsolute(path.to_owned()));
    }
    let mut managed = root.to_path_buf();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => managed.push(part),
            Component::ParentDir => return Err(Error::PathEscapes(path.to_owned())),
            // Unix paths have no prefixes; treat one as an escape rather than guess.
            Component::Prefix(_) => return Err(Error::PathEscapes(path.to_owned())),
        }
    }
    Ok(managed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_under_root() {
        let root = Path::new("/sandbox");
        assert_eq!(managed_path(root, "/etc/motd").unwrap(), PathBuf::from("/sandbox/etc/motd"));
        assert_eq!(managed_path(root, "/").unwrap(), PathBuf::from("/sandbox"));
        assert_eq!(managed_path(root, "//etc/./x/").unwrap(), PathBuf::from("/sandbox/etc/x"));
        assert_eq!(managed_path(Path::new("/"), "/etc/motd").unwrap(), PathBuf::from("/etc/motd"));
    }

    #[test]
    fn refuses_parent_components() {
        let root = Path::new("/sandbox");
        for bad in ["/etc/../../passwd", "/..", "/a/b/.."] {
            assert!(matches!(managed_path(root, bad), Err(Error::PathEscapes(_))), "{bad}");
        }
    }

    #[test]
    fn refuses_relative_and_nul() {
        let root = Path::new("/sandbox");
        assert!(matches!(managed_path(root, "etc/motd"), Err(Error::PathNotAbsolute(_))));
        assert!(matches!(managed_path(root, ""), Err(Error::PathNotAbsolute(_))));
        assert!(matches!(managed_path(root, "/etc/\0"), Err(Error::PathNul(_))));
    }
}
