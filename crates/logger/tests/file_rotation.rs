//! The file copy: plain (uncolored, dated, full callId) or JSON lines, its directory created,
//! and logrotate's dance: rename the file, SIGHUP, new lines go to a fresh file at the path.

mod common;

use common::*;
use hermes_proto::{LogEvent, LogLevel};
use hermes_testkit::RedisServer;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn plain_file_then_sighup_reopens_after_rename() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("calls/observer.log"); // directory does not exist yet
    let path_arg = path.to_str().expect("utf-8 path");
    let logger = BinLogger::spawn(
        &redis.url(),
        &[
            "--file",
            path_arg,
            "--health-listen",
            "off",
            "--color",
            "always",
        ],
        &[],
    );
    logger.wait_following().await;
    let client = client(&redis.url()).await;

    publish_event(
        &client,
        &event("api", LogLevel::Error, "before.rotate", Some(CALL_A)),
    )
    .await;
    eventually("first line in the file", || {
        read(&path).contains("before.rotate")
    })
    .await;
    let first = read(&path);
    assert!(
        !first.contains('\x1b'),
        "the file is never colored: {first:?}"
    );
    assert!(first.contains(CALL_A), "full callId in the file: {first:?}");
    let date = first.split_whitespace().next().unwrap_or_default();
    assert!(
        date.len() == "2026-01-01T00:00:00.000Z".len() && date.ends_with('Z'),
        "{first:?}"
    );
    // The console got the colored line at the same time.
    assert!(
        logger
            .stdout_line_with("before.rotate")
            .await
            .contains('\x1b')
    );

    let rotated = dir.path().join("calls/observer.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    signal(&logger.child, "HUP");
    // The reopen happens asynchronously; publish until a line lands in the new file.
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = 0;
    while !read(&path).contains("after.rotate") {
        assert!(
            std::time::Instant::now() < deadline,
            "no new file after SIGHUP"
        );
        n += 1;
        let name = format!("after.rotate.{n}");
        publish_event(&client, &event("api", LogLevel::Info, &name, Some(CALL_A))).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let old = read(&rotated);
    let new = read(&path);
    assert!(old.contains("before.rotate"), "{old}");
    assert!(!new.contains("before.rotate"), "{new}");
    // Every line is in exactly one of the two files: nothing lost, nothing doubled.
    for i in 1..=n {
        let name = format!("after.rotate.{i} ");
        let count = old.matches(&name).count() + new.matches(&name).count();
        if i < n {
            assert_eq!(count, 1, "{name} in old:\n{old}\nnew:\n{new}");
        }
    }
}

#[tokio::test]
async fn json_file_lines_are_log_events() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("observer.jsonl");
    let path_arg = path.to_str().expect("utf-8 path");
    let logger = LibLogger::start(
        &redis.url(),
        &["--file", path_arg, "--file-format", "json", "--detail"],
    )
    .await;
    let client = client(&redis.url()).await;
    let mut ev = event("signal", LogLevel::Info, "peer.joined", Some(CALL_B));
    ev.detail = serde_json::json!({"role": "answerer"});
    publish_event(&client, &ev).await;
    publish_raw(&client, "logs:signal", "garbage").await;
    logger.line_with(&["malformed"]).await;
    eventually("two JSON lines", || read(&path).lines().count() == 2).await;
    let lines: Vec<LogEvent> = read(&path)
        .lines()
        .map(|l| serde_json::from_str(l).expect("LogEvent line"))
        .collect();
    assert_eq!(lines[0], ev);
    assert_eq!(lines[1].service, "logger");
    assert_eq!(lines[1].event, "logger.malformed");
    assert_eq!(lines[1].detail["raw"], "garbage");
    logger.stop().await.expect("clean stop");
}

#[tokio::test]
async fn unwritable_file_location_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").expect("file");
    let bad = blocker.join("observer.log");
    let output = std::process::Command::new(logger_bin())
        .args([
            "--file",
            bad.to_str().expect("utf-8"),
            "--health-listen",
            "off",
        ])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open log file"), "{stderr}");
    assert!(stderr.contains(bad.to_str().expect("utf-8")), "{stderr}");
    assert!(stderr.contains("--no-file"), "{stderr}");
}
