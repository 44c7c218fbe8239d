//! Multi-member tests of `keelson store` with real processes: replication, leader failure,
//! catch-up through a snapshot, membership changes under load, etcd errors for bad input, and
//! behaviour without quorum. Every member runs as its own `keelson store` process on free ports,
//! with `--heartbeat-interval 50 --election-timeout 500`; clients speak etcd's v3 gRPC API.
//! Member logs are printed when a test fails.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use proto::etcdserverpb::request_op::Request as Op;
use proto::etcdserverpb::{
    CompactionRequest, Member, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use tonic::Code;

/// How long a new leader may take after the old one dies: 10 election timeouts.
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(10);
/// How long writes may take to flow again after a failure or a membership change.
const WRITES_RESUME_WITHIN: Duration = Duration::from_secs(15);
/// How long a restarted or new member may take to catch up.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(45);

/// The head revision and the keys under `prefix` that member `i` serves locally (serializable).
async fn local_view(c: &Cluster, i: usize, prefix: &str) -> Result<(i64, Snapshot), String> {
    let resp = range(&mut c.kv(i), prefix_range(prefix, true))
        .await
        .map_err(|s| format!("{}: serializable read: {}", c.members[i].name, fmt_status(&s)))?;
    let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
    Ok((revision, snapshot_of(&resp)))
}

/// The head revision a linearizable read through member `i` returns.
async fn linearizable_head(c: &Cluster, i: usize) -> Result<i64, String> {
    let resp = range(&mut c.kv(i), RangeRequest { key: b"\0".to_vec(), count_only: true, ..Default::default() })
        .await
        .map_err(|s| format!("{}: linearizable read: {}", c.members[i].name, fmt_status(&s)))?;
    Ok(resp.header.map(|h| h.revision).unwrap_or(0))
}

/// Waits until every member in `members` serves, from its local state, the same head revision
/// and the same keys under `prefix` as a linearizable read; returns that view.
async fn wait_converged(c: &Cluster, members: &[usize], prefix: &str, deadline: Instant) -> (i64, Snapshot) {
    let what = format!("members {} serve the same data under {prefix}", names(c, members));
    wait_until(&what, deadline, move || async move {
        let head = linearizable_head(c, members[0]).await?;
        let (rev0, view0) = local_view(c, members[0], prefix).await?;
        if rev0 != head {
            return Err(format!("{} is at revision {rev0}, linearizable head is {head}", c.members[members[0]].name));
        }
        for &i in &members[1..] {
            let (rev, view) = local_view(c, i, prefix).await?;
            if rev != rev0 {
                return Err(format!(
                    "{} is at revision {rev}, {} at {rev0}",
                    c.members[i].name, c.members[members[0]].name
                ));
            }
            if view != view0 {
                return Err(format!(
                    "{} and {} differ under {prefix} at revision {rev}",
                    c.members[i].name, c.members[members[0]].name
                ));
            }
        }
        Ok((rev0, view0))
    })
    .await
}

fn names(c: &Cluster, members: &[usize]) -> String {
    members.iter().map(|&i| c.members[i].name.as_str()).collect::<Vec<_>>().join(",")
}

/// Goal: every write acknowledged by any member is applied on every member, in the same order:
/// 100 puts sent round-robin through the three members all become visible to serializable
/// (local) reads on each member, with identical mod_revisions, values and versions everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_to_every_member() {
    let c = Cluster::start(3, Options::default()).await;
    let mut acked_revisions = BTreeSet::new();
    for k in 0..100usize {
        let via = k % 3;
        let key = format!("rep/{k:03}");
        let rev = put(&mut c.kv(via), &key, &format!("value-{k}"))
            .await
            .unwrap_or_else(|s| panic!("put {key} through {} failed: {}", c.members[via].name, fmt_status(&s)));
        assert!(acked_revisions.insert(rev), "two puts were acknowledged with the same revision {rev}");
    }

    let c = &c;
    let mut views = Vec::new();
    for i in 0..3 {
        let what = format!("{} serves all 100 keys from its local state", c.members[i].name);
        let view = wait_until(&what, within(CATCH_UP_WITHIN), move || async move {
            let (_, view) = local_view(c, i, "rep/").await?;
            if view.len() == 100 {
                Ok(view)
            } else {
                Err(format!("{} keys", view.len()))
            }
        })
        .await;
        views.push(view);
    }
    for i in 1..3 {
        assert_eq!(
            views[i], views[0],
            "{} and {} disagree on the replicated keys",
            c.members[i].name, c.members[0].name
        );
    }
    let mod_revisions: BTreeSet<i64> = views[0].values().map(|e| e.1).collect();
    assert_eq!(mod_revisions, acked_revisions, "the mod_revisions served differ from the revisions acknowledged");
    for (k, (value, mod_rev, create_rev, version)) in &views[0] {
        let n: usize = k["rep/".len()..].parse().unwrap();
        assert_eq!(value, &format!("value-{n}"), "{k} has the wrong value");
        assert_eq!((create_rev, version), (mod_rev, &1), "{k} was written once");
    }
}

/// Goal: losing the leader to SIGKILL costs availability for a few election timeouts only, and
/// no acknowledged write. A client keeps writing through a follower; the leader is killed; both
/// survivors must agree on a new leader within 10 s and writes must be acknowledged again; the
/// killed member, restarted with its original flags and data directory, must catch up to the same
/// head revision; finally a linearizable read returns every acknowledged key with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_elects_a_new_leader_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, Options::default()).await;
    let old_leader = c.leader_index(&[0, 1, 2], within(READY_WITHIN)).await;
    let old_leader_id = c.members[old_leader].id.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    let via = survivors[0];

    let writer = Writer::spawn(c.channel(via), "w");
    writer.wait_for_progress(20, within(WRITES_RESUME_WITHIN), "before the failure").await;

    c.kill(old_leader);
    let killed_at = Instant::now();
    let survivors_ref = &survivors;
    let cref = &c;
    let new_leader_id =
        wait_until("the survivors agree on a new leader", killed_at + NEW_LEADER_WITHIN, move || async move {
            let l = cref.agreed_leader(survivors_ref).await?;
            if l == old_leader_id {
                Err(format!("survivors still follow the killed leader {l:x}"))
            } else {
                Ok(l)
            }
        })
        .await;
    let elected_after = killed_at.elapsed();
    assert!(
        survivors.iter().any(|&i| c.members[i].id == Some(new_leader_id)),
        "the new leader {new_leader_id:x} is not a survivor"
    );
    eprintln!("new leader {new_leader_id:x} agreed {elected_after:?} after the SIGKILL");
    writer.wait_for_progress(20, within(WRITES_RESUME_WITHIN), "after the new election").await;

    c.restart(old_leader);
    let restarted_id = c.learn_id(old_leader, within(CATCH_UP_WITHIN)).await;
    assert_eq!(restarted_id, old_leader_id, "the restarted member came back with another ID");
    writer.wait_for_progress(20, within(WRITES_RESUME_WITHIN), "while the old leader restarts").await;
    let report = writer.stop().await;
    eprintln!(
        "writer: {} acknowledged, {} failed (last error: {})",
        report.acked.len(),
        report.failures,
        report.last_error
    );

    let (head, view) =
        wait_converged(&c, &[survivors[0], survivors[1], old_leader], "w/", within(CATCH_UP_WITHIN)).await;
    assert!(head > 0);
    assert!(
        view.len() >= report.acked.len(),
        "fewer keys ({}) than acknowledged writes ({})",
        view.len(),
        report.acked.len()
    );
    let list = c.member_list(old_leader).await.expect("MemberList on the restarted member");
    assert_eq!(list.len(), 3, "the restarted member sees another membership: {list:?}");
    assert_acked_present(&mut c.kv(old_leader), "w", &report.acked, "the restarted member").await;
    assert_acked_present(&mut c.kv(via), "w", &report.acked, "the writer's member").await;
}

/// Goal: a member that was down while the leader compacted its log past the member's position
/// catches up through a snapshot. With `--snapshot-count 50 --snapshot-catchup-entries 10`, a
/// follower is SIGKILLed, 500 keys are written, and the follower is restarted: it must serve the
/// same data at the same revision as the others, and its log must say it installed a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_down_while_log_purged_catches_up_through_snapshot() {
    let mut c = Cluster::start(3, Options { snapshot_count: 50, snapshot_catchup_entries: 10 }).await;
    let leader = c.leader_index(&[0, 1, 2], within(READY_WITHIN)).await;
    let down = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != down).unwrap();
    // Something the follower has before it goes down.
    put(&mut c.kv(leader), "snap/before", "x").await.expect("first put");
    wait_converged(&c, &[leader, down, other], "snap/", within(CATCH_UP_WITHIN)).await;

    c.kill(down);
    const KEYS: usize = 500;
    const WRITERS: usize = 4;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut kv = c.kv(if w % 2 == 0 { leader } else { other });
        tasks.push(tokio::spawn(async move {
            for k in (w..KEYS).step_by(WRITERS) {
                let key = format!("snap/{k:04}");
                put(&mut kv, &key, &format!("v{k}")).await.map_err(|s| format!("put {key}: {}", fmt_status(&s)))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.expect("writer task panicked").expect("a put failed while one follower was down");
    }
    // The leader has compacted its log well past what the stopped follower has.
    let leader_log = file_since(&c.members[leader].log_path, 0);
    assert!(
        leader_log.contains("built snapshot"),
        "the leader never built a snapshot after {KEYS} writes with --snapshot-count 50"
    );

    let log_offset = file_len(&c.members[down].log_path);
    c.restart(down);
    let (_, view) = wait_converged(&c, &[leader, other, down], "snap/", within(CATCH_UP_WITHIN)).await;
    assert_eq!(view.len(), KEYS + 1, "the converged view does not hold every key");
    for k in 0..KEYS {
        assert_eq!(view.get(&format!("snap/{k:04}")).map(|e| e.0.as_str()), Some(format!("v{k}").as_str()));
    }
    let log = file_since(&c.members[down].log_path, log_offset);
    assert!(
        log.contains("installed snapshot"),
        "{} caught up without installing a snapshot; its log since the restart:\n{}",
        c.members[down].name,
        log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );

    // The leader has purged its own log: it must start again from what it kept, and so must
    // the member that caught up through the snapshot.
    for i in [leader, down] {
        c.kill(i);
        c.restart(i);
        c.wait_ready().await;
    }
    put(&mut c.kv(other), "snap/after", "y").await.expect("a put after the restarts");
    let (_, view) = wait_converged(&c, &[leader, other, down], "snap/", within(CATCH_UP_WITHIN)).await;
    assert_eq!(view.len(), KEYS + 2, "the restarted members lost keys");
}

/// Goal: a follower far behind catches up over a link too slow for a whole AppendEntries within
/// the heartbeat interval openraft allows each one (32 entries of 256 KiB: 8 MiB, half a second
/// at 16 MB/s, against 50 ms). Every member is reached through a proxy passing 16 MB/s towards
/// it; one is killed, 64 MiB are written, and it restarts and must hold every key.
/// `KEELSON_SLOW_LINK_CATCHUP_MIB` writes more (the 500 MiB demonstration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_slow_link_catches_up() {
    const LINK_BYTES_PER_SECOND: usize = 16 * 1024 * 1024;
    const VALUE_BYTES: usize = 256 * 1024;
    let mib: usize = std::env::var("KEELSON_SLOW_LINK_CATCHUP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let keys = mib * 1024 * 1024 / VALUE_BYTES;
    // No snapshot: the follower must be sent the log itself.
    let mut c = Cluster::define(3, Options { snapshot_count: 1_000_000, snapshot_catchup_entries: 1_000_000 });
    for i in 0..3 {
        c.members[i].advertised_peer_port = Some(throttled_proxy(c.members[i].peer_port, LINK_BYTES_PER_SECOND).await);
    }
    for i in 0..3 {
        c.start_new(i);
    }
    c.wait_ready().await;
    let leader = c.leader_index(&[0, 1, 2], within(READY_WITHIN)).await;
    let down = (0..3).find(|&i| i != leader).unwrap();
    c.kill(down);
    let value = "v".repeat(VALUE_BYTES);
    let started = Instant::now();
    const WRITERS: usize = 8;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (mut kv, value) = (c.kv(leader), value.clone());
        tasks.push(tokio::spawn(async move {
            for k in (w..keys).step_by(WRITERS) {
                let key = format!("slow/{k:06}");
                put(&mut kv, &key, &value).await.map_err(|s| format!("put {key}: {}", fmt_status(&s)))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.expect("writer task panicked").expect("a put failed while one follower was down");
    }
    let written = started.elapsed();
    let restarted = Instant::now();
    c.restart(down);
    // An eighth of the link's speed at the least, besides the usual catch-up allowance.
    let deadline = within(CATCH_UP_WITHIN + Duration::from_secs((mib / 2) as u64));
    let head = linearizable_head(&c, leader).await.expect("the leader answers");
    // Keys only: the values are megabytes, and the members hold the same revisions or not.
    let what = format!("{} serves revision {head} with all {keys} keys", c.members[down].name);
    let c = &c;
    wait_until(&what, deadline, move || async move {
        let req = RangeRequest { keys_only: true, ..prefix_range("slow/", true) };
        let resp = range(&mut c.kv(down), req).await.map_err(|s| fmt_status(&s))?;
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        match (revision >= head, resp.kvs.len()) {
            (true, n) if n == keys => Ok(()),
            (_, n) => Err(format!("at revision {revision} with {n} keys")),
        }
    })
    .await;
    eprintln!(
        "{mib} MiB written in {:.1} s; {} caught up over a {} MB/s link in {:.1} s",
        written.as_secs_f64(),
        c.members[down].name,
        LINK_BYTES_PER_SECOND / (1024 * 1024),
        restarted.elapsed().as_secs_f64()
    );
}

/// Goal: membership changes (add a voter, remove a voter, add a learner and promote it) work
/// while a client keeps writing, and lose no acknowledged write. Each new member is added with
/// MemberAdd, started with `--initial-cluster-state existing`, must publish its name and catch up;
/// the member removed is the current leader (the harder case: the cluster must elect another
/// leader among the remaining members), and it must vanish from MemberList; a learner is promoted once in sync (promote is
/// retried while it answers "not in sync"); writes continue after each step.
/// Adds member `idx` through member `via` and records the ID the cluster gave it.
async fn add_member(c: &mut Cluster, via: usize, idx: usize, is_learner: bool) -> Member {
    let name = c.members[idx].name.clone();
    let resp = c
        .cluster_client(via)
        .member_add(MemberAddRequest { peer_ur_ls: vec![c.members[idx].peer_url()], is_learner })
        .await
        .unwrap_or_else(|s| panic!("MemberAdd {name} (learner: {is_learner}): {}", fmt_status(&s)))
        .into_inner();
    let added = resp.member.expect("MemberAdd returns the member");
    assert!(added.is_learner == is_learner && added.id != 0, "MemberAdd returned {added:?}");
    assert!(resp.members.iter().any(|m| m.id == added.id), "MemberAdd's member list lacks the new member");
    c.members[idx].id = Some(added.id);
    added
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_while_a_client_writes() {
    let mut c = Cluster::start(3, Options::default()).await;
    let leader = c.leader_index(&[0, 1, 2], within(READY_WITHIN)).await;
    // The client talks to a follower: that member stays; the leader is the one removed later.
    let via = (0..3).find(|&i| i != leader).unwrap();
    let writer = Writer::spawn(c.channel(via), "m");
    writer.wait_for_progress(10, within(WRITES_RESUME_WITHIN), "before any change").await;

    // 1. Add a voter, then start it.
    let n4 = c.define_new_member("n4");
    add_member(&mut c, via, n4, false).await;
    c.start_joining(n4, &[0, 1, 2, n4]);
    wait_started(&c, via, n4, false).await;
    wait_caught_up(&c, via, n4).await;
    writer.wait_for_progress(10, within(WRITES_RESUME_WITHIN), "after adding n4").await;

    // 2. Remove the leader (an original member, not the writer's).
    let voters = [0, 1, 2, n4];
    let mut removed = c.leader_index(&voters, within(NEW_LEADER_WITHIN)).await;
    if removed == via || removed == n4 {
        // Leadership moved while n4 joined; any other original member will do.
        removed = (0..3).find(|&i| i != via).unwrap();
    }
    let removed_id = c.members[removed].id.unwrap();
    let resp = c
        .cluster_client(via)
        .member_remove(MemberRemoveRequest { id: removed_id })
        .await
        .unwrap_or_else(|s| panic!("MemberRemove {}: {}", c.members[removed].name, fmt_status(&s)))
        .into_inner();
    assert!(!resp.members.iter().any(|m| m.id == removed_id), "MemberRemove's response still lists the member");
    let list = c.member_list(via).await.expect("MemberList");
    assert!(!list.iter().any(|m| m.id == removed_id), "MemberList still lists the removed member: {list:?}");
    assert_eq!(list.len(), 3, "after add and remove there are 3 members: {list:?}");
    let remaining: Vec<usize> = voters.iter().copied().filter(|&i| i != removed).collect();
    let (cref, remaining_ref) = (&c, &remaining);
    wait_until(
        "the remaining members agree on a leader other than the removed one",
        within(NEW_LEADER_WITHIN),
        move || async move {
            let l = cref.agreed_leader(remaining_ref).await?;
            if l == removed_id {
                Err("they still follow the removed member".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    if c.is_running(removed) {
        c.kill(removed);
    }
    writer.wait_for_progress(10, within(WRITES_RESUME_WITHIN), "after removing a member").await;

    // 3. Add a learner, start it, promote it once it is in sync.
    let n5 = c.define_new_member("n5");
    let learner = add_member(&mut c, via, n5, true).await;
    let current: Vec<usize> = (0..c.members.len()).filter(|&i| i != removed).collect();
    c.start_joining(n5, &current);
    wait_started(&c, via, n5, true).await;
    let status = c.status(n5).await.expect("Status of the learner");
    assert!(status.is_learner, "the learner's Status says is_learner = false");

    let cref = &c;
    let learner_id = learner.id;
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let attempts = &attempts;
    wait_until("the learner is promoted", within(CATCH_UP_WITHIN), move || async move {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match cref.cluster_client(via).member_promote(MemberPromoteRequest { id: learner_id }).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("in sync") => Err(fmt_status(&s)),
            Err(s) => panic!("MemberPromote failed with an unexpected error: {}", fmt_status(&s)),
        }
    })
    .await;
    eprintln!("learner promoted after {} attempt(s)", attempts.load(std::sync::atomic::Ordering::SeqCst));
    let list = c.member_list(via).await.expect("MemberList");
    let promoted = list.iter().find(|m| m.id == learner.id).expect("the promoted member is listed");
    assert!(!promoted.is_learner, "MemberList still shows n5 as a learner after MemberPromote: {promoted:?}");
    assert_eq!(list.len(), 4, "members after the promotion: {list:?}");
    writer.wait_for_progress(10, within(WRITES_RESUME_WITHIN), "after promoting n5").await;

    let report = writer.stop().await;
    eprintln!(
        "writer: {} acknowledged, {} failed (last error: {})",
        report.acked.len(),
        report.failures,
        report.last_error
    );
    let members: Vec<usize> = (0..c.members.len()).filter(|&i| i != removed).collect();
    let (_, view) = wait_converged(&c, &members, "m/", within(CATCH_UP_WITHIN)).await;
    assert!(view.len() >= report.acked.len());
    assert_acked_present(&mut c.kv(n5), "m", &report.acked, "the promoted member").await;
    assert_acked_present(&mut c.kv(via), "m", &report.acked, "the writer's member").await;
}

/// Waits until MemberList (through `via`) shows member `i` with its name — it started and
/// published itself — and with the expected learner flag.
async fn wait_started(c: &Cluster, via: usize, i: usize, is_learner: bool) {
    let id = c.members[i].id.unwrap();
    let name = c.members[i].name.clone();
    let name = &name;
    wait_until(&format!("MemberList shows {name} started"), within(CATCH_UP_WITHIN), move || async move {
        let list = c.member_list(via).await?;
        match list.iter().find(|m| m.id == id) {
            Some(m)
                if &m.name == name
                    && m.is_learner == is_learner
                    && m.client_ur_ls == vec![c.members[i].client_url()] =>
            {
                Ok(())
            }
            other => Err(format!("{name} is listed as {other:?}")),
        }
    })
    .await;
}

/// Waits until member `i`'s local head revision reaches the linearizable head seen through `via`
/// when the wait began.
async fn wait_caught_up(c: &Cluster, via: usize, i: usize) {
    let target =
        wait_until("a linearizable read succeeds", within(WRITES_RESUME_WITHIN), move || linearizable_head(c, via))
            .await;
    let what = format!("{} reaches revision {target}", c.members[i].name);
    wait_until(&what, within(CATCH_UP_WITHIN), move || async move {
        let (rev, _) = local_view(c, i, "\0").await?;
        if rev >= target {
            Ok(())
        } else {
            Err(format!("at revision {rev}"))
        }
    })
    .await;
}

/// Asserts that a request failed with `code` and exactly `message`.
fn assert_error<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?} {message:?}, got success: {v:?}"),
        Err(s) => assert!(
            s.code() == code && s.message() == message,
            "{what}: expected {code:?} {message:?}, got {}",
            fmt_status(&s)
        ),
    }
}

/// Asserts that member `i` is still running and still accepts a put.
async fn assert_member_serves(c: &mut Cluster, i: usize, after: &str) {
    c.assert_running(i);
    put(&mut c.kv(i), "bad/alive", after)
        .await
        .unwrap_or_else(|s| panic!("the member refused a valid put after {after}: {}", fmt_status(&s)));
}

/// Goal: invalid requests get etcd's gRPC status codes and messages (so etcd clients react to
/// them as they do with etcd), and the member that received them keeps serving. Requests go to a
/// follower, so errors decided on the leader also travel back through forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcd_errors_and_the_member_stays_up() {
    let mut c = Cluster::start(3, Options::default()).await;
    let leader = c.leader_index(&[0, 1, 2], within(READY_WITHIN)).await;
    let f = (0..3).find(|&i| i != leader).unwrap();
    let mut kv = c.kv(f);

    let big = PutRequest { key: b"bad/big".to_vec(), value: vec![b'x'; 1_600_000], ..Default::default() };
    assert_error(kv.put(big).await, Code::InvalidArgument, "etcdserver: request is too large", "a 1.6 MB put");
    assert_member_serves(&mut c, f, "a too-large put").await;

    let empty = PutRequest { key: vec![], value: b"v".to_vec(), ..Default::default() };
    assert_error(
        kv.put(empty).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
        "a put with an empty key",
    );
    assert_member_serves(&mut c, f, "an empty key").await;

    for k in 0..5 {
        put(&mut kv, &format!("bad/k{k}"), "v").await.expect("put");
    }
    let head = put(&mut kv, "bad/k5", "v").await.expect("put");
    let future = RangeRequest { key: b"bad/k0".to_vec(), revision: head + 1000, ..Default::default() };
    assert_error(
        kv.range(future).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
        "a range at a future revision",
    );
    assert_member_serves(&mut c, f, "a future revision").await;

    kv.compact(CompactionRequest { revision: head - 2, physical: false })
        .await
        .unwrap_or_else(|s| panic!("Compact: {}", fmt_status(&s)));
    let old = RangeRequest { key: b"bad/k0".to_vec(), revision: head - 3, ..Default::default() };
    assert_error(
        kv.range(old).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        "a range below the compaction",
    );
    let at = RangeRequest { key: b"bad/k0".to_vec(), revision: head - 2, ..Default::default() };
    kv.range(at)
        .await
        .unwrap_or_else(|s| panic!("a range at the compaction revision itself must succeed: {}", fmt_status(&s)));
    assert_member_serves(&mut c, f, "a compacted revision").await;

    let put_op = |v: &str| RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b"bad/dup".to_vec(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    let dup = TxnRequest { compare: vec![], success: vec![put_op("a"), put_op("b")], failure: vec![] };
    assert_error(
        kv.txn(dup).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
        "a txn putting one key twice",
    );
    assert_member_serves(&mut c, f, "a duplicate-key txn").await;

    let mut cl = c.cluster_client(f);
    let ids: Vec<u64> = c.members.iter().map(|m| m.id.unwrap()).collect();
    let unknown = (1u64..).map(|n| n * 0x1_0000_0001).find(|n| !ids.contains(n)).unwrap();
    assert_error(
        cl.member_remove(MemberRemoveRequest { id: unknown }).await,
        Code::NotFound,
        "etcdserver: member not found",
        "MemberRemove of an unknown ID",
    );
    assert_member_serves(&mut c, f, "removing an unknown member").await;

    assert_error(
        cl.member_promote(MemberPromoteRequest { id: ids[leader] }).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
        "MemberPromote of a voter",
    );
    assert_member_serves(&mut c, f, "promoting a voter").await;

    let taken = c.members[leader].peer_url();
    assert_error(
        cl.member_add(MemberAddRequest { peer_ur_ls: vec![taken], is_learner: false }).await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
        "MemberAdd with a peer URL in use",
    );
    assert_member_serves(&mut c, f, "adding a member with a used peer URL").await;

    let list = c.member_list(f).await.expect("MemberList");
    assert_eq!(list.len(), 3, "the rejected membership requests changed the membership: {list:?}");
    for i in 0..3 {
        c.assert_running(i);
    }
}

/// The messages etcd answers with when a request cannot reach a quorum.
/// etcd's answers for a request that cannot reach a quorum. The third is what a follower says when
/// its forward to a leader that just died fails: the write's fate is unknown, as in etcd.
const NO_QUORUM_MESSAGES: [&str; 3] = [
    "etcdserver: request timed out",
    "etcdserver: no leader",
    "etcdserver: request timed out, possibly due to connection lost",
];
/// A request without quorum must fail within this long (the store's request timeout is 3 s).
const NO_QUORUM_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Runs `call` and checks that it fails within `NO_QUORUM_ANSWER_WITHIN` with Unavailable and
/// one of etcd's no-quorum messages; returns what went wrong instead, if anything.
async fn check_no_quorum_error<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<(), String> {
    let started = Instant::now();
    let result = tokio::time::timeout(NO_QUORUM_ANSWER_WITHIN, call).await;
    let took = started.elapsed();
    match result {
        Err(_) => Err(format!("{what} without quorum did not return within {NO_QUORUM_ANSWER_WITHIN:?}")),
        Ok(Ok(v)) => Err(format!("{what} without quorum succeeded after {took:?}: {v:?}")),
        Ok(Err(s)) if s.code() == Code::Unavailable && NO_QUORUM_MESSAGES.contains(&s.message()) => {
            eprintln!("{what} without quorum: {} after {took:?}", fmt_status(&s));
            Ok(())
        }
        Ok(Err(s)) => Err(format!(
            "{what} without quorum: expected Unavailable with one of {NO_QUORUM_MESSAGES:?}, got {} after {took:?}",
            fmt_status(&s)
        )),
    }
}

/// Goal: a member cut off from quorum neither hangs nor lies. With two of three members
/// SIGKILLed, a put and a linearizable read through the survivor fail within a bounded time with
/// gRPC Unavailable and etcd's message, a serializable read still answers from local state, and
/// the process stays up; once the two are restarted, writes succeed again. Run twice: once with
/// the leader as the survivor (a stale leader must not serve linearizable reads), once with a
/// follower as the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_quorum_answers_with_an_error() {
    let mut c = Cluster::start(3, Options::default()).await;
    // Wrong answers are collected so that one failure report covers both rounds.
    let mut problems: Vec<String> = Vec::new();
    for (round, survivor_is_leader) in [(1, true), (2, false)] {
        let leader = c.leader_index(&[0, 1, 2], within(NEW_LEADER_WITHIN)).await;
        let survivor = if survivor_is_leader { leader } else { (0..3).find(|&i| i != leader).unwrap() };
        let key = format!("q/round{round}");
        put(&mut c.kv(survivor), &key, "before")
            .await
            .unwrap_or_else(|s| panic!("put before the failure: {}", fmt_status(&s)));
        wait_converged(&c, &[0, 1, 2], "q/", within(CATCH_UP_WITHIN)).await;

        let dead: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
        for &d in &dead {
            c.kill(d);
        }
        let role = if survivor_is_leader { "the old leader" } else { "a follower" };
        let mut kv = c.kv(survivor);
        let put_result = check_no_quorum_error(
            &format!("a put through {role}"),
            kv.put(PutRequest { key: key.clone().into_bytes(), value: b"after".to_vec(), ..Default::default() }),
        )
        .await;
        problems.extend(put_result.err());
        let read_result =
            check_no_quorum_error(&format!("a linearizable read through {role}"), kv.range(prefix_range("q/", false)))
                .await;
        problems.extend(read_result.err());
        let local = range(&mut kv, prefix_range("q/", true))
            .await
            .unwrap_or_else(|s| panic!("a serializable read through {role} without quorum failed: {}", fmt_status(&s)));
        let local = snapshot_of(&local);
        assert_eq!(local.get(&key).map(|e| e.0.as_str()), Some("before"), "the serializable read lost {key}");
        c.assert_running(survivor);
        // Not asserted: etcd's leader steps down once it misses a quorum for an election
        // timeout (CheckQuorum), so Status would name no leader; print what Keelson says.
        if let Ok(st) = c.status(survivor).await {
            eprintln!(
                "round {round}: Status of {role} without quorum: leader {:x} (itself: {})",
                st.leader,
                Some(st.leader) == c.members[survivor].id
            );
        }

        for &d in &dead {
            c.restart(d);
        }
        let cref = &c;
        let key = &key;
        wait_until("a put through the survivor succeeds again", within(WRITES_RESUME_WITHIN), move || async move {
            put(&mut cref.kv(survivor), key, "restored").await.map_err(|s| fmt_status(&s))
        })
        .await;
        wait_converged(&c, &[0, 1, 2], "q/", within(CATCH_UP_WITHIN)).await;
    }
    assert!(problems.is_empty(), "members without quorum answered wrongly:\n{}", problems.join("\n"));
}
