//! Templates: one minijinja environment per module, loading from the module's `files/`, and
//! the two things done with it — checking templates at load time (syntax, undefined
//! variables) and rendering them for one envoy.
//!
//! Templates render config files, not HTML: no auto-escaping, the trailing newline is kept,
//! and an undefined variable is an error (`UndefinedBehavior::Strict`) rather than an empty
//! string in a config file. The context is the merged vars at top level plus `hostname` and
//! `traits`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use super::assign::RESERVED_VARS;
use super::limits::RENDERED_FILE_BYTES_MAX;
use super::resource::{Content, SpecDef};
use super::{Diag, Module, Stack, StackError};

/// The template environment of a module: templates are loaded by name from its `files/`, so
/// `{% include %}` and `{% import %}` reach the module's own files and nothing else.
pub(crate) fn environment(files: Arc<BTreeMap<String, Vec<u8>>>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_loader(move |name| match files.get(name) {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes.clone())
            .map(Some)
            .map_err(|_| Error::new(ErrorKind::CannotDeserialize, "template is not valid UTF-8")),
    });
    env
}

/// Checks every template a file resource names: it parses, and each variable it reads is
/// set for every assign entry that includes the module (or is `hostname`, `traits`, a builtin,
/// or guarded with `default`/`is defined`, see [`is_guarded`]). A variable set only by some of
/// those entries would fail to render on some envoys.
pub(crate) fn check(stack: &Stack, diag: &mut Diag) {
    for module in stack.modules.values() {
        let mut templates = BTreeSet::new();
        for res in &module.resources {
            if let SpecDef::File(file) = &res.spec
                && let Content::Template(name) = &file.content
            {
                templates.insert(name.as_str());
            }
        }
        let entries: Vec<_> =
            stack.entries.iter().filter(|e| e.modules.iter().any(|(name, _)| *name == module.name)).collect();
        let globals: BTreeSet<&str> = module.templates.globals().map(|(name, _)| name).collect();
        for name in templates {
            let template = match module.templates.get_template(name) {
                Ok(template) => template,
                Err(e) => {
                    diag.0.push(template_error(module, name, &e));
                    continue;
                }
            };
            let mut undeclared: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|var| !RESERVED_VARS.contains(&var.as_str()) && !globals.contains(var.as_str()))
                .filter(|var| !is_guarded(template.source(), var))
                .collect();
            undeclared.sort();
            for var in undeclared {
                let Some(entry) = entries.iter().find(|e| !e.vars.contains_key(&var)) else { continue };
                diag.0.push(StackError {
                    file: module.files_path(name),
                    line: first_line_mentioning(template.source(), &var),
                    reason: format!(
                        "undefined variable \"{var}\" (not in the vars of the assign.yaml entry at line {})",
                        entry.line
                    ),
                });
            }
        }
    }
}

/// Renders a module's template with `context`, bounded by [`RENDERED_FILE_BYTES_MAX`].
pub(crate) fn render(module: &Module, name: &str, context: &minijinja::Value) -> Result<Vec<u8>, StackError> {
    let template = module.templates.get_template(name).map_err(|e| template_error(module, name, &e))?;
    let mut out = BoundedWriter { bytes: Vec::new(), exceeded: false };
    match template.render_captured_to(context, &mut out) {
        Ok(_) => Ok(out.bytes),
        Err(_) if out.exceeded => Err(StackError {
            file: module.files_path(name),
            line: None,
            reason: format!("rendered file is larger than the limit of {RENDERED_FILE_BYTES_MAX} bytes"),
        }),
        Err(e) => Err(template_error(module, name, &e)),
    }
}

/// A minijinja error as a stack error on the template it happened in (an included template
/// when the error is there).
fn template_error(module: &Module, name: &str, e: &Error) -> StackError {
    let reason = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    StackError { file: module.files_path(e.name().unwrap_or(name)), line: e.line(), reason }
}

/// The first line where `var` is used inside a `{{ … }}` or `{% … %}` tag, else the first
/// line it appears on at all.
fn first_line_mentioning(source: &str, var: &str) -> Option<usize> {
    let line_of = |offset: usize| source[..offset].bytes().filter(|&b| b == b'\n').count() + 1;
    tag_mentions(source, var).first().copied().or_else(|| find_words(source, var).next()).map(line_of)
}

/// Whether the template treats `var` as optional somewhere: `var | default(…)`, `var | d(…)`,
/// `var is defined`, `var is undefined`, `var is not defined`. Such a variable is not required
/// of every assign entry; an unguarded use still fails the strict render at compile time.
fn is_guarded(source: &str, var: &str) -> bool {
    tag_mentions(source, var).into_iter().any(|offset| {
        let rest = source[offset + var.len()..].trim_start();
        if let Some(filter) = rest.strip_prefix('|') {
            let filter = filter.trim_start();
            let name_len = filter.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(filter.len());
            return matches!(&filter[..name_len], "default" | "d");
        }
        let Some(test) = rest.strip_prefix("is") else { return false };
        let test = test.trim_start();
        let test = test.strip_prefix("not").map_or(test, str::trim_start);
        ["defined", "undefined"].iter().any(|word| find_words(test, word).next() == Some(0))
    })
}

/// Offsets of `var` as an identifier inside `{{ … }}` and `{% … %}` tags, in source order.
fn tag_mentions(source: &str, var: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = find_tag_open(&source[at..]) {
        let start = at + open + 2;
        let close = if source[at + open..].starts_with("{{") { "}}" } else { "%}" };
        let end = source[start..].find(close).map_or(source.len(), |i| start + i);
        out.extend(find_words(&source[start..end], var).map(|offset| start + offset));
        at = end;
    }
    out
}

fn find_tag_open(s: &str) -> Option<usize> {
    match (s.find("{{"), s.find("{%")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Offsets of `word` as a whole identifier (not an attribute like `x.word`).
fn find_words<'a>(haystack: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    haystack.match_indices(word).map(|(i, _)| i).filter(move |&i| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + word.len()..].chars().next();
        !before.is_some_and(|c| is_ident(c) || c == '.') && !after.is_some_and(is_ident)
    })
}

/// Collects rendered output and fails the render once it exceeds the limit, so a runaway
/// template stops early instead of filling memory.
struct BoundedWriter {
    bytes: Vec<u8>,
    exceeded: bool,
}

impl io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > RENDERED_FILE_BYTES_MAX {
            self.exceeded = true;
            return Err(io::Error::other("rendered file too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
