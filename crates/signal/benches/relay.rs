//! `make bench BENCH=signal`: relay latency and throughput for many concurrent calls, same-replica
//! and cross-replica, beside the floor measured in the same run (a raw Redis PUBLISH →
//! subscriber hop under the same closed-loop concurrency), and the memory of idle connections.
//!
//! Everything runs on 127.0.0.1: a private redis-server, replicas as child processes of the
//! release `hermes-signal` binary, and WebSocket clients in this process.
//!
//! A second reference runs in the open loop: a bare forwarder (this executable started with
//! `--forwarder`) that takes the same path as a cross-replica message (WebSocket in, PUBLISH,
//! a subscriber on another process, WebSocket out) and does nothing else: no token check,
//! seats, sequence numbers, inboxes or limits. The raw hop is two network hops; any relay
//! between two WebSocket clients through Redis is at least four, so the bare forwarder is the
//! floor of the architecture and `hermes / forwarder` is what Hermes itself adds. Every loop is
//! bounded in count and in time.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use futures_util::{SinkExt, StreamExt};
use hermes_proto::signal::{ClientMessage, IceCandidate};
use hermes_proto::token::JOIN_TOKEN_TTL_SECS;
use hermes_proto::{CallId, JoinClaims, JoinTokenKeys, ParticipantId, Role};
use hermes_testkit::{ChildGuard, RedisServer, free_tcp_port, wait_for_tcp};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Replica {
    guard: ChildGuard,
    url: String,
}

fn start_replica(redis: &str) -> Replica {
    let port = free_tcp_port();
    spawn_ws_server(
        "hermes-signal",
        port,
        std::process::Command::new(env!("CARGO_BIN_EXE_hermes-signal"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis-url", redis])
            .args(["--jwt-secret", SECRET])
            // Benchmark traffic is far above a browser's; lift the per-connection limits.
            .args(["--rate-per-sec", "100000", "--rate-burst", "100000"])
            .env("RUST_LOG", "warn"),
    )
}

/// Spawn `command` (a WebSocket server on 127.0.0.1:`port`, path `/ws`) and wait until it
/// listens.
fn spawn_ws_server(name: &str, port: u16, command: &mut std::process::Command) -> Replica {
    let guard = ChildGuard::spawn(name, command.stdout(std::process::Stdio::null())).unwrap();
    wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).unwrap();
    Replica {
        guard,
        url: format!("ws://127.0.0.1:{port}/ws"),
    }
}

/// Start a bare forwarder (this executable with `--forwarder`) as a child process.
fn start_forwarder(redis: &str) -> Replica {
    let port = free_tcp_port();
    spawn_ws_server(
        "bench forwarder",
        port,
        std::process::Command::new(std::env::current_exe().unwrap()).args([
            "--forwarder",
            &port.to_string(),
            redis,
        ]),
    )
}

/// A connected command client and a subscriber with a queue deep enough for the bench.
async fn publisher_and_subscriber(redis: &str) -> (Client, SubscriberClient) {
    let config = Config::from_url(redis).unwrap();
    let publisher = Builder::from_config(config.clone()).build().unwrap();
    publisher.init().await.unwrap();
    let subscriber = Builder::from_config(config)
        .with_performance_config(|p| p.broadcast_channel_capacity = 1 << 16)
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    (publisher, subscriber)
}

/// The call id inside a join message's token (payload decoded, signature not checked: the
/// forwarder is a reference for the transport path only).
fn call_of_join(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let payload = v["token"].as_str()?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(claims["cid"].as_str()?.to_owned())
}

type Locals = Arc<Mutex<HashMap<String, Vec<(u64, tokio::sync::mpsc::UnboundedSender<String>)>>>>;

/// The bare forwarder: WebSocket text in → PUBLISH `ref:{call}` → this or another process's
/// subscriber → WebSocket text out to the call's other local connections.
fn forwarder_main(port: u16, redis: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (publisher, subscriber) = publisher_and_subscriber(redis).await;
        // One pattern subscription for every call, proven before serving: no per-call
        // SUBSCRIBE on the path (fred may leave those unflushed).
        let mut messages = subscriber.message_rx();
        subscriber.psubscribe("ref:*").await.unwrap();
        'probe: for _ in 0..50 {
            let _ = subscriber.ping::<Value>(None).await;
            let _: i64 = publisher.publish("ref:probe", "0|probe").await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, messages.recv()).await {
                if &*m.channel == "ref:probe" {
                    break 'probe;
                }
            }
        }
        let locals: Locals = Arc::default();
        let routes = locals.clone();
        tokio::spawn(async move {
            while let Ok(m) = messages.recv().await {
                let Some(text) = m.value.as_str() else {
                    continue;
                };
                let Some((from, body)) = text.split_once('|') else {
                    continue;
                };
                let from: u64 = from.parse().unwrap_or(0);
                if let Some(list) = routes.lock().unwrap().get(&*m.channel) {
                    for (id, tx) in list {
                        if *id != from {
                            let _ = tx.send(body.to_owned());
                        }
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        // Connection ids unique across the forwarder processes (the router skips the sender's).
        let mut next = u64::from(rand::random::<u32>()) << 32;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            next += 1;
            let id = next;
            let (publisher, locals) = (publisher.clone(), locals.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                let channel = loop {
                    match rx.next().await {
                        Some(Ok(Message::Text(t))) => match call_of_join(&t) {
                            Some(call) => break format!("ref:{call}"),
                            None => return,
                        },
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                locals
                    .lock()
                    .unwrap()
                    .entry(channel.clone())
                    .or_default()
                    .push((id, out_tx));
                if tx
                    .send(Message::text(r#"{"type":"joined"}"#))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::spawn(async move {
                    while let Some(t) = out_rx.recv().await {
                        if tx.send(Message::text(t)).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(t) = m {
                        let _: Result<i64, _> = publisher
                            .publish(channel.as_str(), format!("{id}|{}", t.as_str()))
                            .await;
                    }
                }
            });
        }
    });
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn token(keys: &JoinTokenKeys, call: &CallId, role: Role) -> String {
    let claims = JoinClaims::new(
        call.clone(),
        ParticipantId::random(&mut rand::rng()),
        role,
        hermes_service::unix_now(),
        JOIN_TOKEN_TTL_SECS,
        &mut rand::rng(),
    );
    keys.sign(&claims)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(url: &str, token: String) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap();
    let join = ClientMessage::Join {
        token,
        last_seq: None,
        call_id: None,
    };
    ws.send(Message::text(serde_json::to_string(&join).unwrap()))
        .await
        .unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"joined\"") => return ws,
            Some(Ok(Message::Text(t))) => panic!("join failed: {t}"),
            Some(Ok(_)) => continue,
            other => panic!("join failed: {other:?}"),
        }
    }
}

/// Latency samples in microseconds plus wall time.
struct Run {
    samples: Vec<u64>,
    wall: Duration,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        if s.is_empty() {
            return f64::NAN;
        }
        let i = ((s.len() as f64 - 1.0) * p).round() as usize;
        s[i] as f64 / 1000.0
    }
    fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

/// Closed loop per call: A sends a candidate, waits until B has it, repeats.
async fn relay_run(url_a: &str, url_b: &str, calls: usize, rounds: usize) -> Run {
    let keys = JoinTokenKeys::new(SECRET.as_bytes());
    let gate = Arc::new(Semaphore::new(100));
    let mut pairs = Vec::with_capacity(calls);
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..calls {
        let (ua, ub, keys, gate) = (
            url_a.to_owned(),
            url_b.to_owned(),
            keys.clone(),
            gate.clone(),
        );
        joins.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let call = CallId::random(&mut rand::rng());
            let a = join(&ua, token(&keys, &call, Role::Offerer)).await;
            let mut b = join(&ub, token(&keys, &call, Role::Answerer)).await;
            // Wait for nothing more: a's peer-joined is drained by the loop below.
            let _ = &mut b;
            (i, a, b)
        });
    }
    while let Some(r) = joins.join_next().await {
        pairs.push(r.unwrap());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut a, mut b) in pairs {
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(rounds);
            for r in 0..rounds {
                if Instant::now() > deadline {
                    break;
                }
                let msg = ClientMessage::IceCandidate {
                    candidate: IceCandidate {
                        candidate: format!(
                            "candidate:{r} 1 udp 2122260223 127.0.0.1 {} typ host generation 0",
                            10_000 + i
                        ),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                        username_fragment: Some("abcd".into()),
                    },
                };
                let text = serde_json::to_string(&msg).unwrap();
                let sent = Instant::now();
                if a.send(Message::text(text)).await.is_err() {
                    break;
                }
                let needle = format!("candidate:{r} ");
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), b.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) if t.contains(&needle) => break,
                        Ok(Some(Ok(_))) => continue,
                        _ => return samples,
                    }
                }
                samples.push(sent.elapsed().as_micros() as u64);
                // Drain a's side (peer events) without blocking.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, a.next()).await {}
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(r) = tasks.join_next().await {
        samples.extend(r.unwrap());
    }
    Run {
        samples,
        wall: start.elapsed(),
    }
}

/// The floor: the same closed loop over a raw PUBLISH → subscriber hop.
async fn raw_run(redis: &str, calls: usize, rounds: usize) -> Run {
    let (publisher, subscriber) = publisher_and_subscriber(redis).await;
    subscriber.subscribe("bench:raw").await.unwrap();
    // Dispatch each received message to the waiting task by index.
    let waiters: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..calls).map(|_| tokio::sync::Notify::new()).collect());
    let mut rx = subscriber.message_rx();
    let w = waiters.clone();
    let dispatcher = tokio::spawn(async move {
        while let Ok(m) = rx.recv().await {
            let Some(s) = m.value.as_str() else { continue };
            if let Some(i) = s.split('|').next().and_then(|i| i.parse::<usize>().ok())
                && let Some(n) = w.get(i)
            {
                n.notify_one();
            }
        }
    });
    let payload_tail = "|{\"type\":\"ice-candidate\",\"from\":\"b2b2b2b2b2b2b2b2b2b2b2b2b2\",\"seq\":1,\"candidate\":{\"candidate\":\"candidate:1 1 udp 2122260223 127.0.0.1 10001 typ host generation 0\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":\"abcd\"}}";
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let (publisher, waiters) = (publisher.clone(), waiters.clone());
        let payload = format!("{i}{payload_tail}");
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                if Instant::now() > deadline {
                    break;
                }
                let sent = Instant::now();
                let notified = waiters[i].notified();
                let _: i64 = publisher
                    .publish("bench:raw", payload.as_str())
                    .await
                    .unwrap();
                if tokio::time::timeout(Duration::from_secs(10), notified)
                    .await
                    .is_err()
                {
                    break;
                }
                samples.push(sent.elapsed().as_micros() as u64);
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(r) = tasks.join_next().await {
        samples.extend(r.unwrap());
    }
    let wall = start.elapsed();
    dispatcher.abort();
    Run { samples, wall }
}

/// Microseconds since the first call of this function (a process-wide clock for payloads).
fn micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn ts_of(text: &str) -> Option<u64> {
    let at = text.find("ts=")? + 3;
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Open loop: every call sends one message per `interval` (offset at random), whatever the
/// replies; latency = receive time - send time carried in the message. This is the load a
/// deployment sees (many calls, each sending now and then), below saturation.
async fn paced_relay(
    url_a: &str,
    url_b: &str,
    calls: usize,
    rounds: usize,
    interval: Duration,
) -> Run {
    let keys = JoinTokenKeys::new(SECRET.as_bytes());
    let gate = Arc::new(Semaphore::new(100));
    let mut joins = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let (ua, ub, keys, gate) = (
            url_a.to_owned(),
            url_b.to_owned(),
            keys.clone(),
            gate.clone(),
        );
        joins.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let call = CallId::random(&mut rand::rng());
            let a = join(&ua, token(&keys, &call, Role::Offerer)).await;
            let b = join(&ub, token(&keys, &call, Role::Answerer)).await;
            (a, b)
        });
    }
    let mut pairs = Vec::with_capacity(calls);
    while let Some(r) = joins.join_next().await {
        pairs.push(r.unwrap());
    }
    let start = Instant::now();
    let deadline = Duration::from_secs(60) + interval * rounds as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (a, mut b)) in pairs.into_iter().enumerate() {
        let offset =
            Duration::from_micros(rand::random::<u64>() % interval.as_micros().max(1) as u64);
        let (mut a_tx, mut a_rx) = a.split();
        // a's incoming frames (peer events) are drained so its socket never backs up.
        tokio::spawn(async move { while let Some(Ok(_)) = a_rx.next().await {} });
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            for r in 0..rounds {
                tick.tick().await;
                let msg = ClientMessage::IceCandidate {
                    candidate: IceCandidate {
                        candidate: format!(
                            "candidate:{r} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ts={}",
                            10_000 + i,
                            micros()
                        ),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                        username_fragment: Some("abcd".into()),
                    },
                };
                if a_tx
                    .send(Message::text(serde_json::to_string(&msg).unwrap()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Keep the socket open until the reader is done.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(a_tx);
        });
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(rounds);
            while samples.len() < rounds {
                match tokio::time::timeout(Duration::from_secs(10), b.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if let Some(ts) = ts_of(&t) {
                            samples.push(micros().saturating_sub(ts));
                        }
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                }
            }
            samples
        });
    }
    let mut samples = Vec::new();
    let all = async {
        while let Some(r) = tasks.join_next().await {
            samples.extend(r.unwrap());
        }
    };
    let _ = tokio::time::timeout(deadline, all).await;
    Run {
        samples,
        wall: start.elapsed(),
    }
}

/// The same open loop over a raw PUBLISH → subscriber hop (one channel per call).
async fn paced_raw(redis: &str, calls: usize, rounds: usize, interval: Duration) -> Run {
    let (publisher, subscriber) = publisher_and_subscriber(redis).await;
    let channels: Vec<String> = (0..calls).map(|i| format!("bench:paced:{i}")).collect();
    for c in &channels {
        subscriber.subscribe(c.as_str()).await.unwrap();
    }
    let expected = calls * rounds;
    let mut rx = subscriber.message_rx();
    let collector = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(expected);
        while samples.len() < expected {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Ok(m)) => {
                    if let Some(ts) = m.value.as_str().and_then(|s| ts_of(&s)) {
                        samples.push(micros().saturating_sub(ts));
                    }
                }
                _ => break,
            }
        }
        samples
    });
    let start = Instant::now();
    for (i, channel) in channels.into_iter().enumerate() {
        let publisher = publisher.clone();
        let offset =
            Duration::from_micros(rand::random::<u64>() % interval.as_micros().max(1) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            for r in 0..rounds {
                tick.tick().await;
                let payload = format!(
                    "{{\"type\":\"ice-candidate\",\"from\":\"b2b2b2b2b2b2b2b2b2b2b2b2b2\",\"seq\":{r},\"candidate\":{{\"candidate\":\"candidate:{r} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ts={}\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":\"abcd\"}}}}",
                    10_000 + i,
                    micros()
                );
                let _: Result<i64, _> = publisher.publish(channel.as_str(), payload).await;
            }
        });
    }
    let samples = collector.await.unwrap();
    Run {
        samples,
        wall: start.elapsed(),
    }
}

async fn idle_memory(redis: &str, conns: usize) -> (u64, u64, usize) {
    let replica = start_replica(redis);
    let pid = replica.guard.id().unwrap();
    // Warm up: one call, so the baseline includes the runtime and Redis clients.
    let keys = JoinTokenKeys::new(SECRET.as_bytes());
    let warm = CallId::random(&mut rand::rng());
    let w = join(&replica.url, token(&keys, &warm, Role::Offerer)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let gate = Arc::new(Semaphore::new(200));
    let mut joins = tokio::task::JoinSet::new();
    // Two participants per call, as in real use.
    for _ in 0..conns / 2 {
        let (url, keys, gate) = (replica.url.clone(), keys.clone(), gate.clone());
        joins.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let call = CallId::random(&mut rand::rng());
            let a = join(&url, token(&keys, &call, Role::Offerer)).await;
            let b = join(&url, token(&keys, &call, Role::Answerer)).await;
            [a, b]
        });
    }
    let mut sockets = Vec::with_capacity(conns);
    let started = Instant::now();
    while let Some(r) = joins.join_next().await {
        if let Ok(pair) = r {
            sockets.extend(pair);
        }
        if started.elapsed() > Duration::from_secs(180) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let n = sockets.len();
    drop(sockets);
    drop(w);
    (before, after, n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--forwarder") {
        let port = args[i + 1].parse().unwrap();
        forwarder_main(port, &args[i + 2]);
        return;
    }
    let calls = env_usize("SIGNAL_BENCH_CALLS", 1000);
    let rounds = env_usize("SIGNAL_BENCH_ROUNDS", 20);
    let idle = env_usize("SIGNAL_BENCH_IDLE", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let redis = RedisServer::start();
        let url = redis.url();
        let r1 = start_replica(&url);
        let r2 = start_replica(&url);
        eprintln!("raw Redis hop: {calls} concurrent loops × {rounds}");
        let raw = raw_run(&url, calls, rounds).await;
        eprintln!("same replica: {calls} calls × {rounds}");
        let same = relay_run(&r1.url, &r1.url, calls, rounds).await;
        eprintln!("cross replica: {calls} calls × {rounds}");
        let cross = relay_run(&r1.url, &r2.url, calls, rounds).await;
        let interval = Duration::from_millis(env_usize("SIGNAL_BENCH_INTERVAL_MS", 200) as u64);
        let paced_rounds = env_usize("SIGNAL_BENCH_PACED_ROUNDS", 25);
        eprintln!("paced: {calls} calls, one message per {interval:?} each, {paced_rounds} rounds");
        let p_raw = paced_raw(&url, calls, paced_rounds, interval).await;
        let p_same = paced_relay(&r1.url, &r1.url, calls, paced_rounds, interval).await;
        let p_cross = paced_relay(&r1.url, &r2.url, calls, paced_rounds, interval).await;
        drop((r1, r2));
        let (f1, f2) = (start_forwarder(&url), start_forwarder(&url));
        eprintln!("paced, bare forwarder across two processes (the architecture's floor)");
        let p_fwd = paced_relay(&f1.url, &f2.url, calls, paced_rounds, interval).await;
        drop((f1, f2));
        eprintln!("idle connections: {idle}");
        let (before, after, n) = idle_memory(&url, idle).await;

        println!();
        println!("hermes-signal relay, {calls} concurrent calls, closed loop, {rounds} messages per call (ms)");
        println!("| path | messages | p50 | p99 | msgs/s | p50 / raw | p99 / raw |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, r) in [
            ("raw Redis PUBLISH→subscriber (floor)", &raw),
            ("same replica", &same),
            ("cross replica", &cross),
        ] {
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
                r.samples.len(),
                r.pct(0.5),
                r.pct(0.99),
                r.rate(),
                r.pct(0.5) / raw.pct(0.5),
                r.pct(0.99) / raw.pct(0.99),
            );
        }
        println!(
            "closed loop = saturation: latency there is queueing (concurrency / throughput)."
        );
        println!();
        println!(
            "open loop: {calls} concurrent calls, each one message per {} ms ({:.0} msgs/s offered), {paced_rounds} rounds (ms)",
            interval.as_millis(),
            calls as f64 * 1000.0 / interval.as_millis().max(1) as f64
        );
        println!("| path | messages | p50 | p99 | msgs/s | p50 / raw | p99 / raw |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, r) in [
            ("raw Redis PUBLISH→subscriber (floor)", &p_raw),
            ("bare forwarder, two processes (4-hop floor)", &p_fwd),
            ("same replica", &p_same),
            ("cross replica", &p_cross),
        ] {
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
                r.samples.len(),
                r.pct(0.5),
                r.pct(0.99),
                r.rate(),
                r.pct(0.5) / p_raw.pct(0.5),
                r.pct(0.99) / p_raw.pct(0.99),
            );
        }
        let target = p_cross.pct(0.99) <= 1.5 * p_raw.pct(0.99);
        println!(
            "target cross-replica p99 <= 1.5 x raw hop (open loop): {} ({:.2}x)",
            if target { "met" } else { "NOT met" },
            p_cross.pct(0.99) / p_raw.pct(0.99)
        );
        println!(
            "cross replica / bare forwarder (what Hermes adds to the 4-hop path): p50 {:.2}x, p99 {:.2}x",
            p_cross.pct(0.5) / p_fwd.pct(0.5),
            p_cross.pct(0.99) / p_fwd.pct(0.99)
        );
        let delta_mib = after.saturating_sub(before) as f64 / 1024.0;
        println!();
        println!("| idle connections | RSS before | RSS after | delta | per connection | target |");
        println!("|---:|---:|---:|---:|---:|---|");
        println!(
            "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} KiB | < 300 MiB: {} |",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            delta_mib,
            after.saturating_sub(before) as f64 / n.max(1) as f64,
            if (after as f64 / 1024.0) < 300.0 { "met" } else { "NOT met" }
        );
    });
}
