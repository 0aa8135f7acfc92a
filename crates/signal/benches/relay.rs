//! `make bench BENCH=signal`: relay latency and throughput for many concurrent calls, same-replica
//! and cross-replica, beside the floor measured in the same run (a raw Redis PUBLISH →
//! subscriber hop under the same closed-loop concurrency), and the memory of idle connections.
//!
//! Everything runs on 127.0.0.1: a private redis-server, replicas as child processes of the
//! release `hermes-signal` binary, and WebSocket clients in this process.
//!
//! A second reference runs in the open loop: a bare forwarder (this executable started with
//! `--forwarder`) that takes the same path as a cross-replica message (WebSocket in, PUBLISH,
//! a subscriber on another process, WebSocket out) and does nothing else: no token check,
//! seats, sequence numbers, resume log or limits. The raw hop is two network hops; any relay
//! between two WebSocket clients through Redis is at least four, so the bare forwarder is the
//! floor of the architecture and `hermes / forwarder` is what Hermes itself adds. Every loop is
//! bounded in count and in time.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::InfoKind;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hermes_proto::signal::{ClientMessage, IceCandidate};
use hermes_proto::token::JOIN_TOKEN_TTL_SECS;
use hermes_proto::{CallId, JoinClaims, JoinTokenKeys, ParticipantId, Role};
use hermes_testkit::{ChildGuard, RedisServer, free_tcp_port, wait_for_tcp};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[path = "relay/cluster.rs"]
mod cluster;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Replica {
    guard: ChildGuard,
    url: String,
}

fn start_replica(redis: &str) -> Replica {
    let port = free_tcp_port();
    spawn_ws_server(
        "hermes-signal",
        port,
        // SIGNAL_BENCH_BIN: another build of hermes-signal (say, main's) to compare with.
        std::process::Command::new(
            std::env::var("SIGNAL_BENCH_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hermes-signal").to_owned()),
        )
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", redis])
        .args(["--jwt-secret", SECRET])
        // Benchmark traffic is far above a browser's; lift the per-connection limits.
        .args(["--rate-per-sec", "100000", "--rate-burst", "100000"])
        .env("RUST_LOG", "warn"),
    )
}

/// Spawn `command` (a WebSocket server on 127.0.0.1:`port`, path `/ws`) and wait until it
/// listens.
fn spawn_ws_server(name: &str, port: u16, command: &mut std::process::Command) -> Replica {
    let guard = ChildGuard::spawn(name, command.stdout(std::process::Stdio::null())).unwrap();
    wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).unwrap();
    Replica {
        guard,
        url: format!("ws://127.0.0.1:{port}/ws"),
    }
}

/// Start a bare forwarder (this executable with `--forwarder`) as a child process.
fn start_forwarder(redis: &str) -> Replica {
    let port = free_tcp_port();
    spawn_ws_server(
        "bench forwarder",
        port,
        std::process::Command::new(std::env::current_exe().unwrap()).args([
            "--forwarder",
            &port.to_string(),
            redis,
        ]),
    )
}

/// A connected command client and a subscriber with a queue deep enough for the bench.
async fn publisher_and_subscriber(redis: &str) -> (Client, SubscriberClient) {
    let config = Config::from_url(redis).unwrap();
    let publisher = Builder::from_config(config.clone()).build().unwrap();
    publisher.init().await.unwrap();
    let subscriber = Builder::from_config(config)
        .with_performance_config(|p| p.broadcast_channel_capacity = 1 << 16)
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    (publisher, subscriber)
}

/// The call id inside a join message's token (payload decoded, signature not checked: the
/// forwarder is a reference for the transport path only).
fn call_of_join(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let payload = v["token"].as_str()?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(claims["cid"].as_str()?.to_owned())
}

type Locals = Arc<Mutex<HashMap<String, Vec<(u64, tokio::sync::mpsc::UnboundedSender<String>)>>>>;

/// The bare forwarder: WebSocket text in → PUBLISH `ref:{call}` → this or another process's
/// subscriber → WebSocket text out to the call's other local connections.
fn forwarder_main(port: u16, redis: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (publisher, subscriber) = publisher_and_subscriber(redis).await;
        // One pattern subscription for every call, proven before serving: no per-call
        // SUBSCRIBE on the path (fred may leave those unflushed).
        let mut messages = subscriber.message_rx();
        subscriber.psubscribe("ref:*").await.unwrap();
        'probe: for _ in 0..50 {
            let _ = subscriber.ping::<Value>(None).await;
            let _: i64 = publisher.publish("ref:probe", "0|probe").await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, messages.recv()).await {
                if &*m.channel == "ref:probe" {
                    break 'probe;
                }
            }
        }
        let locals: Locals = Arc::default();
        let routes = locals.clone();
        tokio::spawn(async move {
            while let Ok(m) = messages.recv().await {
                let Some(text) = m.value.as_str() else {
                    continue;
                };
                let Some((from, body)) = text.split_once('|') else {
                    continue;
                };
                let from: u64 = from.parse().unwrap_or(0);
                if let Some(list) = routes.lock().unwrap().get(&*m.channel) {
                    for (id, tx) in list {
                        if *id != from {
                            let _ = tx.send(body.to_owned());
                        }
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        // Connection ids unique across the forwarder processes (the router skips the sender's).
        let mut next = u64::from(rand::random::<u32>()) << 32;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            next += 1;
            let id = next;
            let (publisher, locals) = (publisher.clone(), locals.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                let channel = loop {
                    match rx.next().await {
                        Some(Ok(Message::Text(t))) => match call_of_join(&t) {
                            Some(call) => break format!("ref:{call}"),
                            None => return,
                        },
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                locals
                    .lock()
                    .unwrap()
                    .entry(channel.clone())
                    .or_default()
                    .push((id, out_tx));
                if tx
                    .send(Message::text(r#"{"type":"joined"}"#))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::spawn(async move {
                    while let Some(t) = out_rx.recv().await {
                        if tx.send(Message::text(t)).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(m)) = rx.next().await {
                    if let Message::Text(t) = m {
                        let _: Result<i64, _> = publisher
                            .publish(channel.as_str(), format!("{id}|{}", t.as_str()))
                            .await;
                    }
                }
            });
        }
    });
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time of a process so far, in microseconds: the sum over its threads of
/// `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on a CPU), so short runs are metered
/// precisely; `/proc/<pid>/stat` (utime + stime, in clock ticks of 10 ms) where schedstat is
/// missing.
fn cpu_micros(pid: u32) -> u64 {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !threads.is_empty() {
        return threads.iter().sum::<u64>() / 1000;
    }
    stat_cpu_micros(pid)
}

/// The read and write system calls `pid` made so far (`syscr`, `syscw` of `/proc/<pid>/io`).
fn syscalls(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("syscr:"), field("syscw:"))
}

/// utime + stime from `/proc/<pid>/stat`, in microseconds.
fn stat_cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks * 1_000_000 / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Redis's command counters (`INFO commandstats`): calls per command.
async fn redis_commands(admin: &Client) -> HashMap<String, u64> {
    let info: String = admin
        .info(Some(InfoKind::CommandStats))
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Wait until Redis is quiet: at most a few commands in 100 ms besides this check's own
/// (joins, disconnects and their events done), for at most 5 s after a first 500 ms.
async fn settle(admin: &Client) {
    let processed = || async {
        info_number(admin, InfoKind::Stats, "total_commands_processed")
            .await
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = processed().await;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = processed().await;
        if now.saturating_sub(last) <= 20 {
            return;
        }
        last = now;
    }
}

/// A number of `INFO <section>`: the value of `field` (None when absent or not answered).
async fn info_number(admin: &Client, section: InfoKind, field: &str) -> Option<u64> {
    let info: String = admin.info(Some(section)).await.ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

async fn redis_pid(admin: &Client) -> u32 {
    let pid = info_number(admin, InfoKind::Server, "process_id").await;
    pid.and_then(|p| u32::try_from(p).ok()).unwrap()
}

/// `SIGNAL_BENCH_CALLGRIND=1`: redis-server runs under `valgrind --tool=callgrind`, and each
/// metered phase counts the instructions it executed (counters zeroed at the meter's start,
/// dumped at its end): a cost per message that the load of a shared machine cannot move.
struct Callgrind {
    pid: u32,
    dir: std::path::PathBuf,
}

static CALLGRIND: std::sync::OnceLock<Callgrind> = std::sync::OnceLock::new();

impl Callgrind {
    fn control(&self, flag: &str) {
        let status = std::process::Command::new("callgrind_control")
            .args([flag, &self.pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "callgrind_control {flag} failed");
    }

    fn zero(&self) {
        self.control("-z");
    }

    /// Dump the counters since the last zero and return their total instruction count.
    fn dump(&self) -> u64 {
        let before = self.dumps();
        self.control("-d");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let new: Vec<_> = self
                .dumps()
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            // The dump is complete once its totals line is written.
            if let Some(total) = new.iter().find_map(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("totals:"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            }) {
                return total;
            }
            assert!(Instant::now() < deadline, "no callgrind dump");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dumps(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("callgrind.out"))
            .collect()
    }
}

/// redis-server under callgrind on a free port (its data and dumps in `dir`).
fn start_redis_under_callgrind(dir: &std::path::Path) -> (ChildGuard, String) {
    let port = free_tcp_port();
    let guard = ChildGuard::spawn(
        "redis-server (callgrind)",
        std::process::Command::new("valgrind")
            .args(["--tool=callgrind", "--quiet"])
            .arg(format!(
                "--callgrind-out-file={}/callgrind.out.%p",
                dir.display()
            ))
            .args(["redis-server", "--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null()),
    )
    .unwrap();
    wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(60)).unwrap();
    (guard, format!("redis://127.0.0.1:{port}"))
}

/// The closed-loop rows only, with redis-server's instructions per message.
async fn callgrind_main(calls: usize, rounds: usize, keep: bool) {
    // Its own directory for Redis's files and the dumps, removed at the end.
    let dir = std::env::temp_dir().join(format!("hermes-signal-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (redis, url) = start_redis_under_callgrind(&dir);
    let admin = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    admin.init().await.unwrap();
    let pid = redis_pid(&admin).await;
    let _ = CALLGRIND.set(Callgrind {
        pid,
        dir: dir.clone(),
    });
    let procs = [("redis", pid)];
    eprintln!("callgrind: bare forwarder, {calls} calls × {rounds}");
    let (f1, f2) = (start_forwarder(&url), start_forwarder(&url));
    let (fwd, fwd_cost) = relay_run(&f1.url, &f2.url, calls, rounds, &admin, &procs).await;
    drop((f1, f2));
    let (r1, r2) = (start_replica(&url), start_replica(&url));
    eprintln!("callgrind: same replica");
    let (same, same_cost) = relay_run(&r1.url, &r1.url, calls, rounds, &admin, &procs).await;
    eprintln!("callgrind: cross replica");
    let (cross, cross_cost) = relay_run(&r1.url, &r2.url, calls, rounds, &admin, &procs).await;
    let hold = Duration::from_secs(env_usize("SIGNAL_BENCH_HOLD_SECS", 20) as u64);
    eprintln!("callgrind: real call mix, {calls} calls set up, then held {hold:?}");
    let meter = Meter::start(&admin, &procs).await;
    let pairs = mix_setup(&r1.url, &r2.url, calls).await;
    let held = pairs.len();
    let setup_cost = meter.cost(&admin, held).await;
    let meter = Meter::start(&admin, &procs).await;
    mix_hold(pairs, hold).await;
    let hold_cost = meter
        .cost(&admin, (held as f64 * hold.as_secs_f64()).round() as usize)
        .await;
    drop((r1, r2, redis));
    if keep {
        // The dumps, one per metered phase in order: forwarder, same, cross.
        eprintln!("callgrind dumps kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!();
    println!(
        "redis-server under callgrind: {calls} concurrent calls, closed loop, {rounds} messages per call"
    );
    println!(
        "| path | messages | instructions/msg | / forwarder | Redis cmds/msg | top commands per message |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    let base = fwd_cost.instructions.unwrap_or(f64::NAN);
    for (name, r, c) in [
        ("bare forwarder, two processes", &fwd, &fwd_cost),
        ("same replica", &same, &same_cost),
        ("cross replica", &cross, &cross_cost),
    ] {
        let i = c.instructions.unwrap_or(f64::NAN);
        println!(
            "| {name} | {} | {i:.0} | {:.2} | {:.2} | {} |",
            r.samples.len(),
            i / base,
            c.commands,
            c.top
        );
    }
    println!();
    println!(
        "real call mix across replicas, {held} calls (as in the full bench), redis-server instructions:"
    );
    println!("| phase | instructions | Redis cmds | top commands |");
    println!("|---|---:|---:|---|");
    for (name, c) in [
        ("setup, per call", &setup_cost),
        ("held, per call per second", &hold_cost),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {} |",
            c.instructions.unwrap_or(f64::NAN),
            c.commands,
            c.top
        );
    }
}

/// What one run cost: CPU of each process and Redis commands, per delivered message.
struct Cost {
    /// (process, CPU µs per message)
    cpu: Vec<(&'static str, f64)>,
    commands: f64,
    /// The commands Redis ran most, per message.
    top: String,
    /// Instructions redis-server executed per message (callgrind mode only).
    instructions: Option<f64>,
    /// Redis' read and write system calls per message (`/proc/<pid>/io`).
    redis_syscalls: (f64, f64),
}

/// Snapshot before a run; [`Meter::cost`] after it.
struct Meter {
    procs: Vec<(&'static str, u32, u64)>,
    commands: HashMap<String, u64>,
    /// Redis' pid and its read and write system calls so far.
    redis_io: Option<(u32, (u64, u64))>,
}

impl Meter {
    async fn start(admin: &Client, procs: &[(&'static str, u32)]) -> Self {
        let commands = redis_commands(admin).await;
        if let Some(cg) = CALLGRIND.get() {
            cg.zero();
        }
        Self {
            procs: procs
                .iter()
                .map(|&(name, pid)| (name, pid, cpu_micros(pid)))
                .collect(),
            commands,
            redis_io: procs
                .iter()
                .find(|(name, _)| *name == "redis")
                .map(|&(_, pid)| (pid, syscalls(pid))),
        }
    }

    async fn cost(&self, admin: &Client, messages: usize) -> Cost {
        let n = messages.max(1) as f64;
        // Before the INFO below, which is not the path's.
        let instructions = CALLGRIND.get().map(|cg| cg.dump() as f64 / n);
        let cpu = self
            .procs
            .iter()
            .map(|&(name, pid, before)| (name, cpu_micros(pid).saturating_sub(before) as f64 / n))
            .collect();
        let redis_syscalls = self.redis_io.map_or((0.0, 0.0), |(pid, (r, w))| {
            let (r2, w2) = syscalls(pid);
            (
                r2.saturating_sub(r) as f64 / n,
                w2.saturating_sub(w) as f64 / n,
            )
        });
        let after = redis_commands(admin).await;
        let mut deltas: Vec<(String, u64)> = after
            .into_iter()
            .map(|(k, v)| {
                let d = v.saturating_sub(self.commands.get(&k).copied().unwrap_or(0));
                (k, d)
            })
            // The meter's own INFO calls are not the path's.
            .filter(|(k, d)| *d > 0 && k != "info")
            .collect();
        deltas.sort_by_key(|d| std::cmp::Reverse(d.1));
        let commands = deltas.iter().map(|(_, d)| *d as f64).sum::<f64>() / n;
        let top = deltas
            .iter()
            .take(8)
            .map(|(k, d)| format!("{k} {:.2}", *d as f64 / n))
            .collect::<Vec<_>>()
            .join(", ");
        Cost {
            cpu,
            commands,
            top,
            instructions,
            redis_syscalls,
        }
    }

    fn cpu_of(cost: &Cost, prefix: &str) -> f64 {
        cost.cpu
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

/// A process whose CPU a meter reads: its name in the tables and its pid.
type Proc = (&'static str, u32);

/// One path's closed-loop turns as one: every sample, the walls summed, the costs per message
/// weighted by each turn's messages (the commands Redis ran most: the first turn's).
fn combine_turns(turns: Vec<(Run, Cost)>) -> (Run, Cost) {
    let counts: Vec<f64> = turns.iter().map(|(r, _)| r.samples.len() as f64).collect();
    let total = counts.iter().sum::<f64>().max(1.0);
    let mean = |f: &dyn Fn(&Cost) -> f64| {
        turns
            .iter()
            .zip(&counts)
            .map(|((_, c), n)| f(c) * n)
            .sum::<f64>()
            / total
    };
    let first = turns.first().map(|(_, c)| c);
    let cost = Cost {
        cpu: first
            .map(|c| {
                c.cpu
                    .iter()
                    .map(|&(name, _)| (name, mean(&|c| Meter::cpu_of(c, name))))
                    .collect()
            })
            .unwrap_or_default(),
        commands: mean(&|c| c.commands),
        top: first.map(|c| c.top.clone()).unwrap_or_default(),
        instructions: None,
        redis_syscalls: (mean(&|c| c.redis_syscalls.0), mean(&|c| c.redis_syscalls.1)),
    };
    let mut run = Run {
        samples: Vec::new(),
        sent: Vec::new(),
        wall: Duration::ZERO,
    };
    for (r, _) in turns {
        run.samples.extend(r.samples);
        run.wall += r.wall;
    }
    (run, cost)
}

fn token(keys: &JoinTokenKeys, call: &CallId, role: Role) -> String {
    let claims = JoinClaims::new(
        call.clone(),
        ParticipantId::random(&mut rand::rng()),
        role,
        hermes_service::unix_now(),
        JOIN_TOKEN_TTL_SECS,
        &mut rand::rng(),
    );
    keys.sign(&claims)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(url: &str, token: String) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap();
    let join = ClientMessage::Join {
        token,
        last_seq: None,
        call_id: None,
        last_seqs: None,
    };
    ws.send(Message::text(serde_json::to_string(&join).unwrap()))
        .await
        .unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"joined\"") => return ws,
            Some(Ok(Message::Text(t))) => panic!("join failed: {t}"),
            Some(Ok(_)) => continue,
            other => panic!("join failed: {other:?}"),
        }
    }
}

/// Latency samples in microseconds plus wall time; in the open loop also each sample's send
/// time (µs on the [`micros`] clock), for the tail report.
struct Run {
    samples: Vec<u64>,
    sent: Vec<u64>,
    wall: Duration,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        if s.is_empty() {
            return f64::NAN;
        }
        let i = ((s.len() as f64 - 1.0) * p).round() as usize;
        s[i] as f64 / 1000.0
    }
    fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
    /// Where an open loop's tail lies: its upper percentiles, and when the slowest 1 % were
    /// sent (50 ms bins from the first send), to tell one stall (a few crowded bins) from
    /// queueing spread over the run.
    fn tail(&self, name: &str) -> String {
        if self.sent.len() != self.samples.len() || self.samples.is_empty() {
            return String::new();
        }
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(self.samples[i]));
        let slow = &order[..(self.samples.len() / 100).max(1)];
        let first = self.sent.iter().copied().min().unwrap_or(0);
        let mut bins: std::collections::BTreeMap<u64, (usize, u64)> = Default::default();
        for &i in slow {
            let bin = bins.entry((self.sent[i] - first) / 50_000).or_default();
            bin.0 += 1;
            bin.1 = bin.1.max(self.samples[i]);
        }
        let bins: Vec<String> = bins
            .iter()
            .map(|(b, (n, max))| format!("{}ms:{n}({:.1})", b * 50, *max as f64 / 1000.0))
            .collect();
        format!(
            "{name}: p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms; slowest 1 % sent at [bin:count(max ms)] {}",
            self.pct(0.9),
            self.pct(0.99),
            self.pct(0.999),
            self.pct(1.0),
            bins.join(" ")
        )
    }
}

/// `calls` new calls, each with its offerer joined at `url_a` and its answerer at `url_b`
/// (100 joins at a time).
async fn join_pairs(url_a: &str, url_b: &str, calls: usize) -> Vec<(Ws, Ws)> {
    let keys = JoinTokenKeys::new(SECRET.as_bytes());
    let gate = Arc::new(Semaphore::new(100));
    let mut joins = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let (ua, ub, keys, gate) = (
            url_a.to_owned(),
            url_b.to_owned(),
            keys.clone(),
            gate.clone(),
        );
        joins.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let call = CallId::random(&mut rand::rng());
            let a = join(&ua, token(&keys, &call, Role::Offerer)).await;
            let b = join(&ub, token(&keys, &call, Role::Answerer)).await;
            (a, b)
        });
    }
    let mut pairs = Vec::with_capacity(calls);
    while let Some(r) = joins.join_next().await {
        pairs.push(r.unwrap());
    }
    pairs
}

/// Closed loop per call: A sends a candidate, waits until B has it, repeats. The cost is
/// metered over the loop only (not the joins before it).
async fn relay_run(
    url_a: &str,
    url_b: &str,
    calls: usize,
    rounds: usize,
    admin: &Client,
    procs: &[(&'static str, u32)],
) -> (Run, Cost) {
    let pairs = join_pairs(url_a, url_b, calls).await;
    // Let the joins' own traffic (presence, log events, first lease writes) and an earlier
    // turn's teardown settle.
    settle(admin).await;
    let meter = Meter::start(admin, procs).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut a, mut b)) in pairs.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(rounds);
            for r in 0..rounds {
                if Instant::now() > deadline {
                    break;
                }
                let msg = ClientMessage::IceCandidate {
                    candidate: IceCandidate {
                        candidate: format!(
                            "candidate:{r} 1 udp 2122260223 127.0.0.1 {} typ host generation 0",
                            10_000 + i
                        ),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                        username_fragment: Some("abcd".into()),
                    },
                };
                let text = serde_json::to_string(&msg).unwrap();
                let sent = Instant::now();
                if a.send(Message::text(text)).await.is_err() {
                    break;
                }
                let needle = format!("candidate:{r} ");
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), b.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) if t.contains(&needle) => break,
                        Ok(Some(Ok(_))) => continue,
                        _ => return (samples, a, b),
                    }
                }
                samples.push(sent.elapsed().as_micros() as u64);
                // Drain a's side (peer events) without blocking.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, a.next()).await {}
            }
            (samples, a, b)
        });
    }
    let mut samples = Vec::new();
    // Kept open until the meter has read: a call's teardown (seats marked away, unsubscribes,
    // events) is not the cost of its messages.
    let mut sockets = Vec::with_capacity(2 * calls);
    while let Some(r) = tasks.join_next().await {
        let (s, a, b) = r.unwrap();
        samples.extend(s);
        sockets.extend([a, b]);
    }
    let wall = start.elapsed();
    let cost = meter.cost(admin, samples.len()).await;
    drop(sockets);
    (
        Run {
            samples,
            sent: Vec::new(),
            wall,
        },
        cost,
    )
}

/// The floor: the same closed loop over a raw PUBLISH → subscriber hop.
async fn raw_run(redis: &str, calls: usize, rounds: usize) -> Run {
    let (publisher, subscriber) = publisher_and_subscriber(redis).await;
    let mut probe = subscriber.message_rx();
    subscriber.subscribe("bench:raw").await.unwrap();
    // Proven before measuring: a probe comes back (fred may leave a SUBSCRIBE unflushed).
    'probe: for _ in 0..50 {
        let _ = subscriber.ping::<Value>(None).await;
        let _: i64 = publisher.publish("bench:raw", "probe").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, probe.recv()).await {
            if &*m.channel == "bench:raw" {
                break 'probe;
            }
        }
    }
    drop(probe);
    // Dispatch each received message to the waiting task by index.
    let waiters: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..calls).map(|_| tokio::sync::Notify::new()).collect());
    let mut rx = subscriber.message_rx();
    let w = waiters.clone();
    let dispatcher = tokio::spawn(async move {
        while let Ok(m) = rx.recv().await {
            let Some(s) = m.value.as_str() else { continue };
            if let Some(i) = s.split('|').next().and_then(|i| i.parse::<usize>().ok())
                && let Some(n) = w.get(i)
            {
                n.notify_one();
            }
        }
    });
    let payload_tail = "|{\"type\":\"ice-candidate\",\"from\":\"b2b2b2b2b2b2b2b2b2b2b2b2b2\",\"seq\":1,\"candidate\":{\"candidate\":\"candidate:1 1 udp 2122260223 127.0.0.1 10001 typ host generation 0\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":\"abcd\"}}";
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let (publisher, waiters) = (publisher.clone(), waiters.clone());
        let payload = format!("{i}{payload_tail}");
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                if Instant::now() > deadline {
                    break;
                }
                let sent = Instant::now();
                let notified = waiters[i].notified();
                let _: i64 = publisher
                    .publish("bench:raw", payload.as_str())
                    .await
                    .unwrap();
                if tokio::time::timeout(Duration::from_secs(10), notified)
                    .await
                    .is_err()
                {
                    break;
                }
                samples.push(sent.elapsed().as_micros() as u64);
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(r) = tasks.join_next().await {
        samples.extend(r.unwrap());
    }
    let wall = start.elapsed();
    dispatcher.abort();
    Run {
        samples,
        sent: Vec::new(),
        wall,
    }
}

/// Microseconds since the first call of this function (a process-wide clock for payloads).
fn micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn ts_of(text: &str) -> Option<u64> {
    let at = text.find("ts=")? + 3;
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One path's calls of the open loop, joined once and kept open across its segments: for each
/// call the sending half of `a`'s socket and `b`'s whole socket (`a`'s incoming frames, peer
/// events, are drained by a task so its socket never backs up).
struct PacedPath {
    calls: Vec<(SplitSink<Ws, Message>, Ws)>,
    drains: tokio::task::JoinSet<()>,
    samples: Vec<(u64, u64)>,
    wall: Duration,
}

impl PacedPath {
    async fn join(url_a: &str, url_b: &str, calls: usize) -> Self {
        let mut path = PacedPath {
            calls: Vec::with_capacity(calls),
            drains: tokio::task::JoinSet::new(),
            samples: Vec::new(),
            wall: Duration::ZERO,
        };
        for (a, b) in join_pairs(url_a, url_b, calls).await {
            let (a_tx, mut a_rx) = a.split();
            path.drains
                .spawn(async move { while let Some(Ok(_)) = a_rx.next().await {} });
            path.calls.push((a_tx, b));
        }
        path
    }

    /// One segment: every call sends `rounds` messages, one per `interval` (offset at
    /// random), whatever the replies; latency = receive time - send time carried in the
    /// message. The sockets stay open (a close costs the replicas a disconnect that must not
    /// overlap messages still measured).
    async fn segment(&mut self, rounds: usize, interval: Duration) {
        let start = Instant::now();
        let deadline = Duration::from_secs(60) + interval * rounds as u32;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (mut a_tx, mut b)) in self.calls.drain(..).enumerate() {
            let offset =
                Duration::from_micros(rand::random::<u64>() % interval.as_micros().max(1) as u64);
            tasks.spawn(async move {
                let send = async {
                    tokio::time::sleep(offset).await;
                    let mut tick = tokio::time::interval(interval);
                    for r in 0..rounds {
                        tick.tick().await;
                        let msg = ClientMessage::IceCandidate {
                            candidate: IceCandidate {
                                candidate: format!(
                                    "candidate:{r} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ts={}",
                                    10_000 + i,
                                    micros()
                                ),
                                sdp_mid: Some("0".into()),
                                sdp_m_line_index: Some(0),
                                username_fragment: Some("abcd".into()),
                            },
                        };
                        if a_tx
                            .send(Message::text(serde_json::to_string(&msg).unwrap()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                };
                let receive = async {
                    let mut samples = Vec::with_capacity(rounds);
                    while samples.len() < rounds {
                        match tokio::time::timeout(Duration::from_secs(10), b.next()).await {
                            Ok(Some(Ok(Message::Text(t)))) => {
                                if let Some(ts) = ts_of(&t) {
                                    samples.push((ts, micros().saturating_sub(ts)));
                                }
                            }
                            Ok(Some(Ok(_))) => continue,
                            _ => break,
                        }
                    }
                    samples
                };
                let ((), samples) = tokio::join!(send, receive);
                (samples, a_tx, b)
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                let (samples, a_tx, b) = r.unwrap();
                self.samples.extend(samples);
                self.calls.push((a_tx, b));
            }
        };
        let _ = tokio::time::timeout(deadline, all).await;
        tasks.shutdown().await;
        self.wall += start.elapsed();
    }

    /// Close every socket; the samples of all segments.
    async fn finish(mut self) -> Run {
        self.calls.clear();
        self.drains.shutdown().await;
        Run {
            sent: self.samples.iter().map(|s| s.0).collect(),
            samples: self.samples.iter().map(|s| s.1).collect(),
            wall: self.wall,
        }
    }
}

/// The open loop over several paths, their segments interleaved (each segment about
/// [`PACED_SEGMENT`] long, the order rotating), so that a machine's stalls of a few ms, which
/// decide a p99, fall on every path alike rather than on whichever ran at a bad moment.
async fn paced_interleaved(paths: &mut [PacedPath], rounds: usize, interval: Duration) {
    let per_segment = ((PACED_SEGMENT.as_secs_f64() / interval.as_secs_f64()).round() as usize)
        .clamp(1, rounds.max(1));
    let mut left = rounds;
    let mut turn = 0;
    while left > 0 {
        let n = per_segment.min(left);
        for k in 0..paths.len() {
            paths[(turn + k) % paths.len()].segment(n, interval).await;
        }
        left -= n;
        turn += 1;
    }
}

/// How long one interleaved segment of the open loop sends.
const PACED_SEGMENT: Duration = Duration::from_secs(1);

/// The same open loop over a raw PUBLISH → subscriber hop (one channel per call).
async fn paced_raw(redis: &str, calls: usize, rounds: usize, interval: Duration) -> Run {
    let (publisher, subscriber) = publisher_and_subscriber(redis).await;
    let channels: Vec<String> = (0..calls).map(|i| format!("bench:paced:{i}")).collect();
    for c in &channels {
        subscriber.subscribe(c.as_str()).await.unwrap();
    }
    let expected = calls * rounds;
    let mut rx = subscriber.message_rx();
    let collector = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(expected);
        while samples.len() < expected {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Ok(m)) => {
                    if let Some(ts) = m.value.as_str().and_then(|s| ts_of(&s)) {
                        samples.push((ts, micros().saturating_sub(ts)));
                    }
                }
                _ => break,
            }
        }
        samples
    });
    let start = Instant::now();
    for (i, channel) in channels.into_iter().enumerate() {
        let publisher = publisher.clone();
        let offset =
            Duration::from_micros(rand::random::<u64>() % interval.as_micros().max(1) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            for r in 0..rounds {
                tick.tick().await;
                let payload = format!(
                    "{{\"type\":\"ice-candidate\",\"from\":\"b2b2b2b2b2b2b2b2b2b2b2b2b2\",\"seq\":{r},\"candidate\":{{\"candidate\":\"candidate:{r} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ts={}\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":\"abcd\"}}}}",
                    10_000 + i,
                    micros()
                );
                let _: Result<i64, _> = publisher.publish(channel.as_str(), payload).await;
            }
        });
    }
    let samples = collector.await.unwrap();
    Run {
        sent: samples.iter().map(|s| s.0).collect(),
        samples: samples.iter().map(|s| s.1).collect(),
        wall: start.elapsed(),
    }
}

/// Candidates each side trickles during a call's setup in [`mix_setup`].
const MIX_CANDIDATES: usize = 8;
/// How often each browser sends `stats` (web/ sends every 5 s).
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Read text frames until `want` relayed messages (those with a `seq`) arrived; the highest
/// `seq` seen, or `None` on a timeout or close.
async fn read_relayed(ws: &mut Ws, want: usize) -> Option<u64> {
    let mut got = 0;
    let mut last = 0;
    while got < want {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
                    && let Some(seq) = v["seq"].as_u64()
                {
                    got += 1;
                    last = last.max(seq);
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
    Some(last)
}

fn candidate_text(side: usize, i: usize) -> String {
    serde_json::to_string(&ClientMessage::IceCandidate {
        candidate: IceCandidate {
            candidate: format!(
                "candidate:{i} 1 udp 2122260223 127.0.0.1 {} typ host generation 0",
                10_000 + side * 100 + i
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("abcd".into()),
        },
    })
    .unwrap()
}

/// The setup of real calls: both sides join (on `url_a` and `url_b`), offer and answer (SDP of
/// a browser's size), [`MIX_CANDIDATES`] candidates each way, and an `ack` of what each side
/// received. Returns the connected pairs.
async fn mix_setup(url_a: &str, url_b: &str, calls: usize) -> Vec<(Ws, Ws)> {
    let keys = JoinTokenKeys::new(SECRET.as_bytes());
    let gate = Arc::new(Semaphore::new(100));
    let sdp: String = "a=candidate-free line of a browser's SDP\r\n".repeat(60);
    let mut joins = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let (ua, ub, keys, gate, sdp) = (
            url_a.to_owned(),
            url_b.to_owned(),
            keys.clone(),
            gate.clone(),
            sdp.clone(),
        );
        joins.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let call = CallId::random(&mut rand::rng());
            let mut a = join(&ua, token(&keys, &call, Role::Offerer)).await;
            let mut b = join(&ub, token(&keys, &call, Role::Answerer)).await;
            let send = |text: String| Message::text(text);
            let offer = ClientMessage::Offer { sdp: sdp.clone() };
            a.send(send(serde_json::to_string(&offer).unwrap()))
                .await
                .ok()?;
            read_relayed(&mut b, 1).await?;
            let answer = ClientMessage::Answer { sdp };
            b.send(send(serde_json::to_string(&answer).unwrap()))
                .await
                .ok()?;
            for i in 0..MIX_CANDIDATES {
                a.send(send(candidate_text(0, i))).await.ok()?;
                b.send(send(candidate_text(1, i))).await.ok()?;
            }
            let last_a = read_relayed(&mut a, 1 + MIX_CANDIDATES).await?;
            let last_b = read_relayed(&mut b, MIX_CANDIDATES).await?;
            for (ws, seq) in [(&mut a, last_a), (&mut b, last_b)] {
                let ack = serde_json::to_string(&ClientMessage::Ack { seq }).unwrap();
                ws.send(send(ack)).await.ok()?;
            }
            Some((a, b))
        });
    }
    let mut pairs = Vec::with_capacity(calls);
    while let Some(r) = joins.join_next().await {
        if let Some(pair) = r.unwrap() {
            pairs.push(pair);
        }
    }
    pairs
}

/// Hold the calls for `hold`: each side sends `stats` every [`STATS_EVERY`] (offset at
/// random) and reads everything (server pings are answered by the client library), while the
/// replicas renew leases and flush acks. Returns the stats messages sent.
async fn mix_hold(pairs: Vec<(Ws, Ws)>, hold: Duration) -> usize {
    let stats = serde_json::json!({
        "type": "stats", "rttMs": 23.5, "packetLoss": 0.001, "bitrateInKbps": 1450.0,
        "bitrateOutKbps": 1510.0, "candidateType": "host", "framesDecoded": 9000
    })
    .to_string();
    let end = tokio::time::Instant::now() + hold;
    let mut tasks = tokio::task::JoinSet::new();
    for (a, b) in pairs {
        for ws in [a, b] {
            let (mut tx, mut rx) = ws.split();
            let stats = stats.clone();
            tasks.spawn(async move {
                let reader = async { while let Some(Ok(_)) = rx.next().await {} };
                let writer = async {
                    let mut sent = 0;
                    let offset = Duration::from_millis(rand::random::<u64>() % 5_000);
                    let mut tick =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, STATS_EVERY);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                if tx.send(Message::text(stats.clone())).await.is_err() {
                                    break;
                                }
                                sent += 1;
                            }
                            () = tokio::time::sleep_until(end) => break,
                        }
                    }
                    sent
                };
                tokio::select! {
                    sent = writer => sent,
                    () = reader => 0,
                }
            });
        }
    }
    let mut sent = 0;
    while let Some(r) = tasks.join_next().await {
        sent += r.unwrap_or(0);
    }
    sent
}

async fn idle_memory(redis: &str, conns: usize) -> (u64, u64, usize) {
    let replica = start_replica(redis);
    let pid = replica.guard.id().unwrap();
    // Warm up: one call, so the baseline includes the runtime and Redis clients.
    let keys = JoinTokenKeys::new(SECRET.as_bytes());
    let warm = CallId::random(&mut rand::rng());
    let w = join(&replica.url, token(&keys, &warm, Role::Offerer)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let gate = Arc::new(Semaphore::new(200));
    let mut joins = tokio::task::JoinSet::new();
    // Two participants per call, as in real use.
    for _ in 0..conns / 2 {
        let (url, keys, gate) = (replica.url.clone(), keys.clone(), gate.clone());
        joins.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let call = CallId::random(&mut rand::rng());
            let a = join(&url, token(&keys, &call, Role::Offerer)).await;
            let b = join(&url, token(&keys, &call, Role::Answerer)).await;
            [a, b]
        });
    }
    let mut sockets = Vec::with_capacity(conns);
    let started = Instant::now();
    while let Some(r) = joins.join_next().await {
        if let Ok(pair) = r {
            sockets.extend(pair);
        }
        if started.elapsed() > Duration::from_secs(180) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let n = sockets.len();
    drop(sockets);
    drop(w);
    (before, after, n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--forwarder") {
        let port = args[i + 1].parse().unwrap();
        forwarder_main(port, &args[i + 2]);
        return;
    }
    let calls = env_usize("SIGNAL_BENCH_CALLS", 1000);
    let rounds = env_usize("SIGNAL_BENCH_ROUNDS", 20);
    let idle = env_usize("SIGNAL_BENCH_IDLE", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `1`: instruction counts; `keep`: also keep the dumps for callgrind_annotate.
    match std::env::var("SIGNAL_BENCH_CALLGRIND").as_deref() {
        Ok("1") => return rt.block_on(callgrind_main(calls, rounds, false)),
        Ok("keep") => return rt.block_on(callgrind_main(calls, rounds, true)),
        _ => {}
    }
    rt.block_on(async move {
        let redis = RedisServer::start();
        let url = redis.url();
        let admin = Builder::from_config(Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        admin.init().await.unwrap();
        let redis_pid = redis_pid(&admin).await;
        let me = std::process::id();
        let load_before = load_average();

        eprintln!("raw Redis hop: {calls} concurrent loops × {rounds}");
        let meter = Meter::start(&admin, &[("redis", redis_pid), ("bench clients", me)]).await;
        let raw = raw_run(&url, calls, rounds).await;
        let raw_cost = meter.cost(&admin, raw.samples.len()).await;

        // The closed loops in turns: SIGNAL_BENCH_CLOSED_TURNS (3) of each path, in a rotating
        // order, each with fresh joins; a path's figures are over all its turns. One window per
        // path put the forwarder and Hermes on a different state of the shared machine (single
        // runs scattered 1.5-2.4x in Redis CPU per message for one build).
        let turns = env_usize("SIGNAL_BENCH_CLOSED_TURNS", 3).max(1);
        let (f1, f2) = (start_forwarder(&url), start_forwarder(&url));
        let r1 = start_replica(&url);
        let r2 = start_replica(&url);
        let forwarder_procs = [
            ("relay A", f1.guard.id().unwrap()),
            ("relay B", f2.guard.id().unwrap()),
            ("redis", redis_pid),
            ("bench clients", me),
        ];
        let procs = [
            ("relay A", r1.guard.id().unwrap()),
            ("relay B", r2.guard.id().unwrap()),
            ("redis", redis_pid),
            ("bench clients", me),
        ];
        let paths: [(&str, &str, &str, &[Proc]); 3] = [
            ("bare forwarder", &f1.url, &f2.url, &forwarder_procs),
            ("same replica", &r1.url, &r1.url, &procs),
            ("cross replica", &r1.url, &r2.url, &procs),
        ];
        let mut turns_of: [Vec<(Run, Cost)>; 3] = Default::default();
        for turn in 0..turns {
            for k in 0..paths.len() {
                let i = (turn + k) % paths.len();
                let (name, a, b, procs) = paths[i];
                eprintln!("closed loop {}/{turns}, {name}: {calls} calls × {rounds}", turn + 1);
                turns_of[i].push(relay_run(a, b, calls, rounds, &admin, procs).await);
            }
        }
        let redis_by_turn: Vec<String> = paths
            .iter()
            .zip(&turns_of)
            .map(|((name, ..), turns)| {
                let each: Vec<String> = turns
                    .iter()
                    .map(|(_, c)| format!("{:.1}", Meter::cpu_of(c, "redis")))
                    .collect();
                format!("{name} {}", each.join(", "))
            })
            .collect();
        drop((f1, f2));
        let [fwd, same, cross] = turns_of.map(combine_turns);
        let ((fwd, fwd_cost), (same, same_cost), (cross, cross_cost)) = (fwd, same, cross);

        // Open loop at half of Hermes' own cross-replica capacity just measured (unless set).
        let interval = match std::env::var("SIGNAL_BENCH_INTERVAL_MS") {
            Ok(v) => Duration::from_millis(v.parse().unwrap()),
            Err(_) => {
                let offered = (cross.rate() / 2.0).max(1.0);
                Duration::from_secs_f64(calls as f64 / offered)
                    .clamp(Duration::from_millis(20), Duration::from_secs(2))
            }
        };
        // Long enough that one scheduling stall of a few ms (2 shared cores) cannot decide the
        // p99 alone: SIGNAL_BENCH_PACED_SECS (5) of sending, unless a round count is given.
        let paced_rounds = match std::env::var("SIGNAL_BENCH_PACED_ROUNDS") {
            Ok(v) => v.parse().unwrap(),
            Err(_) => {
                let secs = env_usize("SIGNAL_BENCH_PACED_SECS", 5) as f64;
                ((secs / interval.as_secs_f64()).ceil() as usize).max(1)
            }
        };
        eprintln!("paced: {calls} calls, one message per {interval:?} each, {paced_rounds} rounds");
        let p_raw = paced_raw(&url, calls, paced_rounds, interval).await;
        // The bare forwarder (the architecture's floor) and Hermes' two paths, all joined at
        // once and sent on in turns, so the machine's state is the same for the floor and
        // for Hermes.
        let (f1, f2) = (start_forwarder(&url), start_forwarder(&url));
        let mut paths = [
            PacedPath::join(&f1.url, &f2.url, calls).await,
            PacedPath::join(&r1.url, &r1.url, calls).await,
            PacedPath::join(&r1.url, &r2.url, calls).await,
        ];
        // Let the joins' own traffic settle, as the closed loop does.
        tokio::time::sleep(Duration::from_secs(1)).await;
        paced_interleaved(&mut paths, paced_rounds, interval).await;
        let [fwd_path, same_path, cross_path] = paths;
        let p_fwd = fwd_path.finish().await;
        let p_same = same_path.finish().await;
        let p_cross = cross_path.finish().await;
        drop((f1, f2));
        let mix_calls = env_usize("SIGNAL_BENCH_MIX_CALLS", calls);
        let hold = Duration::from_secs(env_usize("SIGNAL_BENCH_HOLD_SECS", 30) as u64);
        eprintln!("real call mix across replicas: {mix_calls} calls set up, then held {hold:?}");
        let meter = Meter::start(&admin, &procs).await;
        let pairs = mix_setup(&r1.url, &r2.url, mix_calls).await;
        let held = pairs.len();
        let setup_cost = meter.cost(&admin, held).await;
        let meter = Meter::start(&admin, &procs).await;
        let stats_sent = mix_hold(pairs, hold).await;
        // Per call per second of holding.
        let hold_cost = meter
            .cost(&admin, (held as f64 * hold.as_secs_f64()).round() as usize)
            .await;
        drop((r1, r2));
        // SIGNAL_BENCH_CLUSTER=0 skips the Redis Cluster tables.
        let cluster_rows = if env_usize("SIGNAL_BENCH_CLUSTER", 1) > 0 {
            cluster::rows(calls, rounds, mix_calls, hold).await
        } else {
            Vec::new()
        };
        let load_after = load_average();
        let memory = if idle > 0 {
            eprintln!("idle connections: {idle}");
            Some(idle_memory(&url, idle).await)
        } else {
            None
        };

        println!();
        println!(
            "hermes-signal relay, {calls} concurrent calls, closed loop, {rounds} messages per call; \
             load average {load_before} before, {load_after} after (2 cores shared: compare ratios)"
        );
        println!(
            "| path | messages | p50 ms | p99 ms | msgs/s | msgs/s / forwarder | CPU µs/msg relay A | relay B | Redis | bench clients | Redis cmds/msg |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let rows = [
            ("raw Redis PUBLISH→subscriber (2-hop floor)", &raw, &raw_cost),
            ("bare forwarder, two processes (4-hop floor)", &fwd, &fwd_cost),
            ("same replica", &same, &same_cost),
            ("cross replica", &cross, &cross_cost),
        ];
        for (name, r, c) in rows {
            let relay = |p: &str| {
                let v = Meter::cpu_of(c, p);
                if c.cpu.iter().any(|(n, _)| *n == p) {
                    format!("{v:.1}")
                } else {
                    "-".into()
                }
            };
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {} | {} | {:.1} | {:.1} | {:.2} |",
                r.samples.len(),
                r.pct(0.5),
                r.pct(0.99),
                r.rate(),
                r.rate() / fwd.rate(),
                relay("relay A"),
                relay("relay B"),
                Meter::cpu_of(c, "redis"),
                Meter::cpu_of(c, "bench clients"),
                c.commands,
            );
        }
        for (name, _, c) in rows {
            let (reads, writes) = c.redis_syscalls;
            println!(
                "Redis commands per message, {name}: {}; system calls per message: {reads:.3} reads, {writes:.3} writes",
                c.top
            );
        }
        println!(
            "Redis CPU µs per message by closed-loop turn: {}",
            redis_by_turn.join("; ")
        );
        let tput = cross.rate() / fwd.rate();
        let redis_cpu = Meter::cpu_of(&cross_cost, "redis") / Meter::cpu_of(&fwd_cost, "redis");
        let relay_cpu = (Meter::cpu_of(&cross_cost, "relay A")
            + Meter::cpu_of(&cross_cost, "relay B"))
            / (Meter::cpu_of(&fwd_cost, "relay A") + Meter::cpu_of(&fwd_cost, "relay B"));
        println!(
            "target cross-replica throughput >= 0.5 x forwarder: {} ({tput:.2}x)",
            if tput >= 0.5 { "met" } else { "NOT met" }
        );
        println!(
            "target cross-replica Redis CPU per message <= 2 x forwarder's: {} ({redis_cpu:.2}x)",
            if redis_cpu <= 2.0 { "met" } else { "NOT met" }
        );
        println!("cross-replica relay-process CPU per message / forwarder's: {relay_cpu:.2}x");
        println!();
        println!(
            "open loop: {calls} concurrent calls, each one message per {} ms ({:.0} msgs/s offered, \
             half the cross-replica closed-loop rate unless SIGNAL_BENCH_INTERVAL_MS), {paced_rounds} rounds (ms)",
            interval.as_millis(),
            calls as f64 / interval.as_secs_f64()
        );
        println!("| path | messages | p50 | p99 | msgs/s | p50 / forwarder | p99 / forwarder |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, r) in [
            ("raw Redis PUBLISH→subscriber (2-hop floor)", &p_raw),
            ("bare forwarder, two processes (4-hop floor)", &p_fwd),
            ("same replica", &p_same),
            ("cross replica", &p_cross),
        ] {
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
                r.samples.len(),
                r.pct(0.5),
                r.pct(0.99),
                r.rate(),
                r.pct(0.5) / p_fwd.pct(0.5),
                r.pct(0.99) / p_fwd.pct(0.99),
            );
        }
        for (name, r) in [
            ("raw", &p_raw),
            ("forwarder", &p_fwd),
            ("same", &p_same),
            ("cross", &p_cross),
        ] {
            println!("{}", r.tail(name));
        }
        let p99 = p_cross.pct(0.99) / p_fwd.pct(0.99);
        println!(
            "target cross-replica open-loop p99 <= 1.5 x forwarder's: {} ({p99:.2}x)",
            if p99 <= 1.5 { "met" } else { "NOT met" }
        );
        let signal = |c: &Cost| Meter::cpu_of(c, "relay A") + Meter::cpu_of(c, "relay B");
        println!();
        println!(
            "real call mix, cross replica: {held} calls set up (join x2, offer + answer of {} bytes, \
             {MIX_CANDIDATES} candidates each way, acks), then held {}s (stats every 5 s per side: \
             {stats_sent} sent; lease renewals, ack flushes, pings)",
            "a=candidate-free line of a browser's SDP\r\n".len() * 60,
            hold.as_secs()
        );
        println!("| phase | signal CPU µs (both replicas) | Redis CPU µs | Redis cmds |");
        println!("|---|---:|---:|---:|");
        println!(
            "| setup, per call | {:.0} | {:.0} | {:.1} |",
            signal(&setup_cost),
            Meter::cpu_of(&setup_cost, "redis"),
            setup_cost.commands
        );
        println!(
            "| held, per call per second | {:.1} | {:.1} | {:.2} |",
            signal(&hold_cost),
            Meter::cpu_of(&hold_cost, "redis"),
            hold_cost.commands
        );
        println!("Redis commands while held, per call per second: {}", hold_cost.top);
        // A call of 10 minutes on average: its setup spread over its length, plus holding.
        let per_call_s = |setup: f64, held: f64| setup / 600.0 + held;
        println!(
            "capacity (10-minute calls, CPU only): {:.0} concurrent calls per signal core, {:.0} per Redis core",
            1e6 / per_call_s(signal(&setup_cost), signal(&hold_cost)).max(1e-9),
            1e6 / per_call_s(
                Meter::cpu_of(&setup_cost, "redis"),
                Meter::cpu_of(&hold_cost, "redis")
            )
            .max(1e-9),
        );
        cluster::print(&cluster_rows, calls, rounds, hold);
        if let Some((before, after, n)) = memory {
            let delta_mib = after.saturating_sub(before) as f64 / 1024.0;
            println!();
            println!("| idle connections | RSS before | RSS after | delta | per connection | target |");
            println!("|---:|---:|---:|---:|---:|---|");
            println!(
                "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} KiB | < 300 MiB: {} |",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                delta_mib,
                after.saturating_sub(before) as f64 / n.max(1) as f64,
                if (after as f64 / 1024.0) < 300.0 { "met" } else { "NOT met" }
            );
        }
    });
}
