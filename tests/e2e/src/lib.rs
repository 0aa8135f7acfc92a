//! Harness of the end-to-end tests: the whole Hermes stack on loopback (a private Redis,
//! hermes-api, hermes-signal, hermes-turn, hermes-logger and Caddy with `caddy/Caddyfile.local`),
//! every process on free ports with its output in a temp dir, and the Node driver
//! (`driver/call.mjs`, playwright-core with Debian's Chromium) that runs browser scenarios.
//!
//! The binaries must be built first (`cargo build --workspace`, which `make test` does).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hermes_testkit::{
    ChildGuard, RedisServer, Transport, free_tcp_port, free_tcp_udp_port, require_program,
    wait_until_child_holds, workspace_bin, workspace_root,
};
use serde_json::Value;

pub mod netlab;

/// Secrets for this test run only (development mode accepts them).
const JWT_SECRET: &str = "e2e-jwt-secret-0123456789abcdef0123456789abcdef";
pub const TURN_SECRET: &str = "e2e-turn-secret-0123456789abcdef0123456789abcdef";

/// `GET path` over plain HTTP/1.1; returns the status code and the raw response.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line from {addr}{path}"))?;
    Ok((status, text))
}

/// Poll `GET path` until `ok(status)` or the timeout.
pub fn wait_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    ok: impl Fn(u16) -> bool,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match http_get(addr, path) {
            Ok((status, _)) if ok(status) => return Ok(status),
            Ok((status, _)) => last = format!("status {status}"),
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(format!("{addr}{path} not ready within {timeout:?}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One service process of the stack, with what it takes to start it again.
struct Service {
    guard: ChildGuard,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

/// Changes to the stack's default configuration (loopback, plain HTTP), e.g. for the network
/// lab (`netlab`): each service's extra environment (appended, so it wins over a default of
/// the same name), another Caddyfile, and the URL browsers open.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    pub api_env: Vec<(&'static str, String)>,
    pub signal_env: Vec<(&'static str, String)>,
    pub turn_env: Vec<(&'static str, String)>,
    pub caddy_env: Vec<(&'static str, String)>,
    /// Default `caddy/Caddyfile.local`.
    pub caddyfile: Option<PathBuf>,
    /// What [`Stack::base_url`] returns; default `http://127.0.0.1:<port>`.
    pub public_base: Option<String>,
}

/// The whole stack on loopback.
pub struct Stack {
    pub redis: RedisServer,
    services: HashMap<&'static str, Service>,
    pub http_port: u16,
    pub api_port: u16,
    pub signal_port: u16,
    pub turn_port: u16,
    pub turn_metrics_port: u16,
    pub logger_health_port: u16,
    dir: tempfile::TempDir,
    caddyfile: PathBuf,
    public_base: Option<String>,
}

impl Stack {
    /// Start everything with `ICE_TRANSPORT_POLICY=policy` and wait until it is ready
    /// through Caddy.
    pub fn start(policy: &str) -> Result<Self, String> {
        Self::start_with(policy, StackOptions::default())
    }

    /// [`Stack::start`] with some of the configuration changed.
    pub fn start_with(policy: &str, options: StackOptions) -> Result<Self, String> {
        let caddy = require_program("caddy", "caddy");
        let dir = tempfile::Builder::new()
            .prefix("hermes-e2e-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let redis = RedisServer::start();
        let mut stack = Self {
            redis,
            services: HashMap::new(),
            http_port: free_tcp_port(),
            api_port: free_tcp_port(),
            signal_port: free_tcp_port(),
            // The STUN/TURN port: the one an override of TURN_LISTEN names (the readiness
            // check looks for it), else a free one.
            turn_port: options
                .turn_env
                .iter()
                .find(|(k, _)| *k == "TURN_LISTEN")
                .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
                .unwrap_or_else(free_tcp_udp_port),
            turn_metrics_port: free_tcp_port(),
            logger_health_port: free_tcp_port(),
            dir,
            caddyfile: options
                .caddyfile
                .clone()
                .unwrap_or_else(|| workspace_root().join("caddy/Caddyfile.local")),
            public_base: options.public_base.clone(),
        };
        let origin = format!("http://127.0.0.1:{}", stack.http_port);
        let common = [
            ("HERMES_ENV", "development".to_owned()),
            ("REDIS_URL", stack.redis.url()),
            ("SERVER_NAME", "localhost".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("JWT_SECRET", JWT_SECRET.to_owned()),
            ("TURN_SECRET", TURN_SECRET.to_owned()),
        ];
        let with = |extra: &[(&str, String)]| -> Vec<(String, String)> {
            common
                .iter()
                .chain(extra.iter())
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let mut api_env = stack.api_env(policy, &origin);
        api_env.extend(options.api_env.iter().cloned());
        let api_env = with(&api_env);
        stack.spawn("api", workspace_bin("hermes-api"), api_env)?;
        let signal_env = with(&[
            ("SIGNAL_LISTEN", format!("127.0.0.1:{}", stack.signal_port)),
            ("SIGNAL_ALLOWED_ORIGINS", origin.clone()),
            ("SIGNAL_DRAIN_MS", "2000".to_owned()),
            // Short grace and lease so "the other person left" shows within seconds; still far
            // longer than a reconnect (a signal restart takes ~0.2 s plus backoff).
            ("SIGNAL_GRACE_MS", "5000".to_owned()),
            ("SIGNAL_LEASE_MS", "3000".to_owned()),
        ]);
        let mut signal_env = signal_env;
        signal_env.extend(
            options
                .signal_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        );
        stack.spawn("signal", workspace_bin("hermes-signal"), signal_env)?;
        let turn_env = with(&[
            ("TURN_LISTEN", format!("127.0.0.1:{}", stack.turn_port)),
            ("TURNS_LISTEN", format!("127.0.0.1:{}", free_tcp_port())),
            ("TURN_REALM", "localhost".to_owned()),
            ("TURN_RELAY_IP", "127.0.0.1".to_owned()),
            ("TURN_EXTERNAL_IP", "127.0.0.1".to_owned()),
            (
                "TURN_METRICS_LISTEN",
                format!("127.0.0.1:{}", stack.turn_metrics_port),
            ),
            ("TURN_ALLOW_LOOPBACK_PEERS", "true".to_owned()),
        ]);
        let mut turn_env = turn_env;
        turn_env.extend(
            options
                .turn_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        );
        stack.spawn("turn", workspace_bin("hermes-turn"), turn_env)?;
        let logger_file = stack.dir.path().join("observer.log");
        let logger_env = with(&[
            ("LOGGER_FILE", logger_file.display().to_string()),
            (
                "LOGGER_HEALTH_LISTEN",
                format!("127.0.0.1:{}", stack.logger_health_port),
            ),
            ("LOGGER_INCLUDE_DETAIL", "true".to_owned()),
            ("LOGGER_COLOR", "never".to_owned()),
        ]);
        stack.spawn("logger", workspace_bin("hermes-logger"), logger_env)?;
        let caddy_home = stack.dir.path().join("caddy");
        let mut caddy_env = vec![
            (
                "HERMES_HTTP_ADDR".to_owned(),
                format!("127.0.0.1:{}", stack.http_port),
            ),
            (
                "HERMES_WEB_ROOT".to_owned(),
                workspace_root().join("web").display().to_string(),
            ),
            (
                "API_UPSTREAMS".to_owned(),
                format!("127.0.0.1:{}", stack.api_port),
            ),
            (
                "SIGNAL_UPSTREAMS".to_owned(),
                format!("127.0.0.1:{}", stack.signal_port),
            ),
            ("XDG_DATA_HOME".to_owned(), caddy_home.display().to_string()),
            (
                "XDG_CONFIG_HOME".to_owned(),
                caddy_home.display().to_string(),
            ),
        ];
        caddy_env.extend(
            options
                .caddy_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        );
        stack.spawn("caddy", caddy, caddy_env)?;
        stack.wait_ready()?;
        Ok(stack)
    }

    fn api_env(&self, policy: &str, origin: &str) -> Vec<(&'static str, String)> {
        vec![
            ("API_LISTEN", format!("127.0.0.1:{}", self.api_port)),
            ("SIGNAL_PUBLIC_URL", "/ws".to_owned()),
            ("TURN_PUBLIC_HOST", "127.0.0.1".to_owned()),
            ("TURN_PORT", self.turn_port.to_string()),
            ("ICE_TRANSPORT_POLICY", policy.to_owned()),
            ("CORS_DEV_ORIGINS", origin.to_owned()),
            // Every browser request comes from 127.0.0.1: the per-IP limit of 60/min is not
            // what this test is about (crates/api tests it).
            ("API_RATE_LIMIT", "1000".to_owned()),
        ]
    }

    fn spawn(
        &mut self,
        name: &'static str,
        program: PathBuf,
        env: Vec<(String, String)>,
    ) -> Result<(), String> {
        let log = self.dir.path().join(format!("{name}.log"));
        let args: Vec<String> = if name == "caddy" {
            ["run", "--adapter", "caddyfile", "--config"]
                .iter()
                .map(|a| (*a).to_owned())
                .chain([self.caddyfile.display().to_string()])
                .collect()
        } else {
            Vec::new()
        };
        let guard = start_process(name, &program, &args, &env, &log)?;
        self.services.insert(
            name,
            Service {
                guard,
                program,
                args,
                env,
                log,
            },
        );
        Ok(())
    }

    /// Every service answers its health check, and Caddy routes to api and signal.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let t = Duration::from_secs(20);
        // Each port is held by its own process: a health check alone could be answered by
        // another test's server that took the "free" port first (ours then exits).
        let owners = [
            ("api", self.api_port),
            ("signal", self.signal_port),
            ("turn", self.turn_port),
            ("turn", self.turn_metrics_port),
            ("logger", self.logger_health_port),
            ("caddy", self.http_port),
        ];
        for (name, port) in owners {
            let held = match self.services.get_mut(name) {
                Some(service) => {
                    wait_until_child_holds(&mut service.guard, Transport::Tcp, port, t)
                        .map_err(|e| format!("{e:?}"))
                }
                None => Err("not started".to_owned()),
            };
            if let Err(e) = held {
                return Err(format!(
                    "{name} does not hold port {port}: {e}\n{}",
                    self.log_tail(name)
                ));
            }
        }
        let checks = [
            ("api", loopback(self.api_port), "/healthz"),
            ("signal", loopback(self.signal_port), "/healthz"),
            ("turn", loopback(self.turn_metrics_port), "/healthz"),
            ("logger", loopback(self.logger_health_port), "/healthz"),
        ];
        for (name, addr, path) in checks {
            if let Err(e) = wait_http(addr, path, t, |s| s == 200) {
                return Err(format!("{name}: {e}\n{}", self.log_tail(name)));
            }
        }
        let caddy = loopback(self.http_port);
        wait_http(caddy, "/", t, |s| s == 200)
            .map_err(|e| format!("caddy: {e}\n{}", self.log_tail("caddy")))?;
        // Caddy's active health checks must have marked the upstreams up.
        wait_http(caddy, "/api/openapi.json", t, |s| s == 200)
            .map_err(|e| format!("caddy → api: {e}\n{}", self.log_tail("caddy")))?;
        wait_http(caddy, "/ws", t, |s| s != 502 && s != 503)
            .map_err(|e| format!("caddy → signal: {e}\n{}", self.log_tail("caddy")))?;
        Ok(())
    }

    pub fn base_url(&self) -> String {
        match &self.public_base {
            Some(base) => base.clone(),
            None => format!("http://127.0.0.1:{}", self.http_port),
        }
    }

    /// Process id of a running service.
    pub fn pid(&mut self, name: &str) -> Option<u32> {
        self.services.get_mut(name)?.guard.id()
    }

    /// SIGTERM a service and leave it stopped (e.g. to put another server in its place);
    /// [`Stack::restart_with_env`] starts it again.
    pub fn stop(&mut self, name: &str) -> Result<(), String> {
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| format!("no service {name}"))?;
        svc.guard.terminate(Duration::from_secs(10));
        Ok(())
    }

    /// Restart a service without some environment variables (back to their defaults).
    pub fn restart_without_env(&mut self, name: &str, keys: &[&str]) -> Result<(), String> {
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| format!("no service {name}"))?;
        svc.env.retain(|(k, _)| !keys.contains(&k.as_str()));
        self.restart(name).map(|_| ())
    }

    pub fn caddy_addr(&self) -> SocketAddr {
        loopback(self.http_port)
    }

    /// SIGTERM a service (it drains), start it again with the same configuration and wait
    /// until it is healthy again.
    pub fn restart(&mut self, name: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| format!("no service {name}"))?;
        // A service left stopped by [`Stack::stop`] just starts.
        let running = svc.guard.id().is_some();
        let status = svc.guard.terminate(Duration::from_secs(10));
        if running && status.is_none_or(|s| !s.success()) {
            return Err(format!(
                "{name} did not exit cleanly on SIGTERM: {status:?}"
            ));
        }
        svc.guard = start_process(name, &svc.program, &svc.args, &svc.env, &svc.log)?;
        self.wait_ready()?;
        Ok(started.elapsed())
    }

    /// SIGKILL a service (a crash) and start it again at once with the same configuration.
    pub fn crash_and_start(&mut self, name: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| format!("no service {name}"))?;
        svc.guard.kill();
        svc.guard = start_process(name, &svc.program, &svc.args, &svc.env, &svc.log)?;
        self.wait_ready()?;
        Ok(started.elapsed())
    }

    /// Restart the API with another ICE transport policy.
    pub fn restart_api_with_policy(&mut self, policy: &str) -> Result<(), String> {
        let origin = self.base_url();
        let extra = self.api_env(policy, &origin);
        self.restart_with_env("api", &extra)
    }

    /// Restart a service with some environment variables set (or replaced).
    pub fn restart_with_env(&mut self, name: &str, vars: &[(&str, String)]) -> Result<(), String> {
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| format!("no service {name}"))?;
        for (k, v) in vars {
            match svc.env.iter_mut().find(|(key, _)| key == k) {
                Some(e) => e.1 = v.clone(),
                None => svc.env.push(((*k).to_owned(), v.clone())),
            }
        }
        self.restart(name).map(|_| ())
    }

    /// Everything a service printed so far.
    pub fn log(&self, name: &str) -> String {
        self.services
            .get(name)
            .and_then(|s| std::fs::read_to_string(&s.log).ok())
            .unwrap_or_default()
    }

    /// The logger's file sink (what an operator sees in /var/log/calls/observer.log).
    pub fn observer_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("observer.log")).unwrap_or_default()
    }

    fn log_tail(&self, name: &str) -> String {
        let log = self.log(name);
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("--- {name} log (tail) ---\n{}", lines[from..].join("\n"))
    }

    /// Tails of every log, for a failure message.
    pub fn diagnostics(&self) -> String {
        ["api", "signal", "turn", "logger", "caddy"]
            .iter()
            .map(|n| self.log_tail(n))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn start_process(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<ChildGuard, String> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    ChildGuard::spawn(name, &mut cmd).map_err(|e| format!("spawn {name}: {e}"))
}

/// `npm ci` in tests/e2e when a package of package.json is not installed yet.
pub fn ensure_node_modules() -> Result<PathBuf, String> {
    let dir = workspace_root().join("tests/e2e");
    if ["playwright-core", "axe-core"]
        .iter()
        .all(|p| dir.join(format!("node_modules/{p}/package.json")).is_file())
    {
        return Ok(dir);
    }
    let npm = require_program("npm", "nodejs");
    let status = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("npm ci: {e}"))?;
    if !status.success() {
        return Err(format!("npm ci failed: {status}"));
    }
    Ok(dir)
}

/// What one driver run reported.
#[derive(Debug, Default)]
pub struct DriverRun {
    /// Every JSON line, in order.
    pub events: Vec<Value>,
    /// The final `done` object.
    pub done: Value,
    pub exit_ok: bool,
}

impl DriverRun {
    /// Names of the checks that passed.
    pub fn checks(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "check" && e["ok"] == true)
            .filter_map(|e| e["what"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn join_ms(&self) -> Vec<f64> {
        self.done["joinMs"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }
}

/// Run `driver/call.mjs` against the stack; answers its restart requests; gives up after
/// `timeout` (the browsers are killed with the driver).
pub fn run_driver(
    stack: &mut Stack,
    policy: &str,
    runs: u32,
    scenarios: &str,
    out_dir: &Path,
    timeout: Duration,
) -> Result<DriverRun, String> {
    let args: Vec<String> = [
        "--policy",
        policy,
        "--runs",
        &runs.to_string(),
        "--scenarios",
        scenarios,
        "--out",
        &out_dir.display().to_string(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    run_driver_with(
        stack,
        policy,
        &args,
        timeout,
        |stack, action| match action {
            "restart-signal" => stack.restart("signal"),
            "crash-turn" => stack.crash_and_start("turn"),
            other => Err(format!("unknown request {other:?}")),
        },
    )
}

/// Run `driver/call.mjs --base <stack URL>` with `args`; each `{"event":"request"}` line is
/// answered on the driver's stdin with `restarted` when `on_request(stack, action)` succeeds
/// (`failed: …` otherwise). Gives up after `timeout` (the browsers are killed with the driver).
pub fn run_driver_with(
    stack: &mut Stack,
    label: &str,
    args: &[String],
    timeout: Duration,
    mut on_request: impl FnMut(&mut Stack, &str) -> Result<Duration, String>,
) -> Result<DriverRun, String> {
    let base = stack.base_url();
    run_driver_at(&base, label, args, timeout, |action| {
        on_request(stack, action)
    })
}

/// [`run_driver_with`] against any base URL (e.g. a stack started by `make run`).
pub fn run_driver_at(
    base: &str,
    label: &str,
    args: &[String],
    timeout: Duration,
    mut on_request: impl FnMut(&str) -> Result<Duration, String>,
) -> Result<DriverRun, String> {
    let dir = ensure_node_modules()?;
    let node = require_program("node", "nodejs");
    let mut cmd = Command::new(node);
    cmd.arg(dir.join("driver/call.mjs"))
        .args(["--base", base])
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn("driver", &mut cmd).map_err(|e| format!("node: {e}"))?;
    let child = guard
        .child_mut()
        .ok_or_else(|| "driver child gone".to_owned())?;
    let stdout = child.stdout.take().ok_or("driver stdout")?;
    let mut stdin = child.stdin.take().ok_or("driver stdin")?;
    // Read lines on a thread so the timeout holds even if the driver hangs.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut run = DriverRun::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "driver timed out after {timeout:?}; events so far: {:#?}",
                run.events
            ));
        }
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        eprintln!("[driver {label}] {line}");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["event"] == "request" {
            let action = v["action"].as_str().unwrap_or_default();
            let answer = match on_request(action) {
                Ok(took) => {
                    eprintln!("[e2e] {action} done in {took:?}");
                    "restarted".to_owned()
                }
                Err(e) => format!("failed: {e}"),
            };
            writeln!(stdin, "{answer}").map_err(|e| format!("driver stdin: {e}"))?;
        }
        if v["event"] == "done" {
            run.done = v.clone();
        }
        run.events.push(v);
    }
    let status = guard
        .child_mut()
        .ok_or("driver child gone")?
        .wait()
        .map_err(|e| e.to_string())?;
    run.exit_ok = status.success();
    Ok(run)
}

/// Median of a non-empty list.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
