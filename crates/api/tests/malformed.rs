//! Bad input gets a clear 4xx with the error body and changes nothing; CORS is closed to
//! everything but https://$SERVER_NAME (and dev origins in development).
#![allow(clippy::unwrap_used)]

mod common;

use common::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors() {
    let api = Api::start(&["--max-body-bytes", "1024"]).await;
    let resolve = api.url("/api/call/resolve");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "broken JSON",
            api.http
                .post(&resolve)
                .header("content-type", "application/json")
                .body("{\"code\":"),
            400,
            "invalid-json",
        ),
        (
            "wrong type",
            api.http
                .post(&resolve)
                .json(&serde_json::json!({ "code": 123456 })),
            400,
            "invalid-json",
        ),
        (
            "unknown field",
            api.http
                .post(&resolve)
                .json(&serde_json::json!({ "code": "ABCDEF", "admin": true })),
            400,
            "invalid-json",
        ),
        (
            "array instead of the object",
            api.http
                .post(&resolve)
                .header("content-type", "application/json")
                .body(r#"["ABCDEF"]"#),
            400,
            "invalid-json",
        ),
        (
            "string instead of the object",
            api.http
                .post(&resolve)
                .header("content-type", "application/json")
                .body(r#""ABCDEF""#),
            400,
            "invalid-json",
        ),
        (
            "no body",
            api.http
                .post(&resolve)
                .header("content-type", "application/json"),
            400,
            "invalid-json",
        ),
        (
            "text/plain",
            api.http
                .post(&resolve)
                .header("content-type", "text/plain")
                .body("{\"code\":\"ABCDEF\"}"),
            415,
            "unsupported-media-type",
        ),
        (
            "no content type",
            api.http.post(&resolve).body("{\"code\":\"ABCDEF\"}"),
            415,
            "unsupported-media-type",
        ),
        (
            "oversized (Content-Length)",
            api.http
                .post(&resolve)
                .header("content-type", "application/json")
                .body(format!("{{\"code\":\"{}\"}}", "A".repeat(4000))),
            413,
            "payload-too-large",
        ),
        (
            "malformed code",
            api.http
                .post(&resolve)
                .json(&serde_json::json!({ "code": "AB!DEF" })),
            400,
            "invalid-code",
        ),
        (
            "short code",
            api.http
                .post(&resolve)
                .json(&serde_json::json!({ "code": "ABC" })),
            400,
            "invalid-code",
        ),
        (
            "join without token",
            api.http.post(api.url("/api/join")),
            401,
            "missing-token",
        ),
        (
            "join with Basic auth",
            api.http
                .post(api.url("/api/join"))
                .header("authorization", "Basic Zm9vOmJhcg=="),
            401,
            "missing-token",
        ),
        (
            "join with garbage token",
            api.http.post(api.url("/api/join")).bearer_auth("not.a.jwt"),
            401,
            "invalid-token",
        ),
        (
            "alg none token",
            api.http
                .post(api.url("/api/join"))
                .bearer_auth("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjaWQiOiJ4In0."),
            401,
            "invalid-token",
        ),
        (
            "unknown route",
            api.http.get(api.url("/api/nope")),
            404,
            "not-found",
        ),
        (
            "wrong method",
            api.http.get(api.url("/api/call/create")),
            405,
            "method-not-allowed",
        ),
    ];
    for (name, req, status, code) in cases {
        let r = api.send(req).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        assert_eq!(r.error_code(), code, "{name}");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{name}: message says what was wrong");
    }
    // A malformed callId is named as such (with a valid token).
    let created: hermes_proto::api::CreateCallResponse =
        serde_json::from_value(api.create().await.body).expect("create");
    let r = api
        .get_auth("/api/call/..%2F..%2Fetc", &created.token)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid-call-id");
    // Nothing was consumed by all that: the code still resolves.
    assert_eq!(api.resolve(&created.code).await.status, 200);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start(&["--max-body-bytes", "1024"]).await;
    let mut tcp = tokio::net::TcpStream::connect(api.addr)
        .await
        .expect("connect");
    let head = "POST /api/call/resolve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.expect("write head");
    let chunk = format!("400\r\n{}\r\n", " ".repeat(0x400));
    for _ in 0..3 {
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut reply),
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload-too-large"), "{reply}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_our_origin() {
    let api = Api::start(&["--cors-dev-origins", "http://localhost:5173"]).await;
    let preflight = |origin: &str| {
        api.http
            .request(reqwest::Method::OPTIONS, api.url("/api/call/create"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
    };
    let ours = api.send(preflight("https://call.example.test")).await;
    assert_eq!(
        ours.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://call.example.test")
    );
    assert!(
        ours.headers
            .get("access-control-allow-credentials")
            .is_none()
    );
    let dev = api.send(preflight("http://localhost:5173")).await;
    assert!(dev.headers.get("access-control-allow-origin").is_some());
    let evil = api.send(preflight("https://evil.example")).await;
    assert!(evil.headers.get("access-control-allow-origin").is_none());
    let plain_http = api.send(preflight("http://call.example.test")).await;
    assert!(
        plain_http
            .headers
            .get("access-control-allow-origin")
            .is_none()
    );
    let simple = api
        .send(
            api.http
                .post(api.url("/api/call/create"))
                .header("origin", "https://call.example.test"),
        )
        .await;
    assert_eq!(simple.status, 201);
    assert!(simple.headers.get("access-control-allow-origin").is_some());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ignores_dev_origins() {
    let api = Api::start(&[
        "--hermes-env",
        "production",
        "--cors-dev-origins",
        "http://localhost:5173",
    ])
    .await;
    let r = api
        .send(
            api.http
                .request(reqwest::Method::OPTIONS, api.url("/api/call/create"))
                .header("origin", "http://localhost:5173")
                .header("access-control-request-method", "POST"),
        )
        .await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_metrics_are_served() {
    let api = Api::start(&[]).await;
    let doc = api.send(api.http.get(api.url("/api/openapi.json"))).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.0.3");
    for path in [
        "/api/call/create",
        "/api/call/resolve",
        "/api/join",
        "/api/call/{callId}",
        "/api/call/end",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} documented");
    }
    let m = api.send(api.http.get(api.url("/metrics"))).await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/openmetrics-text"))
    );
    let text = api.metrics().await;
    assert!(
        text.ends_with("# EOF\n"),
        "a complete OpenMetrics exposition: {text}"
    );
    api.stop().await;
}
