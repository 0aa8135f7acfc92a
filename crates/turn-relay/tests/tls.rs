//! TURNS: `turnutils_uclient -S -t` relays through hermes-turn over TLS, and a renewed
//! certificate is served to new connections without a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hermes_testkit::{Transport, free_tcp_port, port_owner, require_program};

fn make_cert(dir: &Path, cn: &str) {
    let openssl = require_program("openssl", "openssl");
    let status = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(dir.join("key.pem.tmp"))
        .arg("-out")
        .arg(dir.join("cert.pem.tmp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Replace both files (key first) the way certbot/cert-manager do: rename into place.
    std::fs::rename(dir.join("key.pem.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.tmp"), dir.join("cert.pem")).unwrap();
}

/// The subject of the certificate the server presents.
fn served_subject(port: u16) -> String {
    let openssl = require_program("openssl", "openssl");
    let out = Command::new(&openssl)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn turns_relays_and_reloads_certificates() {
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "first.hermes.test");
    // The TURNS port is chosen here, so retry when another process took it first: the relay
    // counts as up only once this very process holds it.
    let (relay, tls_port) = (0..5)
        .find_map(|_| {
            let tls_port = free_tcp_port();
            let relay = Relay::start(Opts {
                allow_loopback: true,
                env: vec![
                    ("TURNS_LISTEN".into(), format!("127.0.0.1:{tls_port}")),
                    (
                        "TURN_TLS_CERT".into(),
                        certs.path().join("cert.pem").display().to_string(),
                    ),
                    (
                        "TURN_TLS_KEY".into(),
                        certs.path().join("key.pem").display().to_string(),
                    ),
                ],
                ..Default::default()
            });
            let pid = relay.guard.id()?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if port_owner::process_holds_port(pid, Transport::Tcp, tls_port) {
                    return Some((relay, tls_port));
                }
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .expect("a relay holding its TURNS port in 5 tries");
    let peer = Peer::start();
    let r = uclient(
        &[
            "-S",
            "-t",
            "-p",
            &tls_port.to_string(),
            "-e",
            "127.0.0.1",
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
    assert!(relay.metric("hermes_turn_tls_connections_total") >= 1.0);

    assert!(served_subject(tls_port).contains("first.hermes.test"));
    make_cert(certs.path(), "second.hermes.test");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = served_subject(tls_port);
        if s.contains("second.hermes.test") {
            break;
        }
        assert!(Instant::now() < deadline, "still serving {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A broken renewal keeps the previous certificate (checked once the relay tried it).
    std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
    relay.wait_for_log("reload failed");
    assert!(served_subject(tls_port).contains("second.hermes.test"));
}
