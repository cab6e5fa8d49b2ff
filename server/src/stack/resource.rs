//! Resource types of `module.yaml`: their fields, how each field is validated, and resource ids.
//!
//! Every type shares `type`, `requires`, `before`, `notify` and `subscribe`; the rest is a table
//! ([`TYPES`]) of fields per type, so adding a type or a field is one line. file, directory,
//! symlink and exec become typed specs; the other types are validated here and shipped as their
//! fields in JSON (`OpaqueSpec`), which the envoy's executor for the type parses again.
//!
//! Ids: `file:<path>`, `directory:<path>`, `symlink:<path>`, `git:<path>`, `exec:<name>` (or
//! `exec:<command>` without a name), otherwise `<type>:<name>`. Paths are absolute and
//! normalized (`//` and `.` removed); a `..` component is an error, since `envoy --root` must
//! be able to confine every managed path.

use std::collections::BTreeMap;

use vigo_proto::bundle::{DirectorySpec, ExecSpec, SymlinkSpec};

use super::Diag;
use super::yaml::{self, Node};

pub(crate) struct ResourceDef {
    pub id: String,
    pub kind: &'static str,
    /// Line of the resource in its module.yaml.
    pub line: usize,
    pub requires: Vec<Ref>,
    pub before: Vec<Ref>,
    pub notify: Vec<Ref>,
    pub subscribe: Vec<Ref>,
    pub spec: SpecDef,
}

impl ResourceDef {
    /// All outgoing references, whatever their kind.
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.requires.iter().chain(&self.before).chain(&self.notify).chain(&self.subscribe)
    }
}

/// A reference to another resource by id, and the line it is written on.
pub(crate) struct Ref {
    pub id: String,
    pub line: usize,
}

pub(crate) enum SpecDef {
    File(FileDef),
    Directory(DirectorySpec),
    Symlink(SymlinkSpec),
    Exec(ExecSpec),
    /// The type-specific fields as a JSON object (keys sorted, so bundles are deterministic).
    Opaque(String),
}

pub(crate) struct FileDef {
    pub path: String,
    pub ensure: String,
    pub content: Content,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// Where a file's bytes come from; names are relative to the module's `files/`.
pub(crate) enum Content {
    None,
    Inline(String),
    Template(String),
    Source(String),
}

/// How a field's value is read and checked.
#[derive(Clone, Copy)]
enum Kind {
    /// Any scalar, as written (`version: 1.10` is "1.10").
    Str,
    /// A non-empty scalar (names that become ids).
    Name,
    Bool,
    U32,
    /// Permission bits, always read as octal digits as in chmod: `0644`, `"0644"`, `644` and
    /// `0o644` all mean 0o644.
    Mode,
    /// One of the listed words.
    OneOf(&'static [&'static str]),
    /// An absolute path on the envoy, normalized; `..` refused.
    AbsPath,
    /// A file below the module's `files/`; `..` and absolute paths refused.
    FilesName,
    /// A list of scalars (a single scalar is a list of one).
    StrList,
    /// A mapping of scalar to scalar.
    StrMap,
    /// A numeric id or a name (`gid: 1000` or `gid: staff`).
    IdOrName,
    /// 64 hex digits.
    Sha256,
    /// Five cron fields or an `@daily`-style keyword.
    Schedule,
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: true }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: false }
}

struct TypeSchema {
    name: &'static str,
    fields: &'static [Field],
}

const PRESENT_ABSENT: Kind = Kind::OneOf(&["present", "absent"]);

/// Fields every resource type has.
const COMMON_FIELDS: &[&str] = &["type", "requires", "before", "notify", "subscribe"];

/// Every resource type and its fields. Conditional rules (exactly one content source, fields
/// needed unless `absent`) are in [`build_spec`].
const TYPES: &[TypeSchema] = &[
    TypeSchema {
        name: "file",
        fields: &[
            req("path", Kind::AbsPath),
            opt("ensure", PRESENT_ABSENT),
            opt("content", Kind::Str),
            opt("template", Kind::FilesName),
            opt("source", Kind::FilesName),
            opt("mode", Kind::Mode),
            opt("owner", Kind::Str),
            opt("group", Kind::Str),
        ],
    },
    TypeSchema {
        name: "directory",
        fields: &[
            req("path", Kind::AbsPath),
            opt("ensure", PRESENT_ABSENT),
            opt("mode", Kind::Mode),
            opt("owner", Kind::Str),
            opt("group", Kind::Str),
        ],
    },
    TypeSchema {
        name: "symlink",
        fields: &[req("path", Kind::AbsPath), opt("target", Kind::Name), opt("ensure", PRESENT_ABSENT)],
    },
    TypeSchema {
        name: "exec",
        fields: &[
            req("command", Kind::Name),
            opt("name", Kind::Name),
            opt("creates", Kind::AbsPath),
            opt("unless", Kind::Str),
            opt("onlyif", Kind::Str),
            opt("refreshonly", Kind::Bool),
            opt("cwd", Kind::AbsPath),
            opt("timeout", Kind::U32),
            opt("environment", Kind::StrMap),
            opt("user", Kind::Str),
        ],
    },
    TypeSchema {
        name: "package",
        fields: &[
            req("name", Kind::Name),
            opt("state", Kind::OneOf(&["present", "absent", "latest"])),
            opt("version", Kind::Str),
            opt("provider", Kind::Str),
        ],
    },
    TypeSchema {
        name: "service",
        fields: &[
            req("name", Kind::Name),
            opt("state", Kind::OneOf(&["running", "stopped"])),
            opt("enabled", Kind::Bool),
            opt("provider", Kind::Str),
        ],
    },
    TypeSchema {
        name: "user",
        fields: &[
            req("name", Kind::Name),
            opt("uid", Kind::U32),
            opt("gid", Kind::IdOrName),
            opt("groups", Kind::StrList),
            opt("shell", Kind::Str),
            opt("home", Kind::AbsPath),
            opt("state", PRESENT_ABSENT),
            opt("system", Kind::Bool),
        ],
    },
    TypeSchema {
        name: "group",
        fields: &[
            req("name", Kind::Name),
            opt("gid", Kind::U32),
            opt("state", PRESENT_ABSENT),
            opt("system", Kind::Bool),
        ],
    },
    TypeSchema {
        name: "cron",
        fields: &[
            req("name", Kind::Name),
            opt("command", Kind::Name),
            opt("user", Kind::Str),
            opt("schedule", Kind::Schedule),
            opt("state", PRESENT_ABSENT),
        ],
    },
    TypeSchema {
        name: "git",
        fields: &[
            req("path", Kind::AbsPath),
            opt("source", Kind::Name),
            opt("revision", Kind::Str),
            opt("state", Kind::OneOf(&["present", "absent", "latest"])),
        ],
    },
    TypeSchema {
        name: "source_package",
        fields: &[
            req("name", Kind::Name),
            req("url", Kind::Name),
            req("sha256", Kind::Sha256),
            opt("build", Kind::StrList),
            opt("creates", Kind::AbsPath),
        ],
    },
    TypeSchema {
        name: "docker",
        fields: &[
            req("name", Kind::Name),
            opt("image", Kind::Name),
            opt("state", Kind::OneOf(&["running", "stopped", "present", "absent"])),
            opt("ports", Kind::StrList),
            opt("env", Kind::StrMap),
            opt("volumes", Kind::StrList),
        ],
    },
    TypeSchema {
        name: "repository",
        fields: &[
            req("name", Kind::Name),
            req("kind", Kind::OneOf(&["apt", "dnf"])),
            opt("url", Kind::Name),
            opt("key", Kind::Str),
            opt("suites", Kind::StrList),
            opt("components", Kind::StrList),
            opt("state", PRESENT_ABSENT),
        ],
    },
];

/// Types whose id is their path rather than their name.
const PATH_TYPES: &[&str] = &["file", "directory", "symlink", "git"];

/// A field's value after validation.
#[derive(Clone)]
enum FieldValue {
    Str(String),
    Bool(bool),
    U32(u32),
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

impl FieldValue {
    fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Str(s) => s.clone().into(),
            FieldValue::Bool(b) => (*b).into(),
            FieldValue::U32(n) => (*n).into(),
            FieldValue::List(items) => items.clone().into(),
            FieldValue::Map(map) => map.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect(),
        }
    }
}

/// The validated fields of one resource, with the line of each.
struct Values(BTreeMap<&'static str, (FieldValue, usize)>);

impl Values {
    fn str(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some((FieldValue::Str(s), _)) => Some(s),
            _ => None,
        }
    }

    fn string(&self, name: &str) -> String {
        self.str(name).unwrap_or_default().to_string()
    }

    fn line(&self, name: &str) -> Option<usize> {
        self.0.get(name).map(|(_, line)| *line)
    }

    fn u32(&self, name: &str) -> u32 {
        match self.0.get(name) {
            Some((FieldValue::U32(n), _)) => *n,
            _ => 0,
        }
    }

    fn bool(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some((FieldValue::Bool(true), _)))
    }

    fn to_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> =
            self.0.iter().map(|(name, (value, _))| (name.to_string(), value.to_json())).collect();
        serde_json::Value::Object(object).to_string()
    }
}

/// Parses one `module.yaml`: a mapping with a `resources:` list. Resources with errors are
/// reported and, when their id is known, still returned, so references to them do not add
/// spurious "unknown resource" errors.
pub(crate) fn parse_module(
    file: &str,
    src: &str,
    module_files: &BTreeMap<String, Vec<u8>>,
    diag: &mut Diag,
) -> Vec<ResourceDef> {
    let Some(root) = yaml::parse(file, src, diag) else { return Vec::new() };
    if root.is_null() {
        return Vec::new();
    }
    let Some(pairs) = root.as_map() else {
        diag.at(file, root.line, format!("expected a mapping with \"resources\", found {}", root.describe()));
        return Vec::new();
    };
    let fields = yaml::fields(pairs, &["resources"], "module.yaml", file, diag);
    let Some(resources) = fields.get("resources").filter(|node| !node.is_null()) else { return Vec::new() };
    let Some(items) = resources.as_seq() else {
        diag.at(file, resources.line, format!("\"resources\" must be a list, found {}", resources.describe()));
        return Vec::new();
    };
    let ctx = Ctx { file, module_files };
    items.iter().filter_map(|item| ctx.resource(item, diag)).collect()
}

struct Ctx<'a> {
    file: &'a str,
    module_files: &'a BTreeMap<String, Vec<u8>>,
}

impl Ctx<'_> {
    fn resource(&self, item: &Node, diag: &mut Diag) -> Option<ResourceDef> {
        let Some(pairs) = item.as_map() else {
            diag.at(self.file, item.line, format!("a resource must be a mapping, found {}", item.describe()));
            return None;
        };
        let type_node = pairs.iter().find(|(k, _)| k.as_scalar() == Some("type")).map(|(_, v)| v);
        let Some(type_node) = type_node else {
            diag.at(self.file, item.line, "missing field \"type\"");
            return None;
        };
        let type_name = type_node.as_scalar().unwrap_or_default();
        let Some(schema) = TYPES.iter().find(|t| t.name == type_name) else {
            let known: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
            diag.at(
                self.file,
                type_node.line,
                format!("unknown resource type \"{type_name}\" (known: {})", known.join(", ")),
            );
            return None;
        };

        let mut allowed: Vec<&str> = COMMON_FIELDS.to_vec();
        allowed.extend(schema.fields.iter().map(|f| f.name));
        let what = format!("a {} resource", schema.name);
        let nodes = yaml::fields(pairs, &allowed, &what, self.file, diag);

        let mut values = Values(BTreeMap::new());
        for field in schema.fields {
            match nodes.get(field.name) {
                Some(node) => match self.value(field, node) {
                    Ok(value) => {
                        values.0.insert(field.name, (value, node.line));
                    }
                    Err(reason) => diag.at(self.file, node.line, reason),
                },
                None if field.required => {
                    diag.at(self.file, item.line, format!("missing field \"{}\" in {what}", field.name));
                }
                None => {}
            }
        }
        let mut refs = |name: &str| nodes.get(name).map(|node| self.refs(name, node, diag)).unwrap_or_default();
        let (requires, before, notify, subscribe) =
            (refs("requires"), refs("before"), refs("notify"), refs("subscribe"));

        let id = resource_id(schema.name, &values)?;
        let spec = self.build_spec(schema.name, &values, item.line, diag);
        Some(ResourceDef { id, kind: schema.name, line: item.line, requires, before, notify, subscribe, spec })
    }

    fn value(&self, field: &Field, node: &Node) -> Result<FieldValue, String> {
        let name = field.name;
        let scalar =
            || node.as_scalar().ok_or_else(|| format!("\"{name}\" must be a scalar, found {}", node.describe()));
        Ok(match field.kind {
            Kind::Str => FieldValue::Str(scalar()?.to_string()),
            Kind::Name => {
                let text = scalar()?;
                if text.trim().is_empty() {
                    return Err(format!("\"{name}\" must not be empty"));
                }
                FieldValue::Str(text.to_string())
            }
            Kind::Bool => FieldValue::Bool(node.as_bool().ok_or_else(|| format!("\"{name}\" must be true or false"))?),
            Kind::U32 => FieldValue::U32(
                node.as_int()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| format!("\"{name}\" must be a whole number from 0 to {}", u32::MAX))?,
            ),
            Kind::Mode => FieldValue::U32(parse_mode(scalar()?)?),
            Kind::OneOf(words) => {
                let text = scalar()?;
                if !words.contains(&text) {
                    return Err(format!("invalid {name} \"{text}\": expected one of {}", words.join(", ")));
                }
                FieldValue::Str(text.to_string())
            }
            Kind::AbsPath => {
                FieldValue::Str(normalize_abs_path(scalar()?).map_err(|e| format!("invalid {name}: {e}"))?)
            }
            Kind::FilesName => {
                let text = scalar()?;
                let normal = normalize_files_name(text).map_err(|e| format!("invalid {name}: {e}"))?;
                if !self.module_files.contains_key(&normal) {
                    let module_dir = self.file.trim_end_matches("module.yaml");
                    return Err(format!("{name} file \"{text}\" not found in {module_dir}files/"));
                }
                FieldValue::Str(normal)
            }
            Kind::StrList => match node.as_seq() {
                Some(items) => FieldValue::List(
                    items
                        .iter()
                        .map(|i| i.as_scalar().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("\"{name}\" must be a list of scalars"))?,
                ),
                None => FieldValue::List(vec![scalar()?.to_string()]),
            },
            Kind::StrMap => {
                let pairs =
                    node.as_map().ok_or_else(|| format!("\"{name}\" must be a mapping, found {}", node.describe()))?;
                let mut map = BTreeMap::new();
                for (k, v) in pairs {
                    let (Some(k), Some(v)) = (k.as_scalar(), v.as_scalar()) else {
                        return Err(format!("\"{name}\" must map names to scalar values"));
                    };
                    map.insert(k.to_string(), v.to_string());
                }
                FieldValue::Map(map)
            }
            Kind::IdOrName => match node.as_int().and_then(|i| u32::try_from(i).ok()) {
                Some(n) => FieldValue::U32(n),
                None => FieldValue::Str(scalar()?.to_string()),
            },
            Kind::Sha256 => {
                let text = scalar()?;
                if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("\"{name}\" must be 64 hex digits"));
                }
                FieldValue::Str(text.to_ascii_lowercase())
            }
            Kind::Schedule => {
                let text = scalar()?;
                // What cron itself takes, and the envoy checks again: five fields of digits,
                // names, `*`, `/`, `,` and `-`, or one of cron's keywords.
                const KEYWORDS: [&str; 8] =
                    ["@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];
                let fields: Vec<&str> = text.split_whitespace().collect();
                let valid = match fields[..] {
                    [keyword] => KEYWORDS.contains(&keyword),
                    [_, _, _, _, _] => fields
                        .iter()
                        .all(|field| field.bytes().all(|b| b.is_ascii_alphanumeric() || b"*/,-".contains(&b))),
                    _ => false,
                };
                if !valid {
                    return Err(format!(
                        "invalid {name} \"{text}\": expected five cron fields or one of {}",
                        KEYWORDS.join(", ")
                    ));
                }
                FieldValue::Str(text.to_string())
            }
        })
    }

    /// `requires: type:name` or a list of them.
    fn refs(&self, name: &str, node: &Node, diag: &mut Diag) -> Vec<Ref> {
        let items: Vec<&Node> = match node.as_seq() {
            Some(items) => items.iter().collect(),
            None if node.is_null() => Vec::new(),
            None => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            let Some(text) = item.as_scalar() else {
                diag.at(self.file, item.line, format!("\"{name}\" must list references like \"package:nginx\""));
                continue;
            };
            match parse_ref(text) {
                Ok(id) => out.push(Ref { id, line: item.line }),
                Err(reason) => diag.at(self.file, item.line, reason),
            }
        }
        out
    }

    /// The spec of a resource, with the rules that tie fields together.
    fn build_spec(&self, kind: &str, values: &Values, line: usize, diag: &mut Diag) -> SpecDef {
        let absent = matches!(values.str("ensure").or(values.str("state")), Some("absent"));
        let mut need = |field: &str| {
            if !absent && !values.0.contains_key(field) {
                diag.at(
                    self.file,
                    line,
                    format!("missing field \"{field}\" in a {kind} resource (needed unless absent)"),
                );
            }
        };
        match kind {
            "file" => SpecDef::File(self.file_def(values, line, absent, diag)),
            "directory" => SpecDef::Directory(DirectorySpec {
                path: values.string("path"),
                mode: values.u32("mode"),
                owner: values.string("owner"),
                group: values.string("group"),
                ensure: values.str("ensure").unwrap_or("present").to_string(),
            }),
            "symlink" => {
                need("target");
                SpecDef::Symlink(SymlinkSpec {
                    path: values.string("path"),
                    target: values.string("target"),
                    ensure: values.str("ensure").unwrap_or("present").to_string(),
                })
            }
            "exec" => SpecDef::Exec(ExecSpec {
                command: values.string("command"),
                creates: values.string("creates"),
                unless: values.string("unless"),
                onlyif: values.string("onlyif"),
                refreshonly: values.bool("refreshonly"),
                cwd: values.string("cwd"),
                timeout_s: values.u32("timeout"),
                environment: match values.0.get("environment") {
                    Some((FieldValue::Map(map), _)) => map.clone().into_iter().collect(),
                    _ => Default::default(),
                },
                user: values.string("user"),
            }),
            _ => {
                match kind {
                    "cron" => ["command", "schedule"].into_iter().for_each(&mut need),
                    "git" => need("source"),
                    "docker" => need("image"),
                    "repository" => need("url"),
                    _ => {}
                }
                SpecDef::Opaque(values.to_json())
            }
        }
    }

    fn file_def(&self, values: &Values, line: usize, absent: bool, diag: &mut Diag) -> FileDef {
        let given: Vec<&str> =
            ["content", "template", "source"].into_iter().filter(|f| values.0.contains_key(f)).collect();
        if given.len() > 1 {
            let second = values.line(given[1]).unwrap_or(line);
            diag.at(
                self.file,
                second,
                format!("a file takes only one of content, template or source (found {})", given.join(" and ")),
            );
        } else if given.is_empty() && !absent {
            diag.at(self.file, line, "a file needs one of content, template or source (or ensure: absent)");
        }
        let content = match given.first() {
            Some(&"content") => Content::Inline(values.string("content")),
            Some(&"template") => Content::Template(values.string("template")),
            Some(&"source") => Content::Source(values.string("source")),
            _ => Content::None,
        };
        FileDef {
            path: values.string("path"),
            ensure: values.str("ensure").unwrap_or("present").to_string(),
            content,
            mode: values.u32("mode"),
            owner: values.string("owner"),
            group: values.string("group"),
        }
    }
}

/// The id of a resource, or `None` when the field it comes from is missing or invalid (that
/// is reported already).
fn resource_id(kind: &str, values: &Values) -> Option<String> {
    let key = match kind {
        k if PATH_TYPES.contains(&k) => values.str("path")?,
        "exec" => values.str("name").or(values.str("command"))?,
        _ => values.str("name")?,
    };
    Some(format!("{kind}:{key}"))
}

/// `type:name` → the id it refers to; paths of path types are normalized like `path` fields.
fn parse_ref(text: &str) -> Result<String, String> {
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("invalid reference \"{text}\": expected \"type:name\", like \"package:nginx\""));
    };
    if !TYPES.iter().any(|t| t.name == kind) {
        return Err(format!("invalid reference \"{text}\": unknown resource type \"{kind}\""));
    }
    if name.trim().is_empty() {
        return Err(format!("invalid reference \"{text}\": empty name"));
    }
    if PATH_TYPES.contains(&kind) {
        let path = normalize_abs_path(name).map_err(|e| format!("invalid reference \"{text}\": {e}"))?;
        return Ok(format!("{kind}:{path}"));
    }
    Ok(text.to_string())
}

/// `/etc//nginx/./x` → `/etc/nginx/x`; relative paths and `..` components are refused.
pub(crate) fn normalize_abs_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("\"{path}\" is not absolute"));
    }
    let mut out = String::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(format!("\"{path}\" escapes with \"..\"")),
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A name below a module's `files/`: relative, no `..`.
fn normalize_files_name(name: &str) -> Result<String, String> {
    if name.starts_with('/') {
        return Err(format!("\"{name}\" must be relative to the module's files/"));
    }
    let mut parts = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(format!("\"{name}\" escapes with \"..\"")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("empty path".to_string());
    }
    Ok(parts.join("/"))
}

/// chmod-style octal permission bits: `0644`, `644`, `0o644`, at most 0o7777.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let bad = || format!("invalid mode \"{text}\": expected octal permission bits like \"0644\"");
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode > 0o7777 {
        return Err(bad());
    }
    Ok(mode)
}
