//! The logger on Redis Cluster (`redis-cluster://`, [`hermes_testkit::ClusterSet`]: three real
//! primaries, three replicas). Log events keep classic PUBLISH: a cluster broadcasts it to every
//! node, so the logger's one PSUBSCRIBE `logs:*` (on whichever node it landed) sees events
//! published on any node, and `--since` reads `logs-history`, one key on one primary.

mod common;

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
