//! Interop with coturn's own client tools against the real `hermes-turn` binary: STUN binding
//! with `turnutils_stunclient`, and `turnutils_uclient` relaying through hermes-turn to
//! `turnutils_peer` over UDP and TCP, with channels and with Send indications, using REST
//! credentials (`-W secret`). Every message must come back. With `-T`, uclient's clients
//! allocate RFC 6062 TCP relays and reach each other through them (Connect,
//! ConnectionAttempt, ConnectionBind on both sides).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn stunclient_gets_reflexive_address() {
    let relay = Relay::in_process(Opts::default());
    let bin = hermes_testkit::require_program("turnutils_stunclient", "coturn");
    let out = Command::new(bin)
        .args(["-p", &relay.port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "stunclient output:\n{text}\nrelay log:\n{}",
        relay.log_text()
    );
}

fn relay_messages(extra: &[&str]) {
    relay_messages_with(&[], extra);
}

/// As [`relay_messages`], the relay started with `env` (flags of those names).
fn relay_messages_with(env: &[(&str, &str)], extra: &[&str]) {
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        env: env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ..Default::default()
    });
    let peer = Peer::start();
    let port = relay.port.to_string();
    let peer_port = peer.port.to_string();
    let mut args = vec![
        "-p",
        &port,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-W",
        SECRET,
        "-u",
        "alice",
        "-c",
        "-n",
        "40",
        "-m",
        "3",
        "-l",
        "180",
        "-z",
        "5",
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    let r = uclient(&args, Duration::from_secs(40));
    assert!(
        r.success && r.sent == 120 && r.received == r.sent && r.lost == 0,
        "uclient {extra:?}: {r:?}\nrelay log:\n{}",
        relay.log_text()
    );
    // The relay counted them (metrics are flushed at least once a second).
    for name in [
        "hermes_turn_packets_to_peer_total",
        "hermes_turn_packets_to_client_total",
    ] {
        let n = relay.metric_when(name, |n| n >= 120.0);
        assert!(n >= 120.0, "{name} = {n}");
    }
    assert_eq!(relay.metric("hermes_turn_auth_failures_total"), 0.0);
}

#[test]
fn udp_channels() {
    relay_messages(&[]);
}

#[test]
fn udp_send_indications() {
    relay_messages(&["-s"]);
}

#[test]
fn tcp_channels() {
    relay_messages(&["-t"]);
}

/// The path taken where io_uring is refused (a container's seccomp filter): one call per
/// send, each client written after the socket that queued its output.
#[test]
fn tcp_channels_without_io_uring() {
    relay_messages_with(&[("TURN_IO_URING", "false")], &["-t"]);
}

#[test]
fn tcp_send_indications() {
    relay_messages(&["-t", "-s"]);
}

#[test]
fn tcp_relays_rfc6062() {
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        ..Default::default()
    });
    let port = relay.port.to_string();
    // -T: TCP relays, client to client (no turnutils_peer); -m 2: two pairs of clients.
    let args = [
        "-T",
        "-p",
        &port,
        "-W",
        SECRET,
        "-u",
        "alice",
        "-n",
        "30",
        "-m",
        "2",
        "-l",
        "120",
        "-z",
        "5",
        "127.0.0.1",
    ];
    let r = uclient(&args, Duration::from_secs(40));
    assert!(
        r.success && r.sent == 60 && r.received == r.sent && r.lost == 0,
        "uclient -T: {r:?}\nrelay log:\n{}",
        relay.log_text()
    );
    // The piped bytes are counted, both ways (each message crosses two relays).
    for name in [
        "hermes_turn_bytes_to_peer_total",
        "hermes_turn_bytes_to_client_total",
    ] {
        let n = relay.metric_when(name, |n| n >= 60.0 * 120.0);
        assert!(n >= 60.0 * 120.0, "{name} = {n}");
    }
    assert_eq!(relay.metric("hermes_turn_auth_failures_total"), 0.0);
}

#[test]
fn wrong_secret_is_refused() {
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        ..Default::default()
    });
    let peer = Peer::start();
    let r = uclient(
        &[
            "-p",
            &relay.port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer.port.to_string(),
            "-W",
            "not-the-secret",
            "-u",
            "mallory",
            "-c",
            "-n",
            "5",
            "127.0.0.1",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(r.received, 0, "{r:?}");
    assert!(relay.metric("hermes_turn_auth_failures_total") >= 1.0);
    assert_eq!(relay.metric("hermes_turn_allocations_total"), 0.0);
}

#[test]
fn ipv6_relay_to_ipv6_peer() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this host");
        return;
    }
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        env: vec![("TURN_RELAY_IP".into(), "127.0.0.1,::1".into())],
        ..Default::default()
    });
    let peer = Peer::start_on("::1");
    let r = uclient(
        &[
            "-x",
            "-p",
            &relay.port.to_string(),
            "-e",
            "::1",
            "-r",
            &peer.port.to_string(),
            "-W",
            SECRET,
            "-u",
            "alice",
            "-c",
            "-n",
            "30",
            "-z",
            "5",
            "127.0.0.1",
        ],
        Duration::from_secs(40),
    );
    assert!(
        r.sent == 30 && r.received == 30 && r.lost == 0,
        "{r:?}\n{}",
        relay.log_text()
    );
}
