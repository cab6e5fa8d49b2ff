//! The stack compiler: turns a published stack (`assign.yaml`, `modules/<name>/module.yaml`,
//! `modules/<name>/files/…`) into one policy [`Bundle`] per envoy.
//!
//! Loading ([`Stack::from_files`], [`Stack::from_archive`]) parses and validates the whole stack
//! once, at publish time, and reports *every* problem with file, line and reason, so an operator
//! fixes a stack in one round. Compiling ([`Stack::compile`]) is the per-envoy step: pick the
//! matching assign entries, merge their modules and vars, render templates, and wire the edges.
//! A loaded stack is immutable and holds no I/O handles; the server shares it as `Arc<Stack>`.
//!
//! Files of this module: `yaml` (a YAML tree that keeps line numbers), `assign` (which modules
//! apply to which envoys), `resource` (resource types, their fields and ids), `template`
//! (minijinja environment, checks, rendering), `graph` (duplicates and dependency cycles),
//! `compile` (the per-envoy bundle), `archive` (unpacking a published tar.gz), `limits`.

mod archive;
mod assign;
mod compile;
mod graph;
pub mod limits;
mod resource;
mod template;
pub mod traits;
mod yaml;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use vigo_proto::bundle::Bundle;

use assign::AssignEntry;
use resource::{Content, ResourceDef, SpecDef};
use traits::Traits;

/// Name of the file that says which modules apply to which envoys.
const ASSIGN_FILE: &str = "assign.yaml";

/// One problem in a stack: `modules/nginx/module.yaml:12: unknown resource type "pkg"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StackError {
    /// The file the problem is in, relative to the stack root; empty for problems with the
    /// archive as a whole.
    pub file: String,
    /// The 1-based line in `file`, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong, lowercase, no trailing period.
    pub reason: String,
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, _) => write!(f, "{}", self.reason),
            (false, Some(line)) => write!(f, "{}:{}: {}", self.file, line, self.reason),
            (false, None) => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl std::error::Error for StackError {}

/// Every problem found in a stack, sorted by file and line; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackErrors(pub Vec<StackError>);

impl fmt::Display for StackErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StackErrors {}

/// A parsed and fully validated stack. Immutable and cheap to share (`Arc<Stack>`).
pub struct Stack {
    entries: Vec<AssignEntry>,
    modules: BTreeMap<String, Module>,
}

/// One module: its resources in stack order and its `files/` (templates and static files).
struct Module {
    name: String,
    /// `modules/<name>/module.yaml`, for origins and errors.
    file: String,
    resources: Vec<ResourceDef>,
    /// Contents of `modules/<name>/files/`, keyed by the path below `files/`.
    files: Arc<BTreeMap<String, Vec<u8>>>,
    /// Templates are loaded from `files` through this environment (so `{% include %}` works
    /// within a module); it caches each parsed template.
    templates: minijinja::Environment<'static>,
}

impl Module {
    fn files_path(&self, name: &str) -> String {
        format!("modules/{}/files/{}", self.name, name)
    }
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("n_entries", &self.entries.len())
            .field("modules", &self.modules.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Stack {
    /// Reads a stack from an in-memory file map (relative path → bytes), the form the server
    /// gets after unpacking the archive. Files outside `assign.yaml` and `modules/` are ignored
    /// (READMEs, CI config). Reports every problem found.
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Result<Stack, StackErrors> {
        let mut diag = Diag::default();
        let files = normalize_files(files, &mut diag);
        let mut assign_src = None;
        let mut module_yaml: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut module_files: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        for (path, bytes) in files {
            if path == ASSIGN_FILE {
                assign_src = Some(bytes);
                continue;
            }
            let Some(rest) = path.strip_prefix("modules/") else { continue };
            let Some((name, below)) = rest.split_once('/') else { continue };
            if below == "module.yaml" {
                module_yaml.insert(name.to_string(), bytes);
            } else if let Some(file) = below.strip_prefix("files/") {
                module_files.entry(name.to_string()).or_default().insert(file.to_string(), bytes);
            }
        }
        for name in module_files.keys() {
            if !module_yaml.contains_key(name) {
                diag.file(&format!("modules/{name}"), "module has files/ but no module.yaml");
            }
        }

        let mut modules = BTreeMap::new();
        for (name, bytes) in module_yaml {
            let file = format!("modules/{name}/module.yaml");
            let files = Arc::new(module_files.remove(&name).unwrap_or_default());
            let resources = match text(&file, &bytes, &mut diag) {
                Some(src) => resource::parse_module(&file, src, &files, &mut diag),
                None => Vec::new(),
            };
            let templates = template::environment(files.clone());
            modules.insert(name.clone(), Module { name, file, resources, files, templates });
        }

        let known: BTreeSet<String> = modules.keys().cloned().collect();
        let entries = match assign_src {
            None => {
                diag.file(ASSIGN_FILE, "missing: a stack needs an assign.yaml at its root");
                Vec::new()
            }
            Some(bytes) => match text(ASSIGN_FILE, &bytes, &mut diag) {
                Some(src) => assign::parse(src, &known, &mut diag),
                None => Vec::new(),
            },
        };

        let stack = Stack { entries, modules };
        stack.check_references(&mut diag);
        stack.check_module_sets(&mut diag);
        template::check(&stack, &mut diag);
        diag.finish(stack)
    }

    /// Unpacks a gzip-compressed tar (as sent by `vigocli config publish`) and calls
    /// [`Stack::from_files`]. Refuses absolute paths, `..`, links and special files, and
    /// archives over [`limits::STACK_UNPACKED_BYTES_MAX`] or [`limits::STACK_FILES_MAX`].
    pub fn from_archive(archive: &[u8]) -> Result<Stack, StackErrors> {
        Stack::from_files(archive::unpack(archive)?)
    }

    /// The bundle for one envoy. `traits` is a JSON object (may be empty `{}`). Fails when the
    /// merged modules do not fit together for this envoy (a duplicate id, a reference to a
    /// resource outside its bundle, a cycle) or a template fails to render.
    pub fn compile(&self, version: u64, hostname: &str, traits: &Traits) -> Result<Bundle, StackErrors> {
        compile::compile(self, version, hostname, traits)
    }

    /// Which assign entries match (indices into `assign.yaml`'s list), so the server can key
    /// its bundle cache: envoys with the same entries (and template inputs) share a bundle.
    pub fn matching_entries(&self, hostname: &str, traits: &Traits) -> Vec<usize> {
        self.entries.iter().enumerate().filter(|(_, entry)| entry.matches(hostname, traits)).map(|(i, _)| i).collect()
    }

    /// Every resource reference must name a resource defined somewhere in the stack; whether
    /// it is in a given envoy's bundle is checked when compiling for that envoy.
    fn check_references(&self, diag: &mut Diag) {
        let all_ids: BTreeSet<&str> =
            self.modules.values().flat_map(|m| m.resources.iter().map(|r| r.id.as_str())).collect();
        for module in self.modules.values() {
            for res in &module.resources {
                for reference in res.refs() {
                    if !all_ids.contains(reference.id.as_str()) {
                        diag.at(
                            &module.file,
                            reference.line,
                            format!("reference to unknown resource \"{}\" (in {})", reference.id, res.id),
                        );
                    }
                }
            }
        }
    }

    /// Duplicate ids and dependency cycles among modules that are bundled together: each
    /// module alone, and the module set of each assign entry. Each problem is reported once.
    fn check_module_sets(&self, diag: &mut Diag) {
        let mut sets: Vec<Vec<&Module>> = self.modules.values().map(|m| vec![m]).collect();
        for entry in &self.entries {
            sets.push(entry.modules.iter().filter_map(|(name, _)| self.modules.get(name)).collect());
        }
        let mut seen = BTreeSet::new();
        for set in sets {
            let placed = graph::place(&set);
            for error in graph::duplicates(&placed).into_iter().chain(graph::cycles(&placed)) {
                if seen.insert(error.clone()) {
                    diag.0.push(error);
                }
            }
        }
    }
}

/// Collects problems; a stack is accepted only when none were found.
#[derive(Default)]
struct Diag(Vec<StackError>);

impl Diag {
    fn at(&mut self, file: &str, line: usize, reason: impl Into<String>) {
        self.0.push(StackError { file: file.to_string(), line: Some(line), reason: reason.into() });
    }

    fn file(&mut self, file: &str, reason: impl Into<String>) {
        self.0.push(StackError { file: file.to_string(), line: None, reason: reason.into() });
    }

    fn finish<T>(mut self, value: T) -> Result<T, StackErrors> {
        if self.0.is_empty() {
            return Ok(value);
        }
        self.0.sort();
        self.0.dedup();
        Err(StackErrors(self.0))
    }
}

/// Strips `./`, refuses paths that are absolute, escape with `..` or are empty, and enforces
/// the file-count and byte limits (a file map may come from elsewhere than [`archive`]).
fn normalize_files(files: BTreeMap<String, Vec<u8>>, diag: &mut Diag) -> BTreeMap<String, Vec<u8>> {
    if files.len() > limits::STACK_FILES_MAX {
        diag.file("", format!("stack has {} files, more than the limit of {}", files.len(), limits::STACK_FILES_MAX));
    }
    let n_bytes: usize = files.values().map(Vec::len).sum();
    if n_bytes > limits::STACK_UNPACKED_BYTES_MAX {
        diag.file(
            "",
            format!("stack has {n_bytes} bytes, more than the limit of {}", limits::STACK_UNPACKED_BYTES_MAX),
        );
    }
    let mut out = BTreeMap::new();
    for (path, bytes) in files {
        match archive::normalize_path(&path) {
            Ok(normal) => {
                out.insert(normal, bytes);
            }
            Err(reason) => diag.file(&path, reason),
        }
    }
    out
}

/// The UTF-8 text of a YAML or template file, or an error.
fn text<'a>(file: &str, bytes: &'a [u8], diag: &mut Diag) -> Option<&'a str> {
    match std::str::from_utf8(bytes) {
        Ok(src) => Some(src),
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            diag.at(file, line, "not valid UTF-8");
            None
        }
    }
}
