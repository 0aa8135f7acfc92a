//! Which process holds a port: read from `/proc/net/{tcp,udp}{,6}` (socket inode per bound
//! port) and `/proc/<pid>/fd` (the inodes a process holds).
//!
//! A harness that picks a "free" port and then starts a server on it races with every other
//! test doing the same: a probe (TCP connect, PING, an HTTP GET) can be answered by another
//! test's server that took the port meanwhile, while ours failed to bind and exited. Asking
//! the kernel whether *our child* holds a listening socket on the port closes that race: the
//! answer cannot come from anybody else. Linux only, like the rest of the harness.

use std::time::{Duration, Instant};

use crate::ChildGuard;

/// The transport of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP socket in the LISTEN state.
    Tcp,
    /// A bound UDP socket.
    Udp,
}

/// TCP state `LISTEN` as `/proc/net/tcp` prints it.
const TCP_LISTEN: &str = "0A";

/// Inodes of the sockets bound to local `port` (TCP: listening ones only), IPv4 and IPv6.
pub fn socket_inodes(transport: Transport, port: u16) -> Vec<u64> {
    // `thread-self`, not `/proc/net` (the process's first thread): a test thread may have
    // entered another network namespace (the network lab, tests/e2e/src/netlab.rs), and the
    // ports it asks about are that namespace's.
    let tables: [&str; 2] = match transport {
        Transport::Tcp => ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"],
        Transport::Udp => ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"],
    };
    let mut inodes = Vec::new();
    for table in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(text.lines().skip(1).filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            if transport == Transport::Tcp && *fields.get(3)? != TCP_LISTEN {
                return None;
            }
            fields.get(9)?.parse::<u64>().ok()
        }));
    }
    inodes
}

/// True when process `pid` holds a socket bound to `port` (TCP: listening).
pub fn process_holds_port(pid: u32, transport: Transport, port: u16) -> bool {
    let inodes = socket_inodes(transport, port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// Why [`wait_until_child_holds`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum NotListening {
    /// The child exited (typically: the port was taken and its bind failed).
    Exited,
    /// Still running but not holding the port when the time was up.
    TimedOut,
}

/// Wait until `child` itself holds `port` (TCP: listening); stops early when it exits.
pub fn wait_until_child_holds(
    child: &mut ChildGuard,
    transport: Transport,
    port: u16,
    timeout: Duration,
) -> Result<(), NotListening> {
    let deadline = Instant::now() + timeout;
    loop {
        if !child.is_running() {
            return Err(NotListening::Exited);
        }
        let pid = child.id().ok_or(NotListening::Exited)?;
        if process_holds_port(pid, transport, port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NotListening::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
