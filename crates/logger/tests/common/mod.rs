//! Shared harness for the logger's scenario tests: a real redis-server (testkit), a publisher
//! using the services' own `EventPublisher`, and the logger run either in-process through
//! `run_with` (lines captured in memory) or as the real binary (stdout/stderr captured).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fred::prelude::*;
use hermes_logger::{Config, Console};
use hermes_proto::{CallId, LogEvent, LogLevel};
use hermes_service::shutdown::CancellationToken;
use hermes_testkit::ChildGuard;

pub const CALL_A: &str = "c0ffee0c0ffee0c0ffee0c0ffe";
pub const CALL_B: &str = "deadbeefdeadbeefdeadbeef00";
/// Upper bound for anything to show up; generous for a loaded 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn call(id: &str) -> CallId {
    CallId::parse(id).expect("test ids are valid")
}

/// How long one of the test's own commands may take. The services fail fast (2 s) and tests
/// check that; a test's set-up and publishing must not fail just because a loaded machine is
/// slow (a 2 s limit failed the history test's bulk load once under `make test`).
pub const TEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A command client to the test Redis that reconnects on its own (tests restart Redis).
pub async fn client(url: &str) -> Client {
    let config = fred::types::config::Config::from_url(url).expect("Redis URL");
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = TEST_COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build()
        .expect("Redis client");
    client.init().await.expect("Redis connection");
    client
}

/// PUBLISH raw bytes on a channel, as a misbehaving service would.
pub async fn publish_raw(client: &Client, channel: &str, payload: impl Into<Value>) {
    let payload: Value = payload.into();
    let _: i64 = client.publish(channel, payload).await.expect("PUBLISH");
}

/// PUBLISH an event named `name` (call A) until a subscriber counts it, or fail with `what`
/// after `WAIT`: after an outage, both the publisher and the logger have to find the new primary.
/// Only the PUBLISH (no history XADD), so retries leave no trace but the printed lines.
pub async fn publish_until_received(publisher: &Client, name: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = event("signal", LogLevel::Info, name, Some(CALL_A));
        let json = serde_json::to_string(&ev).expect("json");
        let sent: Result<i64, _> = publisher.publish(ev.channel(), json).await;
        if sent.is_ok_and(|receivers| receivers > 0) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event as services build it.
pub fn event(service: &str, level: LogLevel, name: &str, call_id: Option<&str>) -> LogEvent {
    let mut ev = LogEvent::new(hermes_service::unix_now_ms(), service, level, name);
    if let Some(id) = call_id {
        ev = ev.call(&call(id));
    }
    ev
}

/// PUBLISH + XADD exactly like `EventPublisher`, but awaited (tests need ordering).
pub async fn publish_event(client: &Client, ev: &LogEvent) {
    use fred::types::streams::XCapKind;
    let json = serde_json::to_string(ev).unwrap();
    let _: i64 = client
        .publish(ev.channel(), json.as_str())
        .await
        .expect("PUBLISH");
    let _: Value = client
        .xadd(
            hermes_proto::keys::LOG_HISTORY_STREAM,
            false,
            (
                XCapKind::MaxLen,
                "~",
                hermes_proto::keys::LOG_HISTORY_MAXLEN as i64,
                None::<i64>,
            ),
            "*",
            vec![("event", json)],
        )
        .await
        .expect("XADD");
}

/// A `Write` that tests can read while the logger writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

/// Poll `check` until it holds or `WAIT` passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The logger library running in this process.
pub struct LibLogger {
    pub out: Captured,
    trigger: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hermes_logger::LoggerError>>,
}

impl LibLogger {
    /// Start with these flags (plus `--no-file --health-listen off` unless given) and wait until
    /// it is subscribed.
    pub async fn start(redis_url: &str, args: &[&str]) -> Self {
        let mut argv = vec![
            "hermes-logger",
            "--redis-url",
            redis_url,
            "--health-listen",
            "off",
        ];
        if !args.iter().any(|a| a.starts_with("--file")) {
            argv.push("--no-file");
        }
        argv.extend_from_slice(args);
        let settings = Config::try_parse_from(argv).unwrap().validate().unwrap();
        let out = Captured::default();
        let trigger = CancellationToken::new();
        let shutdown = trigger.clone();
        let (live_tx, live_rx) = tokio::sync::oneshot::channel();
        let console = Console::new(Box::new(out.clone()), false).on_live(live_tx);
        let task = tokio::spawn(hermes_logger::run_with(settings, shutdown, console));
        tokio::time::timeout(WAIT, live_rx)
            .await
            .expect("logger subscribed in time")
            .expect("logger running");
        Self { out, trigger, task }
    }

    /// Wait until a line containing every needle is printed; returns it.
    pub async fn line_with(&self, needles: &[&str]) -> String {
        let mut found = None;
        eventually(&format!("a line with {needles:?}"), || {
            found = self
                .out
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)));
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// Stop and return its result.
    pub async fn stop(self) -> Result<(), hermes_logger::LoggerError> {
        self.trigger.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("logger stops within the wait")
            .expect("logger task")
    }
}

/// The real binary with captured stdout and stderr.
pub struct BinLogger {
    pub child: ChildGuard,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

pub fn logger_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hermes-logger")
}

impl BinLogger {
    pub fn spawn(redis_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(logger_bin());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = ChildGuard::spawn("hermes-logger", &mut cmd).expect("spawn hermes-logger");
        let proc = child.child_mut().unwrap();
        let stdout = collect(proc.stdout.take().unwrap());
        let stderr = collect(proc.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Wait until the logger is subscribed (it says so on stderr).
    pub async fn wait_following(&self) {
        let stderr = self.stderr.clone();
        eventually("`following logs:*` on stderr", || {
            stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("following logs:*"))
        })
        .await;
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub async fn stdout_line_with(&self, needle: &str) -> String {
        let mut found = None;
        eventually(&format!("a stdout line with {needle:?}"), || {
            found = self.stdout_lines().into_iter().find(|l| l.contains(needle));
            found.is_some()
        })
        .await;
        found.unwrap()
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Send a signal to a child process by pid.
pub fn signal(child: &ChildGuard, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}
