//! Shared harness: a real redis-server, signal replicas on 127.0.0.1 (in-process via
//! `serve`, or as child processes), join tokens, and a WebSocket client.
#![allow(dead_code, clippy::unwrap_used)]

pub mod failover_party;
mod two_party;
// Not every test binary sets up two parties.
#[allow(unused_imports)]
pub use two_party::TwoParty;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hermes_proto::signal::{ClientMessage, ServerMessage};
use hermes_proto::token::JOIN_TOKEN_TTL_SECS;
use hermes_proto::{CallId, JoinClaims, JoinTokenKeys, ParticipantId, Role};
use hermes_service::shutdown::CancellationToken;
use hermes_signal::{Cli, Config};
use hermes_testkit::RedisServer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Short timings so the suite stays fast.
pub const FAST: &[&str] = &[
    "--grace-ms",
    "3000",
    "--lease-ms",
    "1500",
    "--join-timeout-ms",
    "1500",
    "--idle-timeout-ms",
    "5000",
    "--drain-ms",
    "2000",
];

pub fn config(redis: &str, extra: &[&str]) -> Config {
    let mut argv = vec![
        "hermes-signal",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        redis,
        "--jwt-secret",
        SECRET,
    ];
    // Defaults from FAST unless `extra` sets the same flag.
    for pair in FAST.chunks(2) {
        if !extra.contains(&pair[0]) {
            argv.extend_from_slice(pair);
        }
    }
    argv.extend_from_slice(extra);
    Config::from_cli(<Cli as clap::Parser>::try_parse_from(argv).unwrap()).unwrap()
}

pub struct Replica {
    pub addr: SocketAddr,
    pub trigger: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), hermes_signal::SignalError>>,
}

impl Replica {
    pub async fn start(redis: &str, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let trigger = CancellationToken::new();
        let shutdown = trigger.clone();
        let config = config(redis, extra);
        let task = tokio::spawn(hermes_signal::serve(listener, config, shutdown));
        wait_ready(addr).await;
        Self {
            addr,
            trigger,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// The `hermes-signal` binary on a free port, up once this very process listens there (a
/// readiness probe alone could be answered by another test's server that took the port first;
/// ours then exits, and another port is tried). `configure` adds flags, env and stdio.
pub async fn spawn_replica_process(
    redis: &str,
    configure: impl Fn(&mut std::process::Command),
) -> (hermes_testkit::ChildGuard, SocketAddr) {
    use hermes_testkit::{ChildGuard, Transport, free_tcp_port, wait_until_child_holds};
    for _ in 0..5 {
        let port = free_tcp_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hermes-signal"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis-url", redis])
            .args(["--jwt-secret", SECRET])
            .args(FAST);
        configure(&mut cmd);
        let mut child = ChildGuard::spawn("hermes-signal", &mut cmd).unwrap();
        let holds = tokio::task::block_in_place(|| {
            wait_until_child_holds(&mut child, Transport::Tcp, port, Duration::from_secs(15))
        });
        if holds.is_ok() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            wait_ready(addr).await;
            return (child, addr);
        }
    }
    panic!("hermes-signal did not take a port in 5 tries");
}

pub async fn wait_ready(addr: SocketAddr) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("replica {addr} never became ready");
}

pub struct Call {
    pub id: CallId,
    pub keys: JoinTokenKeys,
}

impl Call {
    /// A call as the API creates it: `call:{<id>}` with status `created`.
    pub fn create(redis: &RedisServer) -> Self {
        let id = CallId::random(&mut rand::rng());
        let now = hermes_service::unix_now();
        redis
            .raw_command(&format!(
                "HSET call:{{{id}}} status created createdAt {now}"
            ))
            .unwrap();
        Self {
            id,
            keys: JoinTokenKeys::new(SECRET.as_bytes()),
        }
    }

    pub fn token(&self, role: Role) -> (ParticipantId, String) {
        let pid = ParticipantId::random(&mut rand::rng());
        let token = self.token_for(&pid, role);
        (pid, token)
    }

    pub fn token_for(&self, pid: &ParticipantId, role: Role) -> String {
        let claims = JoinClaims::new(
            self.id.clone(),
            pid.clone(),
            role,
            hermes_service::unix_now(),
            JOIN_TOKEN_TTL_SECS,
            &mut rand::rng(),
        );
        self.keys.sign(&claims)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// TCP closed without a close frame.
    Dropped,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { ws }
    }

    /// Connect and join; returns the client and the `joined` message.
    pub async fn join(url: &str, token: &str, last_seq: Option<u64>) -> (Self, ServerMessage) {
        let mut c = Self::connect(url).await;
        c.send(&ClientMessage::Join {
            token: token.to_owned(),
            last_seq,
            call_id: None,
            last_seqs: None,
        })
        .await;
        let joined = c.recv().await;
        assert!(
            matches!(joined, ServerMessage::Joined { .. }),
            "expected joined, got {joined:?}"
        );
        (c, joined)
    }

    pub async fn send(&mut self, m: &ClientMessage) {
        self.send_text(&serde_json::to_string(m).unwrap()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Next server message (skipping control frames), within 5 s.
    pub async fn recv(&mut self) -> ServerMessage {
        self.try_recv(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no message within 5 s"))
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Text(t)) => {
                    return Some(
                        serde_json::from_str(&t)
                            .unwrap_or_else(|e| panic!("bad server frame {t}: {e}")),
                    );
                }
                Ok(Message::Close(f)) => panic!("closed while waiting for a message: {f:?}"),
                Ok(_) => continue,
                Err(e) => panic!("socket error while waiting for a message: {e}"),
            }
        }
    }

    /// Skip messages until one matches.
    pub async fn recv_until(&mut self, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        for _ in 0..200 {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
        }
        panic!("no matching message among 200");
    }

    /// Read until the connection closes; returns the close code. Text before it is returned too.
    pub async fn closed(&mut self) -> (Vec<ServerMessage>, Closed) {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
                Err(_) => panic!("not closed within 10 s; saw {seen:?}"),
                Ok(None) | Ok(Some(Err(_))) => return (seen, Closed::Dropped),
                Ok(Some(Ok(Message::Close(f)))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return (seen, Closed::Code(code));
                }
                Ok(Some(Ok(Message::Text(t)))) => seen.push(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Drop the TCP connection without a close handshake (a network loss).
    pub fn drop_abruptly(self) {
        drop(self.ws.into_inner());
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

pub fn seq_of(m: &ServerMessage) -> u64 {
    m.seq().unwrap_or_else(|| panic!("{m:?} has no seq"))
}

pub fn candidate(i: usize) -> ClientMessage {
    ClientMessage::IceCandidate {
        candidate: hermes_proto::signal::IceCandidate {
            candidate: format!(
                "candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host",
                40000 + i
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        },
    }
}

pub fn candidate_index(m: &ServerMessage) -> usize {
    match m {
        ServerMessage::IceCandidate { candidate, .. } => candidate
            .candidate
            .split(' ')
            .next()
            .and_then(|c| c.strip_prefix("candidate:"))
            .and_then(|n| n.parse().ok())
            .unwrap(),
        other => panic!("not a candidate: {other:?}"),
    }
}

/// A relayed candidate (`candidate:<index>`) from `from` at `seq`, as a replica's relay
/// pipeline writes it: its XADD into the sender's log (`Err` when the log refuses the number:
/// the fence), then, if `publish`, its PUBLISH on the call's channel (whatever the XADD
/// answered, as the pipeline does), answering how many subscribers got it. Tests replay with
/// it what a replaced connection's late pipeline or a lost PUBLISH leaves behind.
pub async fn write_relay(
    redis: &fred::clients::Client,
    call: &CallId,
    from: &ParticipantId,
    seq: u64,
    index: usize,
    publish: bool,
) -> (Result<fred::types::Value, fred::error::Error>, i64) {
    use fred::interfaces::{PubsubInterface, StreamsInterface};
    let text = serde_json::to_string(&ServerMessage::IceCandidate {
        from: from.clone(),
        seq,
        candidate: hermes_proto::signal::IceCandidate {
            candidate: format!("candidate:{index}"),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        },
    })
    .unwrap();
    let stored = redis
        .xadd(
            hermes_proto::keys::call_sender_log(call, from),
            true,
            None,
            format!("{seq}-0"),
            vec![("m", text.clone())],
        )
        .await;
    let receivers = if publish {
        redis
            .publish(hermes_proto::keys::call_channel(call), text)
            .await
            .unwrap()
    } else {
        0
    };
    (stored, receivers)
}
