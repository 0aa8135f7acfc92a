//! RFC 6062 TCP relays against the real `hermes-turn` binary (four workers, so control and
//! data connections land on different workers): a scripted client allocates a TCP relay over
//! TCP, Connects to loopback TCP peers and binds data connections; a peer connects in and is
//! announced with ConnectionAttempt; bytes flow both ways; deleting the allocation closes the
//! pipes; and a special-purpose peer is refused at Connect without being dialled.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use stun::attributes::*;
use stun::message::*;
use turn::proto::PROTO_TCP;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

struct RawAttr(AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// STUN over one TCP connection, with REST credentials.
struct StreamClient {
    sock: TcpStream,
    auth: LongTermAuth,
}

impl StreamClient {
    fn connect(server: SocketAddr, user: &str) -> Self {
        let sock = TcpStream::connect(server).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            sock,
            auth: LongTermAuth::mint(user, 3),
        }
    }

    /// A data connection with the same credentials and nonce.
    fn data_connection(&self, server: SocketAddr) -> Self {
        let mut c = Self::connect(server, "unused");
        c.auth = self.auth.clone();
        c
    }

    fn read_message(&mut self) -> Message {
        let mut head = [0u8; 20];
        self.sock.read_exact(&mut head).unwrap();
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut raw = head.to_vec();
        raw.resize(20 + len, 0);
        self.sock.read_exact(&mut raw[20..]).unwrap();
        let mut m = Message::new();
        m.unmarshal_binary(&raw).unwrap();
        m
    }

    fn request(&mut self, method: Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Message {
        let (txid, raw) = self.auth.request(method, attrs, auth);
        self.sock.write_all(&raw).unwrap();
        loop {
            let r = self.read_message();
            if r.transaction_id.0 == txid {
                return r;
            }
        }
    }

    fn allocate_tcp(&mut self) -> SocketAddr {
        let transport = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(RequestedTransport {
                protocol: PROTO_TCP,
            })]
        };
        let r = self.request(METHOD_ALLOCATE, transport(), false);
        self.auth.answer_challenge(&r);
        let r = self.request(METHOD_ALLOCATE, transport(), true);
        assert_eq!(error_code(&r), None, "{r:?}");
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&r).unwrap();
        SocketAddr::new(relayed.ip, relayed.port)
    }

    /// Connect to `peer`: the CONNECTION-ID, or the error code.
    fn connect_peer(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let r = self.request(
            METHOD_CONNECT,
            vec![Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })],
            true,
        );
        match error_code(&r) {
            Some(code) => Err(code),
            None => Ok(connection_id(&r)),
        }
    }

    fn connection_bind(&mut self, id: u32) -> Option<u16> {
        let r = self.request(
            METHOD_CONNECTION_BIND,
            vec![Box::new(RawAttr(
                ATTR_CONNECTION_ID,
                id.to_be_bytes().to_vec(),
            ))],
            true,
        );
        error_code(&r)
    }
}

fn connection_id(m: &Message) -> u32 {
    u32::from_be_bytes(m.get(ATTR_CONNECTION_ID).unwrap().try_into().unwrap())
}

fn echo_both_ways(data: &mut TcpStream, peer: &mut TcpStream, tag: &str) {
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    data.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let up = format!("client->peer {tag}");
    data.write_all(up.as_bytes()).unwrap();
    let mut buf = vec![0u8; up.len()];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(buf, up.as_bytes());
    let down = format!("peer->client {tag} (longer)");
    peer.write_all(down.as_bytes()).unwrap();
    let mut buf = vec![0u8; down.len()];
    data.read_exact(&mut buf).unwrap();
    assert_eq!(buf, down.as_bytes());
}

fn four_workers(allow_loopback: bool) -> InProcessRelay {
    Relay::in_process(Opts {
        allow_loopback,
        env: vec![("TURN_WORKERS".into(), "4".into())],
        ..Default::default()
    })
}

#[test]
fn connect_bind_and_pipe_both_ways_then_deleting_the_allocation_closes_the_pipes() {
    let relay = four_workers(true);
    let mut control = StreamClient::connect(relay.addr(), "alice");
    let relayed = control.allocate_tcp();

    // Client-initiated (Connect), to three peers: each data connection may land on any worker.
    let mut pipes = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let id = control
            .connect_peer(listener.local_addr().unwrap())
            .unwrap();
        let (peer, from) = listener.accept().unwrap();
        assert_eq!(from, relayed, "the peer sees the relayed transport address");
        let mut data = control.data_connection(relay.addr());
        assert_eq!(data.connection_bind(id), None);
        let mut peer = peer;
        echo_both_ways(&mut data.sock, &mut peer, &format!("connect {i}"));
        pipes.push((data, peer));
        listeners.push(listener);
    }
    // While a pipe lives, its peer cannot be connected twice (446); once both ends close, the
    // relay hears of it and the same peer may be connected again.
    let first = listeners[0].local_addr().unwrap();
    assert_eq!(control.connect_peer(first), Err(446));
    drop(pipes.remove(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        match control.connect_peer(first) {
            Ok(id) => break id,
            Err(446) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("connect after the pipe closed: {other:?}"),
        }
    };
    let (mut peer, _) = listeners[0].accept().unwrap();
    let mut data = control.data_connection(relay.addr());
    assert_eq!(data.connection_bind(id), None);
    echo_both_ways(&mut data.sock, &mut peer, "again");
    pipes.push((data, peer));

    // Peer-initiated: the Connects installed a permission for 127.0.0.1.
    let mut incoming = TcpStream::connect(relayed).unwrap();
    let attempt = control.read_message();
    assert_eq!(attempt.typ.method, METHOD_CONNECTION_ATTEMPT);
    let mut p = PeerAddress::default();
    p.get_from(&attempt).unwrap();
    assert_eq!(
        SocketAddr::new(p.ip, p.port),
        incoming.local_addr().unwrap()
    );
    let mut data = control.data_connection(relay.addr());
    assert_eq!(data.connection_bind(connection_id(&attempt)), None);
    echo_both_ways(&mut data.sock, &mut incoming, "accepted");
    // A second ConnectionBind for the same id is refused.
    let mut again = control.data_connection(relay.addr());
    assert_eq!(again.connection_bind(connection_id(&attempt)), Some(400));
    pipes.push((data, incoming));

    assert!(relay.metric("hermes_turn_bytes_to_peer_total") >= 4.0 * 15.0);
    assert!(relay.metric("hermes_turn_bytes_to_client_total") >= 4.0 * 24.0);

    // Refresh with lifetime 0 deletes the allocation: every pipe is closed on both sides.
    let r = control.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::ZERO))],
        true,
    );
    assert_eq!(error_code(&r), None);
    for (mut data, mut peer) in pipes {
        for s in [&mut data.sock, &mut peer] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("pipe still open after the allocation ended: {other:?}"),
            }
        }
    }
}

#[test]
fn special_purpose_peers_are_refused_at_connect_and_never_dialled() {
    let relay = four_workers(false);
    let mut control = StreamClient::connect(relay.addr(), "alice");
    control.allocate_tcp();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap();
    for peer in [
        target,
        SocketAddr::from(([0, 0, 0, 0], target.port())),
        format!("[::ffff:127.0.0.1]:{}", target.port())
            .parse()
            .unwrap(),
    ] {
        assert_eq!(control.connect_peer(peer), Err(403), "{peer}");
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((_, from)) => panic!("the relay dialled a refused peer from {from}"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(relay.metric("hermes_turn_peers_refused_total") >= 3.0);
}
