//! Compiling the bundle of one envoy: the matching assign entries give the modules (unioned in
//! entry order) and the vars (first match wins per key); the modules give the resources, in
//! stack order, with templates rendered and `before`/`subscribe` turned around into the
//! `requires`/`notify` edges the envoy reads.
//!
//! What load-time validation cannot know is checked here, for this envoy's module set: a
//! duplicate id across modules that meet only on this envoy, a reference to a resource not in
//! the bundle, a cycle, a template variable undefined for this envoy.

use std::collections::HashMap;

use vigo_proto::bundle::{Bundle, FileSpec, Resource, resource::Spec};

use super::graph::{self, Placed};

use super::limits::BUNDLE_CONTENT_BYTES_MAX;
use super::resource::{FileDef, Ref};
use super::traits::Traits;
use super::{Content, Diag, Module, SpecDef, Stack, StackError, StackErrors, template};

pub(crate) fn compile(stack: &Stack, version: u64, hostname: &str, traits: &Traits) -> Result<Bundle, StackErrors> {
    let mut modules: Vec<&Module> = Vec::new();
    let mut context: Vec<(String, minijinja::Value)> = Vec::new();
    for i in stack.matching_entries(hostname, traits) {
        let entry = &stack.entries[i];
        for (name, _) in &entry.modules {
            let module = &stack.modules[name];
            if !modules.iter().any(|m| m.name == module.name) {
                modules.push(module);
            }
        }
        for (key, value) in &entry.vars {
            // The earliest matching entry wins a variable.
            if !context.iter().any(|(k, _)| k == key) {
                context.push((key.clone(), minijinja::Value::from_serialize(value)));
            }
        }
    }
    context.push(("hostname".to_string(), minijinja::Value::from(hostname)));
    // Traits are read where templates reach them, never converted whole (they carry the inventory).
    context.push(("traits".to_string(), traits.to_template_value()));
    let context = minijinja::Value::from_iter(context);

    let placed = graph::place(&modules);
    let ids = graph::index_by_id(&placed);
    let mut diag = Diag::default();
    diag.0.extend(graph::duplicates(&placed));
    check_refs_in_bundle(&placed, &ids, &modules, &mut diag);
    diag.0.extend(graph::cycles(&placed));

    // The reverse edges: `before` of r adds r to the target's requires; `subscribe` of r adds
    // r to the target's notify.
    let mut requires_from: Vec<Vec<&str>> = vec![Vec::new(); placed.len()];
    let mut notify_from: Vec<Vec<&str>> = vec![Vec::new(); placed.len()];
    for p in &placed {
        for target in p.res.before.iter().filter_map(|r| ids.get(r.id.as_str())) {
            requires_from[*target].push(&p.res.id);
        }
        for target in p.res.subscribe.iter().filter_map(|r| ids.get(r.id.as_str())) {
            notify_from[*target].push(&p.res.id);
        }
    }

    let mut content_bytes = 0usize;
    let mut resources = Vec::with_capacity(placed.len());
    for (i, p) in placed.iter().enumerate() {
        let spec = match &p.res.spec {
            SpecDef::File(def) => match file_spec(p.module, def, &context) {
                Ok(spec) => {
                    content_bytes += spec.content.len();
                    Spec::File(spec)
                }
                Err(e) => {
                    diag.0.push(e);
                    continue;
                }
            },
            SpecDef::Directory(spec) => Spec::Directory(spec.clone()),
            SpecDef::Symlink(spec) => Spec::Symlink(spec.clone()),
            SpecDef::Exec(spec) => Spec::Exec(spec.clone()),
            SpecDef::Opaque(json) => Spec::Opaque(vigo_proto::bundle::OpaqueSpec { json: json.clone() }),
        };
        resources.push(Resource {
            id: p.res.id.clone(),
            r#type: p.res.kind.to_string(),
            requires: edges(&p.res.requires, &requires_from[i]),
            notify: edges(&p.res.notify, &notify_from[i]),
            origin: p.origin(),
            spec: Some(spec),
        });
    }
    if content_bytes > BUNDLE_CONTENT_BYTES_MAX {
        diag.0.push(StackError {
            file: String::new(),
            line: None,
            reason: format!(
                "bundle for {hostname} has {content_bytes} bytes of file content, more than the limit of {BUNDLE_CONTENT_BYTES_MAX}"
            ),
        });
    }
    diag.finish(Bundle { stack_version: version, hostname: hostname.to_string(), resources })
}

/// Every reference must resolve within this envoy's bundle.
fn check_refs_in_bundle(placed: &[Placed], ids: &HashMap<&str, usize>, modules: &[&Module], diag: &mut Diag) {
    for p in placed {
        for reference in p.res.refs() {
            if !ids.contains_key(reference.id.as_str()) {
                let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
                diag.at(
                    &p.module.file,
                    reference.line,
                    format!(
                        "reference to resource \"{}\" (in {}) which is not in this envoy's bundle (modules: {})",
                        reference.id,
                        p.res.id,
                        names.join(", ")
                    ),
                );
            }
        }
    }
}

/// Own edges first, as written, then the reverse ones in stack order; no duplicates.
fn edges(own: &[Ref], reverse: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(own.len() + reverse.len());
    for id in own.iter().map(|r| r.id.as_str()).chain(reverse.iter().copied()) {
        if !out.iter().any(|o| o == id) {
            out.push(id.to_string());
        }
    }
    out
}

fn file_spec(module: &Module, def: &FileDef, context: &minijinja::Value) -> Result<FileSpec, StackError> {
    let content = match &def.content {
        // An absent file's content is never written, so its template is not rendered either.
        _ if def.ensure == "absent" => Vec::new(),
        Content::None => Vec::new(),
        Content::Inline(text) => text.as_bytes().to_vec(),
        Content::Template(name) => template::render(module, name, context)?,
        Content::Source(name) => module.files.get(name).cloned().unwrap_or_default(),
    };
    Ok(FileSpec {
        path: def.path.clone(),
        content,
        mode: def.mode,
        owner: def.owner.clone(),
        group: def.group.clone(),
        ensure: def.ensure.clone(),
    })
}
