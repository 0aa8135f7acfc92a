//! Terminal closes: a flooding client always sees its 1008 (the server closes with a closing
//! handshake, bounded in time, not a reset), and after 1008 or 1009 the seat is freed at once
//! (the peer hears `peer-left`, not `peer-reconnecting`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use hermes_proto::Role;
use hermes_proto::signal::{CLOSE_POLICY_VIOLATION, ServerMessage, SignalErrorCode};
use hermes_testkit::RedisServer;
use tokio_tungstenite::tungstenite::Message;

/// Send `frames` pings as fast as the socket takes them, reading nothing; stop early if the
/// server already closed (the write fails).
async fn flood(c: &mut Client, frames: usize) -> usize {
    let mut sent = 0;
    for i in 0..frames {
        if c.ws
            .feed(Message::text(format!(r#"{{"type":"ping","ts":{i}}}"#)))
            .await
            .is_err()
        {
            return sent;
        }
        sent += 1;
    }
    let _ = c.ws.flush().await;
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_always_receives_its_1008() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let call = Call::create(&redis);
    let (_pb, tb) = call.token(Role::Answerer);
    let (mut b, _) = Client::join(&r.url(), &tb, None).await;
    // Ten floods of 3 000 to 10 000 frames: every one ends with the 1008 close frame, after
    // the rate-limited replies.
    for round in 0..10usize {
        let (_pa, ta) = call.token(Role::Observer);
        let (mut a, _) = Client::join(&r.url(), &ta, None).await;
        let frames = 3_000 + round * 777;
        let sent = flood(&mut a, frames).await;
        let (seen, closed) = a.closed().await;
        assert_eq!(
            closed,
            Closed::Code(CLOSE_POLICY_VIOLATION),
            "round {round}: {sent} of {frames} frames sent, {} replies seen",
            seen.len()
        );
        let limited = seen
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    ServerMessage::Error {
                        code: SignalErrorCode::RateLimited,
                        ..
                    }
                )
            })
            .count();
        assert!(
            limited > 0,
            "round {round}: the rate-limited replies arrive too"
        );
    }
    // The media participant never noticed (observers are invisible to it).
    b.send(&hermes_proto::signal::ClientMessage::Ping { ts: Some(7) })
        .await;
    assert_eq!(b.recv().await, ServerMessage::Pong { ts: Some(7) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_1008_or_1009_the_peer_hears_peer_left_at_once() {
    let redis = RedisServer::start();
    // Grace 30 s: a `peer-left` within the test's waits can only come from the terminal close.
    let r = Replica::start(&redis.url(), &["--grace-ms", "30000"]).await;
    let call = Call::create(&redis);
    let (pa, ta) = call.token(Role::Offerer);
    let (pb, tb) = call.token(Role::Answerer);
    let (mut b, _) = Client::join(&r.url(), &tb, None).await;

    // 1008: persistent garbage.
    let (mut a, _) = Client::join(&r.url(), &ta, None).await;
    assert!(matches!(b.recv().await, ServerMessage::PeerJoined { .. }));
    for _ in 0..40 {
        if a.ws.send(Message::text("garbage")).await.is_err() {
            break;
        }
    }
    let (_, closed) = a.closed().await;
    assert_eq!(closed, Closed::Code(CLOSE_POLICY_VIOLATION));
    let m = b.recv().await;
    assert!(
        matches!(m, ServerMessage::PeerLeft { ref participant_id, .. } if *participant_id == pa),
        "{m:?}"
    );
    assert_eq!(
        redis
            .raw_command(&format!("HEXISTS call:{{{}}}:peers {pa}", call.id))
            .unwrap(),
        ":0\r\n",
        "the seat is free"
    );

    // 1009: a message beyond the hard limit, from the other seat.
    let (mut a2, _) = Client::join(&r.url(), &ta, None).await;
    let m = b.recv().await;
    assert!(
        matches!(m, ServerMessage::PeerJoined { ref participant_id, .. } if *participant_id == pa),
        "{m:?}"
    );
    let huge = "x".repeat(hermes_signal::HARD_MESSAGE_LIMIT + 1024);
    let _ = a2.ws.send(Message::text(huge)).await;
    let (_, closed) = a2.closed().await;
    assert!(
        matches!(closed, Closed::Code(1009) | Closed::Dropped),
        "{closed:?}"
    );
    let m = b.recv().await;
    assert!(
        matches!(m, ServerMessage::PeerLeft { ref participant_id, .. } if *participant_id == pa),
        "{m:?}"
    );
    assert_eq!(b.try_recv(Duration::from_millis(300)).await, None);
    let _ = pb;
}

/// A binary frame is refused with a clear error and the connection stays: JSON text only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_gets_a_clear_error_and_the_connection_stays() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let TwoParty { mut a, mut b, .. } = TwoParty::join_one(&redis, &r.url()).await;
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let reply = a.recv().await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error { code: SignalErrorCode::BadMessage, ref message }
                if message.contains("binary frames are not supported")
        ),
        "{reply:?}"
    );
    // Still joined: a relayed offer reaches the other side.
    a.send(&hermes_proto::signal::ClientMessage::Offer { sdp: "v=0".into() })
        .await;
    assert!(matches!(b.recv().await, ServerMessage::Offer { .. }));
}
