//! The senders' resume logs (one capped stream per sender of a call, issue 23) through the
//! hub: a participant's replay holds exactly the others' messages after its position for
//! each sender; a sender's log is trimmed only up to the lowest ack of its readers (a reader
//! that acked nothing keeps it whole), acks from a connection that lost its seat are refused,
//! a log is capped, a connection replaced by a newer one is fenced off by its log, and ending
//! the call drops the logs and the acks.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hermes_proto::signal::{IceCandidate, ServerMessage};
use hermes_proto::{CallId, ParticipantId, Role, keys};
use hermes_signal::hub::{Hub, HubTimes, JoinOutcome, RelayOutcome, Resume};
use hermes_signal::room::{Positions, Sender};
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
            .join(&call, p, role, p.as_str(), &Resume::default(), now)
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

async fn relay(s: &Setup, from: &ParticipantId, conn: &str, seq: u64) -> RelayOutcome {
    let now = hermes_service::unix_now_ms();
    s.hub
        .relay(
            &s.call,
            from,
            Role::Offerer,
            conn,
            &candidate(from, seq as usize),
            seq,
            now,
        )
        .await
        .unwrap()
}

async fn send(s: &Setup, from: &ParticipantId, seq: u64) -> u64 {
    match relay(s, from, from.as_str(), seq).await {
        RelayOutcome::Sent(n) => n,
        other => panic!("relay {seq}: {other:?}"),
    }
}

fn log_len(s: &Setup, sender: &ParticipantId) -> i64 {
    integer(
        &s.redis,
        &format!("XLEN {}", keys::call_sender_log(&s.call, sender)),
    )
}

fn at(list: &[(&ParticipantId, u64)]) -> Positions {
    Positions::new(list.iter().map(|(p, n)| (Sender::of(p), *n)).collect())
}

async fn seqs_after(s: &Setup, reader: &ParticipantId, after: Positions) -> Vec<u64> {
    s.hub
        .logs_after(&s.call, reader, &after)
        .await
        .unwrap()
        .iter()
        .map(|(_, seq, _)| *seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_the_others_messages_and_acks_trim_to_the_lowest_reader() {
    let s = two_seats(100).await;
    let (a, b) = (s.a.clone(), s.b.clone());
    for i in 1..=3 {
        assert_eq!(send(&s, &a, i).await, i);
    }
    // Numbers are per sender: b's first message is its own 1.
    assert_eq!(send(&s, &b, 1).await, 1);
    assert_eq!((log_len(&s, &a), log_len(&s, &b)), (3, 1));

    // Each side's replay: the other's messages after the point, in order, never its own.
    let for_b = s.hub.logs_after(&s.call, &b, &at(&[])).await.unwrap();
    assert_eq!(
        for_b.iter().map(|(_, seq, _)| *seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for (from, seq, text) in &for_b {
        assert_eq!(*from, Sender::of(&a));
        let m: ServerMessage = serde_json::from_str(text).unwrap();
        assert_eq!(m.seq(), Some(*seq), "the stored text carries its seq");
    }
    assert_eq!(seqs_after(&s, &a, at(&[])).await, [1]);
    assert_eq!(seqs_after(&s, &a, at(&[(&b, 1)])).await, Vec::<u64>::new());
    assert_eq!(seqs_after(&s, &b, at(&[(&a, 2)])).await, [3]);

    // b acknowledged 3: a's log (b is its only reader) goes up to 3; b's own log stays, a has
    // acknowledged nothing yet.
    assert!(s.hub.ack(&s.call, &b, b.as_str(), 3).await.unwrap());
    assert_eq!((log_len(&s, &a), log_len(&s, &b)), (0, 1));
    // An ack from a connection that no longer holds a's seat records nothing.
    assert!(!s.hub.ack(&s.call, &a, "another-conn", 1).await.unwrap());
    assert_eq!(log_len(&s, &b), 1);
    assert!(s.hub.ack(&s.call, &a, a.as_str(), 1).await.unwrap());
    assert_eq!(log_len(&s, &b), 0);
    // A later message is stored after the trim and numbered on.
    assert_eq!(send(&s, &a, 4).await, 4);
    assert_eq!(seqs_after(&s, &b, at(&[(&a, 3)])).await, [4]);

    // Ending the call drops the logs, the senders and the acks with the seats.
    assert!(s.hub.end(&s.call, "hangup", false).await.unwrap());
    for key in [
        keys::call_sender_log(&s.call, &a),
        keys::call_sender_log(&s.call, &b),
        keys::call_senders(&s.call),
        keys::call_acks(&s.call),
    ] {
        assert_eq!(integer(&s.redis, &format!("EXISTS {key}")), 0, "{key}");
    }
    assert_eq!(relay(&s, &a, a.as_str(), 5).await, RelayOutcome::Ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_is_fenced_off_by_its_log() {
    let s = two_seats(100).await;
    let (a, b) = (s.a.clone(), s.b.clone());
    assert_eq!(send(&s, &a, 1).await, 1);
    assert_eq!(send(&s, &b, 1).await, 1);
    // a connects again (conn "a2") and takes the seat over: its numbering starts above every
    // log of the call and above the old connection's next number (2).
    let now = hermes_service::unix_now_ms();
    let JoinOutcome::Admitted { next_seq, .. } = s
        .hub
        .join(&s.call, &a, Role::Offerer, "a2", &Resume::after(0), now)
        .await
        .unwrap()
    else {
        panic!("not admitted")
    };
    assert!(next_seq > 2, "{next_seq}");
    // The old connection's next relay is refused: replaced, nothing stored or published.
    assert_eq!(relay(&s, &a, a.as_str(), 2).await, RelayOutcome::Replaced);
    assert_eq!(seqs_after(&s, &b, at(&[])).await, [1]);
    // The new connection relays at its number.
    assert_eq!(
        relay(&s, &a, "a2", next_seq).await,
        RelayOutcome::Sent(next_seq)
    );
    assert_eq!(seqs_after(&s, &b, at(&[(&a, 1)])).await, [next_seq]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_log_is_rewritten_and_an_earlier_landed_write_is_stepped_over() {
    let s = two_seats(100).await;
    let a = s.a.clone();
    assert_eq!(send(&s, &a, 1).await, 1);
    // The log is gone (Redis lost it): the relay re-creates it and goes out at its number.
    s.redis
        .raw_command(&format!("DEL {}", keys::call_sender_log(&s.call, &a)))
        .unwrap();
    assert_eq!(send(&s, &a, 7).await, 7);
    assert_eq!(seqs_after(&s, &s.b, at(&[])).await, [7]);
    // The same number again (a write whose reply was lost): the next free number instead.
    assert_eq!(send(&s, &a, 7).await, 8);
    assert_eq!(seqs_after(&s, &s.b, at(&[])).await, [7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_capped_and_has_a_ttl() {
    // `SIGNAL_INBOX_MAXLEN` per direction: each sender's log holds that many.
    let s = two_seats(16).await;
    let a = s.a.clone();
    for i in 1..=400 {
        send(&s, &a, i).await;
    }
    let len = log_len(&s, &a);
    // The relay trims every 64th number, and `MAXLEN ~` trims whole nodes: at least the cap
    // stays, at most a node (100 entries) and 63 relays since the last trim more.
    assert!((16..=16 + 100 + 63).contains(&len), "{len}");
    let replay = s.hub.logs_after(&s.call, &s.b, &at(&[])).await.unwrap();
    assert_eq!(replay.len() as i64, len);
    assert_eq!(replay.last().map(|(_, seq, _)| *seq), Some(400));
    // The log carries a TTL (set by the join, every 64th relay and the lease tick).
    let ttl = integer(
        &s.redis,
        &format!("PTTL {}", keys::call_sender_log(&s.call, &a)),
    );
    assert!(ttl > 0, "{ttl}");
}
