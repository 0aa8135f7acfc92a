//! Secure by default: with TURN_ALLOW_LOOPBACK_PEERS off, an allocation that asks for
//! loopback, unspecified, IPv4-mapped, private and link-local peers gets 403 for each, and no
//! datagram reaches a loopback socket that plays the would-be peer (the private and link-local
//! addresses are never sent to: the core refuses before any send, see server_tests.rs).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

#[test]
fn special_purpose_peers_get_403_and_nothing_is_relayed() {
    let relay = Relay::in_process(Opts::default());
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    victim
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let victim_addr = victim.local_addr().unwrap();

    let mut c = TurnClient::new(relay.addr(), "alice");
    c.allocate().expect("allocation");
    let peers: Vec<SocketAddr> = vec![
        victim_addr,
        "0.0.0.0:9".parse().unwrap(),
        "[::1]:9".parse().unwrap(),
        format!("[::ffff:127.0.0.1]:{}", victim_addr.port())
            .parse()
            .unwrap(),
        "10.11.12.13:9".parse().unwrap(),
        "169.254.169.254:80".parse().unwrap(),
    ];
    for p in &peers {
        let code = c.create_permission(*p);
        // IPv6 forms on an IPv4 relay are refused too; 403 comes first (filter before family).
        assert_eq!(code, Some(403), "CreatePermission {p}");
    }
    assert_eq!(c.channel_bind(0x4000, victim_addr), Some(403));
    // Data towards the victim through every data path: nothing may arrive.
    c.send_indication(victim_addr, b"should not arrive");
    c.channel_data(0x4000, b"should not arrive either");
    let mut buf = [0u8; 1500];
    assert!(
        victim.recv_from(&mut buf).is_err(),
        "a packet reached the loopback peer"
    );
    // Metrics are flushed at least once a second: wait for the refusals to be counted.
    assert_eq!(
        relay.metric_when("hermes_turn_peers_refused_total", |n| n >= 8.0),
        8.0
    );
    assert_eq!(relay.metric("hermes_turn_packets_to_peer_total"), 0.0);
}

#[test]
fn allow_loopback_switch_lets_tests_relay() {
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        ..Default::default()
    });
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TurnClient::new(relay.addr(), "alice");
    let relayed = c.allocate().unwrap();
    assert_eq!(c.create_permission(peer_addr), None);
    assert_eq!(
        c.create_permission("10.0.0.1:9".parse().unwrap()),
        Some(403)
    );
    c.send_indication(peer_addr, b"hello peer");
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello peer");
    assert_eq!(from, relayed);
}
