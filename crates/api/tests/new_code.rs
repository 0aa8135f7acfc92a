//! `POST /api/call/code` against a real Redis: a participant mints a fresh one-time code for its
//! own call (to invite again after the first code expired or the other person left for good);
//! the code admits the role the caller does not have; ended calls, bad tokens and floods are
//! refused in words.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, metric};
use hermes_proto::api::{CreateCallResponse, NewCodeResponse, ResolveResponse};
use hermes_proto::{JoinTokenKeys, Role};

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).expect("body matches the hermes-proto type")
}

fn role_of(token: &str) -> Role {
    let keys = JoinTokenKeys::new(common::JWT_SECRET.as_bytes());
    keys.verify(token, hermes_service::unix_now())
        .expect("valid token")
        .role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_invites_again_into_the_same_call() {
    let api = Api::start(&[]).await;
    let created: CreateCallResponse = parse(&api.create().await.body);

    // The creator's fresh code lets an answerer in, into the same call; the old code still
    // works until used (each code is single use).
    let minted = api.post_auth("/api/call/code", &created.token).await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let minted: NewCodeResponse = parse(&minted.body);
    assert_eq!(minted.call_id, created.call_id);
    assert_ne!(minted.code, created.code);
    let now = hermes_service::unix_now();
    assert!((now + 899..=now + 901).contains(&minted.code_expires_at));
    let stored = api
        .redis
        .raw_command(&format!("GET otc:{}", minted.code))
        .expect("raw");
    assert!(stored.contains(created.call_id.as_str()), "{stored}");

    let joined = api.resolve(&minted.code).await;
    assert_eq!(joined.status, 200, "{:?}", joined.body);
    let joined: ResolveResponse = parse(&joined.body);
    assert_eq!(joined.call_id, created.call_id);
    assert_eq!(role_of(&joined.token), Role::Answerer);
    // Single use like any code.
    assert_eq!(api.resolve(&minted.code).await.status, 404);

    // The answerer, left alone (the creator closed the tab for good), hands out the
    // offerer's seat: someone has to make the offer.
    let from_answerer = api.post_auth("/api/call/code", &joined.token).await;
    assert_eq!(from_answerer.status, 201, "{:?}", from_answerer.body);
    let from_answerer: NewCodeResponse = parse(&from_answerer.body);
    let third: ResolveResponse = parse(&api.resolve(&from_answerer.code).await.body);
    assert_eq!(third.call_id, created.call_id);
    assert_eq!(role_of(&third.token), Role::Offerer);

    // The original code still resolves (to an answerer) until it is used or expires.
    let original: ResolveResponse = parse(&api.resolve(&created.code).await.body);
    assert_eq!(role_of(&original.token), Role::Answerer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_calls_bad_tokens_and_floods_are_refused() {
    let api = Api::start(&["--new-code-limit", "3"]).await;
    let created: CreateCallResponse = parse(&api.create().await.body);

    let none = api
        .send(api.http.post(format!("http://{}/api/call/code", api.addr)))
        .await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error_code(), "missing-token");
    let bad = api.post_auth("/api/call/code", "not-a-token").await;
    assert_eq!(bad.status, 401, "{:?}", bad.body);

    // At most 3 per call per window (set low here); the fourth gets 429 with Retry-After.
    for i in 0..3 {
        let r = api.post_auth("/api/call/code", &created.token).await;
        assert_eq!(r.status, 201, "mint {i}: {:?}", r.body);
    }
    let limited = api.post_auth("/api/call/code", &created.token).await;
    assert_eq!(limited.status, 429, "{:?}", limited.body);
    assert_eq!(limited.error_code(), "rate-limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    assert!(
        metric(
            &api.metrics().await,
            r#"hermes_api_rate_limited_total{limit="newcode"}"#
        ) >= 1.0
    );

    // Another call has its own budget; an ended call gets no new code.
    let other: CreateCallResponse = parse(&api.create().await.body);
    assert_eq!(
        api.post_auth("/api/call/end", &other.token).await.status,
        200
    );
    let ended = api.post_auth("/api/call/code", &other.token).await;
    assert_eq!(ended.status, 410, "{:?}", ended.body);
    assert_eq!(ended.error_code(), "call-ended");

    // A call whose record expired is gone.
    let third: CreateCallResponse = parse(&api.create().await.body);
    api.redis
        .raw_command(&format!("DEL call:{{{}}}", third.call_id))
        .expect("raw");
    let gone = api.post_auth("/api/call/code", &third.token).await;
    assert_eq!(gone.status, 404, "{:?}", gone.body);
}
