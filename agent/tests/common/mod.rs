//! What the executor tests share: applying one resource given as its stack fields in JSON, the
//! way a bundle carries every type but the four typed ones, and a picture of a sandbox tree to
//! compare before and after a noop run.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vigo_agent::executors::{Context, Outcome, apply};
use vigo_proto::bundle::resource::Spec;
use vigo_proto::bundle::{OpaqueSpec, Resource};

/// Applies the resource `kind:name` whose fields are `json` under `root`.
pub fn apply_json(kind: &str, name: &str, root: &Path, json: &serde_json::Value, noop: bool, refresh: bool) -> Outcome {
    let resource = Resource {
        id: format!("{kind}:{name}"),
        r#type: kind.into(),
        spec: Some(Spec::Opaque(OpaqueSpec { json: json.to_string() })),
        ..Default::default()
    };
    apply(&resource, &Context { root, noop, refresh })
}

/// Every entry under `dir`: its mode and its content (or link target).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let content = if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            Vec::new()
        } else if meta.file_type().is_symlink() {
            fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
        } else {
            fs::read(&path).unwrap()
        };
        entries.insert(path, (meta.permissions().mode(), content));
    }
    entries
}

/// Noop first (which must change nothing), then the real run; both must report the same change,
/// which is returned.
pub fn noop_then_real(kind: &str, name: &str, root: &Path, json: &serde_json::Value) -> String {
    let before = snapshot(root);
    let Outcome::Changed(would) = apply_json(kind, name, root, json, true, false) else {
        panic!("noop of {json} did not report a change")
    };
    assert_eq!(snapshot(root), before, "noop changed the sandbox");
    let done = apply_json(kind, name, root, json, false, false);
    assert_eq!(done, Outcome::Changed(would.clone()), "noop and the real run disagree");
    would
}
