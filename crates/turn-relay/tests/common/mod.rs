//! Shared harness of the hermes-turn scenario tests: the real `hermes-turn` binary on
//! loopback free ports, coturn's `turnutils_*` tools, and a tiny scripted TURN client built on
//! the `stun`/`turn` crates. Only 127.0.0.1 is ever a target.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hermes_testkit::{
    ChildGuard, Transport, free_tcp_port, free_tcp_udp_port, require_program,
    wait_until_child_holds,
};
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

pub const SECRET: &str = "interop-test-secret";
/// How long a starting relay or echo peer may take to hold its ports (a loaded CI box).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a metric may take to reach an expected value (flushed at least once a second).
pub const METRIC_TIMEOUT: Duration = Duration::from_secs(10);

/// A random relay port range start, so parallel tests rarely pick the same ports (and the
/// relay retries another port when one is taken anyway).
pub fn relay_range() -> (u16, u16) {
    let n = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    let base = 20_000 + (n % 100) as u16 * 100;
    (base, base + 99)
}

#[derive(Default)]
pub struct Opts {
    pub allow_loopback: bool,
    pub redis_url: Option<String>,
    pub drain_secs: Option<u64>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

pub struct Relay {
    pub guard: ChildGuard,
    pub port: u16,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Relay {
    pub fn start(opts: Opts) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hermes-turn.log");
        for _ in 0..5 {
            let port = free_tcp_udp_port();
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
            let (min, max) = relay_range();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_hermes-turn"));
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("RUST_LOG", "info")
                .env("TURN_SECRET", SECRET)
                .env("TURN_REALM", "hermes.test")
                .env("TURN_LISTEN", format!("127.0.0.1:{port}"))
                .env("TURN_METRICS_LISTEN", metrics.to_string())
                .env("TURN_MIN_PORT", min.to_string())
                .env("TURN_MAX_PORT", max.to_string())
                .env("TURN_ALLOW_LOOPBACK_PEERS", opts.allow_loopback.to_string())
                .env("REDIS_URL", opts.redis_url.clone().unwrap_or_default())
                .env("TURN_DRAIN_SECS", opts.drain_secs.unwrap_or(2).to_string())
                .envs(opts.env.iter().map(|(k, v)| (k, v)))
                .args(&opts.args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
            let mut guard = ChildGuard::spawn("hermes-turn", &mut cmd).unwrap();
            // Up once this very process holds all three sockets (a probe could be answered by
            // another test's relay that took a "free" port first; ours then exits).
            let holds = [
                (Transport::Udp, port),
                (Transport::Tcp, port),
                (Transport::Tcp, metrics.port()),
            ]
            .into_iter()
            .all(|(transport, p)| {
                wait_until_child_holds(&mut guard, transport, p, START_TIMEOUT).is_ok()
            });
            if holds {
                return Self {
                    guard,
                    port,
                    metrics,
                    log,
                    dir,
                };
            }
            guard.kill();
        }
        panic!(
            "hermes-turn did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_text(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default(),
        );
        s
    }

    pub fn http_get(&self, path: &str) -> String {
        http_get(self.metrics, path)
    }

    /// A metric's value (first sample whose line starts with `name`, labels included).
    pub fn metric(&self, name: &str) -> f64 {
        metric_at(self.metrics, name)
    }

    /// Poll a metric until `done(value)` holds (within [`METRIC_TIMEOUT`]); returns the last
    /// value, so the caller asserts on it with its own message.
    pub fn metric_when(&self, name: &str, done: impl Fn(f64) -> bool) -> f64 {
        metric_when_at(self.metrics, name, done)
    }

    /// Wait until the relay's log contains `needle` (within [`START_TIMEOUT`]).
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the relay log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The relay in this test process, on port 0 (`hermes_turn::run_and_report` says which ports
/// it got), for scenarios that need no separate binary: no free-port guess to lose to
/// another test, no process start-up. Tests of signals, exit codes, the process's RSS,
/// threads or log lines use [`Relay`]. Dropping it shuts the relay down.
pub struct InProcessRelay {
    pub port: u16,
    pub listening: hermes_turn::Listening,
    pub metrics: SocketAddr,
    shutdown: hermes_service::shutdown::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// [`InProcessRelay::start`].
    pub fn in_process(opts: Opts) -> InProcessRelay {
        InProcessRelay::start(opts)
    }
}

impl InProcessRelay {
    /// Start with the same options as [`Relay::start`] (`env` entries become the flags of
    /// the same names); the drain deadline is 0 s unless `drain_secs` says otherwise.
    pub fn start(opts: Opts) -> Self {
        let mut failures = Vec::new();
        // The TCP listener takes the UDP port's number: another process may hold it, then
        // the relay fails to start and we try again with another port.
        for _ in 0..5 {
            let (min, max) = relay_range();
            let mut args: Vec<String> = [
                "hermes-turn",
                "--hermes-env",
                "development",
                "--turn-secret",
                SECRET,
                "--turn-realm",
                "hermes.test",
                "--turn-listen",
                "127.0.0.1:0",
                "--turn-metrics-listen",
                "127.0.0.1:0",
            ]
            .map(String::from)
            .to_vec();
            let drain = opts.drain_secs.unwrap_or(0).to_string();
            args.extend(["--turn-drain-secs".into(), drain]);
            args.extend(["--turn-min-port".into(), min.to_string()]);
            args.extend(["--turn-max-port".into(), max.to_string()]);
            let redis = opts.redis_url.clone().unwrap_or_default();
            args.extend(["--redis-url".into(), redis]);
            args.extend([
                "--turn-allow-loopback-peers".into(),
                opts.allow_loopback.to_string(),
            ]);
            for (k, v) in &opts.env {
                args.push(format!("--{}", k.to_lowercase().replace('_', "-")));
                args.push(v.clone());
            }
            args.extend(opts.args.iter().cloned());
            let config = <hermes_turn::Config as clap::Parser>::try_parse_from(&args)
                .unwrap_or_else(|e| panic!("flags {args:?}: {e}"));
            let settings = config.resolve().unwrap();
            let shutdown = hermes_service::shutdown::CancellationToken::new();
            let (tx, rx) = std::sync::mpsc::channel::<Result<hermes_turn::Listening, String>>();
            let token = shutdown.clone();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let up = tx.clone();
                let result = rt.block_on(hermes_turn::run_and_report(settings, token, move |l| {
                    let _ = up.send(Ok(l));
                }));
                if let Err(e) = result {
                    let _ = tx.send(Err(e.to_string()));
                }
            });
            match rx.recv_timeout(START_TIMEOUT) {
                Ok(Ok(listening)) => {
                    return Self {
                        port: listening.udp.port(),
                        metrics: listening.metrics,
                        listening,
                        shutdown,
                        thread: Some(thread),
                    };
                }
                Ok(Err(e)) => {
                    let _ = thread.join();
                    failures.push(e);
                }
                Err(_) => panic!("the in-process relay did not start within {START_TIMEOUT:?}"),
            }
        }
        panic!("the in-process relay did not start: {failures:?}");
    }

    pub fn addr(&self) -> SocketAddr {
        self.listening.udp
    }

    /// No log file in-process: failure messages say so.
    pub fn log_text(&self) -> String {
        "(in-process relay: no log)".into()
    }

    pub fn http_get(&self, path: &str) -> String {
        http_get(self.metrics, path)
    }

    /// [`Relay::metric`].
    pub fn metric(&self, name: &str) -> f64 {
        metric_at(self.metrics, name)
    }

    /// [`Relay::metric_when`].
    pub fn metric_when(&self, name: &str, done: impl Fn(f64) -> bool) -> f64 {
        metric_when_at(self.metrics, name, done)
    }
}

/// A metric's value from the `/metrics` endpoint at `addr`.
pub fn metric_at(addr: SocketAddr, name: &str) -> f64 {
    let text = http_get(addr, "/metrics");
    metric_in(&text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Poll a metric until `done(value)` holds (within [`METRIC_TIMEOUT`]); the last value.
pub fn metric_when_at(addr: SocketAddr, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + METRIC_TIMEOUT;
    loop {
        let value = metric_at(addr, name);
        if done(value) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for InProcessRelay {
    /// Shut down and wait (boundedly) for the drain to finish, so that the relay's sockets
    /// and threads are gone when the test ends.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// coturn's `turnutils_peer` echo peer on a free loopback UDP port.
pub struct Peer {
    pub guard: ChildGuard,
    pub port: u16,
}

impl Peer {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// An echo peer on `host` (`127.0.0.1` or `::1`), ready once it holds its UDP port.
    pub fn start_on(host: &str) -> Self {
        let bin = require_program("turnutils_peer", "coturn");
        for _ in 0..5 {
            let port = free_tcp_udp_port();
            let mut guard = ChildGuard::spawn(
                "turnutils_peer",
                Command::new(&bin)
                    .args(["-L", host, "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .unwrap();
            if wait_until_child_holds(&mut guard, Transport::Udp, port, START_TIMEOUT).is_ok() {
                return Self { guard, port };
            }
        }
        panic!("turnutils_peer did not take a port in 5 tries");
    }
}

/// What `turnutils_uclient` reported.
#[derive(Debug)]
pub struct UclientReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub output: String,
    pub success: bool,
}

/// Run `turnutils_uclient` with `args` (bounded by a timeout) and parse its totals.
pub fn uclient(args: &[&str], timeout: Duration) -> UclientReport {
    let bin = require_program("turnutils_uclient", "coturn");
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut output);
    let _ = child.stderr.take().unwrap().read_to_string(&mut output);
    let mut r = UclientReport {
        sent: 0,
        received: 0,
        lost: u64::MAX,
        success: status.is_some_and(|s| s.success()),
        output,
    };
    for line in r.output.lines() {
        if let Some(i) = line.find("start_mclient: tot_send_msgs=") {
            let rest = &line[i + "start_mclient: tot_send_msgs=".len()..];
            let mut it = rest.split(", tot_recv_msgs=");
            r.sent = it.next().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            r.received = it.next().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
        if let Some(i) = line.find("Total lost packets ") {
            r.lost = line[i + "Total lost packets ".len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
        }
    }
    r
}

/// A scripted TURN client over UDP (stun/turn crates' codec).
pub struct TurnClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub auth: LongTermAuth,
}

/// What every test client needs to sign its requests: REST credentials minted for a user with
/// [`SECRET`], the realm and nonce of the server's 401 challenge, and a transaction counter.
/// Transaction ids carry the counter in their first four bytes and the client's `tag` in the
/// rest, so each kind of client's ids are told apart in a capture.
#[derive(Clone)]
pub struct LongTermAuth {
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: String,
    txn: u32,
    tag: u8,
}

impl LongTermAuth {
    /// Credentials for `user`, valid ten minutes; no realm or nonce yet.
    pub fn mint(user: &str, tag: u8) -> Self {
        let creds = hermes_proto::turn_credentials::TurnCredentials::mint(
            SECRET.as_bytes(),
            user,
            hermes_service::unix_now(),
            600,
        );
        Self {
            username: creds.username,
            password: creds.password,
            realm: String::new(),
            nonce: String::new(),
            txn: 0,
            tag,
        }
    }

    /// The next request of `method` with `attrs`: its transaction id and its bytes, with
    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when `signed`.
    pub fn request(
        &mut self,
        method: Method,
        attrs: Vec<Box<dyn Setter>>,
        signed: bool,
    ) -> ([u8; 12], Vec<u8>) {
        self.txn += 1;
        let mut txid = [self.tag; 12];
        txid[..4].copy_from_slice(&self.txn.to_be_bytes());
        let creds = signed.then_some(Credentials {
            username: &self.username,
            password: &self.password,
            realm: &self.realm,
            nonce: &self.nonce,
        });
        (txid, encode_request(method, txid, attrs, creds))
    }

    /// Learn realm and nonce from `challenge`, which must be a 401.
    pub fn answer_challenge(&mut self, challenge: &Message) {
        assert_eq!(error_code(challenge), Some(401), "{challenge:?}");
        self.realm = TextAttribute::get_from_as(challenge, ATTR_REALM)
            .unwrap()
            .text;
        self.nonce = TextAttribute::get_from_as(challenge, ATTR_NONCE)
            .unwrap()
            .text;
    }
}

/// Long-term credentials and the server's realm and nonce, for an authenticated request.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
}

/// Encode a STUN request: type, transaction id, `attrs`, and with `creds` USERNAME, REALM,
/// NONCE and MESSAGE-INTEGRITY.
pub fn encode_request(
    method: Method,
    txid: [u8; 12],
    attrs: Vec<Box<dyn Setter>>,
    creds: Option<Credentials<'_>>,
) -> Vec<u8> {
    let mut all: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId(txid)),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    all.extend(attrs);
    if let Some(c) = creds {
        all.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            c.username.into(),
        )));
        all.push(Box::new(TextAttribute::new(ATTR_REALM, c.realm.into())));
        all.push(Box::new(TextAttribute::new(ATTR_NONCE, c.nonce.into())));
        all.push(Box::new(MessageIntegrity::new_long_term_integrity(
            c.username.into(),
            c.realm.into(),
            c.password.into(),
        )));
    }
    let mut m = Message::new();
    m.build(&all).unwrap();
    m.raw
}

pub fn error_code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

impl TurnClient {
    pub fn new(server: SocketAddr, user: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self {
            sock,
            server,
            auth: LongTermAuth::mint(user, 7),
        }
    }

    fn request(&mut self, method: Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Message {
        let (txid, raw) = self.auth.request(method, attrs, auth);
        self.sock.send_to(&raw, self.server).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = self
                .sock
                .recv_from(&mut buf)
                .expect("a response within 3 s");
            let mut r = Message::new();
            if r.unmarshal_binary(&buf[..n]).is_ok() && r.transaction_id.0 == txid {
                return r;
            }
        }
    }

    /// Allocate (answering the 401 challenge); the relayed address, or the error code.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let r = self.request(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
            false,
        );
        self.auth.answer_challenge(&r);
        let r = self.request(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
            true,
        );
        if let Some(code) = error_code(&r) {
            return Err(code);
        }
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&r).unwrap();
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }

    /// CreatePermission; `None` on success, else the error code.
    pub fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        let r = self.request(
            METHOD_CREATE_PERMISSION,
            vec![Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })],
            true,
        );
        error_code(&r)
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        let r = self.request(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(ChannelNumber(channel)),
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ],
            true,
        );
        error_code(&r)
    }

    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
            Box::new(Data(data.to_vec())),
        ])
        .unwrap();
        self.sock.send_to(&m.raw, self.server).unwrap();
    }

    pub fn channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut b = channel.to_be_bytes().to_vec();
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(data);
        self.sock.send_to(&b, self.server).unwrap();
    }
}

impl TurnClient {
    /// Refresh with `lifetime` seconds (0 deletes); `None` on success.
    pub fn refresh(&mut self, lifetime: u64) -> Option<u16> {
        let r = self.request(
            METHOD_REFRESH,
            vec![Box::new(turn::proto::lifetime::Lifetime(
                Duration::from_secs(lifetime),
            ))],
            true,
        );
        error_code(&r)
    }
}
