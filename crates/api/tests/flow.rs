//! The whole call flow against a real Redis: create → resolve → join (both) → status → end.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Api, TURN_SECRET, metric};
use fred::prelude::*;
use hermes_proto::api::{CreateCallResponse, JoinResponse, ResolveResponse};
use hermes_proto::signal::CallControl;
use hermes_proto::{CallId, JoinTokenKeys, Role, keys};

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).expect("body matches the hermes-proto type")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow() {
    let api = Api::start(&[]).await;
    let created = api.create().await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let created: CreateCallResponse = parse(&created.body);
    assert_eq!(created.code.len(), 6);
    let now = hermes_service::unix_now();
    assert!((now + 899..=now + 901).contains(&created.code_expires_at));

    // Redis holds what the key schema says.
    let record = api
        .redis
        .raw_command(&format!("HGET call:{{{}}} status", created.call_id))
        .expect("raw");
    assert!(record.contains("created"), "{record}");
    let ttl = api
        .redis
        .raw_command(&format!("TTL otc:{}", created.code))
        .expect("raw");
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().expect("ttl");
    assert!((890..=900).contains(&ttl), "{ttl}");

    // Typed the way people type it: lowercase with a dash.
    let typed = format!(
        "{}-{}",
        &created.code[..3].to_lowercase(),
        &created.code[3..]
    );
    let resolved = api.resolve(&typed).await;
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    let resolved: ResolveResponse = parse(&resolved.body);
    assert_eq!(resolved.call_id, created.call_id);

    let keys = JoinTokenKeys::new(common::JWT_SECRET.as_bytes());
    let offerer = keys.verify(&created.token, now).expect("offerer token");
    let answerer = keys.verify(&resolved.token, now).expect("answerer token");
    assert_eq!(offerer.role, Role::Offerer);
    assert_eq!(answerer.role, Role::Answerer);
    assert_eq!(offerer.cid, answerer.cid);
    assert_ne!(offerer.pid, answerer.pid);
    assert!(offerer.exp >= now + 24 * 3600 - 5);

    for (token, role, pid) in [
        (&created.token, Role::Offerer, &offerer.pid),
        (&resolved.token, Role::Answerer, &answerer.pid),
    ] {
        let joined = api.post_auth("/api/join", token).await;
        assert_eq!(joined.status, 200, "{:?}", joined.body);
        let joined: JoinResponse = parse(&joined.body);
        assert_eq!(joined.role, role);
        assert_eq!(&joined.participant_id, pid);
        assert_eq!(joined.call_id, created.call_id);
        assert_eq!(joined.signal_url, "/ws");
        let urls: Vec<&str> = joined
            .ice_servers
            .iter()
            .flat_map(|s| s.urls.iter().map(String::as_str))
            .collect();
        assert_eq!(
            urls,
            [
                "stun:call.example.test:3478",
                "turn:call.example.test:3478?transport=udp",
                "turn:call.example.test:3478?transport=tcp",
            ]
        );
        let creds = joined.ice_servers[1]
            .credentials
            .as_ref()
            .expect("TURN credentials");
        let (expiry, user) =
            hermes_proto::turn_credentials::parse_username(&creds.username).expect("username");
        assert_eq!(user, pid.as_str());
        assert!((now + 599..=now + 601).contains(&expiry));
        hermes_proto::turn_credentials::verify(
            TURN_SECRET.as_bytes(),
            &creds.username,
            &creds.password,
            now,
        )
        .expect("credentials verify with TURN_SECRET");
        assert!(joined.ice_servers[0].credentials.is_none());
        assert_eq!(
            serde_json::to_value(joined.ice_transport_policy).expect("policy"),
            "all"
        );
    }

    // Status: the signal service keeps call:{<id>}:peers; simulate two seats (one away) and an
    // observer, which is counted apart.
    let later = hermes_service::unix_now_ms() + 60_000;
    api.redis
        .raw_command(&format!(
            "HSET call:{{{}}}:peers {} offerer|L|{later}|c1 {} answerer|A|{later}|c2 {} observer|L|{later}|c3",
            created.call_id,
            offerer.pid,
            answerer.pid,
            hermes_proto::ParticipantId::random(&mut rand::rng()),
        ))
        .expect("raw");
    let status = api
        .get_auth(&format!("/api/call/{}", created.call_id), &resolved.token)
        .await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    assert_eq!(status.body["status"], "created");
    assert_eq!(status.body["participants"], 2);
    assert_eq!(status.body["observers"], 1);
    assert!(status.body.get("endedAt").is_none());

    // hermes-signal's per-sender logs: the end drops them with the seats, so a relay after it
    // finds no log and learns the call ended; the call's fences go with the seats too.
    let log = keys::call_sender_log(&created.call_id, &offerer.pid);
    let senders = keys::call_senders(&created.call_id);
    let fences = keys::call_fences(&created.call_id);
    api.redis
        .raw_command(&format!("XADD {log} 1-0 m x"))
        .expect("raw");
    api.redis
        .raw_command(&format!("HSET {fences} {} 1:3", offerer.pid))
        .expect("raw");
    api.redis
        .raw_command(&format!("SADD {senders} {}", offerer.pid))
        .expect("raw");

    // End: the call channel gets CallControl::EndCall for the signal replicas.
    let sub = hermes_service::redis::connect_subscriber(&api.redis.url(), Duration::from_secs(5))
        .await
        .expect("subscriber");
    let mut messages = sub.message_rx();
    sub.subscribe(keys::call_channel(&created.call_id))
        .await
        .expect("subscribe");
    let ended = api.post_auth("/api/call/end", &resolved.token).await;
    assert_eq!(ended.status, 200, "{:?}", ended.body);
    assert_eq!(ended.body["status"], "ended");
    let ended_at = ended.body["endedAt"].as_u64().expect("endedAt");
    assert!(ended_at >= now);
    for key in [&log, &senders, &fences] {
        assert_eq!(
            api.redis
                .raw_command(&format!("EXISTS {key}"))
                .expect("raw"),
            ":0\r\n",
            "{key}"
        );
    }
    let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .expect("end-call notice within 5 s")
        .expect("message");
    let text: String = msg.value.convert().expect("text");
    assert_eq!(
        serde_json::from_str::<CallControl>(&text).expect("CallControl"),
        CallControl::EndCall {
            reason: "api".into()
        }
    );

    // Ending again is idempotent and publishes nothing new.
    let again = api.post_auth("/api/call/end", &created.token).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["endedAt"].as_u64(), Some(ended_at));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), messages.recv())
            .await
            .is_err(),
        "second end publishes nothing"
    );

    // An ended call cannot be joined.
    let late = api.post_auth("/api/join", &created.token).await;
    assert_eq!(late.status, 410);
    assert_eq!(late.error_code(), "call-ended");

    let text = api.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"hermes_api_requests_total{route="/api/call/create",status="201"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"hermes_api_requests_total{route="/api/join",status="200"}"#
        ),
        2.0
    );
    assert!(text.contains(
        r#"hermes_api_request_duration_seconds_bucket{le="+Inf",route="/api/call/resolve"}"#
    ));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_single_use_and_expire() {
    let api = Api::start(&["--code-ttl-secs", "1"]).await;
    let a: CreateCallResponse = parse(&api.create().await.body);
    assert_eq!(api.resolve(&a.code).await.status, 200);
    let second = api.resolve(&a.code).await;
    assert_eq!(second.status, 404);
    assert_eq!(second.error_code(), "code-not-found");

    let b: CreateCallResponse = parse(&api.create().await.body);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let expired = api.resolve(&b.code).await;
    assert_eq!(expired.status, 404, "code past its TTL");
    // The call itself lives on (24 h) and its creator can still join.
    assert_eq!(api.post_auth("/api/join", &b.token).await.status, 200);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolves_of_one_code_admit_exactly_one() {
    let api = Api::start(&[]).await;
    let a: CreateCallResponse = parse(&api.create().await.body);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let req = api
            .http
            .post(api.url("/api/call/resolve"))
            .json(&serde_json::json!({ "code": a.code }));
        set.spawn(async move { req.send().await.expect("resolve").status().as_u16() });
    }
    let statuses = set.join_all().await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let missing = statuses.iter().filter(|s| **s == 404).count();
    assert_eq!((ok, missing), (1, 9), "{statuses:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_only_work_for_their_own_call() {
    let api = Api::start(&[]).await;
    let a: CreateCallResponse = parse(&api.create().await.body);
    let b: CreateCallResponse = parse(&api.create().await.body);
    let cross = api
        .get_auth(&format!("/api/call/{}", b.call_id), &a.token)
        .await;
    assert_eq!(cross.status, 403);
    assert_eq!(cross.error_code(), "wrong-call");
    let own = api
        .get_auth(&format!("/api/call/{}", a.call_id), &a.token)
        .await;
    assert_eq!(own.status, 200);

    // A token signed with another secret, or for a call that never existed.
    let other = JoinTokenKeys::new(b"some-other-secret-0123456789abcdefghij");
    let mut rng = rand::rng();
    let claims = hermes_proto::JoinClaims::new(
        a.call_id.clone(),
        hermes_proto::ParticipantId::random(&mut rng),
        Role::Offerer,
        hermes_service::unix_now(),
        3600,
        &mut rng,
    );
    let forged = api.post_auth("/api/join", &other.sign(&claims)).await;
    assert_eq!(forged.status, 401);
    assert_eq!(forged.error_code(), "invalid-token");
    let mine = JoinTokenKeys::new(common::JWT_SECRET.as_bytes());
    let ghost = hermes_proto::JoinClaims::new(
        CallId::random(&mut rng),
        hermes_proto::ParticipantId::random(&mut rng),
        Role::Offerer,
        hermes_service::unix_now(),
        3600,
        &mut rng,
    );
    let ghost = api.post_auth("/api/join", &mine.sign(&ghost)).await;
    assert_eq!(ghost.status, 404);
    assert_eq!(ghost.error_code(), "call-not-found");
    let expired = hermes_proto::JoinClaims::new(
        a.call_id.clone(),
        hermes_proto::ParticipantId::random(&mut rng),
        Role::Offerer,
        hermes_service::unix_now() - 7200,
        3600,
        &mut rng,
    );
    let expired = api.post_auth("/api/join", &mine.sign(&expired)).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.error_code(), "token-expired");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_tls_relay_policy_and_signal_url_come_from_config() {
    let api = Api::start(&[
        "--turn-tls",
        "true",
        "--turn-public-host",
        "2001:db8::7",
        "--turn-port",
        "3479",
        "--turns-port",
        "443",
        "--ice-transport-policy",
        "relay",
        "--signal-public-url",
        "wss://sig.example.test/ws",
    ])
    .await;
    let a: CreateCallResponse = parse(&api.create().await.body);
    let joined = api.post_auth("/api/join", &a.token).await;
    assert_eq!(joined.status, 200);
    let joined: JoinResponse = parse(&joined.body);
    assert_eq!(joined.signal_url, "wss://sig.example.test/ws");
    assert_eq!(joined.ice_servers[0].urls, ["stun:[2001:db8::7]:3479"]);
    assert_eq!(
        joined.ice_servers[1].urls,
        [
            "turn:[2001:db8::7]:3479?transport=udp",
            "turn:[2001:db8::7]:3479?transport=tcp",
            "turns:[2001:db8::7]:443?transport=tcp",
        ]
    );
    assert_eq!(
        serde_json::to_value(joined.ice_transport_policy).expect("policy"),
        "relay"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_published_on_logs_api() {
    let api = Api::start(&[]).await;
    let sub = hermes_service::redis::connect_subscriber(&api.redis.url(), Duration::from_secs(5))
        .await
        .expect("subscriber");
    let mut rx = sub.message_rx();
    sub.subscribe(keys::log_channel("api"))
        .await
        .expect("subscribe");
    let a: CreateCallResponse = parse(&api.create().await.body);
    let r: ResolveResponse = parse(&api.resolve(&a.code).await.body);
    assert_eq!(api.post_auth("/api/join", &r.token).await.status, 200);
    assert_eq!(api.post_auth("/api/call/end", &a.token).await.status, 200);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event within 5 s")
            .expect("message");
        let text: String = msg.value.convert().expect("text");
        assert!(!text.contains(&a.code) && !text.contains(&a.token) && !text.contains(&r.token));
        let event: hermes_proto::LogEvent = serde_json::from_str(&text).expect("LogEvent");
        assert_eq!(event.service, "api");
        assert_eq!(event.call_id.as_ref(), Some(&a.call_id));
        seen.push(event.event);
    }
    assert_eq!(
        seen,
        ["call.created", "call.resolved", "call.joined", "call.ended"]
    );
    api.stop().await;
}
