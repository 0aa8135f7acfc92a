//! The sans-IO TURN server: bytes, source and `now` in; forwarding decisions and commands out.
//!
//! Architecture invariant: this module does no I/O, reads no clock and spawns nothing. The I/O
//! layer (`io/`) feeds it client packets ([`Server::handle_client`]), peer packets
//! ([`Server::handle_peer`]) and timer ticks ([`Server::handle_timeout`]), executes the queued
//! [`Command`]s ([`Server::poll_command`]) and reports back whether relay sockets could be
//! bound ([`Server::relay_opened`]).
//!
//! Data path: ChannelData and Send indications from clients, and datagrams from peers, are
//! answered with a [`Forward`] that names a byte range of the caller's own buffer: nothing is
//! copied or allocated, the ChannelData/Data-indication header is written in place into the
//! headroom in front of the payload (see `wire.rs`). Control requests (Binding, Allocate,
//! Refresh, CreatePermission, ChannelBind, Connect, ConnectionBind) are decoded once into a
//! typed `request::Request` by the `stun`/`turn` crates' codec, authenticated once, handled
//! by one handler per method and answered with the same codec; they allocate, which is fine
//! at their rate.
//!
//! TCP relays (RFC 6062): an Allocate over TCP/TLS may ask for REQUESTED-TRANSPORT TCP. Its
//! relay address is then a TCP listener; `Connect` opens a TCP connection to a peer (checked by
//! the peer filter, like every other peer address) and a peer's incoming connection is
//! announced with `ConnectionAttempt`. Either way the connection waits, under a
//! CONNECTION-ID, for the client to open a new TCP/TLS connection and send `ConnectionBind`;
//! the I/O layer then joins the two byte streams. The core tracks these connections and their
//! deadlines; the bytes themselves never pass through it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stun::agent::TransactionId;
use stun::attributes::{ATTR_CONNECTION_ID, ATTR_NONCE, ATTR_REALM, ATTR_SOFTWARE};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
    METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CONNECT, METHOD_CONNECTION_ATTEMPT,
    METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, Message, MessageType, Method,
    Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;

use crate::auth::{NonceCheck, NonceKey, long_term_key};
use crate::metrics::{Metrics, Quota};
use crate::peer_filter::{PeerFilter, Verdict};
use crate::wire::{self, Kind};

mod request;

use request::{Body, Credentials, Request};

/// The control-plane decoder, for the fuzz targets.
#[doc(hidden)]
pub fn decode_request(bytes: &[u8]) -> Option<Credentials> {
    Request::decode(bytes).map(|r| r.credentials)
}

/// Index of an allocation and of its relay socket (the I/O layer keeps sockets in a `Vec`
/// indexed by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayId(pub u32);

impl RelayId {
    /// The slot of this relay in a `Vec` indexed by relay.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// CONNECTION-ID of an RFC 6062 TCP connection: the worker number in the top 8 bits (so a
/// ConnectionBind arriving on any worker can be routed to the one that holds the connection),
/// a counter in the low 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

impl ConnId {
    /// The worker that holds this connection.
    pub const fn worker(self) -> usize {
        (self.0 >> 24) as usize
    }
}

/// The worker a raw CONNECTION-ID value (read off the wire for routing) belongs to.
pub fn conn_worker(raw: u32) -> usize {
    ConnId(raw).worker()
}

/// A point in time in unix milliseconds: the core's clock. The core never reads a clock;
/// the I/O layer passes `now` in as one of these, and every deadline is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// Never (an allocation whose relay socket is still being opened does not expire).
    pub const NEVER: Millis = Millis(u64::MAX);

    /// Whole unix seconds (nonce buckets, REST username expiry).
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `ms` milliseconds later.
    pub const fn after_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// `secs` seconds later (lifetimes are configured in seconds).
    pub const fn after_secs(self, secs: u32) -> Millis {
        self.after_ms(secs as u64 * 1000)
    }

    /// Milliseconds from `earlier` to `self` (0 when `earlier` is later).
    pub const fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// How long a connected peer waits for the client's ConnectionBind (RFC 6062 §5.2, §5.3).
pub const CONNECTION_BIND_TIMEOUT_MS: u64 = 30_000;
/// TCP peer connections one allocation may hold, in every state (being connected, waiting
/// for ConnectionBind, piped).
pub const MAX_TCP_CONNECTIONS: usize = 16;

/// How a client reaches us: UDP listener number, or a stream (TCP/TLS) connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Udp(u8),
    Stream(u64),
}

/// A client transport address (the 5-tuple, with our side named by `via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub via: Via,
    pub addr: SocketAddr,
}

impl Client {
    pub fn udp(listener: u8, addr: SocketAddr) -> Self {
        Self {
            via: Via::Udp(listener),
            addr,
        }
    }
    fn is_stream(&self) -> bool {
        matches!(self.via, Via::Stream(_))
    }
}

/// Relay addresses of one family: where relay sockets bind, and what clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayIp {
    pub bind: IpAddr,
    pub public: IpAddr,
}

/// Everything the core needs, validated by `config.rs`.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub realm: String,
    /// `TURN_SECRET` (REST credentials).
    pub secret: hermes_service::Secret,
    pub relay_v4: Option<RelayIp>,
    pub relay_v6: Option<RelayIp>,
    pub min_port: u16,
    pub max_port: u16,
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    /// Allocations per REST user (the part after `expiry:`); 0 = unlimited.
    pub user_quota: u32,
    /// Allocations on this server; 0 = unlimited.
    pub total_quota: u32,
    /// Permissions (and channels) per allocation.
    pub max_permissions: u32,
    /// Bytes per second per allocation, each direction (coturn's `max-bps` unit); 0 = unlimited.
    pub max_bps: u64,
    pub filter: PeerFilter,
    pub software: Option<String>,
    /// Grant RFC 6062 TCP relays.
    pub tcp_relay: bool,
}

impl CoreConfig {
    /// Defaults for tests and the CLI: quotas on, 10 min default / 1 h max lifetime.
    pub fn new(realm: &str, secret: &[u8], relay_v4: Option<RelayIp>) -> Self {
        Self {
            realm: realm.to_string(),
            secret: hermes_service::Secret::from_bytes(secret),
            relay_v4,
            relay_v6: None,
            min_port: 49152,
            max_port: 65535,
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            user_quota: 16,
            total_quota: 10_000,
            max_permissions: 64,
            max_bps: 0,
            filter: PeerFilter::default(),
            software: Some("hermes-turn".into()),
            tcp_relay: true,
        }
    }
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    ClientDeleted,
    ConnectionClosed,
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::ClientDeleted => "deleted",
            EndReason::ConnectionClosed => "connection-closed",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// Allocation lifecycle events (for `logs:turn`; never per packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created {
        user: String,
        client: SocketAddr,
        relay: SocketAddr,
        lifetime: u32,
    },
    Ended {
        user: String,
        relay: SocketAddr,
        reason: EndReason,
        packets: u64,
        bytes: u64,
    },
    Refused {
        client: SocketAddr,
        code: u16,
        reason: &'static str,
    },
}

/// Work for the I/O layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a control message (a response) to a client.
    ToClient {
        to: Client,
        bytes: Vec<u8>,
    },
    /// Bind a relay socket at `bind` (a UDP socket, or with `tcp` a TCP listener whose
    /// incoming connections go to [`Server::peer_accepted`]), then call
    /// [`Server::relay_opened`].
    OpenRelay {
        relay: RelayId,
        bind: SocketAddr,
        tcp: bool,
    },
    /// Open a TCP connection from relay address `bind` to `peer`, then call
    /// [`Server::peer_connected`] (the I/O layer bounds the attempt in time).
    ConnectPeer {
        id: ConnId,
        bind: SocketAddr,
        peer: SocketAddr,
    },
    /// RFC 6062 ConnectionBind succeeded: send `response` on the client connection `to`, then
    /// join that connection with peer connection `id` of relay `relay`; report the end of
    /// the pipe with [`Server::pipe_closed`].
    BindConnection {
        to: Client,
        relay: RelayId,
        id: ConnId,
        response: Vec<u8>,
    },
    /// Close the unbound peer connection `id` (bind deadline passed, allocation ended).
    DropPeer {
        id: ConnId,
    },
    /// Close a relay socket.
    CloseRelay {
        relay: RelayId,
    },
    Event(Event),
}

/// What to do with a data packet: a range of the caller's buffer and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Nothing to send (control message handled, or packet dropped).
    None,
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        range: Range<usize>,
    },
    ToClient {
        to: Client,
        range: Range<usize>,
    },
}

#[derive(Debug)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Millis,
}

#[derive(Debug)]
enum State {
    /// Relay socket being bound; the Allocate response is sent when it is.
    Opening {
        txid: TransactionId,
        attempts: u8,
    },
    Active,
}

/// Token bucket in bytes, refilled per millisecond.
#[derive(Debug)]
struct Bucket {
    tokens: u64,
    last: Millis,
}

#[derive(Debug)]
struct Allocation {
    client: Client,
    username: Box<str>,
    user: Box<str>,
    key: [u8; 16],
    public: SocketAddr,
    bind: SocketAddr,
    state: State,
    lifetime: u32,
    expires: Millis,
    allocate_txid: TransactionId,
    allocate_response: Vec<u8>,
    /// Peer IP and expiry (ms). Few entries: a linear scan beats hashing.
    perms: Vec<(IpAddr, Millis)>,
    channels: Vec<Channel>,
    up: Bucket,
    down: Bucket,
    packets: u64,
    bytes: u64,
    /// RFC 6062 TCP relay (its relay socket is a TCP listener).
    tcp: bool,
}

/// An RFC 6062 connection between a TCP relay and a peer.
#[derive(Debug)]
struct PeerConn {
    relay: RelayId,
    peer: SocketAddr,
    state: PeerConnState,
}

#[derive(Debug)]
enum PeerConnState {
    /// The client's Connect (transaction `txid`) is being carried out.
    Connecting { txid: TransactionId },
    /// Connected; ConnectionBind must come before `deadline`.
    Waiting { deadline: Millis },
    /// Bound: the I/O layer pipes it to a client data connection until
    /// [`Server::pipe_closed`].
    Piped,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Millis) -> bool {
        self.perms.iter().any(|(p, exp)| *p == ip && *exp > now)
    }
}

/// Plain counters of the data path, folded into [`Metrics`] by [`Server::flush_stats`].
#[derive(Debug, Default)]
struct Stats {
    packets_to_peer: u64,
    bytes_to_peer: u64,
    packets_to_client: u64,
    bytes_to_client: u64,
    dropped: u64,
    bandwidth: u64,
}

/// Sweep period for expiries and metric flushes.
const TICK_MS: u64 = 1_000;
/// Attempts at binding a relay port before answering 508.
const MAX_BIND_ATTEMPTS: u8 = 8;
/// Longest username we look at (RFC 8489: < 513 bytes).
const MAX_USERNAME: usize = 512;

/// An authenticated request's credentials.
struct Auth {
    username: String,
    user: String,
    key: [u8; 16],
}

/// An error answer: code, reason, and whether to add REALM/NONCE (401/438).
struct Reject {
    code: u16,
    reason: &'static str,
    challenge: bool,
}

/// A refused request: its error answer and, once the request is authenticated, the key that
/// signs the answer.
type Refusal = (Reject, Option<[u8; 16]>);

const fn reject(code: u16, reason: &'static str) -> Reject {
    Reject {
        code,
        reason,
        challenge: false,
    }
}

/// Allocation counts shared by every worker of one process, so the total and per-user quotas
/// hold across SO_REUSEPORT workers. Touched only when an allocation is created or removed,
/// never on the data path.
#[derive(Debug, Default)]
pub struct AllocationLedger {
    inner: Mutex<LedgerCounts>,
}

#[derive(Debug, Default)]
struct LedgerCounts {
    total: u32,
    per_user: HashMap<Box<str>, u32>,
}

/// Which quota refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    Total,
    User,
}

impl AllocationLedger {
    /// Count one more allocation for `user` unless a quota (0 = unlimited) is reached.
    pub fn reserve(
        &self,
        user: &str,
        user_quota: u32,
        total_quota: u32,
    ) -> Result<(), QuotaRefusal> {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if total_quota > 0 && c.total >= total_quota {
            return Err(QuotaRefusal::Total);
        }
        let n = c.per_user.get(user).copied().unwrap_or(0);
        if user_quota > 0 && n >= user_quota {
            return Err(QuotaRefusal::User);
        }
        c.total += 1;
        *c.per_user.entry(user.into()).or_insert(0) += 1;
        Ok(())
    }

    /// Give back what [`reserve`](Self::reserve) counted.
    pub fn release(&self, user: &str) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_user.remove(user);
            }
        }
    }

    /// Allocations counted, all workers together.
    pub fn total(&self) -> u32 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

pub struct Server {
    cfg: CoreConfig,
    nonce: NonceKey,
    metrics: Arc<Metrics>,
    allocs: Vec<Option<Allocation>>,
    free: Vec<RelayId>,
    by_client: HashMap<Client, RelayId>,
    ledger: Arc<AllocationLedger>,
    ports_v4: Vec<bool>,
    ports_v6: Vec<bool>,
    active: u32,
    commands: VecDeque<Command>,
    rng: u64,
    next_tick: Millis,
    data_txid: u64,
    draining: bool,
    stats: Stats,
    /// RFC 6062 connections, by CONNECTION-ID.
    conns: HashMap<ConnId, PeerConn>,
    worker: u8,
    next_conn: u32,
}

impl Server {
    /// `seed` drives port choice and Data-indication transaction ids; `nonce_key` must be
    /// secret and random in production (tests pass fixed values).
    pub fn new(cfg: CoreConfig, nonce_key: [u8; 32], seed: u64, metrics: Arc<Metrics>) -> Self {
        let span = (cfg.max_port as usize).saturating_sub(cfg.min_port as usize) + 1;
        Self {
            nonce: NonceKey::new(nonce_key),
            metrics,
            allocs: Vec::new(),
            free: Vec::new(),
            by_client: HashMap::new(),
            ledger: Arc::default(),
            ports_v4: vec![false; span],
            ports_v6: vec![false; span],
            active: 0,
            commands: VecDeque::new(),
            rng: seed | 1,
            next_tick: Millis(0),
            data_txid: seed,
            draining: false,
            stats: Stats::default(),
            conns: HashMap::new(),
            worker: 0,
            next_conn: 0,
            cfg,
        }
    }

    /// Count allocations in `ledger`, shared with the other workers of this process.
    #[must_use]
    pub fn with_ledger(mut self, ledger: Arc<AllocationLedger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// This core is worker `index` (named in the CONNECTION-IDs it hands out).
    #[must_use]
    pub fn with_worker(mut self, index: u8) -> Self {
        self.worker = index;
        self
    }

    /// The per-allocation bandwidth cap (bytes per second each way; 0 = none).
    pub fn max_bps(&self) -> u64 {
        self.cfg.max_bps
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Allocations that exist (opening or active).
    pub fn allocation_count(&self) -> usize {
        self.by_client.len()
    }

    /// Refuse new allocations from now on (SIGTERM drain); existing ones keep working.
    pub fn drain(&mut self) {
        self.draining = true;
        self.metrics.draining.set(1);
    }

    /// Next command for the I/O layer.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Whether [`Server::poll_command`] has something.
    pub fn has_commands(&self) -> bool {
        !self.commands.is_empty()
    }

    /// When [`Server::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Millis {
        self.next_tick
    }

    // ---------------------------------------------------------------- data path

    /// A packet from a client. `buf` is exactly the datagram (or stream frame).
    pub fn handle_client(&mut self, from: Client, buf: &[u8], now: Millis) -> Forward {
        match wire::classify(buf) {
            Some(Kind::ChannelData { channel, len }) => {
                self.client_channel_data(from, buf, channel, len, now)
            }
            Some(Kind::Stun { typ, len }) if len <= buf.len() => {
                let msg = &buf[..len];
                if typ == wire::SEND_INDICATION {
                    return self.client_send_indication(from, msg, now);
                }
                self.handle_stun(from, msg, typ, now);
                Forward::None
            }
            _ => {
                self.stats.dropped += 1;
                Forward::None
            }
        }
    }

    fn client_channel_data(
        &mut self,
        from: Client,
        buf: &[u8],
        channel: u16,
        len: usize,
        now: Millis,
    ) -> Forward {
        let Some(&relay) = self.by_client.get(&from) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        if 4 + len > buf.len() {
            self.stats.dropped += 1;
            return Forward::None;
        }
        let max_bps = self.cfg.max_bps;
        let Some(Some(a)) = self.allocs.get_mut(relay.index()) else {
            return Forward::None;
        };
        if a.tcp {
            self.stats.dropped += 1;
            return Forward::None;
        }
        let Some(ch) = a.channels.iter().find(|c| c.number == channel) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        if ch.expires <= now {
            self.stats.dropped += 1;
            return Forward::None;
        }
        let peer = ch.peer;
        if !take(&mut a.up, max_bps, len, now) {
            self.stats.bandwidth += 1;
            return Forward::None;
        }
        a.packets += 1;
        a.bytes += len as u64;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += len as u64;
        Forward::ToPeer {
            relay,
            peer,
            range: 4..4 + len,
        }
    }

    fn client_send_indication(&mut self, from: Client, msg: &[u8], now: Millis) -> Forward {
        let Some(&relay) = self.by_client.get(&from) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        let txid = wire::transaction_id(msg);
        let mut peer = None;
        let mut data = None;
        for a in wire::attrs(msg) {
            match a.typ {
                wire::ATTR_XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = wire::decode_xor_addr(a.value, &txid)
                }
                wire::ATTR_DATA if data.is_none() => {
                    data = Some(a.offset + 4..a.offset + 4 + a.value.len())
                }
                _ => {}
            }
        }
        let (Some(peer), Some(range)) = (peer, data) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        if self.cfg.filter.check(peer.ip()) != Verdict::Allowed {
            self.metrics.peers_refused.inc();
            return Forward::None;
        }
        let max_bps = self.cfg.max_bps;
        let Some(Some(a)) = self.allocs.get_mut(relay.index()) else {
            return Forward::None;
        };
        if !matches!(a.state, State::Active)
            || !a.permitted(peer.ip(), now)
            || peer.is_ipv4() != a.public.is_ipv4()
        {
            self.stats.dropped += 1;
            return Forward::None;
        }
        let len = range.len();
        if !take(&mut a.up, max_bps, len, now) {
            self.stats.bandwidth += 1;
            return Forward::None;
        }
        a.packets += 1;
        a.bytes += len as u64;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += len as u64;
        Forward::ToPeer { relay, peer, range }
    }

    /// A datagram from a peer on relay `relay`: the payload is at
    /// `buf[wire::HEADROOM..wire::HEADROOM + len]`, and `buf` has room for padding after it
    /// (`buf.len() >= wire::BUF_LEN`).
    pub fn handle_peer(
        &mut self,
        relay: RelayId,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Millis,
    ) -> Forward {
        let max_bps = self.cfg.max_bps;
        let Some(Some(a)) = self.allocs.get_mut(relay.index()) else {
            self.stats.dropped += 1;
            return Forward::None;
        };
        if !a.permitted(from.ip(), now) || buf.len() < wire::HEADROOM + wire::padded(len) {
            self.stats.dropped += 1;
            return Forward::None;
        }
        if !take(&mut a.down, max_bps, len, now) {
            self.stats.bandwidth += 1;
            return Forward::None;
        }
        a.packets += 1;
        a.bytes += len as u64;
        let to = a.client;
        let range = match a
            .channels
            .iter()
            .find(|c| c.peer == from && c.expires > now)
        {
            Some(ch) => wire::write_channel_data(buf, ch.number, len, to.is_stream()),
            None => {
                let txid = next_txid(&mut self.data_txid);
                wire::write_data_indication(buf, from, len, &txid.0)
            }
        };
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        Forward::ToClient { to, range }
    }

    /// Record that a data packet could not be sent (socket buffer full, unreachable).
    pub fn send_failed(&mut self) {
        self.stats.dropped += 1;
    }

    /// [`Server::send_failed`] for `n` packets.
    pub fn send_failed_n(&mut self, n: usize) {
        self.stats.dropped += n as u64;
    }

    // ---------------------------------------------------------------- timers and I/O results

    /// Expire allocations, permissions and channels; flush metrics. Call at
    /// [`Server::poll_timeout`] (calling more often is harmless).
    pub fn handle_timeout(&mut self, now: Millis) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now.after_ms(TICK_MS);
        let mut expired = Vec::new();
        for (id, slot) in self.allocs.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            if a.expires <= now && matches!(a.state, State::Active) {
                expired.push(RelayId(id as u32));
                continue;
            }
            a.perms.retain(|(_, exp)| *exp > now);
            a.channels.retain(|c| c.expires > now);
        }
        for id in expired {
            self.remove(id, EndReason::Expired);
        }
        let commands = &mut self.commands;
        self.conns.retain(|&cid, c| match c.state {
            PeerConnState::Waiting { deadline } if deadline <= now => {
                commands.push_back(Command::DropPeer { id: cid });
                false
            }
            _ => true,
        });
        self.flush_stats();
    }

    /// Fold the data-path counters into the shared metrics.
    pub fn flush_stats(&mut self) {
        let s = std::mem::take(&mut self.stats);
        let m = &self.metrics;
        m.packets_to_peer.add(s.packets_to_peer);
        m.bytes_to_peer.add(s.bytes_to_peer);
        m.packets_to_client.add(s.packets_to_client);
        m.bytes_to_client.add(s.bytes_to_client);
        m.dropped.add(s.dropped);
        m.quota(Quota::Bandwidth).add(s.bandwidth);
    }

    /// The I/O layer's answer to [`Command::OpenRelay`].
    pub fn relay_opened(&mut self, relay: RelayId, ok: bool, now: Millis) {
        let Some(Some(a)) = self.allocs.get_mut(relay.index()) else {
            return;
        };
        let State::Opening { txid, attempts } = a.state else {
            return;
        };
        if ok {
            a.state = State::Active;
            a.expires = now.after_secs(a.lifetime);
            let client = a.client;
            let public = a.public;
            let lifetime = a.lifetime;
            let key = a.key;
            let mut setters: Vec<Box<dyn Setter>> = vec![
                Box::new(RelayedAddress {
                    ip: public.ip(),
                    port: public.port(),
                }),
                Box::new(Lifetime(Duration::from_secs(lifetime as u64))),
                Box::new(XorMappedAddress {
                    ip: client.addr.ip(),
                    port: client.addr.port(),
                }),
            ];
            if let Some(s) = &self.cfg.software {
                setters.push(Box::new(TextAttribute::new(ATTR_SOFTWARE, s.clone())));
            }
            let bytes = build(
                METHOD_ALLOCATE,
                CLASS_SUCCESS_RESPONSE,
                txid,
                setters,
                Some(&key),
            );
            let user = a.user.to_string();
            a.allocate_response = bytes.clone();
            self.active += 1;
            self.metrics.allocations_active.inc();
            self.metrics.allocations_total.inc();
            self.commands
                .push_back(Command::ToClient { to: client, bytes });
            self.commands.push_back(Command::Event(Event::Created {
                user,
                client: client.addr,
                relay: public,
                lifetime,
            }));
            return;
        }
        // Port taken by someone else: try another one.
        let v6 = a.bind.is_ipv6();
        let old_port = a.bind.port();
        self.release_port(v6, old_port);
        if attempts + 1 < MAX_BIND_ATTEMPTS
            && let Some(port) = self.pick_port(v6)
            && let Some(Some(a)) = self.allocs.get_mut(relay.index())
        {
            a.bind.set_port(port);
            a.public.set_port(port);
            a.state = State::Opening {
                txid,
                attempts: attempts + 1,
            };
            self.commands.push_back(Command::OpenRelay {
                relay,
                bind: a.bind,
                tcp: a.tcp,
            });
            return;
        }
        let Some(a) = self.take_slot(relay) else {
            return;
        };
        let bytes = error_response(
            METHOD_ALLOCATE,
            txid,
            &reject(508, "Insufficient Capacity"),
            None,
            Some(&a.key),
        );
        self.commands.push_back(Command::ToClient {
            to: a.client,
            bytes,
        });
    }

    /// A stream client's connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: Client) {
        if let Some(&id) = self.by_client.get(&client) {
            self.remove(id, EndReason::ConnectionClosed);
        }
    }

    /// Remove every allocation (end of drain).
    pub fn shutdown(&mut self) {
        let ids: Vec<RelayId> = self.by_client.values().copied().collect();
        for id in ids {
            self.remove(id, EndReason::Shutdown);
        }
        self.flush_stats();
    }

    fn take_slot(&mut self, id: RelayId) -> Option<Allocation> {
        let a = self.allocs.get_mut(id.index())?.take()?;
        self.by_client.remove(&a.client);
        self.ledger.release(&a.user);
        self.free.push(id);
        Some(a)
    }

    fn remove(&mut self, id: RelayId, reason: EndReason) {
        let Some(a) = self.take_slot(id) else { return };
        if a.tcp {
            let commands = &mut self.commands;
            self.conns.retain(|&cid, c| {
                if c.relay != id {
                    return true;
                }
                if matches!(c.state, PeerConnState::Waiting { .. }) {
                    commands.push_back(Command::DropPeer { id: cid });
                }
                false
            });
        }
        self.release_port(a.bind.is_ipv6(), a.bind.port());
        if matches!(a.state, State::Active) {
            self.active -= 1;
            self.metrics.allocations_active.dec();
            self.commands.push_back(Command::CloseRelay { relay: id });
            self.commands.push_back(Command::Event(Event::Ended {
                user: a.user.into(),
                relay: a.public,
                reason,
                packets: a.packets,
                bytes: a.bytes,
            }));
        }
    }

    // ---------------------------------------------------------------- ports

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: port choice needs unpredictability only against off-path guessing,
        // and the seed comes from the OS.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick_port(&mut self, v6: bool) -> Option<u16> {
        let span = self.ports_v4.len();
        let start = (self.next_rand() % span as u64) as usize;
        let ports = if v6 {
            &mut self.ports_v6
        } else {
            &mut self.ports_v4
        };
        for i in 0..span {
            let idx = (start + i) % span;
            if !ports[idx] {
                ports[idx] = true;
                return Some(self.cfg.min_port + idx as u16);
            }
        }
        None
    }

    fn release_port(&mut self, v6: bool, port: u16) {
        let ports = if v6 {
            &mut self.ports_v6
        } else {
            &mut self.ports_v4
        };
        if let Some(p) = ports.get_mut(port.wrapping_sub(self.cfg.min_port) as usize) {
            *p = false;
        }
    }

    // ---------------------------------------------------------------- control

    /// A STUN message that is not a Send indication: decode it once into a [`Request`] and
    /// hand it to its method's handler.
    fn handle_stun(&mut self, from: Client, msg: &[u8], typ: u16, now: Millis) {
        // Only requests get answers; stray responses and other indications are ignored
        // before the codec copies them.
        if !wire::is_request(typ) {
            return;
        }
        let Some(Request {
            txid,
            method,
            body,
            mut credentials,
        }) = Request::decode(msg)
        else {
            return;
        };
        let creds = &mut credentials;
        let result = match body {
            Body::Binding => {
                self.binding(from, txid);
                Ok(())
            }
            Body::Allocate {
                transport,
                ipv6,
                lifetime,
            } => self.allocate(from, creds, txid, transport, ipv6, lifetime, now),
            Body::Refresh { lifetime } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.refresh(from, id, key, txid, lifetime, now)),
            Body::CreatePermission { peers } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.create_permission(from, id, key, txid, peers, now)),
            Body::ChannelBind { number, peer } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.channel_bind(from, id, key, txid, number, peer, now)),
            Body::Connect { peer } => self
                .on_allocation(from, creds, now)
                .and_then(|(id, key)| self.connect(id, key, txid, peer, now)),
            Body::ConnectionBind { id } => self.connection_bind(from, creds, txid, id, now),
            // RFC 8489 §6.3.1: an unknown method is a 400, said at once instead of letting the
            // client wait for its retransmission timeout.
            Body::Unsupported => Err((reject(400, "Bad Request: method not supported"), None)),
        };
        if let Err((r, key)) = result {
            let nonce = r
                .challenge
                .then(|| self.nonce.issue(from.addr.ip(), now.unix_secs()));
            let bytes = error_response(
                method,
                txid,
                &r,
                nonce.as_deref().map(|n| (self.cfg.realm.as_str(), n)),
                key.as_ref(),
            );
            self.reply(from, bytes);
        }
    }

    fn reply(&mut self, to: Client, bytes: Vec<u8>) {
        self.commands.push_back(Command::ToClient { to, bytes });
    }

    fn refused(&mut self, from: Client, r: &Reject) {
        self.commands.push_back(Command::Event(Event::Refused {
            client: from.addr,
            code: r.code,
            reason: r.reason,
        }));
    }

    /// Binding (RFC 8489): the client's reflexive address, no authentication.
    fn binding(&mut self, from: Client, txid: TransactionId) {
        let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(XorMappedAddress {
            ip: from.addr.ip(),
            port: from.addr.port(),
        })];
        self.push_software(&mut setters);
        let bytes = build(METHOD_BINDING, CLASS_SUCCESS_RESPONSE, txid, setters, None);
        self.reply(from, bytes);
    }

    fn push_software(&self, setters: &mut Vec<Box<dyn Setter>>) {
        if let Some(s) = &self.cfg.software {
            setters.push(Box::new(TextAttribute::new(ATTR_SOFTWARE, s.clone())));
        }
    }

    /// Check nonce, realm, REST username (and expiry) and MESSAGE-INTEGRITY: the one
    /// authentication of a request. `known` short-cuts the key derivation for an existing
    /// allocation's username.
    fn authenticate(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        now: Millis,
        known: Option<(&str, [u8; 16])>,
    ) -> Result<Auth, Reject> {
        let challenge = |code, reason| Reject {
            code,
            reason,
            challenge: true,
        };
        if !creds.integrity {
            return Err(challenge(401, "Unauthorized"));
        }
        let (Some(username), Some(realm), Some(nonce)) =
            (&creds.username, &creds.realm, &creds.nonce)
        else {
            return Err(reject(
                400,
                "Bad Request: USERNAME, REALM and NONCE required",
            ));
        };
        match self
            .nonce
            .check(nonce.as_bytes(), from.addr.ip(), now.unix_secs())
        {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => return Err(challenge(438, "Stale Nonce")),
        }
        if *realm != self.cfg.realm {
            self.metrics.auth_failures.inc();
            return Err(challenge(401, "Unauthorized: wrong realm"));
        }
        if username.len() > MAX_USERNAME {
            self.metrics.auth_failures.inc();
            return Err(challenge(401, "Unauthorized"));
        }
        let user = match hermes_proto::turn_credentials::check_username(username, now.unix_secs()) {
            Ok((_, user)) => user.to_string(),
            Err(hermes_proto::ProtoError::TurnCredentialsExpired) => {
                self.metrics.auth_failures.inc();
                return Err(challenge(401, "Unauthorized: credentials expired"));
            }
            Err(_) => {
                self.metrics.auth_failures.inc();
                return Err(challenge(401, "Unauthorized: not a REST username"));
            }
        };
        let key = match known {
            Some((name, key)) if name == username => key,
            _ => long_term_key(self.cfg.secret.expose(), username, &self.cfg.realm),
        };
        let username = username.clone();
        if !creds.integrity_ok(&key) {
            self.metrics.auth_failures.inc();
            return Err(challenge(401, "Unauthorized"));
        }
        Ok(Auth {
            username,
            user,
            key,
        })
    }

    /// [`Server::authenticate`] for a request that must carry an existing allocation's
    /// credentials (`username`, `key`): another valid username is 441.
    fn authenticate_as(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        now: Millis,
        username: &str,
        key: [u8; 16],
    ) -> Result<(), Reject> {
        let auth = self.authenticate(from, creds, now, Some((username, key)))?;
        if auth.username != username {
            self.metrics.auth_failures.inc();
            return Err(reject(441, "Wrong Credentials"));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        txid: TransactionId,
        transport: Option<u8>,
        v6: bool,
        lifetime: Option<u32>,
        now: Millis,
    ) -> Result<(), Refusal> {
        // A retransmitted Allocate gets the same answer (RFC 8656 §7.2), without re-auth.
        if let Some(&id) = self.by_client.get(&from)
            && let Some(Some(a)) = self.allocs.get(id.index())
        {
            if a.allocate_txid == txid {
                if matches!(a.state, State::Active) {
                    let bytes = a.allocate_response.clone();
                    self.reply(from, bytes);
                }
                return Ok(());
            }
            let key = a.key;
            return Err((reject(437, "Allocation Mismatch"), Some(key)));
        }
        let auth = match self.authenticate(from, creds, now, None) {
            Ok(a) => a,
            Err(r) => {
                if r.code == 401 && creds.integrity {
                    self.refused(from, &r);
                }
                return Err((r, None));
            }
        };
        let key = Some(auth.key);
        let fail = |this: &mut Self, r: Reject| {
            this.refused(from, &r);
            Err((r, key))
        };
        let tcp = match transport {
            None => {
                return Err((
                    reject(400, "Bad Request: REQUESTED-TRANSPORT required"),
                    key,
                ));
            }
            Some(17) => false,
            // RFC 6062 §5.1: a TCP relay only for a client that came over TCP or TLS.
            Some(6) if !self.cfg.tcp_relay => {
                return Err((reject(442, "Unsupported Transport Protocol"), key));
            }
            Some(6) if from.is_stream() => true,
            Some(6) => {
                return Err((
                    reject(400, "Bad Request: TCP relay needs a TCP or TLS connection"),
                    key,
                ));
            }
            Some(_) => return Err((reject(442, "Unsupported Transport Protocol"), key)),
        };
        if self.draining {
            return fail(self, reject(508, "Insufficient Capacity: draining"));
        }
        let Some(relay_ip) = (if v6 {
            self.cfg.relay_v6
        } else {
            self.cfg.relay_v4
        }) else {
            return Err((reject(440, "Address Family not Supported"), key));
        };
        let lifetime = self.lifetime(lifetime);
        if lifetime == 0 {
            return Err((reject(400, "Bad Request: zero lifetime"), key));
        }
        match self
            .ledger
            .reserve(&auth.user, self.cfg.user_quota, self.cfg.total_quota)
        {
            Ok(()) => {}
            Err(QuotaRefusal::Total) => {
                self.metrics.quota(Quota::TotalAllocations).inc();
                return fail(self, reject(508, "Insufficient Capacity"));
            }
            Err(QuotaRefusal::User) => {
                self.metrics.quota(Quota::UserAllocations).inc();
                return fail(self, reject(486, "Allocation Quota Reached"));
            }
        }
        let Some(port) = self.pick_port(v6) else {
            self.ledger.release(&auth.user);
            return fail(self, reject(508, "Insufficient Capacity: no relay port"));
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.allocs.push(None);
                RelayId((self.allocs.len() - 1) as u32)
            }
        };
        let bind = SocketAddr::new(relay_ip.bind, port);
        let user: Box<str> = auth.user.into();
        let burst = bucket_capacity(self.cfg.max_bps);
        self.allocs[id.index()] = Some(Allocation {
            client: from,
            username: auth.username.into(),
            user,
            key: auth.key,
            public: SocketAddr::new(relay_ip.public, port),
            bind,
            state: State::Opening { txid, attempts: 0 },
            lifetime,
            expires: Millis::NEVER,
            allocate_txid: txid,
            allocate_response: Vec::new(),
            perms: Vec::new(),
            channels: Vec::new(),
            up: Bucket {
                tokens: burst,
                last: now,
            },
            down: Bucket {
                tokens: burst,
                last: now,
            },
            packets: 0,
            bytes: 0,
            tcp,
        });
        self.by_client.insert(from, id);
        self.commands.push_back(Command::OpenRelay {
            relay: id,
            bind,
            tcp,
        });
        Ok(())
    }

    /// The granted lifetime (seconds) for a requested one: capped at the maximum, raised to
    /// the default; 0 stays 0 (delete).
    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let default = self.cfg.default_lifetime.min(self.cfg.max_lifetime);
        match requested {
            Some(secs) => match secs.min(self.cfg.max_lifetime) {
                0 => 0,
                secs => secs.max(default),
            },
            None => default,
        }
    }

    /// The active allocation of `from`, with the request authenticated by its credentials
    /// (Refresh, CreatePermission, ChannelBind, Connect).
    fn on_allocation(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        now: Millis,
    ) -> Result<(RelayId, [u8; 16]), Refusal> {
        let Some(&id) = self.by_client.get(&from) else {
            return Err((reject(437, "Allocation Mismatch"), None));
        };
        let (username, key) = match self.allocs.get(id.index()) {
            Some(Some(a)) if matches!(a.state, State::Active) => (a.username.clone(), a.key),
            _ => return Err((reject(437, "Allocation Mismatch"), None)),
        };
        self.authenticate_as(from, creds, now, &username, key)
            .map_err(|r| (r, None))?;
        Ok((id, key))
    }

    /// A success response signed with the allocation's key.
    fn succeed(
        &mut self,
        to: Client,
        method: Method,
        txid: TransactionId,
        mut setters: Vec<Box<dyn Setter>>,
        key: [u8; 16],
    ) {
        self.push_software(&mut setters);
        let bytes = build(method, CLASS_SUCCESS_RESPONSE, txid, setters, Some(&key));
        self.reply(to, bytes);
    }

    /// Refresh (RFC 8656 §7): a new lifetime, or 0 to delete the allocation.
    fn refresh(
        &mut self,
        from: Client,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        requested: Option<u32>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let lifetime = self.lifetime(requested);
        if lifetime == 0 {
            self.remove(id, EndReason::ClientDeleted);
        } else if let Some(Some(a)) = self.allocs.get_mut(id.index()) {
            a.expires = now.after_secs(lifetime);
        }
        let setters: Vec<Box<dyn Setter>> =
            vec![Box::new(Lifetime(Duration::from_secs(lifetime as u64)))];
        self.succeed(from, METHOD_REFRESH, txid, setters, key);
        Ok(())
    }

    /// Refuse peers the filter refuses (403, whatever their family), then peers of the
    /// other family than the relay (443).
    fn check_peers(
        &mut self,
        id: RelayId,
        key: [u8; 16],
        peers: &[SocketAddr],
    ) -> Result<(), Refusal> {
        let relay_v4 = match self.allocs.get(id.index()) {
            Some(Some(a)) => a.public.is_ipv4(),
            _ => return Err((reject(437, "Allocation Mismatch"), Some(key))),
        };
        for p in peers {
            if self.cfg.filter.check(p.ip()) != Verdict::Allowed {
                self.metrics.peers_refused.inc();
                return Err((
                    reject(403, "Forbidden: peer address not allowed"),
                    Some(key),
                ));
            }
        }
        if peers.iter().any(|p| p.is_ipv4() != relay_v4) {
            return Err((reject(443, "Peer Address Family Mismatch"), Some(key)));
        }
        Ok(())
    }

    /// Install or refresh permissions for `peers` on allocation `id` (within the quota).
    fn permit(
        &mut self,
        id: RelayId,
        key: [u8; 16],
        peers: &[SocketAddr],
        now: Millis,
    ) -> Result<(), Refusal> {
        let perm_exp = now.after_secs(self.cfg.permission_lifetime);
        let max = self.cfg.max_permissions as usize;
        let Some(Some(a)) = self.allocs.get_mut(id.index()) else {
            return Err((reject(437, "Allocation Mismatch"), Some(key)));
        };
        let new = peers
            .iter()
            .filter(|p| !a.perms.iter().any(|(ip, _)| *ip == p.ip()))
            .count();
        if a.perms.len() + new > max {
            self.metrics.quota(Quota::Permissions).inc();
            return Err((reject(508, "Insufficient Capacity: permissions"), Some(key)));
        }
        for p in peers {
            match a.perms.iter_mut().find(|(ip, _)| *ip == p.ip()) {
                Some(entry) => entry.1 = perm_exp,
                None => a.perms.push((p.ip(), perm_exp)),
            }
        }
        Ok(())
    }

    /// CreatePermission (RFC 8656 §9).
    fn create_permission(
        &mut self,
        from: Client,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        peers: Option<Vec<SocketAddr>>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let peers = match peers {
            Some(p) if !p.is_empty() => p,
            _ => return Err((reject(400, "Bad Request: XOR-PEER-ADDRESS"), Some(key))),
        };
        self.check_peers(id, key, &peers)?;
        self.permit(id, key, &peers, now)?;
        self.succeed(from, METHOD_CREATE_PERMISSION, txid, Vec::new(), key);
        Ok(())
    }

    /// ChannelBind (RFC 8656 §12): binds (or refreshes) a channel number to one peer, and
    /// installs or refreshes that peer's permission.
    #[allow(clippy::too_many_arguments)]
    fn channel_bind(
        &mut self,
        from: Client,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        number: Option<u16>,
        peer: Option<SocketAddr>,
        now: Millis,
    ) -> Result<(), Refusal> {
        if matches!(self.allocs.get(id.index()), Some(Some(a)) if a.tcp) {
            return Err((
                reject(400, "Bad Request: no channels on a TCP relay"),
                Some(key),
            ));
        }
        let Some(peer) = peer else {
            return Err((reject(400, "Bad Request: XOR-PEER-ADDRESS"), Some(key)));
        };
        self.check_peers(id, key, &[peer])?;
        let Some(number) = number.filter(|n| (0x4000..=0x7FFF).contains(n)) else {
            return Err((reject(400, "Bad Request: CHANNEL-NUMBER"), Some(key)));
        };
        let chan_exp = now.after_secs(self.cfg.channel_lifetime);
        let max = self.cfg.max_permissions as usize;
        let Some(Some(a)) = self.allocs.get_mut(id.index()) else {
            return Err((reject(437, "Allocation Mismatch"), Some(key)));
        };
        let by_num = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        match (by_num, by_peer) {
            (Some(i), Some(j)) if i == j => a.channels[i].expires = chan_exp,
            (None, None) => {
                if a.channels.len() >= max {
                    self.metrics.quota(Quota::Permissions).inc();
                    return Err((reject(508, "Insufficient Capacity: channels"), Some(key)));
                }
                a.channels.push(Channel {
                    number,
                    peer,
                    expires: chan_exp,
                });
            }
            _ => {
                return Err((
                    reject(400, "Bad Request: channel bound to another peer"),
                    Some(key),
                ));
            }
        }
        self.permit(id, key, &[peer], now)?;
        self.succeed(from, METHOD_CHANNEL_BIND, txid, Vec::new(), key);
        Ok(())
    }
}
// -------------------------------------------------------------------- RFC 6062 TCP relays

impl Server {
    /// A CONNECTION-ID not in use, naming this worker.
    fn new_conn_id(&mut self) -> ConnId {
        loop {
            self.next_conn = (self.next_conn + 1) & 0x00FF_FFFF;
            let id = ConnId((u32::from(self.worker) << 24) | self.next_conn);
            if self.next_conn != 0 && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    fn tcp_connections(&self, relay: RelayId) -> usize {
        self.conns.values().filter(|c| c.relay == relay).count()
    }

    /// Connect (RFC 6062 §5.2) on allocation `id`, authenticated: check the peer, install its
    /// permission and ask the I/O layer to connect; the answer waits for
    /// [`Server::peer_connected`].
    fn connect(
        &mut self,
        id: RelayId,
        key: [u8; 16],
        txid: TransactionId,
        peer: Option<SocketAddr>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let key = Some(key);
        let (tcp, relay_v4, bind) = match self.allocs.get(id.index()) {
            Some(Some(a)) => (a.tcp, a.public.is_ipv4(), a.bind),
            _ => return Err((reject(437, "Allocation Mismatch"), key)),
        };
        if !tcp {
            return Err((reject(400, "Bad Request: Connect needs a TCP relay"), key));
        }
        let Some(peer) = peer else {
            return Err((reject(400, "Bad Request: XOR-PEER-ADDRESS"), key));
        };
        if self.cfg.filter.check(peer.ip()) != Verdict::Allowed {
            self.metrics.peers_refused.inc();
            return Err((reject(403, "Forbidden: peer address not allowed"), key));
        }
        if peer.is_ipv4() != relay_v4 {
            return Err((reject(443, "Peer Address Family Mismatch"), key));
        }
        if self.conns.values().any(|c| c.relay == id && c.peer == peer) {
            return Err((reject(446, "Connection Already Exists"), key));
        }
        if self.tcp_connections(id) >= MAX_TCP_CONNECTIONS {
            self.metrics.quota(Quota::Permissions).inc();
            return Err((reject(508, "Insufficient Capacity: connections"), key));
        }
        let perm_exp = now.after_secs(self.cfg.permission_lifetime);
        let max = self.cfg.max_permissions as usize;
        let Some(Some(a)) = self.allocs.get_mut(id.index()) else {
            return Err((reject(437, "Allocation Mismatch"), key));
        };
        let full = a.perms.len() >= max;
        match a.perms.iter_mut().find(|(ip, _)| *ip == peer.ip()) {
            Some(entry) => entry.1 = entry.1.max(perm_exp),
            None if full => {
                self.metrics.quota(Quota::Permissions).inc();
                return Err((reject(508, "Insufficient Capacity: permissions"), key));
            }
            None => a.perms.push((peer.ip(), perm_exp)),
        }
        let cid = self.new_conn_id();
        self.conns.insert(
            cid,
            PeerConn {
                relay: id,
                peer,
                state: PeerConnState::Connecting { txid },
            },
        );
        self.commands.push_back(Command::ConnectPeer {
            id: cid,
            bind,
            peer,
        });
        Ok(())
    }

    /// The I/O layer's answer to [`Command::ConnectPeer`]: answers the client's Connect.
    /// `false` when the connection is not wanted (any more): the I/O layer closes it.
    pub fn peer_connected(&mut self, id: ConnId, ok: bool, now: Millis) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        let PeerConnState::Connecting { txid } = c.state else {
            return false;
        };
        let (client, key) = match self.allocs.get(c.relay.index()) {
            Some(Some(a)) => (a.client, a.key),
            _ => {
                self.conns.remove(&id);
                return false;
            }
        };
        let bytes = if ok {
            c.state = PeerConnState::Waiting {
                deadline: now.after_ms(CONNECTION_BIND_TIMEOUT_MS),
            };
            let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(ConnectionId(id))];
            if let Some(s) = &self.cfg.software {
                setters.push(Box::new(TextAttribute::new(ATTR_SOFTWARE, s.clone())));
            }
            build(
                METHOD_CONNECT,
                CLASS_SUCCESS_RESPONSE,
                txid,
                setters,
                Some(&key),
            )
        } else {
            self.conns.remove(&id);
            error_response(
                METHOD_CONNECT,
                txid,
                &reject(447, "Connection Timeout or Failure"),
                None,
                Some(&key),
            )
        };
        self.reply(client, bytes);
        ok
    }

    /// A peer opened a TCP connection to the relay of `relay` (RFC 6062 §5.3). With a
    /// permission for its address (and the peer filter's consent), the client is told with a
    /// ConnectionAttempt and the connection waits for its ConnectionBind under the returned
    /// id; `None`: the I/O layer closes it.
    pub fn peer_accepted(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        now: Millis,
    ) -> Option<ConnId> {
        let Some(Some(a)) = self.allocs.get(relay.index()) else {
            return None;
        };
        if !a.tcp || !matches!(a.state, State::Active) {
            return None;
        }
        if self.cfg.filter.check(peer.ip()) != Verdict::Allowed {
            self.metrics.peers_refused.inc();
            return None;
        }
        if !a.permitted(peer.ip(), now)
            || self.tcp_connections(relay) >= MAX_TCP_CONNECTIONS
            || self
                .conns
                .values()
                .any(|c| c.relay == relay && c.peer == peer)
        {
            self.stats.dropped += 1;
            return None;
        }
        let client = a.client;
        let id = self.new_conn_id();
        self.conns.insert(
            id,
            PeerConn {
                relay,
                peer,
                state: PeerConnState::Waiting {
                    deadline: now.after_ms(CONNECTION_BIND_TIMEOUT_MS),
                },
            },
        );
        let txid = next_txid(&mut self.data_txid);
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(ConnectionId(id)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
        ];
        let bytes = build(
            METHOD_CONNECTION_ATTEMPT,
            CLASS_INDICATION,
            txid,
            setters,
            None,
        );
        self.reply(client, bytes);
        Some(id)
    }

    /// ConnectionBind (RFC 6062 §5.4) on a new client connection: with the allocation's
    /// credentials and a waiting CONNECTION-ID, the I/O layer joins the two connections.
    fn connection_bind(
        &mut self,
        from: Client,
        creds: &mut Credentials,
        txid: TransactionId,
        id: Option<ConnId>,
        now: Millis,
    ) -> Result<(), Refusal> {
        if !from.is_stream() {
            return Err((
                reject(400, "Bad Request: ConnectionBind needs TCP or TLS"),
                None,
            ));
        }
        if self.by_client.contains_key(&from) {
            return Err((
                reject(400, "Bad Request: ConnectionBind on a control connection"),
                None,
            ));
        }
        let id = id.ok_or((reject(400, "Bad Request: CONNECTION-ID"), None))?;
        let relay = match self.conns.get(&id) {
            Some(c) if matches!(c.state, PeerConnState::Waiting { .. }) => c.relay,
            _ => return Err((reject(400, "Bad Request: unknown CONNECTION-ID"), None)),
        };
        let (username, key) = match self.allocs.get(relay.index()) {
            Some(Some(a)) => (a.username.clone(), a.key),
            _ => return Err((reject(400, "Bad Request: unknown CONNECTION-ID"), None)),
        };
        self.authenticate_as(from, creds, now, &username, key)
            .map_err(|r| (r, None))?;
        if let Some(c) = self.conns.get_mut(&id) {
            c.state = PeerConnState::Piped;
        }
        let mut setters: Vec<Box<dyn Setter>> = Vec::new();
        if let Some(s) = &self.cfg.software {
            setters.push(Box::new(TextAttribute::new(ATTR_SOFTWARE, s.clone())));
        }
        let response = build(
            METHOD_CONNECTION_BIND,
            CLASS_SUCCESS_RESPONSE,
            txid,
            setters,
            Some(&key),
        );
        self.commands.push_back(Command::BindConnection {
            to: from,
            relay,
            id,
            response,
        });
        Ok(())
    }

    /// A pipe made for [`Command::BindConnection`] ended (either side closed, or it could
    /// not be set up): the allocation may open another connection in its place.
    pub fn pipe_closed(&mut self, id: ConnId) {
        if self
            .conns
            .get(&id)
            .is_some_and(|c| matches!(c.state, PeerConnState::Piped))
        {
            self.conns.remove(&id);
        }
    }

    /// RFC 6062 connections in every state (tests and metrics).
    pub fn tcp_connection_count(&self) -> usize {
        self.conns.len()
    }
}

/// The CONNECTION-ID attribute (RFC 6062 §6.2.1).
struct ConnectionId(ConnId);

impl Setter for ConnectionId {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(ATTR_CONNECTION_ID, &self.0.0.to_be_bytes());
        Ok(())
    }
}

/// The transaction id of the next indication we originate (Data, ConnectionAttempt): a
/// counter from a random seed in the low 8 bytes.
#[inline]
fn next_txid(counter: &mut u64) -> TransactionId {
    *counter = counter.wrapping_add(1);
    let mut txid = [0u8; 12];
    txid[4..].copy_from_slice(&counter.to_be_bytes());
    TransactionId(txid)
}

/// Burst allowance: one second of traffic at `max_bps` bytes/s (at least one full-size datagram).
fn bucket_capacity(max_bps: u64) -> u64 {
    max_bps.max(wire::MAX_PAYLOAD as u64)
}

/// Take `len` bytes from a token bucket refilled at `max_bps`; `true` when allowed.
fn take(b: &mut Bucket, max_bps: u64, len: usize, now: Millis) -> bool {
    if max_bps == 0 {
        return true;
    }
    let elapsed = now.since(b.last);
    if elapsed > 0 {
        let refill = elapsed.saturating_mul(max_bps) / 1000;
        b.tokens = (b.tokens.saturating_add(refill)).min(bucket_capacity(max_bps));
        b.last = now;
    }
    if b.tokens >= len as u64 {
        b.tokens -= len as u64;
        true
    } else {
        false
    }
}

/// Encode a message with the stun crate: type, transaction id, attributes, then
/// MESSAGE-INTEGRITY (when `key`) and FINGERPRINT.
fn build(
    method: Method,
    class: stun::message::MessageClass,
    txid: TransactionId,
    mut setters: Vec<Box<dyn Setter>>,
    key: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut all: Vec<Box<dyn Setter>> = Vec::with_capacity(setters.len() + 4);
    all.push(Box::new(txid));
    all.push(Box::new(MessageType::new(method, class)));
    all.append(&mut setters);
    if let Some(key) = key {
        all.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    all.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    // The setters only fail on oversized attributes, which we never build; an empty answer
    // is dropped by the I/O layer rather than panicking.
    if m.build(&all).is_err() {
        return Vec::new();
    }
    m.raw
}

fn error_response(
    method: Method,
    txid: TransactionId,
    r: &Reject,
    challenge: Option<(&str, &str)>,
    key: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(ErrorCodeAttribute {
        code: ErrorCode(r.code),
        reason: r.reason.as_bytes().to_vec(),
    })];
    if let Some((realm, nonce)) = challenge {
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.to_string())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_string())));
    }
    // 401/438 answers are sent before authentication succeeded: no integrity on them.
    let key = if challenge.is_some() { None } else { key };
    build(method, CLASS_ERROR_RESPONSE, txid, setters, key)
}
