//! `keelson store` as an operator meets it: bad flags refused with a sentence, unreachable peers
//! reported, SIGTERM honoured without losing data.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tonic::Code;

/// How long a refused start may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// Runs `keelson store` with `args` and returns (exit success, stderr), killing it past the deadline.
fn run_store(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("cannot create a temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("store")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start keelson");
    let deadline = within(EXIT_WITHIN);
    loop {
        if let Some(status) = child.try_wait().expect("cannot poll keelson") {
            let mut stderr = String::new();
            use std::io::Read;
            child.stderr.take().expect("stderr is piped").read_to_string(&mut stderr).expect("unreadable stderr");
            return (status.success(), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keelson store {args:?} was expected to refuse to start, but it kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each bad flag stops the member at once, with a message that names the flag.
#[test]
fn bad_flags_are_refused_with_a_sentence() {
    let ports = free_ports(2);
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let base = [
        ("--listen-client-urls", client.as_str()),
        ("--advertise-client-urls", client.as_str()),
        ("--listen-peer-urls", peer.as_str()),
        ("--initial-advertise-peer-urls", peer.as_str()),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("--initial-cluster-state", "bogus")], "--initial-cluster-state must be `new` or `existing`"),
        (
            vec![("--name", "n1"), ("--initial-cluster", "n2=http://127.0.0.1:1")],
            "--initial-cluster has no entry for this member's --name \"n1\"",
        ),
        (vec![("--name", "n1"), ("--initial-cluster", "n1=http://127.0.0.1:1")], "--initial-advertise-peer-urls is"),
        (vec![("--initial-cluster", "n1")], "is not name=url"),
        (vec![("--listen-client-urls", "https://127.0.0.1:2379")], "TLS is not supported yet"),
        (
            vec![("--heartbeat-interval", "100"), ("--election-timeout", "100")],
            "must be at least 5 times --heartbeat-interval",
        ),
        (vec![("--snapshot-count", "many")], "invalid value 'many' for '--snapshot-count"),
    ];
    for (overrides, expected) in cases {
        // Each flag once: a case's value replaces the base one.
        let mut flags: Vec<(&str, &str)> =
            base.iter().copied().filter(|(f, _)| !overrides.iter().any(|(o, _)| o == f)).collect();
        flags.extend(overrides.iter().copied());
        let args: Vec<&str> = flags.iter().flat_map(|(f, v)| [*f, *v]).collect();
        let (ok, stderr) = run_store(&args);
        assert!(!ok, "keelson store {args:?} exited successfully");
        assert!(stderr.contains(expected), "keelson store {args:?}: expected {expected:?} in stderr, got:\n{stderr}");
    }
}

/// A member whose peers are down keeps running, says which peer it cannot reach, and answers
/// writes with etcd's error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peers_are_reported_and_writes_fail_cleanly() {
    let mut c = Cluster::define(3, Options::default());
    c.start_new(0);
    let log = c.members[0].log_path.clone();
    let peer_url = c.members[1].peer_url();
    wait_until("the member reports its peers unreachable", within(Duration::from_secs(20)), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let peer_url = peer_url.clone();
        async move {
            if text.contains("peer unreachable") && text.contains(&peer_url) {
                Ok(())
            } else {
                Err("no such warning yet".to_string())
            }
        }
    })
    .await;
    let mut kv = c.kv(0);
    let status = put(&mut kv, "k", "v").await.expect_err("a put without quorum must fail");
    assert_eq!(status.code(), Code::Unavailable, "{}", fmt_status(&status));
    assert!(
        ["etcdserver: no leader", "etcdserver: request timed out"].contains(&status.message()),
        "unexpected error: {}",
        fmt_status(&status)
    );
    c.assert_running(0);
}

/// SIGTERM stops a member even while a client holds a watch stream open (streams never end on
/// their own; the member closes them after a grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_member_with_a_watch_open() {
    use proto::etcdserverpb::watch_client::WatchClient;
    use proto::etcdserverpb::watch_request::RequestUnion;
    use proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let mut c = Cluster::start(1, Options::default()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest { key: b"w".to_vec(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(c.members[0].client_url()).unwrap().connect().await.unwrap();
    let mut stream =
        WatchClient::new(channel).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let created = stream.message().await.unwrap().expect("a created response");
    assert!(created.created);
    let exit = tokio::task::spawn_blocking(move || {
        let exit = c.terminate(0);
        (c, exit)
    })
    .await
    .unwrap()
    .1;
    assert!(exit.success(), "SIGTERM should end the member cleanly, got {exit}");
    drop(tx);
}

/// SIGTERM stops a member with exit status 0, and what it acknowledged is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_data_survives() {
    let mut c = Cluster::start(1, Options::default()).await;
    let mut kv = c.kv(0);
    let rev = put(&mut kv, "durable", "yes").await.expect("put");
    let exit = c.terminate(0);
    assert!(exit.success(), "SIGTERM should end the member cleanly, got {exit}");
    c.restart(0);
    c.wait_ready().await;
    let mut kv = c.kv(0);
    let resp = range(&mut kv, prefix_range("durable", false)).await.expect("range after restart");
    assert_eq!(resp.kvs.len(), 1, "the acknowledged key is gone after a restart");
    assert_eq!((resp.kvs[0].value.as_slice(), resp.kvs[0].mod_revision), (&b"yes"[..], rev));
}
