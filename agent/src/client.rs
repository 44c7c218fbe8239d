//! A Kubernetes client from `--server URL` or `--kubeconfig PATH`, as every client subcommand of
//! `keelson` accepts them, and what the agent's and the server's reflectors share.

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

/// Whether one event of a reflector's watch changed its store: the end of its first list and
/// every later event do, the list's own steps do not. A watch error is logged (the watcher
/// resumes by itself); a watch that ends is an error.
pub fn store_changed<K>(event: Option<Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>>, what: &str) -> anyhow::Result<bool> {
    use kube::runtime::watcher::Event;
    match event {
        None => anyhow::bail!("the {what} watch ended"),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "{what} watch failed; it resumes");
            Ok(false)
        }
        Some(Ok(Event::Init | Event::InitApply(_))) => Ok(false),
        Some(Ok(_)) => Ok(true),
    }
}
