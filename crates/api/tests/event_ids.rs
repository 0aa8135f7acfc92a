//! One id format across services: every api log event names a participant by its full id —
//! the id in its join token, the one signal logs for its seat and the user part of the TURN
//! username that hermes-turn logs for its allocations — so the logger can match up one
//! participant's api, signal and turn events.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Api;
use fred::prelude::*;
use hermes_proto::api::{CreateCallResponse, JoinResponse, ResolveResponse};
use hermes_proto::{CallEvent, JoinTokenKeys, LogEvent, ParticipantId};

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).expect("body matches the hermes-proto type")
}

/// The participant an api event names, if any.
fn participant(event: &CallEvent) -> Option<&ParticipantId> {
    match event {
        CallEvent::CallCreated { participant_id, .. }
        | CallEvent::CallResolved { participant_id, .. }
        | CallEvent::CallJoined { participant_id, .. }
        | CallEvent::CodeMinted { participant_id, .. } => Some(participant_id),
        CallEvent::CallEnded { participant_id, .. } => participant_id.as_ref(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_events_name_participants_by_the_full_id_turn_and_signal_use() {
    let api = Api::start(&[]).await;
    let sub = hermes_service::redis::connect_subscriber(&api.redis.url(), Duration::from_secs(5))
        .await
        .expect("subscriber");
    let mut messages = sub.message_rx();
    sub.subscribe("logs:api").await.expect("subscribe");

    let created: CreateCallResponse = parse(&api.create().await.body);
    let resolved: ResolveResponse = parse(&api.resolve(&created.code).await.body);
    let keys = JoinTokenKeys::new(common::JWT_SECRET.as_bytes());
    let now = hermes_service::unix_now();
    let mut turn_user = HashMap::new();
    for token in [&created.token, &resolved.token] {
        let pid = keys.verify(token, now).expect("token").pid;
        let joined = api.post_auth("/api/join", token).await;
        assert_eq!(joined.status, 200, "{:?}", joined.body);
        let joined: JoinResponse = parse(&joined.body);
        let creds = joined.ice_servers[1].credentials.as_ref().expect("TURN");
        let (_, user) = hermes_proto::turn_credentials::parse_username(&creds.username).unwrap();
        turn_user.insert(pid.clone(), user.to_owned());
    }
    let minted = api.post_auth("/api/call/code", &resolved.token).await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let ended = api.post_auth("/api/call/end", &created.token).await;
    assert_eq!(ended.status, 200, "{:?}", ended.body);

    // created, resolved, joined ×2, code.minted, call.ended: six events naming a participant.
    let mut named: Vec<(String, ParticipantId)> = Vec::new();
    while named.len() < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .unwrap_or_else(|_| panic!("six api events within 5 s, got {named:?}"))
            .expect("message");
        let text: String = msg.value.convert().expect("text");
        let log: LogEvent = serde_json::from_str(&text).expect("LogEvent");
        let event = CallEvent::from_log_event(&log)
            .unwrap_or_else(|| panic!("{} is a typed CallEvent: {text}", log.event));
        if let Some(pid) = participant(&event) {
            named.push((log.event.clone(), pid.clone()));
        }
    }
    let offerer = keys.verify(&created.token, now).unwrap().pid;
    let answerer = keys.verify(&resolved.token, now).unwrap().pid;
    let by_name = |name: &str| -> Vec<&ParticipantId> {
        named
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, p)| p)
            .collect()
    };
    assert_eq!(by_name("call.created"), [&offerer]);
    assert_eq!(by_name("call.resolved"), [&answerer]);
    let mut joined = by_name("call.joined");
    joined.sort();
    let mut both = vec![&offerer, &answerer];
    both.sort();
    assert_eq!(joined, both);
    assert_eq!(by_name("code.minted"), [&answerer]);
    assert_eq!(by_name("call.ended"), [&offerer]);
    for (name, pid) in &named {
        // The very string hermes-turn logs as this participant's `participantId`.
        assert_eq!(
            turn_user[pid],
            pid.as_str(),
            "{name}: the TURN user part is the full id"
        );
    }
    api.stop().await;
}
