//! Debian's kubectl, with its default flags, against two API replicas over a three-member store:
//! apply, get (tables), get -w, describe, label, annotate, scale, patch and delete on namespaces,
//! configmaps, secrets, services and deployments, each output checked. And a current kubectl
//! (1.33), whose `create` commands send protocol buffers, priority classes among them. Needs `KEELSON_KUBECTL` and
//! `KEELSON_KUBECTL_CURRENT` (set by `scripts/test`; `scripts/setup` installs both).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::api::{ApiProcess, Component};
use common::kubectl::{kubectl_binary, Kubectl, TapMkdir, SEED_DEPLOYMENT};
use common::{wait_until, within, Cluster, Options};

/// The words of each line, so that column widths do not matter.
fn table(output: &str) -> Vec<Vec<String>> {
    output.lines().map(|l| l.split_whitespace().map(String::from).collect()).collect()
}

fn row<'a>(rows: &'a [Vec<String>], name: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
}

#[tokio::test]
async fn kubectl_drives_two_replicas_over_a_three_member_store() {
    let store = Cluster::start(3, Options::default()).await;
    let endpoints: Vec<String> = store.members.iter().map(|m| m.client_url()).collect();
    let a = ApiProcess::apiserver(&endpoints).await;
    let b = ApiProcess::apiserver(&endpoints).await;
    // A standalone controller manager empties and finalizes deleted namespaces.
    let _namespaces = Component::spawn(
        "controller-manager",
        &["controller-manager", "--kubeconfig", &b.kubeconfig_arg(), "--controllers", "namespace"],
    );
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(dir.path(), a.kubeconfig());
    let kb = Kubectl::new(&dir.path().join("b").tap_mkdir(), b.kubeconfig());

    // Namespaces.
    assert_eq!(k.run(&["create", "namespace", "team"]).trim(), "namespace/team created");
    let ns = table(&kb.run(&["get", "namespace", "team"]));
    assert_eq!(ns[0], ["NAME", "STATUS", "AGE"]);
    assert_eq!(&row(&ns, "team")[..2], ["team", "Active"]);

    // A Deployment applied as users type it, read through the other replica.
    let applied = k.run_with_input(&["apply", "-n", "team", "-f", "-"], Some(SEED_DEPLOYMENT));
    assert_eq!(applied.trim(), "deployment.apps/nginx-deployment created");
    let deployments = table(&kb.run(&["get", "deployments", "-n", "team"]));
    assert_eq!(deployments[0], ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert_eq!(&row(&deployments, "nginx-deployment")[..4], ["nginx-deployment", "0/3", "0", "0"]);
    let again = k.run_with_input(&["apply", "-n", "team", "-f", "-"], Some(SEED_DEPLOYMENT));
    assert_eq!(again.trim(), "deployment.apps/nginx-deployment unchanged");
    let newer = SEED_DEPLOYMENT.replace("nginx:1.14.2", "nginx:1.16.1");
    let configured = k.run_with_input(&["apply", "-n", "team", "-f", "-"], Some(&newer));
    assert_eq!(configured.trim(), "deployment.apps/nginx-deployment configured");
    let image_and_generation = kb.run(&[
        "get",
        "deploy",
        "nginx-deployment",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.metadata.generation}",
    ]);
    assert_eq!(image_and_generation, "nginx:1.16.1 2");

    // label, annotate, scale, an edit-style patch.
    assert_eq!(
        k.run(&["label", "deploy", "nginx-deployment", "tier=web", "-n", "team"]).trim(),
        "deployment.apps/nginx-deployment labeled"
    );
    assert_eq!(
        k.run(&["annotate", "deploy", "nginx-deployment", "note=hello", "-n", "team"]).trim(),
        "deployment.apps/nginx-deployment annotated"
    );
    assert_eq!(
        k.run(&["scale", "deploy", "nginx-deployment", "--replicas=5", "-n", "team"]).trim(),
        "deployment.apps/nginx-deployment scaled"
    );
    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.17"}]}}}}"#;
    assert_eq!(
        k.run(&["patch", "deploy", "nginx-deployment", "-n", "team", "-p", patch]).trim(),
        "deployment.apps/nginx-deployment patched"
    );
    let selected =
        kb.run(&["get", "deploy", "-n", "team", "-l", "tier=web", "-o", "jsonpath={.items[*].spec.replicas}"]);
    assert_eq!(selected, "5");
    let wide = table(&kb.run(&["get", "deploy", "nginx-deployment", "-n", "team", "-o", "wide"]));
    assert_eq!(&row(&wide, "nginx-deployment")[5..], ["nginx", "nginx:1.17", "app=nginx"]);
    let described = kb.run(&["describe", "deployment", "nginx-deployment", "-n", "team"]);
    for expected in ["Name:", "nginx-deployment", "tier=web", "note: hello", "5 desired", "nginx:1.17", "Selector:"] {
        assert!(described.contains(expected), "describe lacks {expected:?}:\n{described}");
    }

    // ConfigMaps, Secrets, Services.
    assert_eq!(
        k.run(&["create", "configmap", "cfg", "--from-literal=a=1", "--from-literal=b=2", "-n", "team"]).trim(),
        "configmap/cfg created"
    );
    let cms = table(&kb.run(&["get", "configmaps", "-n", "team"]));
    assert_eq!(cms[0], ["NAME", "DATA", "AGE"]);
    assert_eq!(&row(&cms, "cfg")[..2], ["cfg", "2"]);
    assert_eq!(
        k.run(&["create", "secret", "generic", "s", "--from-literal=p=x", "-n", "team"]).trim(),
        "secret/s created"
    );
    let secrets = table(&kb.run(&["get", "secrets", "-n", "team"]));
    assert_eq!(&row(&secrets, "s")[..3], ["s", "Opaque", "1"]);
    assert_eq!(kb.run(&["get", "secret", "s", "-n", "team", "-o", "jsonpath={.data.p}"]), "eA==");
    assert_eq!(
        k.run(&["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "team"]).trim(),
        "service/web created"
    );
    let services = table(&kb.run(&["get", "services", "-n", "team"]));
    assert_eq!(services[0], ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    assert_eq!(&row(&services, "web")[..2], ["web", "ClusterIP"]);
    let ip: std::net::Ipv4Addr = row(&services, "web")[2].parse().expect("a cluster IP was allocated");
    let o = ip.octets();
    assert!(o[0] == 10 && (96..112).contains(&o[1]), "outside the default range 10.96.0.0/12: {ip}");
    assert_eq!(row(&services, "web")[4], "80/TCP");

    // label, annotate and describe on the other kinds too.
    assert_eq!(k.run(&["label", "namespace", "team", "stage=test"]).trim(), "namespace/team labeled");
    assert_eq!(k.run(&["label", "configmap", "cfg", "env=prod", "-n", "team"]).trim(), "configmap/cfg labeled");
    assert_eq!(k.run(&["annotate", "service", "web", "owner=me", "-n", "team"]).trim(), "service/web annotated");
    assert_eq!(k.run(&["annotate", "secret", "s", "kept=yes", "-n", "team"]).trim(), "secret/s annotated");
    let describes: [(&[&str], &[&str]); 4] = [
        (&["describe", "namespace", "team"], &["Name:", "team", "stage=test", "Active"]),
        (&["describe", "configmap", "cfg", "-n", "team"], &["env=prod", "Data", "a:"]),
        (&["describe", "service", "web", "-n", "team"], &["owner: me", "ClusterIP", "8080/TCP"]),
        (&["describe", "secret", "s", "-n", "team"], &["kept: yes", "Opaque", "p:  1 bytes"]),
    ];
    for (args, expected) in describes {
        let out = kb.run(args);
        for e in expected {
            assert!(out.contains(e), "{args:?} lacks {e:?}:\n{out}");
        }
    }

    // get -w on one replica sees a configmap created through the other.
    let mut watch = kb.command(&["get", "configmaps", "-n", "team", "-w"]);
    let mut watch = watch.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (out, lines) = (watch.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let seen = |name: &'static str| {
        let lines = lines.clone();
        move || {
            let lines = lines.clone();
            async move {
                let got = lines.lock().unwrap().clone();
                if got.iter().any(|l| l.split_whitespace().next() == Some(name)) {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            }
        }
    };
    wait_until("get -w lists the existing configmap", within(Duration::from_secs(20)), seen("cfg")).await;
    k.run(&["create", "configmap", "later", "--from-literal=c=3", "-n", "team"]);
    wait_until("get -w shows the new configmap", within(Duration::from_secs(20)), seen("later")).await;
    let _ = watch.kill();
    let _ = watch.wait();
    reader.join().unwrap();

    // Deletion: a configmap, the deployment, then the namespace with what is left in it.
    assert_eq!(k.run(&["delete", "configmap", "later", "-n", "team"]).trim(), "configmap \"later\" deleted");
    assert_eq!(
        k.run(&["delete", "deploy", "nginx-deployment", "-n", "team"]).trim(),
        "deployment.apps \"nginx-deployment\" deleted"
    );
    assert_eq!(k.run(&["delete", "namespace", "team"]).trim(), "namespace \"team\" deleted");
    let left = kb.run(&["get", "configmaps,secrets,services,deployments", "-n", "team", "-o", "name"]);
    assert_eq!(left.trim(), "", "left in the deleted namespace: {left}");
    let namespaces = table(&kb.run(&["get", "namespaces"]));
    assert!(namespaces.iter().all(|r| r[0] != "team"), "{namespaces:?}");
    drop(store);
}

/// Goal: a current kubectl (1.33), whose `create` commands encode objects as protocol buffers,
/// creates and changes objects with its default flags, and what it created reads back as sent.
#[tokio::test]
async fn a_current_kubectl_creates_objects_it_sends_as_protocol_buffers() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    let created = |args: &[&str], what: &str| assert_eq!(k.run(args).trim(), format!("{what} created"));
    created(&["create", "namespace", "pb"], "namespace/pb");
    let n = ["-n", "pb"];
    created(&[&["create", "configmap", "cfg", "--from-literal=greeting=hello"][..], &n].concat(), "configmap/cfg");
    created(&[&["create", "secret", "generic", "s", "--from-literal=p=x"][..], &n].concat(), "secret/s");
    created(&[&["create", "serviceaccount", "robot"][..], &n].concat(), "serviceaccount/robot");
    created(
        &[&["create", "deployment", "web", "--image=nginx:1.14.2", "--replicas=2", "--port=80"][..], &n].concat(),
        "deployment.apps/web",
    );
    created(&[&["create", "service", "nodeport", "np", "--tcp=80:8080"][..], &n].concat(), "service/np");
    let exposed = k.run(&[&["expose", "deployment", "web", "--port=81", "--name=web"][..], &n].concat());
    assert_eq!(exposed.trim(), "service/web exposed");
    assert_eq!(
        k.run(&[&["scale", "deployment", "web", "--replicas=3"][..], &n].concat()).trim(),
        "deployment.apps/web scaled"
    );
    let jsonpath =
        |kind: &str, path: &str| k.run(&[&["get", kind, "-o", &format!("jsonpath={path}")][..], &n].concat());
    assert_eq!(jsonpath("configmap/cfg", "{.data.greeting}"), "hello");
    assert_eq!(jsonpath("secret/s", "{.data.p}"), "eA==");
    assert_eq!(
        jsonpath("deployment/web", "{.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.strategy.type}"),
        "3 nginx:1.14.2 RollingUpdate"
    );
    assert_eq!(jsonpath("deployment/web", "{.spec.template.spec.containers[0].ports[0].containerPort}"), "80");
    let services = table(&k.run(&[&["get", "services"][..], &n].concat()));
    let np = row(&services, "np");
    assert_eq!(np[1], "NodePort");
    let node_port: u16 = np[4].strip_prefix("80:").and_then(|p| p.strip_suffix("/TCP")).unwrap().parse().unwrap();
    assert!((30000..=32767).contains(&node_port), "{np:?}");
    assert_eq!(&row(&services, "web")[4], "81/TCP");
    assert_eq!(jsonpath("service/web", "{.spec.selector.app}"), "web");
}

/// Goal: kubectl (1.33) creates a priority class (sent as protocol buffers) and lists classes,
/// the built-ins included, with Kubernetes' columns, by plural and by short name.
#[tokio::test]
async fn kubectl_creates_and_lists_priority_classes() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    let created = k.run(&["create", "priorityclass", "batch", "--value=1000", "--preemption-policy=Never"]);
    assert_eq!(created.trim(), "priorityclass.scheduling.k8s.io/batch created");
    k.run(&["create", "priorityclass", "usual", "--value=0", "--global-default", "--description=most pods"]);
    let classes = table(&k.run(&["get", "priorityclasses"]));
    assert_eq!(classes[0], ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"]);
    let without_age = |r: &[String]| [&r[..3], &r[4..]].concat();
    assert_eq!(without_age(row(&classes, "batch")), ["batch", "1000", "false", "Never"]);
    assert_eq!(without_age(row(&classes, "usual")), ["usual", "0", "true", "PreemptLowerPriority"]);
    assert_eq!(
        without_age(row(&classes, "system-node-critical")),
        ["system-node-critical", "2000001000", "false", "PreemptLowerPriority"]
    );
    assert_eq!(row(&classes, "system-cluster-critical")[1], "2000000000");
    let short = table(&k.run(&["get", "pc", "batch", "--no-headers"]));
    assert_eq!(short.len(), 1);
    let (ok, _, err) = k.try_run(&["create", "priorityclass", "second", "--value=1", "--global-default"], None);
    assert!(!ok && err.contains("PriorityClass usual is already marked as default"), "{err}");
}

/// `kubectl apply --server-side` (kubectl 1.33): creates, re-applies without a change, is refused
/// over a field another manager set (the conflict named), forces it, and takes over an object
/// kubectl applied client-side before (kubectl migrates the client-side manager's fields, and the
/// fields the new configuration drops are removed).
#[tokio::test]
async fn kubectl_applies_server_side_with_conflicts_and_the_client_side_upgrade() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    let ssa = |manifest: &str, extra: &[&str]| {
        k.try_run(&[&["apply", "--server-side", "-f", "-"][..], extra].concat(), Some(manifest))
    };
    let (ok, out, err) = ssa(SEED_DEPLOYMENT, &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deployment.apps/nginx-deployment serverside-applied");
    let version = || k.run(&["get", "deployment", "nginx-deployment", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let before = version();
    assert!(ssa(SEED_DEPLOYMENT, &[]).0);
    assert_eq!(version(), before, "an unchanged configuration writes nothing");
    let managers = k.run(&[
        "get",
        "deployment",
        "nginx-deployment",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}/{.metadata.managedFields[*].operation}",
    ]);
    assert_eq!(managers, "kubectl/Apply");

    k.run(&["scale", "deployment", "nginx-deployment", "--replicas=5"]);
    let (ok, _, err) = ssa(SEED_DEPLOYMENT, &[]);
    assert!(!ok, "a conflicting apply fails");
    assert!(err.contains("Apply failed with 1 conflict") && err.contains(".spec.replicas"), "{err}");
    let (ok, _, err) = ssa(SEED_DEPLOYMENT, &["--force-conflicts"]);
    assert!(ok, "{err}");
    let replicas = k.run(&["get", "deployment", "nginx-deployment", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "3");

    // Client-side apply first, then server-side with a field left out: it goes.
    let csa = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    k.run_with_input(&["apply", "-f", "-"], Some(csa));
    let (ok, _, err) = ssa(&csa.replace("  b: \"2\"\n", "  c: \"3\"\n"), &[]);
    assert!(ok, "{err}");
    let data = k.run(&["get", "configmap", "settings", "-o", "jsonpath={.data}"]);
    assert_eq!(data, r#"{"a":"1","c":"3"}"#);
}
