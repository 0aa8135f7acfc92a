//! Payloads that are not log events are shown raw (escaped, truncated) with a warning; the
//! logger never crashes and keeps rendering the good events that follow.

mod common;

use common::*;
use hermes_proto::LogLevel;
use hermes_testkit::RedisServer;

#[tokio::test]
async fn bad_payloads_are_shown_raw_and_the_stream_goes_on() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &["--detail"]).await;
    let client = client(&redis.url()).await;

    let big = "x".repeat(100_000);
    let cases: Vec<(&str, fred::types::Value)> = vec![
        ("logs:api", "plain text".into()),
        ("logs:api", r#"{"ts":1,"service":"api"}"#.into()),
        (
            "logs:signal",
            r#"{"ts":"soon","service":"signal","level":"info","event":"e"}"#.into(),
        ),
        (
            "logs:turn",
            r#"{"ts":1,"service":"turn","level":"loud","event":"e"}"#.into(),
        ),
        (
            "logs:api",
            r#"{"ts":1,"service":"api","level":"info","event":"e","callId":"../etc"}"#.into(),
        ),
        (
            "logs:api",
            fred::types::Value::Bytes(vec![0xff, 0xfe, 0x1b, b'[', b'2', b'J'].into()),
        ),
        ("logs:api", "".into()),
        ("logs:api", big.as_str().into()),
        ("logs:api", "\x1b]0;pwned\x07\x1b[31mred".into()),
    ];
    for (channel, payload) in cases.iter().cloned() {
        publish_raw(&client, channel, payload).await;
    }
    publish_event(
        &client,
        &event("api", LogLevel::Info, "still.alive", Some(CALL_A)),
    )
    .await;
    logger.line_with(&["still.alive"]).await;

    let lines = logger.out.lines();
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("malformed event"))
        .collect();
    assert_eq!(
        warnings.len(),
        cases.len(),
        "one warning per bad payload:\n{}",
        lines.join("\n")
    );
    for w in &warnings {
        assert!(w.contains(" WARN "), "{w}");
        assert!(w.len() < 1_400, "long payloads are cut: {} bytes", w.len());
    }
    assert!(
        warnings[0].contains("plain text") && warnings[0].contains(" api "),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[2].contains(" signal ") && warnings[2].contains("soon"),
        "{}",
        warnings[2]
    );
    assert!(
        warnings[3].contains(" turn ") && warnings[3].contains("loud"),
        "{}",
        warnings[3]
    );
    assert!(
        warnings[4].contains("callId"),
        "invalid callId is malformed: {}",
        warnings[4]
    );
    assert!(warnings[7].contains("(100000 bytes)"), "{}", warnings[7]);
    let text = logger.out.text();
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "no raw terminal controls reach the console"
    );
    assert!(text.contains("\\u{1b}]0;pwned"), "escaped, still readable");
    logger.stop().await.expect("clean stop");
}

#[tokio::test]
async fn service_filter_applies_to_malformed_payloads_by_channel() {
    let redis = RedisServer::start();
    let logger = LibLogger::start(&redis.url(), &["--service", "turn"]).await;
    let client = client(&redis.url()).await;
    publish_raw(&client, "logs:api", "api garbage").await;
    publish_raw(&client, "logs:turn", "turn garbage").await;
    publish_event(&client, &event("turn", LogLevel::Info, "end", None)).await;
    logger.line_with(&[" end "]).await;
    let text = logger.out.text();
    assert!(text.contains("turn garbage"), "{text}");
    assert!(!text.contains("api garbage"), "{text}");
    logger.stop().await.expect("clean stop");
}
