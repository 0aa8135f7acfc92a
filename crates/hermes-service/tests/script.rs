//! The shared Lua script runner against a real redis-server: it runs a script Redis has never
//! seen (NOSCRIPT → SCRIPT LOAD → EVALSHA), keeps working after the script cache is flushed
//! (what a Redis restart does), and reports a script error instead of hiding it.

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
