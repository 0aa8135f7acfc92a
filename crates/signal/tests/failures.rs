//! Failure scenarios: a replica killed with SIGKILL, Redis restarted mid-call.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use hermes_proto::Role;
use hermes_proto::signal::{ClientMessage, ServerMessage, SignalErrorCode};
use hermes_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_clients_resume_on_the_other_with_zero_loss() {
    let redis = RedisServer::start();
    let r1 = Replica::start(&redis.url(), &[]).await;
    let (mut child, addr2) = spawn_replica_process(&redis.url(), |cmd| {
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    })
    .await;
    let url2 = format!("ws://{addr2}/ws");

    let TwoParty {
        mut a,
        pb,
        tb,
        mut b,
        ..
    } = TwoParty::join(&redis, &r1.url(), &url2).await;
    a.send(&ClientMessage::Offer { sdp: "o".into() }).await;
    let last = seq_of(&b.recv().await);

    child.kill(); // SIGKILL: no close frames, no disconnect bookkeeping.
    let (_, closed) = b.closed().await;
    assert_eq!(closed, Closed::Dropped);
    // a keeps sending while b's seat is orphaned; every message must survive.
    for i in 0..10 {
        a.send(&candidate(i)).await;
    }
    // The lease (1.5 s) lapses: a's replica sweeps the seat and announces reconnecting.
    assert_eq!(
        a.recv().await,
        ServerMessage::PeerReconnecting {
            participant_id: pb.clone()
        }
    );
    let (mut b2, joined) = Client::join(&r1.url(), &tb, Some(last)).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { resumed: true, .. }
    ));
    let mut prev = last;
    for i in 0..10 {
        let m = b2.recv().await;
        assert_eq!(candidate_index(&m), i);
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
        ServerMessage::PeerResumed { participant_id: pb }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_call_loses_nothing_silently() {
    let mut redis = RedisServer::start();
    // The test reads b only between steps; a browser answers pings at any time. A long idle
    // timeout keeps b from being closed for silence while a waits on the outage.
    let r = Replica::start(&redis.url(), &["--idle-timeout-ms", "60000"]).await;
    let TwoParty {
        call, mut a, mut b, ..
    } = TwoParty::join_one(&redis, &r.url()).await;
    a.send(&candidate(0)).await;
    let mut last_seq = seq_of(&b.recv().await);

    redis.kill();
    // Every message is either delivered or refused with `unavailable` (then resent).
    let mut refused = 0;
    let mut delivered = 0;
    let mut restarted = false;
    for i in 1..=8 {
        loop {
            a.send(&candidate(i)).await;
            // Either b gets it, or a is told it was not relayed (commands fail within the 2 s
            // command timeout while Redis is down) and resends, as a client does.
            let outcome = tokio::select! {
                m = b.recv_until(|m| matches!(m, ServerMessage::IceCandidate { .. })) => Ok(m),
                e = a.recv_until(|m| matches!(m, ServerMessage::Error { .. })) => Err(e),
            };
            match outcome {
                Ok(m) => {
                    assert_eq!(candidate_index(&m), i, "in order, exactly once");
                    assert!(
                        seq_of(&m) > last_seq,
                        "seq never goes back after Redis lost its data"
                    );
                    last_seq = seq_of(&m);
                    delivered += 1;
                    break;
                }
                Err(ServerMessage::Error { code, .. }) => {
                    assert_eq!(code, SignalErrorCode::Unavailable);
                    refused += 1;
                    if !restarted {
                        redis.restart();
                        restarted = true;
                    }
                    assert!(refused < 30, "Redis is back but sends keep failing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(restarted);
    assert!(
        refused >= 1,
        "sends while Redis was down were refused, not dropped"
    );
    assert_eq!(delivered, 8);
    // The seats were rebuilt in the fresh Redis by the lease renewal.
    let mut hlen = String::new();
    for _ in 0..40 {
        hlen = redis
            .raw_command(&format!("HLEN call:{{{}}}:peers", call.id))
            .unwrap();
        if hlen == ":2\r\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hlen, ":2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_listening_and_exits_zero_on_sigterm_after_closing_1012() {
    use std::io::Read;
    let redis = RedisServer::start();
    let (mut child, addr) = spawn_replica_process(&redis.url(), |cmd| {
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    })
    .await;
    let port = addr.port();
    let call = Call::create(&redis);
    let (_pa, ta) = call.token(Role::Offerer);
    let (mut a, _) = Client::join(&format!("ws://{addr}/ws"), &ta, None).await;
    let mut stderr = child.child_mut().unwrap().stderr.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(8)))
        .await
        .unwrap();
    let (_, closed) = a.closed().await;
    assert_eq!(
        closed,
        Closed::Code(hermes_proto::signal::CLOSE_SERVICE_RESTART)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(
        log.contains(&format!("listening on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(!log.contains(&ta), "the token must never be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_script_applies_the_presence_and_seat_rules_of_room() {
    use hermes_proto::{CallId, ParticipantId};
    use hermes_signal::hub::{Hub, HubTimes, JoinOutcome, Resume};
    use hermes_signal::room::{SeatEntry, admits};
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
    let now = hermes_service::unix_now_ms();
    // Every combination of two other seats: role, live/away, expiry around now and the grace edge.
    let expiries = [now + 1_000, now - 1, now - 4_000, now - 6_000];
    let roles = [Role::Offerer, Role::Observer];
    let mut cases = 0;
    for r1 in roles {
        for l1 in [true, false] {
            for e1 in expiries {
                for e2 in expiries {
                    let call = CallId::random(&mut rand::rng());
                    let entries = [
                        SeatEntry {
                            role: r1,
                            live: l1,
                            expiry_ms: e1,
                            conn: "x1".into(),
                        },
                        SeatEntry {
                            role: Role::Answerer,
                            live: true,
                            expiry_ms: e2,
                            conn: "x2".into(),
                        },
                    ];
                    for e in &entries {
                        let pid = ParticipantId::random(&mut rand::rng());
                        redis
                            .raw_command(&format!(
                                "HSET call:{{{call}}}:peers {pid} {}",
                                e.encode()
                            ))
                            .unwrap();
                    }
                    let me = ParticipantId::random(&mut rand::rng());
                    let outcome = hub
                        .join(&call, &me, Role::Answerer, "me", &Resume::default(), now)
                        .await
                        .unwrap();
                    let expected = admits(Role::Answerer, &entries, now, times.grace_ms, 2);
                    assert_eq!(
                        matches!(outcome, JoinOutcome::Admitted { .. }),
                        expected,
                        "{entries:?} -> {outcome:?}"
                    );
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 64);
}

/// `/readyz` covers pub/sub end to end, not just a PING: while Redis answers commands but
/// refuses every channel (an ACL without channel rights), the replica is not ready; once the
/// channels are allowed again it is ready again. Joins meanwhile get `unavailable`, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_requires_pubsub_that_works() {
    let redis = RedisServer::start();
    let r = Replica::start(&redis.url(), &[]).await;
    let http = reqwest::Client::new();
    let readyz = || async {
        let reply = http
            .get(format!("http://{}/readyz", r.addr))
            .send()
            .await
            .unwrap();
        (
            reply.status().as_u16(),
            reply.text().await.unwrap_or_default(),
        )
    };
    assert_eq!(readyz().await.0, 200);
    let ok = redis
        .raw_command("ACL SETUSER default resetchannels")
        .unwrap();
    assert_eq!(ok, "+OK\r\n");
    assert_eq!(redis.raw_command("PING").unwrap(), "+PONG\r\n");
    // Each /readyz waits at most 1.5 s for its probe: bounded.
    let mut last = (0, String::new());
    for _ in 0..20 {
        last = readyz().await;
        if last.0 == 503 {
            break;
        }
    }
    assert_eq!(last.0, 503, "{last:?}");
    assert!(last.1.contains("pub/sub"), "{last:?}");
    let call = Call::create(&redis);
    let (_p, t) = call.token(Role::Offerer);
    let mut c = Client::connect(&r.url()).await;
    c.send(&ClientMessage::Join {
        token: t.clone(),
        last_seq: None,
        call_id: None,
        last_seqs: None,
    })
    .await;
    let (seen, _) = c.closed().await;
    assert!(
        matches!(
            seen.first(),
            Some(ServerMessage::Error {
                code: SignalErrorCode::Unavailable,
                ..
            })
        ),
        "{seen:?}"
    );

    let ok = redis
        .raw_command("ACL SETUSER default allchannels")
        .unwrap();
    assert_eq!(ok, "+OK\r\n");
    wait_ready(r.addr).await;
    // Client::join asserts `joined`.
    let _ = Client::join(&r.url(), &t, None).await;
}
