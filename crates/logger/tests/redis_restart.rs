//! Redis dies mid-stream and comes back on the same port: the logger reconnects with backoff,
//! prints exactly one line about the gap, and shows events published afterwards.

mod common;

use std::time::Duration;

use common::*;
use hermes_proto::{LogEvent, LogLevel};
use hermes_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_prints_one_gap_line_and_keeps_going() {
    let mut redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &[]).await;
    let publisher = client(&redis.url()).await;
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "before.restart", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["before.restart"]).await;

    redis.kill();
    // Down long enough for several failed reconnect attempts (backoff starts at 50 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();

    let gap = logger.line_with(&["Redis connection lost"]).await;
    assert!(gap.contains("logger") && gap.contains("WARN"), "{gap}");
    // The publisher's client reconnects on its own; publish until the event shows.
    publish_until_received(&publisher, "after.restart", "logger never resubscribed").await;
    logger.line_with(&["after.restart"]).await;
    // One more event through the same subscription: every line about this outage was printed
    // before it.
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "settled", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["settled"]).await;
    let text = logger.out.text();
    assert_eq!(
        text.matches("Redis connection lost").count(),
        1,
        "one gap line per outage:\n{text}"
    );
    let gap_at = text.find("Redis connection lost").expect("gap");
    assert!(text.find("before.restart").expect("before") < gap_at);
    assert!(gap_at < text.find("after.restart").expect("after"));
    logger.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_is_a_log_event_in_json_mode_and_two_outages_give_two_lines() {
    let mut redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &["--json"]).await;
    for round in 1..=2 {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.restart();
        eventually(&format!("gap event {round}"), || {
            logger
                .out
                .lines()
                .iter()
                .filter(|l| l.contains("logger.gap"))
                .count()
                == round
        })
        .await;
    }
    for line in logger.out.lines() {
        let ev: LogEvent = serde_json::from_str(&line).expect("every JSON line is a LogEvent");
        assert_eq!(ev.event, "logger.gap");
        assert_eq!(ev.service, "logger");
        let lost = ev.detail["lostAt"].as_u64().expect("lostAt");
        let back = ev.detail["resubscribedAt"]
            .as_u64()
            .expect("resubscribedAt");
        assert!(lost <= back && back - lost >= 300, "{line}");
    }
    logger.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_redis_and_follows_once_it_is_up() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let logger = BinLogger::spawn(&url, &["--no-file", "--health-listen", "off"], &[]);
    let stderr = logger.stderr.clone();
    eventually("`waiting for Redis` on stderr", || {
        stderr
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("waiting for Redis"))
    })
    .await;
    redis.restart();
    logger.wait_following().await;
    let publisher = client(&url).await;
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "late.start", None),
    )
    .await;
    logger.stdout_line_with("late.start").await;
    let text = logger.stdout_lines().join("\n");
    assert!(
        !text.contains("Redis connection lost"),
        "no gap before the first subscription: {text}"
    );
}

/// How many commands Redis refused for lack of channel rights (`ACL LOG`, whose entries for
/// the same user, reason and object are merged with a count).
fn refused_channel_commands(redis: &RedisServer) -> u64 {
    let log = redis.raw_command("ACL LOG").expect("ACL LOG");
    // RESP2: each entry is a flat key/value array; "reason" "channel" … "count" :N
    log.split("*")
        .filter(|entry| entry.contains("\r\nchannel\r\n"))
        .filter_map(|entry| {
            let after = entry.split("count\r\n:").nth(1)?;
            after.split("\r\n").next()?.parse::<u64>().ok()
        })
        .sum()
}

/// A PSUBSCRIBE refused on a working connection (an ACL without channel rights; fred reports
/// it as a success, the logger checks with CLIENT LIST) is retried on a timer until it
/// succeeds: there may be no further reconnect event to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resubscribe_is_retried_until_it_succeeds() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &[]).await;
    let reply = redis
        .raw_command("ACL SETUSER default resetchannels")
        .expect("ACL");
    assert!(reply.starts_with("+OK"), "{reply}");
    let reply = redis.raw_command("CLIENT KILL TYPE pubsub").expect("kill");
    assert!(reply.starts_with(':'), "{reply}");
    // Reconnected, but PSUBSCRIBE is refused (Redis logs each refusal in ACL LOG): after the
    // first refusal and one retry on the timer, still no gap line.
    eventually("two refused PSUBSCRIBEs in ACL LOG", || {
        refused_channel_commands(&redis) >= 2
    })
    .await;
    assert!(
        !logger.out.text().contains("Redis connection"),
        "{}",
        logger.out.text()
    );
    let reply = redis
        .raw_command("ACL SETUSER default allchannels")
        .expect("ACL");
    assert!(reply.starts_with("+OK"), "{reply}");
    logger.line_with(&["Redis connection lost"]).await;
    let publisher = client(&redis.url()).await;
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "after.retry", None),
    )
    .await;
    logger.line_with(&["after.retry"]).await;
    logger.stop().await.expect("clean stop");
}

/// Refused at startup (no channel rights): the logger says why on stderr instead of sitting
/// deaf, and follows once the ACL allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_at_startup_says_why_and_follows_once_allowed() {
    let redis = RedisServer::start();
    let reply = redis
        .raw_command("ACL SETUSER default resetchannels")
        .expect("ACL");
    assert!(reply.starts_with("+OK"), "{reply}");
    let logger = BinLogger::spawn(&redis.url(), &["--no-file", "--health-listen", "off"], &[]);
    let stderr = logger.stderr.clone();
    eventually("the reason on stderr", || {
        stderr
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("channel permissions"))
    })
    .await;
    let reply = redis
        .raw_command("ACL SETUSER default allchannels")
        .expect("ACL");
    assert!(reply.starts_with("+OK"), "{reply}");
    logger.wait_following().await;
    let publisher = client(&redis.url()).await;
    publish_event(
        &publisher,
        &event("api", LogLevel::Info, "allowed.now", None),
    )
    .await;
    logger.stdout_line_with("allowed.now").await;
}
