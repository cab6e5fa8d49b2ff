//! An envoy's traits as the stack reads them: straight from the fleet's interned store.
//!
//! Traits run to ~150 KB (the package inventory) and templates read a handful of keys. The
//! document is already interned in the fleet's [`TraitStore`] (one node per distinct value),
//! so a compile reads the members it reaches and converts nothing else. The compile holds a
//! reference to the document's root ([`HeldTraits`]), so a newer upload from the same envoy
//! cannot free it halfway.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use vigo_state::{HeldTraits, NodeId, NodeKind, TraitNode, TraitStore, TraitsError};

/// One value inside a held traits document. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Traits {
    doc: Arc<HeldTraits>,
    node: NodeId,
}

impl Traits {
    /// The whole document held by `doc`.
    pub fn new(doc: HeldTraits) -> Self {
        let node = doc.root();
        Self { doc: Arc::new(doc), node }
    }

    /// A document of its own, from JSON text (tests, benchmarks, local tools).
    pub fn from_json(text: &str) -> Result<Self, TraitsError> {
        let store = Arc::new(TraitStore::default());
        let root = store.intern_json(text)?;
        Ok(Traits::new(HeldTraits::adopt(store, root)))
    }

    /// A document of its own, from an already parsed value (tests, benchmarks, local tools).
    pub fn from_value(value: &serde_json::Value) -> Self {
        Traits::from_json(&value.to_string()).expect("a JSON object")
    }

    /// An empty object: for envoys that sent no traits yet.
    pub fn empty() -> Self {
        Traits::from_json("{}").expect("an empty object")
    }

    fn store(&self) -> &TraitStore {
        self.doc.store()
    }

    fn at(&self, node: NodeId) -> Traits {
        Traits { doc: self.doc.clone(), node }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<Traits> {
        self.store().member(self.node, key).map(|node| self.at(node))
    }

    /// A string, number or boolean as text; `None` for anything else.
    pub fn scalar_string(&self) -> Option<String> {
        if matches!(self.store().kind(self.node), NodeKind::Array | NodeKind::Object) {
            return None;
        }
        match self.store().node(self.node) {
            TraitNode::String(s) | TraitNode::Number(s) => Some(s.into()),
            TraitNode::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// As a template value: objects and arrays stay lazy, scalars are converted.
    pub(crate) fn to_template_value(&self) -> minijinja::Value {
        if matches!(self.store().kind(self.node), NodeKind::Array | NodeKind::Object) {
            return minijinja::Value::from_object(Shown(self.clone()));
        }
        match self.store().node(self.node) {
            TraitNode::Null => minijinja::Value::from(()),
            TraitNode::Bool(b) => minijinja::Value::from(b),
            TraitNode::String(s) => minijinja::Value::from(&*s),
            TraitNode::Number(n) => match serde_json::from_str::<serde_json::Number>(&n) {
                Ok(number) => minijinja::Value::from_serialize(number),
                Err(_) => minijinja::Value::UNDEFINED,
            },
            TraitNode::Array(_) | TraitNode::Object(_) => minijinja::Value::from_object(Shown(self.clone())),
        }
    }
}

/// An object or array node as templates see it.
#[derive(Debug)]
struct Shown(Traits);

impl Object for Shown {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.0.store().kind(self.0.node) {
            NodeKind::Array => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let store = self.0.store();
        match store.kind(self.0.node) {
            NodeKind::Object => self.0.get(key.as_str()?).map(|v| v.to_template_value()),
            NodeKind::Array => {
                let i = i64::try_from(key.clone()).ok()?;
                let i = if i < 0 { i + store.len(self.0.node) as i64 } else { i };
                let node = store.item(self.0.node, usize::try_from(i).ok()?)?;
                Some(self.0.at(node).to_template_value())
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let store = self.0.store();
        match store.kind(self.0.node) {
            NodeKind::Object => {
                let keys: Vec<minijinja::Value> =
                    store.members(self.0.node).into_iter().map(|(k, _)| minijinja::Value::from(k)).collect();
                Enumerator::Iter(Box::new(keys.into_iter()))
            }
            NodeKind::Array => {
                let values: Vec<minijinja::Value> = (0..store.len(self.0.node))
                    .filter_map(|i| store.item(self.0.node, i))
                    .map(|node| self.0.at(node).to_template_value())
                    .collect();
                Enumerator::Iter(Box::new(values.into_iter()))
            }
            _ => Enumerator::Empty,
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
            "cpu": { "count": 4, "ghz": 2.5 },
            "virtual": false,
            "none": null,
        });
        assert_eq!(render("{{ traits.os.family }} {{ traits['os']['release'] }}", doc.clone()), "debian 12");
        assert_eq!(
            render("{{ traits.ips[1] }} {{ traits.ips[-1] }} {{ traits.ips|length }}", doc.clone()),
            "10.0.0.2 10.0.0.2 2"
        );
        assert_eq!(render("{% for ip in traits.ips %}{{ ip }};{% endfor %}", doc.clone()), "10.0.0.1;10.0.0.2;");
        assert_eq!(render("{% for k in traits.packages %}{{ k }},{% endfor %}", doc.clone()), "a/b~c,nginx,");
        assert_eq!(render("{{ traits.packages['a/b~c'].version }}", doc.clone()), "1");
        assert_eq!(render("{{ traits.cpu.count * 2 }} {{ traits.cpu.ghz * 2 }}", doc.clone()), "8 5.0");
        assert_eq!(render("{% if not traits.virtual %}metal{% endif %}", doc.clone()), "metal");
        assert_eq!(render("{{ traits.none is none }}", doc.clone()), "True");
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
    fn members_are_read_with_escapes_and_scalars_as_text() {
        let traits =
            Traits::from_json(" { \"a\\\"b\" : { \"n\" : 1.5 } , \"s\": \"x\\ny\", \"t\": true, \"z\": null } ")
                .unwrap();
        assert_eq!(traits.get("a\"b").and_then(|v| v.get("n")).and_then(|v| v.scalar_string()).as_deref(), Some("1.5"));
        assert_eq!(traits.get("s").and_then(|v| v.scalar_string()).as_deref(), Some("x\ny"));
        assert_eq!(traits.get("t").and_then(|v| v.scalar_string()).as_deref(), Some("true"));
        assert_eq!(traits.get("z").and_then(|v| v.scalar_string()), None);
        assert!(traits.get("missing").is_none());
    }
}
