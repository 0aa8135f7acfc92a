//! Scenario tests: real redis-server, real replicas on loopback, real WebSocket clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use hermes_proto::signal::{
    CLOSE_CALL_ENDED, CLOSE_CALL_FULL, CLOSE_POLICY_VIOLATION, CLOSE_REPLACED,
    CLOSE_SERVICE_RESTART, CLOSE_UNAUTHORIZED, CallControl, ClientMessage, MAX_FRAME_BYTES,
    ServerMessage, SignalErrorCode,
};
use hermes_proto::{ParticipantId, Role};
use hermes_testkit::RedisServer;

fn is_error(m: &ServerMessage, code: SignalErrorCode) -> bool {
    matches!(m, ServerMessage::Error { code: c, .. } if *c == code)
}

/// Offer/answer/candidates between two clients, each on the given replica URL.
async fn exchange(url_a: &str, url_b: &str, redis: &RedisServer) {
    let call = Call::create(redis);
    let (pa, ta) = call.token(Role::Offerer);
    let (pb, tb) = call.token(Role::Answerer);
    let (mut a, joined_a) = Client::join(url_a, &ta, None).await;
    match joined_a {
        ServerMessage::Joined {
            peers,
            resumed,
            role,
            ..
        } => {
            assert!(peers.is_empty());
            assert!(!resumed);
            assert_eq!(role, Role::Offerer);
        }
        _ => unreachable!(),
    }
    let status = redis
        .raw_command(&format!("HGET call:{{{}}} status", call.id))
        .unwrap();
    assert!(status.contains("active"), "{status}");
    let (mut b, joined_b) = Client::join(url_b, &tb, None).await;
    match joined_b {
        ServerMessage::Joined { peers, .. } => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].participant_id, pa);
            assert!(peers[0].connected);
        }
        _ => unreachable!(),
    }
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerJoined {
            participant_id: pb.clone(),
            role: Role::Answerer
        }
    );
    assert_eq!(
        redis
            .raw_command(&format!("HLEN call:{{{}}}:peers", call.id))
            .unwrap(),
        ":2\r\n"
    );

    a.send(&ClientMessage::Offer {
        sdp: "v=0 offer".into(),
    })
    .await;
    let offer = b.recv().await;
    assert_eq!(
        offer,
        ServerMessage::Offer {
            from: pa.clone(),
            seq: 1,
            sdp: "v=0 offer".into()
        }
    );
    b.send(&ClientMessage::Answer {
        sdp: "v=0 answer".into(),
    })
    .await;
    // Numbers are per sender: b's first message is b's 1.
    assert_eq!(
        a.recv().await,
        ServerMessage::Answer {
            from: pb.clone(),
            seq: 1,
            sdp: "v=0 answer".into()
        }
    );
    for i in 0..5 {
        a.send(&candidate(i)).await;
        b.send(&candidate(100 + i)).await;
    }
    let mut last = 1;
    for i in 0..5 {
        let m = b.recv().await;
        assert_eq!(candidate_index(&m), i);
        assert_eq!(seq_of(&m), last + 1, "one sender's numbers are contiguous");
        last = seq_of(&m);
    }
    let mut last = 1;
    for i in 0..5 {
        let m = a.recv().await;
        assert_eq!(candidate_index(&m), 100 + i);
        assert!(seq_of(&m) > last);
        last = seq_of(&m);
    }
    // Nothing else is pending: no echo of one's own messages.
    assert_eq!(a.try_recv(Duration::from_millis(200)).await, None);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_replica_exchange_offer_answer_candidates() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    exchange(&r.url(), &r.url(), &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_replicas_exchange_through_redis() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    exchange(&r1.url(), &r2.url(), &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_media_participant_is_refused_observer_is_read_only() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        call,
        pa,
        mut a,
        mut b,
        tb,
        ..
    } = TwoParty::join_one(&redis, &r.url()).await;

    let (_pc, tc) = call.token(Role::Answerer);
    let mut c = Client::connect(&r.url()).await;
    c.send(&ClientMessage::Join {
        token: tc,
        last_seq: None,
        call_id: None,
        last_seqs: None,
    })
    .await;
    let (seen, closed) = c.closed().await;
    assert!(is_error(&seen[0], SignalErrorCode::CallFull), "{seen:?}");
    assert_eq!(closed, Closed::Code(CLOSE_CALL_FULL));

    let (po, to) = call.token(Role::Observer);
    let (mut o, joined) = Client::join(&r.url(), &to, None).await;
    match joined {
        ServerMessage::Joined { peers, role, .. } => {
            assert_eq!(role, Role::Observer);
            assert_eq!(peers.len(), 2);
        }
        _ => unreachable!(),
    }
    // Observers are invisible to media participants: no peer-joined for them.
    let _ = po;
    assert_eq!(a.try_recv(Duration::from_millis(300)).await, None);
    assert_eq!(b.try_recv(Duration::from_millis(1)).await, None);
    // The observer cannot send SDP, ICE or hangup, and stays connected.
    for m in [
        ClientMessage::Offer { sdp: "x".into() },
        candidate(1),
        ClientMessage::Hangup,
    ] {
        o.send(&m).await;
        assert!(is_error(&o.recv().await, SignalErrorCode::Forbidden));
    }
    o.send(&ClientMessage::Ping { ts: Some(9) }).await;
    assert_eq!(o.recv().await, ServerMessage::Pong { ts: Some(9) });
    // Nothing the observer tried reached the media participants...
    assert_eq!(b.try_recv(Duration::from_millis(200)).await, None);
    // ...but the observer sees the call's events.
    a.send(&ClientMessage::Offer { sdp: "o".into() }).await;
    assert!(matches!(b.recv().await, ServerMessage::Offer { ref from, .. } if *from == pa));
    assert!(matches!(o.recv().await, ServerMessage::Offer { ref from, .. } if *from == pa));
    // A second observer: neither media participant nor the first observer lists it, and the
    // media participants never hear of either observer leaving.
    let (_po2, to2) = call.token(Role::Observer);
    let (o2, joined) = Client::join(&r.url(), &to2, None).await;
    match joined {
        ServerMessage::Joined { peers, .. } => {
            assert_eq!(peers.len(), 2, "media participants only: {peers:?}");
            assert!(peers.iter().all(|p| p.role.is_media()));
        }
        _ => unreachable!(),
    }
    o.close().await;
    o2.drop_abruptly();
    // A media participant who rejoins lists only the other media participant.
    let (_b2, joined) = Client::join(&r.url(), &tb, Some(0)).await;
    match joined {
        ServerMessage::Joined { peers, .. } => {
            assert_eq!(peers.len(), 1, "{peers:?}");
            assert_eq!(peers[0].participant_id, pa);
        }
        _ => unreachable!(),
    }
    assert_eq!(a.try_recv(Duration::from_millis(2500)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() {
    use base64::Engine;
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let call = Call::create(&redis);
    let other = Call::create(&redis);
    let (pid, _) = call.token(Role::Answerer);
    let now = hermes_service::unix_now();
    let expired = call.keys.sign(&hermes_proto::JoinClaims::new(
        call.id.clone(),
        pid.clone(),
        Role::Answerer,
        now - 100,
        10,
        &mut rand::rng(),
    ));
    let foreign = hermes_proto::JoinTokenKeys::new(b"another-deployment-secret-0123456789").sign(
        &hermes_proto::JoinClaims::new(
            call.id.clone(),
            pid.clone(),
            Role::Answerer,
            now,
            60,
            &mut rand::rng(),
        ),
    );
    let claims = hermes_proto::JoinClaims::new(
        call.id.clone(),
        pid.clone(),
        Role::Offerer,
        now,
        60,
        &mut rand::rng(),
    );
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(serde_json::to_vec(&claims).unwrap())
    );
    let good_for_other_call = other.token(Role::Offerer).1;
    let cases: Vec<(&str, String, Option<hermes_proto::CallId>)> = vec![
        ("expired", expired, None),
        ("other key", foreign, None),
        ("alg none", alg_none, None),
        ("garbage", "not-a-token".into(), None),
        ("other call", good_for_other_call, Some(call.id.clone())),
    ];
    for (name, token, call_id) in cases {
        let mut c = Client::connect(&r.url()).await;
        c.send(&ClientMessage::Join {
            token,
            last_seq: None,
            call_id,
            last_seqs: None,
        })
        .await;
        let (seen, closed) = c.closed().await;
        assert!(
            seen.first()
                .is_some_and(|m| is_error(m, SignalErrorCode::Unauthorized)),
            "{name}: {seen:?}"
        );
        assert_eq!(closed, Closed::Code(CLOSE_UNAUTHORIZED), "{name}");
    }
    // Refused joins took no seat.
    let hlen = redis
        .raw_command(&format!("HLEN call:{{{}}}:peers", call.id))
        .unwrap();
    assert_eq!(hlen, ":0\r\n");

    // A message before join gets an error and the connection stays; silence closes it.
    let mut c = Client::connect(&r.url()).await;
    c.send(&ClientMessage::Offer { sdp: "x".into() }).await;
    assert!(is_error(&c.recv().await, SignalErrorCode::Unauthorized));
    let started = std::time::Instant::now();
    let (seen, closed) = c.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_UNAUTHORIZED), "{seen:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "join timeout is 1.5 s"
    );

    // A disallowed Origin is refused before the upgrade.
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(r.url())
            .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_get_errors_and_abuse_is_closed() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &["--max-violations-per-min", "8"]).await;
    let TwoParty {
        call, mut a, mut b, ..
    } = TwoParty::join_one(&redis, &r.url()).await;

    a.send_text("{not json").await;
    assert!(is_error(&a.recv().await, SignalErrorCode::BadMessage));
    a.send_text(r#"{"type":"teleport"}"#).await;
    assert!(is_error(&a.recv().await, SignalErrorCode::BadMessage));
    a.send_text(r#"{"type":"offer","sdp":"x","evil":1}"#).await;
    assert!(is_error(&a.recv().await, SignalErrorCode::BadMessage));
    // Arrays where objects are required: the message itself, and a nested object.
    a.send_text(r#"["offer","x"]"#).await;
    assert!(is_error(&a.recv().await, SignalErrorCode::BadMessage));
    a.send_text(r#"["hangup"]"#).await;
    assert!(is_error(&a.recv().await, SignalErrorCode::BadMessage));
    a.send_text(
        r#"{"type":"ice-candidate","candidate":["candidate:1 1 udp 1 127.0.0.1 9 typ host"]}"#,
    )
    .await;
    assert!(is_error(&a.recv().await, SignalErrorCode::BadMessage));
    let big = format!(
        r#"{{"type":"offer","sdp":"{}"}}"#,
        "a".repeat(MAX_FRAME_BYTES + 10)
    );
    a.send_text(&big).await;
    assert!(is_error(&a.recv().await, SignalErrorCode::TooLarge));
    // The connection still works and nothing bad was relayed.
    a.send(&ClientMessage::Offer { sdp: "ok".into() }).await;
    assert!(matches!(b.recv().await, ServerMessage::Offer { ref sdp, .. } if sdp == "ok"));

    // Persistent garbage: closed with 1008, the other participant unaffected.
    let mut closed = None;
    for _ in 0..20 {
        a.send_text("garbage").await;
        match a.ws_next_close().await {
            Some(code) => {
                closed = Some(code);
                break;
            }
            None => continue,
        }
    }
    assert_eq!(closed, Some(CLOSE_POLICY_VIOLATION));
    b.send(&ClientMessage::Ping { ts: None }).await;
    assert_eq!(b.recv().await, ServerMessage::Pong { ts: None });

    // A frame beyond the hard limit ends that connection (1009 or dropped), nothing else.
    let (_po, to) = call.token(Role::Observer);
    let (mut o, _) = Client::join(&r.url(), &to, None).await;
    let huge = "x".repeat(hermes_signal::HARD_MESSAGE_LIMIT + 1024);
    let _ = futures_util::SinkExt::send(
        &mut o.ws,
        tokio_tungstenite::tungstenite::Message::text(huge),
    )
    .await;
    let (_, closed) = o.closed().await;
    assert!(
        matches!(closed, Closed::Code(1009) | Closed::Dropped),
        "{closed:?}"
    );
    b.send(&ClientMessage::Ping { ts: Some(1) }).await;
    assert_eq!(
        b.recv_until(|m| matches!(m, ServerMessage::Pong { .. }))
            .await,
        ServerMessage::Pong { ts: Some(1) }
    );
}

trait NextClose {
    async fn ws_next_close(&mut self) -> Option<u16>;
}

impl NextClose for Client {
    /// One frame: `Some(code)` if it is a close, `None` if it is a message.
    async fn ws_next_close(&mut self) -> Option<u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Some(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                }
                Ok(Some(Ok(Message::Text(_)))) => return None,
                Ok(Some(Ok(_))) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_the_missed_messages_in_order() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        call,
        pa,
        mut a,
        pb,
        tb,
        mut b,
        ..
    } = TwoParty::join_one(&redis, &r.url()).await;

    a.send(&ClientMessage::Offer { sdp: "o".into() }).await;
    let first = b.recv().await;
    let seen = seq_of(&first);
    b.send(&ClientMessage::Ack { seq: seen }).await;
    a.send(&candidate(0)).await;
    let second = b.recv().await;
    let last_seen = seq_of(&second);
    // b processed up to `last_seen` but has not acked it; the network drops.
    b.drop_abruptly();
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerReconnecting {
            participant_id: pb.clone()
        }
    );
    for i in 1..=6 {
        a.send(&candidate(i)).await;
    }
    // Once the last one is in a's log (all relayed while b was away), reconnect with the same
    // token.
    let log = hermes_proto::keys::call_sender_log(&call.id, &pa);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !redis
        .raw_command(&format!("XREVRANGE {log} + - COUNT 1"))
        .unwrap()
        .contains("candidate:6 ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "candidate 6 never relayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `REDIS_REPLICA_ACK=auto` on a single Redis (no replica to wait for): the relays to the
    // away participant ran no WAIT.
    let stats = redis.raw_command("INFO commandstats").unwrap();
    assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
    assert!(!stats.contains("cmdstat_wait:"), "{stats}");
    let (mut b2, joined) = Client::join(&r.url(), &tb, Some(last_seen)).await;
    match joined {
        ServerMessage::Joined { resumed, peers, .. } => {
            assert!(resumed);
            assert_eq!(peers[0].participant_id, pa);
        }
        _ => unreachable!(),
    }
    let mut prev = last_seen;
    for i in 1..=6 {
        let m = b2.recv().await;
        assert_eq!(candidate_index(&m), i, "in order, none lost");
        assert!(seq_of(&m) > prev);
        prev = seq_of(&m);
    }
    assert_eq!(
        b2.try_recv(Duration::from_millis(300)).await,
        None,
        "no duplicates"
    );
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerResumed {
            participant_id: pb.clone()
        },
        "the peer sees resumed, not left"
    );
    // Live traffic continues both ways.
    a.send(&candidate(7)).await;
    assert_eq!(candidate_index(&b2.recv().await), 7);
    b2.send(&ClientMessage::Answer { sdp: "a".into() }).await;
    assert!(matches!(a.recv().await, ServerMessage::Answer { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_window_the_peer_has_left() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &["--grace-ms", "600"]).await;
    let TwoParty {
        call,
        mut a,
        pb,
        tb,
        b,
        ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    b.drop_abruptly();
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerReconnecting {
            participant_id: pb.clone()
        }
    );
    assert!(matches!(
        a.recv().await,
        ServerMessage::PeerLeft { ref participant_id, .. } if *participant_id == pb
    ));
    assert_eq!(
        redis
            .raw_command(&format!("HLEN call:{{{}}}:peers", call.id))
            .unwrap(),
        ":1\r\n"
    );
    // Coming back later is a fresh join: the seat is free, nothing is replayed.
    let (_b2, joined) = Client::join(&r.url(), &tb, Some(3)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: false, .. }
    ));
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerJoined {
            participant_id: pb,
            role: Role::Answerer
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_replaces_the_first() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        mut a,
        tb,
        b: mut b1,
        ..
    } = TwoParty::join_one(&redis, &r1.url()).await;
    // Same identity on the other replica, resuming.
    let (mut b2, joined) = Client::join(&r2.url(), &tb, Some(0)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let (_, closed) = b1.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_REPLACED));
    a.send(&ClientMessage::Offer { sdp: "x".into() }).await;
    assert!(matches!(b2.recv().await, ServerMessage::Offer { .. }));
    // The peer saw no reconnecting/left for a seamless takeover.
    assert_eq!(a.try_recv(Duration::from_millis(300)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_ends_the_call_for_both() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        call,
        pa,
        mut a,
        tb,
        mut b,
        ..
    } = TwoParty::join(&redis, &r1.url(), &r2.url()).await;
    a.send(&ClientMessage::Hangup).await;
    let (seen_b, closed_b) = b.closed().await;
    assert!(
        matches!(&seen_b[0], ServerMessage::Hangup { from, .. } if *from == pa),
        "{seen_b:?}"
    );
    assert!(matches!(&seen_b[1], ServerMessage::CallEnded { reason } if reason == "hangup"));
    assert_eq!(closed_b, Closed::Code(CLOSE_CALL_ENDED));
    let (seen_a, closed_a) = a.closed().await;
    assert!(
        seen_a
            .iter()
            .any(|m| matches!(m, ServerMessage::CallEnded { .. }))
    );
    assert_eq!(closed_a, Closed::Code(CLOSE_CALL_ENDED));
    let status = redis
        .raw_command(&format!("HGET call:{{{}}} status", call.id))
        .unwrap();
    assert!(status.contains("ended"), "{status}");
    let ended_at = redis
        .raw_command(&format!("HGET call:{{{}}} endedAt", call.id))
        .unwrap();
    assert!(
        ended_at.starts_with('$') && !ended_at.starts_with("$-1"),
        "{ended_at}"
    );
    assert_eq!(
        redis
            .raw_command(&format!("HLEN call:{{{}}}:peers", call.id))
            .unwrap(),
        ":0\r\n"
    );
    // Rejoining an ended call is refused.
    let mut c = Client::connect(&r1.url()).await;
    c.send(&ClientMessage::Join {
        token: tb,
        last_seq: Some(1),
        call_id: None,
        last_seqs: None,
    })
    .await;
    let (seen, closed) = c.closed().await;
    assert!(is_error(&seen[0], SignalErrorCode::CallEnded));
    assert_eq!(closed, Closed::Code(CLOSE_CALL_ENDED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_end_call_control_closes_everyone() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        call, mut a, mut b, ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    // What the API does on POST /api/call/end.
    redis
        .raw_command(&format!(
            "HSET call:{{{}}} status ended endedAt {}",
            call.id,
            hermes_service::unix_now()
        ))
        .unwrap();
    let json = CallControl::EndCall {
        reason: "api".into(),
    }
    .to_json();
    let reply = redis
        .raw_command(&format!("PUBLISH call:{{{}}}:events '{}'", call.id, json))
        .unwrap();
    assert_eq!(reply, ":1\r\n", "one replica subscribed");
    for c in [&mut a, &mut b] {
        let (seen, closed) = c.closed().await;
        assert_eq!(
            seen,
            vec![ServerMessage::CallEnded {
                reason: "api".into()
            }]
        );
        assert_eq!(closed, Closed::Code(CLOSE_CALL_ENDED));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1012_and_clients_resume_on_another_replica() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        mut a,
        pb,
        tb,
        mut b,
        ..
    } = TwoParty::join(&redis, &r2.url(), &r1.url()).await;
    a.send(&ClientMessage::Offer { sdp: "o".into() }).await;
    let last = seq_of(&b.recv().await);
    r1.trigger.cancel();
    let (_, closed) = b.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_SERVICE_RESTART));
    // The draining replica marks b away as it closes: a hears it. (Waited for before b comes
    // back: a reconnect that outruns the drain's disconnect script takes the live seat over
    // instead, a different path with its own tests.)
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerReconnecting {
            participant_id: pb.clone()
        }
    );
    a.send(&candidate(1)).await;
    a.send(&candidate(2)).await;
    let (mut b2, joined) = Client::join(&r2.url(), &tb, Some(last)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    assert_eq!(candidate_index(&b2.recv().await), 1);
    assert_eq!(candidate_index(&b2.recv().await), 2);
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerResumed {
            participant_id: pb.clone()
        },
        "resumed, never peer-left"
    );
    // The drained replica's run() returned cleanly.
    let result = tokio::time::timeout(Duration::from_secs(5), r1.task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_stats_events() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("http://{}/healthz", r.addr))
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success());
    let call = Call::create(&redis);
    let (_pa, ta) = call.token(Role::Offerer);
    let (mut a, _) = Client::join(&r.url(), &ta, None).await;
    a.send_text(r#"{"type":"stats","rttMs":42.5,"packetLoss":0.01,"candidateType":"relay"}"#)
        .await;
    a.send(&ClientMessage::Ping { ts: None }).await;
    assert_eq!(
        a.recv().await,
        ServerMessage::Pong { ts: None },
        "stats are not answered or relayed"
    );
    let metrics = http
        .get(format!("http://{}/metrics", r.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hermes_signal_connections 1"), "{metrics}");
    assert!(metrics.contains("hermes_signal_joins_total 1"), "{metrics}");
    // The stats event reaches the log history stream; no token is in any event.
    let mut found = false;
    for _ in 0..50 {
        let history = redis.raw_command("XRANGE logs-history - +").unwrap();
        assert!(!history.contains(&ta), "token leaked into log events");
        if history.contains("call.stats") && history.contains("42.5") {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "call.stats event not published");
}

/// Two participants joining at the same moment each hear of the other exactly once: either in
/// `joined.peers` or as a later `peer-joined`, never both (the seam after the join snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_hear_of_each_other_exactly_once() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    for round in 0..16 {
        let call = Call::create(&redis);
        let (pa, ta) = call.token(Role::Offerer);
        let (pb, tb) = call.token(Role::Answerer);
        // Alternate same-replica and cross-replica rounds.
        let url_a = r1.url();
        let url_b = if round % 2 == 0 { r1.url() } else { r2.url() };
        let (ra, rb) = tokio::join!(
            Client::join(&url_a, &ta, None),
            Client::join(&url_b, &tb, None)
        );
        for ((mut client, joined), other) in [(ra, pb.clone()), (rb, pa.clone())] {
            let ServerMessage::Joined { peers, .. } = joined else {
                unreachable!()
            };
            let is_other = |m: &ServerMessage| matches!(m, ServerMessage::PeerJoined { participant_id, .. } if *participant_id == other);
            let mut heard = peers.iter().filter(|p| p.participant_id == other).count();
            if heard == 0 {
                // Not in the snapshot: the announcement must come (allow a loaded machine).
                let m = tokio::time::timeout(Duration::from_secs(5), client.recv_until(is_other))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: never heard of {other:?}"));
                assert!(is_other(&m));
                heard = 1;
            }
            while let Some(m) = client.try_recv(Duration::from_millis(200)).await {
                if is_other(&m) {
                    heard += 1;
                }
            }
            assert_eq!(heard, 1, "round {round}: heard of {other:?} {heard} times");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_join_over_a_held_seat_tells_the_peer_left_then_joined() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let call = Call::create(&redis);
    let (_pa, ta) = call.token(Role::Offerer);
    let (pb, tb) = call.token(Role::Answerer);
    let (mut a, _) = Client::join(&r1.url(), &ta, None).await;
    let (b1, _) = Client::join(&r1.url(), &tb, None).await;
    a.recv().await; // peer-joined b
    let left_then_joined = |a: Vec<ServerMessage>| {
        assert_eq!(
            a,
            vec![
                ServerMessage::PeerLeft {
                    participant_id: pb.clone(),
                    reason: "rejoined".into()
                },
                ServerMessage::PeerJoined {
                    participant_id: pb.clone(),
                    role: Role::Answerer
                },
            ]
        );
    };

    // While the first connection is live, on another replica, without lastSeq.
    let (b2, joined) = Client::join(&r2.url(), &tb, None).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: false, .. }
    ));
    let mut b1 = b1;
    let (_, closed) = b1.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_REPLACED));
    left_then_joined(vec![a.recv().await, a.recv().await]);
    assert_eq!(a.try_recv(Duration::from_millis(300)).await, None);

    // While the seat is away (connection dropped), without lastSeq.
    b2.drop_abruptly();
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerReconnecting {
            participant_id: pb.clone()
        }
    );
    let (mut b3, _) = Client::join(&r1.url(), &tb, None).await;
    left_then_joined(vec![a.recv().await, a.recv().await]);
    assert_eq!(a.try_recv(Duration::from_millis(300)).await, None);
    a.send(&ClientMessage::Offer {
        sdp: "again".into(),
    })
    .await;
    assert!(matches!(b3.recv().await, ServerMessage::Offer { ref sdp, .. } if sdp == "again"));
}

/// Numbers are per sender, so an observer (it receives from both media participants) resumes
/// with `lastSeqs`: exactly what it missed from each, in each sender's order, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_resumes_per_sender_with_last_seqs() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        call,
        pa,
        mut a,
        pb,
        mut b,
        ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    let (_po, to) = call.token(Role::Observer);
    let (mut o, _) = Client::join(&r.url(), &to, None).await;
    a.send(&candidate(0)).await;
    b.send(&candidate(100)).await;
    let mut firsts = Vec::new();
    while firsts.len() < 2 {
        let m = o
            .recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
            .await;
        let ServerMessage::IceCandidate { from, seq, .. } = m else {
            unreachable!()
        };
        firsts.push((from, seq));
    }
    firsts.sort();
    let mut expected = vec![(pa.clone(), 1), (pb.clone(), 1)];
    expected.sort();
    assert_eq!(firsts, expected, "each sender numbers from its own 1");
    o.drop_abruptly();
    for i in 1..=3 {
        a.send(&candidate(i)).await;
        b.send(&candidate(100 + i)).await;
    }
    // Relayed (so logged) once each side has the other's last one.
    for (c, last) in [(&mut b, 3), (&mut a, 103)] {
        loop {
            let m = c
                .recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
                .await;
            if candidate_index(&m) == last {
                break;
            }
        }
    }
    let mut o2 = Client::connect(&r.url()).await;
    o2.send(&ClientMessage::Join {
        token: to,
        last_seq: None,
        last_seqs: Some([(pa.clone(), 1), (pb.clone(), 1)].into_iter().collect()),
        call_id: None,
    })
    .await;
    assert!(matches!(
        o2.recv().await,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let mut got: Vec<(ParticipantId, u64, usize)> = Vec::new();
    while got.len() < 6 {
        let m = o2
            .recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
            .await;
        let index = candidate_index(&m);
        let ServerMessage::IceCandidate { from, seq, .. } = m else {
            unreachable!()
        };
        got.push((from, seq, index));
    }
    for (sender, base) in [(&pa, 0), (&pb, 100)] {
        let mine: Vec<(u64, usize)> = got
            .iter()
            .filter(|(f, ..)| f == sender)
            .map(|(_, s, i)| (*s, *i))
            .collect();
        assert_eq!(
            mine,
            [(2, base + 1), (3, base + 2), (4, base + 3)],
            "{sender}: in order, none lost"
        );
    }
    assert_eq!(
        o2.try_recv(Duration::from_millis(300)).await,
        None,
        "nothing twice"
    );
}

/// The receivers' side of the fence (one-round-trip relays publish without waiting for their
/// XADD): a replaced connection's relay that races the new connection's join is refused by
/// the sender's log, and its PUBLISH, which follows in the same pipeline and so after the
/// join's `seat` marker, never reaches a client. The race is replayed exactly: after the
/// takeover, the old connection's next XADD (its next number) and its PUBLISH are sent to
/// Redis as its relay pipeline would. Without the routers' fence the offerer would get that
/// message (its number is above everything it saw from the answerer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connections_refused_relay_never_reaches_a_client() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        mut a,
        tb,
        pb,
        b: mut b1,
        call,
        ..
    } = TwoParty::join_one(&redis, &r1.url()).await;
    b1.send(&candidate(1)).await;
    let first = a.recv().await;
    assert_eq!(candidate_index(&first), 1);
    let stored = seq_of(&first);
    // The answerer connects again on the other replica: the old connection is fenced off.
    let (mut b2, joined) = Client::join(&r2.url(), &tb, Some(0)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let (_, closed) = b1.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_REPLACED));

    // The old connection's relay of its next number, as its pipeline sends it.
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let (refused, receivers) = write_relay(&client, &call.id, &pb, stored + 1, 666, true).await;
    assert!(
        refused.is_err(),
        "the fence refuses the old connection's number: {refused:?}"
    );
    assert!(receivers >= 1, "the offerer's replica is subscribed");

    // The new connection's message arrives; the refused one never did, nor does it later.
    b2.send(&candidate(2)).await;
    let next = a.recv().await;
    assert_eq!(candidate_index(&next), 2, "got {next:?}");
    assert!(seq_of(&next) > stored + 1);
    assert_eq!(a.try_recv(Duration::from_millis(300)).await, None);
}

/// The receivers' side of the fence for a router that starts following the call after the
/// takeover: the offerer's receiving connection moves to a replica with no session of the call
/// after the answerer's connection was replaced (so that replica never saw the `seat` marker
/// with the fence), and only then does the old connection's refused XADD and its PUBLISH reach
/// Redis. The join hands the new replica the fences kept with the call's seats: the refused
/// message never reaches the offerer, the new connection's messages do, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_moves_replica_after_a_takeover_never_gets_the_refused_relay() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let r3 = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        mut a,
        ta,
        tb,
        pb,
        b: mut b1,
        call,
        ..
    } = TwoParty::join_one(&redis, &r1.url()).await;
    b1.send(&candidate(1)).await;
    let first = a.recv().await;
    assert_eq!(candidate_index(&first), 1);
    let stored = seq_of(&first);
    // The offerer's connection goes away (its seat waits for a resume).
    a.close().await;
    // The answerer connects again on r2: the old connection is fenced off, and r2 and r1 (still
    // following the call for b1) see the fence in the `seat` marker. r3 follows nothing yet.
    let (mut b2, joined) = Client::join(&r2.url(), &tb, Some(0)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let (_, closed) = b1.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_REPLACED));
    // The offerer resumes on r3 from what it had: r3 subscribes to the call only now.
    let (mut a2, joined) = Client::join(&r3.url(), &ta, Some(stored)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));

    // The old connection's relay of its next number, as its pipeline sends it, late.
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let (refused, receivers) = write_relay(&client, &call.id, &pb, stored + 1, 666, true).await;
    assert!(
        refused.is_err(),
        "the fence refuses the old connection's number: {refused:?}"
    );
    assert!(receivers >= 2, "r2 and r3 follow the call: {receivers}");

    // The new connection's messages arrive in order; the refused one never does.
    b2.send(&candidate(2)).await;
    b2.send(&candidate(3)).await;
    let mut last = stored + 1;
    for index in [2, 3] {
        let next = a2
            .recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
            .await;
        assert_eq!(candidate_index(&next), index, "got {next:?}");
        assert!(seq_of(&next) > last, "{next:?} after {last}");
        last = seq_of(&next);
    }
    assert_eq!(a2.try_recv(Duration::from_millis(300)).await, None);
}

/// The lease tick is the safety net for pub/sub loss: a relay its sender's log holds but whose
/// PUBLISH never reached this replica (written here straight into the log, with no PUBLISH)
/// reaches the receiver at the next tick (a tick every 200 ms with a 600 ms lease), once the
/// router has checked again that it still has not seen that number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stored_but_never_published_is_delivered_by_the_lease_tick() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &["--lease-ms", "600"]).await;
    let TwoParty {
        mut a,
        pb,
        b: mut b1,
        call,
        ..
    } = TwoParty::join_one(&redis, &r1.url()).await;
    b1.send(&candidate(1)).await;
    let first = a.recv().await;
    assert_eq!(candidate_index(&first), 1);
    let stored = seq_of(&first);

    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let (stored_now, _) = write_relay(&client, &call.id, &pb, stored + 1, 777, false).await;
    assert!(stored_now.is_ok(), "{stored_now:?}");
    let caught_up = a.recv().await;
    assert_eq!(candidate_index(&caught_up), 777, "got {caught_up:?}");
    assert_eq!(seq_of(&caught_up), stored + 1);
    assert_eq!(a.try_recv(Duration::from_millis(500)).await, None, "once");
}

/// How many connections are subscribed to `channel` (`PUBSUB NUMSUB`).
fn subscribers(redis: &RedisServer, channel: &str) -> i64 {
    let reply = redis
        .raw_command(&format!("PUBSUB NUMSUB {channel}"))
        .unwrap();
    reply
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(':').and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("PUBSUB NUMSUB: {reply:?}"))
}

/// Wait (up to 10 s) until `channel` has `n` subscribed connections.
async fn wait_for_subscribers(redis: &RedisServer, channel: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = subscribers(redis, channel);
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}: {now} subscribers, never {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The receivers' side of the fence when pub/sub loses the `seat` marker: the offerer's
/// replica's subscriber connection is down while the answerer's connection is replaced (its
/// Redis user is disabled and the connection killed, so it cannot reconnect until the user is
/// enabled again), and the old connection's refused XADD and its PUBLISH reach Redis only
/// after that replica subscribed again. Its router reads the call's kept fences again after
/// the reconnect and delivers no relayed frame of the call before it has them: the refused
/// message never reaches the offerer, the new connection's messages do, in order. Without the
/// re-read the offerer gets the refused candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_replica_lost_the_takeovers_marker_never_gets_the_refused_relay() {
    let redis = RedisServer::start();
    // The offerer's replica connects as a user of its own: the test can keep it out.
    let user = redis
        .raw_command("ACL SETUSER follower on >follower-pw ~* &* +@all")
        .unwrap();
    assert!(user.starts_with("+OK"), "{user:?}");
    let follower = format!("redis://follower:follower-pw@127.0.0.1:{}", redis.port());
    let r1 = Replica::start(&follower, &[]).await;
    let r2 = Replica::start(&redis.url(), &[]).await;
    let TwoParty {
        mut a,
        tb,
        pb,
        b: mut b1,
        call,
        ..
    } = TwoParty::join(&redis, &r1.url(), &r2.url()).await;
    b1.send(&candidate(1)).await;
    let first = a.recv().await;
    assert_eq!(candidate_index(&first), 1);
    let stored = seq_of(&first);
    let channel = hermes_proto::keys::call_channel(&call.id);
    wait_for_subscribers(&redis, &channel, 2).await;

    // r1's subscriber connection drops and stays out (its user is disabled; r1's command
    // connection, already authenticated, stays up).
    let off = redis.raw_command("ACL SETUSER follower off").unwrap();
    assert!(off.starts_with("+OK"), "{off:?}");
    let killed = redis
        .raw_command("CLIENT KILL USER follower TYPE pubsub")
        .unwrap();
    assert_eq!(killed.trim(), ":1", "r1's subscriber connection");
    wait_for_subscribers(&redis, &channel, 1).await;
    // The answerer connects again on r2: the `seat` marker with the fence goes out now, and
    // r1 misses it.
    let (mut b2, joined) = Client::join(&r2.url(), &tb, Some(0)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let (_, closed) = b1.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_REPLACED));
    // r1's subscriber connects and subscribes again.
    let on = redis.raw_command("ACL SETUSER follower on").unwrap();
    assert!(on.starts_with("+OK"), "{on:?}");
    wait_for_subscribers(&redis, &channel, 2).await;

    // The old connection's relay of its next number, as its pipeline sends it, late: refused
    // by the log, published all the same. Replayed once while r1's read of the kept fences
    // may still be under way, and again after it (the fence then comes from the read alone).
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let stale = |seq: u64| {
        let (client, call) = (client.clone(), call.id.clone());
        let pb = pb.clone();
        async move {
            let (refused, receivers) = write_relay(&client, &call, &pb, seq, 666, true).await;
            assert!(
                refused.is_err(),
                "the fence refuses the old connection's number: {refused:?}"
            );
            assert_eq!(receivers, 2, "r1 and r2 follow the call");
        }
    };
    stale(stored + 1).await;
    let is_candidate = |m: &ServerMessage| matches!(m, ServerMessage::IceCandidate { .. });
    assert_eq!(
        a.try_recv(Duration::from_millis(300))
            .await
            .filter(is_candidate),
        None,
        "the refused candidate reached the offerer"
    );
    // r1 has read the call's kept fences again.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http
            .get(format!("http://{}/metrics", r1.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("hermes_signal_fence_rereads_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "r1 never read the kept fences again: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stale(stored + 1).await;

    // The new connection's messages arrive in order; the refused one never does.
    b2.send(&candidate(2)).await;
    b2.send(&candidate(3)).await;
    let mut last = stored + 1;
    for index in [2, 3] {
        let next = a
            .recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. }))
            .await;
        assert_eq!(candidate_index(&next), index, "got {next:?}");
        assert!(seq_of(&next) > last, "{next:?} after {last}");
        last = seq_of(&next);
    }
    assert_eq!(
        a.try_recv(Duration::from_millis(300))
            .await
            .filter(is_candidate),
        None
    );
}
