//! Packs a stack directory into the archive `config publish` sends: a gzip-compressed tar
//! whose bytes depend only on the files' paths and contents (sorted entries, fixed mode,
//! owner and time), so the same stack always has the same SHA-256.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Files in `dir`, recursively, sorted, skipping hidden entries (`.git` and the like).
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            } else {
                bail!("{}: only regular files and directories may be in a stack", entry.path().display());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The archive of the stack in `dir`.
pub fn pack_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    if !dir.join("assign.yaml").is_file() {
        bail!("{} is not a stack: it has no assign.yaml", dir.display());
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for path in files(dir)? {
        let rel = path.strip_prefix(dir).expect("walked from dir");
        let data = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, rel, data.as_slice()).with_context(|| format!("cannot pack {}", rel.display()))?;
    }
    Ok(tar.into_inner()?.finish()?)
}
