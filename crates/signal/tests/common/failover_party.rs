//! A steady two-way call for failover tests (Sentinel and Cluster): each party sends a bounded,
//! paced stream of candidates across a Redis failover, resumes with `lastSeq` when its
//! connection closes, and records what it received, so a test can count what was lost,
//! delivered twice or out of order as the clients see it; and a `/readyz` watcher.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hermes_proto::signal::{ClientMessage, ServerMessage, SignalErrorCode};
use tokio_tungstenite::tungstenite::Message;

use super::{Ws, candidate, candidate_index};

/// Messages each side sends, one every [`PACE`]: a steady, bounded stream (about 17 a
/// second each way, with a ping and an ack per message well inside the 50/s rate limit).
pub const MESSAGES: usize = 220;
pub const PACE: Duration = Duration::from_millis(60);
/// When the primary is killed, counted in messages sent by the offerer.
pub const KILL_AT: usize = 60;
/// Bound on the whole exchange (the failover included).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Signal flags for these tests: a lease and grace long enough to ride out a failover (the
/// seat of a client that reconnects must still be there).
pub const FLAGS: &[&str] = &["--lease-ms", "3000", "--grace-ms", "30000"];

/// What one client saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// Relayed messages received: (seq, the peer's message index, when).
    pub received: Vec<(u64, usize, Instant)>,
    /// Own message indices answered `unavailable` at least once (then resent).
    pub unavailable: BTreeSet<usize>,
    /// When each own message was known relayed (its ping answered with no error before).
    pub relayed_at: BTreeMap<usize, Instant>,
    /// Reconnections (join with lastSeq) after the connection closed.
    pub resumes: usize,
    /// `joined.resumed` of each of those.
    pub resumed_flags: Vec<bool>,
}

pub enum Event {
    Message(ServerMessage),
    Closed,
}

pub async fn next_event(ws: &mut Ws, wait: Duration) -> Option<Event> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return Some(Event::Closed);
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(Event::Message(serde_json::from_str(&t).unwrap()));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Join (or resume with `last_seq`), retrying while Redis is unavailable (the server answers
/// `error unavailable` and closes 1013), as a client does with backoff.
pub async fn join_until_admitted(
    url: &str,
    token: &str,
    last_seq: Option<u64>,
    deadline: Instant,
) -> (Ws, bool) {
    loop {
        assert!(Instant::now() < deadline, "never admitted again");
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
            let join = ClientMessage::Join {
                token: token.to_owned(),
                last_seq,
                call_id: None,
                last_seqs: None,
            };
            let text = serde_json::to_string(&join).unwrap();
            if ws.send(Message::text(text)).await.is_ok() {
                match next_event(&mut ws, Duration::from_secs(10)).await {
                    Some(Event::Message(ServerMessage::Joined { resumed, .. })) => {
                        return (ws, resumed);
                    }
                    Some(Event::Message(ServerMessage::Error {
                        code: SignalErrorCode::Unavailable,
                        ..
                    }))
                    | Some(Event::Closed)
                    | None => {}
                    Some(Event::Message(other)) => panic!("unexpected answer to join: {other:?}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: sends `MESSAGES` candidates, each followed by a ping whose pong tells that the
/// relay before it was done (frames are handled in order, so an `unavailable` before the pong
/// belongs to that message: resend it); acks what it receives; resumes with `lastSeq` when its
/// connection closes. Then reads until it has every message of the peer or time runs out.
pub async fn run_party(
    url: String,
    token: String,
    mut ws: Ws,
    sent_counter: Option<Arc<std::sync::atomic::AtomicUsize>>,
    drop_now: Arc<AtomicBool>,
) -> Seen {
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let mut seen = Seen::default();
    let mut last_seq: Option<u64> = None;
    let mut acked = 0;
    let mut i = 0;
    let mut got: BTreeSet<usize> = BTreeSet::new();
    while got.len() < MESSAGES || i < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "exchange not done in {EXCHANGE_TIMEOUT:?}: sent {i}, received {}",
            got.len()
        );
        if drop_now.swap(false, Ordering::SeqCst) {
            // A network loss at the worst time: the client must resume from lastSeq.
            drop(ws.into_inner());
            let (fresh, resumed) = join_until_admitted(&url, &token, last_seq, deadline).await;
            ws = fresh;
            seen.resumes += 1;
            seen.resumed_flags.push(resumed);
        }
        let sending = i < MESSAGES;
        if sending {
            let frames = [candidate(i), ClientMessage::Ping { ts: Some(i as u64) }];
            for frame in frames {
                let _ = ws
                    .send(Message::text(serde_json::to_string(&frame).unwrap()))
                    .await;
            }
        }
        let mut failed = false;
        let mut closed = false;
        let wait = if sending {
            Duration::from_secs(10)
        } else {
            PACE
        };
        loop {
            match next_event(&mut ws, wait).await {
                Some(Event::Message(m)) => match m {
                    ServerMessage::IceCandidate { seq, .. } => {
                        let idx = candidate_index(&m);
                        seen.received.push((seq, idx, Instant::now()));
                        got.insert(idx);
                        last_seq = Some(last_seq.map_or(seq, |l| l.max(seq)));
                    }
                    ServerMessage::Pong { ts: Some(t) } if sending && t == i as u64 => break,
                    ServerMessage::Error {
                        code: SignalErrorCode::Unavailable,
                        ..
                    } => failed = true,
                    ServerMessage::Error { code, message } => {
                        panic!("unexpected error {code:?}: {message}")
                    }
                    _ => {}
                },
                Some(Event::Closed) => {
                    closed = true;
                    break;
                }
                None => {
                    assert!(!sending, "no pong within 10 s for message {i}");
                    break;
                }
            }
        }
        if closed {
            let (fresh, resumed) = join_until_admitted(&url, &token, last_seq, deadline).await;
            ws = fresh;
            seen.resumes += 1;
            seen.resumed_flags.push(resumed);
            continue; // resend message i: its fate is unknown
        }
        if let Some(l) = last_seq.filter(|&l| l > acked) {
            acked = l;
            let ack = ClientMessage::Ack { seq: l };
            let _ = ws
                .send(Message::text(serde_json::to_string(&ack).unwrap()))
                .await;
        }
        if sending {
            if failed {
                seen.unavailable.insert(i);
            } else {
                seen.relayed_at.insert(i, Instant::now());
                i += 1;
                if let Some(c) = &sent_counter {
                    c.store(i, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(if failed {
                Duration::from_millis(50)
            } else {
                PACE
            })
            .await;
        }
    }
    // A late second copy would come within moments: keep reading a little to count it.
    while let Some(Event::Message(m)) = next_event(&mut ws, Duration::from_millis(500)).await {
        if let ServerMessage::IceCandidate { seq, .. } = m {
            seen.received
                .push((seq, candidate_index(&m), Instant::now()));
        }
    }
    seen
}

/// Lost, duplicated and reordered relayed messages as one receiver saw them.
#[derive(Debug, PartialEq, Eq)]
pub struct Tally {
    pub lost: Vec<usize>,
    /// Indices received more than once.
    pub duplicated: Vec<usize>,
    /// Messages received after one the peer sent later (by index), or with a `seq` not above
    /// the one before.
    pub out_of_order: usize,
}

pub fn tally(seen: &Seen) -> Tally {
    let mut count = BTreeMap::new();
    let mut out_of_order = 0;
    let mut prev: Option<(u64, usize)> = None;
    for &(seq, idx, _) in &seen.received {
        *count.entry(idx).or_insert(0) += 1;
        if let Some((pseq, pidx)) = prev
            && (seq <= pseq || idx < pidx)
        {
            out_of_order += 1;
        }
        prev = Some((seq, idx));
    }
    Tally {
        lost: (0..MESSAGES).filter(|i| !count.contains_key(i)).collect(),
        duplicated: count
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(i, _)| *i)
            .collect(),
        out_of_order,
    }
}

/// Print what each party received, then check the targets as the clients saw them: the
/// answerer resumed (its seat kept within grace), nothing lost, nothing out of order, and a
/// message delivered twice only when its sender was told `unavailable` for it and resent it
/// (at-least-once across `unavailable`).
pub fn report_and_check_parties(seen_a: &Seen, seen_b: &Seen) {
    let (ta, tb) = (tally(seen_a), tally(seen_b));
    for (name, seen, t) in [("offerer", seen_a, &ta), ("answerer", seen_b, &tb)] {
        eprintln!(
            "{name}: received {} ({} distinct), longest gap received {:?}, longest gap between own relayed messages {:?}, \
             unavailable (resent) {:?}, resumes {} {:?}, lost {:?}, duplicated {:?}, out of order {}",
            seen.received.len(),
            MESSAGES - t.lost.len(),
            longest_gap(seen),
            longest_send_gap(seen),
            seen.unavailable,
            seen.resumes,
            seen.resumed_flags,
            t.lost,
            t.duplicated,
            t.out_of_order,
        );
    }
    assert!(seen_b.resumes >= 1);
    assert!(seen_b.resumed_flags.iter().all(|r| *r), "{seen_b:?}");
    for (t, sender) in [(&ta, seen_b), (&tb, seen_a)] {
        assert!(t.lost.is_empty(), "lost {:?}", t.lost);
        assert_eq!(t.out_of_order, 0);
        for d in &t.duplicated {
            assert!(
                sender.unavailable.contains(d),
                "message {d} delivered twice although its sender was never told unavailable"
            );
        }
    }
}

/// Longest time between two consecutive messages received.
pub fn longest_gap(seen: &Seen) -> Duration {
    seen.received
        .windows(2)
        .map(|w| w[1].2.duration_since(w[0].2))
        .max()
        .unwrap_or_default()
}

/// Longest time between two consecutive messages known relayed by the sender.
pub fn longest_send_gap(seen: &Seen) -> Duration {
    let times: Vec<Instant> = seen.relayed_at.values().copied().collect();
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// Poll a replica's `/readyz` until told to stop: when it first answered 503 and when it
/// answered 200 again after that.
pub async fn watch_readiness(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (Option<Instant>, Option<Instant>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut down, mut up) = (None, None);
    while !stop.load(Ordering::SeqCst) {
        let ok = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let now = Instant::now();
        if !ok && down.is_none() {
            down = Some(now);
        }
        if ok && down.is_some() && up.is_none() {
            up = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (down, up)
}
