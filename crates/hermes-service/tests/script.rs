//! The shared Lua script runner against a real redis-server: it runs a script Redis has never
//! seen (NOSCRIPT → SCRIPT LOAD → EVALSHA), keeps working after the script cache is flushed
//! (what a Redis restart does), and reports a script error instead of hiding it; and the
//! script-then-WAIT runner of durable writes.

use std::time::Duration;

use fred::prelude::*;
use hermes_service::redis::Script;
use hermes_testkit::RedisServer;

const ECHO_LUA: &str = "return {KEYS[1], ARGV[1], ARGV[2]}";

#[tokio::test]
async fn script_loads_on_noscript_and_again_after_a_flush() {
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("client");
    let script = Script::new(ECHO_LUA);
    let exists = |client: Client, sha: String| async move {
        let found: Vec<bool> = client.script_exists(sha).await.expect("SCRIPT EXISTS");
        found[0]
    };
    assert!(!exists(client.clone(), script.sha().to_owned()).await);

    let got: Vec<String> = script
        .run(&client, vec!["k".into()], vec!["a".into(), "b".into()])
        .await
        .expect("first run loads the script");
    assert_eq!(got, ["k", "a", "b"]);
    assert!(
        exists(client.clone(), script.sha().to_owned()).await,
        "the script stays loaded"
    );

    let _: () = client.script_flush(false).await.expect("SCRIPT FLUSH");
    let got: Vec<String> = script
        .run(&client, vec!["k2".into()], vec!["c".into(), "d".into()])
        .await
        .expect("runs again after the cache was emptied");
    assert_eq!(got, ["k2", "c", "d"]);
}

#[tokio::test]
async fn script_error_reaches_the_caller() {
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("client");
    let script = Script::new("return redis.error_reply('BADTHING no such call')");
    let err = script
        .run::<String>(&client, vec![], vec![])
        .await
        .expect_err("a script error is an error");
    assert!(err.details().contains("BADTHING"), "{err:?}");
}

/// `run_then_wait` on a Redis without replicas: the script runs (loaded on NOSCRIPT first),
/// its write is there, and the WAIT answers 0 acknowledgements once its timeout passed.
#[tokio::test]
async fn run_then_wait_loads_the_script_and_counts_no_replica() {
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("client");
    let twin = hermes_service::redis::twin_without_resends(&client).expect("twin");
    twin.connect();
    twin.wait_for_connect().await.expect("twin connects");
    let script = Script::new("redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]");
    let started = std::time::Instant::now();
    let (got, acked): (String, u64) = script
        .run_then_wait(
            &twin,
            vec!["written".into()],
            vec!["v".into()],
            Duration::from_millis(100),
        )
        .await
        .expect("runs after NOSCRIPT");
    assert_eq!((got.as_str(), acked), ("v", 0));
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "WAIT waited"
    );
    let stored: Option<String> = client.get("written").await.expect("GET");
    assert_eq!(stored.as_deref(), Some("v"));
}
