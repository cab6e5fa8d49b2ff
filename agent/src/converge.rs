//! One converge run: apply a bundle's resources in dependency order and say what happened to each.
//!
//! Split the way a stateful loop is split in Vigo: [`Plan`] is the pure core — it knows the graph
//! and the outcomes so far, and hands out [`Step`]s (apply this resource, with or without a
//! refresh; skip that one because a dependency failed) without touching the host or a clock.
//! [`converge`] is the runtime that carries the steps out with the executors and times them.
//!
//! Rules the plan enforces:
//! - a FAILED resource makes every resource that depends on it, transitively through `requires`
//!   and `notify` edges, SKIPPED ("skipped: dependency ID failed", naming the resource that
//!   failed); unrelated resources still run. An UNSUPPORTED resource (a type newer than this
//!   envoy) blocks its dependents the same way ("skipped: dependency ID is not supported"):
//!   whatever needs it cannot be assumed to hold;
//! - a CHANGED resource (WOULD_CHANGE in noop mode, so a dry run shows the refreshes a real run
//!   would trigger) refreshes its notify targets.

use std::path::Path;
use std::time::Instant;

use vigo_proto::agent::ResourceResult;
use vigo_proto::agent::resource_result::Status;
use vigo_proto::bundle::{Bundle, Resource};

use crate::executors::{self, Context, Outcome};
use crate::graph::ResourceGraph;
use crate::limits::RESULT_MESSAGE_CHARS_MAX;

/// What the runtime must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Apply the resource at `index`; `refresh` when a resource notifying it changed this run.
    Apply {
        /// Index into `Bundle::resources`.
        index: usize,
        /// Whether a notifying resource changed.
        refresh: bool,
    },
    /// Do not touch the resource at `index`: the resource at `failed` failed and it depends on it.
    Skip {
        /// Index into `Bundle::resources`.
        index: usize,
        /// Index of the failed resource.
        failed: usize,
    },
}

/// The pure core of a run: the order, and what the outcomes so far imply for the rest.
#[derive(Debug)]
pub struct Plan {
    graph: ResourceGraph,
    /// Position in `graph.order()` of the next step.
    cursor: usize,
    /// An `Apply` handed out whose outcome has not been recorded yet.
    awaiting: Option<usize>,
    notified: Vec<bool>,
    /// For each resource, the failed (or unsupported) resource that blocks it (the first one
    /// found).
    blocked_by: Vec<Option<usize>>,
    /// Which resources were unsupported, for the skip message of their dependents.
    unsupported: Vec<bool>,
}

impl Plan {
    /// Orders the resources; fails like [`ResourceGraph::build`].
    pub fn new(resources: &[Resource]) -> crate::Result<Plan> {
        let graph = ResourceGraph::build(resources)?;
        let n = graph.len();
        Ok(Plan {
            graph,
            cursor: 0,
            awaiting: None,
            notified: vec![false; n],
            blocked_by: vec![None; n],
            unsupported: vec![false; n],
        })
    }

    /// The graph the plan follows.
    pub fn graph(&self) -> &ResourceGraph {
        &self.graph
    }

    /// The next step, or `None` when the run is complete. After an [`Step::Apply`], call
    /// [`Plan::record`] before asking again.
    pub fn next_step(&mut self) -> Option<Step> {
        assert!(self.awaiting.is_none(), "the outcome of the previous step must be recorded first");
        let &index = self.graph.order().get(self.cursor)?;
        self.cursor += 1;
        if let Some(failed) = self.blocked_by[index] {
            self.block_dependents(index, failed);
            return Some(Step::Skip { index, failed });
        }
        self.awaiting = Some(index);
        Some(Step::Apply { index, refresh: self.notified[index] })
    }

    /// Records the status of the resource handed out by the last [`Step::Apply`].
    pub fn record(&mut self, index: usize, status: Status) {
        assert_eq!(self.awaiting.take(), Some(index), "record must follow the Apply step of the same resource");
        match status {
            Status::Failed => self.block_dependents(index, index),
            Status::Unsupported => {
                self.unsupported[index] = true;
                self.block_dependents(index, index);
            }
            Status::Changed | Status::WouldChange => {
                for &target in self.graph.notify_targets(index) {
                    self.notified[target] = true;
                }
            }
            Status::Unchanged | Status::Skipped => {}
        }
    }

    /// The message of a skipped resource.
    pub fn skip_message(&self, failed: usize) -> String {
        let why = if self.unsupported[failed] { "is not supported by this envoy" } else { "failed" };
        format!("skipped: dependency {} {why}", self.graph.id(failed))
    }

    fn block_dependents(&mut self, index: usize, failed: usize) {
        for &dependent in self.graph.dependents(index) {
            self.blocked_by[dependent].get_or_insert(failed);
        }
    }
}

/// Converges `bundle` under `root` (noop: report, change nothing). Results come in the order the
/// resources were applied. A bundle whose graph is invalid applies nothing: every resource is
/// FAILED with the graph's error, in bundle order.
pub fn converge(bundle: &Bundle, root: &Path, noop: bool) -> Vec<ResourceResult> {
    let mut plan = match Plan::new(&bundle.resources) {
        Ok(plan) => plan,
        Err(err) => {
            let message = err.to_string();
            return bundle.resources.iter().map(|resource| result(&resource.id, Status::Failed, &message, 0)).collect();
        }
    };
    // Executors join paths onto the root and hand it to commands; a relative root would change
    // meaning with each command's cwd.
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let mut results = Vec::with_capacity(bundle.resources.len());
    while let Some(step) = plan.next_step() {
        match step {
            Step::Skip { index, failed } => {
                let message = plan.skip_message(failed);
                results.push(result(&bundle.resources[index].id, Status::Skipped, &message, 0));
            }
            Step::Apply { index, refresh } => {
                let resource = &bundle.resources[index];
                let ctx = Context { root: &root, noop, refresh };
                let started = Instant::now();
                let outcome: Outcome = executors::apply(resource, &ctx);
                let duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                let status = outcome.status(noop);
                plan.record(index, status);
                results.push(result(&resource.id, status, outcome.message(), duration_ms));
            }
        }
    }
    results
}

fn result(id: &str, status: Status, message: &str, duration_ms: u32) -> ResourceResult {
    let message = match message.char_indices().nth(RESULT_MESSAGE_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    };
    ResourceResult { id: id.to_owned(), status: status as i32, message, duration_ms }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use vigo_proto::bundle::resource::Spec;
    use vigo_proto::bundle::{ExecSpec, FileSpec};

    use super::*;
    use crate::graph::tests::node;

    fn file(path: &str, content: &str, requires: &[&str], notify: &[&str]) -> Resource {
        Resource {
            spec: Some(Spec::File(FileSpec {
                path: path.into(),
                content: content.as_bytes().to_vec(),
                ..FileSpec::default()
            })),
            ..node(&format!("file:{path}"), requires, notify)
        }
    }

    fn exec(name: &str, spec: ExecSpec, requires: &[&str]) -> Resource {
        Resource { spec: Some(Spec::Exec(spec)), ..node(&format!("exec:{name}"), requires, &[]) }
    }

    fn statuses(results: &[ResourceResult]) -> Vec<(String, Status, String)> {
        results.iter().map(|r| (r.id.clone(), r.status(), r.message.clone())).collect()
    }

    fn bundle(resources: Vec<Resource>) -> Bundle {
        Bundle { resources, ..Bundle::default() }
    }

    #[test]
    fn plan_skips_transitive_dependents_only() {
        // a fails; b requires a; c is notified by b; d is independent; e requires d.
        let resources = [
            node("x:a", &[], &[]),
            node("x:b", &["x:a"], &["x:c"]),
            node("x:c", &[], &[]),
            node("x:d", &[], &[]),
            node("x:e", &["x:d"], &[]),
        ];
        let mut plan = Plan::new(&resources).unwrap();
        let mut steps = Vec::new();
        while let Some(step) = plan.next_step() {
            if let Step::Apply { index, .. } = step {
                let status = if index == 0 { Status::Failed } else { Status::Unchanged };
                plan.record(index, status);
            }
            steps.push(step);
        }
        assert_eq!(
            steps,
            [
                Step::Apply { index: 0, refresh: false },
                Step::Skip { index: 1, failed: 0 },
                Step::Skip { index: 2, failed: 0 },
                Step::Apply { index: 3, refresh: false },
                Step::Apply { index: 4, refresh: false },
            ]
        );
    }

    #[test]
    fn failure_skips_exactly_its_dependents() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("blocker")).unwrap();
        let results = converge(
            &bundle(vec![
                // A directory is in the way: fails.
                file("/blocker", "x", &[], &[]),
                file("/needs-blocker", "x", &["file:/blocker"], &[]),
                file("/independent", "x", &[], &[]),
                file("/needs-needs", "x", &["file:/needs-blocker"], &[]),
                file("/needs-independent", "x", &["file:/independent"], &[]),
            ]),
            root.path(),
            false,
        );
        assert_eq!(
            results.iter().map(|r| (r.id.as_str(), r.status())).collect::<Vec<_>>(),
            [
                ("file:/blocker", Status::Failed),
                ("file:/needs-blocker", Status::Skipped),
                ("file:/independent", Status::Changed),
                ("file:/needs-needs", Status::Skipped),
                ("file:/needs-independent", Status::Changed),
            ]
        );
        assert_eq!(results[1].message, "skipped: dependency file:/blocker failed");
        assert_eq!(results[3].message, "skipped: dependency file:/blocker failed");
        assert!(!root.path().join("needs-blocker").exists());
        assert!(!root.path().join("needs-needs").exists());
        assert!(root.path().join("needs-independent").exists());
    }

    #[test]
    fn notify_refreshes_only_when_the_source_changed() {
        let root = tempfile::tempdir().unwrap();
        let resources = |content: &str| {
            bundle(vec![
                exec(
                    "reload",
                    ExecSpec { command: "echo reload >> reloads".into(), refreshonly: true, ..ExecSpec::default() },
                    &[],
                ),
                file("/app.conf", content, &[], &["exec:reload"]),
            ])
        };
        let reloads = || fs::read_to_string(root.path().join("reloads")).unwrap_or_default();

        // Noop: the file would change, so the reload would run; nothing happens.
        let results = converge(&resources("v1"), root.path(), true);
        assert_eq!(
            statuses(&results),
            [
                ("file:/app.conf".into(), Status::WouldChange, "created (2 bytes, mode 0644)".into()),
                ("exec:reload".into(), Status::WouldChange, "command: echo reload >> reloads".into()),
            ]
        );
        assert_eq!(reloads(), "");

        // The file is created: the reload runs, after the file despite bundle order.
        let results = converge(&resources("v1"), root.path(), false);
        assert_eq!(results[0].status(), Status::Changed);
        assert_eq!(results[1].status(), Status::Changed);
        assert_eq!(reloads(), "reload\n");

        // Converged: no refresh.
        let results = converge(&resources("v1"), root.path(), false);
        assert_eq!(results[0].status(), Status::Unchanged);
        assert_eq!(results[1].status(), Status::Unchanged);
        assert_eq!(reloads(), "reload\n");

        // Changed again: one more reload.
        converge(&resources("v2"), root.path(), false);
        assert_eq!(reloads(), "reload\nreload\n");
    }

    #[test]
    fn graph_error_fails_every_resource() {
        let root = tempfile::tempdir().unwrap();
        let results = converge(
            &bundle(vec![
                file("/a", "x", &["file:/b"], &[]),
                file("/b", "x", &["file:/a"], &[]),
                file("/c", "x", &[], &[]),
            ]),
            root.path(),
            false,
        );
        assert_eq!(results.len(), 3);
        for result in &results {
            assert_eq!(result.status(), Status::Failed);
            assert_eq!(result.message, "dependency cycle among file:/a, file:/b");
        }
        assert!(!root.path().join("c").exists(), "nothing is applied");
    }

    #[test]
    fn unsupported_blocks_its_dependents_and_durations_are_set() {
        let root = tempfile::tempdir().unwrap();
        let newer = Resource {
            spec: Some(Spec::Opaque(vigo_proto::bundle::OpaqueSpec::default())),
            ..node("frobnicator:x", &[], &[])
        };
        let after = exec("after", ExecSpec { command: "true".into(), ..ExecSpec::default() }, &["frobnicator:x"]);
        let slow = exec("slow", ExecSpec { command: "sleep 0.05".into(), ..ExecSpec::default() }, &[]);
        let results = converge(&bundle(vec![newer, after, slow]), root.path(), false);
        assert_eq!(results[0].status(), Status::Unsupported);
        assert_eq!(results[0].message, "resource type frobnicator is not supported by this envoy yet");
        assert_eq!(results[1].status(), Status::Skipped);
        assert_eq!(results[1].message, "skipped: dependency frobnicator:x is not supported by this envoy");
        assert_eq!(results[2].status(), Status::Changed);
        assert!(results[2].duration_ms >= 50, "{}", results[2].duration_ms);
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "é".repeat(RESULT_MESSAGE_CHARS_MAX + 10);
        let cut = result("x:y", Status::Failed, &long, 0);
        assert_eq!(cut.message.chars().count(), RESULT_MESSAGE_CHARS_MAX + 1);
    }
}
