//! `--since`: the recent history is printed first, then live events follow, with no duplicate
//! and no gap at the seam even while events keep being published during startup.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use fred::prelude::*;
use hermes_proto::LogLevel;
use hermes_proto::keys::LOG_HISTORY_STREAM;
use hermes_testkit::RedisServer;

/// Events in the history before the logger starts: many XRANGE pages, so the replay takes a
/// while and live events pile up in both the replayed pages and the live buffer.
const PRE: u64 = 20_000;
/// XADDs per pipeline when loading the history: each round trip stays small.
const LOAD_BATCH: u64 = 1_000;
/// Concurrent live publishers, each numbering its own events.
const PUBLISHERS: usize = 3;
/// Bound of each live publisher.
const MAX_LIVE: u64 = 20_000;
/// Events each publisher sends after the seam banner before they are stopped.
const LIVE_AFTER_SEAM: u64 = 300;

/// `seq.{publisher}.{n}` → (publisher, n)
fn numbered(line: &str) -> Option<(usize, u64)> {
    let name = line.split_whitespace().nth(3)?;
    let (k, n) = name.strip_prefix("seq.")?.split_once('.')?;
    Some((k.parse().ok()?, n.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_without_duplicate_or_gap() {
    let redis = RedisServer::start();
    let client = client(&redis.url()).await;
    // Before the logger starts: publisher 0's events exist only in the history.
    for batch in (0..PRE).step_by(LOAD_BATCH as usize) {
        let pipeline = client.pipeline();
        for i in batch..(batch + LOAD_BATCH).min(PRE) {
            let ev = event("api", LogLevel::Info, &format!("seq.0.{i}"), Some(CALL_A));
            let json = serde_json::to_string(&ev).expect("json");
            let _: () = pipeline
                .xadd(LOG_HISTORY_STREAM, false, None, "*", vec![("event", json)])
                .await
                .expect("queue XADD");
        }
        let _: Vec<Value> = pipeline.all().await.expect("XADD pipeline");
    }

    // Live publishers that keep going while the logger subscribes and replays.
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for k in 1..=PUBLISHERS {
        let (client, stop) = (client.clone(), stop.clone());
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        publishers.push((
            sent,
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && i < MAX_LIVE {
                    let ev = event("api", LogLevel::Info, &format!("seq.{k}.{i}"), Some(CALL_A));
                    publish_event(&client, &ev).await;
                    i += 1;
                    counter.store(i, Ordering::SeqCst);
                }
            }),
        ));
    }
    let counts = |publishers: &[(Arc<AtomicU64>, _)]| -> Vec<u64> {
        publishers
            .iter()
            .map(|(sent, _)| sent.load(Ordering::SeqCst))
            .collect()
    };
    // Every publisher is running before the logger starts.
    eventually("every publisher sent an event", || {
        counts(&publishers).iter().all(|&n| n > 0)
    })
    .await;
    let logger = LibLogger::start(&redis.url(), &["--since", "10m"]).await;
    // Let live events flow past the seam (each publisher sends LIVE_AFTER_SEAM more after the
    // banner, or reaches its bound), then stop publishing.
    logger.line_with(&["following live"]).await;
    let at_seam = counts(&publishers);
    eventually("live events past the seam", || {
        counts(&publishers)
            .iter()
            .zip(&at_seam)
            .all(|(&now, &then)| now >= (then + LIVE_AFTER_SEAM).min(MAX_LIVE))
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut totals = vec![PRE];
    for (sent, task) in publishers {
        task.await.expect("publisher");
        totals.push(sent.load(Ordering::SeqCst));
    }
    for (k, total) in totals.iter().enumerate().skip(1) {
        assert!(*total > 0, "publisher {k} ran");
        logger
            .line_with(&[&format!("seq.{k}.{} ", total - 1)])
            .await;
    }
    // No wait for a late duplicate is needed: a publisher's events arrive in order, and a
    // duplicate is the live copy of a replayed event, so it would have come before the last one.

    let lines = logger.out.lines();
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); PUBLISHERS + 1];
    for (k, n) in lines.iter().filter_map(|l| numbered(l)) {
        seen[k].push(n);
    }
    for (k, total) in totals.iter().enumerate() {
        let expected: Vec<u64> = (0..*total).collect();
        if seen[k] != expected {
            let dups = seen[k].len() as i64 - *total as i64;
            let missing: Vec<u64> = expected
                .iter()
                .filter(|n| !seen[k].contains(n))
                .take(10)
                .copied()
                .collect();
            panic!(
                "publisher {k}: must be 0..{total} exactly once in order (len diff {dups}, first missing {missing:?})"
            );
        }
    }
    // The banner sits at the seam: after the replayed ones, before the live ones.
    let banner = lines
        .iter()
        .position(|l| l.contains("following live"))
        .expect("banner");
    assert!(
        banner >= PRE as usize,
        "banner after the {PRE} replayed events (at {banner})"
    );
    logger.stop().await.expect("clean stop");
}

#[tokio::test]
async fn since_limits_how_far_back_and_applies_filters() {
    let redis = RedisServer::start();
    let client = client(&redis.url()).await;
    let now = hermes_service::unix_now_ms();
    // Entries with explicit ids: two hours ago (outside --since 1h), then 30 minutes ago.
    for (age_ms, name, call_id) in [
        (2 * 3_600_000u64, "too.old", CALL_A),
        (1_800_000, "recent.a", CALL_A),
        (1_799_000, "recent.b", CALL_B),
    ] {
        let mut ev = event("api", LogLevel::Info, name, Some(call_id));
        ev.ts = now - age_ms;
        let json = serde_json::to_string(&ev).expect("json");
        let _: String = client
            .xadd(
                LOG_HISTORY_STREAM,
                false,
                None,
                format!("{}-0", now - age_ms),
                vec![("event", json)],
            )
            .await
            .expect("XADD with id");
    }
    // And one entry that is not an event at all.
    let _: String = client
        .xadd(
            LOG_HISTORY_STREAM,
            false,
            None,
            format!("{}-1", now - 1_000_000),
            vec![("event", "{broken")],
        )
        .await
        .expect("XADD broken");
    let logger = LibLogger::start(&redis.url(), &["--since", "1h", "--call", "c0ffee"]).await;
    logger.line_with(&["following live"]).await;
    publish_event(
        &client,
        &event("api", LogLevel::Info, "live.a", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["live.a"]).await;
    let text = logger.out.text();
    assert!(!text.contains("too.old"), "{text}");
    assert!(!text.contains("recent.b"), "filtered by call: {text}");
    assert!(text.contains("recent.a"), "{text}");
    assert!(
        text.contains("malformed event") && text.contains("{broken"),
        "{text}"
    );
    assert!(text.contains("1 events from the history"), "{text}");
    let order = ["recent.a", "malformed", "following live", "live.a"];
    let positions: Vec<usize> = order
        .iter()
        .map(|n| text.find(n).expect("present"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    logger.stop().await.expect("clean stop");
}

#[tokio::test]
async fn since_with_an_empty_history_just_follows() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &["--since", "5m"]).await;
    logger.line_with(&["0 events from the history"]).await;
    let client = client(&redis.url()).await;
    publish_event(&client, &event("turn", LogLevel::Warn, "live.only", None)).await;
    logger.line_with(&["live.only"]).await;
    logger.stop().await.expect("clean stop");
}
