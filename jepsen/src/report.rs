//! The report of a run: a text summary (operations by type and outcome, availability during each
//! fault, time from heal to the first successful write and read) and a timeline plot (latency
//! points, throughput, fault windows shaded) as an SVG image and an HTML page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{pair, Event, Kind, Op, Operation, NEMESIS_PROCESS};

/// A period during which a fault was in force.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultWindow {
    pub name: String,
    pub start_ns: u64,
    /// None if the run ended with the fault in force.
    pub end_ns: Option<u64>,
}

/// `start-<kind>` opens a window; `stop-<kind>` closes that kind's open windows, `heal…`
/// closes them all (the nemesis's action names).
pub fn fault_windows(history: &[Event]) -> Vec<FaultWindow> {
    let mut windows: Vec<(String, FaultWindow)> = Vec::new();
    for e in history.iter().filter(|e| e.process == NEMESIS_PROCESS) {
        let Op::Nemesis { action, detail } = &e.op else { continue };
        if action.ends_with("-failed") {
            continue;
        }
        if let Some(kind) = action.strip_prefix("start-") {
            let name = if detail.is_empty() { kind.to_string() } else { format!("{kind}: {detail}") };
            windows.push((kind.to_string(), FaultWindow { name, start_ns: e.time_ns, end_ns: None }));
        } else if let Some(kind) = action.strip_prefix("stop-") {
            for (_, w) in windows.iter_mut().filter(|(k, w)| k == kind && w.end_ns.is_none()) {
                w.end_ns = Some(e.time_ns);
            }
        } else if action.starts_with("heal") {
            for (_, w) in windows.iter_mut().filter(|(_, w)| w.end_ns.is_none()) {
                w.end_ns = Some(e.time_ns);
            }
        }
    }
    windows.into_iter().map(|(_, w)| w).collect()
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Read { .. } => "read",
        Op::Write { .. } => "write",
        Op::Cas { .. } => "cas",
        Op::Add { .. } => "add",
        Op::ReadSet { .. } => "read-set",
        Op::Grant { .. } => "grant",
        Op::Acquire { .. } => "acquire",
        Op::KeepAlive { .. } => "keep-alive",
        Op::Release { .. } => "release",
        Op::Nemesis { .. } => "nemesis",
    }
}

/// Whether an operation needs the leader (a write, or a lease operation).
fn is_write(op: &Op) -> bool {
    !matches!(op, Op::Read { .. } | Op::ReadSet { .. } | Op::Nemesis { .. })
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Client operations, completed ones with their latency.
fn client_ops(history: &[Event]) -> Vec<Operation> {
    pair(history).into_iter().filter(|o| o.process != NEMESIS_PROCESS).collect()
}

/// The text summary; `verdict` is the checkers' rendering, appended as it is.
pub fn summary(history: &[Event], verdict: &str) -> String {
    let ops = client_ops(history);
    let mut out = String::new();
    let end_ns = history.last().map(|e| e.time_ns).unwrap_or(0);
    let _ = writeln!(out, "run: {:.1} s, {} client operations, {} events", secs(end_ns), ops.len(), history.len());
    let mut table: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for o in &ops {
        let row = table.entry(op_name(&o.invoke.op)).or_default();
        match o.outcome() {
            Kind::Ok => row[0] += 1,
            Kind::Fail => row[1] += 1,
            _ => row[2] += 1,
        }
    }
    let _ = writeln!(out, "\noperations        ok     fail     info");
    for (name, [ok, fail, info]) in &table {
        let _ = writeln!(out, "{name:<12} {ok:>7} {fail:>8} {info:>8}");
    }
    let windows = fault_windows(history);
    let _ = writeln!(out, "\nfaults: {}", windows.len());
    for w in &windows {
        let end = w.end_ns.unwrap_or(end_ns);
        let during: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.complete.as_ref().is_some_and(|c| c.time_ns >= w.start_ns && c.time_ns < end))
            .collect();
        let rate = |writes: bool| {
            let done: Vec<&&Operation> = during.iter().filter(|o| is_write(&o.invoke.op) == writes).collect();
            let ok = done.iter().filter(|o| o.outcome() == Kind::Ok).count();
            if done.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}% of {}", 100.0 * ok as f64 / done.len() as f64, done.len())
            }
        };
        let first_ok_after = |writes: bool| {
            w.end_ns.and_then(|heal| {
                ops.iter()
                    .filter(|o| is_write(&o.invoke.op) == writes && o.outcome() == Kind::Ok)
                    .filter_map(|o| o.complete.as_ref().map(|c| c.time_ns))
                    .filter(|t| *t >= heal)
                    .min()
                    .map(|t| format!("{:.3} s", secs(t - heal)))
            })
        };
        let _ = writeln!(
            out,
            "  {:>7.1}–{:<7.1} {:<28} available: writes {}, reads {}; after heal, first ok write {}, read {}",
            secs(w.start_ns),
            secs(end),
            w.name,
            rate(true),
            rate(false),
            first_ok_after(true).unwrap_or_else(|| "-".into()),
            first_ok_after(false).unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(out, "\n{verdict}");
    out
}

/// The timeline as an SVG image: latency of every completed operation (log scale; green ok,
/// red fail, orange unknown), client throughput per second, fault windows shaded.
pub fn timeline_svg(history: &[Event]) -> String {
    const W: f64 = 1200.0;
    const H: f64 = 500.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 70.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 50.0;
    let ops = client_ops(history);
    let end_s = secs(history.last().map(|e| e.time_ns).unwrap_or(1)).max(1.0);
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / end_s;
    // Latency axis: 0.1 ms to 10 s, logarithmic.
    let (lat_min, lat_max) = (0.1f64, 10_000.0f64);
    let y_lat = |ms: f64| {
        let v = ms.clamp(lat_min, lat_max);
        TOP + (H - TOP - BOTTOM) * (1.0 - (v / lat_min).log10() / (lat_max / lat_min).log10())
    };
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for o in &ops {
        if let Some(c) = o.complete.as_ref().filter(|c| c.kind == Kind::Ok) {
            *per_second.entry(c.time_ns / 1_000_000_000).or_default() += 1;
        }
    }
    // The last second is partial: its count would read as a collapse.
    let full_seconds = end_s.floor() as u64;
    per_second.retain(|s, _| *s < full_seconds);
    let max_tp = per_second.values().copied().max().unwrap_or(1).max(1) as f64;
    let y_tp = |n: f64| TOP + (H - TOP - BOTTOM) * (1.0 - n / max_tp);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let windows = fault_windows(history);
    // Names are written on the plot only while they fit; the shading's tooltip always has them.
    let label = windows.len() <= 12;
    for w in windows {
        let x0 = x(secs(w.start_ns));
        let x1 = x(w.end_ns.map(secs).unwrap_or(end_s));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f4c7c3" opacity="0.6"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            H - TOP - BOTTOM,
            xml_escape(&w.name)
        );
        if label {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" fill="#a33" font-size="10">{}</text>"##,
                x0 + 2.0,
                TOP + 12.0,
                xml_escape(&w.name)
            );
        }
    }
    for o in &ops {
        let Some(c) = &o.complete else { continue };
        let ms = (c.time_ns.saturating_sub(o.invoke.time_ns)) as f64 / 1e6;
        let color = match c.kind {
            Kind::Ok => "#2a7",
            Kind::Fail => "#d33",
            _ => "#e90",
        };
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}" opacity="0.6"/>"#,
            x(secs(c.time_ns)),
            y_lat(ms)
        );
    }
    let points: Vec<String> =
        per_second.iter().map(|(s, n)| format!("{:.1},{:.1}", x(*s as f64 + 0.5), y_tp(*n as f64))).collect();
    let _ =
        writeln!(svg, r##"<polyline points="{}" fill="none" stroke="#36c" stroke-width="1.5"/>"##, points.join(" "));
    // Axes and labels.
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
    let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#333"/>"##, H - BOTTOM);
    let step = (end_s / 10.0).max(1.0).ceil();
    let mut t = 0.0;
    while t <= end_s {
        let _ =
            writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#, x(t), H - BOTTOM + 16.0);
        t += step;
    }
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0] {
        let _ =
            writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"#, LEFT - 4.0, y_lat(ms) + 4.0);
    }
    let _ =
        writeln!(svg, r##"<text x="{:.1}" y="{:.1}" fill="#36c">{max_tp:.0} ok/s</text>"##, W - RIGHT + 4.0, TOP + 4.0);
    let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#, W / 2.0, H - 12.0);
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="18">latency per operation (green ok, red fail, orange unknown); blue: ok operations per second; shaded: faults</text>"##
    );
    svg.push_str("</svg>\n");
    svg
}

/// An HTML page with the summary and the timeline.
pub fn html(summary: &str, svg: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Keelson jepsen run</title></head>\n<body>\n<h1>Keelson jepsen run</h1>\n{svg}\n<pre>{}</pre>\n</body></html>\n",
        xml_escape(summary)
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: usize, t_ms: u64, process: i64, kind: Kind, op: Op) -> Event {
        Event { index, time_ns: t_ms * 1_000_000, process, kind, op, revision: None, error: None }
    }

    fn w(v: &str) -> Op {
        Op::Write { key: "r0".into(), value: v.into() }
    }

    fn nem(action: &str) -> Op {
        Op::Nemesis { action: action.into(), detail: "n1".into() }
    }

    /// The summary counts outcomes and measures availability and recovery per fault window.
    #[test]
    fn summary_measures_faults() {
        let history = vec![
            ev(0, 0, 0, Kind::Invoke, w("a")),
            ev(1, 5, 0, Kind::Ok, w("a")),
            ev(2, 100, NEMESIS_PROCESS, Kind::Info, nem("start-kill")),
            ev(3, 110, 0, Kind::Invoke, w("b")),
            ev(4, 200, 0, Kind::Info, w("b")),
            ev(5, 300, NEMESIS_PROCESS, Kind::Info, nem("stop-kill")),
            ev(6, 400, 0, Kind::Invoke, w("c")),
            ev(7, 450, 0, Kind::Ok, w("c")),
        ];
        let windows = fault_windows(&history);
        assert_eq!(
            windows,
            vec![FaultWindow { name: "kill: n1".into(), start_ns: 100_000_000, end_ns: Some(300_000_000) }]
        );
        let text = summary(&history, "valid");
        assert!(text.contains("write              2        0        1"), "{text}");
        assert!(text.contains("available: writes 0% of 1"), "{text}");
        assert!(text.contains("first ok write 0.150 s"), "{text}");
        let svg = timeline_svg(&history);
        assert_eq!(svg.matches("<circle").count(), 3, "one point per completed operation");
        assert!(svg.contains("kill: n1"));
        assert!(html(&text, &svg).contains("<svg"));
    }
}
