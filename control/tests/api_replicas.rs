//! API replicas are stateless: two `keelson apiserver` processes over one three-member store
//! serve one consistent API (a watch on one sees every write made through the other, in order,
//! with no gap), losing one leaves the other's clients undisturbed, and the same API server runs
//! over a real etcd 3.4.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use common::api::ApiProcess;
use common::{free_ports, Cluster, Options};

/// Writes through one replica while the other watches.
const WRITES: usize = 60;
/// How long one watch event may take to arrive.
const EVENT_WITHIN: Duration = Duration::from_secs(15);

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": name}})).unwrap()
}

/// Reads `n` events from a watch: (type, name, resourceVersion).
async fn next_events(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
    n: usize,
) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(EVENT_WITHIN, stream.try_next())
            .await
            .unwrap_or_else(|_| panic!("no event within {EVENT_WITHIN:?} after {} of {n}", out.len()))
            .expect("the watch failed")
            .expect("the watch ended");
        let (kind, cm) = match event {
            WatchEvent::Added(c) => ("ADDED", c),
            WatchEvent::Modified(c) => ("MODIFIED", c),
            WatchEvent::Deleted(c) => ("DELETED", c),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        };
        let rv = cm.metadata.resource_version.unwrap().parse().unwrap();
        out.push((kind.to_string(), cm.metadata.name.unwrap(), rv));
    }
    out
}

fn assert_in_order(events: &[(String, String, i64)], names: &[String]) {
    let got: Vec<&str> = events.iter().map(|(_, n, _)| n.as_str()).collect();
    let want: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(got, want, "events out of order or missing");
    assert!(events.iter().all(|(k, _, _)| k == "ADDED"), "{events:?}");
    assert!(events.windows(2).all(|w| w[0].2 < w[1].2), "resourceVersions not increasing: {events:?}");
}

#[tokio::test]
async fn two_replicas_serve_one_api_and_survive_each_other() {
    let store = Cluster::start(3, Options::default()).await;
    let endpoints: Vec<String> = store.members.iter().map(|m| m.client_url()).collect();
    let mut a = ApiProcess::apiserver(&endpoints).await;
    let b = ApiProcess::apiserver(&endpoints).await;
    let via_a: Api<ConfigMap> = Api::namespaced(a.client(), "default");
    let via_b: Api<ConfigMap> = Api::namespaced(b.client(), "default");

    let from = via_b.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut watch_b = via_b.watch(&WatchParams::default(), &from).await.unwrap().boxed();
    let names: Vec<String> = (0..WRITES).map(|i| format!("cm-{i:03}")).collect();
    for name in &names {
        via_a.create(&PostParams::default(), &configmap(name)).await.unwrap();
    }
    assert_in_order(&next_events(&mut watch_b, WRITES).await, &names);
    // And B reads what A wrote.
    assert_eq!(via_b.list(&ListParams::default()).await.unwrap().items.len(), WRITES);

    // A crashes; B's open watch and B's clients carry on.
    a.kill();
    assert!(via_a.get("cm-000").await.is_err(), "the killed replica still answers");
    let later: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for name in &later {
        via_b.create(&PostParams::default(), &configmap(name)).await.unwrap();
    }
    assert_in_order(&next_events(&mut watch_b, later.len()).await, &later);
}

/// Goal: replicas allocating from one range at once never hand out one address twice, and a full
/// range is refused with a clear error. The range 10.200.0.0/27 has 29 addresses to give (30
/// hosts less the first, kept for a `kubernetes` service).
#[tokio::test]
async fn replicas_allocating_at_once_never_share_a_cluster_ip() {
    const RANGE_FREE: usize = 29;
    let store = Cluster::start(3, Options::default()).await;
    let endpoints: Vec<String> = store.members.iter().map(|m| m.client_url()).collect();
    let flags = ["--service-cluster-ip-range", "10.200.0.0/27"];
    let a = ApiProcess::apiserver_with(&endpoints, &flags).await;
    let b = ApiProcess::apiserver_with(&endpoints, &flags).await;
    let apis: [Api<Service>; 2] = [Api::namespaced(a.client(), "default"), Api::namespaced(b.client(), "default")];
    let service = |i: usize| -> Service {
        serde_json::from_value(json!({"metadata": {"name": format!("svc-{i:02}")}, "spec": {"ports": [{"port": 80}]}}))
            .unwrap()
    };
    let creates = (0..RANGE_FREE).map(|i| {
        let (api, svc) = (apis[i % 2].clone(), service(i));
        async move { api.create(&PostParams::default(), &svc).await }
    });
    let created = futures::future::join_all(creates).await;
    let mut ips: Vec<String> = created
        .into_iter()
        .map(|r| r.expect("a create within the range's size").spec.unwrap().cluster_ip.unwrap())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), RANGE_FREE, "two services share an address: {ips:?}");
    assert!(!ips.contains(&"10.200.0.1".to_string()), "the kept first address was given out");
    match apis[0].create(&PostParams::default(), &service(RANGE_FREE)).await {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("range 10.200.0.0/27 is full"), "{s:?}"),
        other => panic!("a create beyond the range's size: {other:?}"),
    }
}

#[tokio::test]
async fn the_api_server_runs_over_a_real_etcd() {
    let etcd_bin = std::path::Path::new("/usr/bin/etcd");
    assert!(etcd_bin.is_file(), "/usr/bin/etcd missing: run scripts/setup (Debian's etcd-server)");
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (client, peer) = (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
    let mut etcd = Command::new(etcd_bin)
        .env_clear()
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("e1={peer}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .expect("etcd starts");
    let outcome = async {
        let api = ApiProcess::apiserver(std::slice::from_ref(&client)).await;
        let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
        let from = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
        let mut watch = cms.watch(&WatchParams::default(), &from).await.unwrap().boxed();
        let names: Vec<String> = (0..5).map(|i| format!("on-etcd-{i}")).collect();
        for name in &names {
            cms.create(&PostParams::default(), &configmap(name)).await.unwrap();
        }
        assert_in_order(&next_events(&mut watch, names.len()).await, &names);
        // Debian's etcd (3.4.23) may send a progress notification ahead of a watcher's events
        // (etcd issue 15220): consistent lists come from etcd itself, never from the cache.
        let lists = |source: &'static str| {
            let client = api.client();
            async move {
                common::api::metric(&client, &format!("keelson_apiserver_lists_total{{source=\"{source}\"}}")).await
            }
        };
        let (cached, stored) = (lists("cache").await, lists("store").await);
        assert_eq!(cms.list(&ListParams::default()).await.unwrap().items.len(), names.len());
        assert_eq!((lists("cache").await, lists("store").await), (cached, stored + 1));
        // Stored where Kubernetes' layout puts it, as JSON.
        let mut kv = proto::etcdserverpb::kv_client::KvClient::connect(client.clone()).await.unwrap();
        let got = kv
            .range(proto::etcdserverpb::RangeRequest {
                key: b"/registry/configmaps/default/on-etcd-0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let stored: serde_json::Value = serde_json::from_slice(&got.kvs[0].value).unwrap();
        assert_eq!(stored["data"]["n"], "on-etcd-0");
    }
    .await;
    let _ = etcd.kill();
    let _ = etcd.wait();
    outcome
}
