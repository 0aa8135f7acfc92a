//! A real Redis Sentinel set-up on loopback: one primary, one replica and three sentinels,
//! all `redis-server` processes from Debian's package (`redis-server --sentinel` is the
//! sentinel mode of the same binary), each on a free port with its files in one temp dir.
//!
//! Why it exists: services connect with `redis-sentinel://` and must follow a failover by
//! themselves; only real sentinels electing a real replica show what a failover costs a call.
//!
//! Race-free start: every process counts as up only once the kernel shows that this very child
//! holds its port (see [`crate::port_owner`]); the set counts as up only once the replica's link
//! to the primary is up and every sentinel knows the primary, the replica and the two other
//! sentinels and can reach quorum (`SENTINEL CKQUORUM`). Teardown is the drop of the guards
//! (SIGKILL), so a failing test leaves nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    ChildGuard, Transport, free_tcp_port, raw_command, require_program, wait_for_ping,
    wait_until_child_holds,
};

/// The name the sentinels monitor the primary under (`sentinelServiceName` in the URL).
pub const SERVICE_NAME: &str = "hermes";
/// A primary that does not answer for this long is subjectively down. Short, so tests are
/// quick, and well above what a loaded 2-core machine delays a PING on loopback.
pub const DOWN_AFTER_MS: u64 = 1_000;
/// Sentinels' failover timeout (also the pause before another sentinel retries a failover).
const FAILOVER_TIMEOUT_MS: u64 = 6_000;
/// Sentinels that must agree the primary is down.
const QUORUM: usize = 2;
const SENTINELS: usize = 3;
/// How long the whole set may take to come up and agree.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports tried per process before giving up (each lost only to a bind race).
const PORT_ATTEMPTS: usize = 20;

/// One process of the set.
struct Node {
    port: u16,
    process: ChildGuard,
}

/// What a failover took, measured from the SIGKILL of the primary.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// When the primary was killed.
    pub killed_at: Instant,
    /// Until the replica answered `ROLE` as master and every sentinel named it.
    pub promoted_after: Duration,
}

/// Primary, replica, three sentinels; see the module doc.
pub struct SentinelSet {
    dir: tempfile::TempDir,
    primary: Node,
    replica: Node,
    sentinels: Vec<Node>,
    /// The primary was killed and the replica promoted.
    failed_over: bool,
    /// Replicas added with [`Self::add_replica`].
    added: Vec<Node>,
}

impl SentinelSet {
    /// Start the set and wait until it is fully up (see the module doc).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the sentinel set");
        let primary = spawn_data_node(dir.path(), "primary", None);
        let replica = spawn_data_node(dir.path(), "replica", Some(primary.port));
        wait_until(START_TIMEOUT, "the replica's link to the primary", || {
            info_field(replica.port, "replication", "master_link_status").as_deref() == Some("up")
                && raw_command(primary.port, "INFO replication")
                    .is_ok_and(|i| i.contains(&format!("port={},state=online", replica.port)))
        });
        let sentinels = (0..SENTINELS)
            .map(|i| spawn_sentinel(dir.path(), i, primary.port))
            .collect::<Vec<_>>();
        let set = Self {
            dir,
            primary,
            replica,
            sentinels,
            failed_over: false,
            added: Vec::new(),
        };
        set.wait_for_agreement(set.primary.port, START_TIMEOUT);
        set
    }

    /// `redis-sentinel://` URL naming all three sentinels, as services take it.
    pub fn url(&self) -> String {
        let mut ports = self.sentinels.iter().map(|s| s.port);
        let first = ports.next().expect("three sentinels");
        let mut url =
            format!("redis-sentinel://127.0.0.1:{first}?sentinelServiceName={SERVICE_NAME}");
        for port in ports {
            url.push_str(&format!("&node=127.0.0.1:{port}"));
        }
        url
    }

    /// Port of the current primary (the promoted replica after [`Self::kill_primary`]).
    pub fn primary_port(&self) -> u16 {
        if self.failed_over {
            self.replica.port
        } else {
            self.primary.port
        }
    }

    /// Port of the replica started with the set (the primary after a failover).
    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// Ports of the three sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// One raw command to the current primary (harness checks independent of the client
    /// library under test).
    pub fn raw_primary(&self, command: &str) -> std::io::Result<String> {
        raw_command(self.primary_port(), command)
    }

    /// One raw command to any port of the set.
    pub fn raw(&self, port: u16, command: &str) -> std::io::Result<String> {
        raw_command(port, command)
    }

    /// One write to the current primary followed, on the same connection, by `WAIT 1
    /// <wait_ms>`: returns the write's reply line and how many replicas acknowledged it.
    pub fn write_and_wait(&self, command: &str, wait_ms: u64) -> std::io::Result<(String, u64)> {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.primary_port()))?;
        stream.set_read_timeout(Some(Duration::from_millis(wait_ms + 2_000)))?;
        stream.write_all(format!("{command}\r\nWAIT 1 {wait_ms}\r\n").as_bytes())?;
        let mut reader = BufReader::new(stream);
        let (mut reply, mut acked) = (String::new(), String::new());
        reader.read_line(&mut reply)?;
        reader.read_line(&mut acked)?;
        let acked = acked
            .trim()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("WAIT answered {acked:?}")))?;
        Ok((reply.trim_end().to_owned(), acked))
    }

    /// Freeze the replica (SIGSTOP) and cut its link on the primary's side (`CLIENT KILL TYPE
    /// replica`): from now on writes are acknowledged by the primary alone, and a frozen
    /// replica cannot reconnect to fetch them. (SIGSTOP alone is not enough: the kernel still
    /// buffers what the primary sends, and the thawed replica applies it.) Thaw it with
    /// [`Self::resume_replica`] well within [`DOWN_AFTER_MS`], or the sentinels mark the replica
    /// down too and will not promote it.
    pub fn cut_replication(&self) {
        signal(&self.replica.process, "STOP");
        let killed = self
            .raw_primary("CLIENT KILL TYPE replica")
            .expect("CLIENT KILL on the primary");
        assert_eq!(killed, ":1\r\n", "one replica link cut");
    }

    /// Freeze the replica (SIGSTOP) and leave its link up: the primary's writes wait in the
    /// kernel's buffers, unacknowledged, until [`Self::resume_replica`] thaws it and it applies
    /// them. Same limit as [`Self::cut_replication`]: thaw it well within [`DOWN_AFTER_MS`].
    pub fn freeze_replica(&self) {
        signal(&self.replica.process, "STOP");
    }

    /// Start one more replica of the current primary (after a failover, the set's promoted
    /// primary has none) and wait until its link is up and the primary counts it online.
    /// Returns its port.
    pub fn add_replica(&mut self) -> u16 {
        let primary = self.primary_port();
        let name = format!("added-replica-{}", self.added.len());
        let node = spawn_data_node(self.dir.path(), &name, Some(primary));
        let port = node.port;
        wait_until(
            START_TIMEOUT,
            "the added replica's link to the primary",
            || {
                info_field(port, "replication", "master_link_status").as_deref() == Some("up")
                    && raw_command(primary, "INFO replication")
                        .is_ok_and(|i| i.contains(&format!("port={port},state=online")))
            },
        );
        self.added.push(node);
        port
    }

    /// Thaw the replica (SIGCONT).
    pub fn resume_replica(&self) {
        signal(&self.replica.process, "CONT");
    }

    /// Wait (at most 10 s) until the replica has applied everything the primary wrote, so
    /// the writes so far survive a failover.
    pub fn wait_replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (replica, primary) = self.replication_offsets();
            if replica.is_some() && replica == primary {
                return;
            }
            assert!(Instant::now() < deadline, "replica never caught up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Bytes of replication stream the replica has applied, and the primary has written.
    pub fn replication_offsets(&self) -> (Option<u64>, Option<u64>) {
        let replica = info_field(self.replica.port, "replication", "slave_repl_offset")
            .and_then(|v| v.parse().ok());
        let primary = info_field(self.primary.port, "replication", "master_repl_offset")
            .and_then(|v| v.parse().ok());
        (replica, primary)
    }

    /// SIGKILL the primary; returns at once (see [`Self::wait_for_promotion`]).
    pub fn kill_primary(&mut self) -> Instant {
        assert!(!self.failed_over, "the set fails over once");
        // Before the kill: a replica's `/readyz` may turn 503 while the kill still waits for
        // the process to be reaped (a test saw it "down" before an instant taken after).
        let at = Instant::now();
        self.primary.process.kill();
        self.failed_over = true;
        at
    }

    /// SIGSTOP the primary (a hung process or a partition: its connections stay open, nothing
    /// is answered); the sentinels fail it over like a dead one. Returns at once (see
    /// [`Self::wait_for_promotion`]); the process is killed with the set.
    pub fn freeze_primary(&mut self) -> Instant {
        assert!(!self.failed_over, "the set fails over once");
        let at = Instant::now();
        signal(&self.primary.process, "STOP");
        self.failed_over = true;
        at
    }

    /// Wait until the replica is a master and every sentinel names it.
    pub fn wait_for_promotion(&self, killed_at: Instant, timeout: Duration) -> Failover {
        self.wait_for_agreement_on_new(self.replica.port, timeout);
        Failover {
            killed_at,
            promoted_after: killed_at.elapsed(),
        }
    }

    /// SIGKILL the primary and wait until the sentinels have promoted the replica.
    pub fn kill_primary_and_wait_for_promotion(&mut self, timeout: Duration) -> Failover {
        let killed_at = self.kill_primary();
        self.wait_for_promotion(killed_at, timeout)
    }

    /// The set's temp dir (configs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_for_agreement(&self, primary: u16, timeout: Duration) {
        wait_until(timeout, "the sentinels to agree on the set", || {
            self.sentinels.iter().all(|s| {
                let Ok(master) = raw_command(s.port, &format!("SENTINEL MASTER {SERVICE_NAME}"))
                else {
                    return false;
                };
                resp_field(&master, "port").as_deref() == Some(&primary.to_string())
                    && resp_field(&master, "flags").as_deref() == Some("master")
                    && resp_field(&master, "num-slaves").as_deref() == Some("1")
                    && resp_field(&master, "num-other-sentinels").as_deref()
                        == Some(&(SENTINELS - 1).to_string())
                    && raw_command(s.port, &format!("SENTINEL CKQUORUM {SERVICE_NAME}"))
                        .is_ok_and(|r| r.starts_with("+OK"))
            })
        });
    }

    fn wait_for_agreement_on_new(&self, primary: u16, timeout: Duration) {
        wait_until(timeout, "the replica's promotion", || {
            raw_command(primary, "ROLE").is_ok_and(|r| r.starts_with("*3\r\n$6\r\nmaster\r\n"))
                && self.sentinels.iter().all(|s| {
                    raw_command(
                        s.port,
                        &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SERVICE_NAME}"),
                    )
                    .is_ok_and(|r| r.contains(&format!("\r\n{primary}\r\n")))
                })
        });
    }
}

/// A field of `INFO <section>` from the server on `port`.
fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let info = raw_command(port, &format!("INFO {section}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// The value after `name` in a flat RESP array of bulk strings (`SENTINEL MASTER`'s reply).
fn resp_field(reply: &str, name: &str) -> Option<String> {
    let mut lines = reply.split("\r\n");
    while let Some(line) = lines.next() {
        if line == name {
            lines.next()?; // the value's `$len`
            return lines.next().map(str::to_owned);
        }
    }
    None
}

fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(process: &ChildGuard, name: &str) {
    let pid = process.id().expect("process running");
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A primary (`replica_of` None) or a replica of the primary on `replica_of`.
fn spawn_data_node(dir: &Path, name: &str, replica_of: Option<u16>) -> Node {
    spawn_on_free_port(name, |port| {
        let node_dir = dir.join(format!("{name}-{port}"));
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut cmd = Command::new(require_program("redis-server", "redis-server"));
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&node_dir);
        if let Some(primary) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        cmd
    })
}

/// A sentinel monitoring the primary on `primary`. Sentinels rewrite their config file, so
/// each gets its own.
fn spawn_sentinel(dir: &Path, index: usize, primary: u16) -> Node {
    spawn_on_free_port("redis-sentinel", |port| {
        let conf = dir.join(format!("sentinel-{index}-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 dir {dir}\n\
                 sentinel monitor {SERVICE_NAME} 127.0.0.1 {primary} {QUORUM}\n\
                 sentinel down-after-milliseconds {SERVICE_NAME} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {SERVICE_NAME} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {SERVICE_NAME} 1\n",
                dir = dir.display()
            ),
        )
        .expect("write sentinel config");
        let mut cmd = Command::new(require_program("redis-server", "redis-server"));
        cmd.arg(&conf).arg("--sentinel");
        cmd
    })
}

fn spawn_on_free_port(name: &str, command: impl Fn(u16) -> Command) -> Node {
    let mut last_err = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_tcp_port();
        let mut cmd = command(port);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut process = ChildGuard::spawn(name, &mut cmd).expect("spawn redis-server");
        match wait_until_child_holds(&mut process, Transport::Tcp, port, START_TIMEOUT) {
            Ok(()) => match wait_for_ping(port, START_TIMEOUT) {
                Ok(()) => return Node { port, process },
                Err(e) => last_err = e,
            },
            Err(e) => last_err = format!("{name} did not listen on {port}: {e:?}"),
        }
    }
    panic!("no {name} after {PORT_ATTEMPTS} ports; last: {last_err}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set comes up agreed, replicates, and a SIGKILL of the primary promotes the
    /// replica with the data written before the kill.
    #[test]
    fn sentinels_promote_the_replica_when_the_primary_is_killed() {
        let mut set = SentinelSet::start();
        let url = set.url();
        assert!(url.starts_with("redis-sentinel://127.0.0.1:"), "{url}");
        assert_eq!(url.matches("&node=127.0.0.1:").count(), 2, "{url}");
        assert_eq!(
            set.write_and_wait("SET k v", 5_000).expect("SET"),
            ("+OK".to_owned(), 1),
            "one replica acknowledged"
        );
        assert!(
            set.raw(set.replica_port(), "SET k w")
                .expect("SET on the replica")
                .starts_with("-READONLY"),
            "the replica refuses writes"
        );
        let old = set.primary_port();
        let failover = set.kill_primary_and_wait_for_promotion(Duration::from_secs(30));
        eprintln!("promoted after {:?}", failover.promoted_after);
        assert!(failover.promoted_after >= Duration::from_millis(DOWN_AFTER_MS));
        assert_ne!(set.primary_port(), old);
        assert_eq!(set.raw_primary("GET k").expect("GET"), "$1\r\nv\r\n");
        assert_eq!(set.raw_primary("SET k2 v").expect("SET"), "+OK\r\n");
        assert!(raw_command(old, "PING").is_err(), "the old primary is dead");
    }

    /// The trap the set lets tests force: a write the primary acknowledged while the replica
    /// was frozen is gone after the failover.
    #[test]
    fn a_write_not_replicated_before_the_kill_is_lost() {
        let mut set = SentinelSet::start();
        assert_eq!(
            set.write_and_wait("SET kept 1", 5_000).expect("SET"),
            ("+OK".to_owned(), 1)
        );
        set.cut_replication();
        assert_eq!(
            set.write_and_wait("SET lost 1", 100).expect("SET"),
            ("+OK".to_owned(), 0),
            "acknowledged by the primary, and WAIT tells it is not replicated"
        );
        let killed_at = set.kill_primary();
        set.resume_replica();
        set.wait_for_promotion(killed_at, Duration::from_secs(30));
        assert_eq!(set.raw_primary("GET kept").expect("GET"), "$1\r\n1\r\n");
        assert_eq!(set.raw_primary("GET lost").expect("GET"), "$-1\r\n");
    }

    /// What `WAIT 1` (a write acknowledged by the replica before it counts) costs a write, side
    /// by side with the same write alone, on one connection, in the same run.
    #[test]
    fn wait_for_one_replica_cost_is_measured() {
        use std::io::{BufRead, BufReader, Write};
        const WRITES: usize = 2_000;
        let set = SentinelSet::start();
        let stream =
            std::net::TcpStream::connect(("127.0.0.1", set.primary_port())).expect("connect");
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let mut round = |command: &str, replies: usize| {
            writer.write_all(command.as_bytes()).expect("write");
            let mut last = String::new();
            for _ in 0..replies {
                line.clear();
                reader.read_line(&mut line).expect("read");
                last.clone_from(&line);
            }
            last
        };
        let (mut plain, mut waited) = (Duration::ZERO, Duration::ZERO);
        for i in 0..WRITES {
            let started = Instant::now();
            assert_eq!(
                round(&format!("INCR plain{}\r\n", i % 10), 1).as_bytes()[0],
                b':'
            );
            plain += started.elapsed();
            let started = Instant::now();
            let acked = round(&format!("INCR waited{}\r\nWAIT 1 1000\r\n", i % 10), 2);
            waited += started.elapsed();
            assert_eq!(acked, ":1\r\n", "the replica acknowledged write {i}");
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / WRITES as f64;
        eprintln!(
            "write alone {:.1} us, write + WAIT 1 {:.1} us per write ({WRITES} each, loopback): {:.2}x",
            per(plain),
            per(waited),
            waited.as_secs_f64() / plain.as_secs_f64()
        );
    }

    #[test]
    fn resp_fields_are_read_from_flat_arrays() {
        let reply = "*4\r\n$4\r\nname\r\n$6\r\nhermes\r\n$4\r\nport\r\n$4\r\n6379\r\n";
        assert_eq!(resp_field(reply, "port").as_deref(), Some("6379"));
        assert_eq!(resp_field(reply, "name").as_deref(), Some("hermes"));
        assert_eq!(resp_field(reply, "flags"), None);
    }
}
