//! hermes-api on Redis Cluster (`redis-cluster://`, [`hermes_testkit::ClusterSet`]: three real
//! primaries, three replicas): the main scenarios of the suite, run as on a single Redis. Every
//! script must touch one slot (a cross-slot script fails with CROSSSLOT, so any slip fails
//! these tests): create → resolve → join → new code → status → end, a code admitting exactly
//! one of many concurrent resolves, the end-call notice reaching a subscriber, and rate limits
//! whose counters live on different primaries; a primary's failover, and `/readyz` while a
//! primary is down or hung.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Api;
use fred::prelude::*;
use hermes_proto::api::{CreateCallResponse, ResolveResponse};
use hermes_proto::signal::CallControl;
use hermes_proto::{Role, keys};
use hermes_testkit::{ClusterSet, RedisServer};

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).expect("body matches the hermes-proto type")
}

/// hermes-api on `cluster` (the harness's own single Redis stays unused).
async fn api_on(cluster: &ClusterSet, extra: &[&str]) -> Api {
    let url = cluster.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    let api = Api::start_on(RedisServer::start(), &args).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while api.send(api.http.get(api.url("/readyz"))).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never 200 on the cluster"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_flow_runs_on_a_cluster() {
    let cluster = tokio::task::block_in_place(ClusterSet::start);
    let api = api_on(&cluster, &[]).await;

    let created = api.create().await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let created: CreateCallResponse = parse(&created.body);
    // The records are where the key schema puts them, on the primary owning their slot.
    let call_key = keys::call(&created.call_id);
    let record = cluster
        .raw_for_key(&call_key, &format!("HGET {call_key} status"))
        .unwrap();
    assert!(record.contains("created"), "{record}");
    let code_key = format!("otc:{}", created.code);
    let ttl = cluster
        .raw_for_key(&code_key, &format!("TTL {code_key}"))
        .unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().expect("ttl");
    assert!((890..=900).contains(&ttl), "{ttl}");

    let resolved = api.resolve(&created.code.to_lowercase()).await;
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    let resolved: ResolveResponse = parse(&resolved.body);
    assert_eq!(resolved.call_id, created.call_id);
    assert_eq!(api.resolve(&created.code).await.status, 404, "single use");
    for token in [&created.token, &resolved.token] {
        let joined = api.post_auth("/api/join", token).await;
        assert_eq!(joined.status, 200, "{:?}", joined.body);
    }

    // A fresh code minted by the answerer hands out the offerer's seat.
    let minted = api.post_auth("/api/call/code", &resolved.token).await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let code = minted.body["code"].as_str().unwrap().to_owned();
    let again = api.resolve(&code).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let again: ResolveResponse = parse(&again.body);
    let claims = hermes_proto::JoinTokenKeys::new(common::JWT_SECRET.as_bytes())
        .verify(&again.token, hermes_service::unix_now())
        .unwrap();
    assert_eq!(claims.role, Role::Offerer);

    let status = api
        .get_auth(&format!("/api/call/{}", created.call_id), &resolved.token)
        .await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    assert_eq!(status.body["status"], "created");

    // End: the notice reaches a sharded subscriber of the call's channel (hermes-signal
    // SSUBSCRIBEs on a cluster; the end script SPUBLISHes on the primary of the call's slot).
    let sub = hermes_service::redis::connect_subscriber(&cluster.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut messages = sub.message_rx();
    sub.ssubscribe(keys::call_channel(&created.call_id))
        .await
        .unwrap();
    let ended = api.post_auth("/api/call/end", &resolved.token).await;
    assert_eq!(ended.status, 200, "{:?}", ended.body);
    let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .expect("end-call notice within 5 s")
        .unwrap();
    assert_eq!(msg.kind, fred::types::MessageKind::SMessage, "{msg:?}");
    let text: String = msg.value.convert().unwrap();
    assert_eq!(
        serde_json::from_str::<CallControl>(&text).unwrap(),
        CallControl::EndCall {
            reason: "api".into()
        }
    );
    assert_eq!(api.post_auth("/api/join", &created.token).await.status, 410);

    // Many resolves of one code at once: exactly one wins.
    let contested: CreateCallResponse = parse(&api.create().await.body);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let req = api
            .http
            .post(api.url("/api/call/resolve"))
            .json(&serde_json::json!({ "code": contested.code }));
        set.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let statuses = set.join_all().await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 9);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_on_a_cluster() {
    let cluster = tokio::task::block_in_place(ClusterSet::start);
    // Two replicas of the api share the counters through the cluster.
    let a = api_on(
        &cluster,
        &["--rate-limit", "6", "--resolve-code-limit", "3"],
    )
    .await;
    let b = api_on(
        &cluster,
        &["--rate-limit", "6", "--resolve-code-limit", "3"],
    )
    .await;
    let mut created = 0;
    for i in 0..10 {
        let api = if i % 2 == 0 { &a } else { &b };
        match api.create().await.status {
            201 => created += 1,
            429 => break,
            other => panic!("create answered {other}"),
        }
    }
    assert_eq!(created, 6, "the per-IP limit counts across replicas");
    assert_eq!(a.create().await.status, 429);

    // The per-code resolve limit (its counter in another slot than the per-IP ones).
    let c = api_on(&cluster, &["--resolve-code-limit", "3"]).await;
    let call: CreateCallResponse = parse(&c.create().await.body);
    let wrong = if call.code.starts_with('A') { "B" } else { "A" };
    let guess = format!("{wrong}{}", &call.code[1..]);
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(c.resolve(&guess).await.status);
        }
        out
    };
    assert_eq!(statuses, [404, 404, 404, 429], "per-code limit");
    assert_eq!(
        c.resolve(&call.code).await.status,
        200,
        "another code is fine"
    );
    // Keys of limits are on several primaries: the counters exist where their slots are.
    let ip_key = keys::rl_ip(&"127.0.0.1".parse().unwrap(), "req");
    let count = cluster
        .raw_for_key(&ip_key, &format!("GET {ip_key}"))
        .unwrap();
    assert!(count.starts_with('$'), "{ip_key}: {count}");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// The primary serving a call's slot is SIGKILLed: its replica takes over the slot, the api's
/// client follows the new slot map by itself (requests to that slot answer 503 meanwhile),
/// and the call created (and replicated) before resolves and joins after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_the_failover_of_its_primary() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let api = api_on(&cluster, &[]).await;
    let created: CreateCallResponse = parse(&api.create().await.body);
    tokio::task::block_in_place(|| cluster.wait_replicated());

    let call_key = keys::call(&created.call_id);
    let owner = cluster.owner_of(&call_key).unwrap();
    let killed_at = cluster.kill_node(owner);
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(&call_key, killed_at, Duration::from_secs(30))
    });
    assert_ne!(cluster.owner_of(&call_key).unwrap(), owner);
    // Joining reads the call's record: poll until the client reaches the slot's new primary.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut unavailable = 0;
    loop {
        match api.post_auth("/api/join", &created.token).await.status {
            200 => break,
            503 => unavailable += 1,
            other => panic!("join answered {other} after the failover"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the api never reached the promoted primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cluster: replica promoted {promoted:?} after the kill, api serving the call again \
         {:?} after it ({unavailable} joins answered 503 first)",
        killed_at.elapsed()
    );
    // The resolve waits for a replica (`REDIS_REPLICA_ACK=auto`) on a connection of its own,
    // which follows the failover on its own reconnect schedule; `/readyz` covers it too.
    while api.send(api.http.get(api.url("/readyz"))).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never 200 after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resolved = api.resolve(&created.code).await;
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    assert_eq!(
        api.resolve(&created.code).await.status,
        404,
        "still single use"
    );
    // New calls land on every slot, the new primary's included.
    for _ in 0..10 {
        assert_eq!(api.create().await.status, 201);
    }
    api.stop().await;
}

/// `/readyz` pings every primary: one SIGKILLed primary makes it answer 503 (its slots' keys
/// would fail) for as long as the cluster has not promoted its replica, and 200 again once
/// the replica serves those slots and the api's client follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_primary_is_down() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let api = api_on(&cluster, &[]).await;
    let victim = cluster.primary_ports()[0];
    // A key of one of the victim's slots, to tell when those slots are served again.
    let key = cluster.key_owned_by(victim);
    let readyz = || async { api.send(api.http.get(api.url("/readyz"))).await.status };
    assert_eq!(readyz().await, 200);

    let killed_at = cluster.kill_node(victim);
    let deadline = killed_at + Duration::from_secs(10);
    while readyz().await != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still 200 with a primary down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unready_after = killed_at.elapsed();
    // Until the failover is over, never ready (the answer is read before the cluster's state,
    // so a failover finishing in between cannot excuse a 200).
    let mut unready = 0;
    loop {
        let status = readyz().await;
        let failed_over = tokio::task::block_in_place(|| cluster.serves(&key));
        if failed_over {
            break;
        }
        assert_eq!(status, 503, "/readyz ready before the failover");
        unready += 1;
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted = killed_at.elapsed();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while readyz().await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never ready again after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cluster readyz: 503 {unready_after:?} after the kill ({unready} checks while down), \
         replica promoted at {promoted:?}, ready again at {:?}",
        killed_at.elapsed()
    );
    api.stop().await;
}

/// A primary that hangs (SIGSTOP: its connections stay open, nothing answers) is what a ping
/// of just any node misses: `/readyz` must answer 503 while it hangs, and 200 again once its
/// replica took over, while the old primary still hangs (the api re-reads the slot map when a
/// primary does not answer; fred alone would keep routing its slots to the hung process, and
/// `/readyz`, which pings every primary of that slot map, would stay 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_primary_hangs() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let api = api_on(&cluster, &[]).await;
    let victim = cluster.primary_ports()[0];
    let key = cluster.key_owned_by(victim);
    let readyz = || async { api.send(api.http.get(api.url("/readyz"))).await.status };
    assert_eq!(readyz().await, 200);

    let frozen_at = cluster.freeze_node(victim);
    let deadline = frozen_at + Duration::from_secs(10);
    while readyz().await != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still 200 with a primary hung"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unready_after = frozen_at.elapsed();
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(&key, frozen_at, Duration::from_secs(30))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while readyz().await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never ready again after the failover (the old primary still hung)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_again = frozen_at.elapsed();
    eprintln!(
        "cluster readyz (hung primary): 503 {unready_after:?} after the freeze, replica promoted \
         at {promoted:?}, ready again at {ready_again:?} with the old primary still hung"
    );
    cluster.kill_node(victim);
    api.stop().await;
}

/// `EXISTS key` read on the replica on `port` (READONLY first: a cluster replica otherwise
/// redirects every key to its primary); the harness's own connection, not the client under test.
fn exists_on_replica(port: u16, key: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream
        .write_all(format!("READONLY\r\nEXISTS {key}\r\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    let mut buf = [0u8; 256];
    while reply.matches("\r\n").count() < 2 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "replica closed the connection: {reply:?}");
        reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let (readonly, exists) = reply.split_once("\r\n").unwrap();
    assert_eq!(readonly, "+OK", "{reply:?}");
    exists
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("EXISTS answered {reply:?}"))
}

/// `REDIS_REPLICA_ACK` on a cluster: the resolve's script and its `WAIT 1` go on one
/// connection to the primary owning the code's slot. With the replicas up, a `required`
/// resolve answers 200 once that primary's replica holds the delete (read on the replica
/// right after the answer). With that replica frozen, `required` answers 503 after the
/// timeout and puts the code back, and `best-effort` answers 200 after it. (A WAIT sent to
/// another node, or on another connection, would count a replica at once and answer 200.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_code_waits_for_the_replica_of_its_primary() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let required = api_on(
        &cluster,
        &[
            "--redis-replica-ack",
            "required",
            "--redis-replica-ack-timeout-ms",
            "1000",
        ],
    )
    .await;
    let best_effort = api_on(
        &cluster,
        &[
            "--redis-replica-ack",
            "best-effort",
            "--redis-replica-ack-timeout-ms",
            "300",
        ],
    )
    .await;
    let missing = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("hermes_api_replica_ack_missing_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("hermes_api_replica_ack_missing on /metrics")
    };

    // (a) Replicas up: the replica holds the delete when the answer goes out.
    let created: CreateCallResponse = parse(&required.create().await.body);
    let code_key = format!("otc:{}", created.code);
    let owner = cluster.owner_of(&code_key).unwrap();
    let replica = cluster.replica_of(owner).expect("the owner has a replica");
    tokio::task::block_in_place(|| cluster.wait_replicated());
    assert_eq!(exists_on_replica(replica, &code_key), 1);
    let resolved = required.resolve(&created.code).await;
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    assert_eq!(
        exists_on_replica(replica, &code_key),
        0,
        "answered before the replica held the delete"
    );
    assert_eq!(missing(&required.metrics().await), 0.0);

    // (b) The owner's replica frozen: no acknowledgement can come.
    let created: CreateCallResponse = parse(&required.create().await.body);
    let code_key = format!("otc:{}", created.code);
    let owner = cluster.owner_of(&code_key).unwrap();
    let replica = cluster.replica_of(owner).expect("the owner has a replica");
    tokio::task::block_in_place(|| cluster.wait_replicated());
    cluster.freeze_node(replica);

    let started = std::time::Instant::now();
    let refused = required.resolve(&created.code).await;
    let took = started.elapsed();
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(took >= Duration::from_millis(1000), "503 after {took:?}");
    assert!(took < Duration::from_secs(3), "503 only after {took:?}");
    assert_eq!(missing(&required.metrics().await), 1.0);
    let kept = cluster.raw(owner, &format!("EXISTS {code_key}")).unwrap();
    assert_eq!(kept.trim(), ":1", "the refused code was not put back");

    let started = std::time::Instant::now();
    let answered = best_effort.resolve(&created.code).await;
    let took = started.elapsed();
    assert_eq!(answered.status, 200, "{:?}", answered.body);
    assert!(took >= Duration::from_millis(300), "200 after {took:?}");
    assert_eq!(missing(&best_effort.metrics().await), 1.0);
    eprintln!("cluster, replica frozen: required 503, best-effort 200 after {took:?}");
    assert_eq!(
        required.resolve(&created.code).await.status,
        404,
        "single use"
    );
    required.stop().await;
    best_effort.stop().await;
}
