//! What a run leaves in its results folder: `history.json` (everything recorded, enough to check
//! again), `result.json` (the checkers' verdicts and counts), `summary.txt` (the same for a
//! person) and `timeline.svg` (every operation as a bar on its client's row, coloured by
//! outcome, and every fault as a band on its peer's row).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::check::Report;
use crate::history::{History, OpKind, Outcome};

/// Counts of operations by kind and outcome, and of faults by kind.
pub fn counts(h: &History) -> serde_json::Value {
    let mut ops = std::collections::BTreeMap::<String, u64>::new();
    for op in &h.ops {
        let kind = match &op.kind {
            OpKind::Write(w) => match w {
                crate::history::Write::Publish { .. } => "publish",
                crate::history::Write::Token { .. } => "token",
                crate::history::Write::Enroll { .. } => "enroll",
                crate::history::Write::Revoke { .. } => "revoke",
            },
            OpKind::Read { .. } => "read",
        };
        let outcome = match op.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown { .. } => "unknown",
        };
        *ops.entry(format!("{kind} {outcome}")).or_default() += 1;
    }
    let mut faults = std::collections::BTreeMap::<String, u64>::new();
    for fault in &h.faults {
        let what = match &fault.point {
            Some(point) => format!("{} at {point}", fault.what),
            None => fault.what.clone(),
        };
        *faults.entry(what).or_default() += 1;
    }
    json!({ "ops": h.ops.len(), "by_outcome": ops, "faults": faults })
}

/// Writes the four files into `dir`.
pub fn write(dir: &Path, h: &History, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("history.json"), serde_json::to_vec(h)?)?;
    let result = json!({
        "seed": h.seed,
        "peers": h.peers,
        "ok": report.ok(),
        "counts": counts(h),
        "checkers": report,
    });
    std::fs::write(dir.join("result.json"), serde_json::to_vec_pretty(&result)?)?;
    std::fs::write(dir.join("summary.txt"), summary(h, report))?;
    std::fs::write(dir.join("timeline.svg"), timeline(h))?;
    Ok(())
}

/// The human summary.
pub fn summary(h: &History, report: &Report) -> String {
    let counts = counts(h);
    let mut out = format!(
        "seed {} · {} peers · {} operations · {}\n",
        h.seed,
        h.peers,
        h.ops.len(),
        if report.ok() { "no violations" } else { "VIOLATIONS" }
    );
    let _ = writeln!(out, "operations: {}", counts["by_outcome"]);
    let _ = writeln!(out, "faults: {}", counts["faults"]);
    out.push_str(&report.summary());
    out.push('\n');
    out
}

/// The timeline picture: time runs left to right; one row per client, then one per peer.
pub fn timeline(h: &History) -> String {
    let end_us = h.ops.iter().map(|o| o.complete_us).chain(h.faults.iter().map(|f| f.at_us)).max().unwrap_or(1).max(1);
    let clients = h.ops.iter().map(|o| o.client + 1).max().unwrap_or(0) as usize;
    let (width, row, left) = (1200.0_f64, 14.0_f64, 80.0_f64);
    let x = |t: u64| left + (t as f64 / end_us as f64) * (width - left - 10.0);
    let height = (clients + h.peers + 2) as f64 * row + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"10\">\n"
    );
    for c in 0..clients {
        let _ = writeln!(svg, "<text x=\"2\" y=\"{}\">client {c}</text>", (c as f64 + 1.0) * row);
    }
    for op in &h.ops {
        let colour = match op.outcome {
            Outcome::Ok { .. } => "#2e7d32",
            Outcome::Failed { .. } => "#c62828",
            Outcome::Unknown { .. } => "#ef6c00",
        };
        let y = op.client as f64 * row + 4.0;
        bar(&mut svg, (x(op.invoke_us), x(op.complete_us)), (y, row - 4.0), colour, &format!("op {}", op.id));
    }
    // Faults: a band from each fault to what ends it, on the peer's row.
    let base = clients as f64 * row + row;
    for p in 0..h.peers {
        let _ = writeln!(svg, "<text x=\"2\" y=\"{}\">peer {p}</text>", base + (p as f64 + 1.0) * row);
    }
    for (i, fault) in h.faults.iter().enumerate() {
        let ends = match fault.what.as_str() {
            "kill" | "crash-in-snapshot" | "crash-in-install" => "restart",
            "pause" => "resume",
            "partition" | "bridge" => "heal-partition",
            _ => continue,
        };
        let until = h.faults[i + 1..]
            .iter()
            .find(|f| (f.what == ends || f.what == "heal") && f.peers.iter().any(|p| fault.peers.contains(p)))
            .map_or(end_us, |f| f.at_us);
        let colour = match fault.what.as_str() {
            "kill" | "crash-in-snapshot" | "crash-in-install" => "#6a1b9a",
            "pause" => "#0277bd",
            _ => "#f9a825",
        };
        for p in &fault.peers {
            let y = base + *p as f64 * row + 4.0;
            bar(&mut svg, (x(fault.at_us), x(until)), (y, row - 4.0), colour, &fault.what);
        }
    }
    if let Some(healed) = h.healed_us {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{height}\" stroke=\"black\" stroke-dasharray=\"4\"/>",
            x(healed)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{}\">ok · failed · unknown (green · red · orange); kill · pause · partition (purple · blue · yellow); dashed: heal</text>",
        height - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// One bar from `x0` to `x1`, at height `y`, `title` shown on hover.
fn bar(svg: &mut String, (x0, x1): (f64, f64), (y, height): (f64, f64), colour: &str, title: &str) {
    let _ = writeln!(
        svg,
        "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{colour}\" \
         opacity=\"0.8\"><title>{title}</title></rect>",
        (x1 - x0).max(0.5)
    );
}
