//! A JSON document as templates see it, without converting it first. An envoy's traits run to
//! ~150 KB (the package inventory); converting the whole tree into template values for every
//! bundle compiled would cost more than the compile itself, while templates read a handful of
//! keys. Here a node is wrapped only when a template reaches it.

use std::sync::Arc;

use minijinja::Value;
use minijinja::value::{Enumerator, Object, ObjectRepr};

/// One object or array node of a shared document, addressed by its JSON pointer.
#[derive(Debug)]
struct Node {
    root: Arc<serde_json::Value>,
    pointer: String,
}

/// `value` as a template value: objects and arrays are wrapped lazily, scalars converted.
pub(crate) fn wrap(root: Arc<serde_json::Value>) -> Value {
    at(&root, String::new())
}

fn at(root: &Arc<serde_json::Value>, pointer: String) -> Value {
    match root.pointer(&pointer) {
        Some(serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
            Value::from_object(Node { root: root.clone(), pointer })
        }
        Some(scalar) => Value::from_serialize(scalar),
        None => Value::UNDEFINED,
    }
}

impl Node {
    fn value(&self) -> &serde_json::Value {
        self.root.pointer(&self.pointer).unwrap_or(&serde_json::Value::Null)
    }

    fn child(&self, token: &str) -> Value {
        let escaped = token.replace('~', "~0").replace('/', "~1");
        at(&self.root, format!("{}/{escaped}", self.pointer))
    }
}

impl Object for Node {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        if self.value().is_array() { ObjectRepr::Seq } else { ObjectRepr::Map }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.value() {
            serde_json::Value::Object(map) => {
                let key = key.as_str()?;
                map.contains_key(key).then(|| self.child(key))
            }
            serde_json::Value::Array(items) => {
                let i = i64::try_from(key.clone()).ok()?;
                let i = if i < 0 { i + items.len() as i64 } else { i };
                (0..items.len() as i64).contains(&i).then(|| self.child(&i.to_string()))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.value() {
            serde_json::Value::Object(map) => {
                let keys: Vec<Value> = map.keys().map(|k| Value::from(k.as_str())).collect();
                Enumerator::Iter(Box::new(keys.into_iter()))
            }
            serde_json::Value::Array(items) => {
                let this = self.clone();
                Enumerator::Iter(Box::new((0..items.len()).map(move |i| this.child(&i.to_string()))))
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
        let ctx = Value::from_iter([("traits", wrap(Arc::new(doc)))]);
        env.get_template("t").unwrap().render(ctx).unwrap()
    }

    #[test]
    fn templates_read_keys_items_and_loops_as_with_a_converted_document() {
        let doc = json!({
            "os": { "family": "debian", "release": "12" },
            "ips": ["10.0.0.1", "10.0.0.2"],
            "packages": { "nginx": { "version": "1.22" }, "a/b~c": { "version": "1" } },
            "cpu": { "count": 4 },
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
        let ctx = Value::from_iter([("traits", wrap(Arc::new(json!({ "os": {} }))))]);
        assert!(env.get_template("t").unwrap().render(ctx).is_err());
    }
}
