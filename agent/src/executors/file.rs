//! The `file` executor: content, mode, owner and group of a regular file, or its absence.
//!
//! Content is compared by SHA-256 before anything is written, and written atomically: a temporary
//! file in the same directory gets the content, owner and mode, is fsynced, then renamed over the
//! target. A crash leaves either the old file or the new one, never half of either. A file that
//! already matches is only read, never written, so its mtime does not move.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};
use vigo_proto::bundle::FileSpec;

use super::attributes::Attributes;
use super::{Context, Ensure, Outcome, create_parent_dirs, io_failure, kind_of, lstat, parse_ensure, write_atomically};
use crate::root::managed_path;

/// Mode of a new file whose spec leaves the mode at 0.
const NEW_FILE_MODE: u32 = 0o644;

/// Converges one file resource.
pub fn apply(spec: &FileSpec, ctx: &Context<'_>) -> Outcome {
    converge(spec, ctx).unwrap_or_else(Outcome::Failed)
}

fn converge(spec: &FileSpec, ctx: &Context<'_>) -> Result<Outcome, String> {
    let ensure = parse_ensure(&spec.ensure)?;
    let path = managed_path(ctx.root, &spec.path).map_err(|err| err.to_string())?;
    let meta = lstat(&path).map_err(|err| io_failure("inspect", &path, &err))?;
    match ensure {
        Ensure::Present => present(spec, ctx, &path, meta),
        Ensure::Absent => absent(ctx, &path, meta),
    }
}

fn present(spec: &FileSpec, ctx: &Context<'_>, path: &Path, meta: Option<fs::Metadata>) -> Result<Outcome, String> {
    let attrs = Attributes::resolve(ctx.root, spec.mode, &spec.owner, &spec.group)?;
    let Some(meta) = meta else {
        let mode = attrs.mode.unwrap_or(NEW_FILE_MODE);
        let mut summary = format!("created ({} bytes, mode {mode:04o}", spec.content.len());
        if let Some(uid) = attrs.uid {
            summary.push_str(&format!(", owner {uid}"));
        }
        if let Some(gid) = attrs.gid {
            summary.push_str(&format!(", group {gid}"));
        }
        summary.push(')');
        if !ctx.noop {
            create_parent_dirs(path).map_err(|err| io_failure("create parents of", path, &err))?;
            write_atomically(path, &spec.content, mode, attrs.uid, attrs.gid)?;
        }
        return Ok(Outcome::Changed(summary));
    };
    if !meta.file_type().is_file() {
        return Err(format!("{} is {}; refusing to replace it with a file", path.display(), kind_of(&meta)));
    }

    let have = sha256_of_file(path).map_err(|err| io_failure("read", path, &err))?;
    let want: [u8; 32] = Sha256::digest(&spec.content).into();
    let content_differs = have != want;
    let mut changes = Vec::new();
    if content_differs {
        changes.push(format!("content sha256 {} -> {}", &hex::encode(have)[..12], &hex::encode(want)[..12]));
    }
    changes.extend(attrs.differences(&meta));
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    if !ctx.noop {
        if content_differs {
            // The replacement keeps whatever the spec leaves unmanaged from the file it replaces.
            let mode = attrs.mode.unwrap_or(meta.permissions().mode() & 0o7777);
            let uid = attrs.uid.unwrap_or(meta.uid());
            let gid = attrs.gid.unwrap_or(meta.gid());
            write_atomically(path, &spec.content, mode, Some(uid), Some(gid))?;
        } else {
            attrs.apply_to(path, &meta)?;
        }
    }
    Ok(Outcome::Changed(changes.join(", ")))
}

fn absent(ctx: &Context<'_>, path: &Path, meta: Option<fs::Metadata>) -> Result<Outcome, String> {
    let Some(meta) = meta else {
        return Ok(Outcome::Unchanged);
    };
    if meta.is_dir() {
        return Err(format!("{} is a directory; refusing to remove it as a file", path.display()));
    }
    if !ctx.noop {
        fs::remove_file(path).map_err(|err| io_failure("remove", path, &err))?;
    }
    Ok(Outcome::Changed(format!("removed {}", kind_of(&meta))))
}

fn sha256_of_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::{Duration, SystemTime};

    use super::*;

    fn spec(path: &str, content: &str) -> FileSpec {
        FileSpec { path: path.into(), content: content.as_bytes().to_vec(), ..FileSpec::default() }
    }

    fn run(spec: &FileSpec, root: &Path, noop: bool) -> Outcome {
        apply(spec, &Context { root, noop, refresh: false })
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_with_parents_and_default_mode() {
        let root = tempfile::tempdir().unwrap();
        let outcome = run(&spec("/etc/app/motd", "hello\n"), root.path(), false);
        assert_eq!(outcome, Outcome::Changed("created (6 bytes, mode 0644)".into()));
        let path = root.path().join("etc/app/motd");
        assert_eq!(fs::read_to_string(&path).unwrap(), "hello\n");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(mode_of(&root.path().join("etc/app")), 0o755);
    }

    #[test]
    fn second_run_leaves_converged_file_untouched() {
        let root = tempfile::tempdir().unwrap();
        let spec = FileSpec { mode: 0o600, ..spec("/etc/motd", "hello\n") };
        assert!(matches!(run(&spec, root.path(), false), Outcome::Changed(_)));
        let path = root.path().join("etc/motd");
        // Back-date the file so a rewrite could not hide within the clock's resolution.
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        let before = fs::metadata(&path).unwrap();
        assert_eq!(run(&spec, root.path(), false), Outcome::Unchanged);
        let after = fs::metadata(&path).unwrap();
        assert_eq!(after.modified().unwrap(), old);
        assert_eq!(after.ino(), before.ino());
        assert_eq!(after.ctime_nsec(), before.ctime_nsec());
    }

    #[test]
    fn updates_content_and_keeps_unmanaged_mode() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("motd");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let outcome = run(&spec("/motd", "new\n"), root.path(), false);
        let Outcome::Changed(summary) = outcome else { panic!("{outcome:?}") };
        assert!(summary.starts_with("content sha256 "), "{summary}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(mode_of(&path), 0o640);
    }

    #[test]
    fn changes_only_the_mode_without_rewriting() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("motd");
        fs::write(&path, "same\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        let spec = FileSpec { mode: 0o600, ..spec("/motd", "same\n") };
        assert_eq!(run(&spec, root.path(), false), Outcome::Changed("mode 0644 -> 0600".into()));
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn noop_reports_the_diff_and_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("etc/motd");
        let spec = FileSpec { mode: 0o600, ..spec("/etc/motd", "hello\n") };
        let outcome = run(&spec, root.path(), true);
        assert_eq!(outcome, Outcome::Changed("created (6 bytes, mode 0600)".into()));
        assert_eq!(outcome.status(true), vigo_proto::agent::resource_result::Status::WouldChange);
        assert!(!root.path().join("etc").exists());

        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let noop = run(&spec, root.path(), true);
        let Outcome::Changed(summary) = &noop else { panic!("{noop:?}") };
        assert!(summary.contains("content sha256") && summary.contains("mode 0644 -> 0600"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(mode_of(&path), 0o644);

        // The real run applies exactly what noop announced, and then there is nothing left.
        assert_eq!(run(&spec, root.path(), false), noop);
        assert_eq!(fs::read_to_string(&path).unwrap(), "hello\n");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(run(&spec, root.path(), true), Outcome::Unchanged);
    }

    #[test]
    fn absent_removes_files_and_refuses_directories() {
        let root = tempfile::tempdir().unwrap();
        let absent = FileSpec { ensure: "absent".into(), ..spec("/gone", "") };
        assert_eq!(run(&absent, root.path(), false), Outcome::Unchanged);
        fs::write(root.path().join("gone"), "x").unwrap();
        assert_eq!(run(&absent, root.path(), true), Outcome::Changed("removed a regular file".into()));
        assert!(root.path().join("gone").exists());
        assert_eq!(run(&absent, root.path(), false), Outcome::Changed("removed a regular file".into()));
        assert!(!root.path().join("gone").exists());

        fs::create_dir(root.path().join("gone")).unwrap();
        assert!(matches!(run(&absent, root.path(), false), Outcome::Failed(_)));
        assert!(root.path().join("gone").is_dir());
    }

    #[test]
    fn write_is_a_rename_over_the_old_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("motd");
        fs::write(&path, "old\n").unwrap();
        let mut old_handle = fs::File::open(&path).unwrap();
        let old_inode = fs::metadata(&path).unwrap().ino();
        assert!(matches!(run(&spec("/motd", "new\n"), root.path(), false), Outcome::Changed(_)));
        // A reader holding the old file still sees all of it: the new content arrived as a new
        // inode in one rename, not by truncating and rewriting in place.
        let mut seen = String::new();
        old_handle.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old\n");
        assert_ne!(fs::metadata(&path).unwrap().ino(), old_inode);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<_> = fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["motd"], "no temporary file is left behind");
    }

    #[test]
    fn refuses_non_files_and_escapes() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("dir")).unwrap();
        let outcome = run(&spec("/dir", "x"), root.path(), false);
        assert!(matches!(&outcome, Outcome::Failed(m) if m.contains("is a directory")), "{outcome:?}");
        let outcome = run(&spec("/../escape", "x"), root.path(), false);
        assert!(matches!(&outcome, Outcome::Failed(m) if m.contains("..")), "{outcome:?}");
        assert!(!root.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn owner_and_group_resolve_and_compare() {
        let root = tempfile::tempdir().unwrap();
        let me = fs::metadata(root.path()).unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            format!("me:x:{}:{}::/:/bin/sh\nother:x:4242:4242::/:/bin/sh\n", me.uid(), me.gid()),
        )
        .unwrap();
        fs::write(root.path().join("etc/group"), format!("mine:x:{}:\nothers:x:4343:\n", me.gid())).unwrap();
        let mine = FileSpec { owner: "me".into(), group: "mine".into(), ..spec("/data", "x") };
        assert!(matches!(run(&mine, root.path(), false), Outcome::Changed(_)));
        assert_eq!(run(&mine, root.path(), false), Outcome::Unchanged);

        let unknown = FileSpec { owner: "ghost".into(), ..spec("/data", "x") };
        assert!(matches!(
            run(&unknown, root.path(), false),
            Outcome::Failed(m) if m.starts_with("unknown user ghost")
        ));

        // Giving a file away needs root; check the real chown only where the test runs as root.
        if me.uid() == 0 {
            let other = FileSpec { owner: "other".into(), group: "others".into(), ..spec("/data", "x") };
            assert_eq!(
                run(&other, root.path(), false),
                Outcome::Changed(format!("owner 0 -> 4242, group {} -> 4343", me.gid()))
            );
            let meta = fs::metadata(root.path().join("data")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
            // A content change keeps the new owner on the replacement file.
            let rewritten = FileSpec { content: b"y".to_vec(), ..other };
            assert!(matches!(run(&rewritten, root.path(), false), Outcome::Changed(_)));
            let meta = fs::metadata(root.path().join("data")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
        }
    }
}
