//! Sequence numbers against every `lastSeq` a client can send, and a sender log left ahead of
//! the sender: numbers are per sender and only ever ones a join or a relay issued, every `seq`
//! on the wire is a plain integer, and a relay is reported sent only when its log holds it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use hermes_proto::Role;
use hermes_proto::signal::{ClientMessage, ServerMessage, SignalErrorCode};
use hermes_testkit::RedisServer;
use rand::{Rng, SeedableRng};

/// Read `c` until the candidate with `index` arrives; every other message must be a replayed
/// one numbered at most `max_old`. Returns the candidate's `seq`.
async fn until_candidate(c: &mut Client, index: usize, max_old: u64) -> u64 {
    loop {
        let m = c.recv().await;
        match &m {
            ServerMessage::IceCandidate { .. } if candidate_index(&m) == index => {
                return seq_of(&m);
            }
            ServerMessage::IceCandidate { .. } | ServerMessage::Answer { .. } => {
                assert!(seq_of(&m) <= max_old, "unexpected {m:?}");
            }
            ServerMessage::PeerResumed { .. } | ServerMessage::PeerReconnecting { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seq_over_its_whole_range_never_breaks_the_call() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &["--idle-timeout-ms", "60000"]).await;
    let TwoParty {
        mut a, tb, mut b, ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    a.send(&candidate(0)).await;
    let mut cur = until_candidate(&mut b, 0, 0).await;
    // b's numbers as a sees them (b's connection is replaced at every accepted join: each new
    // one numbers above the one it replaced).
    let mut cur_b = 0;

    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut cases: Vec<String> = [
        0u64,
        1,
        1_000_000_000_000,
        1_000_000_000_000_000,
        (1 << 53) - 1,
        1 << 53,
        (1 << 53) + 1,
        (1 << 63) - 1,
        1 << 63,
        u64::MAX,
    ]
    .iter()
    .map(u64::to_string)
    .collect();
    cases.extend(["cur", "cur+1", "cur-1"].map(String::from));
    cases.extend((0..12).map(|i| {
        let bits = rng.random_range(0..64u32);
        (rng.random::<u64>() >> bits).wrapping_add(i).to_string()
    }));
    cases.extend(
        [
            "-1",
            "-9223372036854775808",
            "1.5",
            "1e3",
            "1e+15",
            "18446744073709551616",
            "\"5\"",
            "[1]",
        ]
        .map(String::from),
    );

    for (index, case) in (1..).zip(cases.iter()) {
        let text = match case.as_str() {
            "cur" => cur.to_string(),
            "cur+1" => (cur + 1).to_string(),
            "cur-1" => (cur - 1).to_string(),
            other => other.to_owned(),
        };
        let numeric: Option<u64> = text.parse().ok();
        let mut b2 = Client::connect(&r.url()).await;
        b2.send_text(&format!(
            r#"{{"type":"join","token":"{tb}","lastSeq":{text}}}"#
        ))
        .await;
        match b2.recv().await {
            ServerMessage::Joined { resumed, .. } => {
                assert!(resumed, "lastSeq {text}: same seat, resumed");
                let n = numeric.unwrap_or_else(|| panic!("lastSeq {text} was accepted"));
                assert!(n < 1 << 53, "lastSeq {text} beyond 2^53-1 was accepted");
                let (_, closed) = b.closed().await;
                assert_eq!(closed, Closed::Code(4002), "lastSeq {text}");
                b = b2;
            }
            ServerMessage::Error { code, .. } => {
                assert_eq!(code, SignalErrorCode::BadMessage, "lastSeq {text}");
                assert!(
                    numeric.is_none_or(|n| n >= 1 << 53),
                    "lastSeq {text} within range was refused"
                );
                b2.close().await;
            }
            other => panic!("lastSeq {text}: {other:?}"),
        }
        // Both directions still work: a's connection numbers on from its last number, b's
        // (a new connection, or the same) above everything it sent before.
        a.send(&candidate(index)).await;
        let seq = until_candidate(&mut b, index, cur).await;
        assert_eq!(seq, cur + 1, "lastSeq {text}: the next number");
        cur = seq;
        b.send(&ClientMessage::Answer {
            sdp: format!("a{index}"),
        })
        .await;
        let answer = a
            .recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
            .await;
        assert!(seq_of(&answer) > cur_b, "lastSeq {text}: the other way");
        assert!(
            seq_of(&answer) < 1 << 53,
            "lastSeq {text}: a client's number never becomes a sender's"
        );
        cur_b = seq_of(&answer);
    }
    assert_eq!(a.try_recv(Duration::from_millis(200)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_log_left_ahead_of_its_sender_is_stepped_over() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &["--idle-timeout-ms", "60000"]).await;
    let TwoParty {
        call,
        pa,
        mut a,
        mut b,
        ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    a.send(&candidate(0)).await;
    until_candidate(&mut b, 0, 0).await;
    // a's log already holds an entry numbered above a's next number (a partial data loss):
    // XADD with the next number is refused, and the relay goes out above the entry.
    let stale = serde_json::to_string(&ServerMessage::IceCandidate {
        from: pa.clone(),
        seq: 500,
        // No spaces: the text goes through Redis's inline protocol in single quotes.
        candidate: hermes_proto::signal::IceCandidate {
            candidate: "candidate:99".into(),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        },
    })
    .unwrap();
    let reply = redis
        .raw_command(&format!(
            "XADD {} 500-0 m '{stale}'",
            hermes_proto::keys::call_sender_log(&call.id, &pa)
        ))
        .unwrap();
    assert!(reply.contains("500-0"), "{reply}");
    a.send(&candidate(1)).await;
    // It is stored at a number above the stale entry (the stale entry, found by the catch-up
    // the jump starts, may come before it). The refused write's own PUBLISH went out with its
    // XADD (one round trip), so b may first get the content at its original number, 2, unless
    // b had already caught up past it: at-least-once, the content twice under two numbers
    // (docs/signal.md, "The receivers' side of the fence").
    let mut seq = until_candidate(&mut b, 1, 500).await;
    if seq == 2 {
        seq = until_candidate(&mut b, 1, 500).await;
    }
    assert_eq!(seq, 501);
    assert_eq!(
        b.try_recv(Duration::from_millis(300))
            .await
            .map(|m| seq_of(&m) <= 500),
        None
    );
    assert_eq!(a.try_recv(Duration::from_millis(100)).await, None);
}

/// The join script and the relay called directly (no session in front to validate input): for
/// every `lastSeq`, the resume point is never above the sender log's last id and no number is
/// taken from it; for every number up to 2^53 − 1 the relayed text carries the integer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_relay_scripts_over_the_whole_range() {
    use hermes_proto::signal::MAX_SEQ;
    use hermes_proto::{CallId, ParticipantId};
    use hermes_signal::hub::{Hub, HubTimes, JoinOutcome, RelayOutcome, Resume};
    use hermes_signal::room::{Positions, Sender};
    let redis = RedisServer::start();
    let client = hermes_service::redis::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let times = HubTimes {
        lease_ms: 10_000,
        grace_ms: 5_000,
        inbox_maxlen: 100,
    };
    let hub = Hub::start(&redis.url(), client, times, Default::default())
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(53);
    let mut values = vec![
        0,
        1,
        1_000_000_000_000,
        1_000_000_000_000_000,
        MAX_SEQ - 1,
        MAX_SEQ,
        MAX_SEQ + 1,
        (1 << 63) - 1,
        u64::MAX,
    ];
    values.extend((0..24).map(|_| rng.random::<u64>() >> rng.random_range(0..64u32)));
    for (i, &value) in values.iter().enumerate() {
        let call = CallId::random(&mut rng);
        let a = ParticipantId::random(&mut rng);
        let b = ParticipantId::random(&mut rng);
        let now = hermes_service::unix_now_ms();
        for p in [&a, &b] {
            let first = hub
                .join(&call, p, Role::Offerer, p.as_str(), &Resume::default(), now)
                .await
                .unwrap();
            assert!(matches!(
                first,
                JoinOutcome::Admitted { resumed: false, .. }
            ));
        }
        // Some history first (0..3 messages), so "current" varies.
        let offer = ServerMessage::Offer {
            from: a.clone(),
            seq: 0,
            sdp: "o".into(),
        };
        let history = (i % 4) as u64;
        for n in 1..=history {
            let sent = hub
                .relay(&call, &a, Role::Offerer, a.as_str(), &offer, n, now)
                .await
                .unwrap();
            assert_eq!(sent, RelayOutcome::Sent(n));
        }
        // b resumes with `value` as lastSeq.
        let resumed = hub
            .join(
                &call,
                &b,
                Role::Offerer,
                b.as_str(),
                &Resume::after(value),
                now,
            )
            .await
            .unwrap();
        let JoinOutcome::Admitted {
            resumed: true,
            after,
            next_seq,
            ..
        } = resumed
        else {
            panic!("{value}: {resumed:?}")
        };
        let from_a = Sender::of(&a);
        assert_eq!(
            after.of(from_a),
            value.min(history),
            "{value}: clamped to a's log"
        );
        assert!(
            next_seq <= history + 2,
            "{value}: b's own numbers ignore lastSeq"
        );
        // The same per sender (`lastSeqs`): clamped alike; a sender not listed from its start.
        for (list, expected) in [
            (vec![(a.clone(), value)], value.min(history)),
            (Vec::new(), 0),
        ] {
            let resume = Resume {
                last_seq: None,
                per_sender: Some(list),
            };
            let again = hub
                .join(&call, &b, Role::Offerer, b.as_str(), &resume, now)
                .await
                .unwrap();
            let JoinOutcome::Admitted {
                resumed: true,
                after,
                ..
            } = again
            else {
                panic!("{value}: {again:?}")
            };
            assert_eq!(after.of(from_a), expected, "{value}: per sender");
        }
        // A relay at any number up to MAX_SEQ - 1 goes out at it (or, at or below what the log
        // holds, at the next free one).
        let seq = value.clamp(1, MAX_SEQ - 1);
        let outcome = hub
            .relay(&call, &a, Role::Offerer, a.as_str(), &offer, seq, now)
            .await
            .unwrap();
        let expected = seq.max(history + 1);
        assert_eq!(outcome, RelayOutcome::Sent(expected), "{value}");
        let replay = hub
            .logs_after(&call, &b, &Positions::new(vec![(from_a, expected - 1)]))
            .await
            .unwrap();
        assert_eq!(replay.len(), 1, "{value}");
        assert_eq!(replay[0].1, expected);
        let text: ServerMessage = serde_json::from_str(&replay[0].2)
            .unwrap_or_else(|e| panic!("{value}: {} is not a message: {e}", replay[0].2));
        assert_eq!(text.seq(), Some(expected), "{value}");
    }
}
