//! The Kubernetes API of `keelson server`, through kube-rs as a Kubernetes client uses it:
//! create, get, list with selectors and pages, each kind of patch, optimistic concurrency,
//! validation, watches that resume and that meet a compacted version, deletion with finalizers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;

use common::api::ApiProcess;
use common::{wait_until, within};

fn api_error(e: kube::Error) -> (u16, String, serde_json::Value) {
    match e {
        kube::Error::Api(status) => {
            let details = serde_json::to_value(&status.details).unwrap();
            (status.code, status.reason.clone(), details)
        }
        other => panic!("expected a Status from the server, got {other:?}"),
    }
}

fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"key": "value"},
    }))
    .unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "nginx"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [
                    {"name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}]},
                    {"name": "sidecar", "image": "busybox:1.36"}
                ]}
            }
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn create_get_list_with_selectors_and_pages_and_conflicts() {
    let server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    for (i, tier) in ["web", "web", "db", "cache", "web"].iter().enumerate() {
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        cms.create(&pp, &configmap(&format!("cm-{i}"), &[("tier", tier), ("env", env)])).await.unwrap();
    }
    let got = cms.get("cm-2").await.unwrap();
    let meta = &got.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());
    assert_eq!(got.data.unwrap()["key"], "value");

    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.into_iter().map(|c| c.metadata.name.unwrap()).collect()
    };
    let by = |selector: &str| ListParams::default().labels(selector);
    assert_eq!(names(cms.list(&by("tier=web")).await.unwrap()), ["cm-0", "cm-1", "cm-4"]);
    assert_eq!(names(cms.list(&by("tier in (db,cache),env=prod")).await.unwrap()), ["cm-2"]);
    assert_eq!(names(cms.list(&by("tier!=web,!missing")).await.unwrap()), ["cm-2", "cm-3"]);
    assert_eq!(names(cms.list(&by("tier notin (web),env")).await.unwrap()), ["cm-2", "cm-3"]);
    let by_name = ListParams::default().fields("metadata.name=cm-3");
    assert_eq!(names(cms.list(&by_name).await.unwrap()), ["cm-3"]);
    let (code, reason, _) = api_error(cms.list(&by("tier in (")).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    let (code, _, _) = api_error(cms.list(&ListParams::default().fields("data.key=x")).await.unwrap_err());
    assert_eq!(code, 400);

    // Pages of two over one snapshot: a write between pages does not show up in later pages.
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(2);
    let first = cms.list(&params).await.unwrap();
    let snapshot = first.metadata.resource_version.clone().unwrap();
    let mut token = first.metadata.continue_.clone();
    seen.extend(names(first));
    cms.create(&pp, &configmap("cm-9", &[])).await.unwrap();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        params = params.continue_token(&t);
        let page = cms.list(&params).await.unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(snapshot.as_str()));
        token = page.metadata.continue_.clone();
        seen.extend(names(page));
    }
    assert_eq!(seen, ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4"]);

    // Optimistic concurrency: an update from a stale version is refused, and loses nothing.
    let mut stale = cms.get("cm-0").await.unwrap();
    let mut fresh = stale.clone();
    fresh.data = Some([("key".to_string(), "second".to_string())].into());
    cms.replace("cm-0", &pp, &fresh).await.unwrap();
    stale.data = Some([("key".to_string(), "lost".to_string())].into());
    let (code, reason, _) = api_error(cms.replace("cm-0", &pp, &stale).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(cms.get("cm-0").await.unwrap().data.unwrap()["key"], "second");
    let (code, reason, _) = api_error(cms.create(&pp, &configmap("cm-1", &[])).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // generateName, and a namespace that does not exist.
    let mut generated = configmap("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = cms.create(&pp, &generated).await.unwrap().metadata.name.unwrap();
    assert!(made.starts_with("gen-") && made.len() == 9, "{made}");
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "nowhere");
    let (code, reason, _) = api_error(elsewhere.create(&pp, &configmap("x", &[])).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, _, _) = api_error(cms.get("absent").await.unwrap_err());
    assert_eq!(code, 404);
}

#[tokio::test]
async fn invalid_objects_are_refused_with_the_fields_named_and_nothing_is_stored() {
    let server = ApiProcess::server().await;
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let mut bad = deployment("bad");
    bad.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().labels =
        Some([("app".to_string(), "other".to_string())].into());
    bad.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers.clear();
    let (code, reason, details) = api_error(deployments.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    let fields: Vec<&str> =
        details["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["spec.template.metadata.labels", "spec.template.spec.containers"]);
    assert_eq!(api_error(deployments.get("bad").await.unwrap_err()).0, 404);

    let mut bad_name = deployment("Bad_Name");
    bad_name.metadata.name = Some("Bad_Name".into());
    let (code, _, details) = api_error(deployments.create(&PostParams::default(), &bad_name).await.unwrap_err());
    assert_eq!(code, 422);
    assert_eq!(details["causes"][0]["field"], "metadata.name");

    // Unknown fields: refused under fieldValidation=Strict, dropped (with a warning) otherwise.
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "colour": "blue"}]}});
    let client = server.client();
    let url = "/api/v1/namespaces/default/pods?fieldValidation=Strict";
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .unwrap();
    let err = client.request::<Pod>(req).await.unwrap_err();
    let (code, reason, _) = api_error(err);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    let lenient: Pod = serde_json::from_value(body).unwrap();
    let created = pods.create(&PostParams::default(), &lenient).await.unwrap();
    // Defaults are filled in.
    let spec = created.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn patches_of_each_kind_status_and_scale() {
    let server = ApiProcess::server().await;
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let created = deployments.create(&PostParams::default(), &deployment("web")).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let pp = PatchParams::default();

    // Merge patch of metadata: no spec change, no new generation.
    let merged =
        deployments.patch("web", &pp, &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}}))).await.unwrap();
    assert_eq!(merged.metadata.labels.unwrap()["tier"], "front");
    assert_eq!(merged.metadata.generation, Some(1));

    // JSON patch of the spec: a new generation.
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 5}])).unwrap();
    let patched = deployments.patch("web", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(patched.metadata.generation, Some(2));

    // Strategic merge: containers merge by name; the sidecar stays.
    let strategic =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.16.1"}]}}}});
    let patched = deployments.patch("web", &pp, &Patch::Strategic(strategic)).await.unwrap();
    let containers = patched.spec.unwrap().template.spec.unwrap().containers;
    let images: Vec<(String, String)> = containers.into_iter().map(|c| (c.name, c.image.unwrap_or_default())).collect();
    assert_eq!(
        images,
        [("nginx".to_string(), "nginx:1.16.1".to_string()), ("sidecar".to_string(), "busybox:1.36".to_string())]
    );

    // A patch naming a stale resourceVersion is a conflict.
    let stale =
        json!({"metadata": {"resourceVersion": created.metadata.resource_version.unwrap()}, "spec": {"replicas": 1}});
    let (code, _, _) = api_error(deployments.patch("web", &pp, &Patch::Merge(stale)).await.unwrap_err());
    assert_eq!(code, 409);

    // Status changes only through /status, and /status changes only status.
    let before = deployments.get("web").await.unwrap();
    deployments.patch("web", &pp, &Patch::Merge(json!({"status": {"replicas": 7}}))).await.unwrap();
    assert!(deployments.get("web").await.unwrap().status.and_then(|s| s.replicas).is_none());
    let with_status = deployments
        .patch_status("web", &pp, &Patch::Merge(json!({"status": {"replicas": 2}, "spec": {"replicas": 9}})))
        .await
        .unwrap();
    assert_eq!(with_status.status.unwrap().replicas, Some(2));
    assert_eq!(with_status.spec.unwrap().replicas, before.spec.unwrap().replicas);
    assert_eq!(with_status.metadata.generation, before.metadata.generation);

    // Scale.
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(5));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=nginx"));
    deployments.patch_scale("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 4}}))).await.unwrap();
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(4));
}

#[tokio::test]
async fn watches_resume_from_a_version_and_report_a_compacted_one_as_410() {
    let server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    let first = cms.create(&pp, &configmap("w-0", &[("watched", "yes")])).await.unwrap();
    let from = first.metadata.resource_version.clone().unwrap();
    cms.create(&pp, &configmap("w-1", &[("watched", "yes")])).await.unwrap();
    cms.create(&pp, &configmap("other", &[])).await.unwrap();
    cms.patch("w-1", &PatchParams::default(), &Patch::Merge(json!({"data": {"key": "changed"}}))).await.unwrap();
    cms.delete("w-0", &DeleteParams::default()).await.unwrap();

    // Resumed after the first create: everything since, in order, filtered by label.
    let wp = WatchParams::default().labels("watched=yes").timeout(5);
    let mut stream = cms.watch(&wp, &from).await.unwrap().boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await.unwrap().expect("the watch ended early") {
            WatchEvent::Added(c) => seen.push(format!("ADDED {}", c.metadata.name.unwrap())),
            WatchEvent::Modified(c) => seen.push(format!("MODIFIED {}", c.metadata.name.unwrap())),
            WatchEvent::Deleted(c) => seen.push(format!("DELETED {}", c.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED w-1", "MODIFIED w-1", "DELETED w-0"]);

    // Compact the store past `from`: a watch from there gets an in-stream 410 Expired.
    let current = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut kv =
        proto::etcdserverpb::kv_client::KvClient::connect(format!("http://127.0.0.1:{}", server.store_port.unwrap()))
            .await
            .unwrap();
    kv.compact(proto::etcdserverpb::CompactionRequest { revision: current.parse().unwrap(), physical: true })
        .await
        .unwrap();
    let mut stream = cms.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // kube's watcher lists, then watches; it sees a later write.
    let events = watcher(cms.clone(), watcher::Config::default().labels("watched=yes"));
    let mut events = Box::pin(events);
    let cms2 = cms.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cms2.create(&PostParams::default(), &configmap("w-2", &[("watched", "yes")])).await.unwrap();
    });
    let deadline = within(Duration::from_secs(20));
    let mut names = Vec::new();
    while !names.contains(&"w-2".to_string()) {
        assert!(std::time::Instant::now() < deadline, "w-2 never arrived; saw {names:?}");
        match tokio::time::timeout(Duration::from_secs(20), events.try_next()).await {
            Ok(Ok(Some(watcher::Event::Apply(c) | watcher::Event::InitApply(c)))) => {
                names.push(c.metadata.name.unwrap())
            }
            Ok(Ok(Some(_))) => {}
            other => panic!("watcher: {other:?}"),
        }
    }
    writer.await.unwrap();
    assert_eq!(names.first().map(String::as_str), Some("w-1"));
}

#[tokio::test]
async fn deletion_waits_for_finalizers_and_namespaces_take_their_content() {
    let server = ApiProcess::server_with_namespaces().await;
    let client = server.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let mut held = configmap("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.create(&PostParams::default(), &configmap("plain", &[])).await.unwrap();

    // With a finalizer the object stays, marked.
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = cms.get("held").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    // Finalizers can be removed, not other changes made... the last one going deletes it.
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(api_error(cms.get("held").await.unwrap_err()).0, 404);

    // The propagation policy asked for is recorded as the garbage collector's finalizer (seen
    // in the delete's answer: the garbage collector may finish it before a later read).
    cms.create(&PostParams::default(), &configmap("fg", &[])).await.unwrap();
    let fg =
        cms.delete("fg", &DeleteParams::foreground()).await.unwrap().left().expect("the object, still being deleted");
    assert_eq!(fg.metadata.finalizers.as_deref(), Some(&["foregroundDeletion".to_string()][..]));

    // Deleting the namespace takes what is in it.
    namespaces.delete("team", &DeleteParams::default()).await.unwrap();
    wait_until("the namespace and its content are gone", within(Duration::from_secs(10)), || {
        let (namespaces, cms) = (namespaces.clone(), cms.clone());
        async move {
            let left = cms.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
            match namespaces.get("team").await {
                Err(kube::Error::Api(s)) if s.code == 404 && left == 0 => Ok(()),
                other => Err(format!("namespace: {:?}, {left} configmaps left", other.map(|n| n.status))),
            }
        }
    })
    .await;
}

/// Whether `key` is in the server's store, read through the etcd API.
async fn stored(server: &ApiProcess, key: &str) -> bool {
    let url = format!("http://127.0.0.1:{}", server.store_port.expect("a server runs a store"));
    let mut kv = proto::etcdserverpb::kv_client::KvClient::connect(url).await.unwrap();
    let request = proto::etcdserverpb::RangeRequest { key: key.into(), count_only: true, ..Default::default() };
    kv.range(request).await.unwrap().into_inner().count > 0
}

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default()
}

fn node_ports(svc: &Service) -> Vec<i32> {
    svc.spec.as_ref().and_then(|s| s.ports.as_ref()).into_iter().flatten().filter_map(|p| p.node_port).collect()
}

/// The first cause of a 422, as (field, message).
fn invalid_cause(e: kube::Error) -> (String, String) {
    let (code, reason, details) = api_error(e);
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{details}");
    let cause = &details["causes"][0];
    (cause["field"].as_str().unwrap_or("").into(), cause["message"].as_str().unwrap_or("").into())
}

/// Goal: services get cluster IPs and node ports as Kubernetes hands them out — from the
/// configured ranges, never one value to two services, asked-for values honoured or refused with
/// the field named, kept across updates, and free again once their service is gone (also when
/// its namespace took it).
#[tokio::test]
async fn services_get_cluster_ips_and_node_ports_that_no_two_share() {
    let server = ApiProcess::server_with_namespaces().await;
    let client = server.client();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let web = json!({"ports": [{"port": 80, "targetPort": 8080}]});
    let a = svcs.create(&pp, &service("a", web.clone())).await.unwrap();
    let b = svcs.create(&pp, &service("b", web.clone())).await.unwrap();
    for svc in [&a, &b] {
        let ip: std::net::Ipv4Addr = cluster_ip(svc).parse().unwrap();
        let o = ip.octets();
        assert!(o[0] == 10 && (96..112).contains(&o[1]) && ip != std::net::Ipv4Addr::new(10, 96, 0, 1), "{ip}");
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ips.as_deref(), Some(&[ip.to_string()][..]));
        assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    }
    assert_ne!(cluster_ip(&a), cluster_ip(&b));

    // An asked-for address is given, once.
    let fixed = svcs.create(&pp, &service("fixed", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}))).await;
    assert_eq!(cluster_ip(&fixed.unwrap()), "10.96.0.10");
    let (field, message) = invalid_cause(
        svcs.create(&pp, &service("dup", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]})))
            .await
            .unwrap_err(),
    );
    assert_eq!(field, "spec.clusterIPs");
    assert!(message.contains("provided IP is already allocated"), "{message}");
    assert_eq!(api_error(svcs.get("dup").await.unwrap_err()).0, 404, "a refused service was stored");
    let (field, message) = invalid_cause(
        svcs.create(&pp, &service("outside", json!({"clusterIP": "192.168.1.1", "ports": [{"port": 53}]})))
            .await
            .unwrap_err(),
    );
    assert_eq!(field, "spec.clusterIPs");
    assert!(message.contains("is not in the valid range"), "{message}");
    let headless = svcs.create(&pp, &service("headless", json!({"clusterIP": "None", "ports": [{"port": 80}]}))).await;
    assert_eq!(cluster_ip(&headless.unwrap()), "None");
    let external =
        svcs.create(&pp, &service("ext", json!({"type": "ExternalName", "externalName": "example.com"}))).await;
    assert_eq!(cluster_ip(&external.unwrap()), "");

    // Node ports: one per port, from the range, distinct; an asked-for one is refused while held.
    let np = json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]});
    let np = svcs.create(&pp, &service("np", np)).await.unwrap();
    let ports = node_ports(&np);
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| (30000..=32767).contains(p)) && ports[0] != ports[1], "{ports:?}");
    let want = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]});
    let (field, message) = invalid_cause(svcs.create(&pp, &service("np2", want.clone())).await.unwrap_err());
    assert_eq!(field, "spec.ports[0].nodePort");
    assert!(message.contains("provided port is already allocated"), "{message}");

    // A replacement that leaves the allocated values out keeps them; the cluster IP never moves.
    let mut replacement = service("a", json!({"ports": [{"port": 81}]}));
    replacement.metadata.resource_version = a.metadata.resource_version.clone();
    let replaced = svcs.replace("a", &pp, &replacement).await.unwrap();
    assert_eq!(cluster_ip(&replaced), cluster_ip(&a));
    let moved =
        svcs.patch("a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"clusterIP": "10.96.0.11"}}))).await;
    assert!(invalid_cause(moved.unwrap_err()).1.contains("may not change once set"));

    // Back to ClusterIP: the node ports go, and another service may take one.
    let back = svcs.patch("np", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "ClusterIP"}}))).await;
    assert_eq!(node_ports(&back.unwrap()), Vec::<i32>::new());
    assert_eq!(node_ports(&svcs.create(&pp, &service("np2", want)).await.unwrap()), [ports[0]]);

    // Deleted, the address is free again.
    svcs.delete("fixed", &DeleteParams::default()).await.unwrap();
    let again = svcs.create(&pp, &service("again", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}))).await;
    assert_eq!(cluster_ip(&again.unwrap()), "10.96.0.10");

    // A namespace's deletion takes its services' allocations with them.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "gone"}})).unwrap()).await.unwrap();
    let in_gone: Api<Service> = Api::namespaced(client.clone(), "gone");
    in_gone.create(&pp, &service("dns", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 53}]}))).await.unwrap();
    namespaces.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_until("the namespace is gone", within(Duration::from_secs(10)), || {
        let namespaces = namespaces.clone();
        async move {
            match namespaces.get("gone").await {
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                other => Err(format!("{:?}", other.map(|n| n.status))),
            }
        }
    })
    .await;
    let held = stored(&server, "/registry/ranges/serviceips/10.96.0.20").await;
    assert!(!held, "the namespace's deletion left its service's address allocated");
    let reused = svcs.create(&pp, &service("dns", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 53}]}))).await;
    assert_eq!(cluster_ip(&reused.unwrap()), "10.96.0.20");
}

/// A request body in Kubernetes' protocol-buffer envelope, as client-go's typed clients send it.
fn protobuf_body(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost_k8s::Message as _;
    let unknown = Unknown {
        type_meta: Some(TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
        raw: Some(raw),
        ..Default::default()
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

/// Goal: bodies in Kubernetes' protocol-buffer encoding — what `kubectl create …` of a current
/// kubectl and client-go's typed clients send, with no JSON fallback — create the same objects
/// as JSON would; a kind or field not read from protobuf, or a media type not understood, is
/// 415 with the reason, and nothing is stored.
#[tokio::test]
async fn protobuf_bodies_create_objects_as_json_would() {
    use k8s_pb::api::{apps::v1 as apps, core::v1 as core};
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use prost_k8s::Message as _;
    let server = ApiProcess::server().await;
    let client = server.client();
    let post = |url: &str, content_type: &str, body: Vec<u8>| {
        http::Request::post(url)
            .header("content-type", content_type)
            .header("accept", "application/vnd.kubernetes.protobuf,application/json")
            .body(body)
            .unwrap()
    };
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: Some("from-pb".into()),
            namespace: Some(String::new()),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(2),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".into(), "pb".into())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta { labels: [("app".into(), "pb".into())].into(), ..Default::default() }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("web".into()),
                        image: Some("nginx:1.14.2".into()),
                        stdin: Some(false),
                        ..Default::default()
                    }],
                    host_network: Some(false),
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy::default()),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    let body = protobuf_body("apps/v1", "Deployment", deployment.encode_to_vec());
    let url = "/apis/apps/v1/namespaces/default/deployments";
    let created: Deployment = client.request(post(url, "application/vnd.kubernetes.protobuf", body)).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.selector.match_labels.unwrap()["app"], "pb");
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"), "an empty strategy is defaulted");
    let pod_spec = spec.template.spec.unwrap();
    assert_eq!(pod_spec.containers[0].image.as_deref(), Some("nginx:1.14.2"));
    assert_eq!(pod_spec.host_network, None, "Go's unset false came through as set");

    // Refused, with nothing stored: a kind not read from protobuf, a set field outside the
    // tables, a media type not understood.
    let revision = protobuf_body("apps/v1", "ControllerRevision", Vec::new());
    let url = "/apis/apps/v1/namespaces/default/controllerrevisions";
    let (code, reason, _) = api_error(
        client.request::<Deployment>(post(url, "application/vnd.kubernetes.protobuf", revision)).await.unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    let mut with_dns = core::Pod {
        metadata: Some(meta::ObjectMeta { name: Some("dns".into()), ..Default::default() }),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: Some("c".into()),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    with_dns.spec.as_mut().unwrap().dns_config =
        Some(core::PodDnsConfig { nameservers: vec!["192.0.2.53".into()], ..Default::default() });
    let body = protobuf_body("v1", "Pod", with_dns.encode_to_vec());
    let url = "/api/v1/namespaces/default/pods";
    let err = client.request::<Pod>(post(url, "application/vnd.kubernetes.protobuf", body)).await.unwrap_err();
    assert_eq!(api_error(err).0, 415);
    let err = client.request::<Pod>(post(url, "text/plain", b"name: x".to_vec())).await.unwrap_err();
    assert_eq!(api_error(err).0, 415);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert_eq!(api_error(pods.get("dns").await.unwrap_err()).0, 404);
}

/// The count of watches served from `source` ("cache" or "store"), from /metrics.
async fn watches_from(client: &kube::Client, source: &str) -> u64 {
    common::api::metric(client, &format!("keelson_apiserver_watches_total{{source=\"{source}\"}}")).await
}

#[tokio::test]
async fn cached_watches_follow_selections_and_version_zero_lists_come_from_the_cache() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    cms.create(&pp, &configmap("a", &[("colour", "red")])).await.unwrap();
    // The first use builds the cache; a resourceVersion=0 list then reflects a later write.
    let _ = cms.list(&ListParams::default().match_any()).await.unwrap();
    cms.create(&pp, &configmap("b", &[("colour", "blue")])).await.unwrap();
    wait_until("a resourceVersion=0 list shows b", within(Duration::from_secs(10)), || {
        let cms = cms.clone();
        async move {
            let names: Vec<String> = cms
                .list(&ListParams::default().match_any().labels("colour"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect();
            if names == ["a", "b"] {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        }
    })
    .await;

    let before = watches_from(&client, "cache").await;
    let from = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut red = cms.watch(&WatchParams::default().labels("colour=red").timeout(10), &from).await.unwrap().boxed();
    let pp2 = PatchParams::default();
    let relabel = |c: &str| Patch::Merge(json!({"metadata": {"labels": {"colour": c}}}));
    cms.patch("a", &pp2, &relabel("blue")).await.unwrap(); // a leaves the selection
    cms.patch("b", &pp2, &relabel("red")).await.unwrap(); // b enters it
    cms.patch("b", &pp2, &Patch::Merge(json!({"data": {"key": "v2"}}))).await.unwrap();
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), red.try_next()).await.unwrap().unwrap().unwrap();
        match event {
            WatchEvent::Added(c) => seen.push(format!("ADDED {}", c.metadata.name.unwrap())),
            WatchEvent::Modified(c) => seen.push(format!("MODIFIED {}", c.metadata.name.unwrap())),
            WatchEvent::Deleted(c) => seen.push(format!("DELETED {}", c.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["DELETED a", "ADDED b", "MODIFIED b", "DELETED b"]);
    assert_eq!(watches_from(&client, "cache").await, before + 1, "the watch was not served from the cache");
}

#[tokio::test]
async fn sigterm_stops_the_server_even_with_a_watch_open() {
    let mut server = ApiProcess::server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    cms.create(&PostParams::default(), &configmap("kept", &[])).await.unwrap();
    let mut stream = cms.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    // The watch is open: its first event (the existing object) has arrived.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.unwrap().unwrap();
    assert!(matches!(first, Some(WatchEvent::Added(_))), "{first:?}");
    let exit = tokio::task::spawn_blocking(move || {
        let exit = server.terminate(Duration::from_secs(15));
        (server, exit)
    });
    let (_server, exit) = exit.await.unwrap();
    let exit = exit.expect("keelson server did not exit within 15 s of SIGTERM");
    assert!(exit.success(), "SIGTERM should end the server cleanly, got {exit}");
}
