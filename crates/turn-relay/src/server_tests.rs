//! Unit tests of the sans-IO core with simulated time: a scripted client speaks STUN bytes
//! built with the `stun`/`turn` crates, the harness plays the I/O layer.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hermes_proto::turn_credentials::TurnCredentials;
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqfamily::{REQUESTED_FAMILY_IPV6, RequestedAddressFamily};
use turn::proto::reqtrans::RequestedTransport;

use crate::metrics::{Metrics, Quota};
use crate::server::*;
use crate::wire;

const SECRET: &[u8] = b"test-secret";
const REALM: &str = "hermes.test";
const T0: u64 = 1_700_000_000_000; // ms

fn relay4() -> RelayIp {
    RelayIp {
        bind: "127.0.0.1".parse().unwrap(),
        public: "127.0.0.1".parse().unwrap(),
    }
}

fn config() -> CoreConfig {
    let mut c = CoreConfig::new(REALM, SECRET, Some(relay4()));
    c.filter.allow_loopback = true;
    c.min_port = 50000;
    c.max_port = 50099;
    c
}

struct H {
    s: Server,
    now: Millis,
    events: Vec<Event>,
    opened: Vec<(RelayId, SocketAddr)>,
    closed: Vec<RelayId>,
    fail_binds: u32,
    /// TCP relays opened (RFC 6062).
    tcp_opened: Vec<RelayId>,
    connects: Vec<(ConnId, SocketAddr, SocketAddr)>,
    bound: Vec<(Client, RelayId, ConnId, Message)>,
    dropped_peers: Vec<ConnId>,
}

impl H {
    fn new(c: CoreConfig) -> Self {
        Self::with(Server::new(c, [9; 32], 42, Arc::new(Metrics::default())))
    }

    /// A worker whose allocations are counted in `ledger` (shared with other workers).
    fn on_ledger(c: CoreConfig, seed: u64, ledger: &Arc<AllocationLedger>) -> Self {
        Self::with(
            Server::new(c, [9; 32], seed, Arc::new(Metrics::default())).with_ledger(ledger.clone()),
        )
    }

    fn with(s: Server) -> Self {
        Self {
            s,
            now: Millis(T0),
            events: vec![],
            opened: vec![],
            closed: vec![],
            fail_binds: 0,
            tcp_opened: vec![],
            connects: vec![],
            bound: vec![],
            dropped_peers: vec![],
        }
    }

    /// Feed a client packet and play the I/O layer; returns control responses to `from`.
    fn send(&mut self, from: Client, bytes: &[u8]) -> (Forward, Vec<Message>) {
        let f = self.s.handle_client(from, bytes, self.now);
        (f, self.run(from))
    }

    fn run(&mut self, from: Client) -> Vec<Message> {
        let mut out = vec![];
        while let Some(c) = self.s.poll_command() {
            match c {
                Command::ToClient { to, bytes } => {
                    let mut m = Message::new();
                    m.unmarshal_binary(&bytes).unwrap();
                    stun::fingerprint::FINGERPRINT.check(&m).unwrap();
                    assert_eq!(to, from);
                    out.push(m);
                }
                Command::OpenRelay { relay, bind, tcp } => {
                    let ok = if self.fail_binds > 0 {
                        self.fail_binds -= 1;
                        false
                    } else {
                        self.opened.push((relay, bind));
                        if tcp {
                            self.tcp_opened.push(relay);
                        }
                        true
                    };
                    self.s.relay_opened(relay, ok, self.now);
                }
                Command::ConnectPeer { id, bind, peer } => self.connects.push((id, bind, peer)),
                Command::BindConnection {
                    to,
                    relay,
                    id,
                    response,
                } => {
                    let mut m = Message::new();
                    m.unmarshal_binary(&response).unwrap();
                    self.bound.push((to, relay, id, m));
                }
                Command::DropPeer { id } => self.dropped_peers.push(id),
                Command::CloseRelay { relay } => self.closed.push(relay),
                Command::Event(e) => self.events.push(e),
            }
        }
        out
    }

    fn tick(&mut self, ms: u64) {
        self.now = self.now.after_ms(ms);
        self.s.handle_timeout(self.now);
        self.run(client(1));
    }
}

fn client(n: u16) -> Client {
    Client::udp(0, SocketAddr::from(([127, 0, 0, 1], 40000 + n)))
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

/// A TURN client's view: credentials, nonce, allocation.
struct C {
    addr: Client,
    username: String,
    password: String,
    nonce: String,
    txn: u8,
}

impl C {
    fn new(addr: Client, user: &str, now_ms: u64, ttl: u64) -> Self {
        let creds = TurnCredentials::mint(SECRET, user, now_ms / 1000, ttl);
        Self {
            addr,
            username: creds.username,
            password: creds.password,
            nonce: String::new(),
            txn: 0,
        }
    }

    fn txid(&mut self) -> [u8; 12] {
        self.txn += 1;
        let mut t = [0u8; 12];
        t[0] = self.txn;
        t[1..3].copy_from_slice(&self.addr.addr.port().to_be_bytes());
        t
    }

    fn request(&mut self, method: Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Vec<u8> {
        let txid = self.txid();
        self.request_with(method, txid, attrs, auth)
    }

    fn request_with(
        &mut self,
        method: Method,
        txid: [u8; 12],
        attrs: Vec<Box<dyn Setter>>,
        auth: bool,
    ) -> Vec<u8> {
        let mut all: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId(txid)),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        all.extend(attrs);
        if auth {
            all.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            all.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.into())));
            all.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            all.push(Box::new(MessageIntegrity::new_long_term_integrity(
                self.username.clone(),
                REALM.into(),
                self.password.clone(),
            )));
        }
        let mut m = Message::new();
        m.build(&all).unwrap();
        m.raw
    }

    fn key(&self) -> Vec<u8> {
        MessageIntegrity::new_long_term_integrity(
            self.username.clone(),
            REALM.into(),
            self.password.clone(),
        )
        .0
    }

    /// Full allocate (401 challenge then authenticated request); returns the response.
    fn allocate(&mut self, h: &mut H, extra: Vec<Box<dyn Setter>>) -> Message {
        let req = self.request(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
            false,
        );
        let (_, r) = h.send(self.addr, &req);
        assert_eq!(code(&r[0]), Some(401));
        self.nonce = TextAttribute::get_from_as(&r[0], ATTR_NONCE).unwrap().text;
        let mut attrs: Vec<Box<dyn Setter>> = vec![Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        })];
        attrs.extend(extra);
        let req = self.request(METHOD_ALLOCATE, attrs, true);
        let (_, mut r) = h.send(self.addr, &req);
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    fn perm(&mut self, h: &mut H, peers: &[SocketAddr]) -> Message {
        let attrs: Vec<Box<dyn Setter>> = peers
            .iter()
            .map(|p| {
                Box::new(PeerAddress {
                    ip: p.ip(),
                    port: p.port(),
                }) as Box<dyn Setter>
            })
            .collect();
        let req = self.request(METHOD_CREATE_PERMISSION, attrs, true);
        h.send(self.addr, &req).1.remove(0)
    }

    fn bind(&mut self, h: &mut H, ch: u16, p: SocketAddr) -> Message {
        let req = self.request(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(ChannelNumber(ch)),
                Box::new(PeerAddress {
                    ip: p.ip(),
                    port: p.port(),
                }),
            ],
            true,
        );
        h.send(self.addr, &req).1.remove(0)
    }

    fn refresh(&mut self, h: &mut H, secs: u64) -> Message {
        let req = self.request(
            METHOD_REFRESH,
            vec![Box::new(Lifetime(Duration::from_secs(secs)))],
            true,
        );
        h.send(self.addr, &req).1.remove(0)
    }
}

fn relayed(m: &Message) -> SocketAddr {
    let mut r = RelayedAddress::default();
    r.get_from(m).unwrap();
    SocketAddr::new(r.ip, r.port)
}

fn is_success(m: &Message) -> bool {
    m.typ.class == CLASS_SUCCESS_RESPONSE
}

/// Payload placed where the I/O layer puts datagrams from peers.
fn peer_buf(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; wire::BUF_LEN];
    b[wire::HEADROOM..wire::HEADROOM + payload.len()].copy_from_slice(payload);
    b
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = ch.to_be_bytes().to_vec();
    b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn binding_returns_mapped_address() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    let req = c.request(METHOD_BINDING, vec![], false);
    let (_, r) = h.send(c.addr, &req);
    assert!(is_success(&r[0]));
    let mut x = XorMappedAddress::default();
    x.get_from(&r[0]).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), c.addr.addr);
    assert_eq!(h.s.allocation_count(), 0);
}

#[test]
fn unsupported_methods_get_400_at_once() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    // Send and Data exist only as indications: as requests they are unknown methods.
    for method in [METHOD_SEND, METHOD_DATA] {
        let req = c.request(method, vec![], false);
        let (_, r) = h.send(c.addr, &req);
        assert_eq!(r.len(), 1, "one answer for {method:?}");
        assert_eq!(r[0].typ.method, method);
        assert_eq!(code(&r[0]), Some(400));
    }
    assert_eq!(h.s.allocation_count(), 0);
}

#[test]
fn unauthenticated_allocate_is_challenged_without_state() {
    let mut h = H::new(config());
    for n in 0..1000 {
        let mut c = C::new(client(n), "mallory", T0, 600);
        let req = c.request(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
            false,
        );
        let (_, r) = h.send(c.addr, &req);
        assert_eq!(code(&r[0]), Some(401));
        let realm = TextAttribute::get_from_as(&r[0], ATTR_REALM).unwrap();
        assert_eq!(realm.text, REALM);
        assert!(TextAttribute::get_from_as(&r[0], ATTR_NONCE).is_ok());
    }
    assert_eq!(h.s.allocation_count(), 0);
    assert!(h.events.is_empty(), "plain challenges are not events");
    assert!(h.opened.is_empty());
}

#[test]
fn allocate_with_rest_credentials() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    let r = c.allocate(&mut h, vec![]);
    assert!(is_success(&r), "{r}");
    let relay = relayed(&r);
    assert_eq!(relay, h.opened[0].1);
    assert!((50000..=50099).contains(&relay.port()));
    let mut l = Lifetime::default();
    l.get_from(&r).unwrap();
    assert_eq!(l.0.as_secs(), 600);
    // The success response carries MESSAGE-INTEGRITY under the client's key.
    let mut signed = r.clone();
    MessageIntegrity(c.key()).check(&mut signed).unwrap();
    assert!(
        MessageIntegrity(b"another key".to_vec())
            .check(&mut signed)
            .is_err()
    );
    assert_eq!(h.s.allocation_count(), 1);
    assert_eq!(h.s.metrics().allocations_active.get(), 1);
    assert!(matches!(&h.events[0], Event::Created { user, .. } if user == "alice"));
}

#[test]
fn wrong_password_and_expired_username_are_refused() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    c.password = "bm9wZQ==".into();
    let r = c.allocate(&mut h, vec![]);
    assert_eq!(code(&r), Some(401));
    assert_eq!(h.s.metrics().auth_failures.get(), 1);

    // Minted ten minutes ago with a five-minute TTL: expired.
    let mut c = C::new(client(2), "bob", T0 - 600_000, 300);
    let r = c.allocate(&mut h, vec![]);
    assert_eq!(code(&r), Some(401));
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&r).unwrap();
    assert!(String::from_utf8_lossy(&e.reason).contains("expired"));
    assert_eq!(h.s.allocation_count(), 0);
    assert_eq!(h.s.metrics().auth_failures.get(), 2);
    assert!(
        h.events
            .iter()
            .all(|e| matches!(e, Event::Refused { code: 401, .. }))
    );
}

#[test]
fn refresh_after_username_expiry_is_refused() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 120);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    h.tick(60_000);
    assert!(is_success(&c.refresh(&mut h, 600)));
    h.tick(61_000);
    let r = c.refresh(&mut h, 600);
    assert_eq!(code(&r), Some(401));
    // The allocation still lives until its own lifetime ends, then expires.
    assert_eq!(h.s.allocation_count(), 1);
    h.tick(600_000);
    assert_eq!(h.s.allocation_count(), 0);
    assert_eq!(h.closed.len(), 1);
}

#[test]
fn stale_nonce_gets_438_then_works() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 3600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    h.tick(7 * 60_000);
    let r = c.refresh(&mut h, 600);
    assert_eq!(code(&r), Some(438));
    c.nonce = TextAttribute::get_from_as(&r, ATTR_NONCE).unwrap().text;
    assert!(is_success(&c.refresh(&mut h, 600)));
}

#[test]
fn refresh_caps_lifetime_and_zero_deletes() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 3600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    let r = c.refresh(&mut h, 1_000_000);
    let mut l = Lifetime::default();
    l.get_from(&r).unwrap();
    assert_eq!(l.0.as_secs(), 3600);
    let r = c.refresh(&mut h, 0);
    assert!(is_success(&r));
    assert_eq!(h.s.allocation_count(), 0);
    assert_eq!(h.closed.len(), 1);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Ended {
            reason: EndReason::ClientDeleted,
            ..
        }
    )));
    // Refresh without allocation: 437.
    let r = c.refresh(&mut h, 600);
    assert_eq!(code(&r), Some(437));
}

#[test]
fn special_purpose_peers_get_403_and_nothing_is_sent() {
    let mut cfg = config();
    cfg.filter.allow_loopback = false;
    let mut h = H::new(cfg);
    let mut c = C::new(client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    for p in [
        "127.0.0.1:5000",
        "0.0.0.0:5000",
        "10.1.2.3:5000",
        "169.254.169.254:80",
        "192.168.0.1:5000",
        "100.64.0.1:5000",
    ] {
        let p: SocketAddr = p.parse().unwrap();
        let r = c.perm(&mut h, &[p]);
        assert_eq!(code(&r), Some(403), "{p}");
        let r = c.bind(&mut h, 0x4001, p);
        assert_eq!(code(&r), Some(403), "{p}");
        // A Send indication to it is dropped: no forward.
        let req = c.request(
            METHOD_SEND,
            vec![
                Box::new(PeerAddress {
                    ip: p.ip(),
                    port: p.port(),
                }),
                Box::new(Data(b"x".to_vec())),
            ],
            false,
        );
        let mut req = req;
        req[0..2].copy_from_slice(&wire::SEND_INDICATION.to_be_bytes());
        let (f, r) = h.send(c.addr, &req);
        assert_eq!(f, Forward::None);
        assert!(r.is_empty());
    }
    // IPv6 forms need an IPv6 relay; the filter itself is tested in peer_filter.rs.
    assert_eq!(h.s.metrics().peers_refused.get(), 18);
}

#[test]
fn channel_data_both_ways() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    let r = c.allocate(&mut h, vec![]);
    let (relay, _) = h.opened[0];
    let _ = r;
    let p = peer(7000);
    // Peer data before any permission is dropped.
    let mut b = peer_buf(b"early");
    assert_eq!(h.s.handle_peer(relay, p, &mut b, 5, h.now), Forward::None);

    assert!(is_success(&c.bind(&mut h, 0x4000, p)));
    let pkt = channel_data(0x4000, b"hello");
    let (f, _) = h.send(c.addr, &pkt);
    assert_eq!(
        f,
        Forward::ToPeer {
            relay,
            peer: p,
            range: 4..9
        }
    );
    // Unknown channel, truncated payload: dropped.
    assert_eq!(h.send(c.addr, &channel_data(0x4001, b"x")).0, Forward::None);
    assert_eq!(h.send(c.addr, &pkt[..7]).0, Forward::None);
    // Another client cannot use this allocation's channel.
    assert_eq!(h.send(client(2), &pkt).0, Forward::None);

    let mut b = peer_buf(b"world");
    let f = h.s.handle_peer(relay, p, &mut b, 5, h.now);
    let Forward::ToClient { to, range } = f else {
        panic!("{f:?}")
    };
    assert_eq!(to, c.addr);
    assert_eq!(&b[range], &[0x40, 0x00, 0, 5, b'w', b'o', b'r', b'l', b'd']);

    // Another port of the same peer IP has a permission but no channel: Data indication.
    let mut b = peer_buf(b"hi");
    let Forward::ToClient { range, .. } = h.s.handle_peer(relay, peer(7001), &mut b, 2, h.now)
    else {
        panic!()
    };
    let mut m = Message::new();
    m.unmarshal_binary(&b[range]).unwrap();
    assert_eq!(m.typ.method, METHOD_DATA);
    let mut pa = PeerAddress::default();
    pa.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(pa.ip, pa.port), peer(7001));
    let mut d = Data::default();
    d.get_from(&m).unwrap();
    assert_eq!(d.0, b"hi");

    h.s.flush_stats();
    assert_eq!(h.s.metrics().packets_to_peer.get(), 1);
    assert_eq!(h.s.metrics().packets_to_client.get(), 2);
    assert_eq!(h.s.metrics().bytes_to_client.get(), 7);

    // Channel expires after 10 minutes without refresh; permission after 5.
    h.tick(601_000);
    assert_eq!(h.send(c.addr, &pkt).0, Forward::None);
}

#[test]
fn send_indication_needs_permission() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    c.allocate(&mut h, vec![]);
    let (relay, _) = h.opened[0];
    let p = peer(7000);
    let send = |c: &mut C| {
        let mut req = c.request(
            METHOD_SEND,
            vec![
                Box::new(PeerAddress {
                    ip: p.ip(),
                    port: p.port(),
                }),
                Box::new(Data(b"abc".to_vec())),
            ],
            false,
        );
        req[0..2].copy_from_slice(&wire::SEND_INDICATION.to_be_bytes());
        req
    };
    let req = send(&mut c);
    assert_eq!(h.send(c.addr, &req).0, Forward::None);
    assert!(is_success(&c.perm(&mut h, &[p])));
    let req = send(&mut c);
    let (f, _) = h.send(c.addr, &req);
    let Forward::ToPeer {
        relay: r,
        peer: to,
        range,
    } = f
    else {
        panic!("{f:?}")
    };
    assert_eq!((r, to), (relay, p));
    assert_eq!(&req[range], b"abc");
    // Permissions last five minutes.
    h.tick(301_000);
    let req = send(&mut c);
    assert_eq!(h.send(c.addr, &req).0, Forward::None);
}

#[test]
fn channel_bind_rules() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    c.allocate(&mut h, vec![]);
    assert!(is_success(&c.bind(&mut h, 0x4000, peer(1))));
    assert!(
        is_success(&c.bind(&mut h, 0x4000, peer(1))),
        "rebind refreshes"
    );
    assert_eq!(code(&c.bind(&mut h, 0x4000, peer(2))), Some(400));
    assert_eq!(code(&c.bind(&mut h, 0x4001, peer(1))), Some(400));
    assert_eq!(code(&c.bind(&mut h, 0x3FFF, peer(3))), Some(400));
    assert_eq!(code(&c.bind(&mut h, 0x8000, peer(3))), Some(400));
}

#[test]
fn quotas() {
    let mut cfg = config();
    cfg.user_quota = 2;
    cfg.total_quota = 3;
    cfg.max_permissions = 2;
    let mut h = H::new(cfg);
    let mut alices: Vec<C> = (0..2)
        .map(|n| {
            let mut c = C::new(client(n), "alice", T0, 600);
            assert!(is_success(&c.allocate(&mut h, vec![])));
            c
        })
        .collect();
    let mut c = C::new(client(2), "alice", T0, 600);
    assert_eq!(code(&c.allocate(&mut h, vec![])), Some(486));
    let mut c = C::new(client(3), "bob", T0, 600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    let mut d = C::new(client(4), "carol", T0, 600);
    assert_eq!(code(&d.allocate(&mut h, vec![])), Some(508));
    let ip2: SocketAddr = "127.0.0.2:1".parse().unwrap();
    assert!(is_success(&c.perm(&mut h, &[peer(1), ip2])));
    let ip3: SocketAddr = "127.0.0.3:1".parse().unwrap();
    assert_eq!(code(&c.perm(&mut h, &[ip3])), Some(508));
    let m = h.s.metrics();
    assert_eq!(m.quota(Quota::UserAllocations).get(), 1);
    assert_eq!(m.quota(Quota::TotalAllocations).get(), 1);
    assert_eq!(m.quota(Quota::Permissions).get(), 1);
    // Deleting one frees the user's slot (and a total slot).
    assert!(is_success(&alices[0].refresh(&mut h, 0)));
    let mut a = C::new(client(5), "alice", T0, 600);
    assert!(is_success(&a.allocate(&mut h, vec![])));
}

/// Two workers (two cores over one ledger, as SO_REUSEPORT workers are) enforce the user and
/// total quotas together, and a removal on one frees a slot for the other.
#[test]
fn quotas_hold_across_workers_sharing_a_ledger() {
    let mut cfg = config();
    cfg.user_quota = 1;
    cfg.total_quota = 2;
    let ledger = Arc::new(AllocationLedger::default());
    let mut w1 = H::on_ledger(cfg.clone(), 1, &ledger);
    let mut w2 = H::on_ledger(cfg, 2, &ledger);
    let mut a1 = C::new(client(1), "alice", T0, 600);
    assert!(is_success(&a1.allocate(&mut w1, vec![])));
    let mut a2 = C::new(client(2), "alice", T0, 600);
    assert_eq!(
        code(&a2.allocate(&mut w2, vec![])),
        Some(486),
        "user quota spans workers"
    );
    let mut b = C::new(client(3), "bob", T0, 600);
    assert!(is_success(&b.allocate(&mut w2, vec![])));
    let mut c = C::new(client(4), "carol", T0, 600);
    assert_eq!(
        code(&c.allocate(&mut w1, vec![])),
        Some(508),
        "total quota spans workers"
    );
    assert_eq!(ledger.total(), 2);
    assert!(is_success(&a1.refresh(&mut w1, 0)));
    assert_eq!(ledger.total(), 1);
    let mut a3 = C::new(client(5), "alice", T0, 600);
    assert!(is_success(&a3.allocate(&mut w2, vec![])));
}

#[test]
fn bandwidth_quota() {
    let mut cfg = config();
    cfg.max_bps = 100_000; // 100 kB/s, burst 100 kB (at least 64 KiB)
    let mut h = H::new(cfg);
    let mut c = C::new(client(1), "alice", T0, 600);
    c.allocate(&mut h, vec![]);
    assert!(is_success(&c.bind(&mut h, 0x4000, peer(1))));
    let pkt = channel_data(0x4000, &[0u8; 1000]);
    let sent = (0..200)
        .filter(|_| h.send(c.addr, &pkt).0 != Forward::None)
        .count();
    assert_eq!(sent, 100);
    h.now = h.now.after_ms(100); // 10 kB refilled
    let sent = (0..200)
        .filter(|_| h.send(c.addr, &pkt).0 != Forward::None)
        .count();
    assert_eq!(sent, 10);
    h.s.flush_stats();
    assert_eq!(h.s.metrics().quota(Quota::Bandwidth).get(), 290);
}

#[test]
fn retransmitted_allocate_and_mismatch() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    let r = c.allocate(&mut h, vec![]);
    let txid = r.transaction_id.0;
    let req = c.request_with(
        METHOD_ALLOCATE,
        txid,
        vec![Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        })],
        true,
    );
    let (_, again) = h.send(c.addr, &req);
    assert_eq!(again[0].raw, r.raw);
    assert_eq!(h.opened.len(), 1);
    let req = c.request(
        METHOD_ALLOCATE,
        vec![Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        })],
        true,
    );
    let (_, r) = h.send(c.addr, &req);
    assert_eq!(code(&r[0]), Some(437));
}

#[test]
fn draining_refuses_new_allocations_only() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    h.s.drain();
    let mut d = C::new(client(2), "bob", T0, 600);
    assert_eq!(code(&d.allocate(&mut h, vec![])), Some(508));
    assert!(is_success(&c.refresh(&mut h, 600)));
    h.s.shutdown();
    h.run(client(1));
    assert_eq!(h.s.allocation_count(), 0);
    assert_eq!(h.s.metrics().allocations_active.get(), 0);
}

#[test]
fn bind_failure_retries_another_port() {
    let mut h = H::new(config());
    h.fail_binds = 3;
    let mut c = C::new(client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    h.fail_binds = 100;
    let mut d = C::new(client(2), "bob", T0, 600);
    assert_eq!(code(&d.allocate(&mut h, vec![])), Some(508));
    assert_eq!(h.s.allocation_count(), 1);
}

#[test]
fn ipv6_relay_and_family_mismatch() {
    let mut cfg = config();
    cfg.relay_v6 = Some(RelayIp {
        bind: "::1".parse().unwrap(),
        public: "::1".parse().unwrap(),
    });
    let mut h = H::new(cfg);
    let mut c = C::new(client(1), "alice", T0, 600);
    let r = c.allocate(&mut h, vec![Box::new(REQUESTED_FAMILY_IPV6)]);
    assert!(is_success(&r), "{r}");
    assert!(relayed(&r).is_ipv6());
    assert_eq!(code(&c.perm(&mut h, &[peer(1)])), Some(443));
    let v6: SocketAddr = "[::1]:7000".parse().unwrap();
    assert!(is_success(&c.perm(&mut h, &[v6])));
    // Without an IPv6 relay address: 440.
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    assert_eq!(
        code(&c.allocate(&mut h, vec![Box::new(RequestedAddressFamily(2))])),
        Some(440)
    );
}

#[test]
fn ipv6_special_forms_refused() {
    let mut cfg = config();
    cfg.filter.allow_loopback = false;
    cfg.relay_v6 = Some(RelayIp {
        bind: "::1".parse().unwrap(),
        public: "::1".parse().unwrap(),
    });
    let mut h = H::new(cfg);
    let mut c = C::new(client(1), "alice", T0, 600);
    assert!(is_success(
        &c.allocate(&mut h, vec![Box::new(REQUESTED_FAMILY_IPV6)])
    ));
    for p in [
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
        "[::]:1",
        "[fe80::1]:1",
        "[64:ff9b::a00:1]:1",
    ] {
        assert_eq!(
            code(&c.perm(&mut h, &[p.parse().unwrap()])),
            Some(403),
            "{p}"
        );
    }
}

#[test]
fn stream_clients_get_padded_channel_data_and_lose_allocation_on_close() {
    let mut h = H::new(config());
    let tcp = Client {
        via: Via::Stream(7),
        addr: client(1).addr,
    };
    let mut c = C::new(tcp, "alice", T0, 600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
    let (relay, _) = h.opened[0];
    assert!(is_success(&c.bind(&mut h, 0x4000, peer(1))));
    let mut b = peer_buf(b"abcde");
    let Forward::ToClient { range, .. } = h.s.handle_peer(relay, peer(1), &mut b, 5, h.now) else {
        panic!()
    };
    assert_eq!(range.len(), 12);
    h.s.client_closed(tcp);
    h.run(tcp);
    assert_eq!(h.s.allocation_count(), 0);
    assert_eq!(h.closed, vec![relay]);
}

#[test]
fn lifetime_expiry_frees_ports_and_emits_events() {
    let mut cfg = config();
    cfg.min_port = 50000;
    cfg.max_port = 50001; // two ports only
    let mut h = H::new(cfg);
    for n in 0..2 {
        let mut c = C::new(client(n), &format!("u{n}"), T0, 3600);
        assert!(is_success(&c.allocate(&mut h, vec![])));
    }
    let mut c = C::new(client(9), "u9", T0, 3600);
    assert_eq!(code(&c.allocate(&mut h, vec![])), Some(508));
    h.tick(601_000);
    assert_eq!(h.s.allocation_count(), 0);
    assert_eq!(
        h.events
            .iter()
            .filter(|e| matches!(
                e,
                Event::Ended {
                    reason: EndReason::Expired,
                    ..
                }
            ))
            .count(),
        2
    );
    let mut c = C::new(client(9), "u9", h.now.0, 3600);
    assert!(is_success(&c.allocate(&mut h, vec![])));
}

#[test]
fn random_input_never_panics() {
    let mut h = H::new(config());
    let mut c = C::new(client(1), "alice", T0, 600);
    c.allocate(&mut h, vec![]);
    let (relay, _) = h.opened[0];
    let valid = c.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(60)))],
        true,
    );
    let mut seed = 7u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    for i in 0..20_000 {
        let mut b = if i % 2 == 0 {
            valid.clone()
        } else {
            vec![0u8; (rnd() % 120) as usize]
        };
        let flips = 1 + rnd() % 4;
        for _ in 0..flips {
            if b.is_empty() {
                break;
            }
            let at = (rnd() as usize) % b.len();
            b[at] = rnd() as u8;
        }
        let _ = h.s.handle_client(c.addr, &b, h.now);
        let mut pb = peer_buf(&b);
        let _ = h.s.handle_peer(relay, peer(1), &mut pb, b.len(), h.now);
        let _ =
            h.s.handle_peer(RelayId(relay.0 + 5), peer(1), &mut pb, b.len(), h.now);
        while h.s.poll_command().is_some() {}
    }
}

// ------------------------------------------------------------------ RFC 6062 TCP relays

fn stream_client(conn: u64) -> Client {
    Client {
        via: Via::Stream(conn),
        addr: SocketAddr::from(([127, 0, 0, 1], 41000 + conn as u16)),
    }
}

impl C {
    /// Allocate a TCP relay (challenge, then the authenticated request).
    fn allocate_tcp(&mut self, h: &mut H) -> Message {
        let transport = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_TCP,
            })]
        };
        let req = self.request(METHOD_ALLOCATE, transport(), false);
        let (_, r) = h.send(self.addr, &req);
        assert_eq!(code(&r[0]), Some(401));
        self.nonce = TextAttribute::get_from_as(&r[0], ATTR_NONCE).unwrap().text;
        let req = self.request(METHOD_ALLOCATE, transport(), true);
        h.send(self.addr, &req).1.remove(0)
    }

    /// Connect to `p`; returns the immediate answers (none when the connect is under way).
    fn connect(&mut self, h: &mut H, p: SocketAddr) -> Vec<Message> {
        let req = self.request(
            METHOD_CONNECT,
            vec![Box::new(PeerAddress {
                ip: p.ip(),
                port: p.port(),
            })],
            true,
        );
        h.send(self.addr, &req).1
    }

    /// ConnectionBind for `id`, sent from `data` (a new connection) with this client's
    /// credentials.
    fn connection_bind(&mut self, h: &mut H, data: Client, id: ConnId) -> Vec<Message> {
        let req = self.request(
            METHOD_CONNECTION_BIND,
            vec![Box::new(RawAttr(
                ATTR_CONNECTION_ID,
                id.0.to_be_bytes().to_vec(),
            ))],
            true,
        );
        h.send(data, &req).1
    }
}

struct RawAttr(AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

fn connection_id(m: &Message) -> ConnId {
    let v = m.get(ATTR_CONNECTION_ID).unwrap();
    ConnId(u32::from_be_bytes(v.try_into().unwrap()))
}

#[test]
fn tcp_relay_needs_a_stream_client_and_refuses_channels() {
    let mut h = H::new(config());
    let mut udp = C::new(client(1), "alice", T0, 600);
    let r = udp.allocate_tcp(&mut h);
    assert_eq!(code(&r), Some(400), "TCP relay over UDP");
    assert_eq!(h.s.allocation_count(), 0);

    let mut c = C::new(stream_client(1), "alice", T0, 600);
    let r = c.allocate_tcp(&mut h);
    assert!(is_success(&r), "{r:?}");
    assert_eq!(h.tcp_opened.len(), 1);
    let r = c.bind(&mut h, 0x4000, peer(9000));
    assert_eq!(code(&r), Some(400), "no channels on a TCP relay");
    // A UDP allocation cannot Connect.
    let mut u = C::new(stream_client(2), "bob", T0, 600);
    assert!(is_success(&u.allocate(&mut h, vec![])));
    let r = u.connect(&mut h, peer(9000));
    assert_eq!(code(&r[0]), Some(400));
    assert!(h.connects.is_empty());

    // Switched off (TURN_TCP_RELAY=false, coturn's no-tcp-relay): 442, as for any transport
    // not offered.
    let mut cfg = config();
    cfg.tcp_relay = false;
    let mut h = H::new(cfg);
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert_eq!(code(&c.allocate_tcp(&mut h)), Some(442));
    assert_eq!(h.s.allocation_count(), 0);
}

#[test]
fn connect_then_connection_bind_joins_the_connections() {
    let mut h = H::new(config());
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    // Connect is answered only once the I/O layer reports the connection.
    assert!(c.connect(&mut h, peer(9000)).is_empty());
    let (id, _bind, to) = h.connects[0];
    assert_eq!(to, peer(9000));
    // A second Connect to the same peer while the first is under way: 446.
    assert_eq!(code(&c.connect(&mut h, peer(9000))[0]), Some(446));
    assert!(h.s.peer_connected(id, true, h.now));
    let answer = &h.run(c.addr)[0];
    assert!(is_success(answer) && answer.typ.method == METHOD_CONNECT);
    assert_eq!(connection_id(answer), id);
    // The peer's address got a permission with the Connect: it may connect in too (from
    // another port), and the client hears of it.
    let incoming = h.s.peer_accepted(RelayId(0), peer(9050), h.now).unwrap();
    let attempt = h.run(c.addr).remove(0);
    assert_eq!(attempt.typ.method, METHOD_CONNECTION_ATTEMPT);
    assert_ne!(incoming, id);

    // ConnectionBind from a new connection: an unknown id is refused, the right one binds.
    let data = stream_client(2);
    let r = c.connection_bind(&mut h, data, ConnId(id.0 ^ 1));
    assert_eq!(code(&r[0]), Some(400));
    assert!(h.bound.is_empty());
    let r = c.connection_bind(&mut h, data, id);
    assert!(
        r.is_empty(),
        "the success answer goes with the bind command"
    );
    let (to, relay, bound_id, response) = &h.bound[0];
    assert_eq!((*to, *relay, *bound_id), (data, RelayId(0), id));
    assert!(is_success(response) && response.typ.method == METHOD_CONNECTION_BIND);
    // Bound once: a second ConnectionBind for the same id is refused.
    let r = c.connection_bind(&mut h, stream_client(3), id);
    assert_eq!(code(&r[0]), Some(400));
    assert_eq!(
        h.s.tcp_connection_count(),
        2,
        "the piped one and the incoming one that waits"
    );
    // A piped connection still counts: a second Connect to its peer is 446 until it ends.
    assert_eq!(code(&c.connect(&mut h, peer(9000))[0]), Some(446));
    h.s.pipe_closed(id);
    assert_eq!(h.s.tcp_connection_count(), 1);
    assert!(c.connect(&mut h, peer(9000)).is_empty());
}

#[test]
fn connection_bind_needs_the_allocations_credentials() {
    let mut h = H::new(config());
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    c.connect(&mut h, peer(9000));
    let id = h.connects[0].0;
    h.s.peer_connected(id, true, h.now);
    h.run(c.addr);
    // Mallory holds valid credentials of her own, and learnt the id.
    let mut m = C::new(stream_client(5), "mallory", T0, 600);
    m.nonce = c.nonce.clone();
    let r = m.connection_bind(&mut h, stream_client(5), id);
    assert_eq!(code(&r[0]), Some(441));
    assert!(h.bound.is_empty());
    // Over UDP, and on the control connection itself: 400.
    let r = c.connection_bind(&mut h, client(7), id);
    assert_eq!(code(&r[0]), Some(400));
    let r = c.connection_bind(&mut h, c.addr, id);
    assert_eq!(code(&r[0]), Some(400));
    assert!(h.bound.is_empty());
    assert_eq!(h.s.tcp_connection_count(), 1);
}

#[test]
fn failed_connect_is_447_and_special_purpose_peers_403() {
    let mut cfg = config();
    cfg.filter.allow_loopback = false;
    let mut h = H::new(cfg);
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    for p in ["127.0.0.1:80", "10.0.0.1:80", "169.254.1.1:80", "[::1]:80"] {
        let r = c.connect(&mut h, p.parse().unwrap());
        assert_eq!(code(&r[0]), Some(403), "{p}");
    }
    assert!(
        h.connects.is_empty(),
        "nothing is dialled for a refused peer"
    );
    let mut cfg = config();
    cfg.filter.allow_loopback = true;
    let mut h = H::new(cfg);
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    assert!(c.connect(&mut h, peer(9001)).is_empty());
    let id = h.connects[0].0;
    assert!(!h.s.peer_connected(id, false, h.now));
    let r = h.run(c.addr);
    assert_eq!(code(&r[0]), Some(447));
    assert_eq!(h.s.tcp_connection_count(), 0);
    // The same peer may be tried again.
    assert!(c.connect(&mut h, peer(9001)).is_empty());
    assert_eq!(h.connects.len(), 2);
}

#[test]
fn peer_connections_need_a_permission_and_expire_unbound() {
    let mut h = H::new(config());
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    // No permission yet: the I/O layer closes the connection.
    assert_eq!(h.s.peer_accepted(RelayId(0), peer(9100), h.now), None);
    assert!(is_success(&c.perm(&mut h, &[peer(1)])));
    let id = h.s.peer_accepted(RelayId(0), peer(9100), h.now).unwrap();
    let attempt = h.run(c.addr).remove(0);
    assert_eq!(attempt.typ.method, METHOD_CONNECTION_ATTEMPT);
    assert_eq!(attempt.typ.class, CLASS_INDICATION);
    assert_eq!(connection_id(&attempt), id);
    let mut p = PeerAddress::default();
    p.get_from(&attempt).unwrap();
    assert_eq!(SocketAddr::new(p.ip, p.port), peer(9100));
    // Unbound after 30 s: dropped.
    h.tick(CONNECTION_BIND_TIMEOUT_MS + 1000);
    assert_eq!(h.dropped_peers, vec![id]);
    let r = c.connection_bind(&mut h, stream_client(2), id);
    assert_eq!(code(&r[0]), Some(400));
}

#[test]
fn ending_a_tcp_allocation_drops_its_waiting_connections() {
    let mut h = H::new(config());
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    assert!(is_success(&c.perm(&mut h, &[peer(1)])));
    let a = h.s.peer_accepted(RelayId(0), peer(9100), h.now).unwrap();
    let b = h.s.peer_accepted(RelayId(0), peer(9101), h.now).unwrap();
    assert_ne!(a, b);
    h.s.client_closed(c.addr);
    h.run(c.addr);
    let mut dropped = h.dropped_peers.clone();
    dropped.sort_unstable();
    let mut want = vec![a, b];
    want.sort_unstable();
    assert_eq!(dropped, want);
    assert_eq!(h.closed, vec![RelayId(0)]);
    assert_eq!(h.s.tcp_connection_count(), 0);
}

#[test]
fn connection_ids_name_their_worker() {
    let mut h =
        H::with(Server::new(config(), [9; 32], 42, Arc::new(Metrics::default())).with_worker(3));
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    c.connect(&mut h, peer(9000));
    let id = h.connects[0].0;
    assert_eq!(id.worker(), 3);
}

#[test]
fn an_allocation_holds_at_most_16_tcp_connections_in_any_state() {
    let mut h = H::new(config());
    let mut c = C::new(stream_client(1), "alice", T0, 600);
    assert!(is_success(&c.allocate_tcp(&mut h)));
    for i in 0..MAX_TCP_CONNECTIONS as u16 {
        assert!(c.connect(&mut h, peer(9000 + i)).is_empty());
    }
    // Some connected and bound, some waiting, some still connecting: all count.
    for (n, &(id, _, _)) in h.connects.clone().iter().enumerate().take(8) {
        assert!(h.s.peer_connected(id, true, h.now));
        h.run(c.addr);
        if n < 4 {
            assert!(
                c.connection_bind(&mut h, stream_client(10 + n as u64), id)
                    .is_empty()
            );
        }
    }
    assert_eq!(h.bound.len(), 4);
    assert_eq!(code(&c.connect(&mut h, peer(9999))[0]), Some(508));
    assert_eq!(h.s.peer_accepted(RelayId(0), peer(9998), h.now), None);
    // One pipe ends: room for one more.
    h.s.pipe_closed(h.bound[0].2);
    assert!(c.connect(&mut h, peer(9999)).is_empty());
}
