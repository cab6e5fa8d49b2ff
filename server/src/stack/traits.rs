//! An envoy's traits as the stack reads them: straight from the JSON text, one level at a time.
//!
//! Traits run to ~150 KB (the package inventory) and templates read a handful of keys, so
//! turning the whole text into a tree for every bundle compiled would cost more than the
//! compile itself (~640 µs against ~95 µs to scan the top level, on the reference machine).
//! A node here is the span of one JSON value in the shared text; an object or array is split
//! into its members the first time something reaches into it, and those members are kept.
//! The text was checked to be JSON when the envoy sent it; a member that still fails to parse
//! reads as absent.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::value::RawValue;

/// A JSON document (or one value inside it), read lazily. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Traits(Arc<Node>);

#[derive(Debug)]
struct Node {
    text: Arc<str>,
    start: usize,
    end: usize,
    members: OnceLock<Members>,
}

#[derive(Debug)]
enum Members {
    Object(BTreeMap<String, Traits>),
    Array(Vec<Traits>),
    None,
}

impl Traits {
    /// The document `text`, which must hold one JSON value.
    pub fn new(text: Arc<str>) -> Self {
        let end = text.len();
        Traits::span(text, 0, end)
    }

    /// An empty object: for envoys that sent no traits yet.
    pub fn empty() -> Self {
        Traits::new(Arc::from("{}"))
    }

    /// A document from an already parsed value (tests, benchmarks, local tools).
    pub fn from_value(value: &serde_json::Value) -> Self {
        Traits::new(Arc::from(value.to_string()))
    }

    fn span(text: Arc<str>, start: usize, end: usize) -> Self {
        Traits(Arc::new(Node { text, start, end, members: OnceLock::new() }))
    }

    fn raw(&self) -> &str {
        self.0.text[self.0.start..self.0.end].trim()
    }

    fn is_object(&self) -> bool {
        self.raw().starts_with('{')
    }

    fn is_array(&self) -> bool {
        self.raw().starts_with('[')
    }

    fn members(&self) -> &Members {
        self.0.members.get_or_init(|| {
            let raw = &self.0.text[self.0.start..self.0.end];
            let child = |value: &RawValue| {
                // `value` borrows from `raw`, itself a slice of the shared text.
                let start = value.get().as_ptr() as usize - self.0.text.as_ptr() as usize;
                Traits::span(self.0.text.clone(), start, start + value.get().len())
            };
            if self.is_object() {
                match serde_json::from_str::<BTreeMap<String, &RawValue>>(raw) {
                    Ok(map) => Members::Object(map.into_iter().map(|(k, v)| (k, child(v))).collect()),
                    Err(_) => Members::None,
                }
            } else if self.is_array() {
                match serde_json::from_str::<Vec<&RawValue>>(raw) {
                    Ok(items) => Members::Array(items.into_iter().map(child).collect()),
                    Err(_) => Members::None,
                }
            } else {
                Members::None
            }
        })
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Traits> {
        match self.members() {
            Members::Object(map) => map.get(key),
            _ => None,
        }
    }

    /// A string, number or boolean as text; `None` for anything else.
    pub fn scalar_string(&self) -> Option<String> {
        match serde_json::from_str::<serde_json::Value>(self.raw()).ok()? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// As a template value: objects and arrays stay lazy, scalars are converted.
    pub(crate) fn to_template_value(&self) -> minijinja::Value {
        if self.is_object() || self.is_array() {
            minijinja::Value::from_object(Shown(self.clone()))
        } else {
            match serde_json::from_str::<serde_json::Value>(self.raw()) {
                Ok(value) => minijinja::Value::from_serialize(value),
                Err(_) => minijinja::Value::UNDEFINED,
            }
        }
    }
}

/// The template-facing side of a node; holds the `Traits` handle it shows.
#[derive(Debug)]
struct Shown(Traits);

impl Object for Shown {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        if self.0.is_array() { ObjectRepr::Seq } else { ObjectRepr::Map }
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match self.0.members() {
            Members::Object(map) => map.get(key.as_str()?).map(Traits::to_template_value),
            Members::Array(items) => {
                let i = i64::try_from(key.clone()).ok()?;
                let i = if i < 0 { i + items.len() as i64 } else { i };
                usize::try_from(i).ok().and_then(|i| items.get(i)).map(Traits::to_template_value)
            }
            Members::None => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.0.members() {
            Members::Object(map) => {
                let keys: Vec<minijinja::Value> = map.keys().map(|k| minijinja::Value::from(k.as_str())).collect();
                Enumerator::Iter(Box::new(keys.into_iter()))
            }
            Members::Array(items) => {
                let values: Vec<minijinja::Value> = items.iter().map(Traits::to_template_value).collect();
                Enumerator::Iter(Box::new(values.into_iter()))
            }
            Members::None => Enumerator::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;
    use serde_json::json;

    use super::*;

    fn render(template: &str, doc: serde_json::Value) -> String {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template("t", template).unwrap();
        let ctx = minijinja::Value::from_iter([("traits", Traits::from_value(&doc).to_template_value())]);
        env.get_template("t").unwrap().render(ctx).unwrap()
    }

    #[test]
    fn templates_read_keys_items_and_loops_as_with_a_converted_document() {
        let doc = json!({
            "os": { "family": "debian", "release": "12" },
            "ips": ["10.0.0.1", "10.0.0.2"],
            "packages": { "nginx": { "version": "1.22" }, "a/b~c": { "version": "1" } },
            "cpu": { "count": 4 },
            "virtual": false,
        });
        assert_eq!(render("{{ traits.os.family }} {{ traits['os']['release'] }}", doc.clone()), "debian 12");
        assert_eq!(
            render("{{ traits.ips[1] }} {{ traits.ips[-1] }} {{ traits.ips|length }}", doc.clone()),
            "10.0.0.2 10.0.0.2 2"
        );
        assert_eq!(render("{% for ip in traits.ips %}{{ ip }};{% endfor %}", doc.clone()), "10.0.0.1;10.0.0.2;");
        assert_eq!(render("{% for k in traits.packages %}{{ k }},{% endfor %}", doc.clone()), "a/b~c,nginx,");
        assert_eq!(render("{{ traits.packages['a/b~c'].version }}", doc.clone()), "1");
        assert_eq!(render("{{ traits.cpu.count * 2 }}", doc.clone()), "8");
        assert_eq!(render("{% if not traits.virtual %}metal{% endif %}", doc.clone()), "metal");
        assert_eq!(
            render("{{ 'nginx' in traits.packages }} {{ 'vim' in traits.packages }}", doc.clone()),
            "True False"
        );
        assert_eq!(
            render("{% for k, v in traits.os|items %}{{ k }}={{ v }};{% endfor %}", doc.clone()),
            "family=debian;release=12;"
        );
    }

    #[test]
    fn a_missing_key_is_undefined_so_strict_templates_refuse_it() {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template("t", "{{ traits.nope.deeper }}").unwrap();
        let ctx =
            minijinja::Value::from_iter([("traits", Traits::from_value(&json!({ "os": {} })).to_template_value())]);
        assert!(env.get_template("t").unwrap().render(ctx).is_err());
    }

    #[test]
    fn members_are_read_from_the_text_with_escapes_and_whitespace() {
        let traits =
            Traits::new(Arc::from(" { \"a\\\"b\" : { \"n\" : 1.5 } , \"s\": \"x\\ny\", \"t\": true, \"z\": null } "));
        assert_eq!(traits.get("a\"b").and_then(|v| v.get("n")).and_then(Traits::scalar_string).as_deref(), Some("1.5"));
        assert_eq!(traits.get("s").and_then(Traits::scalar_string).as_deref(), Some("x\ny"));
        assert_eq!(traits.get("t").and_then(Traits::scalar_string).as_deref(), Some("true"));
        assert_eq!(traits.get("z").and_then(Traits::scalar_string), None);
        assert!(traits.get("missing").is_none());
    }

    #[test]
    fn broken_text_reads_as_absent_never_as_a_panic() {
        let traits = Traits::new(Arc::from("{\"a\": {\"b\": }"));
        assert!(traits.get("a").is_none());
        assert!(Traits::new(Arc::from("")).get("a").is_none());
    }
}
