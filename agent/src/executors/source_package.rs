//! The `source_package` executor: download a source archive, check its digest, unpack it and run
//! its build commands, once.
//!
//! Fields: `name` (names the stamp and the work directory), `url` (`http://`, `https://`, or
//! `file:///PATH`, read under ROOT like every other path), `sha256` (required: nothing is
//! unpacked or run before the download matches it), `build` (commands run one after another with
//! `sh -c` in the unpacked tree, each with [`SOURCE_PACKAGE_BUILD_TIMEOUT_S`], with `VIGO_ROOT`
//! set to ROOT as for exec, so they install under `$VIGO_ROOT`), `creates` (a path under ROOT the
//! build makes).
//!
//! Built already means: `creates` exists, or, without `creates`, the stamp
//! `ROOT/var/lib/vigo/source_package/NAME` holds this sha256 (a new sha256 rebuilds). Then
//! nothing is downloaded. Otherwise the archive goes to a private work directory under
//! `ROOT/var/cache/vigo/source_package/`, which is removed afterwards whatever happened. The
//! archive is a `.tar.gz`/`.tgz` (recognised by its gzip magic) or a plain `.tar`; an entry
//! whose path is absolute or climbs out with `..`, or a hard link doing so, fails the whole
//! resource, and so does an archive that unpacks to more than
//! [`SOURCE_PACKAGE_UNPACKED_BYTES_MAX`]. A single top-level directory is stripped: the build
//! runs inside it. A build that exits non-zero, or that leaves `creates` missing, is a failure,
//! and no stamp is written, so the next run tries again.
//!
//! In noop mode nothing is downloaded: the summary says what would be built.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::command;
use super::{Context, Outcome, create_parent_dirs, io_failure, lstat, temp_path};
use crate::limits::{
    SOURCE_PACKAGE_BUILD_TIMEOUT_S, SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX, SOURCE_PACKAGE_DOWNLOAD_TIMEOUT_S,
    SOURCE_PACKAGE_UNPACKED_BYTES_MAX,
};
use crate::root::managed_path;

/// Where stamps live, under ROOT: one file per package name, holding the sha256 built.
const STAMP_DIR: &str = "/var/lib/vigo/source_package";

/// Where work directories live, under ROOT.
const WORK_DIR: &str = "/var/cache/vigo/source_package";

/// Converges one source_package resource from its JSON spec.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

/// The stack fields of a source_package resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcePackageSpec {
    name: String,
    url: String,
    sha256: String,
    #[serde(default)]
    build: Vec<String>,
    #[serde(default)]
    creates: Option<String>,
}

/// Where the archive comes from.
enum Source {
    Http(String),
    File(PathBuf),
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: SourcePackageSpec =
        serde_json::from_str(json).map_err(|err| format!("invalid source_package spec: {err}"))?;
    let name = check_name(&spec.name)?;
    let sha256 = check_sha256(&spec.sha256)?;
    let source = parse_url(&spec.url, ctx.root)?;
    if let Some(n) = spec.build.iter().position(|command| command.trim().is_empty()) {
        return Err(format!("build command {} of {name} is empty", n + 1));
    }
    let creates = match spec.creates.as_deref() {
        Some(creates) => Some(managed_path(ctx.root, creates).map_err(|err| format!("creates: {err}"))?),
        None => None,
    };
    let stamp = managed_path(ctx.root, &format!("{STAMP_DIR}/{name}")).map_err(|err| err.to_string())?;

    let previous = match &creates {
        Some(creates) => {
            if lstat(creates).map_err(|err| io_failure("inspect", creates, &err))?.is_some() {
                return Ok(Outcome::Unchanged);
            }
            None
        }
        None => {
            let built = read_stamp(&stamp)?;
            if built.as_deref() == Some(sha256.as_str()) {
                return Ok(Outcome::Unchanged);
            }
            built
        }
    };
    let summary = match &previous {
        Some(previous) => {
            format!("rebuilt {name} from {} (sha256 {} -> {})", spec.url, abbrev(previous), abbrev(&sha256))
        }
        None => format!("built {name} from {} (sha256 {})", spec.url, abbrev(&sha256)),
    };
    if ctx.noop {
        return Ok(Outcome::Changed(summary));
    }

    let work = WorkDir::create(ctx.root, name)?;
    let archive = work.path.join("archive");
    let actual = download(&source, &spec.url, &archive)?;
    if actual != sha256 {
        return Err(format!("sha256 mismatch for {}: expected {sha256}, got {actual}", spec.url));
    }
    let tree = work.path.join("tree");
    fs::create_dir(&tree).map_err(|err| io_failure("create", &tree, &err))?;
    unpack(&archive, &tree).map_err(|err| format!("cannot unpack {}: {err}", spec.url))?;
    let build_dir = single_top_dir(&tree)?;
    for (n, build) in spec.build.iter().enumerate() {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(build).current_dir(&build_dir).env("VIGO_ROOT", ctx.root);
        let finished = command::run_keeping(sh, "sh", Duration::from_secs(SOURCE_PACKAGE_BUILD_TIMEOUT_S), 0)
            .map_err(|err| format!("build command {} of {name} ({build}): {err}", n + 1))?;
        if !finished.success() {
            return Err(format!("build command {} of {name} ({build}) {}", n + 1, finished.describe_failure()));
        }
    }
    match &creates {
        Some(creates) => {
            if lstat(creates).map_err(|err| io_failure("inspect", creates, &err))?.is_none() {
                return Err(format!("the build of {name} did not create {}", creates.display()));
            }
        }
        None => write_stamp(&stamp, &sha256)?,
    }
    Ok(Outcome::Changed(summary))
}

/// A name usable as a file name: letters, digits, `.`, `_`, `+`, `@`, `-`; not starting with `.`.
fn check_name(name: &str) -> Result<&str, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._+@-".contains(c);
    if name.is_empty() || name.len() > 200 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(format!(
            "source_package name {name:?} must be letters, digits, '.', '_', '+', '@' or '-', not starting with '.'"
        ));
    }
    Ok(name)
}

fn check_sha256(sha256: &str) -> Result<String, String> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sha256 {sha256:?} must be 64 hex digits"));
    }
    Ok(sha256.to_ascii_lowercase())
}

fn parse_url(url: &str, root: &Path) -> Result<Source, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Source::Http(url.to_string()));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        // file:///path or file://localhost/path; any other host is not this machine.
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if path.contains(['?', '#', '%']) {
            return Err(format!("url {url:?}: a file URL here is a plain path, without query or escapes"));
        }
        return managed_path(root, path).map(Source::File).map_err(|err| format!("url {url:?}: {err}"));
    }
    Err(format!("url {url:?} must start with http://, https:// or file://"))
}

/// The first 12 characters of a digest, for summaries.
fn abbrev(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// The sha256 recorded as built under `name`, if any.
fn read_stamp(stamp: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(stamp) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_failure("read", stamp, &err)),
    }
}

/// Records `sha256` as built, atomically.
fn write_stamp(stamp: &Path, sha256: &str) -> Result<(), String> {
    create_parent_dirs(stamp).map_err(|err| io_failure("create parents of", stamp, &err))?;
    let temp = temp_path(stamp);
    let written = fs::write(&temp, format!("{sha256}\n")).and_then(|()| fs::rename(&temp, stamp));
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_failure("write", stamp, &err));
    }
    Ok(())
}

/// A private directory under [`WORK_DIR`], removed with everything in it when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(root: &Path, name: &str) -> Result<WorkDir, String> {
        let base = managed_path(root, &format!("{WORK_DIR}/{name}")).map_err(|err| err.to_string())?;
        let path = temp_path(&base);
        create_parent_dirs(&path).map_err(|err| io_failure("create parents of", &path, &err))?;
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(|err| io_failure("create", &path, &err))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Copies the archive to `to`, at most [`SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX`] bytes; returns the
/// sha256 of what was copied, in hex.
fn download(source: &Source, url: &str, to: &Path) -> Result<String, String> {
    let cannot = |err: &dyn std::fmt::Display| format!("cannot download {url}: {err}");
    match source {
        Source::File(path) => {
            let file = File::open(path).map_err(|err| cannot(&err))?;
            copy_hashing(file, to, url)
        }
        Source::Http(url) => {
            let config = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(SOURCE_PACKAGE_DOWNLOAD_TIMEOUT_S)))
                .http_status_as_error(false)
                .build();
            let agent = ureq::Agent::new_with_config(config);
            let response = agent.get(url).call().map_err(|err| cannot(&err))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("cannot download {url}: the server answered {status}"));
            }
            let body = response.into_body();
            if body.content_length().is_some_and(|n| n > SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX) {
                return Err(too_large(url));
            }
            copy_hashing(body.into_reader(), to, url)
        }
    }
}

fn too_large(url: &str) -> String {
    format!("cannot download {url}: larger than {SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX} bytes")
}

fn copy_hashing(mut from: impl Read, to: &Path, url: &str) -> Result<String, String> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|err| io_failure("create", to, &err))?;
    let mut hasher = Sha256::new();
    let mut n_bytes: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(format!("cannot download {url}: {err}")),
        };
        n_bytes += n as u64;
        if n_bytes > SOURCE_PACKAGE_DOWNLOAD_BYTES_MAX {
            return Err(too_large(url));
        }
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).map_err(|err| io_failure("write", to, &err))?;
    }
    file.sync_all().map_err(|err| io_failure("write", to, &err))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Unpacks a tar archive, gzipped or not, into the empty directory `into`.
fn unpack(archive: &Path, into: &Path) -> Result<(), String> {
    let mut file = File::open(archive).map_err(|err| io_failure("open", archive, &err))?;
    let mut magic = [0u8; 2];
    let n_magic = file.read(&mut magic).map_err(|err| io_failure("read", archive, &err))?;
    file.rewind().map_err(|err| io_failure("read", archive, &err))?;
    let reader: Box<dyn Read> = if n_magic == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    let mut n_entries = 0u64;
    let mut n_bytes = 0u64;
    for entry in tar.entries().map_err(|err| format!("not a .tar.gz, .tgz or .tar archive: {err}"))? {
        let mut entry = entry.map_err(|err| format!("not a .tar.gz, .tgz or .tar archive: {err}"))?;
        let path = entry.path().map_err(|err| err.to_string())?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            return Err(format!("entry {} is of an unsupported type ({kind:?})", path.display()));
        }
        if escapes(&path) {
            return Err(format!("entry {} escapes the archive's directory", path.display()));
        }
        if kind.is_hard_link() {
            let link = entry.link_name().map_err(|err| err.to_string())?.unwrap_or_default().into_owned();
            if escapes(&link) {
                return Err(format!(
                    "hard link {} -> {} escapes the archive's directory",
                    path.display(),
                    link.display()
                ));
            }
        }
        n_bytes = n_bytes.saturating_add(entry.header().size().map_err(|err| err.to_string())?);
        if n_bytes > SOURCE_PACKAGE_UNPACKED_BYTES_MAX {
            return Err(format!("it unpacks to more than {SOURCE_PACKAGE_UNPACKED_BYTES_MAX} bytes"));
        }
        // unpack_in also refuses to write through a symlink unpacked earlier that points outside.
        let unpacked = entry.unpack_in(into).map_err(|err| err.to_string())?;
        if !unpacked {
            return Err(format!("entry {} escapes the archive's directory", path.display()));
        }
        n_entries += 1;
    }
    if n_entries == 0 {
        return Err("the archive is empty".into());
    }
    Ok(())
}

/// True for an absolute path or one with a `..` component.
fn escapes(path: &Path) -> bool {
    path.components().any(|c| matches!(c, Component::RootDir | Component::ParentDir | Component::Prefix(_)))
}

/// The tree's only top-level entry when that is a directory (the usual `NAME-VERSION/`), else
/// the tree itself.
fn single_top_dir(tree: &Path) -> Result<PathBuf, String> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(tree).map_err(|err| io_failure("list", tree, &err))? {
        entries.push(entry.map_err(|err| io_failure("list", tree, &err))?);
        if entries.len() > 1 {
            return Ok(tree.to_path_buf());
        }
    }
    match entries.first() {
        Some(only) if only.file_type().map_err(|err| io_failure("inspect", &only.path(), &err))?.is_dir() => {
            Ok(only.path())
        }
        _ => Ok(tree.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_names() {
        assert!(check_name("hello-2.12_1+b@x").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "..", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_http_https_or_file_under_root() {
        let root = Path::new("/sandbox");
        assert!(matches!(parse_url("https://example.org/a.tgz", root), Ok(Source::Http(_))));
        assert!(
            matches!(parse_url("file:///srv/a.tgz", root), Ok(Source::File(p)) if p == Path::new("/sandbox/srv/a.tgz"))
        );
        assert!(matches!(parse_url("file://localhost/srv/a.tgz", root), Ok(Source::File(_))));
        for bad in ["ftp://example.org/a.tgz", "file://other/a.tgz", "file:///a/../../b", "/srv/a.tgz"] {
            assert!(parse_url(bad, root).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaping_entry_paths_are_recognised() {
        assert!(escapes(Path::new("/etc/passwd")));
        assert!(escapes(Path::new("a/../../b")));
        assert!(!escapes(Path::new("hello-1.0/./src/main.c")));
    }

    #[test]
    fn digests_are_checked_and_lowercased() {
        assert_eq!(check_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(check_sha256("abc").is_err());
        assert!(check_sha256(&"g".repeat(64)).is_err());
    }
}
