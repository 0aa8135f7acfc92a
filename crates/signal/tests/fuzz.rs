//! Protocol fuzz of the signaling session: random sequences of valid and invalid client
//! messages from the two participants of a call, with reconnects (dropped socket, clean close,
//! replacement by a second connection, each resumed with `lastSeq`), against real Redis and two
//! real hermes-signal replicas. Invariants checked:
//!
//! - every relayed message a seated participant sent reaches the other participant exactly
//!   once (none lost, none duplicated), across all its reconnects;
//! - `seq` strictly increases for each receiver, across its connections;
//! - the server never answers `unavailable` while Redis is up (and never anything but
//!   `bad-message` / `too-large` to the invalid frames); every resume within grace resumes.
//!
//! Seeded and bounded: `HERMES_SIGNAL_FUZZ_SECS` (default 20) and `HERMES_SIGNAL_FUZZ_SEED`
//! (default 16). A long run (beyond nextest's slow-test limit, so through `cargo test`):
//! `HERMES_SIGNAL_FUZZ_SECS=600 cargo test -p hermes-signal --test fuzz -- --nocapture`; the
//! numbers are printed at the end.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hermes_proto::Role;
use hermes_proto::signal::{ClientMessage, ServerMessage, SignalErrorCode};
use hermes_testkit::RedisServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Everything the reader task of one connection saw, tagged with the connection's generation.
enum Event {
    Msg(ServerMessage),
    Closed(Option<u16>),
}

struct Connection {
    sink: SplitSink<Ws, Message>,
    reader: tokio::task::JoinHandle<()>,
}

struct Participant {
    name: &'static str,
    token: String,
    /// Current connection generation; events of older ones are what a client no longer reads.
    generation: u64,
    conn: Option<Connection>,
    events_tx: mpsc::UnboundedSender<(u64, Event)>,
    events: mpsc::UnboundedReceiver<(u64, Event)>,
    /// Highest relayed `seq` processed (sent as `lastSeq` on resume).
    last_seq: u64,
    /// Payload ids of relayed messages received, in processing order.
    received: Vec<u64>,
    /// Payload ids of relayed messages sent and settled (a pong came after them).
    sent: Vec<u64>,
    /// Sent but not yet settled by a barrier.
    pending: Vec<u64>,
    pong: Option<u64>,
    joined: Option<bool>,
}

#[derive(Default, Debug)]
struct Totals {
    cases: u64,
    steps: u64,
    relayed: u64,
    invalid: u64,
    reconnects: u64,
    delivered: u64,
    violations: Vec<String>,
}

fn payload(id: u64, kind: u8) -> ClientMessage {
    match kind {
        0 => ClientMessage::Offer {
            sdp: format!("o{id}"),
        },
        1 => ClientMessage::Answer {
            sdp: format!("a{id}"),
        },
        _ => candidate(id as usize),
    }
}

fn payload_id(m: &ServerMessage) -> Option<u64> {
    match m {
        ServerMessage::Offer { sdp, .. } | ServerMessage::Answer { sdp, .. } => {
            sdp.get(1..).and_then(|s| s.parse().ok())
        }
        ServerMessage::IceCandidate { .. } => Some(candidate_index(m) as u64),
        _ => None,
    }
}

const INVALID: &[&str] = &[
    "garbage",
    "{",
    r#"["offer","x"]"#,
    r#"{"type":"teleport"}"#,
    r#"{"type":"offer"}"#,
    r#"{"type":"offer","sdp":"x","extra":1}"#,
    r#"{"type":"ice-candidate","candidate":["c"]}"#,
    r#"{"type":"ack","seq":-1}"#,
    r#"{"type":"ack","seq":1.5}"#,
    r#"{"type":"join","token":"x"}"#,
    r#"{"type":"join","token":"x","lastSeq":1000000000000000}"#,
    "null",
];

impl Participant {
    fn new(name: &'static str, token: String) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            name,
            token,
            generation: 0,
            conn: None,
            events_tx,
            events,
            last_seq: 0,
            received: Vec::new(),
            sent: Vec::new(),
            pending: Vec::new(),
            pong: None,
            joined: None,
        }
    }

    /// Open a new connection (the old one, if any, is left as it is) and join.
    async fn connect(&mut self, url: &str, resume: bool, t: &mut Totals) {
        self.generation += 1;
        let generation = self.generation;
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let tx = self.events_tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Message::Text(text)) => {
                        let m = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("bad server frame {text}: {e}"));
                        let _ = tx.send((generation, Event::Msg(m)));
                    }
                    Ok(Message::Close(f)) => {
                        let _ = tx.send((generation, Event::Closed(f.map(|f| u16::from(f.code)))));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send((generation, Event::Closed(None)));
        });
        let join = ClientMessage::Join {
            token: self.token.clone(),
            last_seq: resume.then_some(self.last_seq),
            call_id: None,
            last_seqs: None,
        };
        sink.send(Message::text(serde_json::to_string(&join).unwrap()))
            .await
            .unwrap();
        self.conn = Some(Connection { sink, reader });
        self.joined = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.joined.is_none() {
            if !self.next_event(deadline, t).await {
                t.violations
                    .push(format!("{}: no joined within 10 s", self.name));
                return;
            }
        }
        if resume && self.joined != Some(true) {
            t.violations.push(format!(
                "{}: resume within grace was not resumed",
                self.name
            ));
        }
    }

    async fn send(&mut self, m: &ClientMessage) -> bool {
        self.send_text(serde_json::to_string(m).unwrap()).await
    }

    /// False when the connection is gone (the server closed it: the reason is in its events).
    async fn send_text(&mut self, text: String) -> bool {
        match &mut self.conn {
            Some(c) => c.sink.send(Message::text(text)).await.is_ok(),
            None => false,
        }
    }

    /// Handle one event, waiting until `deadline`; false on timeout.
    async fn next_event(&mut self, deadline: Instant, t: &mut Totals) -> bool {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((generation, event))) = tokio::time::timeout(wait, self.events.recv()).await
        else {
            return false;
        };
        self.handle(generation, event, t);
        true
    }

    /// Handle what already arrived, without waiting.
    fn poll(&mut self, t: &mut Totals) {
        while let Ok((generation, event)) = self.events.try_recv() {
            self.handle(generation, event, t);
        }
    }

    fn handle(&mut self, generation: u64, event: Event, t: &mut Totals) {
        if generation != self.generation {
            return; // a connection this client no longer reads
        }
        let name = self.name;
        match event {
            Event::Closed(code) => t
                .violations
                .push(format!("{name}: connection closed unexpectedly ({code:?})")),
            Event::Msg(m) => match &m {
                ServerMessage::Joined { resumed, .. } => self.joined = Some(*resumed),
                ServerMessage::Pong { ts } => self.pong = *ts,
                ServerMessage::Error { code, message } => match code {
                    SignalErrorCode::BadMessage | SignalErrorCode::TooLarge => {}
                    other => t
                        .violations
                        .push(format!("{name}: error {other:?}: {message}")),
                },
                _ if m.seq().is_some() => {
                    let seq = m.seq().unwrap_or(0);
                    if seq <= self.last_seq {
                        t.violations.push(format!(
                            "{name}: seq {seq} after {} (not strictly increasing)",
                            self.last_seq
                        ));
                    }
                    self.last_seq = self.last_seq.max(seq);
                    match payload_id(&m) {
                        Some(id) => self.received.push(id),
                        None => t.violations.push(format!("{name}: foreign payload {m:?}")),
                    }
                    t.delivered += 1;
                }
                _ => {} // presence
            },
        }
    }

    /// Ping and wait for its pong: everything sent before is processed by the server.
    async fn barrier(&mut self, token: u64, t: &mut Totals) {
        if !self.send(&ClientMessage::Ping { ts: Some(token) }).await {
            self.poll(t);
            t.violations
                .push(format!("{}: connection gone at a barrier", self.name));
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pong != Some(token) {
            if !self.next_event(deadline, t).await {
                t.violations
                    .push(format!("{}: no pong within 10 s", self.name));
                return;
            }
        }
        self.sent.append(&mut self.pending);
    }

    fn drop_connection(&mut self, clean: bool) {
        if let Some(c) = self.conn.take() {
            c.reader.abort();
            if clean {
                // Best effort: the close frame goes out as the sink is dropped after it.
                tokio::spawn(async move {
                    let mut sink = c.sink;
                    let _ = sink.send(Message::Close(None)).await;
                });
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_fuzz_two_participants_with_reconnects() {
    let secs: u64 = std::env::var("HERMES_SIGNAL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("HERMES_SIGNAL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let redis = RedisServer::start();
    let limits = [
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
        "--max-violations-per-min",
        "1000000",
        "--idle-timeout-ms",
        "60000",
        "--grace-ms",
        "20000",
    ];
    let replicas = [
        Replica::start(&redis.url(), &limits).await,
        Replica::start(&redis.url(), &limits).await,
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Totals::default();
    let started = Instant::now();
    let mut next_id: u64 = 0;
    let mut ping: u64 = 1 << 40;
    while started.elapsed() < Duration::from_secs(secs) {
        t.cases += 1;
        let call = Call::create(&redis);
        let mut ps = [
            Participant::new("offerer", call.token(Role::Offerer).1),
            Participant::new("answerer", call.token(Role::Answerer).1),
        ];
        for p in &mut ps {
            let url = replicas[rng.random_range(0..2)].url();
            p.connect(&url, false, &mut t).await;
        }
        let steps = rng.random_range(20..120);
        for _ in 0..steps {
            t.steps += 1;
            let i = rng.random_range(0..2);
            let p = &mut ps[i];
            match rng.random_range(0..100) {
                0..55 => {
                    next_id += 1;
                    if p.send(&payload(next_id, rng.random_range(0..4))).await {
                        p.pending.push(next_id);
                        t.relayed += 1;
                    } else {
                        t.violations.push(format!("{}: connection gone", p.name));
                    }
                }
                55..72 => {
                    let text = INVALID[rng.random_range(0..INVALID.len())];
                    let _ = p.send_text(text.to_owned()).await;
                    t.invalid += 1;
                }
                72..78 => {
                    let seq = if rng.random_bool(0.5) {
                        p.last_seq
                    } else {
                        rng.random::<u64>() >> rng.random_range(0..64u32)
                    };
                    let _ = p.send(&ClientMessage::Ack { seq }).await;
                }
                78..84 => {
                    ping += 1;
                    p.barrier(ping, &mut t).await;
                }
                _ => {
                    // Reconnect: settle what was sent, then drop / close / replace and resume.
                    ping += 1;
                    p.barrier(ping, &mut t).await;
                    p.poll(&mut t);
                    match rng.random_range(0..3) {
                        0 => p.drop_connection(false),
                        1 => p.drop_connection(true),
                        _ => {
                            // Replacement: the old connection stays open until the server
                            // closes it with 4002; this client stops reading it.
                            if let Some(c) = p.conn.take() {
                                tokio::spawn(async move {
                                    let _ = tokio::time::timeout(Duration::from_secs(10), c.reader)
                                        .await;
                                    drop(c.sink);
                                });
                            }
                        }
                    }
                    let url = replicas[rng.random_range(0..2)].url();
                    p.connect(&url, true, &mut t).await;
                    t.reconnects += 1;
                }
            }
            p.poll(&mut t);
        }
        // Settle both sides, then every sent message must arrive exactly once.
        for p in &mut ps {
            ping += 1;
            p.barrier(ping, &mut t).await;
        }
        for r in 0..2 {
            let expected = ps[1 - r].sent.len();
            let deadline = Instant::now() + Duration::from_secs(10);
            while ps[r].received.len() < expected {
                if !ps[r].next_event(deadline, &mut t).await {
                    break;
                }
            }
            let mut got = ps[r].received.clone();
            let mut want = ps[1 - r].sent.clone();
            got.sort_unstable();
            want.sort_unstable();
            if got != want {
                let lost: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
                let extra = got.len() as i64 - want.len() as i64 + lost.len() as i64;
                t.violations.push(format!(
                    "case {}: {} got {} of {} messages; lost {lost:?}, {extra} duplicated or foreign",
                    t.cases,
                    ps[r].name,
                    got.len(),
                    want.len()
                ));
            }
        }
        for p in &mut ps {
            p.drop_connection(true);
        }
        if t.violations.len() > 20 {
            break;
        }
    }
    eprintln!(
        "signal fuzz: seed {seed}, {:.0} s: {} cases, {} steps, {} relayed, {} delivered, {} invalid frames, {} reconnects, {} violations",
        started.elapsed().as_secs_f64(),
        t.cases,
        t.steps,
        t.relayed,
        t.delivered,
        t.invalid,
        t.reconnects,
        t.violations.len()
    );
    assert!(t.violations.is_empty(), "{:#?}", t.violations);
    assert!(t.relayed > 0 && t.reconnects > 0 && t.invalid > 0);
}
