//! What a `fakefleet` run reports, as JSON and as a markdown table.

use serde::Serialize;

/// The figures of one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Free text naming the run.
    pub label: String,
    /// `held` or `poll`.
    pub mode: String,
    /// Envoys enrolled and checking in.
    pub envoys: u32,
    /// Check-in interval asked for, seconds.
    pub interval_s: f64,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Enrollments per second through the real path (each one a committed event).
    pub enrollments_per_s: f64,
    /// Seconds from starting the check-in loops until every envoy held its first bundle (each
    /// sends its inventory once, and the server compiles and signs a bundle per host).
    pub first_bundle_all_s: f64,
    /// Check-ins completed in the window (client side).
    pub check_ins: u64,
    /// Check-ins per second achieved in the window.
    pub check_ins_per_s: f64,
    /// Server CPU time per check-in, microseconds (server CPU delta / server check-in delta).
    pub server_cpu_us_per_check_in: f64,
    /// Server CPU use in the window, in cores.
    pub server_cpu_cores: f64,
    /// Server resident memory at the end of the window, bytes.
    pub server_rss_bytes: u64,
    /// (RSS at the end − RSS before enrollment) / envoys, bytes.
    pub server_rss_bytes_per_envoy: f64,
    /// (Live heap at the end − live heap before enrollment) / envoys, bytes; 0 when the server
    /// does not report its heap.
    pub server_heap_bytes_per_envoy: f64,
    /// Trait store bytes (strings, numbers, member lists) / envoys: the envoys' share of the
    /// interned traits.
    pub trait_heap_bytes_per_envoy: f64,
    /// Client-side check-in latency percentiles, milliseconds.
    pub latency_ms_p50: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// Largest.
    pub latency_ms_max: f64,
    /// Backoff answers.
    pub backoffs: u64,
    /// Failed check-ins (transport errors, refusals, timeouts).
    pub errors: u64,
    /// Pushes received on held watches (a publish asking for a check-in now).
    pub pushes: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Set when a publish was triggered mid-run.
    pub publish: Option<PublishReport>,
}

/// How a mid-run publish spread through the fleet.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PublishReport {
    /// The stack version published.
    pub version: u64,
    /// How long `vigocli config publish` took (validate, commit), seconds.
    pub commit_s: f64,
    /// Envoys holding the new bundle by the end of the window.
    pub envoys_updated: u32,
    /// Seconds from the publish starting until the last envoy held the new bundle; `None` if
    /// some never did within the window.
    pub all_updated_after_s: Option<f64>,
    /// Median seconds until an envoy held it.
    pub median_updated_after_s: f64,
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl Report {
    /// The report as a markdown table, one row per figure.
    pub fn markdown(&self) -> String {
        let mut rows = vec![
            ("mode", format!("{} ({} envoys, every {} s)", self.mode, self.envoys, self.interval_s)),
            ("window", format!("{:.1} s", self.window_s)),
            ("enrollments/s", format!("{:.0}", self.enrollments_per_s)),
            ("cold start: every envoy holds its first bundle", format!("{:.1} s", self.first_bundle_all_s)),
            ("check-ins/s", format!("{:.0} ({} in all)", self.check_ins_per_s, self.check_ins)),
            ("server CPU per check-in", format!("{:.1} µs", self.server_cpu_us_per_check_in)),
            ("server CPU", format!("{:.2} cores", self.server_cpu_cores)),
            ("server RSS", format!("{:.1} MiB", self.server_rss_bytes as f64 / (1024.0 * 1024.0))),
            ("server RSS per envoy", format!("{:.1} KiB", self.server_rss_bytes_per_envoy / 1024.0)),
            ("server live heap per envoy", format!("{:.1} KiB", self.server_heap_bytes_per_envoy / 1024.0)),
            ("of which interned traits", format!("{:.1} KiB", self.trait_heap_bytes_per_envoy / 1024.0)),
            (
                "check-in latency p50 / p99 / max",
                format!("{:.2} / {:.2} / {:.2} ms", self.latency_ms_p50, self.latency_ms_p99, self.latency_ms_max),
            ),
            ("backoffs / errors", format!("{} / {}", self.backoffs, self.errors)),
            ("pushes received", self.pushes.to_string()),
        ];
        if let Some(p) = &self.publish {
            let all = p.all_updated_after_s.map_or("not within the window".to_string(), |s| format!("{s:.2} s"));
            rows.push(("publish: version, commit", format!("v{}, {:.3} s", p.version, p.commit_s)));
            rows.push(("publish: envoys holding it", format!("{} of {}", p.envoys_updated, self.envoys)));
            rows.push(("publish: all / median hold it after", format!("{all} / {:.2} s", p.median_updated_after_s)));
        }
        let mut out =
            format!("| {} | figure |\n|---|---|\n", if self.label.is_empty() { "fakefleet" } else { &self.label });
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("\nfirst error: {e}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_sorted_samples() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 51);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn markdown_names_every_figure() {
        let r = Report {
            mode: "held".into(),
            envoys: 10,
            publish: Some(PublishReport { version: 2, all_updated_after_s: Some(1.5), ..Default::default() }),
            ..Default::default()
        };
        let md = r.markdown();
        assert!(md.contains("| server CPU per check-in |"));
        assert!(md.contains("| publish: all / median hold it after | 1.50 s"));
    }
}
