//! The senders' resume logs (one capped stream per sender of a call, issue 23) through the
//! hub: a participant's replay holds exactly the others' messages after its position for
//! each sender; a sender's log is trimmed only up to the lowest ack of its readers (a reader
//! that acked nothing keeps it whole), acks from a connection that lost its seat are refused,
//! a log is capped, a connection replaced by a newer one is fenced off by its log (and the
//! fence is kept with the seats for replicas that follow the call later), and ending the call
//! drops the logs, the acks and the fences.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hermes_proto::signal::{IceCandidate, ServerMessage};
use hermes_proto::{CallId, ParticipantId, Role, keys};
use hermes_signal::hub::{Hub, HubTimes, JoinOutcome, RelayOutcome, Resume};
use hermes_signal::room::{
    Admission, Conn, FENCES_PER_SENDER, Fences, JoinStep, Limits, Positions, Sender,
};
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
        keys::call_fences(&s.call),
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

/// What a replaced connection's relay pipeline sends for its number `seq` after the takeover:
/// the XADD (refused by the log, asserted) and the PUBLISH that follows it all the same.
async fn refused_relay(
    client: &fred::prelude::Client,
    call: &CallId,
    from: &ParticipantId,
    seq: u64,
) {
    use fred::interfaces::{PubsubInterface, StreamsInterface};
    let mut m = candidate(from, 666);
    if let ServerMessage::IceCandidate { seq: n, .. } = &mut m {
        *n = seq;
    }
    let text = serde_json::to_string(&m).unwrap();
    let refused: Result<fred::types::Value, _> = client
        .xadd(
            keys::call_sender_log(call, from),
            true,
            None,
            format!("{seq}-0"),
            vec![("m", text.clone())],
        )
        .await;
    assert!(refused.is_err(), "the log refuses {seq}: {refused:?}");
    let _: i64 = client
        .publish(keys::call_channel(call), text)
        .await
        .unwrap();
}

/// The fences kept with the seats, through the window a replica that starts following the call
/// after a takeover has: subscribed (proven), but not yet joined, when the replaced
/// connection's refused write is published. Its router routes it (it never saw the `seat`
/// marker); the join returns the call's fences, the connection drops it, and once seated the
/// router drops the next one itself. A chain of takeovers keeps the newest fences per sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_follows_the_call_after_a_takeover_gets_its_fence_with_the_join() {
    use hermes_signal::hub::Delivery;
    let s = two_seats(100).await;
    let (a, b) = (s.a.clone(), s.b.clone());
    assert_eq!(send(&s, &a, 1).await, 1);
    let now = hermes_service::unix_now_ms();
    let JoinOutcome::Admitted {
        next_seq, fences, ..
    } = s
        .hub
        .join(&s.call, &a, Role::Offerer, "a2", &Resume::after(0), now)
        .await
        .unwrap()
    else {
        panic!("not admitted")
    };
    let from_a = Sender::of(&a);
    assert!(fences.blocks(from_a, 2) && !fences.blocks(from_a, 1));
    assert!(!fences.blocks(from_a, next_seq), "{fences:?}");
    let kept: String = s
        .redis
        .raw_command(&format!("HGET {} {a}", keys::call_fences(&s.call)))
        .unwrap();
    assert!(kept.contains(&format!("1:{next_seq}")), "{kept:?}");

    // A second replica, with no session of the call: b's next connection subscribes there.
    let client = hermes_service::redis::connect(&s.redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let times = s.hub.times();
    let hub2 = Hub::start(&s.redis.url(), client.clone(), times, Default::default())
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let resync = Arc::new(std::sync::atomic::AtomicBool::new(false));
    hub2.register(7, &s.call, &b, Role::Answerer, "b2".into(), tx, resync)
        .await
        .unwrap();
    // The old connection's relay of its next number lands now: refused, published.
    let stale = || refused_relay(&client, &s.call, &a, 2);
    stale().await;
    let routed = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(routed, Delivery::Frame { relayed: Some((from, 2)), .. } if from == from_a),
        "the router never saw the fence: {routed:?}"
    );
    // b's join (a resume from 0: everything of a's is news to it) returns the call's fences.
    let JoinOutcome::Admitted { fences, after, .. } = hub2
        .join(&s.call, &b, Role::Answerer, "b2", &Resume::after(0), now)
        .await
        .unwrap()
    else {
        panic!("not admitted")
    };
    let mut conn = Conn::new(Limits::default(), now);
    let seat = hermes_signal::room::Seat {
        call: s.call.clone(),
        participant: b.clone(),
        role: Role::Answerer,
    };
    let step = conn.on_admission(
        seat,
        Admission::Admitted {
            resumed: true,
            after,
            fences: fences.clone(),
        },
    );
    assert_eq!(step, JoinStep::Seated { resumed: true });
    let Delivery::Frame { relayed, .. } = routed else {
        unreachable!()
    };
    assert!(!conn.accept_frame(relayed), "the connection drops it");
    // Seated: the router has the fences, and drops a refused write itself.
    hub2.seated(7, &s.call, fences);
    stale().await;
    assert_eq!(
        relay(&s, &a, "a2", next_seq).await,
        RelayOutcome::Sent(next_seq)
    );
    // (Past the `seat` marker of b's join, a Seam.)
    let next = loop {
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if !matches!(d, Delivery::Seam) {
            break d;
        }
    };
    let expected = Some((from_a, next_seq));
    assert!(
        matches!(&next, Delivery::Frame { relayed, .. } if *relayed == expected),
        "the new connection's message comes first: {next:?}"
    );
    assert!(conn.accept_frame(expected));

    // A chain of takeovers: the newest FENCES_PER_SENDER fences of a stay, in Redis and in
    // what a join returns (each fence holds one number here, the one below its `first`).
    let mut firsts = vec![next_seq];
    for k in 3..(3 + FENCES_PER_SENDER + 2) {
        let JoinOutcome::Admitted { next_seq, .. } = s
            .hub
            .join(
                &s.call,
                &a,
                Role::Offerer,
                &format!("a{k}"),
                &Resume::after(0),
                now,
            )
            .await
            .unwrap()
        else {
            panic!("not admitted")
        };
        // Each connection stores one message: the next fence starts above it.
        assert_eq!(
            relay(&s, &a, &format!("a{k}"), next_seq).await,
            RelayOutcome::Sent(next_seq)
        );
        firsts.push(next_seq);
    }
    let kept: String = s
        .redis
        .raw_command(&format!("HGET {} {a}", keys::call_fences(&s.call)))
        .unwrap();
    assert_eq!(kept.matches(':').count(), FENCES_PER_SENDER, "{kept:?}");
    let JoinOutcome::Admitted { fences, .. } = hub2
        .join(&s.call, &b, Role::Answerer, "b3", &Resume::after(0), now)
        .await
        .unwrap()
    else {
        panic!("not admitted")
    };
    assert_eq!(fences.of(from_a).count(), FENCES_PER_SENDER, "{fences:?}");
    let newest = &firsts[firsts.len() - FENCES_PER_SENDER..];
    for first in &firsts {
        assert_eq!(
            fences.blocks(from_a, first - 1),
            newest.contains(first),
            "{first}: {fences:?}"
        );
    }
    assert_eq!(Fences::parse_list(""), Some(Fences::default()));
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
