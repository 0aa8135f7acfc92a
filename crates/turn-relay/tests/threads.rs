//! Adaptive worker threads (`io/runner.rs`): all workers start on one thread; under load a
//! busy thread hands workers to other threads, and when traffic stops they come back to one.
//! Workers move between threads while their allocations are relaying, and no datagram may
//! be lost or misrouted by a move.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const WORKERS: usize = 4;

fn start(mode: &str, split_percent: u32) -> Relay {
    let (min, max) = relay_range();
    Relay::start(Opts {
        allow_loopback: true,
        env: vec![
            ("TURN_WORKERS".into(), WORKERS.to_string()),
            ("TURN_WORKER_THREADS".into(), mode.into()),
            (
                "TURN_THREAD_SPLIT_PERCENT".into(),
                split_percent.to_string(),
            ),
            ("TURN_MIN_PORT".into(), min.to_string()),
            ("TURN_MAX_PORT".into(), max.to_string()),
            ("TURN_USER_QUOTA".into(), "0".into()),
        ],
        ..Default::default()
    })
}

/// A peer that sends every datagram back to where it came from, until dropped.
struct Echo {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One ChannelData round trip through the relay and the echo peer: the payload must come
/// back whole, on the client's channel.
fn round_trip(c: &mut TurnClient, channel: u16, seq: u64) {
    let payload = format!("client {} seq {seq}", c.auth.username);
    c.channel_data(channel, payload.as_bytes());
    let mut buf = [0u8; 2048];
    let (n, from) = c.sock.recv_from(&mut buf).expect("the echo within 3 s");
    assert_eq!(from, c.server);
    assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), channel);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    assert_eq!(&buf[4..4 + len.min(n - 4)], payload.as_bytes());
}

fn clients(relay: &Relay, echo: &Echo, n: usize) -> Vec<TurnClient> {
    (0..n)
        .map(|i| {
            let mut c = TurnClient::new(relay.addr(), &format!("user{i}"));
            c.allocate().unwrap();
            assert_eq!(c.channel_bind(0x4000, echo.addr), None);
            c
        })
        .collect()
}

fn wait_for_threads(relay: &Relay, want: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let now = relay.metric("hermes_turn_worker_threads");
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_spread_over_threads_under_load_and_come_back_when_quiet_losing_nothing() {
    // Split as soon as a thread is busy 1 % of its time, so the test's modest load is enough.
    let relay = start("adaptive", 1);
    assert!(relay.log_text().contains("adaptive threads"));
    let echo = Echo::start();
    let mut cs = clients(&relay, &echo, 16);
    assert_eq!(
        wait_for_threads(&relay, 1.0, Duration::from_secs(3)),
        1.0,
        "idle: every worker on one thread"
    );

    // Load: round trips on every client for 2 s; every one must come back.
    let mut most = 0.0f64;
    let mut seq = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for c in &mut cs {
            round_trip(c, 0x4000, seq);
        }
        seq += 1;
        if seq % 20 == 0 {
            most = most.max(relay.metric("hermes_turn_worker_threads"));
        }
    }
    assert!(
        most >= 2.0,
        "under load the workers spread (at most {most} threads seen)"
    );
    assert!(relay.metric("hermes_turn_worker_moves_total") >= 1.0);
    // Every round trip above came back; the counters (folded in at least once a second)
    // must show each datagram relayed exactly once each way.
    let want = (seq * cs.len() as u64) as f64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let counted = |name| loop {
        let n = relay.metric(name);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(counted("hermes_turn_packets_to_peer_total"), want);
    assert_eq!(counted("hermes_turn_packets_to_client_total"), want);

    // Quiet: back to one thread, and still relaying on every worker.
    assert_eq!(
        wait_for_threads(&relay, 1.0, Duration::from_secs(10)),
        1.0,
        "quiet: workers merge back onto one thread"
    );
    for c in &mut cs {
        round_trip(c, 0x4000, seq);
    }
    assert_eq!(relay.metric("hermes_turn_allocations_active"), 16.0);
}

#[test]
fn fixed_mode_runs_one_thread_per_worker() {
    let relay = start("fixed", 60);
    assert!(relay.log_text().contains("fixed threads"));
    assert_eq!(relay.metric("hermes_turn_worker_threads"), WORKERS as f64);
    let echo = Echo::start();
    let mut cs = clients(&relay, &echo, 8);
    for seq in 0..10 {
        for c in &mut cs {
            round_trip(c, 0x4000, seq);
        }
    }
    assert_eq!(relay.metric("hermes_turn_worker_moves_total"), 0.0);
}
