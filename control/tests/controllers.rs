//! The controller manager end to end: `keelson server` (API, scheduler, controller manager),
//! hollow agents, and standalone `keelson controller-manager` replicas, as real processes,
//! driven with Debian's kubectl, the current one, and kube-rs as a user would.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::{ApiProcess, Component};
use common::kubectl::{kubectl_binary, Kubectl, TapMkdir, SEED_DEPLOYMENT};
use common::{wait_until, within};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;

const SETTLED_WITHIN: Duration = Duration::from_secs(60);

fn hollow_agent(api: &ApiProcess, nodes: usize) -> Component {
    let (url, n) = (api.kubeconfig_arg(), nodes.to_string());
    Component::spawn("agent", &["agent", "--kubeconfig", &url, "--runtime", "hollow", "--hollow-nodes", &n])
}

/// The names of the pods labelled `selector` that run and are not being deleted.
async fn running_pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(selector)).await.expect("pods are listed");
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Waits until exactly `n` pods labelled `selector` run (and none other is left).
async fn wait_running(client: &kube::Client, ns: &str, selector: &str, n: usize) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("{n} pods {selector} run, and no others"), within(SETTLED_WITHIN), || {
        let (pods, client) = (pods.clone(), client.clone());
        async move {
            let running = running_pods(&client, ns, selector).await;
            let all = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?.items.len();
            if running.len() == n && all == n {
                Ok(running)
            } else {
                Err(format!("{} running of {all}", running.len()))
            }
        }
    })
    .await
}

fn rollout_status(k: &Kubectl, name: &str) {
    let out = k.run(&["rollout", "status", name, "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
}

/// Revisions `kubectl rollout history` lists.
fn revisions(k: &Kubectl, name: &str) -> Vec<u32> {
    k.run(&["rollout", "history", name]).lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
}

fn image(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap_or_default()
}

/// What a watch of ReplicaSets saw: each set's size and available pods after every event, and
/// the moments at which the deployment's budgets were broken.
#[derive(Default)]
struct Budgets {
    sets: HashMap<String, (i32, i32)>,
    max_total: i32,
    min_available: i32,
    violations: Vec<String>,
}

// kubectl runs blocking the test's thread; the watch needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_scales_heals_and_rolls_back() {
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 4);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let old = Kubectl::new(&dir.path().join("old").tap_mkdir(), api.kubeconfig());
    let current = Kubectl::with_binary(
        kubectl_binary("KEELSON_KUBECTL_CURRENT"),
        &dir.path().join("new").tap_mkdir(),
        api.kubeconfig(),
    );
    let deploy = "deployment/nginx-deployment";

    // Applied with Debian's kubectl: three pods run.
    old.run_with_input(&["apply", "-f", "-"], Some(SEED_DEPLOYMENT));
    rollout_status(&old, deploy);
    wait_running(&client, "default", "app=nginx", 3).await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let first = sets.list(&ListParams::default().labels("app=nginx")).await.unwrap().items;
    assert_eq!(first.len(), 1);
    let hash = first[0]
        .metadata
        .labels
        .as_ref()
        .unwrap()
        .get("pod-template-hash")
        .cloned()
        .expect("the set carries its template hash");
    assert_eq!(first[0].metadata.name.as_deref(), Some(format!("nginx-deployment-{hash}").as_str()));

    // Scaled to 10 and back.
    current.run(&["scale", deploy, "--replicas=10"]);
    rollout_status(&current, deploy);
    wait_running(&client, "default", "app=nginx", 10).await;
    old.run(&["scale", deploy, "--replicas=3"]);
    let three = wait_running(&client, "default", "app=nginx", 3).await;

    // A deleted pod is replaced.
    old.run(&["delete", "pod", &three[0], "--wait=false"]);
    let replaced = wait_running(&client, "default", "app=nginx", 3).await;
    assert!(!replaced.contains(&three[0]), "{replaced:?}");

    // Ten replicas within 2 surge and 1 unavailable; a new image rolls out within them, as a
    // watch of the ReplicaSets sees it at every step.
    old.run(&[
        "patch",
        deploy,
        "-p",
        r#"{"spec":{"replicas":10,"strategy":{"rollingUpdate":{"maxSurge":2,"maxUnavailable":1}}}}"#,
    ]);
    rollout_status(&old, deploy);
    wait_running(&client, "default", "app=nginx", 10).await;
    let budgets = Arc::new(Mutex::new(Budgets { min_available: i32::MAX, ..Default::default() }));
    let watch = {
        let (b, sets) = (budgets.clone(), sets.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(sets, watcher::Config::default().labels("app=nginx")));
            while let Some(event) = stream.next().await {
                let (watcher::Event::Apply(rs) | watcher::Event::InitApply(rs)) = event.expect("the watch goes on")
                else {
                    continue;
                };
                let mut b = b.lock().unwrap();
                let size = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                let available = rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
                b.sets.insert(rs.metadata.name.clone().unwrap(), (size, available));
                let total: i32 = b.sets.values().map(|s| s.0).sum();
                let available: i32 = b.sets.values().map(|s| s.1).sum();
                b.max_total = b.max_total.max(total);
                b.min_available = b.min_available.min(available);
                if total > 12 || available < 9 {
                    let line = format!("{:?}", b.sets);
                    b.violations.push(line);
                }
            }
        })
    };
    wait_until("the watch has listed the sets", within(SETTLED_WITHIN), || {
        let b = budgets.clone();
        async move {
            if b.lock().unwrap().sets.is_empty() {
                Err("not yet".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    current.run(&["set", "image", deploy, "nginx=nginx:1.16.1"]);
    rollout_status(&current, deploy);
    wait_running(&client, "default", "app=nginx", 10).await;
    watch.abort();
    {
        let b = budgets.lock().unwrap();
        assert!(b.violations.is_empty(), "budgets broken: {:?}", b.violations);
        assert_eq!(b.max_total, 12, "the surge was used: {:?}", b.sets);
        assert!(b.min_available <= 10 && b.min_available >= 9, "{}", b.min_available);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    assert_eq!(image(&deployments.get("nginx-deployment").await.unwrap()), "nginx:1.16.1");
    assert_eq!(revisions(&current, deploy), vec![1, 2]);

    // Undone with Debian's kubectl: the first template again, as revision 3.
    old.run(&["rollout", "undo", deploy]);
    rollout_status(&old, deploy);
    wait_running(&client, "default", "app=nginx", 10).await;
    let d = deployments.get("nginx-deployment").await.unwrap();
    assert_eq!(image(&d), "nginx:1.14.2");
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap().get("deployment.kubernetes.io/revision").map(String::as_str),
        Some("3")
    );
    assert_eq!(revisions(&old, deploy), vec![2, 3]);
    let rs = sets.get(&format!("nginx-deployment-{hash}")).await.expect("the first set is back in use");
    assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(10));
    let status = d.status.unwrap();
    assert_eq!((status.replicas, status.updated_replicas, status.available_replicas), (Some(10), Some(10), Some(10)));
    let progressing = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetAvailable"));

    // Paused: a new template makes no new set until resumed.
    current.run(&["rollout", "pause", deploy]);
    current.run(&["set", "image", deploy, "nginx=nginx:1.17"]);
    let observed = wait_until("the paused deployment's change is observed", within(SETTLED_WITHIN), || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("nginx-deployment").await.map_err(|e| e.to_string())?;
            let s = d.status.clone().unwrap_or_default();
            let reason =
                s.conditions.iter().flatten().find(|c| c.type_ == "Progressing").and_then(|c| c.reason.clone());
            if s.observed_generation >= d.metadata.generation && reason.as_deref() == Some("DeploymentPaused") {
                Ok(d)
            } else {
                Err(format!("{reason:?}"))
            }
        }
    })
    .await;
    assert_eq!(
        sets.list(&ListParams::default().labels("app=nginx")).await.unwrap().items.len(),
        2,
        "no new set while paused"
    );
    assert_eq!(image(&observed), "nginx:1.17");
    current.run(&["rollout", "resume", deploy]);
    rollout_status(&current, deploy);
    assert_eq!(sets.list(&ListParams::default().labels("app=nginx")).await.unwrap().items.len(), 3);
    // Restarted: every pod is replaced, the template carrying the restart time.
    old.run(&["rollout", "restart", deploy]);
    rollout_status(&old, deploy);
    let restarted = wait_running(&client, "default", "app=nginx", 10).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in &restarted {
        let p = pods.get(name).await.unwrap();
        assert!(p.metadata.annotations.unwrap_or_default().contains_key("kubectl.kubernetes.io/restartedAt"), "{name}");
    }
}

/// How many ReplicaSets and pods carry `selector`, and the ReplicaSets' owner references.
async fn dependents(client: &kube::Client, selector: &str) -> (usize, usize, Vec<usize>) {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels(selector);
    let sets = sets.list(&lp).await.unwrap().items;
    let owners = sets.iter().map(|rs| rs.metadata.owner_references.as_ref().map_or(0, Vec::len)).collect();
    (sets.len(), pods.list(&lp).await.unwrap().items.len(), owners)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_cascades_in_the_background_or_foreground_or_orphans() {
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 3);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let old = Kubectl::new(&dir.path().join("old").tap_mkdir(), api.kubeconfig());
    let current = Kubectl::with_binary(
        kubectl_binary("KEELSON_KUBECTL_CURRENT"),
        &dir.path().join("new").tap_mkdir(),
        api.kubeconfig(),
    );
    for name in ["background", "orphaned", "foreground"] {
        current.run(&["create", "deployment", name, "--image=nginx", "--replicas=2"]);
        rollout_status(&current, &format!("deployment/{name}"));
        assert_eq!(dependents(&client, &format!("app={name}")).await, (1, 2, vec![1]));
    }
    let gone = |name: &'static str| {
        let client = client.clone();
        async move {
            wait_until(&format!("the {name} deployment's sets and pods are collected"), within(SETTLED_WITHIN), || {
                let client = client.clone();
                async move {
                    match dependents(&client, &format!("app={name}")).await {
                        (0, 0, _) => Ok(()),
                        left => Err(format!("{left:?} left")),
                    }
                }
            })
            .await
        }
    };

    // Background (kubectl's default): the deployment goes at once, its dependents after.
    old.run(&["delete", "deployment", "background"]);
    gone("background").await;
    // Foreground: the deployment waits for its dependents.
    let out = current.run(&["delete", "deployment", "foreground", "--cascade=foreground"]);
    assert!(out.contains("deleted"), "{out}");
    gone("foreground").await;
    // Orphan: the set and its pods stay, without their owner.
    old.run(&["delete", "deployment", "orphaned", "--cascade=orphan"]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    wait_until("the orphaning deployment is gone", within(SETTLED_WITHIN), || {
        let deployments = deployments.clone();
        async move {
            if deployments.get_opt("orphaned").await.unwrap().is_none() {
                Ok(())
            } else {
                Err("still there".to_string())
            }
        }
    })
    .await;
    assert_eq!(dependents(&client, "app=orphaned").await, (1, 2, vec![0]), "the set stays, owned by no one");
    assert_eq!(running_pods(&client, "default", "app=orphaned").await.len(), 2, "its pods keep running");

    // An object whose owner never existed is collected too.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = serde_json::from_value(serde_json::json!({"metadata": {"name": "dangling", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000001"}]}}))
    .unwrap();
    cms.create(&Default::default(), &cm).await.unwrap();
    wait_until("a dependent of a missing owner is collected", within(SETTLED_WITHIN), || {
        let cms = cms.clone();
        async move {
            if cms.get_opt("dangling").await.unwrap().is_none() {
                Ok(())
            } else {
                Err("still there".to_string())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_has_endpoints_and_slices_of_the_pods_it_selects() {
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 3);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), api.kubeconfig());
    k.run(&["create", "deployment", "web", "--image=nginx", "--replicas=3", "--port=80"]);
    // The service port (8080) differs from the pods' (80), which the endpoints carry.
    k.run_with_input(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 8080\n    targetPort: 80\n"));
    rollout_status(&k, "deployment/web");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let addresses = |n: usize| {
        let (endpoints, slices, client) = (endpoints.clone(), slices.clone(), client.clone());
        async move {
            wait_until(&format!("{n} addresses in the service's endpoints and slices"), within(SETTLED_WITHIN), || {
                let (endpoints, slices, client) = (endpoints.clone(), slices.clone(), client.clone());
                async move {
                    let pods: std::collections::BTreeSet<String> = {
                        let list = Api::<Pod>::namespaced(client, "default")
                            .list(&ListParams::default().labels("app=web"))
                            .await
                            .map_err(|e| e.to_string())?;
                        list.items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                            .collect()
                    };
                    let e = endpoints.get_opt("web").await.map_err(|e| e.to_string())?.ok_or("no endpoints yet")?;
                    let subsets = e.subsets.unwrap_or_default();
                    let ready: std::collections::BTreeSet<String> =
                        subsets.iter().flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone())).collect();
                    let ports: Vec<i32> =
                        subsets.iter().flat_map(|s| s.ports.iter().flatten().map(|p| p.port)).collect();
                    let list = slices
                        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let in_slices: std::collections::BTreeSet<String> = list
                        .items
                        .iter()
                        .flat_map(|s| {
                            s.endpoints
                                .iter()
                                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                                .map(|e| e.addresses[0].clone())
                        })
                        .collect();
                    if ready.len() == n && ready == pods && in_slices == pods && ports == vec![80] {
                        Ok(list.items)
                    } else {
                        Err(format!("endpoints {ready:?} ports {ports:?}, slices {in_slices:?}, pods {pods:?}"))
                    }
                }
            })
            .await
        }
    };
    let three = addresses(3).await;
    assert_eq!(three.len(), 1);
    assert_eq!(three[0].ports.as_ref().unwrap()[0].port, Some(80));
    k.run(&["scale", "deployment/web", "--replicas=1"]);
    addresses(1).await;
    let printed = k.run(&["get", "endpoints", "web"]);
    assert!(printed.contains(":80"), "{printed}");
    // The service goes: its endpoints are deleted, its slices collected.
    k.run(&["delete", "service", "web"]);
    wait_until("the service's endpoints and slices are gone", within(SETTLED_WITHIN), || {
        let (endpoints, slices) = (endpoints.clone(), slices.clone());
        async move {
            let e = endpoints.get_opt("web").await.map_err(|e| e.to_string())?;
            let s = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if e.is_none() && s == 0 {
                Ok(())
            } else {
                Err(format!("endpoints {}, {s} slices", e.is_some()))
            }
        }
    })
    .await;
}

#[tokio::test]
async fn every_namespace_has_a_default_service_account() {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let api = ApiProcess::server_full(&[]).await;
    let client = api.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let default_in = |ns: &'static str| {
        let client = client.clone();
        async move {
            wait_until(&format!("{ns} has its default service account"), within(SETTLED_WITHIN), || {
                let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
                async move {
                    accounts
                        .get_opt("default")
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|_| ())
                        .ok_or_else(|| "not yet".to_string())
                }
            })
            .await
        }
    };
    default_in("default").await;
    default_in("team").await;
    // Deleted, it comes back.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    let first = accounts.get("default").await.unwrap().metadata.uid;
    accounts.delete("default", &Default::default()).await.unwrap();
    wait_until("the default service account is made again", within(SETTLED_WITHIN), || {
        let accounts = accounts.clone();
        let first = first.clone();
        async move {
            match accounts.get_opt("default").await.map_err(|e| e.to_string())? {
                Some(sa) if sa.metadata.uid != first => Ok(()),
                _ => Err("not yet".to_string()),
            }
        }
    })
    .await;
}

/// A hollow agent whose nodes renew their leases every second.
fn quick_agent(api: &ApiProcess, prefix: &str, nodes: usize) -> Component {
    let (url, n, single) = (api.kubeconfig_arg(), nodes.to_string(), format!("{prefix}0"));
    let mut args = vec![
        "agent",
        "--kubeconfig",
        &url,
        "--runtime",
        "hollow",
        "--hollow-nodes",
        &n,
        "--hollow-node-prefix",
        prefix,
    ];
    args.extend(["--node-lease-renew-interval", "1s", "--node-lease-duration-seconds", "4"]);
    // One node is named after the host unless named.
    if nodes == 1 {
        args.extend(["--node-name", &single]);
    }
    Component::spawn(&format!("agent-{prefix}"), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_node_that_stops_without_notice_are_evicted_and_replaced() {
    use k8s_openapi::api::core::v1::Node;
    let api = ApiProcess::server_full(&["--node-monitor-grace-period", "3s"]).await;
    let client = api.client();
    let mut doomed = quick_agent(&api, "a-", 2);
    let _healthy = quick_agent(&api, "b-", 2);
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("four nodes are registered", within(SETTLED_WITHIN), || {
        let nodes = nodes.clone();
        async move {
            if nodes.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len() == 4 {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
    // One pod per node (tainted nodes leave the spread), tolerating an unreachable node for 1 s.
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "spread"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "spread"}}, "template": {
            "metadata": {"labels": {"app": "spread"}},
            "spec": {
                "containers": [{"name": "c", "image": "app:1"}],
                "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}],
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                    "nodeTaintsPolicy": "Honor", "labelSelector": {"matchLabels": {"app": "spread"}}}]
            }
        }}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default").create(&Default::default(), &deployment).await.unwrap();
    wait_rolled_out(&client, "spread", 4).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let before = pods.list(&ListParams::default().labels("app=spread")).await.unwrap().items;
    let on_doomed: Vec<String> =
        before.iter().filter(|p| node_of(p).starts_with("a-")).filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(on_doomed.len(), 2, "one pod per node: {:?}", before.iter().map(node_of).collect::<Vec<_>>());

    doomed.kill();
    // Its nodes go Unknown and unreachable; its pods are evicted and replaced on the others.
    wait_until("the stopped agent's nodes are unreachable", within(SETTLED_WITHIN), || {
        let nodes = nodes.clone();
        async move {
            for name in ["a-0", "a-1"] {
                let n = nodes.get(name).await.map_err(|e| e.to_string())?;
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.status.clone());
                let tainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| {
                    t.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
                });
                if ready.as_deref() != Some("Unknown") || !tainted {
                    return Err(format!("{name}: Ready {ready:?}, tainted {tainted}"));
                }
            }
            Ok(())
        }
    })
    .await;
    wait_until(
        "four pods run on the remaining nodes, and the evicted ones are terminating",
        within(SETTLED_WITHIN),
        || {
            let (pods, on_doomed) = (pods.clone(), on_doomed.clone());
            async move {
                let list =
                    pods.list(&ListParams::default().labels("app=spread")).await.map_err(|e| e.to_string())?.items;
                let live: Vec<&Pod> = list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
                let running_on_b = live
                    .iter()
                    .filter(|p| {
                        node_of(p).starts_with("b-")
                            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count();
                let evicted = list
                    .iter()
                    .filter(|p| on_doomed.contains(p.metadata.name.as_ref().unwrap()))
                    .all(|p| p.metadata.deletion_timestamp.is_some());
                if running_on_b == 4 && live.len() == 4 && evicted {
                    Ok(())
                } else {
                    Err(format!("{running_on_b} running on b-, {} live, evicted {evicted}", live.len()))
                }
            }
        },
    )
    .await;
    // The node is deleted: the pods left bound to it are removed for good.
    nodes.delete("a-0", &Default::default()).await.unwrap();
    wait_until("pods bound to a deleted node are collected", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let left = pods
                .list(&ListParams::default().labels("app=spread"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter(|p| node_of(p) == "a-0")
                .count();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left on a-0"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_comes_back_is_ready_and_untainted_again() {
    use k8s_openapi::api::core::v1::Node;
    let api = ApiProcess::server_full(&["--node-monitor-grace-period", "3s"]).await;
    let agent = quick_agent(&api, "c-", 1);
    let nodes: Api<Node> = Api::all(api.client());
    let state = |want_ready: &'static str, want_tainted: bool| {
        let nodes = nodes.clone();
        async move {
            wait_until(&format!("c-0 is Ready={want_ready}, tainted {want_tainted}"), within(SETTLED_WITHIN), || {
                let nodes = nodes.clone();
                async move {
                    let n = nodes.get_opt("c-0").await.map_err(|e| e.to_string())?.ok_or("not registered")?;
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| c.status.clone());
                    let tainted = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable"));
                    if ready.as_deref() == Some(want_ready) && tainted == want_tainted {
                        Ok(())
                    } else {
                        Err(format!("Ready {ready:?}, tainted {tainted}"))
                    }
                }
            })
            .await
        }
    };
    state("True", false).await;
    // Paused: it renews nothing, and is declared unreachable.
    agent.signal("STOP");
    state("Unknown", true).await;
    // Resumed: it renews again, sees its node shown Unknown and reports it at once.
    agent.signal("CONT");
    state("True", false).await;
}

const DAEMON: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-agent
spec:
  selector:
    matchLabels: {app: node-agent}
  template:
    metadata:
      labels: {app: node-agent}
    spec:
      containers:
      - name: agent
        image: agent:1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_covers_every_node_and_a_new_one_and_rolls_out() {
    let api = ApiProcess::server_full(&[]).await;
    let _first = hollow_agent(&api, 3);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), api.kubeconfig());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    wait_until("three nodes are registered", within(SETTLED_WITHIN), || {
        let nodes = nodes.clone();
        async move {
            if nodes.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len() == 3 {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
    // A node tainted NoSchedule gets no daemon pod (the template does not tolerate it).
    k.run(&["taint", "node", "hollow-2", "dedicated=db:NoSchedule"]);
    k.run_with_input(&["apply", "-f", "-"], Some(DAEMON));
    let per_node = |want: usize, image: &'static str| {
        let client = client.clone();
        async move {
            wait_until(&format!("{want} daemon pods of {image}, one per node"), within(SETTLED_WITHIN), || {
                let client = client.clone();
                async move {
                    let list = Api::<Pod>::namespaced(client, "default")
                        .list(&ListParams::default().labels("app=node-agent"))
                        .await
                        .map_err(|e| e.to_string())?
                        .items;
                    let live: Vec<&Pod> = list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
                    let mut nodes: Vec<String> =
                        live.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
                    nodes.sort();
                    nodes.dedup();
                    let images_ok =
                        live.iter().all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image));
                    let running =
                        live.iter().all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
                    if live.len() == want && nodes.len() == want && images_ok && running {
                        Ok(nodes)
                    } else {
                        Err(format!("{} pods on {nodes:?}, images ok {images_ok}, running {running}", live.len()))
                    }
                }
            })
            .await
        }
    };
    let nodes_run = per_node(2, "agent:1").await;
    assert!(!nodes_run.contains(&"hollow-2".to_string()), "{nodes_run:?}");
    let out = k.run(&["rollout", "status", "daemonset/node-agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    // A new node (another agent) gets one; so does the untainted one.
    let _second = Component::spawn(
        "agent-extra",
        &[
            "agent",
            "--kubeconfig",
            &api.kubeconfig_arg(),
            "--runtime",
            "hollow",
            "--hollow-nodes",
            "1",
            "--node-name",
            "extra-0",
        ],
    );
    k.run(&["taint", "node", "hollow-2", "dedicated=db:NoSchedule-"]);
    per_node(4, "agent:1").await;
    // A new image rolls out to every node, recorded as a second revision.
    k.run(&["set", "image", "daemonset/node-agent", "agent=agent:2"]);
    let out = k.run(&["rollout", "status", "daemonset/node-agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    per_node(4, "agent:2").await;
    assert_eq!(revisions(&k, "daemonset/node-agent"), vec![1, 2]);
    let status = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), "default")
        .get("node-agent")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        (status.desired_number_scheduled, status.updated_number_scheduled, status.number_available),
        (4, Some(4), Some(4))
    );
}

const JOBS: &str = "apiVersion: batch/v1
kind: Job
metadata: {name: sleeper}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [sleep, '1']}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ['false']}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [sleep, '1']}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_index_their_pods_and_fail_after_their_backoff_limit() {
    use k8s_openapi::api::batch::v1::Job;
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 3);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(dir.path(), api.kubeconfig());
    k.run_with_input(&["apply", "-f", "-"], Some(JOBS));
    let out = k.run(&["wait", "--for=condition=complete", "job/sleeper", "job/indexed", "--timeout=60s"]);
    assert_eq!(out.matches("condition met").count(), 2, "{out}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let sleeper = jobs.get("sleeper").await.unwrap().status.unwrap();
    assert_eq!((sleeper.succeeded, sleeper.failed.unwrap_or(0), sleeper.active.unwrap_or(0)), (Some(3), 0, 0));
    assert!(sleeper.completion_time.is_some() && sleeper.start_time.is_some());
    let indexed = jobs.get("indexed").await.unwrap().status.unwrap();
    assert_eq!(indexed.completed_indexes.as_deref(), Some("0-2"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut indexes: Vec<String> = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=indexed"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.metadata.annotations.as_ref()?.get("batch.kubernetes.io/job-completion-index").cloned())
        .collect();
    indexes.sort();
    assert_eq!(indexes, vec!["0", "1", "2"]);
    // Counted pods carry no tracking finalizer any more.
    let tracked = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.finalizers.iter().flatten().any(|f| f == "batch.kubernetes.io/job-tracking"))
        .count();
    assert_eq!(tracked, 0);
    // A pod that fails is replaced once (backoffLimit 1), after its back-off; then the job fails.
    let out = k.run(&["wait", "--for=condition=failed", "job/failing", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    let failing = jobs.get("failing").await.unwrap().status.unwrap();
    assert_eq!(failing.failed, Some(2));
    let reason = failing.conditions.unwrap().into_iter().find(|c| c.type_ == "Failed").unwrap().reason;
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    let printed = k.run(&["get", "jobs"]);
    assert!(printed.contains("3/3") && printed.contains("Complete") && printed.contains("Failed"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_runs_on_schedule() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 1);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), api.kubeconfig());
    k.run_with_input(
        &["apply", "-f", "-"],
        Some("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: '* * * * *'\n  timeZone: Etc/UTC\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: c, image: busybox, command: [sleep, '1']}]\n"),
    );
    // A schedule that cannot be read is refused when written.
    let (ok, _, err) = k.try_run(&["apply", "-f", "-"], Some("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: bad}\nspec:\n  schedule: '61 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: c, image: busybox}]\n"));
    assert!(!ok && err.contains("spec.schedule"), "{err}");
    // The next minute starts a job, which completes.
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = wait_until("the cron job has started a job that completed", within(Duration::from_secs(90)), || {
        let (cronjobs, jobs) = (cronjobs.clone(), jobs.clone());
        async move {
            let cj = cronjobs.get("tick").await.map_err(|e| e.to_string())?;
            let status = cj.status.unwrap_or_default();
            let owned: Vec<Job> = jobs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .filter(|j| {
                    j.metadata.owner_references.iter().flatten().any(|r| Some(&r.uid) == cj.metadata.uid.as_ref())
                })
                .collect();
            let done = owned.iter().find(|j| j.status.as_ref().and_then(|s| s.succeeded) == Some(1));
            match (done, status.last_schedule_time, status.last_successful_time) {
                (Some(j), Some(_), Some(_)) => Ok(j.clone()),
                (d, ls, lsu) => Err(format!(
                    "{} jobs, done {}, last schedule {ls:?}, last success {lsu:?}",
                    owned.len(),
                    d.is_some()
                )),
            }
        }
    })
    .await;
    let scheduled =
        job.metadata.annotations.as_ref().unwrap().get("batch.kubernetes.io/cronjob-scheduled-timestamp").unwrap();
    let at: k8s_openapi::jiff::Timestamp = scheduled.parse().unwrap();
    assert_eq!(at.as_second() % 60, 0, "on the minute: {scheduled}");
    assert_eq!(job.metadata.name.unwrap(), format!("tick-{}", at.as_second() / 60));
}

const WEB: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        volumeMounts: [{name: www, mountPath: /usr/share/nginx/html}]
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_makes_its_pods_in_order_with_their_claims_and_rolls_back_down() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 3);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), api.kubeconfig());
    // The order in which pods first appear, from a watch.
    let order = Arc::new(Mutex::new(Vec::<String>::new()));
    let listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (order, listed, pods) = (order.clone(), listed.clone(), Api::<Pod>::namespaced(client.clone(), "default"));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default().labels("app=web")));
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::InitDone) = event {
                    listed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                    let name = p.metadata.name.unwrap_or_default();
                    let mut o = order.lock().unwrap();
                    if !o.contains(&name) {
                        o.push(name);
                    }
                }
            }
        })
    };
    wait_until("the pod watch has listed", within(SETTLED_WITHIN), || {
        let listed = listed.clone();
        async move {
            if listed.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
    k.run_with_input(&["apply", "-f", "-"], Some(WEB));
    let out = k.run(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert!(
        out.contains("roll out complete")
            || out.contains("rolling update complete")
            || out.contains("partitioned roll out complete"),
        "{out}"
    );
    wait_running(&client, "default", "app=web", 3).await;
    assert_eq!(*order.lock().unwrap(), vec!["web-0", "web-1", "web-2"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web1 = pods.get("web-1").await.unwrap();
    let spec = web1.spec.unwrap();
    assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-1"), Some("nginx")));
    let claim = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "www")
        .unwrap()
        .persistent_volume_claim
        .unwrap()
        .claim_name;
    assert_eq!(claim, "www-web-1");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let mut names: Vec<String> =
        claims.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
    names.sort();
    assert_eq!(names, vec!["www-web-0", "www-web-1", "www-web-2"]);

    // A new image rolls from the highest ordinal down; two revisions are recorded.
    k.run(&["set", "image", "statefulset/web", "nginx=nginx:1.26"]);
    let out = k.run(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert!(out.contains("complete"), "{out}");
    wait_until("every pod runs the new image", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| e.to_string())?.items;
            let images: Vec<String> = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
                .collect();
            if images.len() == 3 && images.iter().all(|i| i == "nginx:1.26") {
                Ok(())
            } else {
                Err(format!("{images:?}"))
            }
        }
    })
    .await;
    assert_eq!(revisions(&k, "statefulset/web"), vec![1, 2]);
    // Scaled down: the highest ordinals go; their claims stay (the default Retain policy).
    k.run(&["scale", "statefulset/web", "--replicas=1"]);
    let left = wait_running(&client, "default", "app=web", 1).await;
    assert_eq!(left, vec!["web-0".to_string()]);
    assert_eq!(claims.list(&ListParams::default()).await.unwrap().items.len(), 3);
    watch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_respects_a_pod_disruption_budget() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 3);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), api.kubeconfig());
    // Two replicas, one per node (a cordoned node, tainted unschedulable, leaves the spread), and
    // a budget that needs both.
    let spread = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers: [{name: c, image: db}]\n      topologySpreadConstraints: [{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: db}}}]\n";
    k.run_with_input(&["apply", "-f", "-"], Some(spread));
    k.run(&["create", "poddisruptionbudget", "db", "--selector=app=db", "--min-available=2"]);
    rollout_status(&k, "deployment/db");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let budget_is = |allowed: i32| {
        let pdbs = pdbs.clone();
        async move {
            wait_until(&format!("the budget allows {allowed} disruptions"), within(SETTLED_WITHIN), || {
                let pdbs = pdbs.clone();
                async move {
                    let s = pdbs.get("db").await.map_err(|e| e.to_string())?.status.ok_or("no status")?;
                    if s.disruptions_allowed == allowed && s.current_healthy >= 2 {
                        Ok(())
                    } else {
                        Err(format!("{s:?}"))
                    }
                }
            })
            .await
        }
    };
    budget_is(0).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods.list(&ListParams::default().labels("app=db")).await.unwrap().items;
    let node = list[0].spec.as_ref().unwrap().node_name.clone().unwrap();
    let victim = list[0].metadata.name.clone().unwrap();
    // The budget holds: drain gives up, and the pod stays.
    let (ok, _, err) = k.try_run(&["drain", &node, "--ignore-daemonsets", "--timeout=3s"], None);
    assert!(!ok, "drain went through a budget that allows nothing");
    assert!(err.contains("disruption budget"), "{err}");
    let still = pods.get(&victim).await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
    // A third replica makes room for one disruption: drain evicts the pod, which is replaced
    // off the cordoned node.
    k.run(&["scale", "deployment/db", "--replicas=3"]);
    budget_is(1).await;
    let out = k.run(&["drain", &node, "--ignore-daemonsets", "--timeout=30s"]);
    assert!(out.contains("drained"), "{out}");
    let running = wait_running(&client, "default", "app=db", 3).await;
    assert!(!running.contains(&victim), "{running:?}");
    for name in &running {
        assert_ne!(
            pods.get(name).await.unwrap().spec.unwrap().node_name.as_deref(),
            Some(node.as_str()),
            "{name} is on the drained node"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_controller_keeps_its_replicas_and_scales_with_kubectl() {
    let api = ApiProcess::server_full(&[]).await;
    let _agent = hollow_agent(&api, 2);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(dir.path(), api.kubeconfig());
    // No selector: it is the template's labels, as Kubernetes defaults it.
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: legacy}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: legacy}}\n    spec:\n      containers: [{name: c, image: nginx}]\n";
    k.run_with_input(&["apply", "-f", "-"], Some(rc));
    let two = wait_running(&client, "default", "app=legacy", 2).await;
    k.run(&["scale", "rc", "legacy", "--replicas=4"]);
    wait_running(&client, "default", "app=legacy", 4).await;
    k.run(&["delete", "pod", &two[0], "--wait=false"]);
    let four = wait_running(&client, "default", "app=legacy", 4).await;
    assert!(!four.contains(&two[0]));
    let printed = k.run(&["get", "rc", "legacy"]);
    assert!(
        printed
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().take(4).collect::<Vec<_>>() == ["legacy", "4", "4", "4"]),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_with_content_is_emptied_by_whichever_controller_manager_runs() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    // No controller manager at first: a deleted namespace stays Terminating with its content.
    let api = ApiProcess::server_full(&["--disable", "controller-manager"]).await;
    let _agent = hollow_agent(&api, 2);
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(dir.path(), api.kubeconfig());
    k.run(&["create", "namespace", "team"]);
    k.run_with_input(
        &["apply", "-n", "team", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: app}\nspec:\n  containers: [{name: c, image: nginx}]\n"),
    );
    k.run(&["create", "configmap", "settings", "-n", "team", "--from-literal=a=b"]);
    wait_running(&client, "team", "", 1).await;
    k.run(&["delete", "namespace", "team", "--wait=false"]);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get("team").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(ns.spec.unwrap().finalizers, Some(vec!["kubernetes".to_string()]));
    assert!(Api::<ConfigMap>::namespaced(client.clone(), "team").get_opt("settings").await.unwrap().is_some());
    // A controller manager comes: it empties the namespace (the pod stopping gracefully on its
    // node) and finalizes it.
    let _manager = Component::spawn(
        "controller-manager",
        &["controller-manager", "--kubeconfig", &api.kubeconfig_arg(), "--controllers", "namespace"],
    );
    wait_until("the namespace and its content are gone", within(SETTLED_WITHIN), || {
        let (namespaces, client) = (namespaces.clone(), client.clone());
        async move {
            let pods = Api::<Pod>::namespaced(client.clone(), "team")
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            let cms = Api::<ConfigMap>::namespaced(client, "team")
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            match namespaces.get_opt("team").await.map_err(|e| e.to_string())? {
                None if pods == 0 && cms == 0 => Ok(()),
                n => Err(format!(
                    "{pods} pods, {cms} configmaps, namespace {:?}",
                    n.and_then(|n| n.status).and_then(|s| s.conditions)
                )),
            }
        }
    })
    .await;
}

/// The identity a controller manager replica runs under, from its log.
fn identity_of(c: &Component) -> Option<String> {
    let log = c.log_text();
    let line = log.lines().find(|l| l.contains("controller manager started"))?;
    let at = line.find("identity=")? + "identity=".len();
    Some(line[at..].split_whitespace().next()?.trim_matches('"').to_string())
}

/// Which of `managers` holds the controller manager's lease (other than `not`).
async fn leader(client: &kube::Client, managers: &[Component], not: Option<usize>) -> usize {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    wait_until("a controller manager replica leads", within(SETTLED_WITHIN), || {
        let leases = leases.clone();
        let ids: Vec<Option<String>> = managers.iter().map(identity_of).collect();
        async move {
            let lease =
                leases.get_opt("kube-controller-manager").await.map_err(|e| e.to_string())?.ok_or("no lease yet")?;
            let holder = lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()).ok_or("no holder")?;
            match ids.iter().position(|id| id.as_deref() == Some(holder.as_str())) {
                Some(i) if Some(i) != not => Ok(i),
                Some(_) => Err("the old leader still holds the lease".to_string()),
                None => Err(format!("holder {holder} is none of the replicas yet")),
            }
        }
    })
    .await
}

fn big_deployment(replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big"},
        "spec": {
            "replicas": replicas,
            // Each step waits a second for availability, so that the rollout is still under
            // way when its leader is killed.
            "minReadySeconds": 1,
            "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": [{"name": "c", "image": "app:1"}]}}
        }
    }))
    .unwrap()
}

/// Waits until the deployment has rolled out its current template to every replica.
async fn wait_rolled_out(client: &kube::Client, name: &str, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    wait_until(&format!("deployment {name} rolled out"), within(SETTLED_WITHIN), || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(name).await.map_err(|e| e.to_string())?;
            let s = d.status.clone().unwrap_or_default();
            let counts = (s.replicas, s.updated_replicas, s.available_replicas);
            if s.observed_generation >= d.metadata.generation
                && counts == (Some(replicas), Some(replicas), Some(replicas))
            {
                Ok(())
            } else {
                Err(format!("{counts:?} observed {:?} of {:?}", s.observed_generation, d.metadata.generation))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_its_leader_being_killed_without_extra_pods() {
    let api = ApiProcess::server_full(&["--disable", "controller-manager"]).await;
    let _agent = hollow_agent(&api, 10);
    let client = api.client();
    let url = api.kubeconfig_arg();
    let mut managers: Vec<Component> = (0..3)
        .map(|i| Component::spawn(&format!("controller-manager-{i}"), &["controller-manager", "--kubeconfig", &url]))
        .collect();
    let first = leader(&client, &managers, None).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments.create(&Default::default(), &big_deployment(100)).await.expect("the deployment is created");
    wait_rolled_out(&client, "big", 100).await;
    wait_running(&client, "default", "app=big", 100).await;

    // Every pod the rollout makes, seen by a watch that started before it.
    let seen: Arc<Mutex<(bool, std::collections::HashSet<String>, std::collections::HashSet<String>)>> = Arc::default();
    let watch = {
        let (seen, pods) = (seen.clone(), Api::<Pod>::namespaced(client.clone(), "default"));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default().labels("app=big")));
            while let Some(event) = stream.next().await {
                let mut s = seen.lock().unwrap();
                match event.expect("the watch goes on") {
                    watcher::Event::InitApply(p) => {
                        s.1.insert(p.metadata.uid.unwrap());
                    }
                    watcher::Event::InitDone => s.0 = true,
                    watcher::Event::Apply(p) => {
                        let uid = p.metadata.uid.unwrap();
                        if !s.1.contains(&uid) {
                            s.2.insert(uid);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let new_pods = |seen: &Arc<Mutex<(bool, std::collections::HashSet<String>, std::collections::HashSet<String>)>>| {
        seen.lock().unwrap().2.len()
    };
    wait_until("the watch has listed the pods", within(SETTLED_WITHIN), || {
        let ready = seen.lock().unwrap().0;
        async move {
            if ready {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;

    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "app:2"}]}}}});
    deployments
        .patch("big", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&patch))
        .await
        .expect("the new image is set");
    wait_until("the rollout is under way", within(SETTLED_WITHIN), || {
        let n = new_pods(&seen);
        async move {
            if n >= 10 {
                Ok(())
            } else {
                Err(format!("{n} new pods"))
            }
        }
    })
    .await;
    managers[first].kill();
    let at_kill = new_pods(&seen);
    assert!(at_kill < 100, "the rollout was over before its leader was killed ({at_kill} new pods)");
    let next = leader(&client, &managers, Some(first)).await;
    assert_ne!(next, first);

    wait_rolled_out(&client, "big", 100).await;
    wait_running(&client, "default", "app=big", 100).await;
    watch.abort();
    assert_eq!(new_pods(&seen), 100, "pods created by the rollout ({at_kill} before the failover)");
    eprintln!("leader killed after {at_kill} of the rollout's 100 pods");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let sizes: Vec<i32> = sets
        .list(&ListParams::default().labels("app=big"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap())
        .collect();
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 100], "{sizes:?}");
}
