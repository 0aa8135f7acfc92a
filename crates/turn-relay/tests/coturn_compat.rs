//! coturn-compat/turnserver.conf: the real coturn, started with it and the API's secret,
//! accepts credentials minted by hermes-proto exactly as the API mints them; and hermes-turn
//! reads the same file with `--config`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hermes_proto::turn_credentials::TurnCredentials;
use hermes_testkit::{
    ChildGuard, free_tcp_udp_port, require_program, wait_for_tcp, workspace_root,
};

fn compat_conf() -> std::path::PathBuf {
    workspace_root().join("coturn-compat/turnserver.conf")
}

fn start_coturn(dir: &std::path::Path) -> (ChildGuard, u16) {
    let bin = require_program("turnserver", "coturn");
    let port = free_tcp_udp_port();
    let (min, max) = relay_range();
    let guard = ChildGuard::spawn(
        "turnserver",
        Command::new(bin)
            .arg("-c")
            .arg(compat_conf())
            .arg(format!("--static-auth-secret={SECRET}"))
            .args([
                "--realm=hermes.test",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
            ])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={min}"))
            .arg(format!("--max-port={max}"))
            // The test's echo peer is on loopback, which the file denies.
            .args([
                "--allow-loopback-peers",
                "--allowed-peer-ip=127.0.0.1",
                "--no-tls",
                "--no-dtls",
            ])
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .stdout(std::fs::File::create(dir.join("coturn.log")).unwrap())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )
    .unwrap();
    (guard, port)
}

fn uclient_with(port: u16, peer: u16, creds: &TurnCredentials) -> UclientReport {
    uclient(
        &[
            "-p",
            &port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer.to_string(),
            "-u",
            &creds.username,
            "-w",
            &creds.password,
            "-c",
            "-n",
            "20",
            "-z",
            "5",
            "127.0.0.1",
        ],
        Duration::from_secs(40),
    )
}

#[test]
fn api_credentials_authenticate_on_real_coturn() {
    let dir = tempfile::tempdir().unwrap();
    let (_coturn, port) = start_coturn(dir.path());
    let peer = Peer::start();
    // Exactly what hermes-api's /api/join returns.
    let creds = TurnCredentials::mint(
        SECRET.as_bytes(),
        "participant-7",
        hermes_service::unix_now(),
        hermes_proto::turn_credentials::TURN_CREDENTIALS_TTL_SECS,
    );
    let r = uclient_with(port, peer.port, &creds);
    assert!(
        r.sent == 20 && r.received == 20 && r.lost == 0,
        "{r:?}\ncoturn log:\n{}",
        std::fs::read_to_string(dir.path().join("coturn.log")).unwrap_or_default()
    );
    // Credentials from another secret are refused by coturn too.
    let bad = TurnCredentials::mint(
        b"another-secret",
        "participant-7",
        hermes_service::unix_now(),
        600,
    );
    let r = uclient_with(port, peer.port, &bad);
    assert_eq!(r.received, 0, "{r:?}");
}

#[test]
fn hermes_turn_reads_the_compat_conf() {
    let relay = Relay::start(Opts {
        allow_loopback: true,
        args: vec!["--config".into(), compat_conf().display().to_string()],
        ..Default::default()
    });
    let peer = Peer::start();
    let creds = TurnCredentials::mint(
        SECRET.as_bytes(),
        "participant-8",
        hermes_service::unix_now(),
        600,
    );
    let r = uclient_with(relay.port, peer.port, &creds);
    assert!(
        r.sent == 20 && r.received == 20 && r.lost == 0,
        "{r:?}\n{}",
        relay.log_text()
    );
    // The file's denied-peer-ip list is in force (loopback is allowed by the test switch).
    let mut c = TurnClient::new(relay.addr(), "participant-9");
    c.allocate().unwrap();
    assert_eq!(
        c.create_permission("10.1.1.1:9".parse().unwrap()),
        Some(403)
    );
    assert_eq!(c.create_permission("127.0.0.1:9".parse().unwrap()), None);
}
