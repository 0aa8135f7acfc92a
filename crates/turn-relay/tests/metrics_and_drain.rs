//! Live metrics while a session runs, /healthz, and the SIGTERM drain: new allocations are
//! refused (508), existing ones keep relaying, and the process exits 0 when the last one ends.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn metrics_are_live_during_a_session() {
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        ..Default::default()
    });
    assert!(relay.http_get("/healthz").contains("ok"));
    let peer = Peer::start();
    let port = relay.port.to_string();
    let peer_port = peer.port.to_string();
    let h = std::thread::spawn(move || {
        uclient(
            &[
                "-p",
                &port,
                "-e",
                "127.0.0.1",
                "-r",
                &peer_port,
                "-W",
                SECRET,
                "-u",
                "bob",
                "-c",
                "-n",
                "150",
                "-z",
                "20",
                "127.0.0.1",
            ],
            Duration::from_secs(40),
        )
    });
    // While uclient is still sending (150 x 20 ms = 3 s), the counters move.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0.0;
    while Instant::now() < deadline && !h.is_finished() {
        seen = relay.metric("hermes_turn_packets_to_peer_total");
        if seen > 0.0 && relay.metric("hermes_turn_allocations_active") >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!h.is_finished(), "session ended before metrics moved");
    assert!(seen > 0.0 && seen < 150.0, "live packet count {seen}");
    let r = h.join().unwrap();
    assert_eq!(r.received, 150, "{r:?}");
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let mut relay = Relay::start(Opts {
        allow_loopback: true,
        drain_secs: Some(20),
        ..Default::default()
    });
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut a = TurnClient::new(relay.addr(), "alice");
    a.allocate().unwrap();
    assert_eq!(a.create_permission(peer_addr), None);

    let pid = relay.guard.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // The relay has taken the signal once it reports draining.
    assert_eq!(relay.metric_when("hermes_turn_draining", |n| n == 1.0), 1.0);
    assert!(relay.guard.is_running(), "must keep serving while draining");

    // New allocations are refused...
    let mut b = TurnClient::new(relay.addr(), "bob");
    assert_eq!(b.allocate(), Err(508));
    // ...the existing one still relays...
    a.send_indication(peer_addr, b"during drain");
    let mut buf = [0u8; 100];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"during drain");
    // ...and when it is deleted the process exits 0, long before the 20 s deadline.
    let started = Instant::now();
    assert_eq!(a.refresh(0), None);
    let status = relay.guard.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn drain_deadline_cuts_remaining_allocations() {
    let mut relay = Relay::start(Opts {
        allow_loopback: true,
        drain_secs: Some(1),
        ..Default::default()
    });
    let mut a = TurnClient::new(relay.addr(), "alice");
    a.allocate().unwrap();
    let started = Instant::now();
    let status = relay.guard.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(relay.log_text().contains("allocations_cut"));
}

#[test]
fn stream_connections_beyond_the_limit_are_closed_at_accept() {
    use std::io::Read;
    use std::net::TcpStream;
    let relay = Relay::in_process(Opts {
        env: vec![("TURN_MAX_STREAM_CONNECTIONS".into(), "2".into())],
        ..Default::default()
    });
    let kept: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(relay.addr()).unwrap())
        .collect();
    // Let the relay accept both before the third arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.metric("hermes_turn_stream_connections_total") < 2.0 {
        assert!(Instant::now() < deadline, "two connections accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut third = TcpStream::connect(relay.addr()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed, not served");
    assert_eq!(
        relay.metric("hermes_turn_stream_connections_refused_total"),
        1.0
    );
    // The two within the limit are still open: they time out waiting, they are not closed.
    for mut s in kept {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let err = s.read(&mut buf).expect_err("still open, nothing to read");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
    }
}
