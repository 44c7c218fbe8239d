//! A Kubernetes client from `--server URL` or `--kubeconfig PATH`, as every client subcommand of
//! `keelson` accepts them.

use std::path::Path;

use anyhow::Context;

pub async fn connect(server: Option<&str>, kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match (server, kubeconfig) {
        (Some(url), _) => {
            let uri: http::Uri = url.parse().with_context(|| format!("--server {url:?} is not a URL"))?;
            kube::Config::new(uri)
        }
        (None, Some(path)) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give --server URL or --kubeconfig PATH"),
    };
    kube::Client::try_from(config).context("cannot make a Kubernetes client")
}
