//! The hermes-proto invariant, checked on the wire of a real call: everything the signal scripts
//! publish on a call's channel decodes as a [`ServerMessage`] or a [`CallControl`] (strictly:
//! unknown fields and types are refused), every seat they store decodes as a [`SeatEntry`], the
//! call's `status` as a [`CallStatus`], and every JSON value they keep for resume as a
//! [`ServerMessage`].
//!
//! The test drives one call across two replicas through every script path (join, relay, drop,
//! resume, a second connection taking over a seat, leave, a lease running out, hangup) while a
//! plain Redis subscriber records the channel, and checks that each kind of message was seen,
//! so a script that starts publishing a shape of its own fails here.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use fred::clients::Client as Redis;
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, ListInterface, PubsubInterface,
    StreamsInterface,
};
use hermes_proto::signal::{CallControl, ClientMessage, ServerMessage};
use hermes_proto::{CallStatus, SeatEntry, keys};
use hermes_testkit::RedisServer;

/// Every JSON string found in the call's keys (hash fields, stream entries, list items, plain
/// strings), by key, except the seat hash and the call record, which are checked with their
/// own types.
async fn stored_json(client: &Redis, pattern: &str) -> Vec<(String, String)> {
    let keys_cmd = fred::types::CustomCommand::new_static("KEYS", None, false);
    let names: Vec<String> = client.custom(keys_cmd, vec![pattern]).await.unwrap();
    let mut found = Vec::new();
    for name in names {
        let kind: String = client.r#type(&name).await.unwrap();
        let values: Vec<String> = match kind.as_str() {
            "stream" => {
                let entries: Vec<(String, HashMap<String, String>)> =
                    client.xrange(&name, "-", "+", None).await.unwrap();
                entries
                    .into_iter()
                    .flat_map(|(_, f)| f.into_values())
                    .collect()
            }
            "list" => client.lrange(&name, 0, -1).await.unwrap(),
            "string" => vec![client.get(&name).await.unwrap()],
            "hash" => {
                let h: HashMap<String, String> = client.hgetall(&name).await.unwrap();
                h.into_values().collect()
            }
            _ => Vec::new(),
        };
        found.extend(
            values
                .into_iter()
                .filter(|v| v.starts_with('{'))
                .map(|v| (name.clone(), v)),
        );
    }
    found
}

/// Check the seats and the status as stored now; returns the seats' connection ids.
async fn check_stored_state(client: &Redis, call: &hermes_proto::CallId) -> Vec<String> {
    let seats: HashMap<String, String> = client.hgetall(keys::call_peers(call)).await.unwrap();
    let mut conns = Vec::new();
    for (participant, value) in &seats {
        let seat = SeatEntry::parse(value)
            .unwrap_or_else(|| panic!("seat of {participant} is not a SeatEntry: {value:?}"));
        assert_eq!(SeatEntry::parse(&seat.encode()), Some(seat.clone()));
        conns.push(seat.conn);
    }
    let status: Option<String> = client.hget(keys::call(call), "status").await.unwrap();
    if let Some(status) = status {
        status
            .parse::<CallStatus>()
            .unwrap_or_else(|e| panic!("call status: {e}"));
    }
    for (key, json) in stored_json(client, &format!("*{call}*")).await {
        if let Err(e) = serde_json::from_str::<ServerMessage>(&json) {
            panic!("{key} holds {json}, not a ServerMessage: {e}");
        }
    }
    conns
}

/// The `type` of every frame the channel carried, after decoding each one strictly.
fn decode_all(frames: &[String]) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    for text in frames {
        let kind = match (
            serde_json::from_str::<ServerMessage>(text),
            serde_json::from_str::<CallControl>(text),
        ) {
            (Ok(_), Ok(_)) => panic!("{text} decodes as both a ServerMessage and a CallControl"),
            (Err(a), Err(b)) => {
                panic!(
                    "{text} on the call channel is neither a ServerMessage ({a}) nor a CallControl ({b})"
                )
            }
            (Ok(m), Err(_)) => match m {
                ServerMessage::PeerLeft { reason, .. } => format!("peer-left:{reason}"),
                ServerMessage::CallEnded { reason } => format!("call-ended:{reason}"),
                other => json_type(&serde_json::to_string(&other).unwrap()),
            },
            (Err(_), Ok(c)) => json_type(&c.to_json()),
        };
        kinds.insert(kind);
    }
    kinds
}

fn json_type(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["type"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_and_stored_shape_decodes_through_hermes_proto() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;

    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let subscriber =
        hermes_service::redis::connect_subscriber(&redis.url(), Duration::from_secs(5))
            .await
            .unwrap();
    let mut rx = subscriber.message_rx();

    let call = Call::create(&redis);
    subscriber
        .subscribe(keys::call_channel(&call.id))
        .await
        .unwrap();
    let (pa, ta) = call.token(hermes_proto::Role::Offerer);
    let (pb, tb) = call.token(hermes_proto::Role::Answerer);

    // Join on two replicas, relay each kind of message.
    let (mut a, _) = Client::join(&r1.url(), &ta, None).await;
    let (mut b, _) = Client::join(&r2.url(), &tb, None).await;
    a.recv_until(|m| matches!(m, ServerMessage::PeerJoined { .. }))
        .await;
    a.send(&ClientMessage::Offer {
        sdp: "v=0 o".into(),
    })
    .await;
    b.recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
        .await;
    b.send(&ClientMessage::Answer {
        sdp: "v=0 a".into(),
    })
    .await;
    a.recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
        .await;
    a.send(&candidate(1)).await;
    let last = seq_of(
        &b.recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
            .await,
    );
    assert_eq!(check_stored_state(&client, &call.id).await.len(), 2);

    // b drops, a message waits for it, b resumes on the other replica.
    b.drop_abruptly();
    a.recv_until(|m| matches!(m, ServerMessage::PeerReconnecting { .. }))
        .await;
    a.send(&candidate(2)).await;
    // The candidate is in b's resume store before b comes back: check it decodes there.
    check_stored_state(&client, &call.id).await;
    let (mut b, _) = Client::join(&r1.url(), &tb, Some(last)).await;
    b.recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
        .await;
    a.recv_until(|m| matches!(m, ServerMessage::PeerResumed { .. }))
        .await;

    // A second connection of b takes the seat over: the first is told it was replaced.
    let (mut b2, _) = Client::join(&r2.url(), &tb, None).await;
    let (_, closed) = b.closed().await;
    assert_eq!(
        closed,
        Closed::Code(hermes_proto::signal::CLOSE_REPLACED),
        "the old connection is closed as replaced"
    );
    check_stored_state(&client, &call.id).await;

    // a leaves and comes back, then its connection drops and its seat times out.
    a.send(&ClientMessage::Leave).await;
    a.closed().await;
    b2.recv_until(|m| matches!(m, ServerMessage::PeerLeft { .. }))
        .await;
    let (a2, _) = Client::join(&r2.url(), &ta, None).await;
    b2.recv_until(|m| matches!(m, ServerMessage::PeerJoined { .. }))
        .await;
    a2.drop_abruptly();
    let timed_out = b2
        .recv_until(|m| matches!(m, ServerMessage::PeerLeft { reason, .. } if reason == "timeout"))
        .await;
    assert!(
        matches!(timed_out, ServerMessage::PeerLeft { ref participant_id, .. } if *participant_id == pa)
    );
    let conns = check_stored_state(&client, &call.id).await;
    assert_eq!(conns.len(), 1, "only b's seat is left");

    // b hangs up: the call ends for everyone.
    b2.send(&ClientMessage::Hangup).await;
    b2.closed().await;
    check_stored_state(&client, &call.id).await;
    let status: String = client.hget(keys::call(&call.id), "status").await.unwrap();
    assert_eq!(status.parse::<CallStatus>().unwrap(), CallStatus::Ended);

    // Collect what the channel carried (the call-ended frame is the last one published).
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let message = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the channel carries call-ended within 5 s")
            .unwrap();
        let text: String = message.value.convert().unwrap();
        let done = text.contains("\"call-ended\"");
        frames.push(text);
        if done {
            break;
        }
    }
    let kinds = decode_all(&frames);
    for expected in [
        "seat",
        "probe",
        "peer-joined",
        "offer",
        "answer",
        "ice-candidate",
        "peer-reconnecting",
        "peer-resumed",
        "replaced",
        "peer-left:left",
        "peer-left:timeout",
        "hangup",
        "call-ended:hangup",
    ] {
        assert!(
            kinds.contains(expected),
            "no {expected} among the channel's {kinds:?}"
        );
    }
    let _ = pb;
}
