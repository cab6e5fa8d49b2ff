//! The `repository` executor: one apt or dnf package repository, as a source file and the key
//! that signs it, both owned by vigo (`vigo-NAME`).
//!
//! - `kind: apt`: `/etc/apt/sources.list.d/vigo-NAME.sources` (deb822: `Types: deb`, `URIs`,
//!   `Suites`, `Components`, `Signed-By`) and the key in `/etc/apt/keyrings/vigo-NAME.asc`, so the
//!   key vouches for this repository only. `suites` is required; a suite ending in `/` is a flat
//!   repository and takes no `components`, any other needs at least one.
//! - `kind: dnf`: `/etc/yum.repos.d/vigo-NAME.repo` (section `[vigo-NAME]`, `gpgcheck=1`) and the key
//!   in `/etc/pki/rpm-gpg/vigo-NAME.asc`, named by `gpgkey=file://…`. dnf has no suites or
//!   components: they are refused.
//! - `key`: an ASCII-armored public key, inline. It is required, except for a `file:` URL (a
//!   directory on the host itself, as trustworthy as the file system holding its sources): without
//!   a key such a repository is written unsigned (`Trusted: yes`, `gpgcheck=0`). Any other URL
//!   without a key fails; there is no field to trust a remote repository unsigned.
//! - `state: absent` removes both files (a removal does not refresh the package lists; the next
//!   refresh drops what the repository offered).
//!
//! The key path written into the source file is where the package manager will open it:
//! `/etc/apt/keyrings/…` on a host, `ROOT/etc/apt/keyrings/…` under a sandbox root, because apt
//! (`Signed-By`) and dnf (`gpgkey`) read those paths as they are, outside their `Dir` or
//! `--installroot`.
//!
//! Files are compared byte for byte and written only when they differ, through a temporary file
//! renamed over the old one (mode 0644; an existing file's mode is left alone). Nothing refreshes
//! the package lists here: the package executor does that when it needs a package they lack.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;

use super::package::check_root;
use super::{Context, Outcome, create_parent_dirs, io_failure, kind_of, lstat, write_atomically};
use crate::limits::REPOSITORY_KEY_BYTES_MAX;
use crate::root::managed_path;

/// Converges one repository resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

/// The stack fields of a repository, as the server ships them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositorySpec {
    name: String,
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    suites: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    state: Option<String>,
}

/// Mode of the files written.
const FILE_MODE: u32 = 0o644;

/// Longest repository name: it becomes part of file names.
const NAME_CHARS_MAX: usize = 64;

/// One file as the resource wants it: with this content, or absent.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    /// The path inside the root, for messages.
    path: String,
    content: Option<String>,
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: RepositorySpec = serde_json::from_str(json).map_err(|err| format!("invalid repository spec: {err}"))?;
    check_name(&spec.name)?;
    let wanted = wanted_files(&spec, ctx.root).map_err(|err| format!("repository {}: {err}", spec.name))?;
    let mut changes = Vec::new();
    for file in &wanted {
        let path = managed_path(ctx.root, &file.path).map_err(|err| err.to_string())?;
        if let Some(change) = converge_file(&path, file, ctx.noop)? {
            changes.push(change);
        }
    }
    Ok(if changes.is_empty() { Outcome::Unchanged } else { Outcome::Changed(changes.join(", ")) })
}

/// The files of the repository, in the order they are written: the key before the source that
/// names it, and on removal the source before its key.
fn wanted_files(spec: &RepositorySpec, root: &Path) -> Result<Vec<Wanted>, String> {
    let name = &spec.name;
    let (source_path, key_path) = match spec.kind.as_str() {
        "apt" => (format!("/etc/apt/sources.list.d/vigo-{name}.sources"), format!("/etc/apt/keyrings/vigo-{name}.asc")),
        "dnf" => (format!("/etc/yum.repos.d/vigo-{name}.repo"), format!("/etc/pki/rpm-gpg/vigo-{name}.asc")),
        other => return Err(format!("unknown kind {other:?} (expected apt or dnf)")),
    };
    match spec.state.as_deref() {
        None | Some("present") => {}
        Some("absent") => {
            return Ok(vec![Wanted { path: source_path, content: None }, Wanted { path: key_path, content: None }]);
        }
        Some(other) => return Err(format!("unknown state {other:?} (expected present or absent)")),
    }

    let url = spec.url.as_deref().ok_or("a repository needs a url")?;
    let scheme = check_url(url)?;
    let key = spec.key.as_deref().map(check_key).transpose()?;
    if key.is_none() && scheme != "file" {
        return Err(format!("a {scheme}: repository needs a key (only file: repositories may be unsigned)"));
    }
    for word in spec.suites.iter().chain(&spec.components) {
        check_word(word)?;
    }
    // Where the package manager will open the key: apt and dnf do not look for it under ROOT.
    let key_seen_at = check_root(root)?.trim_end_matches('/').to_owned() + &key_path;
    let source = match spec.kind.as_str() {
        "apt" => apt_sources(spec, url, key.is_some().then_some(key_seen_at.as_str()))?,
        _ => dnf_repo(spec, url, key.is_some().then_some(key_seen_at.as_str()))?,
    };
    Ok(vec![Wanted { path: key_path, content: key }, Wanted { path: source_path, content: Some(source) }])
}

/// A deb822 `.sources` entry.
fn apt_sources(spec: &RepositorySpec, url: &str, key_path: Option<&str>) -> Result<String, String> {
    if spec.suites.is_empty() {
        return Err("an apt repository needs suites (a flat repository's is \"./\")".into());
    }
    let n_flat = spec.suites.iter().filter(|s| s.ends_with('/')).count();
    if n_flat == spec.suites.len() && !spec.components.is_empty() {
        return Err("a flat suite (ending in /) takes no components".into());
    }
    if n_flat == 0 && spec.components.is_empty() {
        return Err("an apt repository needs components unless its suite is flat (ends in /)".into());
    }
    if n_flat != 0 && n_flat != spec.suites.len() {
        return Err("flat suites (ending in /) and dists suites cannot share one repository".into());
    }
    let mut text = format!(
        "# Managed by vigo (repository {}); local changes are overwritten.\nTypes: deb\nURIs: {url}\nSuites: {}\n",
        spec.name,
        spec.suites.join(" ")
    );
    if !spec.components.is_empty() {
        text.push_str(&format!("Components: {}\n", spec.components.join(" ")));
    }
    match key_path {
        Some(path) => text.push_str(&format!("Signed-By: {path}\n")),
        None => text.push_str("Trusted: yes\n"),
    }
    Ok(text)
}

/// A `.repo` file with one section.
fn dnf_repo(spec: &RepositorySpec, url: &str, key_path: Option<&str>) -> Result<String, String> {
    if !spec.suites.is_empty() || !spec.components.is_empty() {
        return Err("suites and components are for apt repositories; a dnf repository is its url".into());
    }
    let name = &spec.name;
    let mut text = format!(
        "# Managed by vigo (repository {name}); local changes are overwritten.\n[vigo-{name}]\nname={name}\nbaseurl={url}\nenabled=1\n"
    );
    match key_path {
        Some(path) => text.push_str(&format!("gpgcheck=1\ngpgkey=file://{path}\n")),
        None => text.push_str("gpgcheck=0\n"),
    }
    Ok(text)
}

/// Names become file names: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.chars().count() <= NAME_CHARS_MAX
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid repository spec: name {name:?} must be letters, digits, '.', '_' or '-' (at most {NAME_CHARS_MAX})"
        ))
    }
}

/// A URL with a scheme and nothing that could end a field or a line; returns the scheme.
fn check_url(url: &str) -> Result<&str, String> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or("");
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if !scheme_ok || url.len() == scheme.len() + 1 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid url {url:?} (expected scheme:address without spaces)"));
    }
    Ok(scheme)
}

/// A suite or component: one word.
fn check_word(word: &str) -> Result<(), String> {
    if word.is_empty() || word.starts_with('#') || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid suite or component {word:?} (expected one word)"));
    }
    Ok(())
}

/// An ASCII-armored public key, returned with exactly one trailing newline.
fn check_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    if key.len() > REPOSITORY_KEY_BYTES_MAX {
        return Err(format!("key is {} bytes (at most {REPOSITORY_KEY_BYTES_MAX})", key.len()));
    }
    let armored = key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        && key.ends_with("-----END PGP PUBLIC KEY BLOCK-----")
        && !key.chars().any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t');
    if !armored {
        return Err("key must be one ASCII-armored public key block (-----BEGIN PGP PUBLIC KEY BLOCK-----)".into());
    }
    Ok(format!("{key}\n"))
}

/// Brings one file to what is wanted; returns the change made (or, in noop, to be made).
fn converge_file(path: &Path, wanted: &Wanted, noop: bool) -> Result<Option<String>, String> {
    let meta = lstat(path).map_err(|err| io_failure("inspect", path, &err))?;
    if let Some(meta) = &meta
        && !meta.file_type().is_file()
    {
        return Err(format!("{} is {}; refusing to replace or remove it", path.display(), kind_of(meta)));
    }
    let change = match (&wanted.content, meta) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            if !noop {
                fs::remove_file(path).map_err(|err| io_failure("remove", path, &err))?;
            }
            format!("removed {}", wanted.path)
        }
        (Some(content), Some(meta)) => {
            if has_content(path, &meta, content.as_bytes()).map_err(|err| io_failure("read", path, &err))? {
                return Ok(None);
            }
            if !noop {
                write_atomically(path, content.as_bytes(), FILE_MODE, None, None)?;
            }
            format!("updated {}", wanted.path)
        }
        (Some(content), None) => {
            if !noop {
                create_parent_dirs(path).map_err(|err| io_failure("create parents of", path, &err))?;
                write_atomically(path, content.as_bytes(), FILE_MODE, None, None)?;
            }
            format!("created {}", wanted.path)
        }
    };
    Ok(Some(change))
}

/// Whether the file at `path` holds exactly `content` (read no further than one byte past it).
fn has_content(path: &Path, meta: &fs::Metadata, content: &[u8]) -> io::Result<bool> {
    if meta.len() != content.len() as u64 {
        return Ok(false);
    }
    let mut have = Vec::with_capacity(content.len() + 1);
    fs::File::open(path)?.take(content.len() as u64 + 1).read_to_end(&mut have)?;
    Ok(have == content)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----";

    fn spec(kind: &str, url: &str, key: Option<&str>, suites: &[&str], components: &[&str]) -> RepositorySpec {
        RepositorySpec {
            name: "demo".into(),
            kind: kind.into(),
            url: Some(url.into()),
            key: key.map(str::to_owned),
            suites: suites.iter().map(|s| s.to_string()).collect(),
            components: components.iter().map(|s| s.to_string()).collect(),
            state: None,
        }
    }

    #[test]
    fn apt_sources_name_the_key_where_apt_opens_it() {
        let spec =
            spec("apt", "https://deb.example.org/debian", Some(KEY), &["bookworm", "bookworm-updates"], &["main"]);
        let files = wanted_files(&spec, Path::new("/")).unwrap();
        assert_eq!(
            files[0],
            Wanted { path: "/etc/apt/keyrings/vigo-demo.asc".into(), content: Some(format!("{KEY}\n")) }
        );
        assert_eq!(files[1].path, "/etc/apt/sources.list.d/vigo-demo.sources");
        assert_eq!(
            files[1].content.as_deref().unwrap(),
            "# Managed by vigo (repository demo); local changes are overwritten.\nTypes: deb\n\
             URIs: https://deb.example.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
             Signed-By: /etc/apt/keyrings/vigo-demo.asc\n"
        );
        let sandboxed = wanted_files(&spec, Path::new("/tmp/sandbox")).unwrap();
        assert!(
            sandboxed[1]
                .content
                .as_deref()
                .unwrap()
                .ends_with("Signed-By: /tmp/sandbox/etc/apt/keyrings/vigo-demo.asc\n")
        );
    }

    #[test]
    fn dnf_repo_names_its_key() {
        let spec = spec("dnf", "https://rpm.example.org/el9/$basearch", Some(KEY), &[], &[]);
        let files = wanted_files(&spec, Path::new("/")).unwrap();
        assert_eq!(files[0].path, "/etc/pki/rpm-gpg/vigo-demo.asc");
        assert_eq!(files[1].path, "/etc/yum.repos.d/vigo-demo.repo");
        assert_eq!(
            files[1].content.as_deref().unwrap(),
            "# Managed by vigo (repository demo); local changes are overwritten.\n[vigo-demo]\nname=demo\n\
             baseurl=https://rpm.example.org/el9/$basearch\nenabled=1\ngpgcheck=1\n\
             gpgkey=file:///etc/pki/rpm-gpg/vigo-demo.asc\n"
        );
    }

    #[test]
    fn only_file_urls_go_unsigned() {
        let apt = wanted_files(&spec("apt", "file:/srv/repo", None, &["./"], &[]), Path::new("/")).unwrap();
        assert_eq!(apt[0], Wanted { path: "/etc/apt/keyrings/vigo-demo.asc".into(), content: None });
        assert!(apt[1].content.as_deref().unwrap().ends_with("Suites: ./\nTrusted: yes\n"));
        let dnf = wanted_files(&spec("dnf", "file:///srv/repo", None, &[], &[]), Path::new("/")).unwrap();
        assert!(dnf[1].content.as_deref().unwrap().ends_with("enabled=1\ngpgcheck=0\n"));
        let err = wanted_files(&spec("apt", "http://deb.example.org", None, &["stable"], &["main"]), Path::new("/"));
        assert_eq!(err, Err("a http: repository needs a key (only file: repositories may be unsigned)".into()));
    }

    #[test]
    fn refuses_malformed_fields() {
        let root = Path::new("/");
        let cases = [
            (spec("apt", "file:/r", None, &[], &[]), "needs suites"),
            (spec("apt", "file:/r", None, &["./"], &["main"]), "takes no components"),
            (spec("apt", "file:/r", None, &["stable"], &[]), "needs components"),
            (spec("apt", "file:/r", None, &["./", "stable"], &["main"]), "cannot share"),
            (spec("apt", "file:/r", None, &["stable suite"], &["main"]), "one word"),
            (spec("dnf", "file:/r", None, &["stable"], &[]), "a dnf repository is its url"),
            (spec("apt", "no-scheme", None, &["./"], &[]), "invalid url"),
            (spec("apt", "https://x y", Some(KEY), &["./"], &[]), "invalid url"),
            (spec("apt", "https://x", Some("not a key"), &["./"], &[]), "ASCII-armored"),
            (spec("yum", "file:/r", None, &[], &[]), "unknown kind"),
        ];
        for (spec, expected) in cases {
            let err = wanted_files(&spec, root).unwrap_err();
            assert!(err.contains(expected), "{err} should say {expected}");
        }
        assert!(check_name("../etc").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("ok.name_1-2").is_ok());
    }
}
