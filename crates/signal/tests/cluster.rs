//! hermes-signal on Redis Cluster (`redis-cluster://`, [`hermes_testkit::ClusterSet`]: three real
//! primaries, three replicas). Every key a signal script touches carries the call's hash tag, so
//! each script runs on the one primary that owns the call's slot, and the call's channel is
//! sharded: the scripts SPUBLISH on it and each replica SSUBSCRIBEs to it on that primary, so a
//! relayed message never crosses the cluster bus to the other shards (asserted with `PUBSUB
//! SHARDCHANNELS` / `SHARDNUMSUB` / `CHANNELS` on every node). The primary of a call's slot is
//! SIGKILLed mid-call, or frozen (SIGSTOP, a hung process) and thawed after its replica took
//! over: the replicas subscribe on the promoted replica by themselves and the clients see
//! nothing lost, duplicated or reordered.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::failover_party::*;
use common::*;
use hermes_proto::signal::{CLOSE_CALL_ENDED, ClientMessage, ServerMessage};
use hermes_proto::{CallId, JoinTokenKeys, Role, keys};
use hermes_testkit::ClusterSet;

/// A call record as the API writes it, on the primary of the call's slot.
fn call_on(cluster: &ClusterSet) -> Call {
    let id = CallId::random(&mut rand::rng());
    let record = keys::call(&id);
    cluster
        .raw_for_key(
            &record,
            &format!(
                "HSET {record} status created createdAt {}",
                hermes_service::unix_now()
            ),
        )
        .unwrap();
    Call {
        id,
        keys: JoinTokenKeys::new(SECRET.as_bytes()),
    }
}

/// The fan-out of `call` is sharded: its channel is a shard channel with `subscribers`
/// subscribers on the primary that owns its slot and on no other node, and no node has a
/// classic call channel. Returns that primary's port.
fn assert_sharded(cluster: &ClusterSet, call: &CallId, subscribers: usize) -> u16 {
    let channel = keys::call_channel(call);
    let owner = cluster.owner_of(&channel).unwrap();
    let numsub = cluster
        .raw(owner, &format!("PUBSUB SHARDNUMSUB {channel}"))
        .unwrap();
    assert!(
        numsub.ends_with(&format!("{channel}\r\n:{subscribers}\r\n")),
        "PUBSUB SHARDNUMSUB on the owner: {numsub:?}"
    );
    for port in cluster.primary_ports() {
        let shard = cluster.raw(port, "PUBSUB SHARDCHANNELS call:*").unwrap();
        assert_eq!(
            shard.contains(&channel),
            port == owner,
            "PUBSUB SHARDCHANNELS on {port} (owner {owner}): {shard:?}"
        );
        let classic = cluster.raw(port, "PUBSUB CHANNELS call:*").unwrap();
        assert_eq!(classic, "*0\r\n", "classic call channels on {port}");
    }
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_two_replicas_relays_resumes_and_ends_on_a_cluster() {
    let cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let r1 = Replica::start(&url, &["--grace-ms", "30000"]).await;
    let r2 = Replica::start(&url, &["--grace-ms", "30000"]).await;

    // Calls whose slots live on different primaries: each call's scripts run on its own.
    let mut owners = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let call = call_on(&cluster);
        owners.insert(cluster.owner_of(&keys::call(&call.id)).unwrap());
        let (pa, ta) = call.token(Role::Offerer);
        let (pb, tb) = call.token(Role::Answerer);
        let (mut a, _) = Client::join(&r1.url(), &ta, None).await;
        let (mut b, _) = Client::join(&r2.url(), &tb, None).await;
        assert!(matches!(
            a.recv().await,
            ServerMessage::PeerJoined { ref participant_id, .. } if *participant_id == pb
        ));

        a.send(&ClientMessage::Offer {
            sdp: "v=0 o".into(),
        })
        .await;
        let offer = b.recv().await;
        assert!(
            matches!(offer, ServerMessage::Offer { ref from, .. } if *from == pa),
            "{offer:?}"
        );
        b.send(&ClientMessage::Answer {
            sdp: "v=0 a".into(),
        })
        .await;
        assert!(matches!(a.recv().await, ServerMessage::Answer { .. }));
        // Both replicas hear the call through its shard only.
        let owner = assert_sharded(&cluster, &call.id, 2);
        assert_eq!(owner, cluster.owner_of(&keys::call(&call.id)).unwrap());

        // b drops; what a sends meanwhile is replayed when b resumes on the other replica.
        let last = seq_of(&offer);
        b.drop_abruptly();
        a.recv_until(|m| matches!(m, ServerMessage::PeerReconnecting { .. }))
            .await;
        for i in 0..3 {
            a.send(&candidate(i)).await;
        }
        let (mut b, joined) = Client::join(&r1.url(), &tb, Some(last)).await;
        assert!(
            matches!(joined, ServerMessage::Joined { resumed: true, .. }),
            "{joined:?}"
        );
        for i in 0..3 {
            let m = b.recv().await;
            assert_eq!(candidate_index(&m), i, "{m:?}");
        }
        a.recv_until(|m| matches!(m, ServerMessage::PeerResumed { .. }))
            .await;

        a.send(&ClientMessage::Hangup).await;
        for c in [&mut a, &mut b] {
            let (seen, closed) = c.closed().await;
            assert!(
                seen.iter()
                    .any(|m| matches!(m, ServerMessage::CallEnded { .. })),
                "{seen:?}"
            );
            assert_eq!(closed, Closed::Code(CLOSE_CALL_ENDED));
        }
        // The call is over on both replicas: both SUNSUBSCRIBEd on its shard.
        wait_shard_subscribers(&cluster, &call.id, 0).await;
    }
    eprintln!("calls on primaries {owners:?}");
}

/// Calls of many slots at once on two replicas: a replica batches the relays (and lease
/// renewals) of different calls into one script run, which a cluster refuses across slots
/// (CROSSSLOT), so on a cluster each batch holds the calls of one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_many_slots_relay_in_order_on_a_cluster() {
    const CALLS: usize = 8;
    const BURST: usize = 30;
    let cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let r1 = Replica::start(&url, &["--lease-ms", "600"]).await;
    let r2 = Replica::start(&url, &["--lease-ms", "600"]).await;
    let mut pairs = Vec::new();
    let mut owners = std::collections::BTreeSet::new();
    for _ in 0..CALLS {
        let call = call_on(&cluster);
        owners.insert(cluster.owner_of(&keys::call(&call.id)).unwrap());
        let (_, ta) = call.token(Role::Offerer);
        let (_, tb) = call.token(Role::Answerer);
        let (mut a, _) = Client::join(&r1.url(), &ta, None).await;
        let (b, _) = Client::join(&r2.url(), &tb, None).await;
        a.recv_until(|m| matches!(m, ServerMessage::PeerJoined { .. }))
            .await;
        pairs.push((a, b));
    }
    assert!(owners.len() > 1, "calls on one primary only: {owners:?}");
    // Every offerer sends its burst at once: relays of all calls queue together.
    let mut tasks = Vec::new();
    for (mut a, mut b) in pairs {
        tasks.push(tokio::spawn(async move {
            for i in 0..BURST {
                a.send(&candidate(i)).await;
            }
            for i in 0..BURST {
                let m = b.recv().await;
                assert_eq!(candidate_index(&m), i, "{m:?}");
            }
            // Held past a few lease renewals (one tick script run per slot), still relaying.
            tokio::time::sleep(Duration::from_millis(700)).await;
            b.send(&candidate(BURST)).await;
            let m = a
                .recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
                .await;
            assert_eq!(candidate_index(&m), BURST);
            (a, b)
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// Wait (at most 10 s) until the call's shard channel has `n` subscribers on its primary.
async fn wait_shard_subscribers(cluster: &ClusterSet, call: &CallId, n: usize) {
    let channel = keys::call_channel(call);
    let expected = format!("{channel}\r\n:{n}\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let numsub = cluster
            .raw_for_key(&channel, &format!("PUBSUB SHARDNUMSUB {channel}"))
            .unwrap();
        if numsub.ends_with(&expected) {
            return;
        }
        assert!(Instant::now() < deadline, "SHARDNUMSUB stuck at {numsub:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rides_out_the_failover_of_its_shard_with_nothing_lost_or_reordered() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let r1 = Replica::start(&url, FLAGS).await;
    let r2 = Replica::start(&url, FLAGS).await;
    let call = call_on(&cluster);
    let (_, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(30);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;
    match next_event(&mut wa, Duration::from_secs(5)).await {
        Some(Event::Message(ServerMessage::PeerJoined { .. })) => {}
        _ => panic!("the offerer must hear peer-joined"),
    }
    // An observer on each replica keeps the call's subscriptions up after the parties hang
    // up, to check where they are once the failover is over.
    let mut observers = Vec::new();
    for r in [&r1, &r2] {
        let (_, to) = call.token(Role::Observer);
        let (mut ws, _) = join_until_admitted(&r.url(), &to, None, far).await;
        // Read on, so the keep-alive pings are answered and the session stays.
        observers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
        }));
    }
    let owner = assert_sharded(&cluster, &call.id, 2);
    // The seats and the call record are on the replica too before the kill (what a failover
    // loses unreplicated is sentinel_failover.rs's subject; the seq epoch covers both).
    tokio::task::block_in_place(|| cluster.wait_replicated());

    let stop = Arc::new(AtomicBool::new(false));
    let ready1 = tokio::spawn(watch_readiness(r1.addr, stop.clone()));
    let sent_a = Arc::new(AtomicUsize::new(0));
    let no_drop = Arc::new(AtomicBool::new(false));
    // The answerer loses its connection at the kill and resumes with lastSeq.
    let drop_b = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(run_party(r1.url(), ta, wa, Some(sent_a.clone()), no_drop));
    let b = tokio::spawn(run_party(r2.url(), tb, wb, None, drop_b.clone()));
    while sent_a.load(Ordering::SeqCst) < KILL_AT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = cluster.kill_node(owner);
    drop_b.store(true, Ordering::SeqCst);
    let record = keys::call(&call.id);
    let failover = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(&record, killed_at, Duration::from_secs(30))
    });
    let seen_a = a.await.unwrap();
    let seen_b = b.await.unwrap();
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;
    stop.store(true, Ordering::SeqCst);
    let (down1, up1) = ready1.await.unwrap();

    eprintln!(
        "cluster failover: promoted {failover:?} after the kill; readyz r1 down {:?} up {:?} (after the kill)",
        down1.map(|t| t.saturating_duration_since(killed_at)),
        up1.map(|t| t.saturating_duration_since(killed_at)),
    );
    report_and_check_parties(&seen_a, &seen_b);
    // Readiness followed the outage (every primary must answer) and the recovery.
    let down = down1.expect("/readyz answered 503 during the outage");
    let up = up1.expect("/readyz answered 200 again after the promotion");
    assert!(down >= killed_at && up > down);
    // Both replicas subscribed again on the promoted replica, and only there.
    wait_shard_subscribers(&cluster, &call.id, 2).await;
    let promoted = assert_sharded(&cluster, &call.id, 2);
    assert_ne!(promoted, owner);
    for o in &observers {
        assert!(!o.is_finished(), "an observer's connection closed");
        o.abort();
    }
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// The field `name` of `INFO replication` on the node on `port`.
fn replication_field(cluster: &ClusterSet, port: u16, name: &str) -> Option<String> {
    let info = cluster.raw(port, "INFO replication").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// A hung primary (SIGSTOP: its connections stay open, nothing is answered, as in a partition)
/// rather than a dead one. Mid-call, with steady traffic both ways across two replicas, the
/// call's primary is frozen; the cluster promotes its replica after `cluster-node-timeout`; the
/// call goes on while the old primary is still hung; then it is thawed (SIGCONT) and must come
/// back as a replica of the promoted one, redirecting reads and writes of the call's slot and
/// holding the same data (whatever it answered for once thawed is not served as current).
/// As the clients see it: nothing lost, duplicated or reordered; `/readyz` of both replicas
/// answers 503 during the outage and 200 again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rides_out_a_hung_primary_that_comes_back_as_a_replica() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let r1 = Replica::start(&url, FLAGS).await;
    let r2 = Replica::start(&url, FLAGS).await;
    let call = call_on(&cluster);
    let (_, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(30);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;
    match next_event(&mut wa, Duration::from_secs(5)).await {
        Some(Event::Message(ServerMessage::PeerJoined { .. })) => {}
        _ => panic!("the offerer must hear peer-joined"),
    }
    let record = keys::call(&call.id);
    let owner = cluster.owner_of(&record).unwrap();
    let replica = cluster.replica_of(owner).expect("the owner has a replica");
    tokio::task::block_in_place(|| cluster.wait_replicated());

    let stop = Arc::new(AtomicBool::new(false));
    let ready1 = tokio::spawn(watch_readiness(r1.addr, stop.clone()));
    let ready2 = tokio::spawn(watch_readiness(r2.addr, stop.clone()));
    let sent_a = Arc::new(AtomicUsize::new(0));
    let no_drop = Arc::new(AtomicBool::new(false));
    // The answerer loses its connection at the freeze and resumes with lastSeq.
    let drop_b = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(run_party(r1.url(), ta, wa, Some(sent_a.clone()), no_drop));
    let b = tokio::spawn(run_party(r2.url(), tb, wb, None, drop_b.clone()));
    while sent_a.load(Ordering::SeqCst) < KILL_AT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frozen_at = cluster.freeze_node(owner);
    drop_b.store(true, Ordering::SeqCst);
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(&record, frozen_at, Duration::from_secs(30))
    });
    assert_eq!(cluster.owner_of(&record).unwrap(), replica);
    // The call goes on while the old primary is still hung: the offerer gets 10 more messages
    // through.
    let at_promotion = sent_a.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent_a.load(Ordering::SeqCst) < at_promotion + 10 {
        assert!(
            Instant::now() < deadline,
            "no relay got through in 30 s after the promotion with the old primary hung"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flowing = frozen_at.elapsed();
    let thawed_at = cluster.thaw_node(owner);
    let seen_a = a.await.unwrap();
    let seen_b = b.await.unwrap();
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;
    stop.store(true, Ordering::SeqCst);
    let (down1, up1) = ready1.await.unwrap();
    let (down2, up2) = ready2.await.unwrap();

    // The old primary is a replica of the promoted one now, in sync, and serves nothing of
    // the call's slot as a primary would. (It first learns of the failover from the cluster
    // bus, then resynchronises: a full sync waits out `repl-diskless-sync-delay`, 5 s.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.replica_of(replica) != Some(owner)
        || replication_field(&cluster, owner, "master_link_status").as_deref() != Some("up")
    {
        assert!(
            Instant::now() < deadline,
            "the thawed primary never came back as a replica of the promoted one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejoined = thawed_at.elapsed();
    tokio::task::block_in_place(|| cluster.wait_replicated());
    for command in [format!("HGET {record} status"), format!("SET {record}:x 1")] {
        let reply = cluster.raw(owner, &command).unwrap();
        assert!(
            reply.starts_with("-MOVED"),
            "{command} on the old primary: {reply:?}"
        );
    }
    let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(frozen_at));
    eprintln!(
        "hung primary: promoted {promoted:?} after the freeze, relays flowing again by {flowing:?} \
         (old primary still hung), thawed then, back as a replica {rejoined:?} after the thaw; \
         readyz r1 down {:?} up {:?}, r2 down {:?} up {:?} (after the freeze)",
        since(down1),
        since(up1),
        since(down2),
        since(up2),
    );
    report_and_check_parties(&seen_a, &seen_b);
    // No other close: the thawed primary runs the answerer's join that timed out during the
    // freeze and publishes its `replaced`, which must not close the live connection (4002).
    assert_eq!((seen_a.resumes, seen_b.resumes), (0, 1));
    for (down, up) in [(down1, up1), (down2, up2)] {
        let down = down.expect("/readyz answered 503 during the outage");
        let up = up.expect("/readyz answered 200 again after the promotion");
        assert!(down >= frozen_at && up > down);
    }
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// `WAIT` commands the node on `port` has run (`INFO commandstats`).
fn waits_on(cluster: &ClusterSet, port: u16) -> u64 {
    let stats = cluster.raw(port, "INFO commandstats").unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A relay to an away participant waits for the replica of the primary that owns the call's
/// slot (`REDIS_REPLICA_ACK=required`): the relay script and its `WAIT 1` go to that primary
/// on one connection (no other primary runs a WAIT); with that replica frozen the sender hears
/// `unavailable`; once it is thawed the resend is confirmed; the resumed receiver gets every
/// message (the unconfirmed copy too: same candidate, another `seq`, which the client dedups);
/// relays to a live receiver run no WAIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_to_an_away_participant_waits_for_the_replica_of_its_primary() {
    let required = ["--grace-ms", "30000", "--redis-replica-ack", "required"];
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let r1 = Replica::start(&url, &required).await;
    let r2 = Replica::start(&url, &required).await;
    let call = call_on(&cluster);
    let (_, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let (mut a, _) = Client::join(&r1.url(), &ta, None).await;
    let (mut b, _) = Client::join(&r2.url(), &tb, None).await;
    a.recv_until(|m| matches!(m, ServerMessage::PeerJoined { .. }))
        .await;
    let owner = cluster.owner_of(&keys::call(&call.id)).unwrap();
    let replica = cluster.replica_of(owner).expect("the owner has a replica");
    let all_waits = |cluster: &ClusterSet| {
        cluster
            .primary_ports()
            .into_iter()
            .map(|p| (p, waits_on(cluster, p)))
            .collect::<Vec<_>>()
    };
    // Each message followed by a ping: its pong tells the relay before it is done.
    async fn relayed(c: &mut Client, i: usize) -> bool {
        c.send(&candidate(i)).await;
        c.send(&ClientMessage::Ping { ts: Some(i as u64) }).await;
        let mut ok = true;
        loop {
            match c.recv().await {
                ServerMessage::Pong { ts: Some(t) } if t == i as u64 => return ok,
                ServerMessage::Error { .. } => ok = false,
                _ => {}
            }
        }
    }

    // Live receiver: no WAIT anywhere.
    let before = all_waits(&cluster);
    assert!(relayed(&mut a, 0).await);
    assert_eq!(candidate_index(&b.recv().await), 0);
    let last = {
        assert!(relayed(&mut a, 1).await);
        seq_of(&b.recv().await)
    };
    assert_eq!(
        all_waits(&cluster),
        before,
        "a relay to a live receiver ran WAIT"
    );

    b.drop_abruptly();
    a.recv_until(|m| matches!(m, ServerMessage::PeerReconnecting { .. }))
        .await;
    let before = all_waits(&cluster);
    assert!(relayed(&mut a, 2).await);
    let after = all_waits(&cluster);
    for ((port, was), (_, now)) in before.iter().zip(&after) {
        let expected = if *port == owner { was + 1 } else { *was };
        assert_eq!(*now, expected, "WAITs on {port} (owner {owner}): {after:?}");
    }

    cluster.freeze_node(replica);
    let started = Instant::now();
    let confirmed = relayed(&mut a, 3).await;
    let refused_after = started.elapsed();
    cluster.thaw_node(replica);
    assert!(
        !confirmed,
        "no replica acknowledged: required answers unavailable"
    );
    let mut sends = 1;
    while !relayed(&mut a, 3).await {
        sends += 1;
        assert!(sends < 20, "never confirmed with the replica thawed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut b, joined) = Client::join(&r2.url(), &tb, Some(last)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let mut replayed = Vec::new();
    while let Some(m) = b.try_recv(Duration::from_millis(500)).await {
        if matches!(m, ServerMessage::IceCandidate { .. }) {
            replayed.push((seq_of(&m), candidate_index(&m)));
        }
    }
    eprintln!(
        "cluster away relay: unavailable after {refused_after:?} with the owner's replica frozen, \
         {sends} more sends, replayed {replayed:?}"
    );
    let indices: Vec<usize> = replayed.iter().map(|r| r.1).collect();
    assert!(
        indices.starts_with(&[2, 3]) && indices[2..].iter().all(|&i| i == 3),
        "{replayed:?}"
    );
    assert!(indices.len() <= 2 + sends, "{replayed:?}");
    assert!(replayed.windows(2).all(|w| w[0].0 < w[1].0));
    r1.trigger.cancel();
    r2.trigger.cancel();
}
