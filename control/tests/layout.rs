//! The architecture's dependency rule, checked on the sources: the scheduler, the controllers,
//! leader election, the event recorder and the agent reach the cluster only through the
//! Kubernetes API (kube-rs), never through the API server's internals or the store; and the
//! `agent` crate depends on neither `control` nor `raft-store`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// What code that talks to the cluster as a client must not name.
const FORBIDDEN: &[&str] = &[
    "apiserver::",
    "raft_store",
    "raft-store",
    "proto::",
    "StoreNode",
    "KvClient",
    "etcd_client",
    "tonic::",
    "rocksdb",
];
/// Where a forbidden word is no reach past the API: the CRI client speaks gRPC to the node's
/// container runtime, not to the cluster.
const ALLOWED: &[(&str, &str)] = &[("agent/src/cri.rs", "tonic::")];

#[test]
fn cluster_clients_use_only_the_kubernetes_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut files = Vec::new();
    for dir in ["control/src/scheduler", "control/src/controllers", "agent/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    for file in ["control/src/election.rs", "control/src/events.rs"] {
        files.push(root.join(file));
    }
    assert!(files.len() > 10, "the sources were found: {files:?}");
    let mut offences = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            for word in FORBIDDEN {
                if code.contains(word) && !ALLOWED.contains(&(rel.as_str(), *word)) {
                    offences.push(format!("{}:{}: {}", f.strip_prefix(&root).unwrap().display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "code outside the API server reaches past the Kubernetes API:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_agent_crate_depends_on_neither_control_nor_the_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manifest = std::fs::read_to_string(root.join("agent/Cargo.toml")).unwrap();
    let deps: Vec<&str> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("[dependencies]"))
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split('=').next().map(str::trim))
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    assert!(deps.contains(&"kube"), "the agent talks through kube-rs: {deps:?}");
    for banned in ["control", "raft-store", "proto"] {
        assert!(!deps.contains(&banned), "agent depends on {banned}");
    }
}
