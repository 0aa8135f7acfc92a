//! The event publisher against a real redis-server: events reach `logs:{service}` subscribers
//! and the `logs-history` stream, and emitting never blocks while Redis is down.

use std::time::Duration;

use fred::prelude::*;
use hermes_proto::keys::LOG_HISTORY_STREAM;
use hermes_proto::{CallId, LogEvent, LogLevel};
use hermes_service::EventPublisher;
use hermes_testkit::RedisServer;

#[tokio::test]
async fn events_are_published_and_kept_in_history() {
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("client");
    let subscriber =
        hermes_service::redis::connect_subscriber(&redis.url(), Duration::from_secs(5))
            .await
            .expect("subscriber");
    let mut messages = subscriber.message_rx();
    subscriber.psubscribe("logs:*").await.expect("psubscribe");

    let publisher = EventPublisher::spawn(client.clone(), "api");
    let call = CallId::parse("c0ffee0c0ffee0c0ffee0c0ffe").expect("id");
    publisher.event(
        LogLevel::Info,
        "call.created",
        Some(&call),
        serde_json::json!({"n": 1}),
    );

    let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .expect("event within 5 s")
        .expect("message");
    assert_eq!(msg.channel.to_string(), "logs:api");
    let text: String = msg.value.convert().expect("string payload");
    let event: LogEvent = serde_json::from_str(&text).expect("LogEvent JSON");
    assert_eq!(event.event, "call.created");
    assert_eq!(event.call_id, Some(call));
    assert_eq!(event.service, "api");

    // The history stream holds the same event.
    // Polled for up to 10 s: the publisher sends in the background, and a loaded machine may
    // delay it well past the usual few milliseconds.
    let mut len = 0;
    for _ in 0..500 {
        len = client
            .xlen::<u64, _>(LOG_HISTORY_STREAM)
            .await
            .expect("xlen");
        if len == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(len, 1);
}

#[tokio::test]
async fn emit_does_not_block_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("client");
    assert!(hermes_service::redis::is_ready(&client).await);
    redis.kill();
    let publisher = EventPublisher::spawn(client.clone(), "signal");
    let started = std::time::Instant::now();
    for i in 0..20_000 {
        publisher.emit(LogEvent::new(i, "signal", LogLevel::Debug, "flood"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "emit must not wait on Redis"
    );
    assert!(publisher.dropped() > 0, "a full queue drops and counts");
    let readiness = tokio::time::timeout(
        Duration::from_secs(5),
        hermes_service::redis::is_ready(&client),
    )
    .await
    .expect("readiness answers in bounded time");
    assert!(!readiness);

    redis.restart();
    let mut ready = false;
    // Up to 15 s: the reconnect backoff plus a loaded machine.
    for _ in 0..300 {
        if hermes_service::redis::is_ready(&client).await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "client reconnects after Redis returns, without restart"
    );
}

#[tokio::test]
async fn a_client_started_before_redis_connects_when_redis_comes_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_millis(200))
        .await
        .expect("client is built even when Redis is down");
    assert!(!hermes_service::redis::is_ready(&client).await);
    redis.restart();
    let mut ready = false;
    // Up to 15 s: the reconnect backoff plus a loaded machine.
    for _ in 0..300 {
        if hermes_service::redis::is_ready(&client).await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "first connection is retried until Redis answers");
}

/// A burst goes out in pipelined batches: every event reaches both the live channel and the
/// history, each in the order emitted (the logger's history-then-live seam relies on it).
#[tokio::test]
async fn a_burst_arrives_complete_and_in_order_on_both_paths() {
    const N: u64 = 1_000;
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("client");
    // A ring that holds the whole burst: fred drops what a slow receiver falls behind on.
    let options = hermes_service::redis::ClientOptions {
        broadcast_capacity: Some(2 * N as usize),
        ..Default::default()
    };
    let subscriber = hermes_service::redis::connect_subscriber_with(
        &redis.url(),
        Duration::from_secs(5),
        &options,
    )
    .await
    .expect("subscriber");
    let mut messages = subscriber.message_rx();
    subscriber.psubscribe("logs:*").await.expect("psubscribe");

    let publisher = EventPublisher::spawn(client.clone(), "signal");
    for i in 0..N {
        publisher.emit(LogEvent::new(i, "signal", LogLevel::Info, "burst"));
    }
    assert_eq!(publisher.dropped(), 0);
    for i in 0..N {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .expect("event within 10 s")
            .expect("message");
        let text: String = msg.value.convert().expect("string payload");
        let event: LogEvent = serde_json::from_str(&text).expect("LogEvent JSON");
        assert_eq!(event.ts, i, "live events in emit order");
    }
    // Each event's XADD follows its PUBLISH in the same pipeline, so once the last event was
    // seen live, its history entry is queued right behind it.
    let mut entries: Vec<(String, std::collections::HashMap<String, String>)> = Vec::new();
    for _ in 0..500 {
        entries = client
            .xrange(LOG_HISTORY_STREAM, "-", "+", None)
            .await
            .expect("xrange");
        if entries.len() as u64 == N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stamps: Vec<u64> = entries
        .iter()
        .map(|(_, fields)| {
            serde_json::from_str::<LogEvent>(&fields["event"])
                .expect("LogEvent JSON")
                .ts
        })
        .collect();
    assert_eq!(stamps, (0..N).collect::<Vec<_>>(), "history in emit order");
}
