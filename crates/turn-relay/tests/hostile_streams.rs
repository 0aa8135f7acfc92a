//! Slow and hostile TCP and TLS clients against the real `hermes-turn` binary (one worker,
//! so they share it with the well-behaved client): one that never reads its socket while its
//! peer floods it, one that sends a frame header and stalls, one that sends 64 KiB of garbage
//! (after an allocation, and as its very first bytes instead of a ClientHello). Over TLS
//! also: one that stalls inside a TLS record (its header sent, the body not), and one whose
//! garbage comes inside valid TLS records. Each is cut off within the stall timeout (plus the
//! once-a-second check), the relay's memory stays bounded, and meanwhile a well-behaved
//! client (over the same transport) relaying paced ChannelData through the same worker gets
//! every packet echoed, none of them held up for anywhere near the stall timeout.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hermes_testkit::{Transport, free_tcp_port, port_owner, require_program};
use rustls::pki_types::ServerName;
use stun::message::*;
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqtrans::RequestedTransport;

/// `TURN_STREAM_STALL_SECS` of the relay under test.
const STALL: Duration = Duration::from_secs(2);
/// The stall timeout, the check that runs once a second, and slack for a loaded machine.
const CUT_WITHIN: Duration = Duration::from_secs(2 + 1 + 4);
const CHANNEL: u16 = 0x4000;

/// The byte stream of a client: plain TCP, or TLS over it.
enum Wire {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Tcp(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// Where a test's clients connect: the relay's TCP port, or its TLS port with the client
/// configuration that trusts its certificate.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TURN client over one TCP or TLS connection, with REST credentials.
struct StreamTurn {
    sock: Wire,
    /// The TCP socket under `sock` (for timeouts, and raw bytes under TLS).
    raw: TcpStream,
    auth: LongTermAuth,
}

impl StreamTurn {
    fn connect(target: &Target, user: &str, recv_buffer: Option<usize>) -> Self {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(size) = recv_buffer {
            // Before connecting, so the window the relay sees stays small.
            sock.set_recv_buffer_size(size).unwrap();
        }
        sock.connect(&target.addr.into()).unwrap();
        let raw: TcpStream = sock.into();
        raw.set_nodelay(true).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sock = match &target.tls {
            None => Wire::Tcp(raw.try_clone().unwrap()),
            Some(config) => {
                let name = ServerName::try_from("hermes.test").unwrap();
                let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
                let mut s = rustls::StreamOwned::new(conn, raw.try_clone().unwrap());
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).unwrap();
                }
                Wire::Tls(Box::new(s))
            }
        };
        Self {
            sock,
            raw,
            auth: LongTermAuth::mint(user, 5),
        }
    }

    /// The next frame: a STUN message or a ChannelData frame (with its padding).
    fn read_frame(&mut self) -> Vec<u8> {
        let mut head = [0u8; 4];
        self.sock.read_exact(&mut head).unwrap();
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let total = if head[0] >> 6 == 0 {
            20 + len
        } else {
            4 + len.div_ceil(4) * 4
        };
        let mut raw = head.to_vec();
        raw.resize(total, 0);
        self.sock.read_exact(&mut raw[4..]).unwrap();
        raw
    }

    fn request(&mut self, method: Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Message {
        let (txid, raw) = self.auth.request(method, attrs, auth);
        self.send(&raw);
        loop {
            let raw = self.read_frame();
            if raw[0] >> 6 != 0 {
                continue;
            }
            let mut m = Message::new();
            m.unmarshal_binary(&raw).unwrap();
            if m.transaction_id.0 == txid {
                return m;
            }
        }
    }

    /// Allocate a UDP relay and bind [`CHANNEL`] to `peer`.
    fn allocate_and_bind(&mut self, peer: SocketAddr) {
        let udp = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })]
        };
        let r = self.request(METHOD_ALLOCATE, udp(), false);
        self.auth.answer_challenge(&r);
        let r = self.request(METHOD_ALLOCATE, udp(), true);
        assert_eq!(error_code(&r), None, "{r:?}");
        let r = self.request(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(ChannelNumber(CHANNEL)),
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ],
            true,
        );
        assert_eq!(error_code(&r), None, "{r:?}");
    }

    fn channel_data(&mut self, payload: &[u8]) {
        let mut f = CHANNEL.to_be_bytes().to_vec();
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload);
        f.resize(f.len().div_ceil(4) * 4, 0);
        self.send(&f);
    }

    /// Send bytes in the stream (in one TLS record over TLS).
    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
        self.sock.flush().unwrap();
    }

    /// How long until the relay closes this connection (reading and discarding what it
    /// still sends); panics if it is still open after `limit`.
    fn closed_within(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        self.raw
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // Reset, or over TLS the end without close_notify, or the alert for our bytes.
                Err(_) => return start.elapsed(),
            }
            assert!(
                start.elapsed() < limit,
                "the relay kept the connection open for {limit:?}"
            );
        }
    }
}

/// A UDP echo peer in a thread, until `stop`.
fn echo_peer(stop: Arc<AtomicBool>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

/// A self-signed certificate for `hermes.test` (key.pem, cert.pem in `dir`), and a client
/// configuration that trusts it.
fn make_cert(dir: &Path) -> Arc<rustls::ClientConfig> {
    let openssl = require_program("openssl", "openssl");
    let status = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=hermes.test",
            "-addext",
            "subjectAltName=DNS:hermes.test",
            // An end-entity certificate (rustls refuses a CA certificate as a server's).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pem = std::fs::read(dir.join("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The relay under test (one worker, the short stall timeout, no rate cap), with a TLS
/// listener when `tls` holds the certificate's directory; and the port clients use.
fn start_relay(tls: Option<&Path>) -> (Relay, u16) {
    for _ in 0..5 {
        let tls_port = free_tcp_port();
        let mut env = vec![
            ("TURN_WORKERS".into(), "1".into()),
            ("TURN_STREAM_STALL_SECS".into(), STALL.as_secs().to_string()),
            // No per-allocation cap: the flood below must outrun the kernel's buffers.
            ("TURN_MAX_BPS".into(), "0".into()),
        ];
        if let Some(dir) = tls {
            env.push(("TURNS_LISTEN".into(), format!("127.0.0.1:{tls_port}")));
            env.push((
                "TURN_TLS_CERT".into(),
                dir.join("cert.pem").display().to_string(),
            ));
            env.push((
                "TURN_TLS_KEY".into(),
                dir.join("key.pem").display().to_string(),
            ));
        }
        let relay = Relay::start(Opts {
            allow_loopback: true,
            env,
            ..Default::default()
        });
        if tls.is_none() {
            let port = relay.port;
            return (relay, port);
        }
        // Up once this very process holds its TLS port (another test may have taken it).
        let pid = relay.guard.id().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if port_owner::process_holds_port(pid, Transport::Tcp, tls_port) {
                return (relay, tls_port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no relay holding its TLS port in 5 tries");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn hostile_tcp_clients_are_cut_off_and_a_good_client_keeps_its_rate() {
    hostile_clients(false);
}

#[test]
fn hostile_tls_clients_are_cut_off_and_a_good_client_keeps_its_rate() {
    hostile_clients(true);
}

fn hostile_clients(tls: bool) {
    let certs = tempfile::tempdir().unwrap();
    let client_config = tls.then(|| make_cert(certs.path()));
    let (relay, port) = start_relay(tls.then(|| certs.path()));
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let target = Target {
        addr: server,
        tls: client_config,
    };
    // The clients cut for stalling: the deaf one, the header one, over TLS the record one.
    let stallers = if tls { 3.0 } else { 2.0 };
    let pid = relay.guard.id().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo_peer(stop.clone());

    // The well-behaved client: one 100-byte packet every 5 ms, each waited for.
    let good = {
        let stop = stop.clone();
        let target = target.clone();
        std::thread::spawn(move || {
            let mut c = StreamTurn::connect(&target, "good", None);
            c.allocate_and_bind(echo);
            let (mut sent, mut worst) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let mut payload = [7u8; 100];
                payload[..4].copy_from_slice(&sent.to_be_bytes());
                let t = Instant::now();
                c.channel_data(&payload);
                let back = c.read_frame();
                worst = worst.max(t.elapsed());
                assert_eq!(&back[4..104], &payload[..], "echo of packet {sent}");
                sent += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (sent, worst)
        })
    };
    let rss_before = rss_kb(pid);

    // 1. Never reads, while its peer floods it with 1000-byte datagrams; it looks at its
    // socket only once the relay counts a stalled connection (the stalled clients below count
    // too, so the count to wait for is theirs plus one).
    let metrics = relay.metrics;
    let deaf_target = target.clone();
    let never_reads = std::thread::spawn(move || {
        let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = StreamTurn::connect(&deaf_target, "deaf", Some(4096));
        c.allocate_and_bind(flood.local_addr().unwrap());
        // The relay address: the peer learns it from the first packet the client sends.
        c.channel_data(b"hello");
        let mut buf = [0u8; 64];
        flood
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (_, relayed) = flood.recv_from(&mut buf).unwrap();
        let stalled = || {
            metric_in(
                &http_get(metrics, "/metrics"),
                "hermes_turn_stream_connections_closed_total{reason=\"stalled\"}",
            )
            .unwrap_or(0.0)
        };
        // Flood at about 10 000 datagrams a second until the relay cuts the client (at most
        // 20 MB: the kernel's send buffer grows to 4 MB, then the relay's queue fills).
        let flooding = Instant::now();
        let mut sent = 0;
        while stalled() < stallers {
            assert!(
                flooding.elapsed() < CUT_WITHIN + Duration::from_secs(2),
                "a client that reads nothing was not cut ({sent} datagrams sent to it)"
            );
            if sent < 20_000 {
                for _ in 0..250 {
                    let _ = flood.send_to(&[1u8; 1000], relayed);
                }
                sent += 250;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let cut = flooding.elapsed();
        // What the relay had queued, then the end of the stream.
        c.closed_within(Duration::from_secs(3));
        cut
    });

    // 2. A ChannelData header announcing 1000 bytes, and nothing more (over TLS, inside a
    // complete record).
    let mut stalls = StreamTurn::connect(&target, "stall", None);
    stalls.allocate_and_bind(echo);
    stalls.send(&[0x40, 0x00, 0x03, 0xe8]);
    let stalled = stalls.closed_within(CUT_WITHIN);
    assert!(
        stalled >= STALL - Duration::from_millis(100),
        "cut after {stalled:?}, before the stall timeout"
    );
    // Over TLS: the header of an application-data record announcing 1000 bytes, and nothing
    // more (rustls waits for the rest, unseen by the frame parser).
    let stalled_record = tls.then(|| {
        let mut c = StreamTurn::connect(&target, "record", None);
        c.allocate_and_bind(echo);
        c.raw.write_all(&[0x17, 0x03, 0x03, 0x03, 0xe8]).unwrap();
        let cut = c.closed_within(CUT_WITHIN);
        assert!(
            cut >= STALL - Duration::from_millis(100),
            "cut after {cut:?}, before the stall timeout"
        );
        cut
    });

    // 3. 64 KiB of garbage after an allocation (over TLS: as raw bytes, which no record
    // holds, and inside records), and as the very first bytes (instead of a ClientHello).
    let junk = vec![0xa5u8; 64 * 1024];
    let mut cut_garbage = Vec::new();
    for inside_records in if tls { vec![false, true] } else { vec![true] } {
        let mut garbage = StreamTurn::connect(&target, "garbage", None);
        garbage.allocate_and_bind(echo);
        // The relay may close before it has read it all: a failed write is fine.
        let _ = if inside_records {
            garbage
                .sock
                .write_all(&junk)
                .and_then(|_| garbage.sock.flush())
        } else {
            garbage.raw.write_all(&junk)
        };
        cut_garbage.push(garbage.closed_within(Duration::from_secs(3)));
    }
    let mut first = TcpStream::connect(server).unwrap();
    let _ = first.write_all(&junk);
    first
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 64];
    // No reply but, over TLS, an alert record (content type 21); then the end.
    let closed_at = Instant::now();
    loop {
        match first.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => assert!(
                tls && buf[0] == 21,
                "garbage as first bytes: a reply {:?}",
                &buf[..n]
            ),
        }
        assert!(
            closed_at.elapsed() < Duration::from_secs(3),
            "garbage as first bytes: not closed"
        );
    }

    let cut_deaf = never_reads.join();
    let Ok(cut_deaf) = cut_deaf else {
        panic!(
            "the deaf client's check failed; relay log:\n{}",
            relay.log_text()
        );
    };
    let rss_peak = rss_kb(pid);
    stop.store(true, Ordering::Relaxed);
    let good = good.join();
    let Ok((good_sent, worst)) = good else {
        panic!("the good client failed; relay log:\n{}", relay.log_text());
    };

    println!(
        "tls {tls}: stalled header cut after {stalled:?}, stalled record after \
         {stalled_record:?}, garbage after {cut_garbage:?}, \
         deaf client cut {cut_deaf:?} after its flood began; \
         good client {good_sent} round trips, worst {worst:?}; RSS {rss_before} -> {rss_peak} KB"
    );
    let closed = |reason: &str| {
        relay.metric(&format!(
            "hermes_turn_stream_connections_closed_total{{reason=\"{reason}\"}}"
        ))
    };
    assert!(closed("stalled") >= stallers, "every stalled client");
    let garbage = if tls { 3.0 } else { 2.0 };
    assert!(closed("garbage") >= garbage, "every garbage client");
    // Their allocations went with them; the good client's is left.
    let active = relay.metric_when("hermes_turn_allocations_active", |v| v <= 1.0);
    assert!(active <= 1.0, "allocations left: {active}");
    // The deaf client's queue is capped (128 KiB beyond its socket buffer).
    assert!(
        rss_peak < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_peak} KB"
    );
    // The good client was served all along: its paced packets all came back (asserted in
    // its thread), and none waited anywhere near the stall timeout on a hostile one.
    assert!(good_sent >= 100, "only {good_sent} round trips");
    assert!(
        worst < Duration::from_secs(1),
        "a round trip took {worst:?}"
    );
}
