//! Redis Sentinel failover mid-call: a real primary, replica and three sentinels
//! ([`hermes_testkit::SentinelSet`]), two signal replicas connected with `redis-sentinel://`,
//! two signaling clients in a call across them exchanging a steady stream of relayed
//! messages both ways. The primary is SIGKILLed mid-call; the sentinels promote the replica;
//! the replicas follow by themselves (fred asks the sentinels again on reconnect and
//! re-subscribes). Measured and asserted, as the clients see it: the time without service,
//! and relayed messages lost, delivered twice or out of order.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::failover_party::*;
use common::{Call, candidate, candidate_index, wait_ready};
use futures_util::SinkExt;
use hermes_proto::signal::{ClientMessage, ServerMessage, SignalErrorCode};
use hermes_proto::{CallId, JoinTokenKeys, Role};
use hermes_testkit::SentinelSet;
use tokio_tungstenite::tungstenite::Message;

fn call_on(set: &SentinelSet) -> Call {
    let id = CallId::random(&mut rand::rng());
    let now = hermes_service::unix_now();
    let reply = set
        .raw_primary(&format!(
            "HSET call:{{{id}}} status created createdAt {now}"
        ))
        .unwrap();
    assert_eq!(reply, ":2\r\n");
    Call {
        id,
        keys: JoinTokenKeys::new(common::SECRET.as_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rides_out_a_sentinel_failover_with_nothing_lost_or_reordered() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let r1 = common::Replica::start(&url, FLAGS).await;
    let r2 = common::Replica::start(&url, FLAGS).await;
    let call = call_on(&set);
    let (_, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(30);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;
    match next_event(&mut wa, Duration::from_secs(5)).await {
        Some(Event::Message(ServerMessage::PeerJoined { .. })) => {}
        _ => panic!("the offerer must hear peer-joined"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ready1 = tokio::spawn(watch_readiness(r1.addr, stop.clone()));
    let ready2 = tokio::spawn(watch_readiness(r2.addr, stop.clone()));
    let sent_a = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let no_drop = Arc::new(AtomicBool::new(false));
    // The answerer loses its connection at the kill and resumes with lastSeq.
    let drop_b = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(run_party(r1.url(), ta, wa, Some(sent_a.clone()), no_drop));
    let b = tokio::spawn(run_party(r2.url(), tb, wb, None, drop_b.clone()));

    while sent_a.load(Ordering::SeqCst) < KILL_AT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = set.kill_primary();
    drop_b.store(true, Ordering::SeqCst);
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    let seen_a = a.await.unwrap();
    let seen_b = b.await.unwrap();
    // Both replicas are ready again (the clients got through, so they must be).
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;
    stop.store(true, Ordering::SeqCst);
    let (down1, up1) = ready1.await.unwrap();
    let (down2, up2) = ready2.await.unwrap();

    eprintln!(
        "failover: promoted {:?} after the kill; readyz r1 down {:?} up {:?}, r2 down {:?} up {:?} (after the kill)",
        failover.promoted_after,
        down1.map(|t| t.saturating_duration_since(killed_at)),
        up1.map(|t| t.saturating_duration_since(killed_at)),
        down2.map(|t| t.saturating_duration_since(killed_at)),
        up2.map(|t| t.saturating_duration_since(killed_at)),
    );
    report_and_check_parties(&seen_a, &seen_b);
    // Readiness followed the outage on both replicas.
    for (down, up) in [(down1, up1), (down2, up2)] {
        let down = down.expect("/readyz answered 503 during the outage");
        let up = up.expect("/readyz answered 200 again after the promotion");
        assert!(down >= killed_at && up > down);
    }
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// A primary that hangs (SIGSTOP) instead of dying: the sentinels promote the replica, and
/// the call must go on with the old primary still hung (its connections stay open and silent,
/// so nothing tells the clients to leave it but their own checks). As the clients see it:
/// nothing lost, duplicated or reordered; `/readyz` 503 during the outage and 200 after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rides_out_a_hung_primary_under_sentinel() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let r1 = common::Replica::start(&url, FLAGS).await;
    let r2 = common::Replica::start(&url, FLAGS).await;
    let call = call_on(&set);
    let (_, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(30);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;
    match next_event(&mut wa, Duration::from_secs(5)).await {
        Some(Event::Message(ServerMessage::PeerJoined { .. })) => {}
        _ => panic!("the offerer must hear peer-joined"),
    }
    tokio::task::block_in_place(|| set.wait_replicated());
    let stop = Arc::new(AtomicBool::new(false));
    let ready1 = tokio::spawn(watch_readiness(r1.addr, stop.clone()));
    let ready2 = tokio::spawn(watch_readiness(r2.addr, stop.clone()));
    let sent_a = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let no_drop = Arc::new(AtomicBool::new(false));
    let drop_b = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(run_party(r1.url(), ta, wa, Some(sent_a.clone()), no_drop));
    let b = tokio::spawn(run_party(r2.url(), tb, wb, None, drop_b.clone()));
    while sent_a.load(Ordering::SeqCst) < KILL_AT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frozen_at = set.freeze_primary();
    drop_b.store(true, Ordering::SeqCst);
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(frozen_at, Duration::from_secs(30)));
    let seen_a = a.await.unwrap();
    let seen_b = b.await.unwrap();
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;
    stop.store(true, Ordering::SeqCst);
    let (down1, up1) = ready1.await.unwrap();
    let (down2, up2) = ready2.await.unwrap();
    let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(frozen_at));
    eprintln!(
        "sentinel, hung primary: promoted {:?} after the freeze; readyz r1 down {:?} up {:?}, \
         r2 down {:?} up {:?}",
        failover.promoted_after,
        since(down1),
        since(up1),
        since(down2),
        since(up2),
    );
    report_and_check_parties(&seen_a, &seen_b);
    for (down, up) in [(down1, up1), (down2, up2)] {
        let down = down.expect("/readyz answered 503 during the outage");
        let up = up.expect("/readyz answered 200 again after the promotion");
        assert!(down >= frozen_at && up > down);
    }
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// Send one candidate and wait for the pong of the ping after it: `true` when relayed (no
/// `unavailable` before the pong).
async fn send_confirmed(ws: &mut common::Ws, i: usize) -> bool {
    // Both frames in one write: two small writes would wait for the delayed ACK of the
    // first (Nagle), about 40 ms, and hide what the relay itself costs.
    for frame in [candidate(i), ClientMessage::Ping { ts: Some(i as u64) }] {
        ws.feed(Message::text(serde_json::to_string(&frame).unwrap()))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    let mut relayed = true;
    loop {
        match next_event(ws, Duration::from_secs(10)).await {
            Some(Event::Message(ServerMessage::Pong { ts: Some(t) })) if t == i as u64 => {
                return relayed;
            }
            Some(Event::Message(ServerMessage::Error {
                code: SignalErrorCode::Unavailable,
                ..
            })) => relayed = false,
            Some(Event::Message(_)) => {}
            Some(Event::Closed) | None => panic!("no pong for message {i}"),
        }
    }
}

/// The next relayed candidate within `wait`: (seq, index), skipping presence events.
async fn next_candidate(ws: &mut common::Ws, wait: Duration) -> Option<(u64, usize)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(ws, left).await? {
            Event::Message(m @ ServerMessage::IceCandidate { .. }) => {
                return Some((m.seq().unwrap(), candidate_index(&m)));
            }
            Event::Message(_) => {}
            Event::Closed => panic!("connection closed"),
        }
    }
}

/// The trap: a `seq` the old primary issued and delivered, but had not replicated when it
/// died, is issued again by the promoted replica. Here the answerer relays message 1 (its
/// `seq` reaches the offerer), loses its connection, the primary dies before replicating,
/// and the answerer resumes on the promoted replica with a fresh session (whose floor knows
/// nothing of message 1). Its next message must still reach the offerer, with a `seq` above
/// message 1's: were the number reused, the offerer's session would drop it as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seq_issued_but_not_replicated_is_never_reused_after_a_failover() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let r1 = common::Replica::start(&url, FLAGS).await;
    let r2 = common::Replica::start(&url, FLAGS).await;
    let call = call_on(&set);
    let (_, ta) = call.token(Role::Offerer);
    let (pb, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(60);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (mut wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;

    assert!(send_confirmed(&mut wb, 0).await);
    let (seq0, idx) = next_candidate(&mut wa, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(idx, 0);
    tokio::task::block_in_place(|| set.wait_replicated());

    set.cut_replication();
    assert!(
        send_confirmed(&mut wb, 1).await,
        "relayed by the old primary"
    );
    let (seq1, idx) = next_candidate(&mut wa, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((idx, seq1), (1, seq0 + 1));
    drop(wb.into_inner()); // the answerer's connection is lost too
    let killed_at = set.kill_primary();
    set.resume_replica();
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    let newest = set
        .raw_primary(&format!(
            "XREVRANGE {} + - COUNT 1",
            hermes_proto::keys::call_sender_log(&call.id, &pb)
        ))
        .unwrap();
    assert!(
        newest.contains(&format!("{seq0}-0")) && !newest.contains(&format!("{seq1}-0")),
        "the promoted replica's log of the answerer went back: the trap is set ({newest:?})"
    );
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;

    let (mut wb, resumed) = join_until_admitted(&r2.url(), &tb, Some(0), far).await;
    assert!(resumed);
    let mut i = 2;
    while !send_confirmed(&mut wb, i).await {
        i += 1;
    }
    let (seq, idx) = next_candidate(&mut wa, Duration::from_secs(10))
        .await
        .expect("the answerer's message after the failover reaches the offerer");
    eprintln!(
        "failover after {:?}: seq before {seq1}, after {seq}",
        failover.promoted_after
    );
    assert_eq!(idx, i);
    assert!(seq > seq1);
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// Signal flags with relays to an away receiver waiting for a replica, and refused without one.
/// The idle timeout is long: this test's clients read nothing (so answer no ping) while it
/// blocks on the set (`add_replica` takes more than the suite's 5 s on a loaded machine).
const REQUIRED: &[&str] = &[
    "--lease-ms",
    "3000",
    "--grace-ms",
    "30000",
    "--idle-timeout-ms",
    "60000",
    "--redis-replica-ack",
    "required",
];

/// `WAIT` commands the current primary has run (`INFO commandstats`).
fn waits(set: &SentinelSet) -> u64 {
    let stats = set.raw_primary("INFO commandstats").unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// The trap closed: a message relayed to a participant who is away lives only in the call's
/// log, so a failover before it replicates would lose it. Under `REDIS_REPLICA_ACK=required`
/// the relay waits for a replica (`WAIT 1` after the relay script, same connection): with
/// replication cut, the sender hears `unavailable` instead of "sent", and the message is
/// indeed lost in the failover that follows. It resends; while the promoted primary has no
/// replica it keeps hearing `unavailable`; once a replica is back the resend is confirmed,
/// and the answerer's resume replays it. Copies from resends told `unavailable` carry the same
/// candidate (the client dedups them); nothing else is replayed, in `seq` order.
/// Without the WAIT (`--redis-replica-ack off`) the first relay counts as sent and is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_for_an_away_participant_survives_a_failover() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let r1 = common::Replica::start(&url, REQUIRED).await;
    let r2 = common::Replica::start(&url, REQUIRED).await;
    let call = call_on(&set);
    let (offerer, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(60);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (mut wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;
    assert!(send_confirmed(&mut wa, 0).await);
    let (seq0, _) = next_candidate(&mut wb, Duration::from_secs(5))
        .await
        .unwrap();

    // The answerer goes away (clean close: its seat turns away at once).
    wb.close(None).await.unwrap();
    loop {
        match next_event(&mut wa, Duration::from_secs(10)).await {
            Some(Event::Message(ServerMessage::PeerReconnecting { .. })) => break,
            Some(Event::Message(_)) => {}
            _ => panic!("the offerer must hear peer-reconnecting"),
        }
    }
    tokio::task::block_in_place(|| set.wait_replicated());
    set.cut_replication();
    let started = Instant::now();
    assert!(
        !send_confirmed(&mut wa, 1).await,
        "a relay to an away participant that no replica holds must not count as sent"
    );
    let refused_after = started.elapsed();
    // The primary did store it in the offerer's log (and no replica did): the failover loses it.
    let seq_key = format!("XLEN call:{{{}}}:log:{offerer}", call.id);
    let issued = set.raw_primary(&seq_key).unwrap();
    let killed_at = set.kill_primary();
    set.resume_replica();
    let failover =
        tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    let kept = set.raw_primary(&seq_key).unwrap();
    assert_ne!(
        issued, kept,
        "the unreplicated relay was lost: the trap is set"
    );
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;

    // The client resends. The promoted primary has no replica yet: still not confirmed.
    assert!(!send_confirmed(&mut wa, 1).await);
    let adding = Instant::now();
    tokio::task::block_in_place(|| set.add_replica());
    let added_after = adding.elapsed();
    let mut resends = 2;
    while !send_confirmed(&mut wa, 1).await {
        resends += 1;
        assert!(Instant::now() < far, "never confirmed with a replica back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut wb, resumed) = join_until_admitted(&r2.url(), &tb, Some(seq0), far).await;
    assert!(resumed);
    let mut replayed = Vec::new();
    while let Some(c) = next_candidate(&mut wb, Duration::from_secs(2)).await {
        replayed.push(c);
    }
    eprintln!(
        "away relay refused after {refused_after:?} (no replica), promoted after {:?}, \
         replica added in {added_after:?}, \
         offerer log length before/after the failover {issued:?}/{kept:?}, {resends} sends of message 1, \
         replayed {replayed:?}",
        failover.promoted_after
    );
    assert!(
        !replayed.is_empty() && replayed.iter().all(|&(_, idx)| idx == 1),
        "the resent message reaches the resumed answerer, and nothing else: {replayed:?}"
    );
    assert!(replayed.len() <= resends, "{replayed:?}");
    assert!(replayed.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(replayed[0].0 > seq0);
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// What the WAIT costs, and where: relays to a live receiver run no WAIT at all (the primary's
/// `cmdstat_wait` does not move); relays while the receiver is away run one each (one relay
/// per batch here), under the default `auto` (best-effort under Sentinel). Under
/// best-effort, a relay no replica acknowledges (replica frozen) counts as sent after the
/// timeout. The receiver's resume replays every message sent while it was away, once, in
/// order, and relays go back to no WAIT once it is live again. Prints the median send-to-pong
/// time of both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_wait_for_a_replica_only_while_the_receiver_is_away() {
    const N: usize = 40;
    let set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let r1 = common::Replica::start(&url, FLAGS).await;
    let r2 = common::Replica::start(&url, FLAGS).await;
    let call = call_on(&set);
    let (_, ta) = call.token(Role::Offerer);
    let (_, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(60);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    let (mut wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;

    // Send `range` one by one, each confirmed by its pong: the time of each.
    async fn timed(ws: &mut common::Ws, range: std::ops::Range<usize>) -> Vec<Duration> {
        let mut times = Vec::new();
        for i in range {
            let started = Instant::now();
            assert!(send_confirmed(ws, i).await, "message {i} not relayed");
            times.push(started.elapsed());
        }
        times.sort();
        times
    }
    let before = waits(&set);
    let live = timed(&mut wa, 0..N).await;
    for i in 0..N {
        let (_, idx) = next_candidate(&mut wb, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(idx, i);
    }
    assert_eq!(waits(&set), before, "a relay to a live receiver ran WAIT");
    let last_live = {
        assert!(send_confirmed(&mut wa, N).await);
        next_candidate(&mut wb, Duration::from_secs(5))
            .await
            .unwrap()
            .0
    };

    wb.close(None).await.unwrap();
    loop {
        match next_event(&mut wa, Duration::from_secs(10)).await {
            Some(Event::Message(ServerMessage::PeerReconnecting { .. })) => break,
            Some(Event::Message(_)) => {}
            _ => panic!("the offerer must hear peer-reconnecting"),
        }
    }
    let before = waits(&set);
    let away = timed(&mut wa, N + 1..2 * N + 1).await;
    assert_eq!(waits(&set) - before, N as u64, "one WAIT per away relay");
    // Best-effort: no replica acknowledges (frozen), the relay still counts as sent.
    set.freeze_replica();
    let started = Instant::now();
    let confirmed = send_confirmed(&mut wa, 2 * N + 1).await;
    let unacked = started.elapsed();
    set.resume_replica();
    assert!(
        confirmed,
        "best-effort counts an unacknowledged relay as sent"
    );
    assert!(unacked >= Duration::from_millis(250), "{unacked:?}");

    let (mut wb, resumed) = join_until_admitted(&r2.url(), &tb, Some(last_live), far).await;
    assert!(resumed);
    for i in N + 1..2 * N + 2 {
        let (_, idx) = next_candidate(&mut wb, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(idx, i, "replayed once, in order");
    }
    loop {
        match next_event(&mut wa, Duration::from_secs(10)).await {
            Some(Event::Message(ServerMessage::PeerResumed { .. })) => break,
            Some(Event::Message(_)) => {}
            _ => panic!("the offerer must hear peer-resumed"),
        }
    }
    let before = waits(&set);
    timed(&mut wa, 2 * N + 2..2 * N + 12).await;
    assert_eq!(waits(&set), before, "live again: no WAIT");
    assert!(
        next_candidate(&mut wb, Duration::from_secs(5))
            .await
            .is_some()
    );

    let median = |t: &[Duration]| t[t.len() / 2];
    eprintln!(
        "send to pong, median of {N}: receiver live {:?} (no WAIT), away {:?} (WAIT 1): {:.2}x; \
         p90 live {:?}, away {:?}; best-effort with the replica frozen: {unacked:?}",
        median(&live),
        median(&away),
        median(&away).as_secs_f64() / median(&live).as_secs_f64(),
        live[live.len() * 9 / 10],
        away[away.len() * 9 / 10],
    );
    r1.trigger.cancel();
    r2.trigger.cancel();
}

/// A seat taken on the old primary but not replicated is written again after the failover
/// (the replica holding the connection rewrites its leases on reconnect), and messages flow
/// both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seat_taken_but_not_replicated_is_rewritten_after_a_failover() {
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let r1 = common::Replica::start(&url, FLAGS).await;
    let r2 = common::Replica::start(&url, FLAGS).await;
    let call = call_on(&set);
    let (_, ta) = call.token(Role::Offerer);
    let (pb, tb) = call.token(Role::Answerer);
    let far = Instant::now() + Duration::from_secs(60);
    let (mut wa, _) = join_until_admitted(&r1.url(), &ta, None, far).await;
    tokio::task::block_in_place(|| set.wait_replicated());

    set.cut_replication();
    let (mut wb, _) = join_until_admitted(&r2.url(), &tb, None, far).await;
    let killed_at = set.kill_primary();
    set.resume_replica();
    tokio::task::block_in_place(|| set.wait_for_promotion(killed_at, Duration::from_secs(30)));
    wait_ready(r1.addr).await;
    wait_ready(r2.addr).await;

    // The seat comes back (rewritten by the answerer's replica) ...
    let deadline = Instant::now() + Duration::from_secs(10);
    while !set
        .raw_primary(&format!("HEXISTS call:{{{}}}:peers {pb}", call.id))
        .unwrap()
        .starts_with(":1")
    {
        assert!(
            Instant::now() < deadline,
            "the lost seat was never rewritten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and messages flow both ways.
    let mut i = 0;
    while !send_confirmed(&mut wa, i).await {
        i += 1;
    }
    assert_eq!(
        next_candidate(&mut wb, Duration::from_secs(10))
            .await
            .map(|c| c.1),
        Some(i)
    );
    let mut j = 100;
    while !send_confirmed(&mut wb, j).await {
        j += 1;
    }
    assert_eq!(
        next_candidate(&mut wa, Duration::from_secs(10))
            .await
            .map(|c| c.1),
        Some(j)
    );
    r1.trigger.cancel();
    r2.trigger.cancel();
}
