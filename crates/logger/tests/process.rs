//! The binary as an operator or an orchestrator sees it: `listening on` + `/healthz`, a clean
//! exit (code 0) on SIGTERM even while Redis is down, on a closed stdout (`| head`) and after
//! `--max-events`; clear errors for unusable addresses.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hermes_proto::LogLevel;
use hermes_testkit::{ChildGuard, RedisServer, free_tcp_port};

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn wait_exit(child: &mut ChildGuard) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.child_mut().expect("child").try_wait() {
            return status;
        }
        assert!(Instant::now() < deadline, "the logger did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn healthz_and_clean_sigterm() {
    let redis = RedisServer::start();
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let mut logger = BinLogger::spawn(
        &redis.url(),
        &["--no-file"],
        &[("LOGGER_HEALTH_LISTEN", &addr)],
    );
    logger.wait_following().await;
    let stderr = logger.stderr.lock().expect("lock").join("\n");
    assert!(stderr.contains(&format!("listening on {addr}")), "{stderr}");
    let reply = http_get(&addr, "/healthz");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok\n"), "{reply}");
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    signal(&logger.child, "TERM");
    assert_eq!(wait_exit(&mut logger.child).code(), Some(0));
}

#[tokio::test]
async fn sigterm_while_redis_is_down_still_exits_cleanly() {
    let mut redis = RedisServer::start();
    let mut logger = BinLogger::spawn(&redis.url(), &["--no-file", "--health-listen", "off"], &[]);
    logger.wait_following().await;
    redis.kill();
    // SIGTERM once the logger knows Redis is gone (it is reconnecting then).
    let stderr = logger.stderr.clone();
    eventually("`connection lost` on stderr", || {
        stderr
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("Redis connection lost"))
    })
    .await;
    signal(&logger.child, "TERM");
    assert_eq!(wait_exit(&mut logger.child).code(), Some(0));
}

#[tokio::test]
async fn closed_stdout_ends_the_logger_quietly() {
    let redis = RedisServer::start();
    let mut cmd = Command::new(logger_bin());
    cmd.env("REDIS_URL", redis.url())
        .args(["--no-file", "--health-listen", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("hermes-logger", &mut cmd).expect("spawn");
    let stdout = child
        .child_mut()
        .expect("child")
        .stdout
        .take()
        .expect("stdout");
    let stderr = child
        .child_mut()
        .expect("child")
        .stderr
        .take()
        .expect("stderr");
    let stderr_lines = {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        lines
    };
    eventually("subscribed", || {
        stderr_lines.lock().expect("lock").contains("following")
    })
    .await;
    drop(stdout); // like `| head -1` after its line
    let client = client(&redis.url()).await;
    let deadline = Instant::now() + WAIT;
    while child.is_running() {
        assert!(
            Instant::now() < deadline,
            "still running with stdout closed"
        );
        publish_event(
            &client,
            &event("api", LogLevel::Info, "into.the.void", None),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let stderr = stderr_lines.lock().expect("lock").clone();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn max_events_exits_after_that_many_shown_events() {
    let redis = RedisServer::start();
    let mut logger = BinLogger::spawn(
        &redis.url(),
        &[
            "--no-file",
            "--health-listen",
            "off",
            "--max-events",
            "3",
            "--service",
            "api",
        ],
        &[],
    );
    logger.wait_following().await;
    let client = client(&redis.url()).await;
    publish_event(
        &client,
        &event("turn", LogLevel::Info, "filtered.out", None),
    )
    .await;
    for i in 0..5 {
        publish_event(
            &client,
            &event("api", LogLevel::Info, &format!("n{i}"), None),
        )
        .await;
    }
    assert_eq!(wait_exit(&mut logger.child).code(), Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await; // reader thread drains the pipe
    let names: Vec<String> = logger
        .stdout_lines()
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["n0", "n1", "n2"]);
}

#[test]
fn taken_health_address_and_bad_call_id_are_clear_startup_errors() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(logger_bin())
        .args([
            "--no-file",
            "--health-listen",
            &addr,
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&addr),
        "{stderr}"
    );

    let out = Command::new(logger_bin())
        .args(["--no-file", "--call", "UPPER-and-dashes"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a callId"), "{stderr}");
}
