//! Tables on stdout, and results.json, results.csv and summary.svg in the output folder.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::workloads::Sample;

/// One workload on one system.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub system: String,
    /// The round, from 0.
    pub round: usize,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_mib: f64,
}

impl Row {
    pub fn new(workload: &str, system: &str, round: usize, sample: &Sample, rss_bytes: u64) -> Self {
        let lat = &sample.latencies;
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            ms(lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)])
        };
        let seconds = sample.elapsed.as_secs_f64();
        Row {
            workload: workload.into(),
            system: system.into(),
            round,
            ops: sample.ops,
            errors: sample.errors,
            first_error: sample.first_error.clone(),
            seconds,
            ops_per_sec: if seconds > 0.0 { sample.ops as f64 / seconds } else { 0.0 },
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat.last().map_or(0.0, |d| ms(*d)),
            rss_mib: rss_bytes as f64 / (1024.0 * 1024.0),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Keelson/etcd for one workload: throughput ratio and p99 ratio (above 1 means Keelson is slower).
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub workload: String,
    pub throughput: f64,
    pub p99: f64,
    pub rss: f64,
}

pub fn ratio(etcd: &Row, keelson: &Row) -> Ratio {
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ratio {
        workload: etcd.workload.clone(),
        throughput: div(keelson.ops_per_sec, etcd.ops_per_sec),
        p99: div(keelson.p99_ms, etcd.p99_ms),
        rss: div(keelson.rss_mib, etcd.rss_mib),
    }
}

pub fn print_table(workload: &str, rows: &[&Row], ratio: Option<&Ratio>) {
    println!("\n== {workload}");
    println!(
        "{:<14} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "system", "ops", "errors", "ops/s", "p50 ms", "p99 ms", "max ms", "RSS MiB"
    );
    for r in rows {
        println!(
            "{:<14} {:>9} {:>7} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            r.system, r.ops, r.errors, r.ops_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.rss_mib
        );
        if let Some(e) = &r.first_error {
            println!("{:<14} first error: {e}", "");
        }
    }
    if let Some(q) = ratio {
        println!(
            "{:<14} {:>9} {:>7} {:>10.2}x {:>9} {:>8.2}x {:>9} {:>8.2}x",
            "keelson/etcd", "", "", q.throughput, "", q.p99, "", q.rss
        );
    }
}

/// One line per system with its ops/s in every round, in round order.
pub fn print_rounds(workload: &str, rows: &[Row]) {
    let mut systems: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.workload == workload) {
        if !systems.contains(&r.system.as_str()) {
            systems.push(&r.system);
        }
    }
    for system in systems {
        let runs: Vec<String> = rows
            .iter()
            .filter(|r| r.workload == workload && r.system == system)
            .map(|r| format!("{:.0}", r.ops_per_sec))
            .collect();
        println!("{:<14} ops/s by round: {}", system, runs.join(", "));
    }
}

#[derive(Serialize)]
struct Results<'a, P: Serialize> {
    params: &'a P,
    /// Every workload of every round.
    rounds: &'a [Row],
    /// Each system's median round per workload, as the summary shows them.
    results: &'a [Row],
    ratios: &'a [Ratio],
}

/// results.json (everything), results.csv (every round) and summary.svg (the medians).
pub fn write_all<P: Serialize>(out: &Path, params: &P, rows: &[Row], medians: &[Row], ratios: &[Ratio]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&Results { params, rounds: rows, results: medians, ratios })?;
    write(&out.join("results.json"), &json)?;
    let mut csv = String::from("workload,system,round,ops,errors,seconds,ops_per_sec,p50_ms,p99_ms,max_ms,rss_mib\n");
    for r in rows {
        writeln!(
            csv,
            "{},{},{},{},{},{:.3},{:.1},{:.3},{:.3},{:.3},{:.1}",
            r.workload,
            r.system,
            r.round,
            r.ops,
            r.errors,
            r.seconds,
            r.ops_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.rss_mib
        )?;
    }
    write(&out.join("results.csv"), &csv)?;
    write(&out.join("summary.svg"), &svg(medians)?)?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

const SYSTEMS: [(&str, &str); 2] = [("etcd", "#4e79a7"), ("keelson", "#f28e2b")];
/// Width of one workload's group of bars, in pixels.
const GROUP_PX: f64 = 110.0;
/// Height of the tallest bar of a panel, in pixels.
const BAR_PX: f64 = 140.0;

/// Two panels (throughput, p99), a group of bars per workload. Workloads differ by orders of
/// magnitude, so each group is scaled to its own larger bar and every bar is labelled with its value.
fn svg(rows: &[Row]) -> Result<String> {
    let mut workloads: Vec<&str> = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    let width = 60.0 + GROUP_PX * workloads.len() as f64;
    let panel = BAR_PX + 90.0;
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" font-family="sans-serif" font-size="10">"#,
        2.0 * panel + 30.0
    )?;
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    for (k, (name, colour)) in SYSTEMS.iter().enumerate() {
        let x = 20.0 + 90.0 * k as f64;
        writeln!(
            s,
            r#"<rect x="{x}" y="8" width="10" height="10" fill="{colour}"/><text x="{}" y="17">{name}</text>"#,
            x + 14.0
        )?;
    }
    let panels: [(&str, fn(&Row) -> f64); 2] = [
        ("throughput (ops/s, higher is better)", |r| r.ops_per_sec),
        ("p99 latency (ms, lower is better)", |r| r.p99_ms),
    ];
    for (p, (title, metric)) in panels.iter().enumerate() {
        let top = 30.0 + p as f64 * panel;
        let base = top + 20.0 + BAR_PX;
        writeln!(s, r#"<text x="20" y="{}" font-size="12" font-weight="bold">{title}</text>"#, top + 12.0)?;
        writeln!(s, r#"<line x1="20" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#, width - 20.0)?;
        for (g, workload) in workloads.iter().enumerate() {
            let values: Vec<Option<f64>> = SYSTEMS
                .iter()
                .map(|(system, _)| rows.iter().find(|r| r.workload == *workload && r.system == *system).map(metric))
                .collect();
            let largest = values.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
            let x0 = 40.0 + GROUP_PX * g as f64;
            for (k, value) in values.iter().enumerate() {
                let Some(v) = value else { continue };
                let h = if largest > 0.0 { BAR_PX * v / largest } else { 0.0 };
                let x = x0 + 36.0 * k as f64;
                writeln!(s, r#"<rect x="{x}" y="{}" width="30" height="{h}" fill="{}"/>"#, base - h, SYSTEMS[k].1)?;
                writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                    x + 15.0,
                    base - h - 3.0,
                    short(*v)
                )?;
            }
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{workload}</text>"#, x0 + 33.0, base + 14.0)?;
        }
    }
    s.push_str("</svg>\n");
    Ok(s)
}

fn short(v: f64) -> String {
    match v {
        v if v >= 10_000.0 => format!("{:.0}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

/// The `p` quantile of `v` (sorted in place) by nearest rank over its `n - 1` gaps; 0 for none.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
