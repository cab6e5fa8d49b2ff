//! `assign.yaml`: which modules apply to which envoys.
//!
//! A list of entries `{match: GLOB, traits: {dotted.path: value}, modules: [..], vars: {..}}`.
//! Every entry whose hostname glob (case-insensitive) matches and whose trait conditions all
//! hold applies; modules of all matching entries are unioned in entry order, and vars merge
//! with the earlier entry winning per key (first match wins).

use std::collections::BTreeSet;

use globset::{GlobBuilder, GlobMatcher};

use super::traits::Traits;
use super::yaml::{self, Node};
use super::{ASSIGN_FILE, Diag};

/// Names the template context sets itself; vars may not shadow them.
pub(crate) const RESERVED_VARS: &[&str] = &["hostname", "traits"];

const ENTRY_FIELDS: &[&str] = &["match", "traits", "modules", "vars"];

pub(crate) struct AssignEntry {
    /// Line of the entry in `assign.yaml`.
    pub line: usize,
    /// `None` when the glob is invalid (already reported); such an entry never matches.
    glob: Option<GlobMatcher>,
    traits: Vec<TraitCondition>,
    /// Known module names with the line that names them, without duplicates.
    pub modules: Vec<(String, usize)>,
    pub vars: serde_json::Map<String, serde_json::Value>,
}

/// `os.family: debian` (or a list of accepted values): the trait at the dotted path, as a
/// string, must equal one of `values`.
struct TraitCondition {
    path: String,
    values: Vec<String>,
}

impl AssignEntry {
    pub fn matches(&self, hostname: &str, traits: &Traits) -> bool {
        let Some(glob) = &self.glob else { return false };
        glob.is_match(hostname)
            && self.traits.iter().all(|c| trait_string(traits, &c.path).is_some_and(|v| c.values.contains(&v)))
    }
}

/// The trait at a dotted path, as a string. At each level a key equal to the whole remaining
/// path wins over splitting it, so flat keys like `"os.family"` work too.
fn trait_string(traits: &Traits, path: &str) -> Option<String> {
    if let Some(value) = traits.get(path) {
        return value.scalar_string();
    }
    for (dot, _) in path.match_indices('.') {
        if let Some(value) = traits.get(&path[..dot])
            && let Some(found) = trait_string(&value, &path[dot + 1..])
        {
            return Some(found);
        }
    }
    None
}

/// Parses `assign.yaml`, reporting every problem; unknown modules are reported and left out.
pub(crate) fn parse(src: &str, known_modules: &BTreeSet<String>, diag: &mut Diag) -> Vec<AssignEntry> {
    let Some(root) = yaml::parse(ASSIGN_FILE, src, diag) else { return Vec::new() };
    if root.is_null() {
        return Vec::new();
    }
    let Some(items) = root.as_seq() else {
        diag.at(ASSIGN_FILE, root.line, format!("expected a list of entries, found {}", root.describe()));
        return Vec::new();
    };
    items.iter().filter_map(|item| parse_entry(item, known_modules, diag)).collect()
}

fn parse_entry(item: &Node, known_modules: &BTreeSet<String>, diag: &mut Diag) -> Option<AssignEntry> {
    let Some(pairs) = item.as_map() else {
        diag.at(ASSIGN_FILE, item.line, format!("an entry must be a mapping, found {}", item.describe()));
        return None;
    };
    let fields = yaml::fields(pairs, ENTRY_FIELDS, "an assign entry", ASSIGN_FILE, diag);
    let glob = match fields.get("match") {
        None => {
            diag.at(ASSIGN_FILE, item.line, "missing field \"match\" (a hostname glob)");
            None
        }
        Some(node) => parse_glob(node, diag),
    };
    let traits = fields.get("traits").map(|node| parse_traits(node, diag)).unwrap_or_default();
    let modules = match fields.get("modules") {
        None => {
            diag.at(ASSIGN_FILE, item.line, "missing field \"modules\"");
            Vec::new()
        }
        Some(node) => parse_modules(node, known_modules, diag),
    };
    let vars = fields.get("vars").map(|node| parse_vars(node, diag)).unwrap_or_default();
    Some(AssignEntry { line: item.line, glob, traits, modules, vars })
}

fn parse_glob(node: &Node, diag: &mut Diag) -> Option<GlobMatcher> {
    let Some(pattern) = node.as_scalar() else {
        diag.at(ASSIGN_FILE, node.line, format!("\"match\" must be a hostname glob, found {}", node.describe()));
        return None;
    };
    match GlobBuilder::new(pattern).case_insensitive(true).build() {
        Ok(glob) => Some(glob.compile_matcher()),
        Err(e) => {
            diag.at(ASSIGN_FILE, node.line, format!("invalid glob \"{pattern}\": {}", e.kind()));
            None
        }
    }
}

fn parse_traits(node: &Node, diag: &mut Diag) -> Vec<TraitCondition> {
    let Some(pairs) = node.as_map() else {
        diag.at(
            ASSIGN_FILE,
            node.line,
            format!("\"traits\" must be a mapping of dotted path to value, found {}", node.describe()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in pairs {
        let Some(path) = key.as_scalar() else { continue };
        let values: Option<Vec<String>> = match value.as_seq() {
            Some(items) => items.iter().map(|i| i.as_scalar().map(str::to_string)).collect(),
            None => value.as_scalar().map(|s| vec![s.to_string()]),
        };
        match values {
            Some(values) if !path.is_empty() && !path.split('.').any(str::is_empty) => {
                out.push(TraitCondition { path: path.to_string(), values })
            }
            Some(_) => diag.at(ASSIGN_FILE, key.line, format!("invalid trait path \"{path}\"")),
            None => diag.at(
                ASSIGN_FILE,
                value.line,
                format!("trait condition \"{path}\" must be a scalar or a list of scalars"),
            ),
        }
    }
    out
}

fn parse_modules(node: &Node, known_modules: &BTreeSet<String>, diag: &mut Diag) -> Vec<(String, usize)> {
    let Some(items) = node.as_seq() else {
        diag.at(
            ASSIGN_FILE,
            node.line,
            format!("\"modules\" must be a list of module names, found {}", node.describe()),
        );
        return Vec::new();
    };
    let mut out: Vec<(String, usize)> = Vec::new();
    for item in items {
        let Some(name) = item.as_scalar() else {
            diag.at(ASSIGN_FILE, item.line, format!("a module name must be a string, found {}", item.describe()));
            continue;
        };
        if !known_modules.contains(name) {
            diag.at(ASSIGN_FILE, item.line, format!("unknown module \"{name}\" (no modules/{name}/module.yaml)"));
        } else if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), item.line));
        }
    }
    out
}

fn parse_vars(node: &Node, diag: &mut Diag) -> serde_json::Map<String, serde_json::Value> {
    if node.is_null() {
        return serde_json::Map::new();
    }
    let Some(pairs) = node.as_map() else {
        diag.at(ASSIGN_FILE, node.line, format!("\"vars\" must be a mapping, found {}", node.describe()));
        return serde_json::Map::new();
    };
    let mut out = serde_json::Map::new();
    for (key, value) in pairs {
        let Some(name) = key.as_scalar() else { continue };
        if RESERVED_VARS.contains(&name) {
            diag.at(ASSIGN_FILE, key.line, format!("var \"{name}\" is reserved: templates get it from the envoy"));
            continue;
        }
        out.insert(name.to_string(), value.to_json());
    }
    out
}
