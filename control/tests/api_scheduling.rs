//! What a scheduler relies on from the API, through kube-rs: scheduling.k8s.io/v1 PriorityClasses
//! (the built-ins every cluster has, user classes validated as Kubernetes' scheduling validation
//! does, one global default), pods' priority resolved from their class at creation as Kubernetes'
//! Priority admission plugin does and fixed afterwards, and pods/binding, which refuses a node
//! that does not exist (404, the pod untouched) and a pod already bound (409).

mod common;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use common::api::{call, ApiProcess};

/// The `Status` a failed kube-rs call got.
fn status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected a Status from the server, got {other:?}"),
    }
}

/// The fields a 422 names, each with its message.
fn causes(s: &kube::core::Status) -> Vec<(String, String)> {
    s.details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| (c.field.clone(), c.message.clone())).collect())
        .unwrap_or_default()
}

fn class(name: &str, value: i32, global_default: bool) -> PriorityClass {
    PriorityClass {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        value,
        global_default: Some(global_default),
        ..Default::default()
    }
}

fn pod(name: &str, spec: Value) -> Pod {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "busybox:1.36"}]);
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The priority fields of a pod as stored: class name, priority, preemption policy.
fn priority_of(p: &Pod) -> (Option<String>, Option<i32>, Option<String>) {
    let spec = p.spec.as_ref().unwrap();
    (spec.priority_class_name.clone(), spec.priority, spec.preemption_policy.clone())
}

/// Goal: the built-in classes exist on a new cluster with Kubernetes' values, are discoverable
/// under scheduling.k8s.io/v1 (short name pc), cannot be deleted or given another value, and
/// their `system-` prefix is theirs alone.
#[tokio::test]
async fn built_in_classes_exist_and_are_reserved() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let node = classes.get("system-node-critical").await.unwrap();
    let cluster = classes.get("system-cluster-critical").await.unwrap();
    assert_eq!((node.value, cluster.value), (2_000_001_000, 2_000_000_000));
    assert_eq!(node.preemption_policy.as_deref(), Some("PreemptLowerPriority"));
    assert!(cluster.description.unwrap().starts_with("Used for system critical pods"));
    let names: Vec<String> =
        classes.list(&Default::default()).await.unwrap().into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(names, ["system-cluster-critical", "system-node-critical"]);

    let list = call(&client, "GET", "/apis/scheduling.k8s.io/v1", None).await.unwrap();
    let entry = list["resources"].as_array().unwrap().iter().find(|r| r["name"] == "priorityclasses").unwrap().clone();
    assert_eq!(
        (&entry["kind"], &entry["namespaced"], &entry["shortNames"]),
        (&json!("PriorityClass"), &json!(false), &json!(["pc"]))
    );
    let groups = call(&client, "GET", "/apis", None).await.unwrap();
    assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "scheduling.k8s.io"), "{groups}");

    let refused = status(classes.delete("system-node-critical", &DeleteParams::default()).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        "priorityclasses.scheduling.k8s.io \"system-node-critical\" is forbidden: this is a system priority class and \
         cannot be deleted"
    );
    // Deleting the whole collection leaves the built-ins.
    classes.create(&PostParams::default(), &class("doomed", 1, false)).await.unwrap();
    classes.delete_collection(&DeleteParams::default(), &Default::default()).await.unwrap();
    let left: Vec<String> =
        classes.list(&Default::default()).await.unwrap().into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(left, ["system-cluster-critical", "system-node-critical"]);

    let pp = PatchParams::default();
    let revalued = status(classes.patch("system-cluster-critical", &pp, &Patch::Merge(json!({"value": 5}))).await);
    assert_eq!(revalued.code, 422);
    assert!(
        causes(&revalued).contains(&("value".into(), "Forbidden: may not be changed in an update.".into())),
        "{revalued:?}"
    );
    let made_default =
        status(classes.patch("system-cluster-critical", &pp, &Patch::Merge(json!({"globalDefault": true}))).await);
    assert_eq!(made_default.code, 422);
    assert!(made_default.message.contains("reserved for system use only"), "{}", made_default.message);
    assert_eq!(classes.get("system-cluster-critical").await.unwrap().value, 2_000_000_000);

    let mine = status(classes.create(&PostParams::default(), &class("system-mine", 100, false)).await);
    assert_eq!(mine.code, 422);
    assert_eq!(
        mine.message,
        "PriorityClass.scheduling.k8s.io \"system-mine\" is invalid: metadata.name: Forbidden: priority class names \
         with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class"
    );
    let taken =
        status(classes.create(&PostParams::default(), &class("system-node-critical", 2_000_001_000, false)).await);
    assert_eq!((taken.code, taken.reason.as_str()), (409, "AlreadyExists"));
}

/// Goal: a user class is created with its preemption policy defaulted, stays at or below
/// 1,000,000,000, must have a value, and keeps its value and policy for good (what else it has
/// may change), each refusal a 422 naming the field as Kubernetes does.
#[tokio::test]
async fn user_classes_are_validated_and_keep_their_value_and_policy() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let pp = PostParams::default();
    let high = classes.create(&pp, &class("high", 1_000_000_000, false)).await.unwrap();
    assert_eq!(high.preemption_policy.as_deref(), Some("PreemptLowerPriority"));

    let too_high = status(classes.create(&pp, &class("higher", 1_000_000_001, false)).await);
    assert_eq!(too_high.code, 422);
    assert_eq!(
        causes(&too_high),
        [(
            "value".to_string(),
            "Forbidden: maximum allowed value of a user defined priority is 1000000000".to_string()
        )]
    );
    let no_value = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "none"}});
    let missing =
        call(&client, "POST", "/apis/scheduling.k8s.io/v1/priorityclasses", Some(no_value)).await.unwrap_err();
    assert_eq!(missing.code, 422);
    assert_eq!(causes(&missing), [("value".to_string(), "Required value".to_string())]);
    let mut odd = class("odd", 1, false);
    odd.preemption_policy = Some("Sometimes".into());
    let odd = status(classes.create(&pp, &odd).await);
    assert_eq!(causes(&odd)[0].0, "preemptionPolicy");

    let patch = |p: Value| Patch::Merge(p);
    let ppatch = PatchParams::default();
    let revalued = status(classes.patch("high", &ppatch, &patch(json!({"value": 7}))).await);
    assert_eq!(
        revalued.message,
        "PriorityClass.scheduling.k8s.io \"high\" is invalid: value: Forbidden: may not be changed in an update."
    );
    let repolicied = status(classes.patch("high", &ppatch, &patch(json!({"preemptionPolicy": "Never"}))).await);
    assert_eq!(
        causes(&repolicied),
        [("preemptionPolicy".to_string(), "Invalid value: \"Never\": field is immutable".to_string())]
    );
    let described = classes.patch("high", &ppatch, &patch(json!({"description": "batch work"}))).await.unwrap();
    assert_eq!((described.value, described.description.as_deref()), (1_000_000_000, Some("batch work")));
    let negative = classes.create(&pp, &class("background", -10, false)).await.unwrap();
    assert_eq!(negative.value, -10);
}

/// Goal: one class at most is the global default (Kubernetes' Priority admission plugin): a
/// second one, created so or made so later, is refused with a 403 naming the first; the default
/// itself may still be updated, and once it no longer is the default another may become it.
#[tokio::test]
async fn only_one_class_is_the_global_default() {
    let server = ApiProcess::server().await;
    let classes: Api<PriorityClass> = Api::all(server.client());
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    classes.create(&pp, &class("usual", 100, true)).await.unwrap();
    let second = status(classes.create(&pp, &class("other", 200, true)).await);
    assert_eq!((second.code, second.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        second.message,
        "priorityclasses.scheduling.k8s.io \"other\" is forbidden: PriorityClass usual is already marked as default. \
         Only one default can exist"
    );
    classes.create(&pp, &class("other", 200, false)).await.unwrap();
    let made = status(classes.patch("other", &patch, &Patch::Merge(json!({"globalDefault": true}))).await);
    assert_eq!(made.code, 403);
    assert!(!classes.get("other").await.unwrap().global_default.unwrap_or(false));
    classes.patch("usual", &patch, &Patch::Merge(json!({"description": "still the default"}))).await.unwrap();
    classes.patch("usual", &patch, &Patch::Merge(json!({"globalDefault": false}))).await.unwrap();
    let now = classes.patch("other", &patch, &Patch::Merge(json!({"globalDefault": true}))).await.unwrap();
    assert_eq!(now.global_default, Some(true));
}

/// Goal: a new pod's priority comes from its class (the one named, else the global default, else
/// 0), with the class's preemption policy; an unknown class, or a priority or policy given that
/// differs from the class's, is refused with Kubernetes' 403, and nothing is stored.
#[tokio::test]
async fn pods_take_their_priority_from_their_class() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let mut batch = class("batch", 1000, false);
    batch.preemption_policy = Some("Never".into());
    classes.create(&pp, &batch).await.unwrap();

    let plain = pods.create(&pp, &pod("plain", json!({}))).await.unwrap();
    assert_eq!(priority_of(&plain), (None, Some(0), Some("PreemptLowerPriority".into())));
    let batched = pods.create(&pp, &pod("batched", json!({"priorityClassName": "batch"}))).await.unwrap();
    assert_eq!(priority_of(&batched), (Some("batch".into()), Some(1000), Some("Never".into())));
    let critical =
        pods.create(&pp, &pod("critical", json!({"priorityClassName": "system-node-critical"}))).await.unwrap();
    assert_eq!(critical.spec.unwrap().priority, Some(2_000_001_000));
    let same = pods.create(&pp, &pod("same", json!({"priorityClassName": "batch", "priority": 1000}))).await.unwrap();
    assert_eq!(same.spec.unwrap().priority, Some(1000));

    let unknown = status(pods.create(&pp, &pod("lost", json!({"priorityClassName": "nope"}))).await);
    assert_eq!((unknown.code, unknown.reason.as_str()), (403, "Forbidden"));
    assert_eq!(unknown.message, "pods \"lost\" is forbidden: no PriorityClass with name nope was found");
    let mismatched =
        status(pods.create(&pp, &pod("greedy", json!({"priorityClassName": "batch", "priority": 5}))).await);
    assert_eq!(mismatched.code, 403);
    assert_eq!(
        mismatched.message,
        "pods \"greedy\" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority \
         admission controller computed 1000 from the given PriorityClass name"
    );
    let no_class = status(pods.create(&pp, &pod("sneaky", json!({"priority": 7}))).await);
    assert!(
        no_class.message.contains("the integer value of priority (7) must not be provided"),
        "{}",
        no_class.message
    );
    let policy = status(
        pods.create(
            &pp,
            &pod("pushy", json!({"priorityClassName": "batch", "preemptionPolicy": "PreemptLowerPriority"})),
        )
        .await,
    );
    assert_eq!(policy.code, 403);
    assert!(policy
        .message
        .contains("the string value of PreemptionPolicy (PreemptLowerPriority) must not be provided"));
    for refused in ["lost", "greedy", "sneaky", "pushy"] {
        assert_eq!(status(pods.get(refused).await).code, 404, "{refused} was stored");
    }

    // With a global default, a pod naming no class gets it, and its name.
    classes.create(&pp, &class("usual", 50, true)).await.unwrap();
    let defaulted = pods.create(&pp, &pod("defaulted", json!({}))).await.unwrap();
    assert_eq!(priority_of(&defaulted), (Some("usual".into()), Some(50), Some("PreemptLowerPriority".into())));
}

/// Goal: a pod's priority fields cannot change once it exists (Kubernetes' pod update
/// validation), and an update that leaves out the priority and policy admission set keeps them.
#[tokio::test]
async fn a_pods_priority_is_fixed_once_created() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    classes.create(&pp, &class("batch", 1000, false)).await.unwrap();
    classes.create(&pp, &class("other", 10, false)).await.unwrap();
    let created = pods.create(&pp, &pod("p", json!({"priorityClassName": "batch"}))).await.unwrap();

    let mut replaced = created.clone();
    let spec = replaced.spec.as_mut().unwrap();
    (spec.priority, spec.preemption_policy) = (None, None);
    replaced.metadata.labels = Some([("tier".to_string(), "web".to_string())].into());
    let kept = pods.replace("p", &pp, &replaced).await.unwrap();
    assert_eq!(priority_of(&kept), (Some("batch".into()), Some(1000), Some("PreemptLowerPriority".into())));

    let patch = PatchParams::default();
    for change in [json!({"priority": 5}), json!({"priorityClassName": "other"}), json!({"preemptionPolicy": "Never"})]
    {
        let refused = status(pods.patch("p", &patch, &Patch::Merge(json!({"spec": change}))).await);
        assert_eq!(refused.code, 422, "{change}");
        assert!(
            refused
                .message
                .starts_with("Pod \"p\" is invalid: spec: Forbidden: pod updates may not change fields other than"),
            "{}",
            refused.message
        );
    }
    assert_eq!(priority_of(&pods.get("p").await.unwrap()), priority_of(&kept));
}

/// Goal: pods/binding to a node that does not exist is a 404 naming the node, and leaves the pod
/// as it was (unbound, not marked scheduled, same resourceVersion), so that a scheduler retries
/// it; to a node that exists it binds once, and a second binding is a 409.
#[tokio::test]
async fn binding_needs_an_existing_node_and_happens_once() {
    let server = ApiProcess::server().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();
    let created = pods.create(&pp, &pod("p", json!({}))).await.unwrap();
    let binding = |node: &str| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": node}});
    let path = "/api/v1/namespaces/default/pods/p/binding";

    let missing = call(&client, "POST", path, Some(binding("ghost"))).await.unwrap_err();
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "nodes \"ghost\" not found");
    let details = missing.details.as_ref().unwrap();
    assert_eq!((details.kind.as_str(), details.name.as_str(), details.group.as_str()), ("nodes", "ghost", ""));
    let after = pods.get("p").await.unwrap();
    assert_eq!(after.metadata.resource_version, created.metadata.resource_version);
    assert_eq!(after.spec.unwrap().node_name, None);
    assert!(after.status.unwrap().conditions.unwrap_or_default().iter().all(|c| c.type_ != "PodScheduled"));

    nodes.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap()).await.unwrap();
    // What a binding adds to the pod must be what a pod may hold: an annotation that is not a
    // string is refused, and the pod stays as it was.
    let mut odd = binding("n1");
    odd["metadata"]["annotations"] = json!({"note": 1});
    let refused = call(&client, "POST", path, Some(odd)).await.unwrap_err();
    assert_eq!((refused.code, refused.reason.as_str()), (400, "BadRequest"), "{}", refused.message);
    assert_eq!(pods.get("p").await.unwrap().metadata.resource_version, created.metadata.resource_version);
    let mut annotated = binding("n1");
    annotated["metadata"]["annotations"] = json!({"note": "placed"});
    let bound = call(&client, "POST", path, Some(annotated)).await.unwrap();
    assert_eq!((&bound["status"], &bound["code"]), (&json!("Success"), &json!(201)));
    let placed = pods.get("p").await.unwrap();
    assert_eq!(placed.spec.unwrap().node_name.as_deref(), Some("n1"));
    assert_eq!(placed.metadata.annotations.unwrap_or_default().get("note").map(String::as_str), Some("placed"));
    let twice = call(&client, "POST", path, Some(binding("n1"))).await.unwrap_err();
    assert_eq!((twice.code, twice.reason.as_str()), (409, "Conflict"));
    assert!(twice.message.contains("is already assigned to node \"n1\""), "{}", twice.message);
    // An unbound pod that does not exist is still the pod's 404.
    let gone =
        call(&client, "POST", "/api/v1/namespaces/default/pods/absent/binding", Some(binding("n1"))).await.unwrap_err();
    assert_eq!((gone.code, gone.message.as_str()), (404, "pods \"absent\" not found"));
}
