//! Counters and histograms for Prometheus (`GET /metrics` on the `--http` listener), and their
//! rendering in the text exposition format 0.0.4.
//!
//! Recording is a handful of `Relaxed` atomic adds: no lock, no allocation, nothing
//! proportional to the fleet, so the check-in path may record (I-3). Label values come from
//! fixed enums ([`CheckInOutcome`], [`ReportOutcome`], [`LogCommitOutcome`]), never from
//! request input, so they need no escaping and the number of series is fixed.
//!
//! Gauges (envoys known and online, events, stack version, distinct bundles) and the process
//! metrics are not stored: the scrape computes them (`http.rs`), with [`render_gauge`] and
//! [`render_process`].
//!
//! A scrape reads each atomic on its own, so one scrape racing a check-in may see a histogram
//! bucket without its sum; `_count` is the sum of the buckets, so it always equals the `+Inf`
//! bucket, as Prometheus requires.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use vigo_proto::agent::CheckInResponse;
use vigo_proto::agent::check_in_response::Reply;

use crate::check_in::Refusal;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (ns) of the check-in duration buckets: 50 µs (about one signature
/// verification) to 100 ms.
const CHECK_IN_BOUNDS_NS: &[u64] =
    &[50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 100_000_000];

/// Upper bounds (ns) of the log commit duration buckets: 0.5 ms (an fsync on a fast disk)
/// to 5 s.
const LOG_COMMIT_BOUNDS_NS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Upper bounds (ns) of the fleet snapshot flush buckets: 1 ms (a few envoys) to 10 s.
const FLUSH_BOUNDS_NS: &[u64] = &[
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Linux reports process CPU time in clock ticks of USER_HZ, which is 100 on every
/// architecture Linux supports (the kernel converts to it for userspace). Asking `sysconf`
/// would need `unsafe`, which the workspace denies.
const USER_HZ: u64 = 100;

/// What a check-in was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckInOutcome {
    /// The envoy holds the current bundle.
    NoChange,
    /// A new bundle was sent.
    Bundle,
    /// The envoy was asked for its traits.
    SendTraits,
    /// The envoy was told to back off (admission control).
    Backoff,
    /// Any [`Refusal`].
    Refused,
}

impl CheckInOutcome {
    const ALL: [Self; 5] = [Self::NoChange, Self::Bundle, Self::SendTraits, Self::Backoff, Self::Refused];

    /// The outcome of one check-in's handler.
    pub fn of(result: &Result<CheckInResponse, Refusal>) -> Self {
        match result {
            Err(_) => Self::Refused,
            Ok(response) if response.send_traits => Self::SendTraits,
            Ok(CheckInResponse { reply: Some(Reply::Bundle(_)), .. }) => Self::Bundle,
            Ok(CheckInResponse { reply: Some(Reply::Backoff(_)), .. }) => Self::Backoff,
            Ok(_) => Self::NoChange,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::NoChange => "no_change",
            Self::Bundle => "bundle",
            Self::SendTraits => "send_traits",
            Self::Backoff => "backoff",
            Self::Refused => "refused",
        }
    }
}

/// What a results report was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Recorded.
    Accepted,
    /// Any [`Refusal`].
    Refused,
}

impl ReportOutcome {
    const ALL: [Self; 2] = [Self::Accepted, Self::Refused];

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
        }
    }
}

/// How a control write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCommitOutcome {
    /// Committed and applied.
    Committed,
    /// Not valid against the current state; never proposed.
    Refused,
    /// Proposed, but the log could not commit it.
    Failed,
}

impl LogCommitOutcome {
    const ALL: [Self; 3] = [Self::Committed, Self::Refused, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram of durations with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in ns, ascending; the `+Inf` bucket is implicit.
    bounds_ns: &'static [u64],
    /// Observations per bucket, not cumulative; one more than `bounds_ns` (the `+Inf` bucket).
    buckets: Box<[AtomicU64]>,
    /// Sum of all observations in ns (584 years before it wraps).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ns, strictly ascending).
    pub fn new(bounds_ns: &'static [u64]) -> Self {
        assert!(bounds_ns.windows(2).all(|w| w[0] < w[1]), "histogram bounds must be strictly ascending");
        Self {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // A dozen bounds: a linear scan is as fast as a binary search.
        let bucket = self.bounds_ns.iter().position(|&bound| ns <= bound).unwrap_or(self.bounds_ns.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Writes the `_bucket` (cumulative), `_sum` and `_count` lines under `name`.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            match self.bounds_ns.get(i) {
                Some(&bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", seconds(bound));
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", seconds(self.sum_ns.load(Relaxed)));
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// What the server counts as it runs. Lives on [`crate::node::Node`].
#[derive(Debug)]
pub struct Metrics {
    check_ins: [Counter; CheckInOutcome::ALL.len()],
    reports: [Counter; ReportOutcome::ALL.len()],
    log_commits: [Counter; LogCommitOutcome::ALL.len()],
    check_in_duration: Histogram,
    log_commit_duration: Histogram,
    flush_duration: Histogram,
    flush_failures: Counter,
    flushed_envoys: Counter,
    flushed_trait_rows: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            check_ins: Default::default(),
            reports: Default::default(),
            log_commits: Default::default(),
            check_in_duration: Histogram::new(CHECK_IN_BOUNDS_NS),
            log_commit_duration: Histogram::new(LOG_COMMIT_BOUNDS_NS),
            flush_duration: Histogram::new(FLUSH_BOUNDS_NS),
            flush_failures: Counter::default(),
            flushed_envoys: Counter::default(),
            flushed_trait_rows: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a check-in and how long its handler took.
    pub fn record_check_in(&self, outcome: CheckInOutcome, elapsed: Duration) {
        self.check_ins[outcome as usize].inc();
        self.check_in_duration.observe(elapsed);
    }

    /// Counts a results report.
    pub fn record_report(&self, outcome: ReportOutcome) {
        self.reports[outcome as usize].inc();
    }

    /// Counts a control write; `proposed_for` is how long the log took to commit it, `None`
    /// when it was refused before reaching the log.
    pub fn record_log_commit(&self, outcome: LogCommitOutcome, proposed_for: Option<Duration>) {
        self.log_commits[outcome as usize].inc();
        if let Some(elapsed) = proposed_for {
            self.log_commit_duration.observe(elapsed);
        }
    }

    /// Counts a fleet snapshot flush: what it wrote, or `None` when it failed.
    pub fn record_flush(&self, report: Option<&vigo_state::FlushReport>) {
        match report {
            Some(report) => {
                self.flush_duration.observe(report.elapsed);
                self.flushed_envoys.add(report.envoys as u64);
                self.flushed_trait_rows.add(report.nodes as u64);
            }
            None => self.flush_failures.inc(),
        }
    }

    /// Check-ins answered with `outcome` since start.
    pub fn check_ins(&self, outcome: CheckInOutcome) -> u64 {
        self.check_ins[outcome as usize].get()
    }

    /// Writes every counter and histogram in the text exposition format.
    pub fn render(&self, out: &mut String) {
        header(out, "vigo_check_ins_total", "Check-ins answered since start, by outcome.", "counter");
        for outcome in CheckInOutcome::ALL {
            let value = self.check_ins[outcome as usize].get();
            let _ = writeln!(out, "vigo_check_ins_total{{outcome=\"{}\"}} {value}", outcome.label());
        }
        self.check_in_duration.render(
            out,
            "vigo_check_in_duration_seconds",
            "Time spent in the check-in handler (authentication, fleet update, bundle lookup), refusals included.",
        );
        header(out, "vigo_reports_total", "Results reports answered since start, by outcome.", "counter");
        for outcome in ReportOutcome::ALL {
            let value = self.reports[outcome as usize].get();
            let _ = writeln!(out, "vigo_reports_total{{outcome=\"{}\"}} {value}", outcome.label());
        }
        header(out, "vigo_log_commits_total", "Control writes since start, by outcome.", "counter");
        for outcome in LogCommitOutcome::ALL {
            let value = self.log_commits[outcome as usize].get();
            let _ = writeln!(out, "vigo_log_commits_total{{outcome=\"{}\"}} {value}", outcome.label());
        }
        self.log_commit_duration.render(
            out,
            "vigo_log_commit_duration_seconds",
            "Time from proposing a control write to its commit and apply; refused writes are not proposed.",
        );
        self.flush_duration.render(
            out,
            "vigo_fleet_flush_duration_seconds",
            "Time to write one group of the fleet index to the SQLite snapshot.",
        );
        for (name, help, counter) in [
            (
                "vigo_fleet_flush_failures_total",
                "Fleet snapshot flushes that failed (the next one rewrites it whole).",
                &self.flush_failures,
            ),
            ("vigo_fleet_flushed_envoys_total", "Envoy records written to the fleet snapshot.", &self.flushed_envoys),
            (
                "vigo_fleet_flushed_trait_rows_total",
                "Trait value rows written to the fleet snapshot.",
                &self.flushed_trait_rows,
            ),
        ] {
            header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", counter.get());
        }
    }
}

/// Writes one gauge with its `# HELP` and `# TYPE` lines.
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// The live heap, when the process allocates with jemalloc (vigosrv does; nothing is written
/// otherwise).
pub fn render_heap(out: &mut String) {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return;
    }
    let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) else { return };
    if allocated == 0 {
        return;
    }
    render_gauge(out, "vigo_heap_allocated_bytes", "Bytes allocated by the server and not yet freed.", allocated);
    render_gauge(out, "vigo_heap_resident_bytes", "Bytes of physical memory the allocator holds.", resident);
}

/// Writes the process metrics from `/proc/self` (Linux); writes nothing where there is no `/proc`.
pub fn render_process(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    if let Some(ticks) = stat.as_deref().and_then(cpu_ticks) {
        header(out, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter");
        let _ = writeln!(out, "process_cpu_seconds_total {}", ticks as f64 / USER_HZ as f64);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok();
    if let Some(bytes) = status.as_deref().and_then(resident_bytes) {
        render_gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.", bytes);
    }
    let boot_s = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time_s);
    if let (Some(boot_s), Some(start_ticks)) = (boot_s, stat.as_deref().and_then(start_ticks)) {
        let start_s = boot_s as f64 + start_ticks as f64 / USER_HZ as f64;
        render_gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start_s,
        );
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Nanoseconds as decimal seconds: `50000` → `0.00005`. Both operands are exact in an `f64`,
/// so the quotient is the double nearest the decimal value and prints as it.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Fields of `/proc/self/stat` after the command name, which may itself hold spaces and
/// parentheses: `fields[0]` is field 3 (state) of proc(5).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// utime + stime (fields 14 and 15), in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// starttime (field 22): clock ticks after boot.
fn start_ticks(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(19)?.parse().ok()
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time_s(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[1_000, 250_000, 1_000_000_000]);
        h.observe(Duration::from_nanos(500));
        h.observe(Duration::from_nanos(1_000)); // on a bound: in that bucket (le is inclusive)
        h.observe(Duration::from_micros(200));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "t_seconds", "Test.");
        assert_eq!(
            out,
            "# HELP t_seconds Test.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.000001\"} 2\n\
             t_seconds_bucket{le=\"0.00025\"} 3\n\
             t_seconds_bucket{le=\"1\"} 3\n\
             t_seconds_bucket{le=\"+Inf\"} 4\n\
             t_seconds_sum 2.0002015\n\
             t_seconds_count 4\n"
        );
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn metrics_bucket_bounds_print_as_written() {
        let printed: Vec<String> = CHECK_IN_BOUNDS_NS.iter().map(|&ns| seconds(ns).to_string()).collect();
        assert_eq!(
            printed,
            ["0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.1"]
        );
        let printed: Vec<String> = LOG_COMMIT_BOUNDS_NS.iter().map(|&ns| seconds(ns).to_string()).collect();
        assert_eq!(
            printed,
            ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5"]
        );
    }

    #[test]
    fn metrics_render_every_series_with_help_and_type() {
        let m = Metrics::default();
        m.record_check_in(CheckInOutcome::SendTraits, Duration::from_micros(70));
        m.record_check_in(CheckInOutcome::NoChange, Duration::from_micros(60));
        m.record_check_in(CheckInOutcome::NoChange, Duration::from_millis(200));
        m.record_report(ReportOutcome::Accepted);
        m.record_log_commit(LogCommitOutcome::Committed, Some(Duration::from_millis(3)));
        m.record_log_commit(LogCommitOutcome::Refused, None);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "# TYPE vigo_check_ins_total counter",
            "vigo_check_ins_total{outcome=\"no_change\"} 2",
            "vigo_check_ins_total{outcome=\"bundle\"} 0",
            "vigo_check_ins_total{outcome=\"send_traits\"} 1",
            "vigo_check_ins_total{outcome=\"refused\"} 0",
            "# TYPE vigo_check_in_duration_seconds histogram",
            "vigo_check_in_duration_seconds_bucket{le=\"0.00005\"} 0",
            "vigo_check_in_duration_seconds_bucket{le=\"0.0001\"} 2",
            "vigo_check_in_duration_seconds_bucket{le=\"0.1\"} 2",
            "vigo_check_in_duration_seconds_bucket{le=\"+Inf\"} 3",
            "vigo_check_in_duration_seconds_count 3",
            "vigo_reports_total{outcome=\"accepted\"} 1",
            "vigo_reports_total{outcome=\"refused\"} 0",
            "vigo_log_commits_total{outcome=\"committed\"} 1",
            "vigo_log_commits_total{outcome=\"refused\"} 1",
            "vigo_log_commits_total{outcome=\"failed\"} 0",
            "vigo_log_commit_duration_seconds_bucket{le=\"0.005\"} 1",
            "vigo_log_commit_duration_seconds_count 1",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        // Every sample belongs to a family announced by # HELP and # TYPE just before it.
        let mut family = String::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line:?} outside its family {family:?}");
            }
        }
        assert_eq!(out.matches("# HELP ").count(), out.matches("# TYPE ").count());
    }

    #[test]
    fn metrics_check_in_outcomes() {
        let bundle = CheckInResponse { reply: Some(Reply::Bundle(Default::default())), ..Default::default() };
        assert_eq!(CheckInOutcome::of(&Ok(bundle)), CheckInOutcome::Bundle);
        let traits = CheckInResponse { send_traits: true, ..Default::default() };
        assert_eq!(CheckInOutcome::of(&Ok(traits)), CheckInOutcome::SendTraits);
        assert_eq!(CheckInOutcome::of(&Ok(CheckInResponse::default())), CheckInOutcome::NoChange);
        assert_eq!(CheckInOutcome::of(&Err(Refusal::Malformed("x"))), CheckInOutcome::Refused);
    }

    #[test]
    fn metrics_proc_parsing() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (vigo srv) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 8 0 12345 1000 500";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(start_ticks(stat), Some(12345));
        assert_eq!(resident_bytes("Name:\tvigosrv\nVmRSS:\t   2048 kB\nThreads:\t8\n"), Some(2048 * 1024));
        assert_eq!(boot_time_s("cpu  1 2 3\nbtime 1700000000\n"), Some(1_700_000_000));
        let mut out = String::new();
        render_process(&mut out);
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"), "{out}");
            assert!(out.contains("\nprocess_resident_memory_bytes "), "{out}");
        }
    }
}
