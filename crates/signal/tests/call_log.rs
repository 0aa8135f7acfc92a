//! The call's resume log (one capped stream per call, issue 23) through the hub's scripts: a
//! participant's replay holds exactly the others' messages after its resume point; the log
//! is trimmed only up to the lowest ack of the seated participants (a seat that acked nothing
//! keeps it whole), acks from a connection that lost its seat are refused, the log is capped,
//! and ending the call drops the log and the acks.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hermes_proto::signal::{IceCandidate, ServerMessage};
use hermes_proto::{CallId, ParticipantId, Role, keys};
use hermes_signal::hub::{Hub, HubTimes, JoinOutcome, RelayOutcome};
use hermes_testkit::RedisServer;
use rand::SeedableRng;

fn candidate(from: &ParticipantId, i: usize) -> ServerMessage {
    ServerMessage::IceCandidate {
        from: from.clone(),
        seq: 0,
        candidate: IceCandidate {
            candidate: format!("candidate:{i}"),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        },
    }
}

fn integer(redis: &RedisServer, command: &str) -> i64 {
    let reply = redis.raw_command(command).unwrap();
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{command}: not an integer reply: {reply:?}"))
}

struct Setup {
    redis: RedisServer,
    hub: Arc<Hub>,
    call: CallId,
    a: ParticipantId,
    b: ParticipantId,
}

async fn two_seats(inbox_maxlen: u64) -> Setup {
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let times = HubTimes {
        lease_ms: 60_000,
        grace_ms: 60_000,
        inbox_maxlen,
    };
    let hub = Hub::start(&redis.url(), client, times, Default::default())
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let call = CallId::random(&mut rng);
    let a = ParticipantId::random(&mut rng);
    let b = ParticipantId::random(&mut rng);
    let now = hermes_service::unix_now_ms();
    for (p, role) in [(&a, Role::Offerer), (&b, Role::Answerer)] {
        let joined = hub
            .join(&call, p, role, p.as_str(), None, now)
            .await
            .unwrap();
        assert!(matches!(
            joined,
            JoinOutcome::Admitted { resumed: false, .. }
        ));
    }
    Setup {
        redis,
        hub,
        call,
        a,
        b,
    }
}

async fn send(s: &Setup, from: &ParticipantId, role: Role, i: usize) -> u64 {
    let now = hermes_service::unix_now_ms();
    match s
        .hub
        .relay(
            &s.call,
            from,
            role,
            from.as_str(),
            &candidate(from, i),
            0,
            now,
        )
        .await
        .unwrap()
    {
        RelayOutcome::Sent(seq) => seq,
        other => panic!("relay {i}: {other:?}"),
    }
}

fn log_len(s: &Setup) -> i64 {
    integer(&s.redis, &format!("XLEN {}", keys::call_log(&s.call)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_the_others_messages_and_acks_trim_to_the_lowest_seat() {
    let s = two_seats(100).await;
    let (a, b) = (s.a.clone(), s.b.clone());
    for i in 1..=3 {
        assert_eq!(send(&s, &a, Role::Offerer, i).await, i as u64);
    }
    let seq4 = send(&s, &b, Role::Answerer, 4).await;
    assert_eq!(seq4, 4);
    assert_eq!(log_len(&s), 4);

    // Each side's replay: the other's messages after the point, in order, never its own.
    let for_b = s.hub.log_after(&s.call, &b, 0).await.unwrap();
    assert_eq!(
        for_b.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for (seq, text) in &for_b {
        let m: ServerMessage = serde_json::from_str(text).unwrap();
        assert_eq!(m.seq(), Some(*seq), "the stored text carries its seq");
    }
    let for_a = s.hub.log_after(&s.call, &a, 1).await.unwrap();
    assert_eq!(for_a.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [4]);
    assert!(s.hub.log_after(&s.call, &b, 3).await.unwrap().is_empty());

    // b acknowledged 3, a nothing yet: a's seat keeps the whole log.
    assert!(s.hub.ack(&s.call, &b, b.as_str(), 3).await.unwrap());
    assert_eq!(log_len(&s), 4);
    // An ack from a connection that no longer holds a's seat records nothing.
    assert!(!s.hub.ack(&s.call, &a, "another-conn", 4).await.unwrap());
    assert_eq!(log_len(&s), 4);
    // a acknowledged 4: everything up to min(3, 4) goes, b's resume still gets nothing it
    // lacks and a's still gets 4.
    assert!(s.hub.ack(&s.call, &a, a.as_str(), 4).await.unwrap());
    assert_eq!(log_len(&s), 1);
    assert_eq!(
        s.hub
            .log_after(&s.call, &a, 3)
            .await
            .unwrap()
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>(),
        [4]
    );
    // A later message is stored after the trim and numbered on.
    assert_eq!(send(&s, &a, Role::Offerer, 5).await, 5);
    assert_eq!(
        s.hub
            .log_after(&s.call, &b, 3)
            .await
            .unwrap()
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>(),
        [5]
    );

    // Ending the call drops the log and the acks with the seats.
    assert!(s.hub.end(&s.call, "hangup", false).await.unwrap());
    for key in [keys::call_log(&s.call), keys::call_acks(&s.call)] {
        assert_eq!(integer(&s.redis, &format!("EXISTS {key}")), 0, "{key}");
    }
    let now = hermes_service::unix_now_ms();
    assert_eq!(
        s.hub
            .relay(
                &s.call,
                &a,
                Role::Offerer,
                a.as_str(),
                &candidate(&a, 6),
                0,
                now
            )
            .await
            .unwrap(),
        RelayOutcome::Ended
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_capped_and_has_a_ttl() {
    // `SIGNAL_INBOX_MAXLEN` per direction: the log holds two directions' worth.
    let s = two_seats(16).await;
    let a = s.a.clone();
    for i in 1..=400 {
        send(&s, &a, Role::Offerer, i).await;
    }
    let len = log_len(&s);
    // The relay trims every 64th number, and `MAXLEN ~` trims whole nodes: at least the cap
    // stays, at most a node (100 entries) and 63 relays since the last trim more.
    assert!((32..=32 + 100 + 63).contains(&len), "{len}");
    let replay = s.hub.log_after(&s.call, &s.b, 0).await.unwrap();
    assert_eq!(replay.len() as i64, len);
    assert_eq!(replay.last().map(|(seq, _)| *seq), Some(400));
    // The log carries a TTL (set when a relay creates it, renewed by the lease tick).
    let ttl = integer(&s.redis, &format!("PTTL {}", keys::call_log(&s.call)));
    assert!(ttl > 0, "{ttl}");
}
