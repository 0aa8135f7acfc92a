//! `leave`: a participant steps out without ending the call. Its seat is freed at once (the
//! other side hears `peer-left {reason: "left"}`, not `peer-reconnecting`), the call stays
//! active, and the same token joins again as a fresh participant while the call lasts.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use hermes_proto::signal::{ClientMessage, ServerMessage};
use hermes_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_frees_the_seat_keeps_the_call_and_the_token_joins_again() {
    let redis = RedisServer::start();
    // Grace 30 s: a `peer-left` within the test's waits can only come from the leave.
    let r1 = Replica::start(&redis.url(), &["--grace-ms", "30000"]).await;
    let r2 = Replica::start(&redis.url(), &["--grace-ms", "30000"]).await;
    let TwoParty {
        call,
        pa,
        ta,
        mut a,
        mut b,
        ..
    } = TwoParty::join(&redis, &r1.url(), &r2.url()).await;

    a.send(&ClientMessage::Leave).await;
    let (_, closed) = a.closed().await;
    assert_eq!(
        closed,
        Closed::Code(1000),
        "a leave ends with a normal close"
    );
    let m = b.recv().await;
    assert_eq!(
        m,
        ServerMessage::PeerLeft {
            participant_id: pa.clone(),
            reason: "left".into()
        }
    );
    assert_eq!(
        redis
            .raw_command(&format!("HEXISTS call:{{{}}}:peers {pa}", call.id))
            .unwrap(),
        ":0\r\n",
        "the seat is free"
    );
    let status = redis
        .raw_command(&format!("HGET call:{{{}}} status", call.id))
        .unwrap();
    assert!(status.contains("active"), "the call goes on: {status}");
    assert_eq!(
        b.try_recv(Duration::from_millis(300)).await,
        None,
        "nothing else: no call-ended, no peer-reconnecting"
    );

    // Rejoin with the same token on the other replica: a fresh join, announced to b.
    let (mut a2, joined) = Client::join(&r2.url(), &ta, None).await;
    assert!(
        matches!(joined, ServerMessage::Joined { resumed: false, ref peers, .. } if peers.len() == 1),
        "{joined:?}"
    );
    let m = b.recv().await;
    assert!(
        matches!(m, ServerMessage::PeerJoined { ref participant_id, .. } if *participant_id == pa),
        "{m:?}"
    );

    // The call still relays both ways after the rejoin.
    a2.send(&ClientMessage::Offer {
        sdp: "v=0 after".into(),
    })
    .await;
    let m = b
        .recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
        .await;
    assert!(
        matches!(m, ServerMessage::Offer { ref sdp, ref from, .. } if sdp == "v=0 after" && *from == pa),
        "{m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_before_join_is_refused_and_the_connection_stays() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let mut c = Client::connect(&r.url()).await;
    c.send(&ClientMessage::Leave).await;
    let m = c.recv().await;
    assert!(
        matches!(
            m,
            ServerMessage::Error {
                code: hermes_proto::signal::SignalErrorCode::Unauthorized,
                ..
            }
        ),
        "{m:?}"
    );
    c.send(&ClientMessage::Ping { ts: Some(7) }).await;
    assert_eq!(c.recv().await, ServerMessage::Pong { ts: Some(7) });
}
