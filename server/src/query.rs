//! Fleet queries: `vigocli envoys list --where EXPR`, every expression of which must hold.
//!
//! ```text
//! os.family=debian          a trait (dotted path; a number indexes an array) equals a value
//! os.family!=debian         the trait exists and is not that value
//! cpu.count>4  cpu.count<4  the trait is a number above / below
//! packages.nginx exists     the trait is there (`missing`: it is not)
//! hostname=web-*            the hostname matches a glob
//! compliance=failing        compliant, failing, drifted, behind, never_reported
//! last_seen>10m             not seen for over 10 minutes (or never); `<`: seen within (s, m, h, d)
//! ```
//!
//! Traits are read in place from the fleet's interned store ([`StoreView`]); the evaluation is
//! written once against [`TraitView`], so a test can hold it against plain JSON documents.

use std::borrow::Cow;

use vigo_proto::admin::Compliance;
use vigo_state::{IndexKey, NodeId, TraitNode, TraitStore};

/// A refused expression, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --where {expr:?}: {reason}")]
pub struct QueryError {
    /// The expression as given.
    pub expr: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// What a condition looks at.
#[derive(Debug, Clone)]
enum Field {
    LastSeen,
    Hostname,
    Compliance,
    Trait(Vec<String>),
}

/// What it asks of it.
#[derive(Debug, Clone)]
enum Test {
    Eq(String),
    Ne(String),
    Gt(f64),
    Lt(f64),
    Exists,
    Missing,
    Glob(globset::GlobMatcher),
    SeenBefore(i64),
    SeenWithin(i64),
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    conditions: Vec<(Field, Test)>,
}

/// A JSON value the query reads: an interned node or, in tests, a plain document.
pub trait TraitView: Sized {
    /// Member `key` of an object.
    fn member(&self, key: &str) -> Option<Self>;
    /// Item `index` of an array.
    fn item(&self, index: usize) -> Option<Self>;
    /// A scalar's text (a string's contents, a number's JSON text, `true`, `false`, `null`);
    /// `None` for arrays and objects.
    fn scalar(&self) -> Option<Cow<'_, str>>;
}

/// A node of a [`TraitStore`].
#[derive(Debug, Clone, Copy)]
pub struct StoreView<'a> {
    /// The store.
    pub store: &'a TraitStore,
    /// The node.
    pub id: NodeId,
}

impl TraitView for StoreView<'_> {
    fn member(&self, key: &str) -> Option<Self> {
        self.store.member(self.id, key).map(|id| Self { store: self.store, id })
    }

    fn item(&self, index: usize) -> Option<Self> {
        self.store.item(self.id, index).map(|id| Self { store: self.store, id })
    }

    fn scalar(&self) -> Option<Cow<'_, str>> {
        match self.store.node(self.id) {
            TraitNode::Null => Some("null".into()),
            TraitNode::Bool(b) => Some(if b { "true" } else { "false" }.into()),
            TraitNode::Number(text) | TraitNode::String(text) => Some(String::from(text).into()),
            TraitNode::Array(_) | TraitNode::Object(_) => None,
        }
    }
}

/// One envoy as a query sees it.
#[derive(Debug)]
pub struct Subject<'a, V> {
    /// Its hostname.
    pub hostname: &'a str,
    /// Its last accepted request (ms since epoch; 0: never).
    pub last_seen_ms: i64,
    /// Where it stands against the live stack.
    pub compliance: Compliance,
    /// The root of its traits, when held.
    pub traits: Option<V>,
}

impl Query {
    /// Parses expressions (see the module docs); `now_ms` anchors `last_seen`.
    pub fn parse(exprs: &[String], now_ms: i64) -> Result<Self, QueryError> {
        let conditions = exprs.iter().map(|e| condition(e.trim(), now_ms)).collect::<Result<_, _>>()?;
        Ok(Self { conditions })
    }

    /// What the conditions ask of the fleet's [`vigo_state::TraitIndex`]: per condition on a
    /// trait that can narrow, the index keys one of which a matching envoy must have. Every
    /// candidate is still checked with [`Query::matches`]; these only leave out envoys that
    /// cannot match. A path segment that is a number may index an array, which the index does
    /// not key: it narrows no further than the segments before it.
    pub fn index_terms(&self) -> Vec<Vec<IndexKey>> {
        let mut terms = Vec::new();
        for (field, test) in &self.conditions {
            let Field::Trait(path) = field else { continue };
            let keyed = keyed(path);
            if keyed == 0 {
                continue;
            }
            let present = IndexKey { path: path[..keyed].to_vec(), value: None };
            match test {
                Test::Eq(v) if keyed == path.len() => {
                    terms.push(vec![IndexKey { path: path.clone(), value: Some(v.clone()) }]);
                }
                Test::Eq(_) | Test::Ne(_) | Test::Gt(_) | Test::Lt(_) | Test::Exists => terms.push(vec![present]),
                _ => {}
            }
        }
        terms
    }

    /// The conditions an envoy among the index's candidates ([`Self::index_terms`]) must still
    /// be checked against: all but those the index answers exactly, a trait of one or two
    /// keyed levels that is there (`packages.nginx exists`) or equals a value
    /// (`os.family=debian`). A query on package names so reads no envoy's package list.
    pub fn residual(&self) -> Query {
        let exact = |field: &Field, test: &Test| match (field, test) {
            (Field::Trait(path), Test::Exists | Test::Eq(_)) => keyed(path) == path.len(),
            _ => false,
        };
        Query { conditions: self.conditions.iter().filter(|(f, t)| !exact(f, t)).cloned().collect() }
    }

    /// Whether there are no conditions (every envoy matches).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Whether every condition holds for `subject`.
    pub fn matches<V: TraitView>(&self, subject: &Subject<'_, V>) -> bool {
        self.conditions.iter().all(|(field, test)| holds(field, test, subject))
    }
}

/// How many leading segments of a trait path the index keys: at most two, up to the first
/// number (which may index an array, which is not keyed).
fn keyed(path: &[String]) -> usize {
    path.iter().take(2).take_while(|part| part.parse::<usize>().is_err()).count()
}

fn condition(expr: &str, now_ms: i64) -> Result<(Field, Test), QueryError> {
    let bad = |reason| QueryError { expr: expr.to_string(), reason };
    let (path, test) = if let Some(path) = expr.strip_suffix(" exists") {
        (path.trim(), Test::Exists)
    } else if let Some(path) = expr.strip_suffix(" missing") {
        (path.trim(), Test::Missing)
    } else {
        let at = expr
            .find(['=', '>', '<', '!'])
            .ok_or_else(|| bad("expected PATH=VALUE, PATH!=VALUE, PATH>N, PATH<N, PATH exists or PATH missing"))?;
        let (path, rest) = expr.split_at(at);
        let (op, value) = match rest {
            _ if rest.starts_with("!=") => ("!=", &rest[2..]),
            _ if rest.starts_with('!') => return Err(bad("`!` only comes as `!=`")),
            _ => rest.split_at(1),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("a value is missing after the operator"));
        }
        let test = match op {
            "=" => Test::Eq(value.to_string()),
            "!=" => Test::Ne(value.to_string()),
            _ => {
                let field = path.trim();
                if field == "last_seen" {
                    let ago = duration_ms(value)
                        .ok_or_else(|| bad("last_seen takes a duration such as 30s, 10m, 2h or 1d"))?;
                    let cutoff = now_ms.saturating_sub(ago);
                    let test = if op == ">" { Test::SeenBefore(cutoff) } else { Test::SeenWithin(cutoff) };
                    return Ok((Field::LastSeen, test));
                }
                let n: f64 = value.parse().map_err(|_| bad("`>` and `<` compare numbers"))?;
                if op == ">" { Test::Gt(n) } else { Test::Lt(n) }
            }
        };
        (path.trim(), test)
    };
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/+@".contains(&b)) {
        return Err(bad("a path is letters, digits and `._-:/+@`, its parts separated by dots"));
    }
    match path {
        "last_seen" => Err(bad("last_seen takes `>` or `<` and a duration, such as last_seen>10m")),
        "hostname" => match test {
            Test::Eq(glob) => {
                let glob = globset::Glob::new(&glob).map_err(|_| bad("not a valid hostname glob"))?;
                Ok((Field::Hostname, Test::Glob(glob.compile_matcher())))
            }
            Test::Ne(_) | Test::Exists | Test::Missing | Test::Gt(_) | Test::Lt(_) => {
                Err(bad("hostname takes `=` and a glob, such as hostname=web-*"))
            }
            _ => unreachable!("only last_seen makes these"),
        },
        "compliance" => match test {
            Test::Eq(ref v) | Test::Ne(ref v) if compliance(v).is_some() => Ok((Field::Compliance, test)),
            _ => Err(bad("compliance takes = or != and one of compliant, failing, drifted, behind, never_reported")),
        },
        _ => {
            if path.split('.').any(str::is_empty) {
                return Err(bad("a path has an empty part"));
            }
            Ok((Field::Trait(path.split('.').map(str::to_string).collect()), test))
        }
    }
}

fn duration_ms(text: &str) -> Option<i64> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = digits.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).filter(|ms| *ms >= 0)
}

fn compliance(label: &str) -> Option<Compliance> {
    Compliance::from_str_name(&label.to_ascii_uppercase()).filter(|c| *c != Compliance::Unspecified)
}

fn holds<V: TraitView>(field: &Field, test: &Test, subject: &Subject<'_, V>) -> bool {
    match (field, test) {
        (Field::LastSeen, Test::SeenBefore(cutoff)) => subject.last_seen_ms < *cutoff,
        (Field::LastSeen, Test::SeenWithin(cutoff)) => subject.last_seen_ms >= *cutoff,
        (Field::Hostname, Test::Glob(glob)) => glob.is_match(subject.hostname),
        (Field::Compliance, Test::Eq(v)) => compliance(v) == Some(subject.compliance),
        (Field::Compliance, Test::Ne(v)) => compliance(v) != Some(subject.compliance),
        (Field::Trait(path), test) => {
            let found = subject.traits.as_ref().and_then(|root| walk(root, path));
            match (test, found) {
                (Test::Exists, found) => found.is_some(),
                (Test::Missing, found) => found.is_none(),
                (_, None) => false,
                (Test::Eq(v), Some(node)) => node.scalar().is_some_and(|s| s == v.as_str()),
                (Test::Ne(v), Some(node)) => node.scalar().is_none_or(|s| s != v.as_str()),
                (Test::Gt(n), Some(node)) => number(&node).is_some_and(|x| x > *n),
                (Test::Lt(n), Some(node)) => number(&node).is_some_and(|x| x < *n),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The value at `path` under `root`, if there is one.
fn walk<V: TraitView>(root: &V, path: &[String]) -> Option<V> {
    let mut parts = path.iter();
    let first = parts.next()?;
    let step = |node: &V, part: &str| node.member(part).or_else(|| part.parse().ok().and_then(|i| node.item(i)));
    let mut node = step(root, first)?;
    for part in parts {
        node = step(&node, part)?;
    }
    Some(node)
}

fn number<V: TraitView>(node: &V) -> Option<f64> {
    node.scalar()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// A plain JSON document read the same way: the reference the store is held against.
    impl TraitView for &Value {
        fn member(&self, key: &str) -> Option<Self> {
            self.as_object()?.get(key)
        }

        fn item(&self, index: usize) -> Option<Self> {
            self.as_array()?.get(index)
        }

        fn scalar(&self) -> Option<Cow<'_, str>> {
            match self {
                Value::Null => Some("null".into()),
                Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
                Value::Number(n) => Some(n.to_string().into()),
                Value::String(s) => Some(s.as_str().into()),
                Value::Array(_) | Value::Object(_) => None,
            }
        }
    }

    const NOW: i64 = 10_000_000;

    fn subject<V>(hostname: &str, last_seen_ms: i64, traits: Option<V>) -> Subject<'_, V> {
        Subject { hostname, last_seen_ms, compliance: Compliance::Failing, traits }
    }

    fn matches(exprs: &[&str], doc: &Value, hostname: &str, last_seen_ms: i64) -> bool {
        let exprs: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
        Query::parse(&exprs, NOW).unwrap().matches(&subject(hostname, last_seen_ms, Some(doc)))
    }

    #[test]
    fn each_kind_of_condition() {
        let doc = json!({"os": {"family": "debian"}, "cpu": {"count": 4}, "packages": {"nginx": "1.22"}, "ips": ["10.0.0.1"]});
        assert!(matches(&["os.family=debian"], &doc, "web-1", NOW));
        assert!(!matches(&["os.family=rhel"], &doc, "web-1", NOW));
        assert!(matches(&["os.family!=rhel", "cpu.count>2", "cpu.count<8"], &doc, "web-1", NOW));
        assert!(!matches(&["os.release!=12"], &doc, "web-1", NOW), "!= needs the trait to be there");
        assert!(matches(&["packages.nginx exists", "packages.apache2 missing", "ips.0=10.0.0.1"], &doc, "web-1", NOW));
        assert!(!matches(&["os exists", "os=debian"], &doc, "web-1", NOW), "an object equals no value");
        assert!(matches(&["hostname=web-*"], &doc, "web-1", NOW));
        assert!(!matches(&["hostname=db-*"], &doc, "web-1", NOW));
        assert!(matches(&["compliance=failing", "compliance!=compliant"], &doc, "web-1", NOW));
        assert!(matches(&["last_seen>10m"], &doc, "web-1", NOW - 11 * 60_000));
        assert!(matches(&["last_seen>10m"], &doc, "web-1", 0), "never seen is long ago");
        assert!(matches(&["last_seen<10m"], &doc, "web-1", NOW - 60_000));
        assert!(!matches(&["last_seen<1h"], &doc, "web-1", NOW - 2 * 3_600_000));
        let none = Query::parse(&["packages.nginx missing".into()], NOW).unwrap();
        assert!(none.matches(&subject::<&Value>("web-1", NOW, None)), "no traits held: everything is missing");
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        for (expr, reason) in [
            ("os.family", "expected PATH=VALUE"),
            ("os.family=", "a value is missing"),
            ("cpu.count>many", "compare numbers"),
            ("last_seen>soon", "a duration"),
            ("last_seen=10m", "last_seen takes"),
            ("hostname!=web-1", "hostname takes"),
            ("compliance=great", "compliance takes"),
            ("os..family=x", "empty part"),
            ("os fam=x", "a path is"),
            ("a!b", "only comes as"),
        ] {
            let err = Query::parse(&[expr.to_string()], NOW).unwrap_err();
            assert_eq!(err.expr, expr);
            assert!(err.to_string().contains(reason), "{expr}: {err}");
            assert!(err.to_string().starts_with(&format!("bad --where {expr:?}")), "{err}");
        }
    }

    fn document() -> impl Strategy<Value = Value> {
        let family = prop::sample::select(vec!["debian", "rhel", "alpine"]);
        let packages = prop::collection::btree_map(
            prop::sample::select(vec!["nginx", "curl", "vim", "bash"]),
            prop::sample::select(vec!["1.0", "1.22", "2.0"]),
            0..4,
        );
        (prop::option::of(family), 1u32..9, packages, prop::option::of(0u32..40), any::<bool>()).prop_map(
            |(family, cpus, packages, load, virtual_)| {
                let mut doc =
                    json!({"cpu": {"count": cpus}, "packages": packages, "virtual": virtual_, "tags": ["a", "b"]});
                if let Some(family) = family {
                    doc["os"] = json!({"family": family, "release": "12"});
                }
                if let Some(load) = load {
                    doc["load"] = json!(f64::from(load) / 10.0);
                }
                doc
            },
        )
    }

    fn expression() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec!["debian", "rhel", "alpine", "1.22", "true", "a", "12", "4", "1.5"]);
        let path = prop::sample::select(vec![
            "os.family",
            "os.release",
            "cpu.count",
            "packages.nginx",
            "packages.curl",
            "virtual",
            "tags.0",
            "tags.1",
            "tags.2",
            "load",
            "os",
            "packages",
            "nothing.here",
        ]);
        let op = prop::sample::select(vec!["=", "!=", ">", "<", " exists", " missing"]);
        (path, op, word, 0u32..10).prop_map(|(path, op, word, n)| match op {
            " exists" | " missing" => format!("{path}{op}"),
            ">" | "<" => format!("{path}{op}{n}"),
            _ => format!("{path}{op}{word}"),
        })
    }

    #[test]
    fn the_index_narrows_by_what_it_keys_and_no_further() {
        let store = TraitStore::default();
        let index = vigo_state::TraitIndex::default();
        let docs = [
            json!({"os": {"family": "debian"}, "packages": {"nginx": {"version": "1.22"}}, "tags": ["a"], "virtual": true}),
            json!({"os": {"family": "rhel"}, "packages": {"curl": {"version": "8"}}, "tags": ["b"], "virtual": false}),
        ];
        for (i, doc) in docs.iter().enumerate() {
            index.update(&store, &format!("e{i}"), None, Some(store.intern_json(&doc.to_string()).unwrap()));
        }
        let narrowed = |exprs: &[&str]| {
            let exprs: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
            index.having(&Query::parse(&exprs, NOW).unwrap().index_terms()).map(|mut ids| {
                ids.sort();
                ids
            })
        };
        assert_eq!(narrowed(&["os.family=debian"]), Some(vec!["e0".to_string()]), "a value key");
        assert_eq!(narrowed(&["virtual=true"]), Some(vec!["e0".to_string()]));
        assert_eq!(narrowed(&["packages.nginx.version=1.22"]), Some(vec!["e0".to_string()]), "its first two levels");
        assert_eq!(narrowed(&["os.family!=debian", "packages exists"]), Some(vec!["e0".into(), "e1".into()]));
        assert_eq!(narrowed(&["tags.0=a"]), Some(vec!["e0".into(), "e1".into()]), "no further than an array");
        assert_eq!(narrowed(&["0=not"]), None, "a number is not keyed: nothing to narrow by");
        assert_eq!(narrowed(&["packages.nginx missing", "hostname=web-*"]), None);

        // What candidates are still checked against.
        let residual = |exprs: &[&str]| {
            let exprs: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
            Query::parse(&exprs, NOW).unwrap().residual().conditions.len()
        };
        assert_eq!(residual(&["os.family=debian", "packages.nginx exists", "virtual=true"]), 0, "answered exactly");
        assert_eq!(residual(&["packages.nginx.version=1.22"]), 1, "deeper than the index keys");
        assert_eq!(residual(&["tags.0 exists", "os.family!=debian", "cpu.count>2"]), 3);
        assert_eq!(residual(&["packages.nginx missing", "hostname=web-*", "compliance=failing"]), 3);
    }

    proptest! {
        /// Read in place from the interned store, every query selects exactly the envoys a scan
        /// of the plain documents selects.
        #[test]
        fn queries_on_the_store_equal_a_scan_of_the_documents(
            fleet in prop::collection::vec(document(), 1..30),
            queries in prop::collection::vec(prop::collection::vec(expression(), 1..4), 1..8),
        ) {
            let store = TraitStore::default();
            let roots: Vec<NodeId> = fleet.iter().map(|doc| store.intern_json(&doc.to_string()).unwrap()).collect();
            for exprs in &queries {
                let query = Query::parse(exprs, NOW).unwrap();
                let on_store: Vec<bool> = roots
                    .iter()
                    .map(|&id| query.matches(&subject("h", NOW, Some(StoreView { store: &store, id }))))
                    .collect();
                let scanned: Vec<bool> = fleet.iter().map(|doc| query.matches(&subject("h", NOW, Some(doc)))).collect();
                prop_assert_eq!(on_store, scanned, "{:?}", exprs);
            }
        }

        /// Narrowed by the trait index, every query still selects exactly the envoys a scan of
        /// the plain documents selects, also after envoys' traits changed.
        #[test]
        fn queries_narrowed_by_the_index_equal_a_scan_of_the_documents(
            first in prop::collection::vec(document(), 1..30),
            changed in prop::collection::vec(proptest::option::of(document()), 1..30),
            queries in prop::collection::vec(prop::collection::vec(expression(), 1..4), 1..8),
        ) {
            let store = TraitStore::default();
            let index = vigo_state::TraitIndex::default();
            let mut fleet = Vec::new();
            for (i, doc) in first.iter().enumerate() {
                let mut current = (doc.clone(), store.intern_json(&doc.to_string()).unwrap());
                index.update(&store, &format!("e{i}"), None, Some(current.1));
                // Some envoys send other traits later: the index forgets what they had.
                if let Some(Some(next)) = changed.get(i) {
                    let root = store.intern_json(&next.to_string()).unwrap();
                    index.update(&store, &format!("e{i}"), Some(current.1), Some(root));
                    current = (next.clone(), root);
                }
                fleet.push(current);
            }
            for exprs in &queries {
                let query = Query::parse(exprs, NOW).unwrap();
                let scanned: Vec<String> = fleet
                    .iter()
                    .enumerate()
                    .filter(|(_, (doc, _))| query.matches(&subject("h", NOW, Some(doc))))
                    .map(|(i, _)| format!("e{i}"))
                    .collect();
                let candidates = index.having(&query.index_terms());
                // Candidates need only the conditions the index does not answer exactly.
                let (mut narrowed, rest): (Vec<String>, Query) = match &candidates {
                    Some(ids) => (ids.clone(), query.residual()),
                    None => ((0..fleet.len()).map(|i| format!("e{i}")).collect(), query.clone()),
                };
                narrowed.retain(|id| {
                    let root = fleet[id[1..].parse::<usize>().unwrap()].1;
                    rest.matches(&subject("h", NOW, Some(StoreView { store: &store, id: root })))
                });
                narrowed.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
                prop_assert_eq!(narrowed, scanned, "{:?} narrowed to {:?}", exprs, candidates);
            }
        }
    }
}
