//! What a person sees: the real binary in a real terminal (tmux), keys typed with `send-keys`,
//! the screen read back with `capture-pane -e` (which keeps the colors as SGR escapes).
//! Colored under `--color auto` on a terminal; no escapes with `--color never`, with NO_COLOR,
//! or when stdout is a pipe.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hermes_proto::LogLevel;
use hermes_testkit::{RedisServer, require_program};

/// A private tmux server (own socket) with one 200x50 session running a plain bash.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str) -> Self {
        require_program("tmux", "tmux");
        let socket = format!("hermes-logger-test-{name}-{}", std::process::id());
        let tmux = Self { socket };
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "-s",
            "t",
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            "TERM=xterm-256color",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "t", "-l", line]);
        self.run(&["send-keys", "-t", "t", "Enter"]);
    }

    /// The screen with colors as escape sequences.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-e", "-t", "t"])
    }

    /// Wait for a screen line containing `needle` (compared without escapes); returns it raw.
    async fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.screen().lines().find(|l| strip(l).contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared:\n{}",
                self.screen()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// Text without SGR escape sequences.
fn strip(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Start the logger in the terminal with `prefix` (env), `flags` and `pipe`, publish an
/// error from api and an info from signal, and return the two screen lines.
async fn show(name: &str, prefix: &str, flags: &str, pipe: &str) -> (String, String) {
    let redis = RedisServer::start();
    let tmux = Tmux::start(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("stderr.log");
    tmux.type_line(&format!(
        "{prefix} REDIS_URL={} {} --no-file --health-listen off {flags} 2>{} {pipe}",
        redis.url(),
        logger_bin(),
        err.display()
    ));
    eventually("the logger to subscribe", || {
        std::fs::read_to_string(&err).is_ok_and(|s| s.contains("following logs:*"))
    })
    .await;
    let client = client(&redis.url()).await;
    publish_event(
        &client,
        &event("api", LogLevel::Error, "call.failed", Some(CALL_A)),
    )
    .await;
    publish_event(
        &client,
        &event("signal", LogLevel::Info, "peer.joined", Some(CALL_A)),
    )
    .await;
    let error = tmux.line_with("call.failed").await;
    let info = tmux.line_with("peer.joined").await;
    (error, info)
}

fn assert_plain_and_readable(error: &str, info: &str) {
    assert!(!error.contains('\x1b'), "no escapes: {error:?}");
    assert!(!info.contains('\x1b'), "no escapes: {info:?}");
    let cols: Vec<&str> = error.split_whitespace().collect();
    assert_eq!(
        &cols[1..],
        ["api", "ERROR", "call.failed", "c0ffee0c"],
        "{error:?}"
    );
}

#[tokio::test]
async fn colors_on_a_terminal() {
    let (error, info) = show("auto", "", "", "").await;
    // The person sees: ERROR in red, the api service in cyan, signal in magenta, INFO green.
    let at = error.find("ERROR").expect("ERROR on screen");
    let before_error = &error[..at];
    let sgr_before = &before_error[before_error.rfind("api").expect("api first")..];
    assert!(
        sgr_before.contains("\x1b[31m") || sgr_before.contains(";31m"),
        "red ERROR: {error:?}"
    );
    assert!(error.contains("\x1b[36mapi"), "cyan api: {error:?}");
    assert!(info.contains("\x1b[35msignal"), "magenta signal: {info:?}");
    assert!(info.contains("\x1b[32mINFO"), "green INFO: {info:?}");
    assert!(
        !info.contains("\x1b[31m"),
        "no red on an info line: {info:?}"
    );
    let plain = strip(&error);
    let cols: Vec<&str> = plain.split_whitespace().collect();
    assert_eq!(
        &cols[1..],
        ["api", "ERROR", "call.failed", "c0ffee0c"],
        "{plain:?}"
    );
}

#[tokio::test]
async fn color_never_gives_plain_text() {
    let (error, info) = show("never", "", "--color never", "").await;
    assert_plain_and_readable(&error, &info);
}

#[tokio::test]
async fn no_color_environment_is_respected() {
    let (error, info) = show("nocolor", "NO_COLOR=1", "", "").await;
    assert_plain_and_readable(&error, &info);
}

#[tokio::test]
async fn piped_stdout_gets_no_colors_unless_forced() {
    let (error, info) = show("pipe", "", "", "| cat").await;
    assert_plain_and_readable(&error, &info);
    let (error, _) = show("pipe-always", "NO_COLOR=1", "--color always", "| cat").await;
    assert!(
        error.contains("\x1b[31m") || error.contains(";31m"),
        "--color always wins: {error:?}"
    );
}

/// Closing the terminal (SIGHUP to a console on a tty) ends the logger instead of leaving it
/// running unseen; on a daemon (stdout not a tty) SIGHUP reopens the file instead.
#[tokio::test]
async fn closing_the_terminal_ends_the_logger() {
    let redis = RedisServer::start();
    let tmux = Tmux::start("hangup");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("stderr.log");
    tmux.type_line(&format!(
        "exec env REDIS_URL={} {} --no-file --health-listen off 2>{}",
        redis.url(),
        logger_bin(),
        err.display()
    ));
    eventually("the logger to subscribe", || {
        std::fs::read_to_string(&err).is_ok_and(|s| s.contains("following logs:*"))
    })
    .await;
    let pid = tmux.run(&["display-message", "-p", "-t", "t", "#{pane_pid}"]);
    let status = format!("/proc/{}/status", pid.trim());
    let running = || {
        std::fs::read_to_string(&status)
            .is_ok_and(|s| s.contains("hermes-logger") && !s.contains("State:\tZ"))
    };
    assert!(running(), "the pane runs the logger ({status})");
    tmux.run(&["kill-server"]);
    eventually("the logger to exit after the terminal closed", || {
        !running()
    })
    .await;
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(stderr.contains("terminal closed"), "{stderr}");
}
