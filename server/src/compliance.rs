//! Where each envoy stands against the live stack, from its last reported run: what
//! `vigocli envoys show` and `vigocli report compliance` print.

use vigo_proto::admin::{Compliance, RunSummary};

/// The state of an envoy whose last reported run is `last_run`, with `live_version` the live
/// stack version (0: nothing published).
pub fn of(last_run: Option<&RunSummary>, live_version: u64) -> Compliance {
    let Some(run) = last_run else { return Compliance::NeverReported };
    if run.failed > 0 {
        Compliance::Failing
    } else if run.noop && run.changed > 0 {
        Compliance::Drifted
    } else if run.stack_version < live_version {
        Compliance::Behind
    } else {
        Compliance::Compliant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stack_version: u64, noop: bool, changed: u32, failed: u32) -> RunSummary {
        RunSummary { stack_version, noop, changed, failed, ..Default::default() }
    }

    #[test]
    fn the_last_run_decides_failures_first_then_drift_then_version() {
        assert_eq!(of(None, 3), Compliance::NeverReported);
        assert_eq!(of(Some(&run(3, false, 2, 0)), 3), Compliance::Compliant, "changes applied are compliance");
        assert_eq!(of(Some(&run(3, false, 0, 1)), 3), Compliance::Failing);
        assert_eq!(of(Some(&run(2, false, 0, 1)), 3), Compliance::Failing, "a failure outranks being behind");
        assert_eq!(of(Some(&run(3, true, 1, 0)), 3), Compliance::Drifted);
        assert_eq!(of(Some(&run(3, true, 0, 0)), 3), Compliance::Compliant, "a noop run that found nothing");
        assert_eq!(of(Some(&run(2, false, 0, 0)), 3), Compliance::Behind);
        assert_eq!(of(Some(&run(0, false, 0, 0)), 0), Compliance::Compliant, "nothing published yet");
    }
}
