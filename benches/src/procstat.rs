//! What a process has used so far, from /proc: peak resident memory and CPU time.

use anyhow::{Context, Result};

/// Clock ticks per second in /proc's CPU times: USER_HZ, 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
    pub cpu_seconds: f64,
}

/// Peak and current resident set (VmHWM, VmRSS) and user+system CPU seconds of `pid`.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; the rest starts at field 3.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(Usage {
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        rss_mib: kib("VmRSS:") / 1024.0,
        cpu_seconds: (ticks(14) + ticks(15)) / USER_HZ,
    })
}
