//! The logger on Redis Cluster (`redis-cluster://`, [`hermes_testkit::ClusterSet`]: three real
//! primaries, three replicas). Log events keep classic PUBLISH: a cluster broadcasts it to every
//! node, so the logger's one PSUBSCRIBE `logs:*` (on whichever node it landed) sees events
//! published on any node, and `--since` reads `logs-history`, one key on one primary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fred::prelude::*;
use hermes_proto::LogLevel;
use hermes_proto::keys::LOG_HISTORY_STREAM;
use hermes_testkit::ClusterSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logger_sees_events_published_on_every_node_and_the_history() {
    let cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let publisher = client(&url).await;
    // Before the logger starts: one event only in the history (as services XADD it).
    let old = event("api", LogLevel::Info, "from.history", Some(CALL_A));
    let json = serde_json::to_string(&old).expect("json");
    let _: Value = publisher
        .xadd(LOG_HISTORY_STREAM, false, None, "*", vec![("event", json)])
        .await
        .expect("XADD");

    let logger = LibLogger::start(&url, &["--since", "10m"]).await;
    logger.line_with(&["from.history"]).await;

    // Published on each of the six nodes itself (PUBLISH is not routed by key): every one
    // reaches the logger's single subscription.
    for (i, port) in cluster.ports().into_iter().enumerate() {
        let ev = event("signal", LogLevel::Warn, &format!("node.{i}"), Some(CALL_B));
        let json = serde_json::to_string(&ev).expect("json");
        let reply = cluster
            .raw(port, &format!("PUBLISH {} '{json}'", ev.channel()))
            .expect("PUBLISH");
        assert!(reply.starts_with(':'), "{reply}");
    }
    for i in 0..6 {
        logger.line_with(&[&format!("node.{i}")]).await;
    }
    // And through the cluster client, as services publish.
    publish_event(
        &publisher,
        &event("turn", LogLevel::Error, "via.client", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["via.client"]).await;
    let text = logger.out.text();
    assert_eq!(text.matches("node.").count(), 6, "each event once:\n{text}");
    logger.stop().await.expect("clean stop");
}

/// The node holding the logger's subscription hangs (SIGSTOP): its connection stays open, so
/// fred would never leave it. The logger's watch finds a primary that does not answer,
/// re-reads the slot map and subscribes again elsewhere; events published on the live nodes
/// reach the console while the old node still hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logger_leaves_a_hung_primary() {
    let mut cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let logger = LibLogger::start(&url, &[]).await;
    let subscribed = cluster
        .primary_ports()
        .into_iter()
        .find(|&port| {
            cluster
                .raw(port, "PUBSUB NUMPAT")
                .is_ok_and(|n| n.trim() != ":0")
        })
        .expect("the logger's PSUBSCRIBE is on a primary");
    let replica = cluster.replica_of(subscribed).expect("its replica");
    let key = cluster.key_owned_by(subscribed);
    let frozen_at = cluster.freeze_node(subscribed);
    let promoted_after = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(&key, frozen_at, Duration::from_secs(30))
    });
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        let ev = event("signal", LogLevel::Info, &format!("after.freeze.{n}"), None);
        let json = serde_json::to_string(&ev).expect("json");
        let reply = cluster
            .raw(replica, &format!("PUBLISH {} '{json}'", ev.channel()))
            .expect("PUBLISH");
        assert!(reply.starts_with(':'), "{reply}");
        if logger.out.text().contains("after.freeze.") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the logger never left the hung node {subscribed}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "logger: replica promoted {promoted_after:?} after the freeze, events shown again {:?} \
         after it",
        frozen_at.elapsed()
    );
    let text = logger.out.text();
    assert_eq!(
        text.matches("events published while it was down were not received")
            .count()
            + text.matches("Redis connection lost").count(),
        1,
        "one gap line per outage:\n{text}"
    );
    cluster.thaw_node(subscribed);
    logger.stop().await.expect("clean stop");
}
