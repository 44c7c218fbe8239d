//! Pods' cgroups, as kubelet arranges them: every container of a pod under one parent,
//! `<cgroup root>/pod<uid>` (root `/keelson` unless the agent's `--cgroup-root` says otherwise),
//! which the runtime creates with the first container and the agent removes once the pod's
//! containers are gone (the runtime removes only each container's own).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// Where pods' cgroups go unless the agent is told otherwise.
pub const DEFAULT_ROOT: &str = "/keelson";

/// The cgroup parent of a pod's sandbox and containers.
pub fn pod_parent(root: &str, uid: &str) -> String {
    format!("{}/pod{uid}", root.trim_end_matches('/'))
}

/// The directories of `parent` in every mounted hierarchy (cgroup v1's one per controller, or v2's
/// single one).
pub fn dirs_of(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(rel))
        .collect()
}

/// Removes a pod's cgroup parent wherever it exists (its containers must be gone: a cgroup with
/// processes or children cannot be removed, and that is an error).
pub fn remove_pod(root: &str, uid: &str) -> std::io::Result<()> {
    for d in dirs_of(&pod_parent(root, uid)) {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("removing cgroup {}: {e}", d.display()))),
        }
    }
    Ok(())
}

/// Whether any hierarchy still has the pod's cgroup.
pub fn pod_exists(root: &str, uid: &str) -> bool {
    dirs_of(&pod_parent(root, uid)).iter().any(|d| d.exists())
}
