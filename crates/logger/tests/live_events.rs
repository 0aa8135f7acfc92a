//! Events published by services (through the real `EventPublisher`) appear on the console as
//! rendered lines, in order, with the detail when asked for; `--json` emits parseable LogEvents.

mod common;

use common::*;
use hermes_proto::{LogEvent, LogLevel};
use hermes_service::EventPublisher;
use hermes_testkit::RedisServer;

#[tokio::test]
async fn published_events_are_rendered_in_order() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &["--detail"]).await;
    let client = client(&redis.url()).await;
    let api = EventPublisher::spawn(client.clone(), "api");
    let signal = EventPublisher::spawn(client.clone(), "signal");

    api.event(
        LogLevel::Info,
        "call.created",
        Some(&call(CALL_A)),
        serde_json::json!({"ttl": 86400}),
    );
    let created = logger.line_with(&["call.created"]).await;
    signal.event(
        LogLevel::Warn,
        "peer.reconnecting",
        Some(&call(CALL_A)),
        serde_json::Value::Null,
    );
    let reconnecting = logger.line_with(&["peer.reconnecting"]).await;

    // time service level event shortId detail
    let cols: Vec<&str> = created.split_whitespace().collect();
    assert_eq!(cols.len(), 6, "{created:?}");
    assert_eq!(cols[0].len(), "07:41:40.123".len(), "{created:?}");
    assert_eq!(
        &cols[1..],
        [
            "api",
            "INFO",
            "call.created",
            "c0ffee0c",
            r#"{"ttl":86400}"#
        ]
    );
    let cols: Vec<&str> = reconnecting.split_whitespace().collect();
    assert_eq!(
        &cols[1..],
        ["signal", "WARN", "peer.reconnecting", "c0ffee0c"]
    );
    assert!(
        !logger.out.text().contains('\x1b'),
        "not a terminal: no colors"
    );

    // Many events keep their order.
    for i in 0..200 {
        api.event(
            LogLevel::Debug,
            "burst",
            None,
            serde_json::json!({ "i": i }),
        );
    }
    logger.line_with(&[r#"{"i":199}"#]).await;
    let burst: Vec<String> = logger
        .out
        .lines()
        .into_iter()
        .filter(|l| l.contains(" burst "))
        .collect();
    assert_eq!(burst.len(), 200);
    for (i, line) in burst.iter().enumerate() {
        assert!(line.ends_with(&format!(r#"{{"i":{i}}}"#)), "{line}");
    }
    logger.stop().await.expect("clean stop");
}

#[tokio::test]
async fn detail_is_hidden_unless_enabled() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &[]).await;
    let client = client(&redis.url()).await;
    let mut ev = event(
        "turn",
        LogLevel::Info,
        "turn.allocation.created",
        Some(CALL_B),
    );
    ev.detail = serde_json::json!({"relay": "secret-ish"});
    publish_event(&client, &ev).await;
    let line = logger.line_with(&["turn.allocation.created"]).await;
    assert!(line.ends_with("deadbeef"), "{line:?}");
    assert!(!line.contains("relay"), "{line:?}");
    logger.stop().await.expect("clean stop");
}

#[tokio::test]
async fn json_output_parses_as_the_published_log_events() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &["--json"]).await;
    let client = client(&redis.url()).await;
    let mut sent = Vec::new();
    for (i, level) in [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ]
    .into_iter()
    .enumerate()
    {
        let mut ev = event("api", level, &format!("e{i}"), Some(CALL_A));
        ev.detail = serde_json::json!({"i": i, "nested": {"s": "x\"y"}});
        publish_event(&client, &ev).await;
        sent.push(ev);
    }
    let no_call = event("signal", LogLevel::Info, "no.call", None);
    publish_event(&client, &no_call).await;
    sent.push(no_call);
    eventually("five JSON lines", || logger.out.lines().len() == 5).await;
    let got: Vec<LogEvent> = logger
        .out
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is a LogEvent"))
        .collect();
    assert_eq!(got, sent);
    logger.stop().await.expect("clean stop");
}
