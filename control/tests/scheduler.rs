//! The scheduler end to end: `keelson server` (or `keelson scheduler` replicas) and hollow
//! agents as real processes, driven with kube-rs and kubectl as a user would.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::api::{ApiProcess, Component};
use common::{wait_until, within};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const SCHEDULED_WITHIN: Duration = Duration::from_secs(30);

fn agent(api: &ApiProcess, name: &str, extra: &[&str]) -> Component {
    let url = api.kubeconfig_arg();
    let mut args = vec!["agent", "--kubeconfig", &url, "--runtime", "hollow"];
    args.extend_from_slice(extra);
    Component::spawn(name, &args)
}

async fn wait_nodes(client: &kube::Client, n: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until(&format!("{n} nodes are registered"), within(SCHEDULED_WITHIN), || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            if list.items.len() >= n {
                Ok(())
            } else {
                Err(format!("{} nodes", list.items.len()))
            }
        }
    })
    .await;
}

async fn create_pod(client: &kube::Client, pod: serde_json::Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(pod).unwrap();
    pods.create(&PostParams::default(), &pod).await.expect("the pod is created")
}

fn cpu_pod(name: &str, cpu: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}
    })
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty())
}

/// Waits until every named pod is bound (and, with `running`, Running); their nodes by name.
async fn wait_bound(client: &kube::Client, names: &[String], running: bool) -> HashMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_until(&format!("{} pods are bound", names.len()), within(SCHEDULED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let mut out = HashMap::new();
            for p in &list.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                if !names.contains(&name) {
                    continue;
                }
                let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                match node_of(p) {
                    Some(n) if !running || phase == "Running" => {
                        out.insert(name, n);
                    }
                    _ => return Err(format!("{name} is not yet bound{}", if running { " and Running" } else { "" })),
                }
            }
            if out.len() == names.len() {
                Ok(out)
            } else {
                Err(format!("{} of {} pods seen", out.len(), names.len()))
            }
        }
    })
    .await
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The pod's PodScheduled=False message once the scheduler gave it one.
async fn unschedulable_message(client: &kube::Client, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_until(&format!("{name} is marked unschedulable"), within(SCHEDULED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.map_err(|e| e.to_string())?;
            if node_of(&p).is_some() {
                return Err("it was scheduled".into());
            }
            let c = p.status.and_then(|s| s.conditions).unwrap_or_default();
            c.iter()
                .find(|c| {
                    c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
                })
                .and_then(|c| c.message.clone())
                .ok_or_else(|| "no PodScheduled=False condition yet".to_string())
        }
    })
    .await
}

async fn events_for(client: &kube::Client, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    events.list(&lp).await.expect("events list").items
}

/// The object's events once one with `reason` is among them (events are written after the change
/// they report, by a recorder of their own).
async fn wait_events(client: &kube::Client, name: &str, reason: &str) -> Vec<Event> {
    wait_until(&format!("a {reason} event for {name}"), within(SCHEDULED_WITHIN), || async move {
        let events = events_for(client, name).await;
        if events.iter().any(|e| e.reason.as_deref() == Some(reason)) {
            Ok(events)
        } else {
            Err(format!("events so far: {events:?}"))
        }
    })
    .await
}

fn kubectl(which: &str, api: &ApiProcess, args: &[&str]) -> String {
    let bin =
        std::env::var(which).unwrap_or_else(|_| panic!("{which} must name a kubectl binary (scripts/test sets it)"));
    let out = std::process::Command::new(bin)
        .args(["--kubeconfig", &api.kubeconfig_arg()])
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fill_nodes_and_a_pod_that_fits_nowhere_waits_for_a_new_node() {
    let api = ApiProcess::server_full(&[]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--hollow-nodes", "2", "--hollow-cpu", "2"]);
    wait_nodes(&client, 2).await;
    let fill = names("fill", 4);
    for n in &fill {
        create_pod(&client, cpu_pod(n, "1")).await;
    }
    let placed = wait_bound(&client, &fill, true).await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for n in placed.values() {
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2],
        "two 1-cpu pods fill each 2-cpu node: {placed:?}"
    );

    create_pod(&client, cpu_pod("waiting", "1")).await;
    let message = unschedulable_message(&client, "waiting").await;
    assert!(message.starts_with("0/2 nodes are available: 2 Insufficient cpu."), "{message}");
    let events = wait_events(&client, "waiting", "FailedScheduling").await;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("FailedScheduling") && e.type_.as_deref() == Some("Warning")),
        "a FailedScheduling event: {events:?}"
    );

    let _more = agent(&api, "agent-2", &["--node-name", "late", "--hollow-cpu", "2"]);
    let placed = wait_bound(&client, &["waiting".to_string()], true).await;
    assert_eq!(placed["waiting"], "late");
    let events = wait_events(&client, "waiting", "Scheduled").await;
    let scheduled: Vec<_> = events.iter().filter(|e| e.reason.as_deref() == Some("Scheduled")).collect();
    assert_eq!(scheduled.len(), 1, "{events:?}");
    assert_eq!(scheduled[0].message.as_deref(), Some("Successfully assigned default/waiting to late"));

    // kubectl, Debian's and the current one, shows where pods run and what nodes hold.
    for which in ["KEELSON_KUBECTL", "KEELSON_KUBECTL_CURRENT"] {
        let wide = kubectl(which, &api, &["get", "pods", "-o", "wide"]);
        assert!(
            wide.lines().any(|l| l.starts_with("waiting ") && l.contains("Running") && l.contains(" late ")),
            "{wide}"
        );
        let describe = kubectl(which, &api, &["describe", "node", "late"]);
        assert!(describe.contains("Allocated resources:"), "{describe}");
        assert!(describe.contains("NodeReady") && describe.contains("Starting kubelet."), "node events: {describe}");
        assert!(describe.lines().any(|l| l.trim_start().starts_with("cpu") && l.contains("1 (50%)")), "{describe}");
        let nodes = kubectl(which, &api, &["get", "nodes"]);
        assert_eq!(nodes.lines().filter(|l| l.contains(" Ready ")).count(), 3, "{nodes}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_allocated_packs_and_least_allocated_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packer
  plugins:
    score:
      disabled: [{name: NodeResourcesBalancedAllocation}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources: [{name: cpu, weight: 1}, {name: memory, weight: 1}]
",
    )
    .unwrap();
    let api = ApiProcess::server_full(&["--scheduler-config", config.to_str().unwrap()]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--hollow-nodes", "4", "--hollow-cpu", "4"]);
    wait_nodes(&client, 4).await;

    let spread = names("spread", 4);
    for n in &spread {
        create_pod(&client, cpu_pod(n, "500m")).await;
        // One at a time, so that each sees the others' requests.
        wait_bound(&client, std::slice::from_ref(n), false).await;
    }
    let placed = wait_bound(&client, &spread, false).await;
    let distinct: std::collections::HashSet<_> = placed.values().collect();
    assert_eq!(distinct.len(), 4, "LeastAllocated spreads over every node: {placed:?}");

    let packed = names("packed", 4);
    for n in &packed {
        let mut pod = cpu_pod(n, "500m");
        pod["spec"]["schedulerName"] = json!("bin-packer");
        create_pod(&client, pod).await;
        wait_bound(&client, std::slice::from_ref(n), false).await;
    }
    let placed = wait_bound(&client, &packed, false).await;
    let distinct: std::collections::HashSet<_> = placed.values().collect();
    assert_eq!(distinct.len(), 1, "MostAllocated packs onto one node: {placed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taints_selectors_affinity_spread_and_anti_affinity() {
    let api = ApiProcess::server_full(&[]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--hollow-nodes", "4", "--hollow-zones", "2"]);
    wait_nodes(&client, 4).await;
    // hollow-0 and hollow-2 are in zone-0, hollow-1 and hollow-3 in zone-1.
    kubectl("KEELSON_KUBECTL_CURRENT", &api, &["taint", "node", "hollow-3", "dedicated=db:NoSchedule"]);

    // Without a toleration nothing lands on the tainted node; with one and a selector, it does.
    let plain = names("plain", 6);
    for n in &plain {
        create_pod(&client, cpu_pod(n, "100m")).await;
    }
    let placed = wait_bound(&client, &plain, false).await;
    assert!(placed.values().all(|n| n != "hollow-3"), "{placed:?}");
    create_pod(
        &client,
        json!({
            "metadata": {"name": "db"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": "hollow-3"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "db"}]
            }
        }),
    )
    .await;
    assert_eq!(wait_bound(&client, &["db".into()], true).await["db"], "hollow-3");

    // Required node affinity by zone.
    create_pod(
        &client,
        json!({
            "metadata": {"name": "zonal"},
            "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-1"]}]}
                ]}}},
                "containers": [{"name": "c", "image": "x"}]
            }
        }),
    )
    .await;
    assert_eq!(wait_bound(&client, &["zonal".into()], false).await["zonal"], "hollow-1");

    // Topology spread: four pods over two zones, at most one apart.
    let spread = names("spread", 4);
    for n in &spread {
        create_pod(
            &client,
            json!({
                "metadata": {"name": n, "labels": {"app": "spread"}},
                "spec": {
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}],
                    "containers": [{"name": "c", "image": "x"}]
                }
            }),
        )
        .await;
    }
    let placed = wait_bound(&client, &spread, false).await;
    let zone1 = placed.values().filter(|n| *n == "hollow-1" || *n == "hollow-3").count();
    assert_eq!(zone1, 2, "two pods per zone: {placed:?}");

    // Anti-affinity by hostname: one per node, and a fourth has nowhere to go (hollow-3 is tainted).
    let solo = |name: &str| {
        json!({
            "metadata": {"name": name, "labels": {"app": "solo"}},
            "spec": {
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "solo"}}}
                ]}},
                "containers": [{"name": "c", "image": "x"}]
            }
        })
    };
    let solos = names("solo", 3);
    for n in &solos {
        create_pod(&client, solo(n)).await;
    }
    let placed = wait_bound(&client, &solos, false).await;
    let distinct: std::collections::HashSet<_> = placed.values().collect();
    assert_eq!(distinct.len(), 3, "{placed:?}");
    create_pod(&client, solo("solo-extra")).await;
    let message = unschedulable_message(&client, "solo-extra").await;
    assert!(message.contains("3 node(s) didn't match pod anti-affinity rules"), "{message}");
    assert!(message.contains("1 node(s) had untolerated taint(s)"), "{message}");

    // A cordoned node takes nothing new until it is uncordoned.
    kubectl("KEELSON_KUBECTL", &api, &["cordon", "hollow-0"]);
    let nodes = kubectl("KEELSON_KUBECTL", &api, &["get", "nodes"]);
    assert!(nodes.lines().any(|l| l.starts_with("hollow-0 ") && l.contains("Ready,SchedulingDisabled")), "{nodes}");
    let cordoned = names("cordoned", 4);
    for n in &cordoned {
        create_pod(&client, cpu_pod(n, "10m")).await;
    }
    let placed = wait_bound(&client, &cordoned, false).await;
    assert!(placed.values().all(|n| n != "hollow-0" && n != "hollow-3"), "{placed:?}");
    kubectl("KEELSON_KUBECTL_CURRENT", &api, &["uncordon", "hollow-0"]);
    let nodes = kubectl("KEELSON_KUBECTL_CURRENT", &api, &["get", "nodes"]);
    assert!(nodes.lines().any(|l| l.starts_with("hollow-0 ") && l.contains(" Ready ")), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_a_lower_one() {
    let api = ApiProcess::server_full(&[]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--node-name", "only", "--hollow-cpu", "2"]);
    wait_nodes(&client, 1).await;
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).unwrap(),
        )
        .await
        .unwrap();
    create_pod(&client, cpu_pod("low", "1500m")).await;
    wait_bound(&client, &["low".into()], true).await;
    let mut high = cpu_pod("high", "1500m");
    high["spec"]["priorityClassName"] = json!("high");
    create_pod(&client, high).await;
    let placed = wait_bound(&client, &["high".into()], true).await;
    assert_eq!(placed["high"], "only");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(pods.get_opt("low").await.unwrap().is_none(), "the lower-priority pod was preempted");
    let events = wait_events(&client, "low", "Preempted").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("Preempted")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_for_another_scheduler_are_left_alone() {
    let api = ApiProcess::server_full(&[]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--hollow-nodes", "1"]);
    wait_nodes(&client, 1).await;
    let mut other = cpu_pod("other", "100m");
    other["spec"]["schedulerName"] = json!("someone-else");
    create_pod(&client, other).await;
    // A pod created after it is scheduled, so the scheduler has seen both.
    create_pod(&client, cpu_pod("mine", "100m")).await;
    wait_bound(&client, &["mine".into()], true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let other = pods.get("other").await.unwrap();
    assert_eq!(node_of(&other), None);
    let conditions = other.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(conditions.is_empty(), "untouched: {conditions:?}");
    assert!(events_for(&client, "other").await.is_empty());
}

#[tokio::test]
async fn a_malformed_scheduler_config_is_refused_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
        "profiles:\n- schedulerName: x\n  plugins:\n    score:\n      enabled: [{name: NodeResourcesFitt}]\n",
    )
    .unwrap();
    let mut s = Component::spawn(
        "scheduler",
        &["scheduler", "--server", "http://127.0.0.1:9", "--config", config.to_str().unwrap()],
    );
    let status = s.wait_exit(Duration::from_secs(20)).expect("the scheduler exits");
    assert!(!status.success());
    let log = s.log_text();
    assert!(log.contains("profiles[0].plugins.score.enabled[0].name") && log.contains("NodeResourcesFitt"), "{log}");
}

/// The identity a scheduler replica runs under, from its log.
fn identity_of(c: &Component) -> Option<String> {
    let log = c.log_text();
    let line = log.lines().find(|l| l.contains("scheduler replica started"))?;
    let at = line.find("identity=")? + "identity=".len();
    Some(line[at..].split_whitespace().next()?.trim_matches('"').to_string())
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .get_opt("kube-scheduler")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// When the lease's holder acquired it, by the lease's own `acquireTime`: what a takeover took is
/// measured by the new leader's write, not by how soon a busy machine lets the test see it.
async fn acquired_at(client: &kube::Client) -> std::time::SystemTime {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get("kube-scheduler").await.expect("the lease is read");
    let at = lease.spec.and_then(|s| s.acquire_time).expect("the lease has an acquireTime");
    std::time::UNIX_EPOCH + Duration::from_micros(at.0.as_microsecond() as u64)
}

/// Starts `n` scheduler replicas and waits until one leads; the replicas and the leader's index.
async fn replicas(api: &ApiProcess, n: usize) -> (Vec<Component>, usize) {
    let url = api.kubeconfig_arg();
    let schedulers: Vec<Component> =
        (0..n).map(|i| Component::spawn(&format!("scheduler-{i}"), &["scheduler", "--kubeconfig", &url])).collect();
    let client = api.client();
    let leader = wait_until("a scheduler replica leads", within(SCHEDULED_WITHIN), || {
        let client = client.clone();
        let ids: Vec<Option<String>> = schedulers.iter().map(identity_of).collect();
        async move {
            let h = holder(&client).await.ok_or("no holder yet")?;
            ids.iter()
                .position(|id| id.as_deref() == Some(h.as_str()))
                .ok_or(format!("holder {h} is none of the replicas yet"))
        }
    })
    .await;
    (schedulers, leader)
}

async fn new_leader(client: &kube::Client, schedulers: &[Component], old: usize, what: &str) -> usize {
    let old_id = identity_of(&schedulers[old]);
    let ids: Vec<Option<String>> = schedulers.iter().map(identity_of).collect();
    wait_until(what, within(SCHEDULED_WITHIN), || {
        let (client, ids, old_id) = (client.clone(), ids.clone(), old_id.clone());
        async move {
            let h = holder(&client).await.ok_or("no holder")?;
            if Some(&h) == old_id.as_ref() {
                return Err("the old leader still holds the lease".into());
            }
            ids.iter().position(|id| id.as_deref() == Some(h.as_str())).ok_or(format!("unknown holder {h}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_hands_over_within_a_second() {
    let api = ApiProcess::server_with(&[]).await;
    let client = api.client();
    let (mut schedulers, leader) = replicas(&api, 2).await;
    let started = std::time::SystemTime::now();
    schedulers[leader].signal("TERM");
    let next = new_leader(&client, &schedulers, leader, "the standby leads after SIGTERM").await;
    let took = acquired_at(&client).await.duration_since(started).unwrap_or_default();
    assert_ne!(next, leader);
    assert!(took < Duration::from_secs(1), "SIGTERM → standby leads took {took:?}");
    assert!(schedulers[leader].wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    eprintln!("SIGTERM takeover: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_binds_nothing_after_resuming() {
    let api = ApiProcess::server_with(&[]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--hollow-nodes", "4"]);
    wait_nodes(&client, 4).await;
    let (schedulers, leader) = replicas(&api, 2).await;
    let before = names("before", 20);
    for n in &before {
        create_pod(&client, cpu_pod(n, "10m")).await;
    }
    wait_bound(&client, &before, false).await;

    schedulers[leader].signal("STOP");
    let next = new_leader(&client, &schedulers, leader, "the standby takes over from the paused leader").await;
    let during = names("during", 20);
    for n in &during {
        create_pod(&client, cpu_pod(n, "10m")).await;
    }
    wait_bound(&client, &during, false).await;
    schedulers[leader].signal("CONT");
    // The resumed replica notices that its leadership lapsed before doing anything else.
    wait_until("the resumed replica stops leading", within(SCHEDULED_WITHIN), || {
        let log = schedulers[leader].log_text();
        async move {
            if log.contains("not leading: scheduling paused") {
                Ok(())
            } else {
                Err("still believes it leads".to_string())
            }
        }
    })
    .await;
    let after = names("after", 20);
    for n in &after {
        create_pod(&client, cpu_pod(n, "10m")).await;
    }
    wait_bound(&client, &after, false).await;
    let old_id = identity_of(&schedulers[leader]).unwrap();
    let new_id = identity_of(&schedulers[next]).unwrap();
    for n in during.iter().chain(&after) {
        let scheduled: Vec<Event> =
            events_for(&client, n).await.into_iter().filter(|e| e.reason.as_deref() == Some("Scheduled")).collect();
        for e in &scheduled {
            assert_eq!(
                e.reporting_instance.as_deref(),
                Some(new_id.as_str()),
                "{n} was bound by {:?}, not the leader",
                e.reporting_instance
            );
        }
        assert!(scheduled.iter().all(|e| e.reporting_instance.as_deref() != Some(old_id.as_str())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_the_leader_killed_mid_run_every_pod_bound_once() {
    const PODS: usize = 2000;
    let api = ApiProcess::server_with(&[]).await;
    let client = api.client();
    let _agent = agent(&api, "agent", &["--hollow-nodes", "40"]);
    wait_nodes(&client, 40).await;
    let (mut schedulers, leader) = replicas(&api, 3).await;

    // Every change of a pod's node is recorded: a pod bound twice would show two nodes.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<String>>>> = Default::default();
    // The watch's errors and restarts, to tell a lost event from a watch that stopped.
    let troubles: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let recorder = {
        let (pods, seen, troubles) = (pods.clone(), seen.clone(), troubles.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::WatchStreamExt;
            // A watch error (a busy machine can time one out) is retried: ending the recorder
            // there would miss every later binding.
            let stream = kube::runtime::watcher(pods, Default::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        troubles.lock().unwrap().push(format!("{:?}: {e}", std::time::SystemTime::now()));
                        continue;
                    }
                };
                if let kube::runtime::watcher::Event::Init = event {
                    troubles.lock().unwrap().push(format!("{:?}: relisted", std::time::SystemTime::now()));
                }
                if let kube::runtime::watcher::Event::Apply(p) | kube::runtime::watcher::Event::InitApply(p) = event {
                    if let Some(node) = node_of(&p) {
                        let mut seen = seen.lock().unwrap();
                        let nodes = seen.entry(p.metadata.name.clone().unwrap_or_default()).or_default();
                        if nodes.last() != Some(&node) {
                            nodes.push(node);
                        }
                    }
                }
            }
        })
    };

    let all = names("load", PODS);
    let creator = {
        let client = client.clone();
        let all = all.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(all)
                .map(|n| {
                    let client = client.clone();
                    async move { create_pod(&client, cpu_pod(&n, "10m")).await }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
        })
    };
    // Kill the leader once a quarter of the pods are bound.
    wait_until("a quarter of the pods are bound", within(Duration::from_secs(120)), || {
        let seen = seen.clone();
        async move {
            let n = seen.lock().unwrap().len();
            if n >= PODS / 4 {
                Ok(())
            } else {
                Err(format!("{n} bound"))
            }
        }
    })
    .await;
    let killed_at = std::time::SystemTime::now();
    schedulers[leader].kill();
    let next = new_leader(&client, &schedulers, leader, "a standby leads after SIGKILL").await;
    let takeover = acquired_at(&client).await.duration_since(killed_at).unwrap_or_default();
    assert_ne!(next, leader);
    creator.await.unwrap();
    let placed = wait_bound(&client, &all, false).await;
    assert_eq!(placed.len(), PODS);
    wait_until("the watch saw every binding", within(SCHEDULED_WITHIN), || {
        let (seen, troubles, placed) = (seen.clone(), troubles.clone(), &placed);
        async move {
            let seen = seen.lock().unwrap();
            if seen.len() >= PODS {
                return Ok(());
            }
            let missing: Vec<_> = placed.keys().filter(|n| !seen.contains_key(*n)).take(5).collect();
            Err(format!("{} seen; not seen: {missing:?}; watch troubles: {:?}", seen.len(), troubles.lock().unwrap()))
        }
    })
    .await;
    recorder.abort();
    let seen = seen.lock().unwrap();
    let rebound: Vec<_> = seen.iter().filter(|(_, nodes)| nodes.len() != 1).collect();
    assert!(rebound.is_empty(), "pods bound more than once: {rebound:?}");
    eprintln!("SIGKILL takeover (kill → a standby holds the lease): {takeover:?}");
    assert!(takeover < Duration::from_secs(5), "SIGKILL → standby leads took {takeover:?}");
}

/// An HTTP proxy to the API at `target` that shows its clients a node `ghost` in every list of
/// nodes although the store has none: a scheduler behind it holds a node that is gone, as one
/// whose watch has not yet delivered a deletion does. Everything else passes through unchanged.
/// Returns the port it listens on; it runs as long as the test's runtime.
async fn stale_nodes_proxy(target: kube::Client, ghost: serde_json::Value) -> u16 {
    use axum::body::{to_bytes, Body};
    use axum::extract::Request;
    use axum::response::Response;
    let forward = move |req: Request| {
        let (target, ghost) = (target.clone(), ghost.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
            let mut out = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
            for (k, v) in &parts.headers {
                if k != http::header::HOST {
                    out = out.header(k, v);
                }
            }
            let out = out.body(kube::client::Body::from(body.to_vec())).expect("a request");
            let response = match target.send(out).await {
                Ok(r) => r,
                Err(e) => return Response::builder().status(502).body(Body::from(e.to_string())).expect("a response"),
            };
            let query = parts.uri.query().unwrap_or("");
            let node_list =
                parts.method == http::Method::GET && parts.uri.path() == "/api/v1/nodes" && !query.contains("watch=");
            let (head, body) = response.into_parts();
            if !node_list {
                return Response::from_parts(head, Body::new(body));
            }
            let bytes = read_body(body).await;
            let mut list: serde_json::Value = serde_json::from_slice(&bytes).expect("a node list");
            if let Some(items) = list["items"].as_array_mut() {
                items.push(ghost);
            }
            let mut head = head;
            head.headers.remove(http::header::CONTENT_LENGTH);
            Response::from_parts(head, Body::from(serde_json::to_vec(&list).expect("JSON")))
        }
    };
    let app = axum::Router::new().fallback(forward);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a proxy port");
    let port = listener.local_addr().expect("a bound port").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The whole body of a response from the API.
async fn read_body(body: kube::client::Body) -> Vec<u8> {
    axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await.expect("the body is read").to_vec()
}

/// Goal: a binding to a node that no longer exists is refused cleanly (404), the scheduler tells
/// the pod why (a FailedScheduling event), keeps it unbound and tries again, and binds it once a
/// node of that name exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_to_a_missing_node_is_refused_and_the_pod_retried() {
    let api = ApiProcess::server_with(&[]).await;
    let client = api.client();
    let node = |with_status: bool| {
        let mut n = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "ghost", "labels": {"kubernetes.io/hostname": "ghost"}}});
        if with_status {
            n["status"] = json!({"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]});
        }
        n
    };
    let port = stale_nodes_proxy(client.clone(), node(true)).await;
    let _scheduler = Component::spawn("scheduler", &["scheduler", "--server", &format!("http://127.0.0.1:{port}")]);
    let mut pod = cpu_pod("p", "100m");
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "ghost"});
    create_pod(&client, pod).await;

    // Refused: the pod says why and stays unbound while the node does not exist.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let message = wait_until("the refused binding is reported on the pod", within(SCHEDULED_WITHIN), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("FailedScheduling") && e.involved_object.name.as_deref() == Some("p")
                })
                .and_then(|e| e.message.clone())
                .ok_or_else(|| "no FailedScheduling event yet".to_string())
        }
    })
    .await;
    assert!(message.starts_with("Binding rejected:") && message.contains("ghost"), "{message}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods.get("p").await.unwrap();
    assert_eq!(node_of(&p), None, "a refused binding leaves the pod unbound");

    // Tried again: once a node of that name exists, the pod is bound to it.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &serde_json::from_value(node(false)).unwrap())
        .await
        .expect("the node is created");
    nodes
        .patch_status(
            "ghost",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"status": node(true)["status"]})),
        )
        .await
        .expect("the node's status is written");
    let bound = wait_bound(&client, &["p".to_string()], false).await;
    assert_eq!(bound["p"], "ghost");
}
