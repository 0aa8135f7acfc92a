//! Sequence numbers against every `lastSeq` a client can send, and log writes that fail:
//! the call's counter only ever holds numbers Redis issued, every `seq` on the wire is a plain
//! integer, and a relay is reported sent only when the call's log holds it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use hermes_proto::Role;
use hermes_proto::signal::{ClientMessage, ServerMessage, SignalErrorCode};
use hermes_testkit::RedisServer;
use rand::{Rng, SeedableRng};

fn counter(redis: &RedisServer, call: &Call) -> u64 {
    counter_of(redis, &call.id)
}

fn counter_of(redis: &RedisServer, call: &hermes_proto::CallId) -> u64 {
    let reply = redis
        .raw_command(&format!("GET call:{{{call}}}:seq"))
        .unwrap();
    // `$<len>\r\n<digits>\r\n`
    reply
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("counter is not an integer: {reply:?}"))
}

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
        call,
        mut a,
        tb,
        mut b,
        ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    a.send(&candidate(0)).await;
    let mut cur = until_candidate(&mut b, 0, 0).await;

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
        // Both directions still work, numbered right after what Redis issued before.
        a.send(&candidate(index)).await;
        let seq = until_candidate(&mut b, index, cur).await;
        assert_eq!(seq, cur + 1, "lastSeq {text}: the next number");
        b.send(&ClientMessage::Answer {
            sdp: format!("a{index}"),
        })
        .await;
        let answer = a
            .recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
            .await;
        assert_eq!(seq_of(&answer), cur + 2, "lastSeq {text}: the other way");
        cur += 2;
        assert_eq!(counter(&redis, &call), cur, "lastSeq {text}: counter");
    }
    assert_eq!(a.try_recv(Duration::from_millis(200)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_log_write_fails_is_not_reported_sent() {
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
    // The call's log already holds an entry numbered above the call's counter (a partial
    // data loss): XADD with the next number fails.
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
            "XADD {} 500-1 f {pa} m '{stale}'",
            hermes_proto::keys::call_log(&call.id)
        ))
        .unwrap();
    assert!(reply.contains("500-1"), "{reply}");
    a.send(&candidate(1)).await;
    let reply = a.recv().await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error {
                code: SignalErrorCode::Unavailable,
                ..
            }
        ),
        "the sender is told: {reply:?}"
    );
    // Resent as told: it gets a number above the stale entry and arrives once.
    a.send(&candidate(1)).await;
    let seq = until_candidate(&mut b, 1, 500).await;
    assert!(seq > 500, "{seq}");
    assert_eq!(
        b.try_recv(Duration::from_millis(300))
            .await
            .map(|m| seq_of(&m) <= 500),
        None
    );
    assert_eq!(a.try_recv(Duration::from_millis(100)).await, None);
}

/// The join and relay scripts called directly (no session in front to validate input): for
/// every `lastSeq`, the resume point is never above the call's counter and the counter is never
/// written from it; for every floor up to 2^53 − 1 the relayed text carries the integer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_relay_scripts_over_the_whole_range() {
    use hermes_proto::signal::MAX_SEQ;
    use hermes_proto::{CallId, ParticipantId};
    use hermes_signal::hub::{Hub, HubTimes, JoinOutcome, RelayOutcome};
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
                .join(&call, p, Role::Offerer, p.as_str(), None, now)
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
        for _ in 0..history {
            hub.relay(&call, &a, Role::Offerer, a.as_str(), &offer, 0, now)
                .await
                .unwrap();
        }
        // b resumes with `value` as lastSeq.
        let resumed = hub
            .join(&call, &b, Role::Offerer, b.as_str(), Some(value), now)
            .await
            .unwrap();
        let JoinOutcome::Admitted {
            resumed: true,
            base_seq,
            after,
            ..
        } = resumed
        else {
            panic!("{value}: {resumed:?}")
        };
        assert_eq!(base_seq, history, "{value}");
        assert_eq!(after, value.min(history), "{value}: clamped to the counter");
        if history > 0 {
            assert_eq!(counter_of(&redis, &call), history);
        }
        // A relay whose floor is any number up to MAX_SEQ - 1 gets the next integer.
        let floor = value.min(MAX_SEQ - 1);
        let outcome = hub
            .relay(&call, &a, Role::Offerer, a.as_str(), &offer, floor, now)
            .await
            .unwrap();
        let expected = floor.max(history) + 1;
        assert_eq!(outcome, RelayOutcome::Sent(expected), "{value}");
        let replay = hub.log_after(&call, &b, expected - 1).await.unwrap();
        assert_eq!(replay.len(), 1, "{value}");
        assert_eq!(replay[0].0, expected);
        let text: ServerMessage = serde_json::from_str(&replay[0].1)
            .unwrap_or_else(|e| panic!("{value}: {} is not a message: {e}", replay[0].1));
        assert_eq!(text.seq(), Some(expected), "{value}");
    }
}
