//! The service account controller (Kubernetes' `serviceaccount`): every namespace that is not
//! being deleted has a ServiceAccount named `default`, made again if it is deleted; and the root
//! CA publisher, which gives every namespace the cluster's CA for its pods' credentials.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::informer::{Change, Informer};
use super::queue::WorkQueue;
use super::{Controller, Manager};

/// The service accounts every namespace has.
pub const DEFAULT_ACCOUNTS: &[&str] = &["default"];

pub struct ServiceAccountController {
    client: kube::Client,
    namespaces: Arc<Informer<Namespace>>,
    accounts: Arc<Informer<ServiceAccount>>,
    queue: WorkQueue,
}

impl ServiceAccountController {
    pub fn new(m: &Manager) -> Arc<ServiceAccountController> {
        let c = Arc::new(ServiceAccountController {
            client: m.client.clone(),
            namespaces: m.informers.namespaces(),
            accounts: m.informers.serviceaccounts(),
            queue: WorkQueue::new(),
        });
        let weak = Arc::downgrade(&c);
        c.namespaces.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Added(ns) | Change::Updated { new: ns, .. } = change {
                c.queue.add(ns.metadata.name.as_deref().unwrap_or(""));
            }
        });
        let weak = Arc::downgrade(&c);
        c.accounts.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Deleted(sa) = change {
                if DEFAULT_ACCOUNTS.contains(&sa.metadata.name.as_deref().unwrap_or("")) {
                    c.queue.add(sa.metadata.namespace.as_deref().unwrap_or(""));
                }
            }
        });
        c
    }
}

impl Controller for ServiceAccountController {
    const NAME: &'static str = "serviceaccount";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, namespace: &str) -> anyhow::Result<()> {
        let Some(ns) = self.namespaces.get("", namespace) else { return Ok(()) };
        if ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
        {
            return Ok(());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        for name in DEFAULT_ACCOUNTS {
            if self.accounts.get(namespace, name).is_some() {
                continue;
            }
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                // Made meanwhile, or the namespace began to go: nothing to do.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The ConfigMap every namespace holds with the cluster's CA, and its key.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const ROOT_CA_KEY: &str = "ca.crt";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using \
internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across \
distributions of Kubernetes clusters.";

/// Kubernetes' root CA certificate publisher: every namespace that is not being deleted holds
/// the ConfigMap `kube-root-ca.crt` whose `ca.crt` is the CA the API's serving certificate
/// chains to (what pods verify the API with, through their credentials volume); made again when
/// deleted, put back when changed. It follows only ConfigMaps of that name.
pub struct RootCaPublisher {
    client: kube::Client,
    ca: String,
    namespaces: Arc<Informer<Namespace>>,
    configmaps: Arc<Informer<ConfigMap>>,
    queue: WorkQueue,
}

impl RootCaPublisher {
    pub fn new(m: &Manager, ca: String) -> Arc<RootCaPublisher> {
        let c = Arc::new(RootCaPublisher {
            client: m.client.clone(),
            ca,
            namespaces: m.informers.namespaces(),
            configmaps: Informer::new("configmaps"),
            queue: WorkQueue::new(),
        });
        let weak = Arc::downgrade(&c);
        c.namespaces.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Added(ns) | Change::Updated { new: ns, .. } = change {
                c.queue.add(ns.metadata.name.as_deref().unwrap_or(""));
            }
        });
        let weak = Arc::downgrade(&c);
        c.configmaps.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(cm) | Change::Updated { new: cm, .. } | Change::Deleted(cm)) = change;
            c.queue.add(cm.metadata.namespace.as_deref().unwrap_or(""));
        });
        c
    }
}

impl Controller for RootCaPublisher {
    const NAME: &'static str = "root-ca-cert-publisher";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn start(self: Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) -> Option<super::Synced> {
        let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}"));
        tasks.spawn(self.configmaps.clone().run(Api::<ConfigMap>::all(self.client.clone()), config, |x| x));
        let informer = self.configmaps.clone();
        Some(Box::pin(async move { informer.synced().await }))
    }

    async fn sync(&self, namespace: &str) -> anyhow::Result<()> {
        let Some(ns) = self.namespaces.get("", namespace) else { return Ok(()) };
        if ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
        {
            return Ok(());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let data = std::collections::BTreeMap::from([(ROOT_CA_KEY.to_string(), self.ca.clone())]);
        let outcome = match self.configmaps.get(namespace, ROOT_CA_CONFIGMAP) {
            Some(cm) if cm.data.as_ref() == Some(&data) => return Ok(()),
            Some(cm) => {
                let mut fixed = (*cm).clone();
                fixed.data = Some(data);
                api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &fixed).await.map(|_| ())
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA_CONFIGMAP.to_string()),
                        namespace: Some(namespace.to_string()),
                        annotations: Some(
                            [("kubernetes.io/description".to_string(), ROOT_CA_DESCRIPTION.to_string())].into(),
                        ),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            // Made or changed meanwhile (its watch brings it back here), or the namespace began
            // to go: nothing to do now.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
