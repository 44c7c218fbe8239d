//! The CRI runtime against a real containerd that the agent starts itself: the sandbox image is
//! Keelson's own pause process, a busybox image is made from Debian's busybox-static, and a pod's
//! containers run, log in CRI's format, exit with their codes and are removed. Needs root,
//! containerd, runc and busybox-static (scripts/setup installs them); fails without them.
//!
//! Every run works in `/tmp/keelson-cri-<pid>-…`; a run that crashed leaves shims, mounts and
//! files there and its pod bridge (`kcri<pid>`), which the next run removes first (its pid is gone).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::containerd::{bridge_network, Containerd, Options};
use agent::image::{archive, File, ImageSpec};
use agent::runtime::{
    ContainerConfig, ContainerMetadata, ContainerState, PodSandboxConfig, RuntimeService, SandboxMetadata, SandboxState,
};

const PREFIX: &str = "keelson-cri-";
const BUSYBOX: &str = "registry.keelson.local/busybox:test";
const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what crashed runs left: processes started from their directories, mounts under them,
/// and the directories.
fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid_alive(pid) {
            continue;
        }
        let dir = e.path();
        let dir_s = dir.display().to_string();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
            if String::from_utf8_lossy(&cmdline).contains(&dir_s) {
                let _ = std::process::Command::new("kill").args(["-KILL", &p.file_name().to_string_lossy()]).status();
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir_s)).collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            let _ = std::process::Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::process::Command::new("ip").args(["link", "del", &bridge_of(pid)]).status();
    }
}

/// The pod bridge of the run with `pid` (at most 15 characters, as Linux allows).
fn bridge_of(pid: u32) -> String {
    format!("kcri{pid}")
}

fn busybox_image() -> Vec<u8> {
    let busybox =
        std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static; scripts/setup installs it)");
    let paths: Vec<String> = ["sh", "echo", "sleep", "cat"].iter().map(|t| format!("/bin/{t}")).collect();
    let links: Vec<(&str, &str)> = paths.iter().map(|p| (p.as_str(), "busybox")).collect();
    archive(&ImageSpec {
        name: BUSYBOX,
        files: vec![File { path: "/bin/busybox", mode: 0o755, contents: &busybox }],
        links,
        entrypoint: vec![],
        cmd: vec!["sh"],
    })
    .unwrap()
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WITHIN;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("gave up waiting until {what}: {e}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

fn container(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata { name: name.into(), attempt: 0 },
        image: BUSYBOX.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        args: vec![],
        working_dir: String::new(),
        envs: vec![("GREETING".into(), "hello from keelson".into())],
        labels: Default::default(),
        annotations: Default::default(),
        log_path: format!("{name}/0.log"),
        mounts: vec![],
        resources: Default::default(),
        security: Default::default(),
        stdin: false,
        stdin_once: false,
        tty: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_logs_and_exits_through_the_agents_own_containerd() {
    cleanup_stale();
    let dir: PathBuf =
        tempfile::Builder::new().prefix(&format!("{PREFIX}{}-", std::process::id())).tempdir_in("/tmp").unwrap().keep();
    let bridge = bridge_of(std::process::id());
    let network = bridge_network(&bridge, "10.213.7.0/24", &dir.join("ipam"));
    let (containerd, cri) =
        Containerd::start(Options::new(&dir.join("containerd")), &network).await.expect("containerd starts");
    let v = cri.version().await.unwrap();
    assert_eq!(v.runtime_name, "containerd");
    containerd.import(&busybox_image()).await.expect("the busybox image imports");

    let logs = dir.join("pods/default_web_uid-1");
    let sandbox = PodSandboxConfig {
        metadata: SandboxMetadata { name: "web".into(), uid: "uid-1".into(), namespace: "default".into(), attempt: 0 },
        hostname: "web".into(),
        labels: Default::default(),
        annotations: Default::default(),
        log_directory: logs.display().to_string(),
        port_mappings: vec![],
        cgroup_parent: String::new(),
        privileged: false,
        host_network: false,
        host_pid: false,
        host_ipc: false,
        share_process_namespace: false,
        dns: None,
    };
    let sid = cri.run_pod_sandbox(&sandbox).await.expect("the sandbox runs on Keelson's pause image");
    let status = cri.pod_sandbox_status(&sid).await.unwrap();
    assert_eq!((status.state, status.metadata.name.as_str()), (SandboxState::Ready, "web"));
    let ip: std::net::Ipv4Addr = status.ip.as_deref().expect("the sandbox has an address").parse().unwrap();
    assert_eq!(ip.octets()[..3], [10, 213, 7], "{ip} comes from the node's pod range");

    // A long-running container: Running, and its output in CRI's log format.
    let cid =
        cri.create_container(&sid, &container("main", "echo \"$GREETING\"; exec sleep 3600"), &sandbox).await.unwrap();
    cri.start_container(&cid).await.unwrap();
    let s = cri.container_status(&cid).await.unwrap();
    assert_eq!((s.state, s.pod_sandbox_id.as_str()), (ContainerState::Running, sid.as_str()));
    let line = wait_for("the container's output is logged", || {
        let path = logs.join("main/0.log");
        async move {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            text.lines().find(|l| l.ends_with("hello from keelson")).map(String::from).ok_or(text)
        }
    })
    .await;
    // <RFC 3339 time> <stream> <tag> <content>
    let parts: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!((parts[1], parts[2]), ("stdout", "F"), "{line}");

    // One that fails: Exited with its code.
    let failing = cri.create_container(&sid, &container("fails", "exit 3"), &sandbox).await.unwrap();
    cri.start_container(&failing).await.unwrap();
    let exited = wait_for("the failing container exits", || {
        let cri = cri.clone();
        let id = failing.clone();
        async move {
            let s = cri.container_status(&id).await.map_err(|e| e.to_string())?;
            if s.state == ContainerState::Exited {
                Ok(s)
            } else {
                Err(format!("{:?}", s.state))
            }
        }
    })
    .await;
    assert_eq!(exited.exit_code, 3);
    let listed = cri.list_containers(Some(&sid)).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|c| c.id == failing && c.state == ContainerState::Exited && c.exit_code == 3));

    // Stopped (SIGTERM reaches sleep through sh's exec) and removed, with the sandbox.
    cri.stop_container(&cid, Duration::from_secs(10)).await.unwrap();
    assert_eq!(cri.container_status(&cid).await.unwrap().state, ContainerState::Exited);
    for id in [&cid, &failing] {
        cri.remove_container(id).await.unwrap();
    }
    cri.stop_pod_sandbox(&sid).await.unwrap();
    cri.remove_pod_sandbox(&sid).await.unwrap();
    assert!(cri.list_containers(None).await.unwrap().is_empty());
    assert!(cri.list_pod_sandbox().await.unwrap().is_empty());
    let err = cri.container_status(&cid).await.unwrap_err();
    assert!(matches!(err, agent::runtime::RuntimeError::NotFound { .. }), "{err}");

    containerd.stop().await.unwrap();
    let deleted = std::process::Command::new("ip").args(["link", "del", &bridge]).status().unwrap();
    assert!(deleted.success(), "the pod bridge {bridge} existed");
    // Nothing of the run stays mounted.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_s = dir.display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir_s)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
