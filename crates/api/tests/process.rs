//! The real `hermes-api` binary: starts with the contract's env names, logs `listening on`,
//! serves a full flow, never logs a token, code or TURN password (captured stderr and the
//! published log events are both checked), and exits 0 on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hermes_proto::api::{CreateCallResponse, JoinResponse, ResolveResponse};
use hermes_testkit::{ChildGuard, RedisServer, free_tcp_port};

const JWT: &str = "process-test-jwt-secret-abcdefghijklmnopqrstuvwxyz";
const TURN: &str = "process-test-turn-secret-abcdefghijklmnopqrstuvwxyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_logs_no_secrets_and_exits_cleanly_on_sigterm() {
    let redis = RedisServer::start();
    let port = free_tcp_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("api.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = ChildGuard::spawn(
        "hermes-api",
        Command::new(env!("CARGO_BIN_EXE_hermes-api"))
            .env_clear()
            .env("HERMES_ENV", "development")
            .env("REDIS_URL", redis.url())
            .env("SERVER_NAME", "call.example.test")
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("JWT_SECRET", JWT)
            .env("TURN_SECRET", TURN)
            .env("TURN_TLS", "true")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("spawn hermes-api");
    let deadline = Instant::now() + Duration::from_secs(15);
    let listening = format!("listening on 127.0.0.1:{port}");
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains(&listening)
    {
        assert!(child.is_running(), "hermes-api exited early");
        assert!(Instant::now() < deadline, "no `{listening}` line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let created: CreateCallResponse = http
        .post(url("/api/call/create"))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("create body");
    let resolved: ResolveResponse = http
        .post(url("/api/call/resolve"))
        .json(&serde_json::json!({ "code": created.code }))
        .send()
        .await
        .expect("resolve")
        .json()
        .await
        .expect("resolve body");
    let mut secrets = vec![
        created.code.clone(),
        created.token.clone(),
        resolved.token.clone(),
        JWT.to_owned(),
        TURN.to_owned(),
    ];
    for token in [&created.token, &resolved.token] {
        let joined: JoinResponse = http
            .post(url("/api/join"))
            .bearer_auth(token)
            .send()
            .await
            .expect("join")
            .json()
            .await
            .expect("join body");
        let creds = joined.ice_servers[1].credentials.clone().expect("creds");
        secrets.push(creds.password);
        // The JWT's signature part alone must not leak either.
        secrets.push(token.rsplit('.').next().expect("signature").to_owned());
    }
    // Failure paths log too: a used code, a bad token, a wrong call.
    let again = http
        .post(url("/api/call/resolve"))
        .json(&serde_json::json!({ "code": created.code }))
        .send()
        .await
        .expect("resolve again");
    assert_eq!(again.status(), 404);
    let bad = http
        .post(url("/api/join"))
        .bearer_auth(format!("{}x", created.token))
        .send()
        .await
        .expect("bad token");
    assert_eq!(bad.status(), 401);
    let status = http
        .get(url(&format!("/api/call/{}", created.call_id)))
        .bearer_auth(&resolved.token)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), 200);
    let ended = http
        .post(url("/api/call/end"))
        .bearer_auth(&created.token)
        .send()
        .await
        .expect("end");
    assert_eq!(ended.status(), 200);
    // The publisher sends in the background: wait until the last event is in the history.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !redis
        .raw_command("XRANGE logs-history - +")
        .expect("XRANGE")
        .contains("call.ended")
    {
        assert!(Instant::now() < deadline, "call.ended never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let exit = tokio::task::block_in_place(|| child.terminate(Duration::from_secs(10)));
    assert_eq!(
        exit.map(|s| s.code()),
        Some(Some(0)),
        "clean exit on SIGTERM"
    );

    let logs = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        logs.contains("call created"),
        "lifecycle is logged:\n{logs}"
    );
    assert!(logs.contains("participant joined"), "{logs}");
    let history = redis
        .raw_command("XRANGE logs-history - +")
        .expect("XRANGE");
    assert!(
        history.contains("call.created") && history.contains("call.ended"),
        "{history}"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret appears in the log:\n{logs}"
        );
        assert!(
            !history.contains(secret.as_str()),
            "a secret appears in the log events"
        );
    }
}

#[test]
fn production_refuses_to_start_with_example_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_hermes-api"))
        .env_clear()
        .env("HERMES_ENV", "production")
        .env("JWT_SECRET", "change-me-jwt-secret-at-least-32-bytes-long")
        .env(
            "TURN_SECRET",
            "change-me-turn-secret-at-least-32-bytes-long",
        )
        .env("API_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run hermes-api");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JWT_SECRET"), "{err}");
    assert!(
        !err.contains("change-me-jwt-secret"),
        "the value itself is not echoed: {err}"
    );
}
