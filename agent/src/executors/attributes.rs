//! Mode, owner and group of files and directories: resolving names to ids, saying what differs,
//! and changing only that. Names resolve through ROOT/etc/passwd and ROOT/etc/group when the
//! sandbox has them, else through the host's /etc files, so a sandbox can carry its own accounts.
//! The parser is a few lines on purpose: no NSS, no LDAP; numeric ids are accepted as well.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode, owner and group a path should have; `None` leaves that attribute as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Attributes {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
}

impl Attributes {
    /// Resolves a spec's mode (0 = leave as is), owner and group (empty = leave as is).
    pub(super) fn resolve(root: &Path, mode: u32, owner: &str, group: &str) -> Result<Attributes, String> {
        if mode > 0o7777 {
            return Err(format!("invalid mode {mode:o}"));
        }
        let uid = match owner {
            "" => None,
            name => Some(lookup_id(root, "passwd", name).ok_or_else(|| {
                format!("unknown user {name} (looked in {})", account_file(root, "passwd").display())
            })?),
        };
        let gid = match group {
            "" => None,
            name => Some(lookup_id(root, "group", name).ok_or_else(|| {
                format!("unknown group {name} (looked in {})", account_file(root, "group").display())
            })?),
        };
        Ok(Attributes { mode: (mode != 0).then_some(mode), uid, gid })
    }

    /// What differs between `meta` and these attributes, in report words.
    pub(super) fn differences(&self, meta: &fs::Metadata) -> Vec<String> {
        let mut changes = Vec::new();
        if let Some(uid) = self.uid.filter(|uid| *uid != meta.uid()) {
            changes.push(format!("owner {} -> {uid}", meta.uid()));
        }
        if let Some(gid) = self.gid.filter(|gid| *gid != meta.gid()) {
            changes.push(format!("group {} -> {gid}", meta.gid()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if let Some(want) = self.mode.filter(|want| *want != mode) {
            changes.push(format!("mode {mode:04o} -> {want:04o}"));
        }
        changes
    }

    /// Changes what differs on `path` (described by `meta`): owner and group first, because
    /// chown clears set-id bits that the mode may ask for.
    pub(super) fn apply_to(&self, path: &Path, meta: &fs::Metadata) -> Result<(), String> {
        let uid = self.uid.filter(|uid| *uid != meta.uid());
        let gid = self.gid.filter(|gid| *gid != meta.gid());
        if uid.is_some() || gid.is_some() {
            // lchown: the executors have already refused symlinks, and must not follow one that
            // appeared since.
            std::os::unix::fs::lchown(path, uid, gid)
                .map_err(|err| super::io_failure("change owner of", path, &err))?;
        }
        let mode_changed = self.mode.is_some_and(|want| want != meta.permissions().mode() & 0o7777);
        if let (Some(want), true) = (self.mode, uid.is_some() || gid.is_some() || mode_changed) {
            fs::set_permissions(path, fs::Permissions::from_mode(want))
                .map_err(|err| super::io_failure("change mode of", path, &err))?;
        }
        Ok(())
    }
}

/// ROOT/etc/NAME when it exists, else /etc/NAME.
fn account_file(root: &Path, name: &str) -> PathBuf {
    let in_root = root.join("etc").join(name);
    if in_root.exists() { in_root } else { Path::new("/etc").join(name) }
}

/// The id of `name` in the passwd or group file (third field of both), or `name` itself when it
/// is numeric and not a listed name.
fn lookup_id(root: &Path, file: &str, name: &str) -> Option<u32> {
    let content = fs::read_to_string(account_file(root, file)).unwrap_or_default();
    find_id(&content, name).or_else(|| name.parse().ok())
}

/// Parses `name:password:id:...` lines, skipping blanks, comments and malformed lines.
fn find_id(content: &str, name: &str) -> Option<u32> {
    account_entries(content).find_map(|fields| {
        if *fields.first()? != name {
            return None;
        }
        fields.get(2)?.trim().parse().ok()
    })
}

/// The colon-separated fields of each entry of an account file (passwd, group, shadow,
/// gshadow), skipping blank and comment lines. Callers check the number of fields they need.
pub(super) fn account_entries(content: &str) -> impl Iterator<Item = Vec<&str>> {
    content.lines().filter(|line| !line.is_empty() && !line.starts_with('#')).map(|line| line.split(':').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group_lines() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\n\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n";
        assert_eq!(find_id(passwd, "root"), Some(0));
        assert_eq!(find_id(passwd, "alice"), Some(1000));
        assert_eq!(find_id(passwd, "bob"), None);
        assert_eq!(find_id(passwd, "broken"), None);
        let group = "wheel:x:10:alice,bob\n";
        assert_eq!(find_id(group, "wheel"), Some(10));
    }

    #[test]
    fn resolves_from_root_then_numeric() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/passwd"), "alice:x:4242:4242::/:/bin/sh\n").unwrap();
        fs::write(root.path().join("etc/group"), "staff:x:4343:\n").unwrap();
        let attrs = Attributes::resolve(root.path(), 0o640, "alice", "staff").unwrap();
        assert_eq!(attrs, Attributes { mode: Some(0o640), uid: Some(4242), gid: Some(4343) });
        let attrs = Attributes::resolve(root.path(), 0, "77", "").unwrap();
        assert_eq!(attrs.uid, Some(77));
        assert_eq!(attrs.mode, None);
        let err = Attributes::resolve(root.path(), 0, "nobody-here", "").unwrap_err();
        assert!(err.starts_with("unknown user nobody-here"), "{err}");
        assert!(Attributes::resolve(root.path(), 0o17777, "", "").is_err());
    }
}
