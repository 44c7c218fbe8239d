//! The service account controller (Kubernetes' `serviceaccount`): every namespace that is not
//! being deleted has a ServiceAccount named `default`, made again if it is deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
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
