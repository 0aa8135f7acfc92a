//! The sans-IO core of one signaling connection and of a call's seats: pure decisions over
//! frames, roles, counters and `now` (unix milliseconds), with no sockets, no Redis, no tokio.
//!
//! [`Conn`] is the per-connection state machine: `on_frame(text, now)` classifies a client
//! frame into a [`Decision`] (join, relay, ack, pong, stats, an error reply that keeps the
//! connection, or a close), enforcing order (join first), roles (observers may not send SDP,
//! ICE or hangup), the message rate (token bucket) and the abuse budget (repeated bad frames
//! close with 1008). `on_tick(now)` decides join timeout, idle timeout and keep-alive pings.
//! `accept_delivery(seq)` drops relayed messages already delivered (resume overlap).
//!
//! [`admits`] decides whether a role may take a seat, given the other seats
//! ([`SeatEntry`], defined with its stored format and presence rule in hermes-proto); it is the
//! rule the Lua scripts in [`crate::hub`] apply atomically inside Redis, and the integration
//! tests check the scripts agree.

pub use hermes_proto::call_state::{Presence, SeatEntry};
use hermes_proto::signal::{
    CLOSE_POLICY_VIOLATION, CLOSE_UNAUTHORIZED, CallStats, ClientMessage, IceCandidate, MAX_SEQ,
    SignalErrorCode, decode_client,
};
use hermes_proto::{CallId, ParticipantId, Role};

/// Limits of one connection (see `config.rs` for the defaults and their trade-offs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sustained client messages per second.
    pub rate_per_sec: f64,
    /// Burst of client messages above the sustained rate (ICE trickle comes in bursts).
    pub burst: f64,
    /// Bad frames (malformed, forbidden, over rate) tolerated per minute before closing 1008.
    pub max_violations_per_min: u32,
    /// Time allowed between upgrade and a valid `join`.
    pub join_timeout_ms: u64,
    /// Silence (no frame of any kind, pongs included) after which the connection is closed.
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_sec: 50.0,
            burst: 200.0,
            max_violations_per_min: 20,
            join_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
        }
    }
}

/// A token bucket over unix milliseconds: `capacity` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(capacity: f64, per_sec: f64, now_ms: u64) -> Self {
        Self {
            capacity,
            per_sec,
            tokens: capacity,
            last_ms: now_ms,
        }
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The identity a verified token grants, fixed for the life of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub call: CallId,
    pub participant: ParticipantId,
    pub role: Role,
}

/// A message to relay to the other participants (it gets `from` and `seq` on the way).
#[derive(Debug, Clone, PartialEq)]
pub enum Relay {
    Offer(String),
    Answer(String),
    IceCandidate(IceCandidate),
    Hangup,
}

/// What the I/O layer must do with one client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Verify `token` and admit the connection (only before it has joined).
    Join {
        token: String,
        last_seq: Option<u64>,
        call_id: Option<CallId>,
    },
    Relay(Relay),
    /// The client processed every relayed message up to `seq`.
    Ack(u64),
    /// The client leaves without ending the call: free its seat, close normally.
    Leave,
    Pong(Option<u64>),
    Stats(CallStats),
    /// Answer with an error; the connection stays open.
    Reply(SignalErrorCode, String),
    /// Send the error, then close with `code`.
    Close {
        error: SignalErrorCode,
        message: String,
        code: u16,
    },
}

/// What a timer tick asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Nothing,
    /// Send a WebSocket ping (keep-alive; the pong counts as activity).
    Ping,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Close code for an idle connection (RFC 6455 1001, going away).
pub const CLOSE_IDLE: u16 = 1001;

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    AwaitingJoin {
        deadline_ms: u64,
    },
    /// `join` received, admission in progress (frames are refused until it settles).
    Joining,
    Joined(Seat),
}

/// Per-connection protocol state.
#[derive(Debug, Clone)]
pub struct Conn {
    limits: Limits,
    phase: Phase,
    rate: TokenBucket,
    abuse: TokenBucket,
    last_rx_ms: u64,
    last_delivered: u64,
    acked: u64,
    acked_flushed: u64,
}

impl Conn {
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        let v = f64::from(limits.max_violations_per_min.max(1));
        Self {
            limits,
            phase: Phase::AwaitingJoin {
                deadline_ms: now_ms.saturating_add(limits.join_timeout_ms),
            },
            rate: TokenBucket::new(limits.burst.max(1.0), limits.rate_per_sec, now_ms),
            abuse: TokenBucket::new(v, v / 60.0, now_ms),
            last_rx_ms: now_ms,
            last_delivered: 0,
            acked: 0,
            acked_flushed: 0,
        }
    }

    pub fn seat(&self) -> Option<&Seat> {
        match &self.phase {
            Phase::Joined(seat) => Some(seat),
            _ => None,
        }
    }

    /// Admission succeeded: from now on relayed messages with `seq <= base_seq` are not
    /// delivered live (they were before this connection, or come from the log replay).
    pub fn joined(&mut self, seat: Seat, base_seq: u64) {
        self.phase = Phase::Joined(seat);
        self.last_delivered = base_seq;
    }

    /// Any frame (data, ping, pong) arrived: the connection is alive.
    pub fn on_activity(&mut self, now_ms: u64) {
        self.last_rx_ms = self.last_rx_ms.max(now_ms);
    }

    /// Classify one text frame.
    pub fn on_frame(&mut self, text: &str, now_ms: u64) -> Decision {
        if let Some(refused) = self.over_rate(now_ms) {
            return refused;
        }
        let msg = match decode_client(text) {
            Ok(msg) => msg,
            Err((code, message)) => return self.violation(code, message, now_ms),
        };
        match (&self.phase, msg) {
            (
                Phase::AwaitingJoin { .. },
                ClientMessage::Join {
                    token,
                    last_seq,
                    call_id,
                },
            ) => {
                if last_seq.is_some_and(|n| n > MAX_SEQ) {
                    return self.violation(
                        SignalErrorCode::BadMessage,
                        format!("lastSeq must be an integer from 0 to {MAX_SEQ}"),
                        now_ms,
                    );
                }
                self.phase = Phase::Joining;
                Decision::Join {
                    token,
                    last_seq,
                    call_id,
                }
            }
            (Phase::AwaitingJoin { .. }, ClientMessage::Ping { ts }) => Decision::Pong(ts),
            (Phase::AwaitingJoin { .. }, _) => self.violation(
                SignalErrorCode::Unauthorized,
                "send join with your token first".into(),
                now_ms,
            ),
            (Phase::Joining, ClientMessage::Ping { ts }) => Decision::Pong(ts),
            (Phase::Joining, _) => self.violation(
                SignalErrorCode::BadMessage,
                "join in progress; wait for joined".into(),
                now_ms,
            ),
            (Phase::Joined(seat), msg) => {
                let observer = seat.role == Role::Observer;
                self.joined_message(observer, msg, now_ms)
            }
        }
    }

    fn joined_message(&mut self, observer: bool, msg: ClientMessage, now_ms: u64) -> Decision {
        let relay = match msg {
            ClientMessage::Offer { sdp } => Relay::Offer(sdp),
            ClientMessage::Answer { sdp } => Relay::Answer(sdp),
            ClientMessage::IceCandidate { candidate } => Relay::IceCandidate(candidate),
            ClientMessage::Hangup => Relay::Hangup,
            ClientMessage::Ack { seq } => {
                // Only what was delivered can be acknowledged (the call's log is trimmed up to the lowest ack).
                self.acked = self.acked.max(seq.min(self.last_delivered));
                return Decision::Ack(seq);
            }
            ClientMessage::Ping { ts } => return Decision::Pong(ts),
            ClientMessage::Stats(stats) => return Decision::Stats(stats),
            ClientMessage::Leave => return Decision::Leave,
            ClientMessage::Join { .. } => {
                return self.violation(
                    SignalErrorCode::BadMessage,
                    "already joined on this connection".into(),
                    now_ms,
                );
            }
        };
        if observer {
            return self.violation(
                SignalErrorCode::Forbidden,
                "observers receive events but may not send offer, answer, ice-candidate or hangup"
                    .into(),
                now_ms,
            );
        }
        Decision::Relay(relay)
    }

    /// A binary WebSocket frame: the protocol is JSON text only, so it is a bad message (it
    /// counts against the rate and the abuse budget like any other frame).
    pub fn on_binary_frame(&mut self, now_ms: u64) -> Decision {
        if let Some(refused) = self.over_rate(now_ms) {
            return refused;
        }
        self.violation(
            SignalErrorCode::BadMessage,
            "binary frames are not supported; send JSON text".into(),
            now_ms,
        )
    }

    /// Count a frame as activity and against the message rate; the refusal when over it.
    fn over_rate(&mut self, now_ms: u64) -> Option<Decision> {
        self.on_activity(now_ms);
        if self.rate.take(now_ms) {
            return None;
        }
        Some(self.violation(
            SignalErrorCode::RateLimited,
            format!(
                "more than {} messages per second; message dropped, slow down and resend",
                self.limits.rate_per_sec
            ),
            now_ms,
        ))
    }

    fn violation(&mut self, error: SignalErrorCode, message: String, now_ms: u64) -> Decision {
        if self.abuse.take(now_ms) {
            Decision::Reply(error, message)
        } else {
            Decision::Close {
                error,
                message: format!("{message} (too many bad messages, closing)"),
                code: CLOSE_POLICY_VIOLATION,
            }
        }
    }

    /// Timer: join deadline, idle timeout, keep-alive.
    pub fn on_tick(&self, now_ms: u64) -> Tick {
        if let Phase::AwaitingJoin { deadline_ms } = self.phase
            && now_ms >= deadline_ms
        {
            return Tick::Close(CLOSE_UNAUTHORIZED, "no join within the join timeout");
        }
        if now_ms.saturating_sub(self.last_rx_ms) >= self.limits.idle_timeout_ms {
            return Tick::Close(CLOSE_IDLE, "idle timeout");
        }
        if matches!(self.phase, Phase::Joined(_)) {
            Tick::Ping
        } else {
            Tick::Nothing
        }
    }

    /// Whether a relayed message with `seq` should go to this client (no duplicates).
    pub fn accept_delivery(&mut self, seq: u64) -> bool {
        if seq > self.last_delivered {
            self.last_delivered = seq;
            true
        } else {
            false
        }
    }

    /// Highest relayed `seq` sent to this client.
    pub fn last_delivered(&self) -> u64 {
        self.last_delivered
    }

    /// An acknowledged `seq` not yet recorded in Redis, if any; marks it used.
    pub fn take_ack_to_flush(&mut self) -> Option<u64> {
        (self.acked > self.acked_flushed).then(|| {
            self.acked_flushed = self.acked;
            self.acked
        })
    }
}

/// Whether a participant with `role` may take a seat, given the other participants' entries:
/// at most `max_media` media participants (live or away) besides observers.
pub fn admits<'a>(
    role: Role,
    others: impl IntoIterator<Item = &'a SeatEntry>,
    now_ms: u64,
    grace_ms: u64,
    max_media: usize,
) -> bool {
    if !role.is_media() {
        return true;
    }
    others
        .into_iter()
        .filter(|e| e.role.is_media() && e.presence(now_ms, grace_ms) != Presence::Gone)
        .count()
        < max_media
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;

    const T0: u64 = 1_800_000_000_000;

    fn seat(role: Role) -> Seat {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        Seat {
            call: CallId::random(&mut rng),
            participant: ParticipantId::random(&mut rng),
            role,
        }
    }

    fn joined(role: Role) -> Conn {
        let mut c = Conn::new(Limits::default(), T0);
        c.joined(seat(role), 0);
        c
    }

    #[test]
    fn join_must_come_first() {
        let mut c = Conn::new(Limits::default(), T0);
        assert!(matches!(
            c.on_frame(r#"{"type":"offer","sdp":"v=0"}"#, T0),
            Decision::Reply(SignalErrorCode::Unauthorized, _)
        ));
        assert_eq!(
            c.on_frame(r#"{"type":"ping","ts":5}"#, T0),
            Decision::Pong(Some(5))
        );
        assert_eq!(
            c.on_frame(r#"{"type":"join","token":"t","lastSeq":4}"#, T0),
            Decision::Join {
                token: "t".into(),
                last_seq: Some(4),
                call_id: None
            }
        );
        // While admission runs, a second join is refused, not re-run.
        assert!(matches!(
            c.on_frame(r#"{"type":"join","token":"t"}"#, T0),
            Decision::Reply(SignalErrorCode::BadMessage, _)
        ));
        c.joined(seat(Role::Offerer), 0);
        assert!(matches!(
            c.on_frame(r#"{"type":"join","token":"t"}"#, T0),
            Decision::Reply(SignalErrorCode::BadMessage, _)
        ));
        assert_eq!(
            c.on_frame(r#"{"type":"offer","sdp":"v=0"}"#, T0),
            Decision::Relay(Relay::Offer("v=0".into()))
        );
    }

    #[test]
    fn media_roles_relay_everything_observers_nothing() {
        let frames = [
            (r#"{"type":"offer","sdp":"o"}"#, Relay::Offer("o".into())),
            (r#"{"type":"answer","sdp":"a"}"#, Relay::Answer("a".into())),
            (
                r#"{"type":"ice-candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}}"#,
                Relay::IceCandidate(IceCandidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                    sdp_mid: None,
                    sdp_m_line_index: None,
                    username_fragment: None,
                }),
            ),
            (r#"{"type":"hangup"}"#, Relay::Hangup),
        ];
        for role in [Role::Offerer, Role::Answerer] {
            let mut c = joined(role);
            for (frame, relay) in &frames {
                assert_eq!(c.on_frame(frame, T0), Decision::Relay(relay.clone()));
            }
        }
        let mut c = joined(Role::Observer);
        for (frame, _) in &frames {
            assert!(matches!(
                c.on_frame(frame, T0),
                Decision::Reply(SignalErrorCode::Forbidden, _)
            ));
        }
        // Observers may still ack, ping and report stats.
        assert_eq!(
            c.on_frame(r#"{"type":"ack","seq":3}"#, T0),
            Decision::Ack(3)
        );
        assert_eq!(c.on_frame(r#"{"type":"ping"}"#, T0), Decision::Pong(None));
        assert!(matches!(
            c.on_frame(r#"{"type":"stats","rttMs":12.5}"#, T0),
            Decision::Stats(_)
        ));
    }

    #[test]
    fn bad_frames_keep_the_connection_until_abuse_budget_is_spent() {
        let mut c = joined(Role::Offerer);
        let budget = Limits::default().max_violations_per_min;
        for i in 0..budget {
            assert!(
                matches!(
                    c.on_frame("{not json", T0),
                    Decision::Reply(SignalErrorCode::BadMessage, _)
                ),
                "violation {i} still answered"
            );
        }
        assert!(matches!(
            c.on_frame(r#"{"type":"teleport"}"#, T0),
            Decision::Close {
                code: CLOSE_POLICY_VIOLATION,
                error: SignalErrorCode::BadMessage,
                ..
            }
        ));
        // The budget refills with time: a well-behaved minute later, errors are answered again.
        assert!(matches!(
            c.on_frame("{", T0 + 60_000),
            Decision::Reply(SignalErrorCode::BadMessage, _)
        ));
    }

    #[test]
    fn oversized_frames_are_refused_with_too_large() {
        let mut c = joined(Role::Offerer);
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(hermes_proto::signal::MAX_FRAME_BYTES)
        );
        assert!(matches!(
            c.on_frame(&big, T0),
            Decision::Reply(SignalErrorCode::TooLarge, _)
        ));
    }

    #[test]
    fn rate_limit_is_a_token_bucket() {
        let limits = Limits {
            rate_per_sec: 10.0,
            burst: 5.0,
            max_violations_per_min: 100,
            ..Limits::default()
        };
        let mut c = Conn::new(limits, T0);
        c.joined(seat(Role::Offerer), 0);
        let ping = r#"{"type":"ping"}"#;
        for _ in 0..5 {
            assert_eq!(c.on_frame(ping, T0), Decision::Pong(None));
        }
        assert!(matches!(
            c.on_frame(ping, T0),
            Decision::Reply(SignalErrorCode::RateLimited, _)
        ));
        // 100 ms later one token (10/s) is back.
        assert_eq!(c.on_frame(ping, T0 + 100), Decision::Pong(None));
        assert!(matches!(
            c.on_frame(ping, T0 + 100),
            Decision::Reply(SignalErrorCode::RateLimited, _)
        ));
    }

    #[test]
    fn token_bucket_never_exceeds_capacity_and_ignores_clock_going_back() {
        let mut b = TokenBucket::new(2.0, 1.0, T0);
        assert!(b.take(T0 + 1_000_000));
        assert!(b.take(T0 + 1_000_000));
        assert!(!b.take(T0 + 1_000_000));
        assert!(!b.take(T0), "time going backwards adds nothing");
        assert!(b.take(T0 + 1_001_000));
    }

    #[test]
    fn ticks_enforce_join_and_idle_timeouts() {
        let l = Limits::default();
        let c = Conn::new(l, T0);
        assert_eq!(c.on_tick(T0 + 10), Tick::Nothing);
        assert_eq!(
            c.on_tick(T0 + l.join_timeout_ms),
            Tick::Close(CLOSE_UNAUTHORIZED, "no join within the join timeout")
        );
        let mut c = joined(Role::Answerer);
        assert_eq!(c.on_tick(T0 + 1), Tick::Ping);
        c.on_activity(T0 + 20_000);
        assert_eq!(c.on_tick(T0 + 20_000 + l.idle_timeout_ms - 1), Tick::Ping);
        assert_eq!(
            c.on_tick(T0 + 20_000 + l.idle_timeout_ms),
            Tick::Close(CLOSE_IDLE, "idle timeout")
        );
    }

    #[test]
    fn deliveries_are_deduplicated_by_seq() {
        let mut c = Conn::new(Limits::default(), T0);
        c.joined(seat(Role::Answerer), 7);
        assert!(!c.accept_delivery(7), "at or below base_seq: already seen");
        assert!(c.accept_delivery(9));
        assert!(!c.accept_delivery(8), "older than the last delivered");
        assert!(!c.accept_delivery(9), "duplicate");
        assert!(c.accept_delivery(10));
        assert_eq!(c.last_delivered(), 10);
    }

    #[test]
    fn acks_are_flushed_once() {
        let mut c = joined(Role::Answerer);
        assert_eq!(c.take_ack_to_flush(), None);
        assert!(c.accept_delivery(5));
        c.on_frame(r#"{"type":"ack","seq":4}"#, T0);
        c.on_frame(r#"{"type":"ack","seq":2}"#, T0);
        assert_eq!(c.take_ack_to_flush(), Some(4));
        assert_eq!(c.take_ack_to_flush(), None);
        // Beyond what was delivered: only up to the last delivered message.
        c.on_frame(r#"{"type":"ack","seq":1000000000000000}"#, T0);
        assert_eq!(c.take_ack_to_flush(), Some(5));
    }

    #[test]
    fn last_seq_beyond_2_pow_53_is_refused_before_admission() {
        let mut c = Conn::new(Limits::default(), T0);
        let d = c.on_frame(
            r#"{"type":"join","token":"t","lastSeq":9007199254740992}"#,
            T0,
        );
        assert!(
            matches!(d, Decision::Reply(SignalErrorCode::BadMessage, _)),
            "{d:?}"
        );
        let d = c.on_frame(
            r#"{"type":"join","token":"t","lastSeq":9007199254740991}"#,
            T0,
        );
        assert!(
            matches!(
                d,
                Decision::Join {
                    last_seq: Some(MAX_SEQ),
                    ..
                }
            ),
            "{d:?}"
        );
    }

    proptest::proptest! {
        /// No frame, however malformed, panics the connection core; every frame gets a
        /// decision, and a joined media participant's decisions never include `Join`.
        #[test]
        fn any_frame_gets_a_decision(frames in proptest::collection::vec(".{0,200}", 1..20)) {
            let mut c = joined(Role::Offerer);
            for (i, f) in frames.iter().enumerate() {
                let d = c.on_frame(f, T0 + i as u64);
                let is_join = matches!(d, Decision::Join { .. });
                proptest::prop_assert!(!is_join, "a joined connection never re-joins");
            }
        }

        #[test]
        fn json_like_frames_never_panic(
            t in proptest::sample::select(vec!["join","offer","answer","ice-candidate","hangup","leave","ack","ping","stats","x"]),
            body in "[a-zA-Z0-9\":,{}\\[\\] ]{0,80}")
        {
            let mut fresh = Conn::new(Limits::default(), T0);
            let mut obs = joined(Role::Observer);
            let frame = format!(r#"{{"type":"{t}",{body}}}"#);
            let _ = fresh.on_frame(&frame, T0);
            let d = obs.on_frame(&frame, T0);
            let relays = matches!(d, Decision::Relay(_));
            proptest::prop_assert!(!relays, "observers never relay");
        }
    }

    #[test]
    fn binary_frames_are_bad_messages_within_the_abuse_budget() {
        let limits = Limits::default();
        let mut c = Conn::new(limits, T0);
        let first = c.on_binary_frame(T0);
        assert!(
            matches!(first, Decision::Reply(SignalErrorCode::BadMessage, ref m) if m.contains("binary frames")),
            "{first:?}"
        );
        let mut closed = None;
        // Well under the message rate: only the abuse budget can close.
        for i in 1..=3 * limits.max_violations_per_min {
            if let d @ Decision::Close { .. } = c.on_binary_frame(T0 + 100 * u64::from(i)) {
                closed = Some(d);
                break;
            }
        }
        assert!(
            matches!(closed, Some(Decision::Close { code: CLOSE_POLICY_VIOLATION, ref message, .. }) if message.contains("binary frames")),
            "{closed:?}"
        );
    }

    #[test]
    fn at_most_two_media_seats() {
        let grace = 1_000;
        let e = |role, live, expiry_ms| SeatEntry {
            role,
            live,
            expiry_ms,
            conn: "c".into(),
        };
        let two = [e(Role::Offerer, true, T0), e(Role::Answerer, false, T0)];
        assert!(!admits(Role::Answerer, &two, T0, grace, 2));
        assert!(admits(Role::Observer, &two, T0, grace, 2));
        // Once the away one is gone its seat is free.
        assert!(admits(Role::Answerer, &two, T0 + 1, grace, 2));
        let with_observers = [
            e(Role::Offerer, true, T0),
            e(Role::Observer, true, T0),
            e(Role::Observer, true, T0),
        ];
        assert!(admits(Role::Answerer, &with_observers, T0, grace, 2));
    }
}
