//! Unpacking a published stack: a gzip-compressed tar, as `vigocli config publish` packs it,
//! into the in-memory file map [`super::Stack::from_files`] reads. Nothing touches the disk.
//!
//! Only regular files and directories are accepted; absolute paths, `..` components, links and
//! special files are refused (each one reported), and the unpacked size and file count are
//! bounded while reading, so a gzip bomb stops at the limit rather than at the end of memory.

use std::collections::BTreeMap;
use std::io::{self, Read};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::limits::{STACK_FILES_MAX, STACK_UNPACKED_BYTES_MAX, TAR_OVERHEAD_BYTES_MAX};
use super::{Diag, StackError, StackErrors};

pub(crate) fn unpack(archive: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, StackErrors> {
    let mut diag = Diag::default();
    let stream =
        BoundedReader { inner: GzDecoder::new(archive), left: STACK_UNPACKED_BYTES_MAX + TAR_OVERHEAD_BYTES_MAX };
    let mut tar = tar::Archive::new(stream);
    let mut files = BTreeMap::new();
    let mut n_bytes = 0usize;
    let entries = match tar.entries() {
        Ok(entries) => entries,
        Err(e) => return Err(invalid(&e)),
    };
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(&e))?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // Archive-wide metadata (`git archive` writes the commit id there), not a file.
            continue;
        }
        let Ok(raw_path) = String::from_utf8(entry.path_bytes().into_owned()) else {
            let lossy = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            diag.file(&lossy, "path is not valid UTF-8");
            continue;
        };
        let is_root = raw_path.split('/').all(|c| c.is_empty() || c == ".");
        if kind == EntryType::Directory && is_root {
            // `tar -C stack .` starts with a `./` entry.
            continue;
        }
        let path = match normalize_path(&raw_path) {
            Ok(path) => path,
            Err(reason) => {
                diag.file(&raw_path, reason);
                continue;
            }
        };
        match kind {
            EntryType::Directory => continue,
            EntryType::Regular | EntryType::Continuous => {}
            EntryType::Symlink | EntryType::Link => {
                diag.file(&path, "links are not allowed in a stack archive");
                continue;
            }
            other => {
                diag.file(&path, format!("unsupported archive entry type {other:?}"));
                continue;
            }
        }
        if files.len() == STACK_FILES_MAX {
            diag.file("", format!("archive has more than {STACK_FILES_MAX} files"));
            break;
        }
        let size = usize::try_from(entry.size()).unwrap_or(usize::MAX);
        if size > STACK_UNPACKED_BYTES_MAX - n_bytes {
            diag.file("", format!("archive unpacks to more than {STACK_UNPACKED_BYTES_MAX} bytes"));
            break;
        }
        let mut bytes = Vec::with_capacity(size);
        entry.read_to_end(&mut bytes).map_err(|e| invalid(&e))?;
        n_bytes += bytes.len();
        if files.insert(path.clone(), bytes).is_some() {
            diag.file(&path, "appears twice in the archive");
        }
    }
    diag.finish(files)
}

/// A stack-relative path without `./` and empty components; absolute paths and `..` refused.
pub(crate) fn normalize_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') || path.starts_with('\\') {
        return Err("absolute path not allowed in a stack".to_string());
    }
    let mut parts = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("path escapes the stack root with \"..\"".to_string()),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("empty path".to_string());
    }
    Ok(parts.join("/"))
}

fn invalid(e: &io::Error) -> StackErrors {
    StackErrors(vec![StackError { file: String::new(), line: None, reason: format!("invalid stack archive: {e}") }])
}

/// Fails reads once `left` bytes were read: bounds the decompressed stream, tar headers and
/// padding included, whatever the headers claim.
struct BoundedReader<R> {
    inner: R,
    left: usize,
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other(format!("archive unpacks to more than {STACK_UNPACKED_BYTES_MAX} bytes")));
        }
        let n = buf.len().min(self.left);
        let read = self.inner.read(&mut buf[..n])?;
        self.left -= read;
        Ok(read)
    }
}
