//! A stateful fuzz target for the authenticated handlers. Random bytes rarely carry a valid
//! MESSAGE-INTEGRITY, so `server_input` stops at the 401. Here the input is read as a script
//! of operations by clients that hold REST credentials minted from the configured secret,
//! learn their nonce from the server's challenges and sign every request, so they get
//! allocations and reach Allocate, Refresh, CreatePermission, ChannelBind, Send, ChannelData,
//! peer data and the RFC 6062 requests; a few operations tamper with a signed request or use
//! a wrong key. The harness plays the I/O layer and keeps a model of what the server granted,
//! and checks after every step:
//! - every answer decodes, has a valid FINGERPRINT, answers a request of ours with its
//!   method, and when signed, verifies under the client's key;
//! - no datagram is relayed to or from a peer without a live permission (Send, peer data)
//!   or a live channel binding (ChannelData), nor to a peer the filter refuses, and no TCP
//!   connection is dialled to a refused peer;
//! - quotas hold: allocations per user and in total, permissions per allocation, and the
//!   bandwidth cap (bytes relayed each way within the token bucket's bound);
//! - relay addresses lie in the configured port range.
//!
//! Panics on a violated invariant, as a crash for cargo-fuzz and a failure for the bounded
//! property test in `fuzzing.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hermes_proto::turn_credentials::TurnCredentials;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_CONNECTION_ID, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CONNECT, METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::{PROTO_TCP, PROTO_UDP};

use crate::metrics::Metrics;
use crate::peer_filter::Verdict;
use crate::server::{
    AllocationLedger, Client, Command, ConnId, CoreConfig, Event, Forward, Millis, RelayId,
    RelayIp, Server, Via,
};
use crate::wire;

const SECRET: &[u8] = b"fuzz-secret";
const REALM: &str = "fuzz.test";
const T0: u64 = 1_700_000_000_000;
const MIN_PORT: u16 = 50_000;
const MAX_PORT: u16 = 50_007;
const USER_QUOTA: u32 = 2;
const TOTAL_QUOTA: u32 = 3;
const MAX_PERMISSIONS: u32 = 3;
const MAX_BPS: u64 = 2_000;
const PERMISSION_SECS: u32 = 300;
const CHANNEL_SECS: u32 = 600;
/// Operations per input: bounds the run whatever the input length.
const MAX_OPS: usize = 256;

/// Peers the scripts talk to: allowed loopback ones (the filter allows loopback here) and
/// special-purpose ones the filter refuses.
const PEERS: [&str; 8] = [
    "127.0.0.1:7000",
    "127.0.0.2:7001",
    "127.0.0.3:7002",
    "127.0.0.4:7003",
    "10.0.0.1:7004",
    "169.254.1.1:7005",
    "0.0.0.0:7006",
    "[::1]:7007",
];

/// Reads the script; zeros once the input runs out.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn peer(&mut self) -> SocketAddr {
        let i = self.u8() as usize % PEERS.len();
        PEERS[i]
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7000)))
    }
}

/// What the harness believes the server granted one client.
#[derive(Default)]
struct Granted {
    relay: Option<SocketAddr>,
    /// Peer IP → permission expiry.
    perms: HashMap<IpAddr, Millis>,
    /// Channel number → (peer, expiry).
    channels: HashMap<u16, (SocketAddr, Millis)>,
    /// Bytes relayed each way since the allocation began, and when it began.
    up: u64,
    down: u64,
    since: Millis,
}

/// A request in flight: what it asked for.
struct Pending {
    method: Method,
    peers: Vec<SocketAddr>,
    channel: Option<u16>,
    /// Tampered with or signed with a wrong key: must be refused.
    must_fail: bool,
}

struct Scripted {
    addr: Client,
    username: String,
    key: [u8; 16],
    nonce: String,
    txn: u32,
    granted: Granted,
    pending: HashMap<TransactionId, Pending>,
}

impl Scripted {
    fn new(addr: Client, user: &str, now: Millis) -> Self {
        let creds = TurnCredentials::mint(SECRET, user, now.unix_secs(), 86_400);
        let key = crate::auth::long_term_key(SECRET, &creds.username, REALM);
        Self {
            addr,
            username: creds.username,
            key,
            nonce: String::new(),
            txn: 0,
            granted: Granted::default(),
            pending: HashMap::new(),
        }
    }

    /// A request signed with this client's long-term key (or `wrong_key`).
    fn request(
        &mut self,
        method: Method,
        attrs: Vec<Box<dyn Setter>>,
        pending: Pending,
        wrong_key: bool,
    ) -> Vec<u8> {
        self.txn += 1;
        let mut txid = [0u8; 12];
        txid[..4].copy_from_slice(&self.txn.to_be_bytes());
        txid[4..6].copy_from_slice(&self.addr.addr.port().to_be_bytes());
        let txid = TransactionId(txid);
        let mut key = self.key.to_vec();
        if wrong_key {
            key[0] ^= 1;
        }
        let mut all: Vec<Box<dyn Setter>> = vec![
            Box::new(txid),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        all.extend(attrs);
        all.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            self.username.clone(),
        )));
        all.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.into())));
        all.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
        all.push(Box::new(MessageIntegrity(key)));
        all.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        if m.build(&all).is_err() {
            return Vec::new();
        }
        self.pending.insert(txid, pending);
        m.raw
    }

    fn permitted(&self, ip: IpAddr, now: Millis) -> bool {
        self.granted.perms.get(&ip).is_some_and(|&exp| exp > now)
    }

    fn forget_allocation(&mut self) {
        self.granted = Granted::default();
    }
}

/// How far one script got: successes per request and data relayed, so the property test
/// can show the authenticated handlers were reached.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    pub allocate: u32,
    pub refresh: u32,
    pub create_permission: u32,
    pub channel_bind: u32,
    pub connect: u32,
    pub connection_bind: u32,
    pub send_relayed: u32,
    pub channel_data_relayed: u32,
    pub peer_data_relayed: u32,
    pub tampered_refused: u32,
    pub quota_refused: u32,
}

impl std::ops::AddAssign for Reached {
    fn add_assign(&mut self, o: Reached) {
        self.allocate += o.allocate;
        self.refresh += o.refresh;
        self.create_permission += o.create_permission;
        self.channel_bind += o.channel_bind;
        self.connect += o.connect;
        self.connection_bind += o.connection_bind;
        self.send_relayed += o.send_relayed;
        self.channel_data_relayed += o.channel_data_relayed;
        self.peer_data_relayed += o.peer_data_relayed;
        self.tampered_refused += o.tampered_refused;
        self.quota_refused += o.quota_refused;
    }
}

struct Harness {
    reached: Reached,
    s: Server,
    ledger: Arc<AllocationLedger>,
    cfg: CoreConfig,
    now: Millis,
    clients: Vec<Scripted>,
    /// RFC 6062 connections the server asked us to dial: id → peer.
    dialled: Vec<(ConnId, SocketAddr)>,
    /// Connection ids announced (ConnectionAttempt) or connected, waiting for a bind.
    conn_ids: Vec<ConnId>,
    piped: Vec<ConnId>,
    /// Relay sockets open: id and address (what the I/O layer would hold).
    relays: Vec<(RelayId, SocketAddr)>,
    /// OpenRelay commands seen.
    opens: u32,
}

fn pending(method: Method) -> Pending {
    Pending {
        method,
        peers: Vec::new(),
        channel: None,
        must_fail: false,
    }
}

impl Harness {
    fn new() -> Self {
        let relay = RelayIp {
            bind: [127, 0, 0, 1].into(),
            public: [127, 0, 0, 1].into(),
        };
        let mut cfg = CoreConfig::new(REALM, SECRET, Some(relay));
        cfg.filter.allow_loopback = true;
        cfg.min_port = MIN_PORT;
        cfg.max_port = MAX_PORT;
        cfg.user_quota = USER_QUOTA;
        cfg.total_quota = TOTAL_QUOTA;
        cfg.max_permissions = MAX_PERMISSIONS;
        cfg.max_bps = MAX_BPS;
        cfg.permission_lifetime = PERMISSION_SECS;
        cfg.channel_lifetime = CHANNEL_SECS;
        let ledger = Arc::new(AllocationLedger::default());
        let s = Server::new(cfg.clone(), [3; 32], 7, Arc::new(Metrics::default()))
            .with_ledger(ledger.clone());
        let now = Millis(T0);
        let udp = |port| Client::udp(0, SocketAddr::from(([127, 0, 0, 1], port)));
        let stream = |id, port| Client {
            via: Via::Stream(id),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // Three UDP clients of one user (user quota 2), one of another, a TCP control
        // connection and a TCP data connection of a third (same credentials as the control).
        let clients = vec![
            Scripted::new(udp(40_001), "alice", now),
            Scripted::new(udp(40_002), "alice", now),
            Scripted::new(udp(40_003), "alice", now),
            Scripted::new(udp(40_004), "bob", now),
            Scripted::new(stream(1, 40_005), "carol", now),
            Scripted::new(stream(2, 40_006), "carol", now),
        ];
        Self {
            reached: Reached::default(),
            s,
            ledger,
            cfg,
            now,
            clients,
            dialled: Vec::new(),
            conn_ids: Vec::new(),
            piped: Vec::new(),
            relays: Vec::new(),
            opens: 0,
        }
    }

    fn allowed(&self, peer: SocketAddr) -> bool {
        self.cfg.filter.check(peer.ip()) == Verdict::Allowed
    }

    fn client_index(&self, c: Client) -> usize {
        self.clients
            .iter()
            .position(|s| s.addr == c)
            .unwrap_or_else(|| panic!("answer to an unknown client {c:?}"))
    }

    /// Send client `i`'s packet and check what comes back.
    fn send(&mut self, i: usize, bytes: &[u8]) {
        let from = self.clients[i].addr;
        let f = self.s.handle_client(from, bytes, self.now);
        if let Forward::ToPeer { peer, range, .. } = f {
            assert!(range.end <= bytes.len(), "range outside the packet");
            assert!(self.allowed(peer), "relayed to refused peer {peer}");
            let c = &mut self.clients[i];
            let is_channel = matches!(wire::classify(bytes), Some(wire::Kind::ChannelData { .. }));
            if is_channel {
                let number = u16::from_be_bytes([bytes[0], bytes[1]]);
                let bound = c.granted.channels.get(&number);
                assert!(
                    bound.is_some_and(|&(p, exp)| p == peer && exp > self.now),
                    "ChannelData relayed to {peer} without a live channel binding"
                );
                self.reached.channel_data_relayed += 1;
            } else {
                assert!(
                    c.permitted(peer.ip(), self.now),
                    "Send indication relayed to {peer} without a live permission"
                );
                self.reached.send_relayed += 1;
            }
            c.granted.up += range.len() as u64;
            check_bandwidth(c.granted.up, c.granted.since, self.now);
        }
        self.run();
    }

    /// A datagram from `peer` to client `i`'s relay.
    fn peer_datagram(&mut self, i: usize, peer: SocketAddr, len: usize) {
        let Some(relay) = self.clients[i].granted.relay else {
            return;
        };
        let Some(id) = self.relay_id(relay) else {
            return;
        };
        let mut buf = vec![0u8; wire::BUF_LEN];
        let f = self.s.handle_peer(id, peer, &mut buf, len, self.now);
        if let Forward::ToClient { to, range } = f {
            let c = &mut self.clients[i];
            assert_eq!(to, c.addr, "peer data sent to another client");
            assert!(
                c.permitted(peer.ip(), self.now),
                "peer data from {peer} relayed without a live permission"
            );
            assert!(range.end <= buf.len());
            c.granted.down += len as u64;
            self.reached.peer_data_relayed += 1;
            check_bandwidth(c.granted.down, c.granted.since, self.now);
        }
        self.run();
    }

    /// The relay id of a relay address, from the OpenRelay commands seen.
    fn relay_id(&self, relay: SocketAddr) -> Option<RelayId> {
        self.relays
            .iter()
            .find(|(_, a)| *a == relay)
            .map(|(id, _)| *id)
    }

    /// Play the I/O layer until the core has nothing more to say.
    fn run(&mut self) {
        while let Some(c) = self.s.poll_command() {
            match c {
                Command::ToClient { to, bytes } => self.answer(to, &bytes),
                Command::OpenRelay { relay, bind, .. } => {
                    assert!((MIN_PORT..=MAX_PORT).contains(&bind.port()), "relay port");
                    // Every eighth bind fails, as when another process holds the port.
                    let ok = self.opens % 8 != 7;
                    self.opens += 1;
                    if ok {
                        self.relays.retain(|(id, _)| *id != relay);
                        self.relays.push((relay, bind));
                    }
                    self.s.relay_opened(relay, ok, self.now);
                }
                Command::CloseRelay { relay } => {
                    self.relays.retain(|(id, _)| *id != relay);
                }
                Command::ConnectPeer { id, peer, .. } => {
                    assert!(self.allowed(peer), "dialled refused peer {peer}");
                    self.dialled.push((id, peer));
                }
                Command::BindConnection {
                    to, id, response, ..
                } => {
                    self.answer(to, &response);
                    self.conn_ids.retain(|c| *c != id);
                    self.piped.push(id);
                }
                Command::DropPeer { id } => {
                    self.conn_ids.retain(|c| *c != id);
                    self.dialled.retain(|(c, _)| *c != id);
                }
                Command::Event(Event::Ended { relay, .. }) => {
                    for c in &mut self.clients {
                        if c.granted.relay == Some(relay) {
                            c.forget_allocation();
                        }
                    }
                }
                Command::Event(_) => {}
            }
        }
        assert!(
            self.s.allocation_count() <= TOTAL_QUOTA as usize,
            "total quota"
        );
        assert!(self.ledger.total() <= TOTAL_QUOTA, "ledger total quota");
        let alice = self.clients[..3]
            .iter()
            .filter(|c| c.granted.relay.is_some())
            .count();
        assert!(alice <= USER_QUOTA as usize, "user quota");
        for c in &self.clients {
            assert!(
                c.granted.perms.len() <= MAX_PERMISSIONS as usize,
                "permission quota"
            );
        }
    }

    /// Check an answer to client `to` and fold what it grants into the model.
    fn answer(&mut self, to: Client, bytes: &[u8]) {
        let i = self.client_index(to);
        let now = self.now;
        let mut m = Message::new();
        assert!(m.unmarshal_binary(bytes).is_ok(), "undecodable answer");
        assert!(
            FINGERPRINT.check(&m).is_ok(),
            "answer without a valid FINGERPRINT"
        );
        let c = &mut self.clients[i];
        if m.typ.class != CLASS_SUCCESS_RESPONSE && m.typ.class != CLASS_ERROR_RESPONSE {
            // ConnectionAttempt (RFC 6062 §5.3): a peer connected to our TCP relay.
            let mut id = [0u8; 4];
            if let Ok(v) = m.get(ATTR_CONNECTION_ID)
                && v.len() == 4
            {
                id.copy_from_slice(&v);
                self.conn_ids.push(ConnId(u32::from_be_bytes(id)));
            }
            return;
        }
        let p = c
            .pending
            .remove(&m.transaction_id)
            .unwrap_or_else(|| panic!("answer to a transaction we did not start: {m}"));
        assert_eq!(m.typ.method, p.method, "answer names another method");
        if m.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY) {
            assert!(
                MessageIntegrity(c.key.to_vec()).check(&mut m).is_ok(),
                "signed answer does not verify under the client's key"
            );
        }
        if m.typ.class == CLASS_ERROR_RESPONSE {
            let mut e = ErrorCodeAttribute::default();
            assert!(e.get_from(&m).is_ok(), "error response without ERROR-CODE");
            if let Ok(n) = TextAttribute::get_from_as(&m, ATTR_NONCE) {
                c.nonce = n.text;
            }
            if p.must_fail {
                self.reached.tampered_refused += 1;
            }
            if matches!(e.code.0, 486 | 508) {
                self.reached.quota_refused += 1;
            }
            // A Connect whose dial failed (447) keeps the permission it installed.
            if p.method == METHOD_CONNECT && e.code.0 == 447 {
                for peer in &p.peers {
                    c.granted
                        .perms
                        .insert(peer.ip(), now.after_secs(PERMISSION_SECS));
                }
            }
            return;
        }
        assert!(
            !p.must_fail,
            "a tampered or wrongly signed request succeeded: {m}"
        );
        assert!(
            m.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY),
            "unsigned success answer to an authenticated request"
        );
        let r = &mut self.reached;
        match p.method {
            METHOD_ALLOCATE => {
                r.allocate += 1;
                let mut r = RelayedAddress::default();
                assert!(r.get_from(&m).is_ok(), "Allocate success without a relay");
                let relay = SocketAddr::new(r.ip, r.port);
                assert!((MIN_PORT..=MAX_PORT).contains(&relay.port()));
                c.forget_allocation();
                c.granted.relay = Some(relay);
                c.granted.since = now;
            }
            METHOD_REFRESH => {
                r.refresh += 1;
                let mut l = Lifetime::default();
                assert!(l.get_from(&m).is_ok(), "Refresh success without LIFETIME");
                if l.0.is_zero() {
                    c.forget_allocation();
                }
            }
            METHOD_CREATE_PERMISSION | METHOD_CONNECT => {
                if p.method == METHOD_CONNECT {
                    r.connect += 1;
                } else {
                    r.create_permission += 1;
                }
                for peer in &p.peers {
                    c.granted
                        .perms
                        .insert(peer.ip(), now.after_secs(PERMISSION_SECS));
                }
            }
            METHOD_CHANNEL_BIND => {
                r.channel_bind += 1;
                for peer in &p.peers {
                    c.granted
                        .perms
                        .insert(peer.ip(), now.after_secs(PERMISSION_SECS));
                    if let Some(n) = p.channel {
                        c.granted
                            .channels
                            .insert(n, (*peer, now.after_secs(CHANNEL_SECS)));
                    }
                }
            }
            METHOD_CONNECTION_BIND => r.connection_bind += 1,
            _ => {}
        }
        // Expired permissions no longer count towards the quota on the server's next tick;
        // the model keeps the live ones only.
        c.granted.perms.retain(|_, exp| *exp > now);
    }
}

/// Bytes relayed one way since `since` stay within the token bucket: one second's burst
/// (at least one full-size datagram) plus the rate over the elapsed time.
fn check_bandwidth(bytes: u64, since: Millis, now: Millis) {
    let burst = MAX_BPS.max(wire::MAX_PAYLOAD as u64);
    let bound = burst + now.since(since) * MAX_BPS / 1000 + 1;
    assert!(bytes <= bound, "bandwidth cap: {bytes} bytes > {bound}");
}

/// Run one script; panics on a broken invariant.
pub fn signed_session(data: &[u8]) -> Reached {
    let mut h = Harness::new();
    let mut input = Input { data, pos: 0 };
    // Each client learns its nonce from the challenge to an unsigned request.
    for i in 0..h.clients.len() {
        let c = &mut h.clients[i];
        let txid = TransactionId([0xEE, i as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        c.pending.insert(txid, pending(METHOD_ALLOCATE));
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(txid),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(FINGERPRINT),
        ];
        if m.build(&setters).is_ok() {
            h.send(i, &m.raw);
        }
    }
    for _ in 0..MAX_OPS {
        if input.done() {
            break;
        }
        step(&mut h, &mut input);
    }
    h.reached
}

fn step(h: &mut Harness, input: &mut Input<'_>) {
    let op = input.u8();
    let i = input.u8() as usize % h.clients.len();
    let now = h.now;
    match op % 14 {
        0 | 1 => {
            // Allocate: UDP, or TCP (from a stream client only), with a lifetime.
            let tcp = op & 0x10 != 0;
            let lifetime = u32::from(input.u8()) * 30;
            let attrs: Vec<Box<dyn Setter>> = vec![
                Box::new(RequestedTransport {
                    protocol: if tcp { PROTO_TCP } else { PROTO_UDP },
                }),
                Box::new(Lifetime(Duration::from_secs(u64::from(lifetime)))),
            ];
            let b = h.clients[i].request(METHOD_ALLOCATE, attrs, pending(METHOD_ALLOCATE), false);
            h.send(i, &b);
        }
        2 => {
            let secs = u64::from(input.u8() % 4) * 200;
            let attrs: Vec<Box<dyn Setter>> = vec![Box::new(Lifetime(Duration::from_secs(secs)))];
            let b = h.clients[i].request(METHOD_REFRESH, attrs, pending(METHOD_REFRESH), false);
            h.send(i, &b);
        }
        3 | 4 => {
            let n = 1 + input.u8() as usize % 3;
            let peers: Vec<SocketAddr> = (0..n).map(|_| input.peer()).collect();
            let attrs: Vec<Box<dyn Setter>> = peers
                .iter()
                .map(|p| {
                    Box::new(PeerAddress {
                        ip: p.ip(),
                        port: p.port(),
                    }) as Box<dyn Setter>
                })
                .collect();
            let mut p = pending(METHOD_CREATE_PERMISSION);
            p.peers = peers;
            let b = h.clients[i].request(METHOD_CREATE_PERMISSION, attrs, p, false);
            h.send(i, &b);
        }
        5 => {
            let peer = input.peer();
            // Mostly valid channel numbers, sometimes out of range.
            let number = if input.u8() < 230 {
                0x4000 + u16::from(input.u8() % 4)
            } else {
                input.u16()
            };
            let attrs: Vec<Box<dyn Setter>> = vec![
                Box::new(ChannelNumber(number)),
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ];
            let mut p = pending(METHOD_CHANNEL_BIND);
            p.peers = vec![peer];
            p.channel = Some(number);
            let b = h.clients[i].request(METHOD_CHANNEL_BIND, attrs, p, false);
            h.send(i, &b);
        }
        6 => {
            // Send indication (unsigned, as clients send them).
            let peer = input.peer();
            let len = usize::from(input.u16() % 1500);
            let setters: Vec<Box<dyn Setter>> = vec![
                Box::new(TransactionId([9; 12])),
                Box::new(MessageType::new(
                    stun::message::METHOD_SEND,
                    stun::message::CLASS_INDICATION,
                )),
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
                Box::new(Data(vec![0xAB; len])),
            ];
            let mut m = Message::new();
            if m.build(&setters).is_ok() {
                h.send(i, &m.raw);
            }
        }
        7 => {
            // ChannelData on one of the channel numbers the scripts bind.
            let number = 0x4000 + u16::from(input.u8() % 4);
            let len = usize::from(input.u16() % 1500);
            let mut b = vec![0u8; 4 + len];
            b[..2].copy_from_slice(&number.to_be_bytes());
            b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            h.send(i, &b);
        }
        8 => {
            let peer = input.peer();
            let len = usize::from(input.u16() % 1500);
            h.peer_datagram(i, peer, len);
        }
        9 => {
            // Time passes: a little (bucket refill), or enough for permissions, channels,
            // nonces and allocations to expire.
            let ms = match input.u8() % 4 {
                0 => u64::from(input.u8()),
                1 => u64::from(input.u16()),
                2 => 301_000,
                _ => 700_000,
            };
            h.now = now.after_ms(ms);
            h.s.handle_timeout(h.now);
            h.run();
            let now = h.now;
            for c in &mut h.clients {
                c.granted.perms.retain(|_, exp| *exp > now);
                c.granted.channels.retain(|_, (_, exp)| *exp > now);
            }
        }
        10 => {
            // RFC 6062 Connect from the TCP control connection.
            let peer = input.peer();
            let attrs: Vec<Box<dyn Setter>> = vec![Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })];
            let mut p = pending(METHOD_CONNECT);
            p.peers = vec![peer];
            // Success waits for the dial's outcome; the permission is installed already.
            let b = h.clients[4].request(METHOD_CONNECT, attrs, p, false);
            h.send(4, &b);
            if let Some((id, _)) = h.dialled.pop() {
                let ok = input.u8().is_multiple_of(2);
                let wanted = h.s.peer_connected(id, ok, h.now);
                if wanted {
                    h.conn_ids.push(id);
                }
                h.run();
            }
        }
        11 => {
            // A peer connects to the TCP relay, or the data connection binds one, or a pipe
            // ends.
            match input.u8() % 3 {
                0 => {
                    let peer = input.peer();
                    if let Some(relay) = h.clients[4].granted.relay
                        && let Some(id) = h.relay_id(relay)
                    {
                        let accepted = h.s.peer_accepted(id, peer, h.now);
                        if accepted.is_some() {
                            assert!(h.allowed(peer), "accepted a refused peer");
                            assert!(
                                h.clients[4].permitted(peer.ip(), h.now),
                                "accepted a peer without a permission"
                            );
                        }
                        h.run();
                    }
                }
                1 => {
                    let id = h
                        .conn_ids
                        .get(input.u8() as usize % h.conn_ids.len().max(1))
                        .copied()
                        .unwrap_or(ConnId(input.u16().into()));
                    let attrs: Vec<Box<dyn Setter>> = vec![Box::new(ConnIdAttr(id))];
                    let b = h.clients[5].request(
                        METHOD_CONNECTION_BIND,
                        attrs,
                        pending(METHOD_CONNECTION_BIND),
                        false,
                    );
                    h.send(5, &b);
                }
                _ => {
                    if let Some(id) = h.piped.pop() {
                        h.s.pipe_closed(id);
                    }
                }
            }
        }
        12 => {
            // A signed request with one byte flipped, or signed with a wrong key: never
            // granted anything.
            let peer = input.peer();
            let attrs: Vec<Box<dyn Setter>> = vec![Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })];
            let wrong_key = input.u8().is_multiple_of(2);
            let mut p = pending(METHOD_CREATE_PERMISSION);
            p.must_fail = true;
            let mut b = h.clients[i].request(METHOD_CREATE_PERMISSION, attrs, p, wrong_key);
            if !wrong_key && b.len() > 28 {
                // Flip a bit inside the XOR-PEER-ADDRESS value (covered by the HMAC, and
                // the FINGERPRINT recomputed so that only the integrity check can refuse).
                b[28] ^= 1;
                refingerprint(&mut b);
            }
            h.send(i, &b);
        }
        _ => {
            // The stream client's connection closes: its allocation goes.
            if let Via::Stream(_) = h.clients[i].addr.via {
                let addr = h.clients[i].addr;
                h.s.client_closed(addr);
                h.run();
                h.clients[i].forget_allocation();
            }
        }
    }
}

/// Recompute FINGERPRINT (the last attribute) after an edit.
fn refingerprint(b: &mut [u8]) {
    let n = b.len();
    if n < 28 {
        return;
    }
    // The header's length still covers the FINGERPRINT attribute, as when it was computed.
    let crc = crc32(&b[..n - 8]) ^ 0x5354_554e;
    b[n - 4..].copy_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &byte in data {
        c ^= u32::from(byte);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// CONNECTION-ID for the scripted ConnectionBind.
struct ConnIdAttr(ConnId);

impl Setter for ConnIdAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(ATTR_CONNECTION_ID, &self.0.0.to_be_bytes());
        Ok(())
    }
}
