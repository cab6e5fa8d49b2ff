//! The `cron` executor: one file per entry in ROOT/etc/cron.d, or its absence.
//!
//! The file is named from the resource name: letters, digits, `_` and `-` are kept, every other
//! character becomes `_` (cron ignores cron.d files with other characters, dots included), the
//! result is cut to [`CRON_FILE_NAME_STEM_CHARS_MAX`] characters, and `-` plus the first eight hex
//! digits of the name's SHA-256 follow, so names that map alike (`db backup`, `db.backup`) still
//! get files of their own, and a rename of the resource is a new file.
//!
//! The content is a first line saying which resource manages the file, then the entry:
//! `SCHEDULE USER COMMAND`. The schedule is five fields or one of cron's `@` keywords, written
//! with single spaces; the command is written as given, so `%` keeps its cron meaning (a newline;
//! write `\%` for a literal one). `user` defaults to root; it is not looked up, because the
//! account may be created by a user resource in the same run, and cron reports an unknown user
//! itself.
//!
//! The file is written atomically (a temporary file beside it, fsynced, renamed over it) with
//! mode 0644 and owner root:root, which is what cron requires of cron.d files. It is rewritten
//! only when its content differs; a wrong mode or owner alone is fixed in place. Cron notices a
//! changed cron.d by the directory's mtime, which the rename moves, so no reload is needed.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::attributes::Attributes;
use super::user::{check_account_name, parse_state};
use super::{Context, Ensure, Outcome, create_parent_dirs, io_failure, kind_of, lstat, write_atomically};
use crate::limits::{CRON_FILE_BYTES_MAX, CRON_FILE_NAME_STEM_CHARS_MAX};
use crate::root::managed_path;

/// Where the entries go, relative to ROOT.
const CRON_DIR: &str = "/etc/cron.d";

/// Mode, owner and group of an entry's file: cron skips cron.d files that are writable by group
/// or others, or not owned by root.
const CRON_FILE_ATTRIBUTES: Attributes = Attributes { mode: Some(0o644), uid: Some(0), gid: Some(0) };

/// The `@` keywords cron accepts instead of five fields.
const SCHEDULE_KEYWORDS: &[&str] =
    &["@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];

/// The stack fields of a cron resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CronSpec {
    name: String,
    command: Option<String>,
    user: Option<String>,
    schedule: Option<String>,
    state: Option<String>,
}

/// One entry line, split into what the report talks about.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    schedule: &'a str,
    user: &'a str,
    command: &'a str,
}

/// Converges one cron resource.
pub fn apply(json: &str, ctx: &Context<'_>) -> Outcome {
    converge(json, ctx).unwrap_or_else(Outcome::Failed)
}

/// The cron.d file name of the entry named `name` (see the module docs).
pub fn file_name(name: &str) -> String {
    let stem: String = name
        .chars()
        .take(CRON_FILE_NAME_STEM_CHARS_MAX)
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{stem}-{}", &hash[..8])
}

fn converge(json: &str, ctx: &Context<'_>) -> Result<Outcome, String> {
    let spec: CronSpec = serde_json::from_str(json).map_err(|err| format!("invalid cron spec: {err}"))?;
    if spec.name.trim().is_empty() || spec.name.chars().any(char::is_control) {
        return Err(format!("invalid cron name {:?}: empty or holding a control character", spec.name));
    }
    let state = parse_state(spec.state.as_deref())?;
    let shown = format!("{CRON_DIR}/{}", file_name(&spec.name));
    let path = managed_path(ctx.root, &shown).map_err(|err| err.to_string())?;
    let meta = lstat(&path).map_err(|err| io_failure("inspect", &path, &err))?;
    if let Some(meta) = meta.as_ref().filter(|meta| !meta.file_type().is_file()) {
        return Err(format!("{} is {}; refusing to manage it as a cron entry", path.display(), kind_of(meta)));
    }
    match state {
        Ensure::Absent => {
            if meta.is_none() {
                return Ok(Outcome::Unchanged);
            }
            if !ctx.noop {
                fs::remove_file(&path).map_err(|err| io_failure("remove", &path, &err))?;
            }
            Ok(Outcome::Changed(format!("removed {shown}")))
        }
        Ensure::Present => {
            let (schedule, user, command) = wanted_fields(&spec)?;
            let entry = Entry { schedule: &schedule, user, command };
            let content = format!(
                "# Managed by Vigo (resource cron:{}); changes made here are overwritten.\n{}\n",
                spec.name,
                entry_line(&entry)
            );
            present(ctx, &path, &shown, meta, &entry, &content)
        }
    }
}

fn present(
    ctx: &Context<'_>,
    path: &Path,
    shown: &str,
    meta: Option<fs::Metadata>,
    entry: &Entry<'_>,
    content: &str,
) -> Result<Outcome, String> {
    let Some(meta) = meta else {
        if !ctx.noop {
            create_parent_dirs(path).map_err(|err| io_failure("create parents of", path, &err))?;
            write_atomically(path, content.as_bytes(), 0o644, Some(0), Some(0))?;
        }
        return Ok(Outcome::Changed(format!("created {shown} ({} as {})", entry.schedule, entry.user)));
    };
    let have = read_capped(path)?;
    let content_differs = have.as_deref() != Some(content);
    let mut changes = Vec::new();
    if content_differs {
        match have.as_deref().and_then(parse_file) {
            Some(old) if old != *entry => {
                if old.schedule != entry.schedule {
                    changes.push(format!("schedule {:?} -> {:?}", old.schedule, entry.schedule));
                }
                if old.user != entry.user {
                    changes.push(format!("user {} -> {}", old.user, entry.user));
                }
                if old.command != entry.command {
                    changes.push(format!("command {:?} -> {:?}", old.command, entry.command));
                }
            }
            _ => changes.push("content replaced".to_string()),
        }
    }
    changes.extend(CRON_FILE_ATTRIBUTES.differences(&meta));
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    if !ctx.noop {
        if content_differs {
            write_atomically(path, content.as_bytes(), 0o644, Some(0), Some(0))?;
        } else {
            CRON_FILE_ATTRIBUTES.apply_to(path, &meta)?;
        }
    }
    Ok(Outcome::Changed(changes.join("; ")))
}

/// The schedule (normalized), user and command the spec asks for, validated so that they make
/// exactly one cron line.
fn wanted_fields(spec: &CronSpec) -> Result<(String, &str, &str), String> {
    let (Some(command), Some(schedule)) = (spec.command.as_deref(), spec.schedule.as_deref()) else {
        return Err("a cron entry needs command and schedule unless its state is absent".into());
    };
    if command.trim().is_empty() || command.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("invalid cron command {command:?}: empty or spanning lines"));
    }
    let user = spec.user.as_deref().unwrap_or("root");
    check_account_name("user", user)?;
    Ok((check_schedule(schedule)?, user, command))
}

/// Five fields of digits, names and `*/,-`, or one `@` keyword; returned as it will be written,
/// with single spaces between the fields.
fn check_schedule(schedule: &str) -> Result<String, String> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let valid = match fields[..] {
        [keyword] => SCHEDULE_KEYWORDS.contains(&keyword),
        [_, _, _, _, _] => {
            fields.iter().all(|field| field.bytes().all(|b| b.is_ascii_alphanumeric() || b"*/,-".contains(&b)))
        }
        _ => false,
    };
    if !valid {
        return Err(format!("invalid cron schedule {schedule:?}: expected five cron fields or @daily-style"));
    }
    Ok(fields.join(" "))
}

fn entry_line(entry: &Entry<'_>) -> String {
    format!("{} {} {}", entry.schedule, entry.user, entry.command)
}

/// The entry of a file in the format this executor writes (a comment line, then one entry
/// line), or `None` for anything else.
fn parse_file(content: &str) -> Option<Entry<'_>> {
    let mut lines = content.strip_suffix('\n')?.split('\n');
    let (Some(header), Some(line), None) = (lines.next(), lines.next(), lines.next()) else {
        return None;
    };
    if !header.starts_with('#') {
        return None;
    }
    let n_schedule_fields = if line.starts_with('@') { 1 } else { 5 };
    let mut parts = line.splitn(n_schedule_fields + 2, ' ');
    let schedule_len = parts.by_ref().take(n_schedule_fields).map(|field| field.len() + 1).sum::<usize>();
    let (Some(user), Some(command)) = (parts.next(), parts.next()) else {
        return None;
    };
    Some(Entry { schedule: line.get(..schedule_len.checked_sub(1)?)?, user, command })
}

/// The file's content, or `None` when it is larger than [`CRON_FILE_BYTES_MAX`] or not UTF-8
/// (neither is anything this executor wrote).
fn read_capped(path: &Path) -> Result<Option<String>, String> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(CRON_FILE_BYTES_MAX + 1).read_to_end(&mut bytes))
        .map_err(|err| io_failure("read", path, &err))?;
    if bytes.len() as u64 > CRON_FILE_BYTES_MAX {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_valid_stable_and_distinct() {
        let a = file_name("db backup");
        let b = file_name("db.backup");
        assert!(a.starts_with("db_backup-") && b.starts_with("db_backup-"), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, file_name("db backup"));
        let long = file_name(&"ü".repeat(300));
        assert_eq!(long.len(), CRON_FILE_NAME_STEM_CHARS_MAX + 9);
        for name in [a, b, long] {
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{name}");
        }
    }

    #[test]
    fn schedules() {
        assert_eq!(check_schedule("*/5 * * * *").unwrap(), "*/5 * * * *");
        assert_eq!(check_schedule(" 0\t3  * jan-mar mon,fri ").unwrap(), "0 3 * jan-mar mon,fri");
        assert_eq!(check_schedule("@daily").unwrap(), "@daily");
        for bad in ["@often", "* * * *", "* * * * * *", "0 3 * * ;", "@daily x", "0 3 * * é"] {
            assert!(check_schedule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_what_it_writes() {
        let entry = Entry { schedule: "0 3 * * *", user: "root", command: "run  --x  %y" };
        let content = format!("# header\n{}\n", entry_line(&entry));
        assert_eq!(parse_file(&content), Some(entry));
        let entry = Entry { schedule: "@hourly", user: "www-data", command: "true" };
        let content = format!("# header\n{}\n", entry_line(&entry));
        assert_eq!(parse_file(&content), Some(entry));
        assert_eq!(parse_file("0 3 * * * root x\n"), None);
        assert_eq!(parse_file("# h\n0 3 * * root\n"), None);
        assert_eq!(parse_file("# h\n0 3 * * * root x\nmore\n"), None);
    }
}
