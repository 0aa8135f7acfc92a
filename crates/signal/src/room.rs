//! The sans-IO core of one signaling connection and of a call's seats: pure decisions over
//! frames, roles, counters and `now` (unix milliseconds), with no sockets, no Redis, no tokio.
//!
//! [`Conn`] is the per-connection state machine: `on_frame(text, now)` classifies a client
//! frame into a [`Decision`] (join, relay, ack, pong, stats, an error reply that keeps the
//! connection, or a close), enforcing order (join first), roles (observers may not send SDP,
//! ICE or hangup), the message rate (token bucket) and the abuse budget (repeated bad frames
//! close with 1008). `on_tick(now)` decides join timeout, idle timeout and keep-alive pings.
//! `accept_delivery(from, seq)` drops relayed messages already delivered (resume overlap),
//! per sender: numbers increase per sender ([`Positions`]). [`Fences`] are the numbers of a
//! replaced connection's refused writes, dropped by routers and by connections alike.
//!
//! The join flow is decided here too, in two steps around the hub's I/O: [`Conn::on_token`]
//! checks the verified token against the `join` frame (a seat, or a [`Refusal`]), and
//! [`Conn::on_admission`] turns the join script's answer ([`Admission`]) into a [`JoinStep`]
//! (seated, or refused with error code, close code and message). Once seated,
//! [`Conn::accept_frame`] owns the presence rule: presence frames published before this
//! connection's own join is seen on the channel are dropped (the `joined` snapshot already
//! holds them) until a relayed message, a resync or the seam opens presence. [`join_event`]
//! names the log event of an admission.
//!
//! Replica acknowledgement of relays: a connection also follows its peers' presence (the
//! `joined` snapshot, then `peer-*` events: [`Conn::note_peers`], [`Conn::on_presence`]). A
//! message relayed while a peer is away reaches that peer only through the call's log, so
//! [`Conn::relay_waits_for_replica`] asks for a Redis replica's acknowledgement (`WAIT 1`)
//! under a waiting `REDIS_REPLICA_ACK`, and [`unreplicated_relay`] says what the sender hears
//! when none came. Relays to live peers never wait.
//!
//! [`admits`] decides whether a role may take a seat, given the other seats
//! ([`SeatEntry`], defined with its stored format and presence rule in hermes-proto); it is the
//! rule the Lua scripts in [`crate::hub`] apply atomically inside Redis, and the integration
//! tests check the scripts agree.

pub use hermes_proto::call_state::{Presence, SeatEntry};
use hermes_proto::ids::ID_LEN;
use hermes_proto::signal::{
    CLOSE_CALL_ENDED, CLOSE_CALL_FULL, CLOSE_POLICY_VIOLATION, CLOSE_UNAUTHORIZED, CallStats,
    ClientMessage, IceCandidate, MAX_SEQ, PeerInfo, ServerMessage, SignalErrorCode, decode_client,
};
use hermes_proto::{CallEvent, CallId, JoinClaims, ParticipantId, ProtoError, Role};
use hermes_service::redis::AckPolicy;

/// Most senders a `join`'s `lastSeqs` may list: a call has two media senders, and each one
/// that left and came back under another id adds one; more is not a real client.
pub const MAX_LAST_SEQS: usize = 8;

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
        /// Per sender, for clients that receive from several (at most [`MAX_LAST_SEQS`]).
        last_seqs: Option<Vec<(ParticipantId, u64)>>,
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
/// Close code when Redis is unavailable at join (RFC 6455 1013, try again later).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// A `join` that is refused: answer with `error` and `message`, close with `close`, and log
/// the refusal under `call` (when the token named one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: SignalErrorCode,
    pub message: String,
    pub close: u16,
    pub call: Option<CallId>,
}

impl Refusal {
    /// Redis could not be reached while joining `call`: the client retries later.
    pub fn unavailable(call: CallId) -> Self {
        Self {
            error: SignalErrorCode::Unavailable,
            message: "signaling storage unavailable; retry shortly".into(),
            close: CLOSE_TRY_AGAIN,
            call: Some(call),
        }
    }
}

/// A sender's participant id as a fixed-size copy (no allocation per relayed frame): the key of
/// per-sender delivery positions. Every relayed message is numbered by its sender
/// (`seq` increases per sender), so "already delivered" is a question per sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sender([u8; ID_LEN]);

impl Sender {
    /// The key of a participant id as it appears in a frame's `from`; None for text that is
    /// not an id (an id is [`ID_LEN`] ASCII characters).
    pub fn parse(from: &str) -> Option<Self> {
        Some(Self(from.as_bytes().try_into().ok()?))
    }

    pub fn of(participant: &ParticipantId) -> Self {
        // A ParticipantId is validated to ID_LEN ASCII characters.
        Self::parse(participant.as_str()).unwrap_or(Self([b'0'; ID_LEN]))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where delivery from each sender stands: the highest `seq` delivered (or, at admission, the
/// point live delivery starts after). A sender not listed starts at 0 (its log began after
/// this connection's admission, so all of it is new). A handful of senders per call: a plain
/// vector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(Vec<(Sender, u64)>);

impl Positions {
    pub fn new(list: Vec<(Sender, u64)>) -> Self {
        Self(list)
    }

    /// The highest `seq` delivered from `sender` (0 when none).
    pub fn of(&self, sender: Sender) -> u64 {
        self.0
            .iter()
            .find(|(s, _)| *s == sender)
            .map_or(0, |(_, n)| *n)
    }

    /// Record `seq` from `sender` if newer than its position: whether it was.
    pub fn advance(&mut self, sender: Sender, seq: u64) -> bool {
        match self.0.iter_mut().find(|(s, _)| *s == sender) {
            Some((_, n)) if seq > *n => {
                *n = seq;
                true
            }
            Some(_) => false,
            None => {
                self.0.push((sender, seq));
                seq > 0
            }
        }
    }

    /// The highest position of any sender.
    pub fn max(&self) -> u64 {
        self.0.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Sender, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// Fences kept per sender, in Redis (`call:{id}:fences`) and in each router and connection:
/// the newest ones. A fence matters only while the replaced connection's last relay, already
/// in its replica's pipeline when the join ran, may still reach Redis: at most one write per
/// replaced connection (a session has one relay in flight), late by a network delay. Only a
/// delay longer than this many later takeovers of the same seat (each a new WebSocket
/// connection and a join round trip) could outlive its fence, and the newest fence covers
/// every older one when the connections between stored nothing.
pub const FENCES_PER_SENDER: usize = 4;

/// The fences of a call's senders (docs/signal.md, "The receivers' side of the fence"): from
/// `sender`, a number strictly between `stored` (the last one its log held when a join
/// replaced its connection) and `first` (the new connection's first number) can only be a
/// replaced connection's write its log refused, which its relay pipeline published all the
/// same; it is never delivered. Kept per sender, the newest [`FENCES_PER_SENDER`]; empty but
/// for calls with a takeover, so checking it costs a relayed message next to nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fences(Vec<Fence>);

/// One fence: sender, last number stored before the takeover, first number of the new
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub sender: Sender,
    pub stored: u64,
    pub first: u64,
}

impl Fence {
    /// A `seat` marker's fence, `<last stored>:<first new number>`.
    pub fn parse(sender: Sender, text: &str) -> Option<Self> {
        let (stored, first) = text.split_once(':')?;
        Some(Self {
            sender,
            stored: stored.parse().ok()?,
            first: first.parse().ok()?,
        })
    }
}

impl Fences {
    /// The fences the join script returns, `<pid>:<stored>:<first>,…` ('' when none):
    /// None if any part is malformed.
    pub fn parse_list(text: &str) -> Option<Self> {
        let mut fences = Self::default();
        for item in text.split(',').filter(|i| !i.is_empty()) {
            let (pid, fence) = item.split_once(':')?;
            fences.insert(Fence::parse(Sender::parse(pid)?, fence)?);
        }
        Some(fences)
    }

    /// The fences kept in Redis (`call:{id}:fences`, `HGETALL`: participant id →
    /// `<stored>:<first>,…`): None if any part is malformed.
    pub fn parse_kept(fields: &[(String, String)]) -> Option<Self> {
        let mut fences = Self::default();
        for (pid, list) in fields {
            let sender = Sender::parse(pid)?;
            for item in list.split(',').filter(|i| !i.is_empty()) {
                fences.insert(Fence::parse(sender, item)?);
            }
        }
        Some(fences)
    }

    /// Keep `fence` (once), dropping its sender's oldest (lowest `first`) beyond
    /// [`FENCES_PER_SENDER`].
    pub fn insert(&mut self, fence: Fence) {
        if self.0.contains(&fence) {
            return;
        }
        self.0.push(fence);
        if self.of(fence.sender).count() > FENCES_PER_SENDER
            && let Some(oldest) = self.of(fence.sender).map(|f| f.first).min()
        {
            self.0
                .retain(|f| !(f.sender == fence.sender && f.first == oldest));
        }
    }

    /// Every fence of `other` too.
    pub fn extend(&mut self, other: &Fences) {
        for &fence in &other.0 {
            self.insert(fence);
        }
    }

    /// Whether number `seq` from `sender` is a refused write (never delivered).
    pub fn blocks(&self, sender: Sender, seq: u64) -> bool {
        self.0
            .iter()
            .any(|f| f.sender == sender && seq > f.stored && seq < f.first)
    }

    /// The fences of one sender.
    pub fn of(&self, sender: Sender) -> impl Iterator<Item = Fence> + '_ {
        self.0.iter().copied().filter(move |f| f.sender == sender)
    }
}

/// The hub's answer to a seat claim (its join script), without the data it carries along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Seated; `after` is where live delivery starts from each sender (the logs before it are
    /// replayed on resume); `fences` are the call's fences kept in Redis, which this
    /// connection applies to what its router delivers (the router may have started following
    /// the call after the `seat` markers that carried them).
    Admitted {
        resumed: bool,
        after: Positions,
        fences: Fences,
    },
    /// Two media participants already hold the seats.
    Full,
    /// The call has ended (or never existed).
    Ended,
    /// Redis failed during the claim (subscribing or running the script).
    Unavailable,
}

/// What the I/O layer does after the seat claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinStep {
    /// Seated: send `joined`, then replay the senders' logs when `resumed`.
    Seated { resumed: bool },
    /// Leave the call's channel again and refuse.
    Refuse(Refusal),
}

/// The log event of an admission: `peer.resumed` for a resume, `peer.joined` otherwise.
pub fn join_event(seat: &Seat, resumed: bool, replayed: u64) -> CallEvent {
    let (participant_id, role) = (seat.participant.clone(), seat.role);
    if resumed {
        CallEvent::PeerResumed {
            participant_id,
            role,
            resumed,
            replayed,
        }
    } else {
        CallEvent::PeerJoined {
            participant_id,
            role,
            resumed,
            replayed,
        }
    }
}

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
    delivered: Positions,
    acked: u64,
    acked_flushed: u64,
    /// False until this connection's own join is seen on the channel (or a relayed message
    /// newer than the snapshot arrives, or a resync): presence frames before that are already
    /// in `joined`.
    presence_live: bool,
    /// Media peers this connection knows to be away (seat kept for a resume): from the
    /// `joined` snapshot, then the presence events it forwards. At most one in a 1:1 call.
    away: Vec<ParticipantId>,
    /// The call's fences its join returned: relayed frames the router routed before it had
    /// them (it subscribed after their `seat` markers) are dropped here.
    fences: Fences,
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
            delivered: Positions::default(),
            acked: 0,
            acked_flushed: 0,
            presence_live: false,
            away: Vec::new(),
            fences: Fences::default(),
        }
    }

    pub fn seat(&self) -> Option<&Seat> {
        match &self.phase {
            Phase::Joined(seat) => Some(seat),
            _ => None,
        }
    }

    /// Admission succeeded: from now on relayed messages at or below a sender's position in
    /// `base` are not delivered live (they were before this connection, or come from the log
    /// replay), and presence waits for the seam.
    pub fn joined(&mut self, seat: Seat, base: Positions) {
        self.phase = Phase::Joined(seat);
        self.delivered = base;
        self.presence_live = false;
    }

    /// The `join` frame's token, verified by the caller at `now`: the seat it grants, or the
    /// refusal (a bad or expired token; a token for another call than the frame's `callId`).
    pub fn on_token(
        &self,
        verified: Result<JoinClaims, ProtoError>,
        call_id: Option<&CallId>,
    ) -> Result<Seat, Refusal> {
        let claims = verified.map_err(|e| Refusal {
            error: SignalErrorCode::Unauthorized,
            message: format!("join token refused: {e}"),
            close: CLOSE_UNAUTHORIZED,
            call: None,
        })?;
        if call_id.is_some_and(|c| *c != claims.cid) {
            return Err(Refusal {
                error: SignalErrorCode::Unauthorized,
                message: "join token is for another call".into(),
                close: CLOSE_UNAUTHORIZED,
                call: Some(claims.cid),
            });
        }
        Ok(Seat {
            call: claims.cid,
            participant: claims.pid,
            role: claims.role,
        })
    }

    /// The hub's answer to `seat`'s claim: seat the connection, or refuse it.
    pub fn on_admission(&mut self, seat: Seat, admission: Admission) -> JoinStep {
        let refusal = |error, message: &str, close| {
            JoinStep::Refuse(Refusal {
                error,
                message: message.into(),
                close,
                call: Some(seat.call.clone()),
            })
        };
        match admission {
            Admission::Admitted {
                resumed,
                after,
                fences,
            } => {
                self.joined(seat, after);
                self.fences = fences;
                JoinStep::Seated { resumed }
            }
            Admission::Full => refusal(
                SignalErrorCode::CallFull,
                "this call already has two participants",
                CLOSE_CALL_FULL,
            ),
            Admission::Ended => refusal(
                SignalErrorCode::CallEnded,
                "this call has ended",
                CLOSE_CALL_ENDED,
            ),
            Admission::Unavailable => JoinStep::Refuse(Refusal::unavailable(seat.call.clone())),
        }
    }

    /// Whether a frame from the call's channel goes to this client: a relayed message (its
    /// sender and `seq`) when newer than the last one delivered from that sender and not a
    /// fenced-off refused write (it also opens presence: it was published after our join); a
    /// presence frame (none) only once presence is open.
    pub fn accept_frame(&mut self, relayed: Option<(Sender, u64)>) -> bool {
        match relayed {
            Some((from, seq)) => {
                if self.fences.blocks(from, seq) {
                    return false;
                }
                let fresh = self.accept_delivery(from, seq);
                if fresh {
                    self.presence_live = true;
                }
                fresh
            }
            None => self.presence_live,
        }
    }

    /// This connection's own join came through the channel (the seam), or a resync replays
    /// the log: presence frames from here on are news to the client.
    pub fn open_presence(&mut self) {
        self.presence_live = true;
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
                    last_seqs,
                    call_id,
                },
            ) => {
                let beyond = |n: &u64| *n > MAX_SEQ;
                if last_seq.as_ref().is_some_and(beyond)
                    || last_seqs.as_ref().is_some_and(|m| m.values().any(beyond))
                {
                    return self.violation(
                        SignalErrorCode::BadMessage,
                        format!("lastSeq must be an integer from 0 to {MAX_SEQ}"),
                        now_ms,
                    );
                }
                if last_seqs.as_ref().is_some_and(|m| m.len() > MAX_LAST_SEQS) {
                    return self.violation(
                        SignalErrorCode::BadMessage,
                        format!("lastSeqs lists at most {MAX_LAST_SEQS} senders"),
                        now_ms,
                    );
                }
                self.phase = Phase::Joining;
                Decision::Join {
                    token,
                    last_seq,
                    last_seqs: last_seqs.map(|m| m.into_iter().collect()),
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
                // Only what was delivered can be acknowledged (the logs are trimmed up to the lowest ack).
                self.acked = self.acked.max(seq.min(self.delivered.max()));
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

    /// The `joined` snapshot's peers: who is away from the start.
    pub fn note_peers(&mut self, peers: &[PeerInfo]) {
        self.away = peers
            .iter()
            .filter(|p| !p.connected)
            .map(|p| p.participant_id.clone())
            .collect();
    }

    /// The seats' own answer to who is away (read after a relay that waited for a replica): it
    /// replaces what the presence events said, which a pub/sub outage can have left stale.
    pub fn note_away(&mut self, away: Vec<ParticipantId>) {
        let own = self.seat().map(|s| s.participant.clone());
        self.away = away;
        self.away.retain(|p| Some(p) != own.as_ref());
    }

    /// A presence frame this connection forwarded to its client (the text published on the
    /// call's channel): `peer-reconnecting` marks that peer away; `peer-resumed`, `peer-joined`
    /// and `peer-left` end it (live again, or gone: a later join of a gone peer is fresh and
    /// replays nothing). Other frames change nothing.
    pub fn on_presence(&mut self, text: &str) {
        let Ok(message) = serde_json::from_str::<ServerMessage>(text) else {
            return;
        };
        match message {
            ServerMessage::PeerReconnecting { participant_id }
                if !self.away.contains(&participant_id) =>
            {
                self.away.push(participant_id);
            }
            ServerMessage::PeerResumed { participant_id }
            | ServerMessage::PeerJoined { participant_id, .. }
            | ServerMessage::PeerLeft { participant_id, .. } => {
                self.away.retain(|p| *p != participant_id);
            }
            _ => {}
        }
    }

    /// Whether this connection's next relay must be acknowledged by a Redis replica before it
    /// counts as sent: a peer is away (the message will reach it only through the call's log,
    /// which a failover before replication would lose) and `policy` waits for replicas.
    pub fn relay_waits_for_replica(&self, policy: AckPolicy) -> bool {
        !self.away.is_empty() && policy.timeout().is_some()
    }

    /// Whether a relayed message with `seq` from `from` should go to this client (no
    /// duplicates: numbers increase per sender).
    pub fn accept_delivery(&mut self, from: Sender, seq: u64) -> bool {
        self.delivered.advance(from, seq)
    }

    /// Where delivery from each sender stands.
    pub fn delivered(&self) -> &Positions {
        &self.delivered
    }

    /// Highest relayed `seq` sent to this client, from any sender.
    pub fn last_delivered(&self) -> u64 {
        self.delivered.max()
    }

    /// An acknowledged `seq` not yet recorded in Redis, if any; marks it used.
    pub fn take_ack_to_flush(&mut self) -> Option<u64> {
        (self.acked > self.acked_flushed).then(|| {
            self.acked_flushed = self.acked;
            self.acked
        })
    }
}

/// What the sender hears about a relay that no Redis replica acknowledged within the timeout
/// (the primary stored and published it; only a failover before it replicates loses it):
/// under `required` an `unavailable` error (resend it: at-least-once across `unavailable`, so
/// the away peer may get it twice, with two `seq`s), otherwise nothing (it counts as sent).
pub fn unreplicated_relay(policy: AckPolicy) -> Option<(SignalErrorCode, &'static str)> {
    match policy {
        AckPolicy::Required(_) => Some((
            SignalErrorCode::Unavailable,
            "message not confirmed by a Redis replica (the other side is away); resend it",
        )),
        AckPolicy::BestEffort(_) | AckPolicy::Off => None,
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
        c.joined(seat(role), Positions::default());
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
                last_seqs: None,
                call_id: None
            }
        );
        // While admission runs, a second join is refused, not re-run.
        assert!(matches!(
            c.on_frame(r#"{"type":"join","token":"t"}"#, T0),
            Decision::Reply(SignalErrorCode::BadMessage, _)
        ));
        c.joined(seat(Role::Offerer), Positions::default());
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
        c.joined(seat(Role::Offerer), Positions::default());
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
        let (a, b) = senders();
        c.joined(seat(Role::Answerer), Positions::new(vec![(a, 7)]));
        assert!(
            !c.accept_delivery(a, 7),
            "at or below the join's base: already seen"
        );
        assert!(c.accept_delivery(a, 9));
        assert!(!c.accept_delivery(a, 8), "older than the last delivered");
        assert!(!c.accept_delivery(a, 9), "duplicate");
        assert!(c.accept_delivery(a, 10));
        assert_eq!(c.last_delivered(), 10);
        // Numbers are per sender: another sender's 3 is news, and its own dedup is separate.
        assert!(c.accept_delivery(b, 3));
        assert!(!c.accept_delivery(b, 3));
        assert!(c.accept_delivery(a, 11));
        assert_eq!(c.delivered().of(a), 11);
        assert_eq!(c.delivered().of(b), 3);
        // A sender unknown at the join started its log after it: all of it is news.
        let mut c = Conn::new(Limits::default(), T0);
        c.joined(seat(Role::Observer), Positions::new(vec![(a, 7)]));
        assert!(c.accept_delivery(b, 1));
    }

    #[test]
    fn fences_drop_only_numbers_strictly_inside_and_keep_the_newest_per_sender() {
        let (a, b) = senders();
        let fence = |sender, stored, first| Fence {
            sender,
            stored,
            first,
        };
        let mut f = Fences::default();
        assert!(!f.blocks(a, 6));
        f.insert(fence(a, 5, 9));
        assert!(!f.blocks(a, 5), "stored before the takeover");
        assert!(f.blocks(a, 6) && f.blocks(a, 8));
        assert!(!f.blocks(a, 9), "the new connection's first number");
        assert!(!f.blocks(b, 7), "another sender's numbers");
        f.insert(fence(a, 5, 9));
        assert_eq!(f.of(a).count(), 1, "once");
        // A chain of takeovers: the newest FENCES_PER_SENDER per sender stay, whatever the
        // order they arrive in (a router gets old ones handed over after newer markers).
        for k in (1..=FENCES_PER_SENDER as u64 + 2).rev() {
            f.insert(fence(a, 10 * k, 10 * k + 3));
        }
        f.insert(fence(b, 1, 4));
        assert_eq!(f.of(a).count(), FENCES_PER_SENDER);
        assert_eq!(f.of(b).count(), 1);
        assert!(!f.blocks(a, 7), "the oldest went first");
        assert!(!f.blocks(a, 11) && !f.blocks(a, 21));
        assert!(f.blocks(a, 31) && f.blocks(a, 62));
        assert!(f.blocks(b, 2));
        // The join script's list; a malformed one is refused whole.
        let list = format!("{}:5:9,{}:1:4", a.as_str(), b.as_str());
        let parsed = Fences::parse_list(&list).unwrap();
        assert!(parsed.blocks(a, 6) && parsed.blocks(b, 3) && !parsed.blocks(a, 9));
        assert_eq!(Fences::parse_list(""), Some(Fences::default()));
        assert_eq!(Fences::parse_list(&format!("{}:5", a.as_str())), None);
        assert_eq!(Fences::parse_list("short:1:2"), None);
        assert_eq!(Fence::parse(a, "x:1"), None);
        assert_eq!(Fence::parse(a, "12:13"), Some(fence(a, 12, 13)));
        // The kept hash as HGETALL returns it (a router re-reads it after pub/sub loss).
        let kept = vec![
            (a.as_str().to_owned(), "5:9,20:23".to_owned()),
            (b.as_str().to_owned(), "1:4".to_owned()),
        ];
        let parsed = Fences::parse_kept(&kept).unwrap();
        assert!(parsed.blocks(a, 6) && parsed.blocks(a, 21) && parsed.blocks(b, 3));
        assert!(!parsed.blocks(a, 9) && !parsed.blocks(a, 20));
        assert_eq!(Fences::parse_kept(&[]), Some(Fences::default()));
        let bad = vec![(a.as_str().to_owned(), "5:9,x".to_owned())];
        assert_eq!(Fences::parse_kept(&bad), None);
        assert_eq!(
            Fences::parse_kept(&[("short".to_owned(), "1:2".to_owned())]),
            None
        );
    }

    #[test]
    fn a_connection_drops_fenced_frames_its_router_routed_before_it_had_the_fence() {
        let (a, b) = senders();
        let mut c = Conn::new(Limits::default(), T0);
        let mut fences = Fences::default();
        fences.insert(Fence {
            sender: a,
            stored: 3,
            first: 6,
        });
        let step = c.on_admission(
            seat(Role::Answerer),
            Admission::Admitted {
                resumed: true,
                after: Positions::new(vec![(a, 2)]),
                fences,
            },
        );
        assert_eq!(step, JoinStep::Seated { resumed: true });
        assert!(
            c.accept_frame(Some((a, 3))),
            "stored: its PUBLISH came late"
        );
        assert!(!c.accept_frame(Some((a, 4))), "refused by the log");
        assert!(!c.accept_frame(Some((a, 5))));
        assert!(c.accept_frame(Some((a, 6))), "the new connection");
        assert!(c.accept_frame(Some((b, 4))), "another sender");
        assert_eq!(c.delivered().of(a), 6);
    }

    /// Two senders' keys.
    fn senders() -> (Sender, Sender) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        (
            Sender::of(&ParticipantId::random(&mut rng)),
            Sender::of(&ParticipantId::random(&mut rng)),
        )
    }

    #[test]
    fn senders_are_participant_ids() {
        let (a, _) = senders();
        assert_eq!(Sender::parse(a.as_str()), Some(a));
        assert_eq!(Sender::parse("short"), None);
        assert_eq!(Sender::parse(&"x".repeat(27)), None);
    }

    #[test]
    fn acks_are_flushed_once() {
        let mut c = joined(Role::Answerer);
        assert_eq!(c.take_ack_to_flush(), None);
        assert!(c.accept_delivery(senders().0, 5));
        c.on_frame(r#"{"type":"ack","seq":4}"#, T0);
        c.on_frame(r#"{"type":"ack","seq":2}"#, T0);
        assert_eq!(c.take_ack_to_flush(), Some(4));
        assert_eq!(c.take_ack_to_flush(), None);
        // Beyond what was delivered: only up to the last delivered message.
        c.on_frame(r#"{"type":"ack","seq":1000000000000000}"#, T0);
        assert_eq!(c.take_ack_to_flush(), Some(5));
    }

    #[test]
    fn last_seqs_are_per_sender_within_range_and_bounded() {
        let (a, b) = senders();
        let pa = ParticipantId::parse(a.as_str()).unwrap();
        let pb = ParticipantId::parse(b.as_str()).unwrap();
        let mut c = Conn::new(Limits::default(), T0);
        let d = c.on_frame(
            &format!(r#"{{"type":"join","token":"t","lastSeqs":{{"{pa}":4,"{pb}":9}}}}"#),
            T0,
        );
        let Decision::Join {
            last_seq: None,
            last_seqs: Some(mut list),
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        list.sort();
        let mut expected = vec![(pa.clone(), 4), (pb.clone(), 9)];
        expected.sort();
        assert_eq!(list, expected);
        // Beyond 2^53 - 1, not a participant id, or too many senders: bad-message, and the
        // connection still awaits a valid join.
        let many: Vec<String> = (0..=MAX_LAST_SEQS)
            .map(|i| {
                let p = ParticipantId::random(&mut rand::rngs::StdRng::seed_from_u64(i as u64));
                format!(r#""{p}":1"#)
            })
            .collect();
        for bad in [
            format!(r#"{{"{pa}":9007199254740992}}"#),
            r#"{"../x":1}"#.to_owned(),
            format!("{{{}}}", many.join(",")),
        ] {
            let mut c = Conn::new(Limits::default(), T0);
            let d = c.on_frame(
                &format!(r#"{{"type":"join","token":"t","lastSeqs":{bad}}}"#),
                T0,
            );
            assert!(
                matches!(d, Decision::Reply(SignalErrorCode::BadMessage, _)),
                "{bad}: {d:?}"
            );
            assert!(matches!(
                c.on_frame(r#"{"type":"join","token":"t"}"#, T0),
                Decision::Join { .. }
            ));
        }
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

    fn claims(seat: &Seat) -> JoinClaims {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        JoinClaims::new(
            seat.call.clone(),
            seat.participant.clone(),
            seat.role,
            T0 / 1000,
            600,
            &mut rng,
        )
    }

    #[test]
    fn a_refused_token_closes_unauthorized_without_a_call() {
        let c = Conn::new(Limits::default(), T0);
        let r = c.on_token(Err(ProtoError::TokenExpired), None).unwrap_err();
        assert_eq!(r.error, SignalErrorCode::Unauthorized);
        assert_eq!(r.close, CLOSE_UNAUTHORIZED);
        assert_eq!(
            r.call, None,
            "an unverified token names no call to log under"
        );
        assert!(
            r.message.starts_with("join token refused: "),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_token_for_another_call_is_refused_under_the_token_call() {
        let c = Conn::new(Limits::default(), T0);
        let mine = seat(Role::Answerer);
        let other = CallId::random(&mut rand::rngs::StdRng::seed_from_u64(2));
        assert_ne!(other, mine.call);
        let r = c.on_token(Ok(claims(&mine)), Some(&other)).unwrap_err();
        assert_eq!(
            r,
            Refusal {
                error: SignalErrorCode::Unauthorized,
                message: "join token is for another call".into(),
                close: CLOSE_UNAUTHORIZED,
                call: Some(mine.call.clone()),
            }
        );
        // The same call id, or none, grants the token's seat.
        assert_eq!(
            c.on_token(Ok(claims(&mine)), Some(&mine.call)),
            Ok(mine.clone())
        );
        assert_eq!(c.on_token(Ok(claims(&mine)), None), Ok(mine));
    }

    #[test]
    fn admission_outcomes_map_to_codes() {
        let s = seat(Role::Offerer);
        let refused = |admission: Admission| {
            let mut c = Conn::new(Limits::default(), T0);
            match c.on_admission(s.clone(), admission.clone()) {
                JoinStep::Refuse(r) => {
                    assert_eq!(c.seat(), None, "a refused connection holds no seat");
                    assert_eq!(r.call.as_ref(), Some(&s.call));
                    (r.error, r.close, r.message)
                }
                step => panic!("{admission:?} gave {step:?}"),
            }
        };
        assert_eq!(
            refused(Admission::Full),
            (
                SignalErrorCode::CallFull,
                CLOSE_CALL_FULL,
                "this call already has two participants".into()
            )
        );
        assert_eq!(
            refused(Admission::Ended),
            (
                SignalErrorCode::CallEnded,
                CLOSE_CALL_ENDED,
                "this call has ended".into()
            )
        );
        assert_eq!(
            refused(Admission::Unavailable),
            (
                SignalErrorCode::Unavailable,
                CLOSE_TRY_AGAIN,
                "signaling storage unavailable; retry shortly".into()
            )
        );
        let mut c = Conn::new(Limits::default(), T0);
        assert_eq!(
            c.on_admission(
                s.clone(),
                Admission::Admitted {
                    resumed: true,
                    after: Positions::new(vec![(senders().0, 6)]),
                    fences: Fences::default(),
                }
            ),
            JoinStep::Seated { resumed: true }
        );
        assert_eq!(c.seat(), Some(&s));
        assert_eq!(c.last_delivered(), 6, "live delivery starts after `after`");
    }

    #[test]
    fn presence_waits_for_the_seam_a_newer_relay_or_a_resync() {
        let a = senders().0;
        let open_by = |open: &dyn Fn(&mut Conn)| {
            let mut c = Conn::new(Limits::default(), T0);
            c.joined(seat(Role::Answerer), Positions::new(vec![(a, 4)]));
            assert!(
                !c.accept_frame(None),
                "presence before our join is in `joined`"
            );
            open(&mut c);
            assert!(c.accept_frame(None), "presence after the opening is news");
            c
        };
        open_by(&|c| c.open_presence());
        let c = open_by(&|c| assert!(c.accept_frame(Some((a, 5)))));
        assert_eq!(c.last_delivered(), 5);
        // A relayed message already delivered (resume overlap) opens nothing.
        let mut c = Conn::new(Limits::default(), T0);
        c.joined(seat(Role::Answerer), Positions::new(vec![(a, 4)]));
        assert!(!c.accept_frame(Some((a, 4))));
        assert!(!c.accept_frame(None));
        // A new admission (a resume on a fresh connection) starts closed again.
        c.open_presence();
        c.joined(seat(Role::Answerer), Positions::new(vec![(a, 9)]));
        assert!(!c.accept_frame(None));
    }

    #[test]
    fn join_event_names_a_resume() {
        let s = seat(Role::Observer);
        assert!(matches!(
            join_event(&s, false, 0),
            CallEvent::PeerJoined {
                resumed: false,
                replayed: 0,
                role: Role::Observer,
                ..
            }
        ));
        assert!(matches!(
            join_event(&s, true, 3),
            CallEvent::PeerResumed { resumed: true, replayed: 3, ref participant_id, .. }
                if *participant_id == s.participant
        ));
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

    #[test]
    fn relays_wait_for_a_replica_only_while_a_peer_is_away() {
        use std::time::Duration;
        let t = Duration::from_millis(250);
        let (required, best_effort) = (AckPolicy::Required(t), AckPolicy::BestEffort(t));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let peer = ParticipantId::random(&mut rng);
        let info = |connected| PeerInfo {
            participant_id: peer.clone(),
            role: Role::Answerer,
            connected,
        };
        let event = |m: ServerMessage| serde_json::to_string(&m).unwrap();
        let mut c = joined(Role::Offerer);
        // Nobody there, or the peer live: no wait.
        assert!(!c.relay_waits_for_replica(required));
        c.note_peers(&[info(true)]);
        assert!(!c.relay_waits_for_replica(required));
        // Away in the snapshot: wait, unless the policy never waits (single Redis).
        c.note_peers(&[info(false)]);
        assert!(c.relay_waits_for_replica(required));
        assert!(c.relay_waits_for_replica(best_effort));
        assert!(!c.relay_waits_for_replica(AckPolicy::Off));
        c.on_presence(&event(ServerMessage::PeerResumed {
            participant_id: peer.clone(),
        }));
        assert!(!c.relay_waits_for_replica(required));
        for _ in 0..2 {
            c.on_presence(&event(ServerMessage::PeerReconnecting {
                participant_id: peer.clone(),
            }));
        }
        assert!(c.relay_waits_for_replica(required));
        // Gone for good: a later join of that peer is fresh and replays nothing.
        c.on_presence(&event(ServerMessage::PeerLeft {
            participant_id: peer.clone(),
            reason: "grace".into(),
        }));
        assert!(!c.relay_waits_for_replica(required));
        c.on_presence(&event(ServerMessage::PeerReconnecting {
            participant_id: peer.clone(),
        }));
        c.on_presence(&event(ServerMessage::PeerJoined {
            participant_id: peer.clone(),
            role: Role::Answerer,
        }));
        assert!(!c.relay_waits_for_replica(required));
        // The seats' answer replaces what events said (a lost `peer-resumed`), never counting
        // this connection itself.
        c.on_presence(&event(ServerMessage::PeerReconnecting {
            participant_id: peer.clone(),
        }));
        c.note_away(Vec::new());
        assert!(!c.relay_waits_for_replica(required));
        let own = c.seat().unwrap().participant.clone();
        c.note_away(vec![own]);
        assert!(!c.relay_waits_for_replica(required));
        c.note_away(vec![peer.clone()]);
        assert!(c.relay_waits_for_replica(required));
        c.note_away(Vec::new());
        // Frames that are not presence change nothing; garbage neither.
        c.on_presence("{not json");
        c.on_presence(r#"{"type":"pong"}"#);
        assert!(!c.relay_waits_for_replica(required));
        // What the sender hears when no replica acknowledged.
        assert!(matches!(
            unreplicated_relay(required),
            Some((SignalErrorCode::Unavailable, _))
        ));
        assert_eq!(unreplicated_relay(best_effort), None);
    }
}
