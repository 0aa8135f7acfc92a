//! Test harness shared by every crate's tests: real processes on loopback, never fakes.
//!
//! - [`RedisServer`]: a private `redis-server` on a free port with its data in a temp dir,
//!   which a test can kill, restart on the same port, and which dies with the test.
//! - [`ChildGuard`]: any child process killed (SIGKILL) when dropped, so a failing test leaves
//!   nothing behind.
//! - free ports, waiting for a TCP listener, and locating workspace binaries;
//! - [`port_owner`]: whether a given child process itself holds a port, so a probe is never
//!   answered by another test's server that took a "free" port first.
//! - [`SentinelSet`]: a real Sentinel set-up (primary, replica, three sentinels) whose primary
//!   a test can SIGKILL and watch the replica be promoted.
//! - [`ClusterSet`]: a real Redis Cluster (three primaries, three replicas) for the suites that
//!   run against `redis-cluster://`.

pub mod cluster;
pub mod port_owner;
pub mod sentinel;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use cluster::ClusterSet;
pub use port_owner::{NotListening, Transport, wait_until_child_holds};
pub use sentinel::SentinelSet;

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work in tests")
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work in tests")
}

/// A port free for both TCP and UDP on 127.0.0.1 (STUN/TURN listen on both).
pub fn free_tcp_udp_port() -> u16 {
    for _ in 0..100 {
        let port = free_tcp_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP after 100 tries");
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listened on {addr} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Find an executable on PATH, also in the sbin directories Debian uses.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Like [`find_program`] but panics with the install hint a developer needs.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("`{name}` not found: install it with `apt-get install -y {package}` (make test does this as root)")
    })
}

/// Path of a binary built from this workspace (`target/<profile>/<name>`).
///
/// Integration tests of the crate that owns the binary should prefer `env!("CARGO_BIN_EXE_…")`;
/// this is for tests that start other crates' binaries (they must be built first, e.g. by
/// `cargo build --workspace`, which `make test` does).
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testkit lives at crates/testkit")
        .to_path_buf()
}

/// A child process that is killed when dropped.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd.spawn()?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
        })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait up to `timeout` for a clean exit; returns the exit status if any.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ports tried by [`RedisServer::start`] before giving up (each lost only to a bind race).
const REDIS_PORT_ATTEMPTS: usize = 20;
/// How long a starting redis-server may take to listen and to answer PING.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`RedisServer::restart`] keeps trying while another process holds the port.
const REDIS_RESTART_PATIENCE: Duration = Duration::from_secs(10);

/// A private, real `redis-server` on 127.0.0.1 and a free port, data in a temp dir.
///
/// Race-free start: the server counts as up only once the kernel shows that this very child
/// listens on the port (a PONG alone could come from another test's server that took the
/// port after it was chosen); a child that lost the port exits, and another port is tried.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    process: ChildGuard,
}

impl RedisServer {
    /// Start a fresh redis-server and wait until it listens and answers PING.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut last_err = String::new();
        for _ in 0..REDIS_PORT_ATTEMPTS {
            let port = free_tcp_port();
            match Self::try_spawn(port, dir.path()) {
                Ok(process) => return Self { port, dir, process },
                Err(e) => last_err = e,
            }
        }
        panic!("no redis-server after {REDIS_PORT_ATTEMPTS} ports; last: {last_err}");
    }

    /// One redis-server on `port`: `Err` when it could not take the port (it exits) or did not
    /// come up in time.
    fn try_spawn(port: u16, dir: &Path) -> Result<ChildGuard, String> {
        let bin = require_program("redis-server", "redis-server");
        let mut guard = ChildGuard::spawn(
            "redis-server",
            Command::new(&bin)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--protected-mode", "yes"])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("spawn redis-server");
        wait_until_child_holds(&mut guard, Transport::Tcp, port, REDIS_START_TIMEOUT)
            .map_err(|e| format!("redis-server did not listen on {port}: {e:?}"))?;
        // The listener is this child's, so the PONG is too.
        wait_for_ping(port, REDIS_START_TIMEOUT)?;
        Ok(guard)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL the server (simulates a crash); the port stays reserved for [`Self::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port (after [`Self::kill`]); data is not kept. While
    /// another process holds the port (a test elsewhere that picked it as "free" meanwhile),
    /// retry for a bounded time.
    pub fn restart(&mut self) {
        self.process.kill();
        let deadline = Instant::now() + REDIS_RESTART_PATIENCE;
        loop {
            match Self::try_spawn(self.port, self.dir.path()) {
                Ok(process) => {
                    self.process = process;
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restarting redis-server: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot restart redis-server on its port: {e}"),
            }
        }
    }

    /// Send one raw command (RESP inline) and return the raw reply; for harness-level checks
    /// that must not depend on the client library under test.
    pub fn raw_command(&self, command: &str) -> std::io::Result<String> {
        raw_command(self.port, command)
    }
}

fn wait_for_ping(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(reply) = raw_command(port, "PING")
            && reply.starts_with("+PONG")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no PONG from 127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    let mut out = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Bulk replies may come in more than one read.
    if let Some(rest) = out.strip_prefix('$')
        && let Some((len, _)) = rest.split_once("\r\n")
        && let Ok(len) = len.parse::<usize>()
    {
        while out.len() < len + 5 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_is_a_real_redis_server_process() {
        let mut redis = RedisServer::start();
        let info = redis.raw_command("INFO server").expect("INFO");
        assert!(info.contains("redis_version:"), "{info}");
        assert!(
            info.contains(&format!("tcp_port:{}", redis.port())),
            "{info}"
        );
        let pid = redis.process.id().expect("running");
        assert!(info.contains(&format!("process_id:{pid}")), "{info}");

        assert_eq!(redis.raw_command("SET k v").expect("SET"), "+OK\r\n");
        redis.kill();
        assert!(
            redis.raw_command("PING").is_err(),
            "killed server must not answer"
        );
        redis.restart();
        assert!(
            redis
                .raw_command("PING")
                .expect("PING")
                .starts_with("+PONG")
        );
        assert_eq!(
            redis.raw_command("GET k").expect("GET"),
            "$-1\r\n",
            "fresh data after restart"
        );
    }

    /// The race the harness closes: a second server on a port that is already taken is not
    /// "up", although a PING there gets a PONG (from the first server).
    #[test]
    fn a_pong_from_another_server_on_the_port_does_not_count() {
        let first = RedisServer::start();
        assert!(wait_for_ping(first.port(), Duration::from_secs(1)).is_ok());
        let dir = tempfile::tempdir().expect("dir");
        let second = RedisServer::try_spawn(first.port(), dir.path());
        assert!(second.is_err(), "the second server cannot own the port");
        let pid = first.process.id().expect("running");
        assert!(port_owner::process_holds_port(
            pid,
            Transport::Tcp,
            first.port()
        ));
        assert!(!port_owner::process_holds_port(
            std::process::id(),
            Transport::Tcp,
            first.port()
        ));
    }

    #[test]
    fn port_ownership_is_seen_for_udp_and_tcp() {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let me = std::process::id();
        let tcp_port = tcp.local_addr().expect("addr").port();
        let udp_port = udp.local_addr().expect("addr").port();
        assert!(port_owner::process_holds_port(me, Transport::Tcp, tcp_port));
        assert!(port_owner::process_holds_port(me, Transport::Udp, udp_port));
        drop(tcp);
        assert!(!port_owner::process_holds_port(
            me,
            Transport::Tcp,
            tcp_port
        ));
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_tcp_udp_port();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        assert!(UdpSocket::bind(("127.0.0.1", p)).is_ok());
    }
}
