//! Reads vigosrv's `/metrics` (Prometheus text format) over plain HTTP/1.1.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: every sample by its series name with labels, e.g.
/// `vigo_check_ins_total{outcome="no_change"}`.
#[derive(Debug, Clone, Default)]
pub struct Sample(pub BTreeMap<String, f64>);

impl Sample {
    /// A series' value; 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum of every series of metric `name` (all label values).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Parses the text format: `name{labels} value` lines; comments and blank lines skipped.
pub fn parse(text: &str) -> anyhow::Result<Sample> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("metrics line {}: no value", n + 1))?;
        let value: f64 = value.parse().with_context(|| format!("metrics line {}: bad value {value:?}", n + 1))?;
        out.insert(series.trim().to_string(), value);
    }
    Ok(Sample(out))
}

/// Fetches and parses `http://addr/metrics`.
pub async fn scrape(addr: &str) -> anyhow::Result<Sample> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot reach {addr}"))?;
        stream
            .write_all(format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch).await.context("metrics scrape timed out")??;
    let Some((head, body)) = response.split_once("\r\n\r\n") else { bail!("{addr}/metrics: no HTTP response") };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}/metrics answered {}", head.lines().next().unwrap_or_default());
    }
    parse(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_series_with_labels_and_sums_a_metric() {
        let s = parse(
            "# HELP x y\n# TYPE vigo_check_ins_total counter\nvigo_check_ins_total{outcome=\"no_change\"} 5\n\
             vigo_check_ins_total{outcome=\"bundle\"} 2\nvigo_check_ins_totals 100\nprocess_cpu_seconds_total 1.5\n",
        )
        .unwrap();
        assert_eq!(s.get("process_cpu_seconds_total"), 1.5);
        assert_eq!(s.get("vigo_check_ins_total{outcome=\"bundle\"}"), 2.0);
        assert_eq!(s.sum("vigo_check_ins_total"), 7.0);
        assert_eq!(s.get("absent"), 0.0);
    }

    #[test]
    fn a_line_without_a_number_is_an_error_naming_the_line() {
        let e = parse("a 1\nb x\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
