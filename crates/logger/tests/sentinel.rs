//! The logger on `redis-sentinel://` ([`hermes_testkit::SentinelSet`]: real primary, replica
//! and three sentinels): the primary is SIGKILLed mid-stream, the sentinels promote the
//! replica, and the logger follows by itself (fred asks the sentinels for the new primary and
//! subscribes again), printing one gap line and the events published after the failover.

mod common;

use std::time::Duration;

use common::*;
use hermes_proto::LogLevel;
use hermes_testkit::SentinelSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logger_follows_a_sentinel_failover() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let logger = LibLogger::start(&url, &[]).await;
    let publisher = client(&url).await;
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "before.failover", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["before.failover"]).await;

    let failover = tokio::task::block_in_place(|| {
        set.kill_primary_and_wait_for_promotion(Duration::from_secs(30))
    });
    logger.line_with(&["Redis connection lost"]).await;
    // The publisher follows the failover too; publish until the logger's subscription counts.
    publish_until_received(
        &publisher,
        "after.failover",
        "logger never subscribed on the new primary",
    )
    .await;
    logger.line_with(&["after.failover"]).await;
    eprintln!(
        "logger: replica promoted {:?} after the kill, events shown again {:?} after it",
        failover.promoted_after,
        failover.killed_at.elapsed()
    );
    let text = logger.out.text();
    assert_eq!(
        text.matches("Redis connection lost").count(),
        1,
        "one gap line per outage:\n{text}"
    );
    logger.stop().await.expect("clean stop");
}

/// The primary hangs (SIGSTOP) instead of dying: its connections stay open, so fred would
/// never leave it by itself. The logger's watch sees the sentinels name another primary and
/// reconnects there; events published on the promoted replica reach the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logger_leaves_a_hung_primary_after_a_sentinel_failover() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let logger = LibLogger::start(&url, &[]).await;
    let publisher = client(&url).await;
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "before.freeze", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["before.freeze"]).await;

    let frozen_at = set.freeze_primary();
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(frozen_at, Duration::from_secs(30)));
    // A client made now asks the sentinels and lands on the promoted replica; the first one
    // stays on the hung primary (it has no watch).
    let publisher = client(&url).await;
    publish_until_received(
        &publisher,
        "after.freeze",
        "the logger never left the hung primary for the promoted replica",
    )
    .await;
    logger.line_with(&["after.freeze"]).await;
    eprintln!(
        "logger: replica promoted {:?} after the freeze, events shown again {:?} after it",
        failover.promoted_after,
        frozen_at.elapsed()
    );
    // No error reached the console (the hung connection never broke), so the gap line is the
    // one for a reconnect without a known start; there is exactly one.
    let text = logger.out.text();
    assert_eq!(
        text.matches("events published while it was down were not received")
            .count()
            + text.matches("Redis connection lost").count(),
        1,
        "one gap line per outage:\n{text}"
    );
    logger.stop().await.expect("clean stop");
}
