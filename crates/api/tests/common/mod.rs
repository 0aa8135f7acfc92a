//! Shared harness: a real redis-server on a free port and hermes-api served in-process on
//! 127.0.0.1:0 over real TCP, driven with reqwest.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hermes_api::{AppState, Config};
use hermes_service::shutdown::CancellationToken;
use hermes_testkit::RedisServer;
use serde_json::Value;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
pub const TURN_SECRET: &str = "test-turn-secret-0123456789abcdef012345678";

pub struct Api {
    pub redis: RedisServer,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub state: AppState,
    trigger: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// Start with extra command-line flags (e.g. `["--code-ttl-secs", "1"]`).
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_on(RedisServer::start(), extra).await
    }

    pub async fn start_on(redis: RedisServer, extra: &[&str]) -> Self {
        // A replica may point at another harness's Redis with its own --redis-url.
        let url = extra
            .iter()
            .position(|a| *a == "--redis-url")
            .and_then(|i| extra.get(i + 1))
            .map(|u| u.to_string())
            .unwrap_or_else(|| redis.url());
        let own_url = redis.url();
        let mut args = vec!["hermes-api"];
        if url == own_url {
            args.extend_from_slice(&["--redis-url", &own_url]);
        }
        args.extend_from_slice(&[
            "--server-name",
            "call.example.test",
            "--jwt-secret",
            JWT_SECRET,
            "--turn-secret",
            TURN_SECRET,
            "--listen",
            "127.0.0.1:0",
        ]);
        args.extend_from_slice(extra);
        let settings = Config::try_parse_from(args)
            .expect("test flags parse")
            .validate()
            .expect("test config valid");
        let client = hermes_service::redis::connect(&url, Duration::from_secs(1))
            .await
            .expect("redis client");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = hermes_api::state::Inner::new(settings, client);
        let trigger = CancellationToken::new();
        let shutdown = trigger.clone();
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                hermes_api::serve(listener, state, shutdown)
                    .await
                    .expect("serve");
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("http client");
        Self {
            redis,
            addr,
            http,
            state,
            trigger,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("request reaches the API");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn post_auth(&self, path: &str, token: &str) -> Reply {
        self.send(self.http.post(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Reply {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn create(&self) -> Reply {
        self.send(self.http.post(self.url("/api/call/create")))
            .await
    }

    pub async fn resolve(&self, code: &str) -> Reply {
        self.post_json("/api/call/resolve", serde_json::json!({ "code": code }))
            .await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn stop(mut self) {
        self.trigger.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("server drains within 5 s")
                .expect("server task");
        }
    }
}

/// A metric sample's value from Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}
