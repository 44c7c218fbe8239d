//! Kubernetes' semantics where a controller, an agent or kubectl would notice a difference: writes
//! that change nothing, graceful deletion of pods, deletion answers and dry runs, namespaces'
//! lifecycle, per-kind status rules, defaults, binding. Each test names the Kubernetes source
//! whose behaviour it checks where that behaviour is not obvious.

mod common;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};

use common::api::{call, send_once, ApiProcess};
use common::{wait_until, within};

fn rv<K: kube::Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap()
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36"}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

/// Kubernetes' etcd3 store skips a write whose encoded object is unchanged
/// (staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go, GuaranteedUpdate): the
/// resourceVersion stays and watchers hear nothing, so controllers that re-send the same status
/// do not wake themselves up.
#[tokio::test]
async fn writes_that_change_nothing_are_not_made() {
    let server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = cms.create(&PostParams::default(), &configmap("x")).await.unwrap();
    let pp = PatchParams::default();
    let mut watch = cms.watch(&WatchParams::default(), &rv(&created)).await.unwrap().boxed();
    for _ in 0..2 {
        let same = cms.patch("x", &pp, &Patch::Merge(json!({}))).await.unwrap();
        assert_eq!(rv(&same), rv(&created));
    }
    let same = cms.patch("x", &pp, &Patch::Strategic(json!({"data": {"k": "v"}}))).await.unwrap();
    assert_eq!(rv(&same), rv(&created));
    let replaced = cms.replace("x", &PostParams::default(), &created).await.unwrap();
    assert_eq!(rv(&replaced), rv(&created));
    // A real change moves the version, and it is the first thing the watch sees.
    let changed = cms.patch("x", &pp, &Patch::Merge(json!({"data": {"k": "w"}}))).await.unwrap();
    assert_ne!(rv(&changed), rv(&created));
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    match first {
        WatchEvent::Modified(cm) => assert_eq!(rv(&cm), rv(&changed)),
        other => panic!("expected the one real change, got {other:?}"),
    }
}

/// Pods on a node are deleted gracefully; a later delete may only shorten the period
/// (staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go, BeforeDelete); updates during the
/// period (the agent's status writes) do not delete the pod (ShouldDeleteDuringUpdate); a
/// delete with grace 0 finishes it. Unscheduled and finished pods go at once
/// (pkg/registry/core/pod/strategy.go, CheckGracefulDelete).
#[tokio::test]
async fn pods_are_deleted_gracefully_and_only_sooner_on_request() {
    let server = ApiProcess::server().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    pods.create(&pp, &pod("running", Some("n1"))).await.unwrap();
    let marked = pods.delete("running", &DeleteParams::default()).await.unwrap().left().expect("the pod, marked");
    let meta = &marked.metadata;
    assert_eq!(meta.deletion_grace_period_seconds, Some(30));
    let deadline = meta.deletion_timestamp.clone().expect("a deadline").0;
    // The agent reports status while the containers stop: the pod stays.
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status("running", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let still = pods.get("running").await.unwrap();
    assert_eq!(still.status.unwrap().phase.as_deref(), Some("Running"));
    // A longer period changes nothing; a shorter one moves the deadline up by the difference.
    let again = pods.delete("running", &DeleteParams::default().grace_period(60)).await.unwrap().left().unwrap();
    assert_eq!(again.metadata.deletion_grace_period_seconds, Some(30));
    let sooner = pods.delete("running", &DeleteParams::default().grace_period(10)).await.unwrap().left().unwrap();
    assert_eq!(sooner.metadata.deletion_grace_period_seconds, Some(10));
    let moved = deadline.as_second() - sooner.metadata.deletion_timestamp.unwrap().0.as_second();
    assert_eq!(moved, 20, "the deadline moves up by 30 - 10 seconds");
    // The node's final delete.
    pods.delete("running", &DeleteParams::default().grace_period(0)).await.unwrap();
    assert_eq!(pods.get_opt("running").await.unwrap().map(|p| p.metadata.name), None);

    // Not on a node: at once, and the answer is the pod (pods return deleted objects).
    pods.create(&pp, &pod("pending", None)).await.unwrap();
    let gone = pods.delete("pending", &DeleteParams::default()).await.unwrap();
    assert!(gone.left().is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
    assert!(pods.get_opt("pending").await.unwrap().is_none());
    // Finished: at once, though on a node.
    pods.create(&pp, &pod("done", Some("n1"))).await.unwrap();
    pods.patch_status("done", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Succeeded"}})))
        .await
        .unwrap();
    pods.delete("done", &DeleteParams::default()).await.unwrap();
    assert!(pods.get_opt("done").await.unwrap().is_none());
}

/// A delete of a kind without ReturnDeletedObject answers `Status{Success}` naming it
/// (registry/generic/registry/store.go, finalizeDelete); a marked object is answered as marked,
/// its generation bumped (rest/delete.go, markAsDeleting); dryRun in the DeleteOptions body
/// deletes nothing.
#[tokio::test]
async fn deletion_answers_generations_and_dry_runs() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms.create(&PostParams::default(), &configmap("gone")).await.unwrap();
    let answer = call(&client, "DELETE", "/api/v1/namespaces/default/configmaps/gone", None).await.unwrap();
    assert_eq!(answer["kind"], "Status");
    assert_eq!(answer["status"], "Success");
    assert_eq!(
        answer["details"],
        json!({"name": "gone", "group": "", "kind": "configmaps", "uid": created.metadata.uid})
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
        .unwrap();
    assert_eq!(deployments.create(&PostParams::default(), &d).await.unwrap().metadata.generation, Some(1));
    let marked = call(&client, "DELETE", "/apis/apps/v1/namespaces/default/deployments/held", None).await.unwrap();
    assert_eq!(marked["kind"], "Deployment");
    assert_eq!(marked["metadata"]["generation"], 2);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());

    // dryRun in the body: the namespace and what is in it stay.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "keep"}})).unwrap())
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "keep").create(&PostParams::default(), &configmap("c")).await.unwrap();
    let dry = json!({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]});
    call(&client, "DELETE", "/api/v1/namespaces/keep", Some(dry.clone())).await.unwrap();
    call(&client, "DELETE", "/api/v1/namespaces/keep/configmaps/c", Some(dry)).await.unwrap();
    let ns = nss.get("keep").await.unwrap();
    assert!(ns.metadata.deletion_timestamp.is_none());
    assert!(Api::<ConfigMap>::namespaced(client, "keep").get_opt("c").await.unwrap().is_some());
}

/// Namespaces: labelled with their name (pkg/apis/core/v1/defaults.go, SetDefaults_Namespace),
/// the system ones undeletable and no deletecollection (namespace lifecycle admission and
/// storage), content refused once terminating with the NamespaceTerminating cause, and nothing
/// created while a namespace is being deleted survives it.
#[tokio::test]
async fn namespaces_keep_their_lifecycle() {
    let server = ApiProcess::server_with_namespaces().await;
    let client = server.client();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = |name: &str, finalizers: &[&str]| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}})).unwrap()
    };
    let made = nss.create(&PostParams::default(), &ns("team-a", &[])).await.unwrap();
    assert_eq!(made.metadata.labels.unwrap()["kubernetes.io/metadata.name"], "team-a");
    assert_eq!(nss.get("default").await.unwrap().metadata.labels.unwrap()["kubernetes.io/metadata.name"], "default");

    for system in ["default", "kube-system", "kube-public"] {
        let refused = nss.delete(system, &DeleteParams::default()).await.unwrap_err();
        let kube::Error::Api(s) = refused else { panic!("{refused:?}") };
        assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
        assert_eq!(s.message, format!("namespaces \"{system}\" is forbidden: this namespace may not be deleted"));
    }
    let refused = call(&client, "DELETE", "/api/v1/namespaces", None).await.unwrap_err();
    assert_eq!(refused.code, 405);
    let core = call(&client, "GET", "/api/v1", None).await.unwrap();
    let verbs =
        core["resources"].as_array().unwrap().iter().find(|r| r["name"] == "namespaces").unwrap()["verbs"].clone();
    assert!(!verbs.as_array().unwrap().contains(&json!("deletecollection")), "{verbs}");

    // Held by a finalizer: Terminating, and closed to new content.
    nss.create(&PostParams::default(), &ns("held", &["example.com/hold"])).await.unwrap();
    nss.delete("held", &DeleteParams::default()).await.unwrap();
    assert_eq!(nss.get("held").await.unwrap().status.unwrap().phase.as_deref(), Some("Terminating"));
    let err = Api::<ConfigMap>::namespaced(client.clone(), "held")
        .create(&PostParams::default(), &configmap("late"))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err:?}") };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    let cause = &s.details.as_ref().unwrap().causes[0];
    assert_eq!((cause.reason.as_str(), cause.field.as_str()), ("NamespaceTerminating", "metadata.namespace"));

    // Creates racing a namespace's deletion: whatever was acknowledged is gone with it.
    for round in 0..5 {
        let name = format!("race-{round}");
        nss.create(&PostParams::default(), &ns(&name, &[])).await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let creator = {
            let cms = cms.clone();
            tokio::spawn(async move {
                let mut created = 0;
                for i in 0..400 {
                    match cms.create(&PostParams::default(), &configmap(&format!("cm-{i}"))).await {
                        Ok(_) => created += 1,
                        Err(_) => break,
                    }
                }
                created
            })
        };
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        nss.delete(&name, &DeleteParams::default()).await.unwrap();
        creator.await.unwrap();
        wait_until("the namespace is gone", within(Duration::from_secs(10)), || {
            let nss = nss.clone();
            let name = name.clone();
            async move {
                if nss.get_opt(&name).await.unwrap().is_none() {
                    Ok(())
                } else {
                    Err("still there".to_string())
                }
            }
        })
        .await;
        let left = cms.list(&ListParams::default()).await.unwrap().items.len();
        assert_eq!(left, 0, "round {round}: {left} configmaps outlived namespace {name}");
    }
}

/// Status rules per kind: a node keeps the status it is created with; a pod's is reset to
/// Pending with its QoS class (pkg/registry/core/pod/strategy.go, PrepareForCreate); a write
/// through /status keeps label changes for pods and drops them for deployments
/// (pkg/registry/apps/deployment/strategy.go, statusStrategy); a different uid is refused.
#[tokio::test]
async fn status_rules_follow_each_kind() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0",
        "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
        "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}})).unwrap();
    let created = nodes.create(&PostParams::default(), &node).await.unwrap();
    assert_eq!(created.status.unwrap().conditions.unwrap()[0].type_, "Ready");
    // Cordoned nodes are selectable by spec.unschedulable.
    nodes.patch("n1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}}))).await.unwrap();
    let cordoned = nodes.list(&ListParams::default().fields("spec.unschedulable=true")).await.unwrap();
    assert_eq!(cordoned.items.len(), 1);
    assert!(nodes.list(&ListParams::default().fields("spec.unschedulable=false")).await.unwrap().items.is_empty());

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut p = pod("p", None);
    p.spec.as_mut().unwrap().containers[0].resources =
        Some(serde_json::from_value(json!({"limits": {"cpu": "100m", "memory": "64Mi"}})).unwrap());
    p.status = Some(serde_json::from_value(json!({"phase": "Running", "podIP": "10.0.0.9"})).unwrap());
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let status = created.status.clone().unwrap();
    assert_eq!((status.phase.as_deref(), status.qos_class.as_deref()), (Some("Pending"), Some("Guaranteed")));
    assert_eq!(status.pod_ip, None);
    assert_eq!(created.spec.clone().unwrap().enable_service_links, Some(true));

    let relabel = json!({"metadata": {"labels": {"seen": "yes"}}, "status": {"phase": "Running"}});
    let written = pods.patch_status("p", &PatchParams::default(), &Patch::Merge(relabel.clone())).await.unwrap();
    assert_eq!(written.metadata.labels.unwrap()["seen"], "yes");
    assert_eq!(written.status.unwrap().qos_class.as_deref(), Some("Guaranteed"));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    deployments.create(&PostParams::default(), &d).await.unwrap();
    let written = deployments.patch_status("d", &PatchParams::default(), &Patch::Merge(relabel)).await.unwrap();
    assert!(written.metadata.labels.is_none_or(|l| !l.contains_key("seen")));

    // An update naming another uid: 422, field is immutable (an adoption patch relies on it).
    let mut other = pods.get("p").await.unwrap();
    other.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let err = pods.replace("p", &PostParams::default(), &other).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err:?}") };
    assert_eq!(s.code, 422);
    assert_eq!(s.details.unwrap().causes[0].field, "metadata.uid");
}

/// Secrets: stringData is merged into data and never kept (pkg/apis/core/v1/conversion.go);
/// services come back with an empty load-balancer status; stateful sets get Kubernetes'
/// defaults.
#[tokio::test]
async fn defaults_and_conversions_of_secrets_services_and_stateful_sets() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "s"},
        "data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "new", "c": "z"}}))
    .unwrap();
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(created.string_data.is_none());
    let data = created.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!((text("a"), text("b"), text("c")), ("x".into(), "new".into(), "z".into()));
    let raw = call(&client, "GET", "/api/v1/namespaces/default/secrets/s", None).await.unwrap();
    assert!(raw.get("stringData").is_none(), "{raw}");

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    let created = services.create(&PostParams::default(), &svc).await.unwrap();
    assert!(created.status.is_some_and(|s| s.load_balancer.is_some()));

    let sets: Api<StatefulSet> = Api::namespaced(client, "default");
    let sts: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}})).unwrap();
    let spec = sets.create(&PostParams::default(), &sts).await.unwrap().spec.unwrap();
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
}

/// Binding (pkg/registry/core/pod/storage/storage.go, assignPod): sets the node and a
/// PodScheduled=True condition; a pod being deleted or already bound is a 409. (A node that does
/// not exist is a 404: see api_scheduling.)
#[tokio::test]
async fn binding_marks_pods_scheduled_and_refuses_deleted_ones() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut held = pod("held", None);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    pods.create(&PostParams::default(), &pod("p", None)).await.unwrap();
    pods.create(&PostParams::default(), &held).await.unwrap();
    let binding = |name: &str| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": "n1"}});
    call(&client, "POST", "/api/v1/namespaces/default/pods/p/binding", Some(binding("p"))).await.unwrap();
    let bound = pods.get("p").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
    let conditions = bound.status.unwrap().conditions.unwrap();
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled").expect("a PodScheduled condition");
    assert_eq!(scheduled.status, "True");
    let again =
        call(&client, "POST", "/api/v1/namespaces/default/pods/p/binding", Some(binding("p"))).await.unwrap_err();
    assert_eq!(again.code, 409);

    pods.delete("held", &DeleteParams::default()).await.unwrap();
    let refused =
        call(&client, "POST", "/api/v1/namespaces/default/pods/held/binding", Some(binding("held"))).await.unwrap_err();
    assert_eq!(refused.code, 409);
    assert!(refused.message.contains("is being deleted"), "{}", refused.message);
}

/// A watch from a version the cache has not reached yet sends only what comes after that
/// version (Kubernetes' cacher waits until it is fresh enough; it never replays older events).
#[tokio::test]
async fn watches_from_a_new_version_send_only_newer_events() {
    let server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = cms.create(&PostParams::default(), &configmap("x")).await.unwrap();
    // The cache is built by a first watch, and is then current at the create.
    let mut first = cms.watch(&WatchParams::default(), &rv(&created)).await.unwrap().boxed();
    let pp = PatchParams::default();
    let patch = |v: &str| Patch::Merge(json!({"data": {"k": v}}));
    let one = cms.patch("x", &pp, &patch("1")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), first.next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Modified(cm) => assert_eq!(rv(&cm), rv(&one)),
        other => panic!("expected the first change, got {other:?}"),
    }
    // Two writes ahead of the store: the watch must skip both when they come.
    let ahead: i64 = rv(&one).parse::<i64>().unwrap() + 2;
    let mut watch = cms.watch(&WatchParams::default(), &ahead.to_string()).await.unwrap().boxed();
    cms.patch("x", &pp, &patch("2")).await.unwrap();
    let at = cms.patch("x", &pp, &patch("3")).await.unwrap();
    assert_eq!(rv(&at), ahead.to_string(), "nothing else writes to this store");
    let after = cms.patch("x", &pp, &patch("4")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Modified(cm) => assert_eq!(rv(&cm), rv(&after), "watching from {ahead}"),
        other => panic!("watching from {ahead}, the first event was {other:?}"),
    }
}

/// What kube-rs itself asks of a server, as a new user of its client and runtime would meet it:
/// metadata-only gets, lists, patches and watches (`as=PartialObjectMetadata`, which
/// `metadata_watcher` and client-go's metadata informers use), aggregated discovery
/// (`Discovery::run_aggregated`, also kubectl 1.30+'s first request), and the
/// `pods/ephemeralcontainers` subresource (`kubectl debug`).
#[tokio::test]
async fn kube_rs_metadata_aggregated_discovery_and_ephemeral_containers() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("p", None)).await.unwrap();

    let meta = pods.get_metadata("p").await.unwrap();
    assert_eq!(meta.types.as_ref().unwrap().kind, "PartialObjectMetadata");
    assert_eq!(meta.metadata.name.as_deref(), Some("p"));
    let listed = pods.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let patched = pods
        .patch_metadata("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(patched.types.as_ref().unwrap().kind, "PartialObjectMetadata");
    assert_eq!(patched.metadata.labels.unwrap()["a"], "b");
    let raw = call(&client, "GET", "/api/v1/namespaces/default/pods/p", None).await.unwrap();
    assert_eq!(raw["kind"], "Pod", "a plain get still answers the whole pod");

    // A watcher of metadata only (kube-rs's `Api<PartialObjectMeta<Pod>>`) sees a new pod.
    let metas: Api<kube::core::PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), "default");
    let mut stream = kube::runtime::watcher(metas, kube::runtime::watcher::Config::default()).boxed();
    pods.create(&PostParams::default(), &pod("q", None)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut names = std::collections::BTreeSet::new();
    while !names.contains("q") {
        let event =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("q is seen in time").unwrap().unwrap();
        use kube::runtime::watcher::Event;
        if let Event::Apply(m) | Event::InitApply(m) = event {
            names.insert(m.metadata.name.clone().unwrap());
        }
    }

    // Aggregated discovery finds every served kind with its scope.
    let discovery = kube::Discovery::new(client.clone()).run_aggregated().await.unwrap();
    let (deploy, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.kind == "Deployment")
        .expect("deployments discovered");
    assert_eq!((deploy.group.as_str(), deploy.plural.as_str()), ("apps", "deployments"));
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(discovery.groups().flat_map(|g| g.recommended_resources()).any(|(r, _)| r.kind == "Namespace"));

    // kubectl debug: an ephemeral container is added through its subresource, and stays.
    let debug =
        json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36", "stdin": true}]}});
    let with = pods.patch_ephemeral_containers("p", &PatchParams::default(), &Patch::Strategic(debug)).await.unwrap();
    let spec = with.spec.unwrap();
    assert_eq!(spec.ephemeral_containers.unwrap()[0].name, "debugger");
    assert_eq!(spec.containers.len(), 1);
    let removal = json!({"spec": {"ephemeralContainers": []}});
    let err = pods.patch_ephemeral_containers("p", &PatchParams::default(), &Patch::Merge(removal)).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err:?}") };
    assert_eq!(s.code, 422);
    let clash = json!({"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36", "stdin": true},
        {"name": "c", "image": "busybox:1.36"}]}});
    let err = pods.patch_ephemeral_containers("p", &PatchParams::default(), &Patch::Merge(clash)).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err:?}") };
    assert_eq!((s.code, s.details.unwrap().causes[0].field.as_str()), (422, "spec.ephemeralContainers[1].name"));
}

/// Strategic merge patch by Kubernetes' own merge keys and strategies: finalizers merge as a set,
/// owner references by uid, a deployment's strategy keeps only the keys `$retainKeys` names.
#[tokio::test]
async fn strategic_merge_follows_kubernetes_definitions() {
    let server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut cm = configmap("f");
    cm.metadata.finalizers = Some(vec!["a".into()]);
    cm.metadata.owner_references =
        Some(vec![serde_json::from_value(json!({"apiVersion": "v1", "kind": "X", "name": "x", "uid": "1"})).unwrap()]);
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let patch = json!({"metadata": {"finalizers": ["b"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "Y", "name": "y", "uid": "2"}]}});
    let patched = cms.patch("f", &PatchParams::default(), &Patch::Strategic(patch)).await.unwrap();
    assert_eq!(patched.metadata.finalizers.unwrap(), ["a", "b"]);
    let owners: Vec<String> = patched.metadata.owner_references.unwrap().into_iter().map(|o| o.uid).collect();
    assert_eq!(owners, ["1", "2"]);

    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    deployments.create(&PostParams::default(), &d).await.unwrap();
    let recreate = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    let patched = deployments.patch("d", &PatchParams::default(), &Patch::Strategic(recreate)).await.unwrap();
    let strategy = patched.spec.unwrap().strategy.unwrap();
    assert_eq!((strategy.type_.as_deref(), strategy.rolling_update.is_none()), (Some("Recreate"), true));
}

fn managers<K: kube::Resource>(o: &K) -> Vec<String> {
    o.meta()
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| format!("{}/{}", m.manager.unwrap_or_default(), m.operation.unwrap_or_default()))
        .collect()
}

/// Server-side apply through kube-rs (`Patch::Apply`), as Kubernetes' structured-merge-diff does
/// it: an apply creates, an identical one writes nothing, a change to a field another manager
/// set is a 409 naming the field and the manager (forced, the field changes hands), fields an
/// apply no longer names are removed, and every create, update and patch records its manager.
#[tokio::test]
async fn server_side_apply_tracks_owners_conflicts_and_removals() {
    let server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let config =
        |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}, "data": data});
    let by = |m: &str| PatchParams::apply(m);
    let created = cms.patch("app", &by("deployer"), &Patch::Apply(config(json!({"a": "1", "b": "2"})))).await.unwrap();
    assert_eq!(managers(&created), ["deployer/Apply"]);
    let again = cms.patch("app", &by("deployer"), &Patch::Apply(config(json!({"a": "1", "b": "2"})))).await.unwrap();
    assert_eq!(rv(&again), rv(&created));

    // Another client changes `b` with an ordinary patch: it becomes b's manager.
    let edit = PatchParams { field_manager: Some("editor".into()), ..Default::default() };
    let edited = cms.patch("app", &edit, &Patch::Merge(json!({"data": {"b": "20"}}))).await.unwrap();
    assert_eq!(managers(&edited), ["deployer/Apply", "editor/Update"]);
    let fields = edited.metadata.managed_fields.unwrap()[1].fields_v1.clone().unwrap().0;
    assert_eq!(fields, json!({"f:data": {"f:b": {}}}));

    // Applying b back is a conflict with the editor, named; forced, b changes hands.
    let err = cms.patch("app", &by("deployer"), &Patch::Apply(config(json!({"a": "1", "b": "2"})))).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err:?}") };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(s.message.contains("conflict with \"editor\""), "{}", s.message);
    let cause = &s.details.unwrap().causes[0];
    assert_eq!((cause.reason.as_str(), cause.field.as_str()), ("FieldManagerConflict", ".data.b"));
    let forced =
        cms.patch("app", &by("deployer").force(), &Patch::Apply(config(json!({"a": "1", "b": "2"})))).await.unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["b"], "2");
    assert_eq!(managers(&forced), ["deployer/Apply"]);

    // Dropping `a` from the configuration removes it; a field another manager holds stays.
    cms.patch("app", &edit, &Patch::Merge(json!({"data": {"c": "3"}}))).await.unwrap();
    let dropped = cms.patch("app", &by("deployer"), &Patch::Apply(config(json!({"b": "2"})))).await.unwrap();
    let data = dropped.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["b", "c"]);

    // Apply needs a field manager; a plain create records its manager as an update.
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/app")
        .header("content-type", "application/apply-patch+yaml")
        .body(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n".to_vec())
        .unwrap();
    let kube::Error::Api(s) = server.client().request::<Value>(req).await.unwrap_err() else { panic!() };
    assert_eq!(s.code, 400);
    let pp = PostParams { field_manager: Some("creator".into()), ..Default::default() };
    let plain = cms.create(&pp, &configmap("plain")).await.unwrap();
    assert_eq!(managers(&plain), ["creator/Update"]);
}

/// Lists at a version (Kubernetes' ListOptions): `Exact` (or a version with `limit`) is the state
/// at that revision, 410 once compacted, 504 when the store has not reached it; `NotOlderThan` is
/// a state at least that new; the combinations Kubernetes refuses are refused. Over Keelson's
/// store a consistent list comes from the watch cache once it has caught up.
#[tokio::test]
async fn lists_honour_resource_version_match() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = cms.create(&PostParams::default(), &configmap("a")).await.unwrap();
    cms.create(&PostParams::default(), &configmap("b")).await.unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.into_iter().map(|c| c.metadata.name.unwrap()).collect()
    };
    let at_a = ListParams::default().at(&rv(&a)).matching(kube::api::VersionMatch::Exact);
    let listed = cms.list(&at_a).await.unwrap();
    assert_eq!(listed.metadata.resource_version.as_deref(), Some(rv(&a).as_str()));
    assert_eq!(names(listed), ["a"]);
    // A version with a limit is exact too (Kubernetes' legacy rule).
    let paged = cms.list(&ListParams::default().at(&rv(&a)).limit(10)).await.unwrap();
    assert_eq!(names(paged), ["a"]);
    assert_eq!(names(cms.list(&ListParams::default().at(&rv(&a))).await.unwrap()), ["a", "b"]);

    // A version the store has not reached: 504, which clients retry (so asked without one).
    let ahead = rv(&a).parse::<i64>().unwrap() + 1000;
    for m in ["Exact", "NotOlderThan"] {
        let path = format!("/api/v1/namespaces/default/configmaps?resourceVersion={ahead}&resourceVersionMatch={m}");
        let (code, body) = send_once(server.config(), "GET", &path, None).await.unwrap();
        assert_eq!((code, body["reason"].as_str()), (504, Some("Timeout")), "{body}");
        assert_eq!(body["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
    }
    let bad = [
        "/api/v1/namespaces/default/configmaps?resourceVersionMatch=Exact",
        "/api/v1/namespaces/default/configmaps?resourceVersion=0&resourceVersionMatch=Exact",
        "/api/v1/namespaces/default/configmaps?resourceVersion=1&resourceVersionMatch=Newest",
    ];
    for path in bad {
        assert_eq!(call(&client, "GET", path, None).await.unwrap_err().code, 422, "{path}");
    }

    // Compacted away: 410.
    let mut kv =
        proto::etcdserverpb::kv_client::KvClient::connect(format!("http://127.0.0.1:{}", server.store_port.unwrap()))
            .await
            .unwrap();
    let head = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    kv.compact(proto::etcdserverpb::CompactionRequest { revision: head.parse().unwrap(), physical: true })
        .await
        .unwrap();
    let err = cms.list(&at_a).await.unwrap_err();
    let kube::Error::Api(s) = err else { panic!("{err:?}") };
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));

    // Keelson's store is trusted to say when the cache is current: consistent lists use it.
    let cached = common::api::metric(&client, "keelson_apiserver_lists_total{source=\"cache\"}").await;
    let _ = cms.watch(&WatchParams::default().timeout(1), "0").await.unwrap().boxed().next().await;
    cms.list(&ListParams::default()).await.unwrap();
    assert!(common::api::metric(&client, "keelson_apiserver_lists_total{source=\"cache\"}").await > cached);
}

/// Events expire `--event-ttl` after their last write, through a store lease (Kubernetes keeps
/// them an hour by default).
#[tokio::test]
async fn events_expire_after_the_event_ttl() {
    let server = ApiProcess::server_with(&["--event-ttl", "2s"]).await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(server.client(), "default");
    let event = serde_json::from_value(json!({"metadata": {"name": "e"}, "reason": "Tested", "message": "short-lived",
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "type": "Normal"}))
    .unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    cms.create(&PostParams::default(), &configmap("stays")).await.unwrap();
    let started = std::time::Instant::now();
    wait_until("the event expires", within(Duration::from_secs(30)), || {
        let events = events.clone();
        async move {
            match events.get_opt("e").await.unwrap() {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1), "gone before its time-to-live");
    assert!(cms.get_opt("stays").await.unwrap().is_some(), "other kinds do not expire");
}

/// kubectl's columns (pkg/printers/internalversion/printers.go): a pod being deleted reads
/// Terminating, a cordoned node Ready,SchedulingDisabled with its roles.
#[tokio::test]
async fn tables_print_pod_and_node_states_as_kubectl_does() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("leaving", Some("n1"))).await.unwrap();
    pods.delete("leaving", &DeleteParams::default()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1",
        "labels": {"node-role.kubernetes.io/control-plane": ""}}, "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let table = |path: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::get(path)
                .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
                .body(Vec::new())
                .unwrap();
            client.request::<Value>(req).await.unwrap()
        }
    };
    let t = table("/api/v1/namespaces/default/pods/leaving").await;
    let columns: Vec<&str> =
        t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let status = columns.iter().position(|c| *c == "Status").unwrap();
    assert_eq!(t["rows"][0]["cells"][status], "Terminating");
    let t = table("/api/v1/nodes/n1").await;
    assert_eq!(t["rows"][0]["cells"][1], "Ready,SchedulingDisabled");
    assert_eq!(t["rows"][0]["cells"][2], "control-plane");
}

/// A watch that starts with the current state (`sendInitialEvents=true`, no resourceVersion) is
/// consistent: its initial events include every write acknowledged before it was opened, as
/// Kubernetes waits for its cache to catch up before sending them.
#[tokio::test]
async fn initial_events_include_every_acknowledged_write() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // The cache is built by a first watch.
    let _ = cms.watch(&WatchParams::default().timeout(1), "0").await.unwrap().boxed().next().await;
    for round in 0..20 {
        let name = format!("cm-{round}");
        cms.create(&PostParams::default(), &configmap(&name)).await.unwrap();
        let path = "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true\
                    &resourceVersionMatch=NotOlderThan&timeoutSeconds=5";
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let mut events = client.request_events::<Value>(req).await.unwrap().boxed();
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap() {
                WatchEvent::Added(o) => seen.push(o["metadata"]["name"].as_str().unwrap_or_default().to_string()),
                WatchEvent::Bookmark(b) => {
                    assert_eq!(
                        b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str),
                        Some("true")
                    );
                    break;
                }
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert!(seen.contains(&name), "round {round}: {name} missing from the initial events {seen:?}");
    }
}
