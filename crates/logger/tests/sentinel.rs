//! The logger on `redis-sentinel://` ([`hermes_testkit::SentinelSet`]: real primary, replica
//! and three sentinels): the primary is SIGKILLed mid-stream, the sentinels promote the
//! replica, and the logger follows by itself (fred asks the sentinels for the new primary and
//! subscribes again), printing one gap line and the events published after the failover.

mod common;

use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = event("signal", LogLevel::Info, "after.failover", Some(CALL_A));
        let json = serde_json::to_string(&ev).expect("json");
        let sent: Result<i64, _> =
            fred::interfaces::PubsubInterface::publish(&publisher, ev.channel(), json).await;
        if sent.is_ok_and(|receivers| receivers > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logger never subscribed on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
