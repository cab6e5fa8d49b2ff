//! A YAML tree that keeps the line of every node, built from yaml-rust2's parser events, so that
//! every semantic error (unknown field, bad value, unknown reference) names its line.
//!
//! Scalars keep their source text: `mode: 0644` must mean octal 0644 as in chmod, not the
//! decimal 644 a YAML 1.2 resolver would make of it, and `version: 1.10` must stay "1.10".
//! Plain scalars are resolved (null, bool, integer, float) only when a value is converted to
//! JSON or read as a bool or integer.

use std::collections::{BTreeMap, HashMap};

use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::Diag;
use super::limits::{YAML_DEPTH_MAX, YAML_NODES_MAX};

/// A YAML node and the 1-based line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `plain` is false for quoted and block scalars and for `!!str`: those are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a non-null scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar { text, plain: true } => match Yaml::from_str(text) {
                Yaml::Boolean(b) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match &self.value {
            Value::Scalar { text, plain: true } => match Yaml::from_str(text) {
                Yaml::Integer(i) => Some(i),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(pairs) => Some(pairs),
            _ => None,
        }
    }

    /// "a list", "a mapping", "null" or "a scalar", for error messages.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar { .. } if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
        }
    }

    /// The value as JSON, resolving plain scalars with the YAML 1.2 core schema. Mapping keys
    /// become strings (their text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Scalar { text, plain: false } => J::String(text.clone()),
            Value::Scalar { text, plain: true } => match Yaml::from_str(text) {
                Yaml::Null => J::Null,
                Yaml::Boolean(b) => J::Bool(b),
                Yaml::Integer(i) => J::from(i),
                Yaml::Real(r) => real_to_json(&r),
                _ => J::String(text.clone()),
            },
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(pairs) => J::Object(pairs.iter().map(|(k, v)| (key_text(k), v.to_json())).collect()),
        }
    }
}

fn real_to_json(text: &str) -> serde_json::Value {
    let parsed = match text.trim_start_matches('+') {
        ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN" => None,
        t if t.starts_with("-.") && t[2..].eq_ignore_ascii_case("inf") => None,
        t => t.parse::<f64>().ok(),
    };
    // JSON has no infinities or NaN: keep those as their text.
    parsed
        .and_then(serde_json::Number::from_f64)
        .map_or_else(|| serde_json::Value::String(text.to_string()), Into::into)
}

fn key_text(key: &Node) -> String {
    match &key.value {
        Value::Scalar { text, .. } => text.clone(),
        _ => String::new(),
    }
}

/// Parses one YAML document. Syntax errors, duplicate keys and non-scalar keys are reported
/// on `diag` against `file`. Returns `None` when the document could not be parsed; an empty
/// document is a null node.
pub(crate) fn parse(file: &str, src: &str, diag: &mut Diag) -> Option<Node> {
    let mut builder = Builder::default();
    if let Err(e) = Parser::new_from_str(src).load(&mut builder, true) {
        diag.at(file, e.marker().line().max(1), format!("invalid YAML: {}", e.info()));
        return None;
    }
    if let Some((line, reason)) = builder.fatal {
        diag.at(file, line, reason);
        return None;
    }
    for (line, reason) in builder.errors {
        diag.at(file, line, reason);
    }
    let mut docs = builder.documents;
    if docs.len() > 1 {
        diag.at(file, docs[1].line, "expected a single YAML document");
        return None;
    }
    Some(docs.pop().unwrap_or(Node { line: 1, value: Value::Scalar { text: String::new(), plain: true } }))
}

/// Reads a mapping's keys, reporting keys that are not scalars, and keys not in `allowed` as
/// `unknown field "x" in <what>`. Returns the known fields by name.
pub(crate) fn fields<'a>(
    pairs: &'a [(Node, Node)],
    allowed: &[&str],
    what: &str,
    file: &str,
    diag: &mut Diag,
) -> BTreeMap<&'a str, &'a Node> {
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        let Value::Scalar { text, .. } = &key.value else { continue };
        if allowed.contains(&text.as_str()) {
            out.insert(text.as_str(), value);
        } else {
            diag.at(file, key.line, format!("unknown field \"{text}\" in {what}"));
        }
    }
    out
}

enum Frame {
    Seq { line: usize, anchor: usize, items: Vec<Node> },
    Map { line: usize, anchor: usize, pairs: Vec<(Node, Node)>, key: Option<Node> },
}

/// Receives parser events and assembles [`Node`]s. Aliases are expanded (counted against
/// [`YAML_NODES_MAX`], so a "billion laughs" document fails fast instead of exhausting memory).
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    anchors: HashMap<usize, (Node, usize)>,
    n_nodes: usize,
    errors: Vec<(usize, String)>,
    fatal: Option<(usize, String)>,
}

impl Builder {
    fn count(&mut self, n: usize, line: usize) -> bool {
        self.n_nodes = self.n_nodes.saturating_add(n);
        if self.n_nodes > YAML_NODES_MAX && self.fatal.is_none() {
            self.fatal = Some((line, format!("document has more than {YAML_NODES_MAX} nodes (aliases included)")));
        }
        self.fatal.is_none()
    }

    /// Opens a list or mapping unless that nests deeper than [`YAML_DEPTH_MAX`].
    fn open(&mut self, frame: Frame, line: usize) {
        if self.stack.len() >= YAML_DEPTH_MAX {
            self.fatal = Some((line, format!("nesting is deeper than {YAML_DEPTH_MAX} levels")));
        } else if self.count(1, line) {
            self.stack.push(frame);
        }
    }

    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let size = node_size(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { key, .. }) if key.is_none() => {
                if !matches!(node.value, Value::Scalar { .. }) {
                    self.errors.push((node.line, "mapping keys must be scalars".to_string()));
                }
                *key = Some(node);
            }
            Some(Frame::Map { key, pairs, .. }) => {
                let k = key.take().expect("a mapping value follows its key");
                pairs.push((k, node));
            }
        }
    }
}

fn node_size(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { .. } => 1,
        Value::Seq(items) => 1 + items.iter().map(node_size).sum::<usize>(),
        Value::Map(pairs) => 1 + pairs.iter().map(|(k, v)| node_size(k) + node_size(v)).sum::<usize>(),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.fatal.is_some() {
            return;
        }
        let line = mark.line().max(1);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                if !self.count(1, line) {
                    return;
                }
                let is_str_tag = tag.is_some_and(|t| t.suffix == "str" || t.suffix.ends_with(":str"));
                let plain = style == TScalarStyle::Plain && !is_str_tag;
                self.complete(Node { line, value: Value::Scalar { text, plain } }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.open(Frame::Seq { line, anchor, items: Vec::new() }, line),
            Event::MappingStart(anchor, _) => {
                self.open(Frame::Map { line, anchor, pairs: Vec::new(), key: None }, line);
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { line, anchor, items }) = self.stack.pop() {
                    self.complete(Node { line, value: Value::Seq(items) }, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { line, anchor, pairs, .. }) = self.stack.pop() {
                    let mut seen: HashMap<&str, usize> = HashMap::new();
                    for (key, _) in &pairs {
                        if let Value::Scalar { text, .. } = &key.value
                            && let Some(first) = seen.insert(text.as_str(), key.line)
                        {
                            self.errors.push((key.line, format!("duplicate key \"{text}\" (first at line {first})")));
                        }
                    }
                    self.complete(Node { line, value: Value::Map(pairs) }, anchor);
                }
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor).cloned() {
                Some((node, size)) => {
                    if self.count(size, line) {
                        self.complete(Node { line, ..node }, 0);
                    }
                }
                None => self.fatal = Some((line, "alias to an unknown anchor".to_string())),
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {}
        }
    }
}
