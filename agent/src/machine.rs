//! What a real node reports about its machine: capacity measured from the host (CPUs, memory,
//! the data directory's filesystem), allocatable after `--kube-reserved`, `--system-reserved`
//! and kubelet's hard eviction threshold, and nodeInfo (kernel, OS image, boot and machine ids).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::NodeSystemInfo;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Pods a node accepts (kubelet's `--max-pods` default).
pub const PODS_MAX: u32 = 110;
/// Memory held back for kubelet's hard eviction threshold (`memory.available<100Mi`).
const EVICTION_MEMORY_BYTES: u64 = 100 << 20;

/// Resources in the units the node reports them in: millicores and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

/// A quantity such as `500m`, `2`, `1.5`, `256Mi`, `1G`, as a multiple of `unit` (1000 for
/// millicores, 1 for bytes), rounded up.
pub fn parse_quantity(s: &str, unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let suffixes: &[(&str, f64)] = &[
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, factor) =
        suffixes.iter().find_map(|(sfx, f)| t.strip_suffix(sfx).map(|n| (n, *f))).unwrap_or((t, 1.0));
    let n: f64 = number.parse().map_err(|_| format!("{s:?} is not a quantity"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} is not a non-negative quantity"));
    }
    Ok((n * factor * unit as f64).ceil() as u64)
}

/// `cpu=100m,memory=256Mi,ephemeral-storage=1Gi` (kubelet's reservation flags).
pub fn parse_reserved(flag: &str, items: &[String]) -> anyhow::Result<Resources> {
    let mut r = Resources::default();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').with_context(|| format!("{flag}: {item:?} is not resource=quantity"))?;
        let parsed = |unit| parse_quantity(v, unit).map_err(|e| anyhow::anyhow!("{flag}: {e}"));
        match k {
            "cpu" => r.cpu_millis += parsed(1000)?,
            "memory" => r.memory_bytes += parsed(1)?,
            "ephemeral-storage" => r.ephemeral_storage_bytes += parsed(1)?,
            "pid" => {}
            _ => bail!("{flag}: unknown resource {k:?} (cpu, memory, ephemeral-storage, pid)"),
        }
    }
    Ok(r)
}

/// A field of /proc/meminfo, in KiB.
fn meminfo_kib(field: &str) -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/meminfo"))
}

/// The CPUs this process may use, its memory and the size of `data_dir`'s filesystem.
pub fn capacity(data_dir: &Path) -> anyhow::Result<Resources> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    let memory_kib = meminfo_kib("MemTotal")?;
    Ok(Resources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory_kib * 1024,
        ephemeral_storage_bytes: filesystem_size(data_dir)?,
    })
}

fn statvfs(dir: &Path) -> anyhow::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a statvfs the call fills.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st)
}

fn filesystem_size(dir: &Path) -> anyhow::Result<u64> {
    let st = statvfs(dir)?;
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

/// Which of kubelet's eviction signals are past their hard thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `memory.available<100Mi`.
    pub memory: bool,
    /// `nodefs.available<10%` or `nodefs.inodesFree<5%` on the data directory's filesystem.
    pub disk: bool,
    /// Fewer than 5% of `kernel.pid_max` left (kubelet sets no default threshold for
    /// `pid.available`; this is Keelson's).
    pub pid: bool,
}

/// What the eviction signals read: free memory, the data directory's filesystem, process ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readings {
    pub memory_available_bytes: u64,
    pub fs_available_blocks: u64,
    pub fs_blocks: u64,
    pub fs_available_inodes: u64,
    pub fs_inodes: u64,
    pub pids_used: u64,
    pub pid_max: u64,
}

impl Readings {
    /// The signals past kubelet's default hard eviction thresholds.
    pub fn pressure(&self) -> Pressure {
        let below = |free: u64, total: u64, percent: u64| total > 0 && free * 100 < total * percent;
        Pressure {
            memory: self.memory_available_bytes < EVICTION_MEMORY_BYTES,
            disk: below(self.fs_available_blocks, self.fs_blocks, 10)
                || below(self.fs_available_inodes, self.fs_inodes, 5),
            pid: below(self.pid_max.saturating_sub(self.pids_used), self.pid_max, 5),
        }
    }
}

/// Reads the machine's memory and process ids and `data_dir`'s filesystem.
pub fn readings(data_dir: &Path) -> anyhow::Result<Readings> {
    let available_kib = meminfo_kib("MemAvailable")?;
    let fs = statvfs(data_dir)?;
    let pid_max: u64 = read_trimmed("/proc/sys/kernel/pid_max").parse().context("reading kernel.pid_max")?;
    // The fourth field of loadavg is running/total scheduling entities (threads), each holding a pid.
    let loadavg = read_trimmed("/proc/loadavg");
    let pids_used: u64 = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .context("reading /proc/loadavg")?;
    Ok(Readings {
        memory_available_bytes: available_kib * 1024,
        fs_available_blocks: fs.f_bavail as u64,
        fs_blocks: fs.f_blocks as u64,
        fs_available_inodes: fs.f_favail as u64,
        fs_inodes: fs.f_files as u64,
        pids_used,
        pid_max,
    })
}

/// The eviction signals past their thresholds on this machine.
pub fn pressure(data_dir: &Path) -> anyhow::Result<Pressure> {
    Ok(readings(data_dir)?.pressure())
}

fn quantities(r: Resources, pods: u32) -> BTreeMap<String, Quantity> {
    let cpu = if r.cpu_millis % 1000 == 0 { (r.cpu_millis / 1000).to_string() } else { format!("{}m", r.cpu_millis) };
    [
        ("cpu", cpu),
        ("memory", format!("{}Ki", r.memory_bytes / 1024)),
        ("ephemeral-storage", format!("{}Ki", r.ephemeral_storage_bytes / 1024)),
        ("pods", pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
}

/// Capacity and allocatable as the node reports them: allocatable is capacity less the
/// reservations and the memory eviction threshold.
pub fn node_resources(
    capacity: Resources,
    reserved: Resources,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let allocatable = Resources {
        cpu_millis: capacity.cpu_millis.saturating_sub(reserved.cpu_millis),
        memory_bytes: capacity.memory_bytes.saturating_sub(reserved.memory_bytes + EVICTION_MEMORY_BYTES),
        ephemeral_storage_bytes: capacity.ephemeral_storage_bytes.saturating_sub(reserved.ephemeral_storage_bytes),
    };
    (quantities(capacity, PODS_MAX), quantities(allocatable, PODS_MAX))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Kubernetes' name for this machine's architecture.
pub fn architecture() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

/// nodeInfo without the runtime's version (the runtime reports that).
pub fn system_info(kubelet_version: &str) -> NodeSystemInfo {
    let os_image = read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let machine_id = read_trimmed("/etc/machine-id");
    let product_uuid = read_trimmed("/sys/class/dmi/id/product_uuid");
    NodeSystemInfo {
        architecture: architecture(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: String::new(),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        kube_proxy_version: String::new(),
        kubelet_version: kubelet_version.into(),
        system_uuid: if product_uuid.is_empty() { machine_id.clone() } else { product_uuid },
        machine_id,
        operating_system: std::env::consts::OS.into(),
        os_image,
        swap: None,
    }
}

/// The address other nodes and the control plane reach this node at: the source address of
/// the route to the outside (no packet is sent), else loopback.
pub fn default_address() -> String {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        // A documentation address (TEST-NET-2): routed by the default route, never answered.
        s.connect("198.51.100.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => "127.0.0.1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_in_kubernetes_units() {
        assert_eq!(parse_quantity("500m", 1000), Ok(500));
        assert_eq!(parse_quantity("2", 1000), Ok(2000));
        assert_eq!(parse_quantity("1.5", 1000), Ok(1500));
        assert_eq!(parse_quantity("256Mi", 1), Ok(256 << 20));
        assert_eq!(parse_quantity("1G", 1), Ok(1_000_000_000));
        assert!(parse_quantity("lots", 1).is_err());
        assert!(parse_quantity("-1", 1).is_err());
    }

    #[test]
    fn allocatable_is_capacity_less_reservations_and_eviction() {
        let reserved = parse_reserved("--kube-reserved", &["cpu=250m".into(), "memory=1Gi".into()]).unwrap();
        let (cap, alloc) = node_resources(
            Resources { cpu_millis: 2000, memory_bytes: 8 << 30, ephemeral_storage_bytes: 10 << 30 },
            reserved,
        );
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(alloc["cpu"].0, "1750m");
        assert_eq!(alloc["memory"].0, format!("{}Ki", ((8u64 << 30) - (1 << 30) - (100 << 20)) / 1024));
        assert_eq!(alloc["pods"].0, "110");
        assert!(parse_reserved("--system-reserved", &["gpu=1".into()]).is_err());
    }

    #[test]
    fn the_machine_is_measured() {
        let r = capacity(Path::new("/")).unwrap();
        assert!(r.cpu_millis >= 1000 && r.memory_bytes > 0 && r.ephemeral_storage_bytes > 0, "{r:?}");
        let info = system_info("v1");
        assert!(!info.kernel_version.is_empty());
        let r = readings(Path::new("/")).unwrap();
        assert!(r.memory_available_bytes > 0 && r.fs_blocks > 0 && r.pids_used > 0 && r.pid_max > r.pids_used, "{r:?}");
    }

    #[test]
    fn pressure_follows_kubelets_hard_eviction_thresholds() {
        let roomy = Readings {
            memory_available_bytes: 1 << 30,
            fs_available_blocks: 50,
            fs_blocks: 100,
            fs_available_inodes: 50,
            fs_inodes: 100,
            pids_used: 100,
            pid_max: 32768,
        };
        assert_eq!(roomy.pressure(), Pressure::default());
        assert!(Readings { memory_available_bytes: 99 << 20, ..roomy }.pressure().memory);
        assert!(Readings { fs_available_blocks: 9, ..roomy }.pressure().disk, "nodefs.available<10%");
        assert!(!Readings { fs_available_blocks: 10, ..roomy }.pressure().disk);
        assert!(Readings { fs_available_inodes: 4, ..roomy }.pressure().disk, "nodefs.inodesFree<5%");
        assert!(Readings { pids_used: 32000, ..roomy }.pressure().pid);
    }
}
