//! Filters by callId (prefix, several), service and minimum level, from flags and from the
//! environment, against a real Redis.

mod common;

use common::*;
use hermes_proto::LogLevel;
use hermes_testkit::RedisServer;

async fn publish_mix(client: &fred::clients::Client) {
    let events = [
        event("api", LogLevel::Info, "a.info", Some(CALL_A)),
        event("signal", LogLevel::Debug, "a.debug", Some(CALL_A)),
        event("turn", LogLevel::Error, "a.error", Some(CALL_A)),
        event("api", LogLevel::Warn, "b.warn", Some(CALL_B)),
        event("signal", LogLevel::Error, "nocall.error", None),
        // Last, so a test can wait for it and know everything before it was seen.
        event("api", LogLevel::Error, "end", Some(CALL_A)),
    ];
    for ev in &events {
        publish_event(client, ev).await;
    }
}

async fn shown(args: &[&str]) -> Vec<String> {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), args).await;
    let client = client(&redis.url()).await;
    publish_mix(&client).await;
    logger.line_with(&[" end "]).await;
    let names = logger
        .out
        .lines()
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
        .collect();
    logger.stop().await.expect("clean stop");
    names
}

#[tokio::test]
async fn by_call_prefix() {
    assert_eq!(
        shown(&["--call", "c0ffee0c"]).await,
        ["a.info", "a.debug", "a.error", "end"]
    );
}

#[tokio::test]
async fn by_several_calls_and_full_id() {
    let both = format!("{CALL_A},{CALL_B}");
    assert_eq!(
        shown(&["--call", &both]).await,
        ["a.info", "a.debug", "a.error", "b.warn", "end"]
    );
}

#[tokio::test]
async fn by_service_and_level() {
    assert_eq!(
        shown(&["--service", "api", "--service", "turn"]).await,
        ["a.info", "a.error", "b.warn", "end"]
    );
    assert_eq!(
        shown(&["--level", "error"]).await,
        ["a.error", "nocall.error", "end"]
    );
    assert_eq!(
        shown(&["--level", "warn", "--service", "api", "--call", "c0ffee"]).await,
        ["end"]
    );
}

/// The environment contract: LOGGER_CALL_FILTER is a comma list, read by the binary.
#[tokio::test]
async fn call_filter_from_the_environment() {
    let redis = RedisServer::start();
    let logger = BinLogger::spawn(
        &redis.url(),
        &["--no-file", "--health-listen", "off"],
        &[("LOGGER_CALL_FILTER", "deadbeef, zzzz")],
    );
    logger.wait_following().await;
    let client = client(&redis.url()).await;
    publish_mix(&client).await;
    publish_event(
        &client,
        &event("api", LogLevel::Info, "b.end", Some(CALL_B)),
    )
    .await;
    logger.stdout_line_with("b.end").await;
    let names: Vec<String> = logger
        .stdout_lines()
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["b.warn", "b.end"]);
}
