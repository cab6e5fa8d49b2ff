//! Tests of the stack compiler: the DESIGN.md example end to end, assign semantics, every
//! error kind with its file and line (as a table), compile-time checks, and archives.

use super::traits::Traits;
use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;
use vigo_proto::bundle::{Bundle, Resource, resource::Spec};

use super::{Stack, StackError, StackErrors};

fn file_map(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    files.iter().map(|(path, text)| (path.to_string(), text.as_bytes().to_vec())).collect()
}

fn load(files: &[(&str, &str)]) -> Result<Stack, StackErrors> {
    Stack::from_files(file_map(files))
}

fn load_ok(files: &[(&str, &str)]) -> Stack {
    load(files).unwrap_or_else(|e| panic!("stack should load:\n{e}"))
}

fn load_err(files: &[(&str, &str)]) -> Vec<StackError> {
    match load(files) {
        Ok(_) => panic!("stack should be refused"),
        Err(e) => e.0,
    }
}

fn compile(stack: &Stack, hostname: &str, traits: serde_json::Value) -> Bundle {
    stack.compile(7, hostname, &Traits::from_value(&traits)).unwrap_or_else(|e| panic!("bundle should compile:\n{e}"))
}

fn ids(bundle: &Bundle) -> Vec<&str> {
    bundle.resources.iter().map(|r| r.id.as_str()).collect()
}

fn resource<'a>(bundle: &'a Bundle, id: &str) -> &'a Resource {
    bundle.resources.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("no resource {id} in {:?}", ids(bundle)))
}

fn file_content(bundle: &Bundle, id: &str) -> String {
    match &resource(bundle, id).spec {
        Some(Spec::File(f)) => String::from_utf8(f.content.clone()).expect("utf-8"),
        other => panic!("{id} is not a file: {other:?}"),
    }
}

const EXAMPLE_ASSIGN: &str = r#"# which modules apply to which envoys
- match: "web-*.example.com"
  modules: [base, nginx]
  vars: { worker_processes: 4 }
- match: "*"
  modules: [base]
"#;

const EXAMPLE_BASE: &str = r#"resources:
  - type: file
    path: /etc/motd
    content: "managed by vigo\n"
    mode: "0644"
  - { type: directory, path: /etc/vigo, mode: "0755" }
  - type: exec
    name: refresh-motd
    command: /usr/bin/true
    refreshonly: true
    subscribe: [file:/etc/motd]
"#;

const EXAMPLE_NGINX: &str = r#"resources:
  - { type: package, name: nginx }
  - type: file
    path: /etc/nginx/nginx.conf
    template: nginx.conf.j2        # rendered with vars, traits and the envoy's hostname
    mode: "0644"
    notify: [service:nginx]
  - { type: service, name: nginx, state: running, enabled: true, requires: [package:nginx] }
"#;

const EXAMPLE_TEMPLATE: &str = "# {{ hostname }}: managed by vigo\nworker_processes {{ worker_processes }};\n";

fn example() -> Vec<(&'static str, &'static str)> {
    vec![
        ("assign.yaml", EXAMPLE_ASSIGN),
        ("modules/base/module.yaml", EXAMPLE_BASE),
        ("modules/nginx/module.yaml", EXAMPLE_NGINX),
        ("modules/nginx/files/nginx.conf.j2", EXAMPLE_TEMPLATE),
    ]
}

/// The example stack with one file replaced or added.
fn example_with(path: &'static str, text: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut files: Vec<_> = example().into_iter().filter(|(p, _)| *p != path).collect();
    files.push((path, text));
    files
}

#[test]
fn stack_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Stack>();
}

#[test]
fn example_web_host_gets_base_and_nginx() {
    let stack = load_ok(&example());
    let bundle = compile(&stack, "web-1.example.com", json!({}));
    assert_eq!(bundle.stack_version, 7);
    assert_eq!(bundle.hostname, "web-1.example.com");
    assert_eq!(
        ids(&bundle),
        [
            "file:/etc/motd",
            "directory:/etc/vigo",
            "exec:refresh-motd",
            "package:nginx",
            "file:/etc/nginx/nginx.conf",
            "service:nginx"
        ]
    );

    let conf = resource(&bundle, "file:/etc/nginx/nginx.conf");
    assert_eq!(conf.r#type, "file");
    assert_eq!(conf.origin, "modules/nginx/module.yaml:3");
    assert_eq!(conf.notify, ["service:nginx"]);
    assert!(conf.requires.is_empty());
    let Some(Spec::File(spec)) = &conf.spec else { panic!("not a file") };
    assert_eq!(spec.mode, 0o644);
    assert_eq!(spec.mode, 420);
    assert_eq!(spec.ensure, "present");
    assert_eq!(
        file_content(&bundle, "file:/etc/nginx/nginx.conf"),
        "# web-1.example.com: managed by vigo\nworker_processes 4;\n"
    );

    let service = resource(&bundle, "service:nginx");
    assert_eq!(service.requires, ["package:nginx"]);
    assert_eq!(service.origin, "modules/nginx/module.yaml:8");
    let Some(Spec::Opaque(opaque)) = &service.spec else { panic!("not opaque") };
    let fields: serde_json::Value = serde_json::from_str(&opaque.json).expect("json");
    assert_eq!(fields, json!({"name": "nginx", "state": "running", "enabled": true}));

    // `subscribe` on the exec becomes `notify` on the file it subscribes to.
    assert_eq!(resource(&bundle, "file:/etc/motd").notify, ["exec:refresh-motd"]);
    assert_eq!(resource(&bundle, "file:/etc/motd").origin, "modules/base/module.yaml:2");
    assert_eq!(file_content(&bundle, "file:/etc/motd"), "managed by vigo\n");
    let Some(Spec::Directory(dir)) = &resource(&bundle, "directory:/etc/vigo").spec else { panic!("not a dir") };
    assert_eq!(dir.mode, 0o755);
    let Some(Spec::Exec(exec)) = &resource(&bundle, "exec:refresh-motd").spec else { panic!("not an exec") };
    assert_eq!(exec.command, "/usr/bin/true");
    assert!(exec.refreshonly);
}

#[test]
fn example_other_hosts_get_base_only() {
    let stack = load_ok(&example());
    let bundle = compile(&stack, "db-1.example.com", json!({"os": {"family": "debian"}}));
    assert_eq!(ids(&bundle), ["file:/etc/motd", "directory:/etc/vigo", "exec:refresh-motd"]);
    assert_eq!(stack.matching_entries("db-1.example.com", &Traits::empty()), [1]);
    assert_eq!(stack.matching_entries("web-1.example.com", &Traits::empty()), [0, 1]);
    // Hostname globs are case-insensitive.
    assert_eq!(stack.matching_entries("WEB-2.Example.COM", &Traits::empty()), [0, 1]);
}

#[test]
fn example_fixture_on_disk_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stacks/example");
    let mut files = BTreeMap::new();
    read_dir(&root, &root, &mut files);
    let stack = Stack::from_files(files).expect("fixture stack loads");
    let bundle = compile(&stack, "web-9.example.com", json!({}));
    assert_eq!(bundle.resources.len(), 6);
}

#[test]
fn broken_fixture_on_disk_reports_every_problem() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stacks/broken");
    let mut files = BTreeMap::new();
    read_dir(&root, &root, &mut files);
    let errors = Stack::from_files(files).expect_err("broken fixture is refused");
    assert_eq!(
        errors.to_string(),
        [
            "assign.yaml:3: unknown module \"ghost\" (no modules/ghost/module.yaml)",
            "modules/web/files/nginx.conf.j2:2: undefined variable \"worker_processes\" (not in the vars of the assign.yaml entry at line 2)",
            "modules/web/module.yaml:2: unknown resource type \"pkg\" (known: file, directory, symlink, exec, package, service, user, group, cron, git, source_package, docker, repository)",
            "modules/web/module.yaml:10: reference to unknown resource \"package:nginx\" (in service:nginx)",
            "modules/web/module.yaml:11: invalid path: \"/var/www/../../etc\" escapes with \"..\"",
        ]
        .join("\n")
    );
}

fn read_dir(root: &std::path::Path, dir: &std::path::Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("read fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            read_dir(root, &path, out);
        } else {
            let relative = path.strip_prefix(root).expect("below root").to_string_lossy().replace('\\', "/");
            out.insert(relative, std::fs::read(&path).expect("read fixture file"));
        }
    }
}

#[test]
fn no_matching_entry_gives_an_empty_bundle() {
    let stack = load_ok(&example_with("assign.yaml", "- { match: \"web-*\", modules: [base] }\n"));
    let bundle = compile(&stack, "db-1", json!({}));
    assert!(bundle.resources.is_empty());
    assert!(stack.matching_entries("db-1", &Traits::empty()).is_empty());
}

/// web-1 matches both entries: `color` from the first, `size` only set by the second.
#[test]
fn vars_first_matching_entry_wins_per_key() {
    let assign = r#"
- match: "web-*"
  modules: [m]
  vars: { color: blue }
- match: "*"
  modules: [m]
  vars: { color: red, size: 3 }
"#;
    let stack = load_ok(&[
        ("assign.yaml", assign),
        ("modules/m/module.yaml", "resources:\n  - { type: file, path: /x, template: x.j2 }\n"),
        ("modules/m/files/x.j2", "{{ color }} {{ size | default(0) }} {{ hostname }}"),
    ]);
    assert_eq!(file_content(&compile(&stack, "web-1", json!({})), "file:/x"), "blue 3 web-1");
    assert_eq!(file_content(&compile(&stack, "db-1", json!({})), "file:/x"), "red 3 db-1");
}

#[test]
fn modules_of_all_matching_entries_are_unioned_in_entry_order() {
    let assign = "- { match: \"web-*\", modules: [b, a] }\n- { match: \"*\", modules: [a, c] }\n";
    let module = |name: &'static str| -> &'static str {
        match name {
            "a" => "resources: [{ type: package, name: a }]\n",
            "b" => "resources: [{ type: package, name: b }]\n",
            _ => "resources: [{ type: package, name: c }]\n",
        }
    };
    let stack = load_ok(&[
        ("assign.yaml", assign),
        ("modules/a/module.yaml", module("a")),
        ("modules/b/module.yaml", module("b")),
        ("modules/c/module.yaml", module("c")),
    ]);
    assert_eq!(ids(&compile(&stack, "web-1", json!({}))), ["package:b", "package:a", "package:c"]);
    assert_eq!(ids(&compile(&stack, "db-1", json!({}))), ["package:a", "package:c"]);
}

#[test]
fn traits_conditions_narrow_an_entry() {
    let assign = r#"
- match: "*"
  traits: { os.family: debian, cpu.count: 4 }
  modules: [deb]
- match: "*"
  traits: { role: [db, cache] }
  modules: [db]
"#;
    let stack = load_ok(&[
        ("assign.yaml", assign),
        ("modules/deb/module.yaml", "resources: [{ type: package, name: apt-listchanges }]\n"),
        ("modules/db/module.yaml", "resources: [{ type: package, name: postgresql }]\n"),
    ]);
    let cases = [
        (json!({"os": {"family": "debian"}, "cpu": {"count": 4}}), vec![0]),
        (json!({"os": {"family": "debian"}, "cpu": {"count": "4"}}), vec![0]),
        (json!({"os.family": "debian", "cpu": {"count": 4}}), vec![0]),
        (json!({"os": {"family": "redhat"}, "cpu": {"count": 4}}), vec![]),
        (json!({"os": {"family": "debian"}}), vec![]),
        (json!({}), vec![]),
        (json!({"role": "cache"}), vec![1]),
        (json!({"role": "web"}), vec![]),
        (json!({"os": {"family": "debian"}, "cpu": {"count": 4}, "role": "db"}), vec![0, 1]),
    ];
    for (traits, expected) in cases {
        assert_eq!(stack.matching_entries("h1", &Traits::from_value(&traits)), expected, "traits {traits}");
    }
}

#[test]
fn templates_see_traits_and_undefined_traits_fail_at_compile() {
    let stack = load_ok(&[
        ("assign.yaml", "- { match: \"*\", modules: [m] }\n"),
        ("modules/m/module.yaml", "resources:\n  - { type: file, path: /etc/os, template: os.j2 }\n"),
        ("modules/m/files/os.j2", "host {{ hostname }}\nfamily {{ traits.os.family }}\n"),
    ]);
    let bundle = compile(&stack, "h1", json!({"os": {"family": "debian"}}));
    assert_eq!(file_content(&bundle, "file:/etc/os"), "host h1\nfamily debian\n");
    let errors = stack.compile(1, "h2", &Traits::empty()).expect_err("traits.os is undefined").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, "modules/m/files/os.j2");
    assert_eq!(errors[0].line, Some(2));
    assert!(errors[0].reason.contains("undefined"), "{}", errors[0].reason);
}

#[test]
fn source_files_are_copied_verbatim_and_includes_work() {
    let stack = load_ok(&[
        ("assign.yaml", "- { match: \"*\", modules: [m] }\n"),
        (
            "modules/m/module.yaml",
            "resources:\n  - { type: file, path: /bin/tool, source: bin/tool, mode: 0755 }\n  - { type: file, path: /etc/a, template: a.j2 }\n",
        ),
        ("modules/m/files/bin/tool", "#!/bin/sh\necho {{ not a template }}\n"),
        ("modules/m/files/a.j2", "top\n{% include \"part.j2\" %}"),
        ("modules/m/files/part.j2", "part {{ hostname }}\n"),
    ]);
    let bundle = compile(&stack, "h", json!({}));
    assert_eq!(file_content(&bundle, "file:/bin/tool"), "#!/bin/sh\necho {{ not a template }}\n");
    assert_eq!(file_content(&bundle, "file:/etc/a"), "top\npart h\n");
    let Some(Spec::File(tool)) = &resource(&bundle, "file:/bin/tool").spec else { panic!("not a file") };
    assert_eq!(tool.mode, 0o755);
}

#[test]
fn modes_are_octal_as_in_chmod() {
    for (written, expected) in
        [("\"0644\"", 0o644), ("0644", 0o644), ("644", 0o644), ("0o600", 0o600), ("\"4755\"", 0o4755), ("0", 0)]
    {
        let module = format!("resources:\n  - {{ type: directory, path: /d, mode: {written} }}\n");
        let module: &'static str = Box::leak(module.into_boxed_str());
        let stack =
            load_ok(&[("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]);
        let bundle = compile(&stack, "h", json!({}));
        let Some(Spec::Directory(dir)) = &bundle.resources[0].spec else { panic!("not a dir") };
        assert_eq!(dir.mode, expected, "mode: {written}");
    }
}

#[test]
fn before_and_subscribe_become_requires_and_notify_of_their_targets() {
    let module = r#"resources:
  - { type: package, name: app, before: [file:/etc/app.conf] }
  - { type: file, path: /etc/app.conf, content: "x", requires: [package:app] }
  - { type: exec, command: /usr/bin/app reload, refreshonly: true, subscribe: [file:/etc/app.conf] }
  - { type: service, name: app, subscribe: [file:/etc/app.conf], requires: package:app }
"#;
    let stack = load_ok(&[("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]);
    let bundle = compile(&stack, "h", json!({}));
    let conf = resource(&bundle, "file:/etc/app.conf");
    // Own edge first, the reverse `before` edge merged without a duplicate.
    assert_eq!(conf.requires, ["package:app"]);
    assert_eq!(conf.notify, ["exec:/usr/bin/app reload", "service:app"]);
    assert_eq!(resource(&bundle, "service:app").requires, ["package:app"]);
    assert!(resource(&bundle, "package:app").requires.is_empty());
}

#[test]
fn paths_are_normalized_in_ids_and_references() {
    let module = r#"resources:
  - { type: directory, path: /etc//app/ }
  - { type: file, path: /etc/app/./x, content: "", requires: [directory:/etc/app] }
"#;
    let stack = load_ok(&[("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]);
    let bundle = compile(&stack, "h", json!({}));
    assert_eq!(ids(&bundle), ["directory:/etc/app", "file:/etc/app/x"]);
}

/// Case name, stack files, and the file, line and reason text the problem must be reported with.
type ErrorCase = (&'static str, Vec<(&'static str, &'static str)>, &'static str, Option<usize>, &'static str);

/// One broken stack per row: the problem must be reported at this file and line with a reason
/// containing this text.
#[test]
fn each_error_kind_names_file_and_line() {
    let one_module = |module: &'static str| {
        vec![("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]
    };
    let with_template = |module: &'static str, template: &'static str| {
        let mut files = one_module(module);
        files.push(("modules/m/files/t.j2", template));
        files
    };
    let cases: Vec<ErrorCase> = vec![
        (
            "yaml syntax",
            one_module("resources:\n  - type: package\n    name: [unclosed\n"),
            "modules/m/module.yaml",
            Some(4),
            "invalid YAML",
        ),
        (
            "unknown type",
            one_module("resources:\n  - { type: package, name: a }\n  - { type: pkg, name: x }\n"),
            "modules/m/module.yaml",
            Some(3),
            "unknown resource type \"pkg\"",
        ),
        (
            "unknown field",
            one_module("resources:\n  - type: package\n    name: x\n    versoin: \"1.2\"\n"),
            "modules/m/module.yaml",
            Some(4),
            "unknown field \"versoin\"",
        ),
        (
            "missing required field",
            one_module("resources:\n  - type: file\n    content: hi\n"),
            "modules/m/module.yaml",
            Some(2),
            "missing field \"path\"",
        ),
        (
            "missing content",
            one_module("resources:\n  - type: file\n    path: /etc/x\n"),
            "modules/m/module.yaml",
            Some(2),
            "one of content, template or source",
        ),
        (
            "two contents",
            with_template("resources:\n  - type: file\n    path: /etc/x\n    content: a\n    template: t.j2\n", ""),
            "modules/m/module.yaml",
            Some(5),
            "only one of content, template or source",
        ),
        (
            "cycle",
            one_module(
                "resources:\n  - { type: package, name: a, requires: [package:b] }\n  - { type: package, name: b, requires: [package:c] }\n  - { type: package, name: c, requires: [package:a] }\n",
            ),
            "modules/m/module.yaml",
            Some(2),
            "dependency cycle: package:a -> package:b -> package:c -> package:a",
        ),
        (
            "cycle through notify",
            one_module(
                "resources:\n  - { type: file, path: /a, content: x, notify: [service:s] }\n  - { type: service, name: s, before: [file:/a] }\n",
            ),
            "modules/m/module.yaml",
            Some(2),
            "dependency cycle",
        ),
        (
            "self reference",
            one_module("resources:\n  - { type: package, name: a, requires: [package:a] }\n"),
            "modules/m/module.yaml",
            Some(2),
            "dependency cycle: package:a -> package:a",
        ),
        (
            "unknown reference",
            one_module(
                "resources:\n  - type: service\n    name: s\n    requires:\n      - package:s\n      - package:nope\n  - { type: package, name: s }\n",
            ),
            "modules/m/module.yaml",
            Some(6),
            "unknown resource \"package:nope\"",
        ),
        (
            "malformed reference",
            one_module("resources:\n  - { type: service, name: s, requires: [nginx] }\n"),
            "modules/m/module.yaml",
            Some(2),
            "expected \"type:name\"",
        ),
        (
            "dotdot path",
            one_module("resources:\n  - type: file\n    path: /etc/../root/.ssh/authorized_keys\n    content: x\n"),
            "modules/m/module.yaml",
            Some(3),
            "escapes with \"..\"",
        ),
        (
            "dotdot creates",
            one_module("resources:\n  - { type: exec, command: make, cwd: /src, creates: /src/../x }\n"),
            "modules/m/module.yaml",
            Some(2),
            "escapes with \"..\"",
        ),
        (
            "dotdot template",
            with_template("resources:\n  - type: file\n    path: /x\n    template: ../../assign.yaml\n", ""),
            "modules/m/module.yaml",
            Some(4),
            "escapes with \"..\"",
        ),
        (
            "relative path",
            one_module("resources:\n  - { type: directory, path: etc/x }\n"),
            "modules/m/module.yaml",
            Some(2),
            "not absolute",
        ),
        (
            "missing template file",
            one_module("resources:\n  - type: file\n    path: /x\n    template: nginx.conf.j2\n"),
            "modules/m/module.yaml",
            Some(4),
            "template file \"nginx.conf.j2\" not found in modules/m/files/",
        ),
        (
            "missing source file",
            one_module("resources:\n  - { type: file, path: /x, source: tool }\n"),
            "modules/m/module.yaml",
            Some(2),
            "source file \"tool\" not found",
        ),
        (
            "undefined template variable",
            with_template(
                "resources:\n  - { type: file, path: /x, template: t.j2 }\n",
                "# {{ hostname }}\n\nport {{ port }}\n",
            ),
            "modules/m/files/t.j2",
            Some(3),
            "undefined variable \"port\"",
        ),
        (
            "template syntax",
            with_template(
                "resources:\n  - { type: file, path: /x, template: t.j2 }\n",
                "line one\n\n{{ hostname + }}\n",
            ),
            "modules/m/files/t.j2",
            Some(3),
            "syntax error",
        ),
        (
            "bad mode",
            one_module("resources:\n  - { type: directory, path: /d, mode: \"0999\" }\n"),
            "modules/m/module.yaml",
            Some(2),
            "invalid mode \"0999\"",
        ),
        (
            "bad enum",
            one_module("resources:\n  - type: service\n    name: s\n    state: started\n"),
            "modules/m/module.yaml",
            Some(4),
            "invalid state \"started\": expected one of running, stopped",
        ),
        (
            "bad bool",
            one_module("resources:\n  - type: service\n    name: s\n    enabled: maybe\n"),
            "modules/m/module.yaml",
            Some(4),
            "\"enabled\" must be true or false",
        ),
        (
            "duplicate id in a module",
            one_module("resources:\n  - { type: package, name: a }\n  - { type: package, name: a }\n"),
            "modules/m/module.yaml",
            Some(3),
            "duplicate resource id \"package:a\" (also at modules/m/module.yaml:2)",
        ),
        (
            "duplicate key",
            one_module("resources:\n  - type: package\n    name: a\n    name: b\n"),
            "modules/m/module.yaml",
            Some(4),
            "duplicate key \"name\"",
        ),
        (
            "symlink without target",
            one_module("resources:\n  - { type: symlink, path: /l }\n"),
            "modules/m/module.yaml",
            Some(2),
            "missing field \"target\"",
        ),
        (
            "cron schedule",
            one_module("resources:\n  - { type: cron, name: c, command: x, schedule: \"* *\" }\n"),
            "modules/m/module.yaml",
            Some(2),
            "invalid schedule",
        ),
        (
            "cron keyword",
            one_module("resources:\n  - { type: cron, name: c, command: x, schedule: \"@often\" }\n"),
            "modules/m/module.yaml",
            Some(2),
            "invalid schedule \"@often\": expected five cron fields or one of @reboot",
        ),
        (
            "cron field characters",
            one_module("resources:\n  - { type: cron, name: c, command: x, schedule: \"0 3 * * 1;rm\" }\n"),
            "modules/m/module.yaml",
            Some(2),
            "invalid schedule",
        ),
        (
            "repository kind",
            one_module("resources:\n  - { type: repository, name: r, kind: yum, url: \"http://x\" }\n"),
            "modules/m/module.yaml",
            Some(2),
            "invalid kind \"yum\"",
        ),
        (
            "resources not a list",
            one_module("resources: { type: package }\n"),
            "modules/m/module.yaml",
            Some(1),
            "\"resources\" must be a list",
        ),
        (
            "unknown module",
            vec![("assign.yaml", "- match: \"*\"\n  modules: [base, nope]\n"), ("modules/base/module.yaml", "")],
            "assign.yaml",
            Some(2),
            "unknown module \"nope\"",
        ),
        (
            "unknown assign field",
            vec![("assign.yaml", "- match: \"*\"\n  modules: []\n  varz: {}\n")],
            "assign.yaml",
            Some(3),
            "unknown field \"varz\"",
        ),
        ("missing match", vec![("assign.yaml", "- modules: []\n")], "assign.yaml", Some(1), "missing field \"match\""),
        (
            "bad glob",
            vec![("assign.yaml", "- { match: \"*\", modules: [] }\n- match: \"web-[\"\n  modules: []\n")],
            "assign.yaml",
            Some(2),
            "invalid glob",
        ),
        (
            "reserved var",
            vec![("assign.yaml", "- match: \"*\"\n  modules: []\n  vars:\n    hostname: x\n")],
            "assign.yaml",
            Some(4),
            "var \"hostname\" is reserved",
        ),
        (
            "assign not a list",
            vec![("assign.yaml", "match: \"*\"\n")],
            "assign.yaml",
            Some(1),
            "expected a list of entries",
        ),
        ("missing assign.yaml", vec![("modules/m/module.yaml", "")], "assign.yaml", None, "missing"),
        (
            "module without module.yaml",
            vec![("assign.yaml", "[]\n"), ("modules/m/files/x", "")],
            "modules/m",
            None,
            "no module.yaml",
        ),
        (
            "absolute path in file map",
            vec![("assign.yaml", "[]\n"), ("/etc/passwd", "")],
            "/etc/passwd",
            None,
            "absolute",
        ),
        ("dotdot in file map", vec![("assign.yaml", "[]\n"), ("modules/../../x", "")], "modules/../../x", None, ".."),
    ];
    for (name, files, file, line, reason) in cases {
        let errors = load_err(&files);
        assert!(
            errors.iter().any(|e| e.file == file && e.line == line && e.reason.contains(reason)),
            "case {name:?}: expected {file}:{line:?}: ...{reason}..., got:\n{}",
            StackErrors(errors.clone())
        );
    }
}

#[test]
fn undefined_variable_is_checked_against_every_entry_that_includes_the_module() {
    let assign = r#"
- match: "web-*"
  modules: [m]
  vars: { port: 80 }
- match: "db-*"
  modules: [m]
"#;
    let errors = load_err(&[
        ("assign.yaml", assign),
        ("modules/m/module.yaml", "resources:\n  - { type: file, path: /x, template: t.j2 }\n"),
        ("modules/m/files/t.j2", "{% for i in range(2) %}{{ loop.index }}{% endfor %}\nport {{ port }}\n"),
    ]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "modules/m/files/t.j2:2: undefined variable \"port\" (not in the vars of the assign.yaml entry at line 5)"
    );
}

#[test]
fn optional_variables_guarded_with_default_or_defined_are_allowed() {
    let assign = "- { match: \"web-*\", modules: [m], vars: { port: 8080 } }\n- { match: \"*\", modules: [m] }\n";
    let template = "{% if port is defined %}port {{ port }}{% endif %}\nname {{ name|d(\"none\") }}\n";
    let stack = load_ok(&[
        ("assign.yaml", assign),
        ("modules/m/module.yaml", "resources:\n  - { type: file, path: /x, template: t.j2 }\n"),
        ("modules/m/files/t.j2", template),
    ]);
    assert_eq!(file_content(&compile(&stack, "web-1", json!({})), "file:/x"), "port 8080\nname none\n");
    assert_eq!(file_content(&compile(&stack, "db-1", json!({})), "file:/x"), "\nname none\n");
}

#[test]
fn every_problem_is_reported_sorted_by_file_and_line() {
    let errors = load_err(&[
        ("assign.yaml", "- match: \"*\"\n  modules: [a, b, ghost]\n"),
        (
            "modules/a/module.yaml",
            "resources:\n  - { type: pkg, name: x }\n  - { type: package, name: y, requires: [service:none] }\n  - { type: file, path: /etc/../x, content: \"\" }\n",
        ),
        ("modules/b/module.yaml", "resources:\n  - type: service\n    name: s\n    colour: red\n"),
        ("modules/c/module.yaml", "resources: [\n"),
    ]);
    let rendered: Vec<String> = errors.iter().map(|e| format!("{}:{}", e.file, e.line.unwrap_or(0))).collect();
    assert_eq!(
        rendered,
        [
            "assign.yaml:2",
            "modules/a/module.yaml:2",
            "modules/a/module.yaml:3",
            "modules/a/module.yaml:4",
            "modules/b/module.yaml:4",
            "modules/c/module.yaml:2"
        ],
        "{}",
        StackErrors(errors.clone())
    );
    let display = StackErrors(errors).to_string();
    assert_eq!(display.lines().count(), 6);
    assert!(display.starts_with("assign.yaml:2: unknown module \"ghost\""), "{display}");
}

#[test]
fn references_across_modules_resolve_only_when_bundled_together() {
    let assign = r#"
- { match: "web-*", modules: [app] }
- { match: "web-1", modules: [base] }
- { match: "*", modules: [other] }
"#;
    let stack = load_ok(&[
        ("assign.yaml", assign),
        ("modules/base/module.yaml", "resources: [{ type: package, name: curl }]\n"),
        ("modules/app/module.yaml", "resources:\n  - { type: exec, command: app, requires: [package:curl] }\n"),
        ("modules/other/module.yaml", "resources: [{ type: package, name: other }]\n"),
    ]);
    let bundle = compile(&stack, "web-1", json!({}));
    assert_eq!(resource(&bundle, "exec:app").requires, ["package:curl"]);
    let errors = stack.compile(1, "web-2", &Traits::empty()).expect_err("package:curl is not bundled").0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "modules/app/module.yaml");
    assert_eq!(errors[0].line, Some(2));
    assert!(errors[0].reason.contains("not in this envoy's bundle (modules: app, other)"), "{}", errors[0]);
}

#[test]
fn duplicates_across_modules_are_found_when_they_meet() {
    let assign = "- { match: \"web-*\", modules: [a] }\n- { match: \"*\", modules: [b] }\n- { match: \"both\", modules: [a, b] }\n";
    let a = ("modules/a/module.yaml", "resources: [{ type: package, name: git }]\n");
    let b =
        ("modules/b/module.yaml", "resources:\n  - { type: package, name: vim }\n  - { type: package, name: git }\n");
    // Entry 3 bundles a and b together: refused at load.
    let errors = load_err(&[("assign.yaml", assign), a, b]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "modules/b/module.yaml:3: duplicate resource id \"package:git\" (also at modules/a/module.yaml:1)"
    );

    // Without it, a and b meet only on web hosts: refused when compiling for one.
    let apart = "- { match: \"web-*\", modules: [a] }\n- { match: \"*\", modules: [b] }\n";
    let stack = load_ok(&[("assign.yaml", apart), a, b]);
    assert_eq!(compile(&stack, "db-1", json!({})).resources.len(), 2);
    let errors = stack.compile(1, "web-1", &Traits::empty()).expect_err("duplicate on web-1").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].reason.contains("duplicate resource id \"package:git\""));
}

#[test]
fn opaque_types_keep_their_validated_fields() {
    let module = r#"resources:
  - { type: package, name: nginx, version: 1.10, state: present }
  - { type: user, name: deploy, uid: 1001, gid: staff, groups: [adm, sudo], home: /home/deploy, system: false }
  - { type: group, name: ops, gid: 2000 }
  - { type: cron, name: backup, command: /usr/local/bin/backup, user: root, schedule: "0 3 * * *" }
  - { type: git, path: /srv/app, source: "https://example.com/app.git", revision: main }
  - type: source_package
    name: tool
    url: https://example.com/tool.tar.gz
    sha256: 2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824
    build: [./configure, make, make install]
    creates: /usr/local/bin/tool
  - { type: docker, name: web, image: "nginx:1.27", ports: [8080:80, 443], env: { MODE: prod } }
  - { type: repository, name: nginx, kind: apt, url: "http://nginx.org/packages/debian", suites: [bookworm], components: nginx }
"#;
    let stack = load_ok(&[("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]);
    let bundle = compile(&stack, "h", json!({}));
    let opaque = |id: &str| -> serde_json::Value {
        match &resource(&bundle, id).spec {
            Some(Spec::Opaque(o)) => serde_json::from_str(&o.json).expect("json"),
            other => panic!("{id}: {other:?}"),
        }
    };
    assert_eq!(opaque("package:nginx"), json!({"name": "nginx", "version": "1.10", "state": "present"}));
    assert_eq!(
        opaque("user:deploy"),
        json!({"name": "deploy", "uid": 1001, "gid": "staff", "groups": ["adm", "sudo"], "home": "/home/deploy", "system": false})
    );
    assert_eq!(opaque("group:ops"), json!({"name": "ops", "gid": 2000}));
    assert_eq!(opaque("git:/srv/app")["revision"], "main");
    assert_eq!(
        opaque("source_package:tool")["sha256"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(opaque("docker:web")["ports"], json!(["8080:80", "443"]));
    assert_eq!(opaque("repository:nginx")["components"], json!(["nginx"]));
    assert_eq!(opaque("cron:backup")["schedule"], "0 3 * * *");
    assert_eq!(resource(&bundle, "git:/srv/app").r#type, "git");
}

#[test]
fn absent_resources_need_less() {
    let module = r#"resources:
  - { type: file, path: /etc/old, ensure: absent }
  - { type: symlink, path: /l, ensure: absent }
  - { type: cron, name: old, state: absent }
  - { type: docker, name: old, state: absent }
"#;
    let stack = load_ok(&[("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]);
    let bundle = compile(&stack, "h", json!({}));
    let Some(Spec::File(old)) = &resource(&bundle, "file:/etc/old").spec else { panic!("not a file") };
    assert_eq!(old.ensure, "absent");
    assert!(old.content.is_empty());
}

#[test]
fn yaml_anchors_expand_and_bombs_are_refused() {
    let module =
        "resources:\n  - &pkg { type: package, name: a }\n  - { type: service, name: a, requires: [package:a] }\n";
    load_ok(&[("assign.yaml", "- { match: \"*\", modules: [m] }\n"), ("modules/m/module.yaml", module)]);

    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..8 {
        bomb.push_str(&format!(
            "b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            p = if i == 0 { "a".to_string() } else { format!("b{}", i - 1) }
        ));
    }
    let bomb: &'static str = Box::leak(bomb.into_boxed_str());
    let errors = load_err(&[("assign.yaml", "[]\n"), ("modules/m/module.yaml", bomb)]);
    assert!(errors.iter().any(|e| e.reason.contains("nodes")), "{errors:?}");

    let deep: String = (0..100).map(|i| format!("{}a:\n", "  ".repeat(i))).collect();
    let deep: &'static str = Box::leak(deep.into_boxed_str());
    let errors = load_err(&[("assign.yaml", deep)]);
    assert_eq!(errors[0].file, "assign.yaml");
    assert!(errors[0].reason.contains("nesting is deeper than"), "{errors:?}");
    let deep_flow: &'static str = Box::leak("[".repeat(100_000).into_boxed_str());
    assert!(load_err(&[("assign.yaml", deep_flow)])[0].reason.starts_with("invalid YAML"));
}

pub(crate) fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        // A trailing `/` makes a directory entry, like the `./` that `tar -C dir .` writes first.
        header.set_entry_type(if path.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
        // Written raw, so the test can build archives a well-behaved packer would refuse.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *bytes).expect("append");
    }
    let mut gz = builder.into_inner().expect("finish tar");
    gz.flush().expect("flush");
    gz.finish().expect("finish gzip")
}

#[test]
fn archive_round_trip_compiles_like_the_file_map() {
    let entries: Vec<(String, Vec<u8>)> =
        example().into_iter().map(|(p, t)| (format!("./{p}"), t.as_bytes().to_vec())).collect();
    let mut entries: Vec<(&str, &[u8])> = entries.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
    entries.insert(0, ("./", b""));
    entries.insert(1, ("./modules/", b""));
    let from_archive = Stack::from_archive(&tar_gz(&entries)).expect("archive loads");
    let from_files = load_ok(&example());
    for host in ["web-1.example.com", "db-1.example.com"] {
        assert_eq!(compile(&from_archive, host, json!({})), compile(&from_files, host, json!({})));
    }
}

#[test]
fn archive_with_escaping_or_linked_entries_is_refused() {
    let mut files: Vec<(&str, &[u8])> = example().into_iter().map(|(p, t)| (p, t.as_bytes())).collect();
    files.push(("../evil", b"x"));
    files.push(("/etc/cron.d/evil", b"x"));
    let errors = Stack::from_archive(&tar_gz(&files)).expect_err("escaping entries").0;
    assert!(errors.iter().any(|e| e.file == "../evil" && e.reason.contains("..")), "{errors:?}");
    assert!(errors.iter().any(|e| e.file == "/etc/cron.d/evil" && e.reason.contains("absolute")), "{errors:?}");

    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, "assign.yaml", "/etc/passwd").expect("append link");
    let archive = builder.into_inner().expect("tar").finish().expect("gzip");
    let errors = Stack::from_archive(&archive).expect_err("links").0;
    assert!(errors.iter().any(|e| e.file == "assign.yaml" && e.reason.contains("links")), "{errors:?}");
}

#[test]
fn archive_that_is_not_gzip_is_refused() {
    let errors = Stack::from_archive(b"not a tarball").expect_err("garbage").0;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].reason.starts_with("invalid stack archive"), "{}", errors[0]);
}

#[test]
fn error_display_has_file_line_and_reason() {
    let with_line = StackError {
        file: "modules/a/module.yaml".into(),
        line: Some(12),
        reason: "unknown resource type \"pkg\"".into(),
    };
    assert_eq!(with_line.to_string(), "modules/a/module.yaml:12: unknown resource type \"pkg\"");
    let without = StackError { file: "assign.yaml".into(), line: None, reason: "missing".into() };
    assert_eq!(without.to_string(), "assign.yaml: missing");
    assert_eq!(StackErrors(vec![with_line, without]).to_string().lines().count(), 2);
}
