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
//!
//! Layout: this file holds the public API (ids, the clock, [`Command`], [`Forward`]), the
//! data path, timers and the allocation lifecycle; `request` decodes a control request once,
//! `control` has one handler per request, `tcp_alloc` is RFC 6062, `allocation` holds
//! allocation state, token buckets and the quota ledger, `response` encodes answers.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use stun::message::{CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, Setter};
use stun::xoraddr::XorMappedAddress;
use turn::proto::lifetime::Lifetime;
use turn::proto::relayaddr::RelayedAddress;

use crate::auth::NonceKey;
use crate::metrics::{Metrics, Quota};
use crate::peer_filter::{PeerFilter, Verdict};
use crate::wire::{self, Kind};

mod allocation;
mod control;
mod request;
mod response;
mod tcp_alloc;

pub use allocation::{AllocationLedger, QuotaRefusal};
pub use tcp_alloc::{CONNECTION_BIND_TIMEOUT_MS, MAX_TCP_CONNECTIONS};

use allocation::{Allocation, State, take};
use control::reject;
use request::{Credentials, Request};
use response::{build, error_response, next_txid, software};
use tcp_alloc::{PeerConn, PeerConnState};

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
            software(&self.cfg.software, &mut setters);
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
}
