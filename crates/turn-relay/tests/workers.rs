//! SO_REUSEPORT workers: one hermes-turn process with four workers spreads clients over them
//! (each worker owns a slice of the relay port range, so the relayed port tells which worker
//! took the allocation), relays data on every worker, and enforces the per-user quota across
//! all of them (the shared allocation ledger).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use hermes_turn::config::worker_ports;

const WORKERS: usize = 4;

fn start(user_quota: u32) -> (Relay, u16, u16) {
    let (min, max) = relay_range();
    let relay = Relay::start(Opts {
        allow_loopback: true,
        env: vec![
            ("TURN_WORKERS".into(), WORKERS.to_string()),
            ("TURN_MIN_PORT".into(), min.to_string()),
            ("TURN_MAX_PORT".into(), max.to_string()),
            ("TURN_USER_QUOTA".into(), user_quota.to_string()),
        ],
        ..Default::default()
    });
    (relay, min, max)
}

fn worker_of(port: u16, min: u16, max: u16) -> usize {
    (0..WORKERS)
        .find(|&i| {
            let (lo, hi) = worker_ports(min, max, i, WORKERS);
            (lo..=hi).contains(&port)
        })
        .unwrap_or_else(|| panic!("relay port {port} outside {min}-{max}"))
}

#[test]
fn clients_spread_over_workers_and_each_worker_relays() {
    let (relay, min, max) = start(0);
    assert!(
        relay.log_text().contains(&format!("{WORKERS} workers")),
        "{}",
        relay.log_text()
    );
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut used = BTreeSet::new();
    // Clients stay open until the end: a closed client's port could be handed to the next
    // one while its allocation lives, and that 5-tuple would get 437 (allocation mismatch).
    let mut clients = Vec::new();
    // 24 client sockets: the chance that the kernel's 5-tuple hash puts all of them on one
    // of four workers is 4 × 4^-24.
    for i in 0..24 {
        let mut c = TurnClient::new(relay.addr(), &format!("user{i}"));
        let relayed = c.allocate().unwrap();
        let worker = worker_of(relayed.port(), min, max);
        if used.insert(worker) {
            // First allocation on this worker: prove it relays.
            assert_eq!(c.create_permission(peer_addr), None);
            let payload = format!("via worker {worker}");
            c.send_indication(peer_addr, payload.as_bytes());
            let mut buf = [0u8; 1500];
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], payload.as_bytes());
            assert_eq!(from, relayed, "sent from the allocation's relay socket");
        }
        clients.push(c);
    }
    assert!(
        used.len() >= 2,
        "all 24 clients landed on one worker: {used:?}"
    );
    assert_eq!(relay.metric("hermes_turn_allocations_active"), 24.0);
}

#[test]
fn user_quota_holds_across_workers() {
    let (relay, min, max) = start(3);
    let mut ok = Vec::new();
    let mut refused = 0;
    // Kept open until the end, for the reason given in the test above.
    let mut clients = Vec::new();
    for _ in 0..12 {
        let mut c = TurnClient::new(relay.addr(), "alice");
        match c.allocate() {
            Ok(relayed) => ok.push(worker_of(relayed.port(), min, max)),
            Err(code) => {
                assert_eq!(code, 486, "quota refusal");
                refused += 1;
            }
        }
        clients.push(c);
    }
    assert_eq!(
        ok.len(),
        3,
        "exactly the quota, whichever workers took them"
    );
    assert_eq!(refused, 9);
    let mut bob = TurnClient::new(relay.addr(), "bob");
    assert!(bob.allocate().is_ok(), "another user is not affected");
}
