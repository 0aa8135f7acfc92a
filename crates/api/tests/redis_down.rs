//! Redis killed and restarted mid-test: bounded-time 503 with Retry-After, the limiter falls
//! back to in-process counting (logged, metric), and service resumes without a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Api, metric};
use hermes_proto::api::CreateCallResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_then_recovers() {
    let mut api = Api::start(&["--rate-limit", "5"]).await;
    let before: CreateCallResponse =
        serde_json::from_value(api.create().await.body).expect("create");
    assert_eq!(api.send(api.http.get(api.url("/readyz"))).await.status, 200);

    api.redis.kill();
    // Give the client a moment to notice the closed connection.
    tokio::time::sleep(Duration::from_millis(200)).await;

    for path in ["/api/call/create", "/api/join"] {
        let started = Instant::now();
        let r = api.post_auth(path, &before.token).await;
        let took = started.elapsed();
        assert_eq!(r.status, 503, "{path}: {:?}", r.body);
        assert_eq!(r.error_code(), "unavailable");
        assert_eq!(
            r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("2")
        );
        assert!(
            took < Duration::from_secs(3),
            "{path} answered in {took:?}, not bounded"
        );
        // 5xx says nothing internal.
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.to_lowercase().contains("redis"), "{message}");
    }
    let started = Instant::now();
    assert_eq!(api.send(api.http.get(api.url("/readyz"))).await.status, 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        api.send(api.http.get(api.url("/healthz"))).await.status,
        200
    );

    // The in-process fallback still enforces the per-IP limit of 5: two requests counted
    // above since the outage, three more pass the limiter (and get 503), the sixth is refused.
    for _ in 0..3 {
        assert_eq!(api.create().await.status, 503);
    }
    let r = api.create().await;
    assert_eq!(
        r.status, 429,
        "fallback limiter enforces the limit: {:?}",
        r.body
    );
    let text = api.metrics().await;
    assert_eq!(metric(&text, "hermes_api_ratelimit_degraded"), 1.0);
    assert!(metric(&text, "hermes_api_ratelimit_fallback_total") >= 5.0);
    assert!(metric(&text, "hermes_api_redis_errors_total") >= 1.0);

    // Redis comes back (empty: it kept no data). Same process, no restart.
    tokio::task::block_in_place(|| api.redis.restart());
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let r = api
            .send(
                api.http
                    .post(api.url("/api/call/create"))
                    .header("x-forwarded-for", "198.51.100.77"),
            )
            .await;
        if r.status == 201 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 10 s: {} {:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let created: CreateCallResponse = serde_json::from_value(created.body).expect("create");
    assert_eq!(api.resolve(&created.code).await.status, 200);
    assert_eq!(api.send(api.http.get(api.url("/readyz"))).await.status, 200);
    let text = api.metrics().await;
    assert_eq!(metric(&text, "hermes_api_ratelimit_degraded"), 0.0);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_serves_once_it_appears() {
    let mut redis = hermes_testkit::RedisServer::start();
    redis.kill();
    let mut api = Api::start_on(redis, &[]).await;
    let r = api.create().await;
    assert_eq!(r.status, 503);
    tokio::task::block_in_place(|| api.redis.restart());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api.create().await;
        if r.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.stop().await;
}
