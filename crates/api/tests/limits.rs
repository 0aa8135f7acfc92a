//! Rate limits hit exactly at their thresholds, and the trusted-proxy rule for client IPs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Reply, metric};
use hermes_proto::api::CreateCallResponse;

async fn resolve_from(api: &Api, code: &str, xff: &str) -> Reply {
    api.send(
        api.http
            .post(api.url("/api/call/resolve"))
            .header("x-forwarded-for", xff)
            .json(&serde_json::json!({ "code": code })),
    )
    .await
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("429 carries Retry-After in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_requests_per_minute_per_ip() {
    let api = Api::start(&[]).await;
    for i in 1..=60 {
        let r = api.send(api.http.get(api.url("/api/openapi.json"))).await;
        assert_eq!(r.status, 200, "request {i} is within the limit");
    }
    let r = api.create().await;
    assert_eq!(r.status, 429, "the 61st request in the minute");
    assert_eq!(r.error_code(), "rate-limited");
    let secs = retry_after(&r);
    assert!((1..=60).contains(&secs), "{secs}");
    // Health endpoints are not API endpoints and stay reachable for probes.
    assert_eq!(
        api.send(api.http.get(api.url("/healthz"))).await.status,
        200
    );
    // The limit is per IP: another client (through the trusted proxy) is unaffected.
    let other = api
        .send(
            api.http
                .post(api.url("/api/call/create"))
                .header("x-forwarded-for", "198.51.100.20"),
        )
        .await;
    assert_eq!(other.status, 201);
    let text = api.metrics().await;
    assert_eq!(
        metric(&text, r#"hermes_api_rate_limited_total{limit="req"}"#),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"hermes_api_requests_total{route="/api/call/create",status="429"}"#
        ),
        1.0
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_resolves_per_ip_per_five_minutes() {
    let api = Api::start(&[]).await;
    let ip = "203.0.113.40";
    for i in 1..=40 {
        // Distinct (unknown) codes so the per-code limit does not interfere.
        let code = format!("{:06}", 100000 + i);
        let r = resolve_from(&api, &code, ip).await;
        assert_eq!(r.status, 404, "attempt {i}: {:?}", r.body);
    }
    let r = resolve_from(&api, "ZZZZZZ", ip).await;
    assert_eq!(r.status, 429, "the 41st attempt");
    let secs = retry_after(&r);
    assert!((240..=300).contains(&secs), "about 5 minutes: {secs}");
    // A valid code from the same IP is refused too (brute force cannot probe around it).
    let a: CreateCallResponse = serde_json::from_value(api.create().await.body).expect("create");
    assert_eq!(resolve_from(&api, &a.code, ip).await.status, 429);
    // ...and stays usable from elsewhere.
    assert_eq!(
        resolve_from(&api, &a.code, "203.0.113.41").await.status,
        200
    );
    let text = api.metrics().await;
    assert_eq!(
        metric(&text, r#"hermes_api_rate_limited_total{limit="resolve"}"#),
        2.0
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_attempts_per_code_per_five_minutes() {
    let api = Api::start(&[]).await;
    let a: CreateCallResponse = serde_json::from_value(api.create().await.body).expect("create");
    // Burn the code, then hammer it from many IPs.
    assert_eq!(resolve_from(&api, &a.code, "192.0.2.1").await.status, 200);
    for i in 2..=25 {
        let r = resolve_from(&api, &a.code, &format!("192.0.2.{i}")).await;
        assert_eq!(r.status, 404, "attempt {i}");
    }
    let r = resolve_from(&api, &a.code, "192.0.2.26").await;
    assert_eq!(r.status, 429, "the 26th attempt on one code");
    assert!(retry_after(&r) >= 240);
    // Spelling the same code differently does not dodge the limit.
    let r = resolve_from(&api, &a.code.to_lowercase(), "192.0.2.27").await;
    assert_eq!(r.status, 429);
    // Another code is unaffected.
    assert_eq!(resolve_from(&api, "111111", "192.0.2.28").await.status, 404);
    // The counter key is a hash: the code itself is nowhere in the rate-limit keys.
    let rl_keys = api.redis.raw_command("KEYS rl:code:*").expect("raw");
    assert!(rl_keys.contains("rl:code:"), "{rl_keys}");
    assert!(!rl_keys.contains(&a.code), "{rl_keys}");
    let text = api.metrics().await;
    assert_eq!(
        metric(&text, r#"hermes_api_rate_limited_total{limit="code"}"#),
        2.0
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    // Only 10.0.0.0/8 is a proxy: our loopback connection is a direct client.
    let api = Api::start(&["--trusted-proxies", "10.0.0.0/8", "--rate-limit", "3"]).await;
    for i in 1..=3 {
        let r = api
            .send(
                api.http
                    .get(api.url("/api/openapi.json"))
                    .header("x-forwarded-for", format!("198.51.100.{i}")),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = api
        .send(
            api.http
                .get(api.url("/api/openapi.json"))
                .header("x-forwarded-for", "198.51.100.99"),
        )
        .await;
    assert_eq!(r.status, 429, "a forged header does not buy a fresh bucket");
    let keys = api.redis.raw_command("KEYS rl:ip:*").expect("raw");
    assert!(keys.contains("rl:ip:127.0.0.1:req"), "{keys}");
    assert!(!keys.contains("198.51.100"), "{keys}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let api = Api::start(&["--rate-limit", "2"]).await;
    // Right-most untrusted hop counts; the forged left-most entry does not.
    for _ in 0..2 {
        let r = api
            .send(
                api.http
                    .get(api.url("/api/openapi.json"))
                    .header("x-forwarded-for", "6.6.6.6, 198.51.100.5"),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = api
        .send(
            api.http
                .get(api.url("/api/openapi.json"))
                .header("x-forwarded-for", "7.7.7.7, 198.51.100.5"),
        )
        .await;
    assert_eq!(r.status, 429);
    let r = api
        .send(
            api.http
                .get(api.url("/api/openapi.json"))
                .header("x-forwarded-for", "198.51.100.6"),
        )
        .await;
    assert_eq!(r.status, 200);
    let keys = api.redis.raw_command("KEYS rl:ip:*").expect("raw");
    assert!(keys.contains("rl:ip:198.51.100.5:req"), "{keys}");
    assert!(
        !keys.contains("6.6.6.6") && !keys.contains("7.7.7.7"),
        "{keys}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_by_replicas() {
    let first = Api::start(&["--rate-limit", "4"]).await;
    // A second replica on the same Redis.
    let second = Api::start_on(
        hermes_testkit::RedisServer::start(),
        &["--redis-url", &first.redis.url(), "--rate-limit", "4"],
    )
    .await;
    for api in [&first, &second, &first, &second] {
        assert_eq!(api.create().await.status, 201);
    }
    assert_eq!(first.create().await.status, 429);
    assert_eq!(second.create().await.status, 429);
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_count_and_limited_ones_change_nothing() {
    let api = Api::start(&["--rate-limit", "3"]).await;
    // Unauthenticated joins and malformed resolves still count against the per-IP limit.
    assert_eq!(api.post_auth("/api/join", "garbage").await.status, 401);
    assert_eq!(api.resolve("!!").await.status, 400);
    assert_eq!(api.create().await.status, 201);
    let calls_before = api.redis.raw_command("KEYS otc:*").expect("raw");
    let r = api.create().await;
    assert_eq!(r.status, 429, "4th request of the minute");
    let r = api.post_auth("/api/join", "garbage").await;
    assert_eq!(r.status, 429, "limited before the token is even looked at");
    assert_eq!(
        api.redis.raw_command("KEYS otc:*").expect("raw"),
        calls_before,
        "a limited create claims no code"
    );
    api.stop().await;
}
