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
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give --server URL or --kubeconfig PATH"),
    };
    kube::Client::try_from(config).context("cannot make a Kubernetes client")
}

/// A client configured by a kubeconfig's text (credentials held in memory, never on disk).
pub async fn from_kubeconfig_yaml(yaml: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).context("not a kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("an unusable kubeconfig")?;
    kube::Client::try_from(config).context("cannot make a Kubernetes client")
}

/// Whether one event of a reflector's watch changed its store: the end of its first list and
/// every later event do, the list's own steps do not. A watch error is logged (the watcher
/// resumes by itself); a watch that ends is an error.
pub fn store_changed<K>(
    event: Option<Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>>,
    what: &str,
) -> anyhow::Result<bool> {
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

/// Whether a reflector's store holds its first complete list.
pub fn listed<K: kube::Resource + Clone>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
}

/// Changes waiting to be acted on (a sync, a rebuild), due once they settle: when none has come
/// for [`Settling::QUIET`], or when the first has waited [`Settling::WAIT_MAX`]. A watch hands the
/// events of a burst over one at a time, each as soon as the previous one was taken, so acting
/// between any two of them would cost one action per event and hold back the rest.
#[derive(Debug, Default)]
pub struct Settling {
    first: Option<tokio::time::Instant>,
    last_change: Option<tokio::time::Instant>,
    changes: usize,
}

impl Settling {
    pub const QUIET: std::time::Duration = std::time::Duration::from_millis(5);
    pub const WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(100);

    /// A change came now.
    pub fn changed(&mut self) {
        let now = tokio::time::Instant::now();
        self.first.get_or_insert(now);
        self.last_change = Some(now);
        self.changes += 1;
    }

    /// Something asks to act without a change to wait out (a periodic resync, a retry of work
    /// wanted since `since`): due as soon as no change is settling.
    pub fn wanted(&mut self, since: tokio::time::Instant) {
        self.first = Some(self.first.map_or(since, |f| f.min(since)));
    }

    /// When the waiting changes are due, if any wait.
    pub fn due_at(&self) -> Option<tokio::time::Instant> {
        let first = self.first?;
        Some(match self.last_change {
            Some(last) => (last + Self::QUIET).min(first + Self::WAIT_MAX),
            None => first,
        })
    }

    pub fn is_due(&self) -> bool {
        self.due_at().is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// Sleeps until the waiting changes are due; forever when none wait.
    pub async fn wait(&self) {
        match self.due_at() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Takes what waits: since when, and how many changes.
    pub fn take(&mut self) -> Option<(tokio::time::Instant, usize)> {
        let first = self.first.take()?;
        self.last_change = None;
        Some((first, std::mem::take(&mut self.changes)))
    }
}
