//! hermes-healthprobe: the container HEALTHCHECK (and exec probe) for the distroless images.
//!
//! The runtime image has no shell and no curl, so this tiny std-only program does one HTTP/1.0
//! `GET` and exits 0 only on a `200` status line. It is compiled with plain `rustc` in the
//! Dockerfile's builder stage (no crates, no Cargo), and by `scripts/checks/50-deploy-static.sh`,
//! which runs it against a local server to prove it tells healthy from unhealthy.
//!
//! Usage: `hermes-healthprobe HOST:PORT [PATH]` (PATH defaults to `/healthz`). The whole probe
//! is bounded by a 2 s connect and a 2 s read/write timeout, and reads at most 1 KiB.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn probe(target: &str, path: &str) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| format!("bad address {target}: {e}"))?
        .collect();
    let mut last_err = format!("{target} resolved to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(TIMEOUT))
                    .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
                    .map_err(|e| e.to_string())?;
                let request = format!(
                    "GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: hermes-healthprobe\r\nConnection: close\r\n\r\n"
                );
                stream
                    .write_all(request.as_bytes())
                    .map_err(|e| format!("write to {addr}: {e}"))?;
                let mut buf = [0u8; 1024];
                let mut len = 0;
                // Read until the status line is complete, the buffer is full or the peer closes.
                while len < buf.len() && !buf[..len].contains(&b'\n') {
                    match stream.read(&mut buf[len..]) {
                        Ok(0) => break,
                        Ok(n) => len += n,
                        Err(e) => return Err(format!("read from {addr}: {e}")),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let status_line = head.lines().next().unwrap_or("");
                let mut parts = status_line.split_whitespace();
                let version = parts.next().unwrap_or("");
                let code = parts.next().unwrap_or("");
                return if version.starts_with("HTTP/") && code == "200" {
                    Ok(())
                } else {
                    Err(format!("{addr}{path}: unexpected status line {status_line:?}"))
                };
            }
            Err(e) => last_err = format!("connect {addr}: {e}"),
        }
    }
    Err(last_err)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: hermes-healthprobe HOST:PORT [PATH]");
        return ExitCode::from(2);
    };
    let path = args.next().unwrap_or_else(|| "/healthz".to_owned());
    if !path.starts_with('/') {
        eprintln!("hermes-healthprobe: PATH must start with '/'");
        return ExitCode::from(2);
    }
    match probe(&target, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-healthprobe: {e}");
            ExitCode::FAILURE
        }
    }
}
