//! hermes-api on `redis-sentinel://` ([`hermes_testkit::SentinelSet`]: real primary, replica
//! and three sentinels): a SIGKILL of the primary makes `/readyz` answer 503 until the
//! sentinels have promoted the replica and the client followed by itself; a call created
//! (and replicated) before the failover can still be resolved and joined after it.
//!
//! Also the trap a failover sets, and how `REDIS_REPLICA_ACK` closes it (docs/operations.md):
//! a one-time code resolved on the old primary, but not yet replicated when it died, would come
//! back to life. A resolve answers only once a replica holds the delete (`WAIT 1`); under
//! `required` a delete no replica acknowledged is answered 503, so the code was never handed out.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use hermes_api::Config;
use hermes_proto::api::{CreateCallResponse, ResolveResponse};
use hermes_service::shutdown::CancellationToken;
use hermes_testkit::SentinelSet;
use serde_json::json;

/// Requests per IP per window, low enough for the test to reach it.
const RATE_LIMIT: u64 = 20;

struct Api {
    base: String,
    http: reqwest::Client,
    /// Cancelled when the test's `Api` goes (see `Drop`).
    stop: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Api {
    async fn start(redis_url: &str) -> Self {
        Self::start_with(redis_url, &[]).await
    }

    /// Started with `extra` flags after the test's defaults.
    async fn start_with(redis_url: &str, extra: &[&str]) -> Self {
        let rate_limit = RATE_LIMIT.to_string();
        let mut args = vec![
            "hermes-api",
            "--rate-limit",
            &rate_limit,
            "--redis-url",
            redis_url,
            "--server-name",
            "call.example.test",
            "--jwt-secret",
            "test-jwt-secret-0123456789abcdef0123456789",
            "--turn-secret",
            "test-turn-secret-0123456789abcdef012345678",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let settings = Config::try_parse_from(args).unwrap().validate().unwrap();
        let client = hermes_service::redis::connect(redis_url, Duration::from_secs(5))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = hermes_api::state::Inner::new(settings, client);
        let stop = CancellationToken::new();
        tokio::spawn(hermes_api::serve(listener, state, stop.clone()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap();
        let api = Self { base, http, stop };
        assert!(
            api.wait_ready(true, Duration::from_secs(15))
                .await
                .is_some()
        );
        api
    }

    async fn ready(&self) -> bool {
        self.http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Poll `/readyz` until it says `ready`; when it first did.
    async fn wait_ready(&self, ready: bool, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.ready().await == ready {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn create(&self) -> CreateCallResponse {
        let r = self
            .http
            .post(format!("{}/api/call/create", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create");
        r.json().await.unwrap()
    }

    async fn resolve(&self, code: &str) -> (u16, Option<ResolveResponse>) {
        let r = self
            .http
            .post(format!("{}/api/call/resolve", self.base))
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.ok())
    }

    /// The value of an unlabelled counter on `/metrics`.
    async fn counter(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_total "))?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not on /metrics"))
    }

    async fn join(&self, token: &str) -> u16 {
        self.http
            .post(format!("{}/api/join", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_sentinel_failover_and_calls_survive_it() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let api = Api::start(&set.url()).await;
    let before = api.create().await;
    tokio::task::block_in_place(|| set.wait_replicated());

    let killed_at = set.kill_primary();
    let down = api
        .wait_ready(false, Duration::from_secs(10))
        .await
        .expect("/readyz answers 503 while there is no primary");
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    let up = api
        .wait_ready(true, Duration::from_secs(15))
        .await
        .expect("/readyz answers 200 once the replica is promoted");
    eprintln!(
        "api: /readyz 503 from {:?}, replica promoted at {:?}, /readyz 200 at {:?} after the kill",
        down - killed_at,
        failover.promoted_after,
        up - killed_at
    );
    assert!(down < up);

    // The call created before the failover: its code resolves once, its tokens join.
    let (status, resolved) = api.resolve(&before.code).await;
    assert_eq!(status, 200);
    let resolved = resolved.unwrap();
    assert_eq!(resolved.call_id, before.call_id);
    assert_eq!(api.join(&before.token).await, 200);
    assert_eq!(api.join(&resolved.token).await, 200);
    assert_eq!(api.resolve(&before.code).await.0, 404, "still single use");
    // And new calls work on the new primary.
    let after = api.create().await;
    assert_eq!(api.resolve(&after.code).await.0, 200);
    // Rate limits keep working (their window may restart in a failover: at most one more
    // window's worth gets through).
    let mut allowed = 0;
    loop {
        let r = api
            .http
            .post(format!("{}/api/call/create", api.base))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            break;
        }
        assert_eq!(r.status(), 201);
        allowed += 1;
        assert!(allowed <= RATE_LIMIT, "the rate limit no longer holds");
    }
    eprintln!("api: {allowed} more creates allowed after the failover before 429");
}

/// The trap: `resolve` deletes the code on the primary; if it answered before the delete was
/// replicated and the primary died then, the promoted replica would still hold the code and a
/// second `resolve` would succeed. Forced deterministically by cutting replication first. Under
/// `REDIS_REPLICA_ACK=required` the unacknowledged resolve answers 503 (the code was not handed
/// out), resolves stay 503 while the promoted primary has no replica, and once a replica is
/// back the code resolves exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_code_stays_used_across_a_failover() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let api = Api::start_with(&set.url(), &["--redis-replica-ack", "required"]).await;
    let call = api.create().await;
    tokio::task::block_in_place(|| set.wait_replicated());

    set.cut_replication();
    let (status, _) = api.resolve(&call.code).await;
    assert_eq!(
        status, 503,
        "no replica acknowledged the delete: the code must not be handed out"
    );
    assert_eq!(api.counter("hermes_api_replica_ack_missing").await, 1);
    let killed_at = set.kill_primary();
    set.resume_replica();
    tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    api.wait_ready(true, Duration::from_secs(15)).await.unwrap();

    // The promoted primary has no replica yet: `required` refuses rather than risk the trap.
    assert_eq!(api.resolve(&call.code).await.0, 503);
    tokio::task::block_in_place(|| set.add_replica());
    // The new replica is linked; its first acknowledgement may still miss a resolve's ack
    // timeout on a loaded machine, and such a resolve answers 503 and puts the code back (not
    // handed out): keep asking, within a bound, until one is acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, resolved) = loop {
        let (status, resolved) = api.resolve(&call.code).await;
        if status != 503 || tokio::time::Instant::now() > deadline {
            break (status, resolved);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status, 200,
        "a replica is back: the code (never handed out) resolves"
    );
    assert_eq!(resolved.unwrap().call_id, call.call_id);
    assert_eq!(api.resolve(&call.code).await.0, 404, "and only once");
}

/// Under the default policy (`auto`, best-effort under Sentinel) a resolve answers only once a
/// replica acknowledged the delete: with the replica frozen the answer waits (its WAIT blocks on
/// the primary), after the thaw it goes out, and a failover right after it cannot revive the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_answers_only_once_a_replica_holds_the_delete() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    // The whole timeout is spent only if the replica stays frozen; it must outlast the
    // harness's check below on a loaded machine.
    let api = Api::start_with(&set.url(), &["--redis-replica-ack-timeout-ms", "1500"]).await;
    let call = api.create().await;
    tokio::task::block_in_place(|| set.wait_replicated());

    set.freeze_replica();
    let code = call.code.clone();
    let resolving = {
        let (http, base) = (api.http.clone(), api.base.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/api/call/resolve"))
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // The delete ran on the primary and its WAIT is blocked there, the answer not yet out.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let blocked = set
            .raw_primary("INFO clients")
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("blocked_clients:")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        if blocked == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no WAIT blocked on the primary");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !resolving.is_finished(),
        "answered before a replica acknowledged"
    );
    set.resume_replica();
    assert_eq!(resolving.await.unwrap(), 200);
    assert_eq!(api.counter("hermes_api_replica_ack_missing").await, 0);

    let killed_at = set.kill_primary();
    tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    api.wait_ready(true, Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        api.resolve(&call.code).await.0,
        404,
        "a used one-time code came back after the failover"
    );
}

/// The primary hangs (SIGSTOP) instead of dying: its connections stay open, so fred would ask
/// the sentinels nothing. The api's watch sees them name the promoted replica and reconnects:
/// `/readyz` is 200 again and calls work while the old primary still hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_calls_recover_while_the_old_primary_hangs() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let api = Api::start(&set.url()).await;
    let before = api.create().await;
    tokio::task::block_in_place(|| set.wait_replicated());

    let frozen_at = set.freeze_primary();
    let down = api
        .wait_ready(false, Duration::from_secs(10))
        .await
        .expect("/readyz answers 503 while the primary hangs");
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(frozen_at, Duration::from_secs(30)));
    let up = api
        .wait_ready(true, Duration::from_secs(15))
        .await
        .expect("/readyz answers 200 on the promoted replica, the old primary still hung");
    eprintln!(
        "api, hung primary: /readyz 503 from {:?}, replica promoted at {:?}, /readyz 200 at {:?} \
         after the freeze",
        down - frozen_at,
        failover.promoted_after,
        up - frozen_at
    );
    assert!(down < up);
    let (status, resolved) = api.resolve(&before.code).await;
    assert_eq!(status, 200, "the call created before the freeze resolves");
    assert_eq!(api.join(&resolved.unwrap().token).await, 200);
    let after = api.create().await;
    assert_eq!(api.resolve(&after.code).await.0, 200);
}
