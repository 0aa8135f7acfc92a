//! What crosses between a worker (engine thread) and the tokio tasks around it: the messages
//! into a worker and the handles that send them ([`EngineMsg`], [`EngineHandle`],
//! [`Engines`]), what a worker sends an RFC 6062 data connection's task ([`StreamOut`]), and
//! the pipe it hands over when a ConnectionBind succeeds ([`Pipe`], with the per-allocation
//! [`Budget`] its copies share). A module of its own so that `engine`, `stream` and
//! `tcp_relay` all build on it instead of on each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use mio::Waker;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::io::stream_conn::RecordEdge;
use crate::metrics::Metrics;
use crate::server::{ConnId, RelayId};

/// Messages from the async side.
#[derive(Debug)]
pub enum EngineMsg {
    StreamOpened {
        conn: u64,
        tx: tokio::sync::mpsc::Sender<StreamOut>,
    },
    /// A TCP/TLS client connection for the worker to serve itself from now on: `early` holds
    /// the bytes read before the hand-over (at least its first frame), `tls` the rustls state
    /// after the handshake and the record boundaries of the bytes read so far, `slot` its
    /// share of `TURN_MAX_STREAM_CONNECTIONS`.
    StreamAdopt {
        conn: u64,
        peer: SocketAddr,
        sock: std::net::TcpStream,
        tls: Option<(Box<tokio_rustls::rustls::ServerConnection>, RecordEdge)>,
        early: Vec<u8>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    StreamFrame {
        conn: u64,
        peer: SocketAddr,
        frame: Vec<u8>,
    },
    StreamClosed {
        conn: u64,
        peer: SocketAddr,
    },
    /// Refuse new allocations; exit when none are left or at `deadline_ms`.
    Drain {
        deadline_ms: u64,
    },
    /// Exit now.
    Stop,
    /// The outcome of a [`Command::ConnectPeer`](crate::server::Command::ConnectPeer) (RFC 6062).
    PeerConnected {
        id: ConnId,
        stream: Option<tokio::net::TcpStream>,
    },
    /// The pipe of RFC 6062 connection `id` ended.
    PipeClosed {
        id: ConnId,
    },
    /// A peer connected to the TCP relay of `relay` (bound at `bind`).
    PeerAccepted {
        relay: RelayId,
        bind: SocketAddr,
        peer: SocketAddr,
        stream: tokio::net::TcpStream,
    },
}

/// Cloneable sender into one engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<EngineMsg>,
    waker: Arc<Waker>,
}

impl EngineHandle {
    /// Messages sent on `tx`, each followed by a wake-up of `waker` (the engine's poll).
    pub fn new(tx: Sender<EngineMsg>, waker: Arc<Waker>) -> Self {
        Self { tx, waker }
    }

    /// The engine's waker.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn send(&self, msg: EngineMsg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Every worker's handle. Stream (TCP/TLS) connections are spread over the workers by
/// connection number; a connection stays on its worker for life.
#[derive(Clone)]
pub struct Engines(Arc<[EngineHandle]>);

impl Engines {
    /// `handles` must not be empty.
    pub fn new(handles: Vec<EngineHandle>) -> Self {
        assert!(!handles.is_empty(), "at least one engine");
        Self(handles.into())
    }

    pub fn for_stream(&self, conn: u64) -> &EngineHandle {
        &self.0[self.index_for_stream(conn)]
    }

    /// The worker number [`Engines::for_stream`] picks.
    pub fn index_for_stream(&self, conn: u64) -> usize {
        (conn % self.0.len() as u64) as usize
    }

    /// Worker `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&EngineHandle> {
        self.0.get(index)
    }

    /// Send a copy of `msg` to every worker.
    pub fn broadcast(&self, msg: impl Fn() -> EngineMsg) {
        for h in self.0.iter() {
            h.send(msg());
        }
    }
}

/// What the engine sends a stream connection.
#[derive(Debug)]
pub enum StreamOut {
    /// A STUN message or ChannelData frame to write.
    Frame(Vec<u8>),
    /// ConnectionBind succeeded: write the response, then pipe bytes to and from the peer.
    Pipe(Box<Pipe>),
}

/// A connected peer joined to a client's data connection (what the stream task needs).
#[derive(Debug)]
pub struct Pipe {
    /// Tells the engine that holds the connection when the pipe is gone, however it ends.
    pub done: PipeDone,
    /// The ConnectionBind success response, written before any piped byte.
    pub response: Vec<u8>,
    pub peer: TcpStream,
    pub closed: watch::Receiver<bool>,
    pub budget: Arc<Budget>,
    pub metrics: Arc<Metrics>,
}

/// Reports [`EngineMsg::PipeClosed`] to the engine when dropped.
pub struct PipeDone {
    pub id: ConnId,
    pub engine: EngineHandle,
}

impl std::fmt::Debug for PipeDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeDone").field("id", &self.id).finish()
    }
}

impl Drop for PipeDone {
    fn drop(&mut self) {
        self.engine.send(EngineMsg::PipeClosed { id: self.id });
    }
}

/// The per-allocation bandwidth cap (`TURN_MAX_BPS`, each way) shared by all the pipes of one
/// TCP relay: one-second windows counted with atomics (a pipe that overdraws a window waits
/// for the next one).
#[derive(Debug)]
pub struct Budget {
    max_bps: u64,
    epoch: Instant,
    up: Window,
    down: Window,
}

#[derive(Debug, Default)]
struct Window {
    start_ms: AtomicU64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(max_bps: u64) -> Self {
        Self {
            max_bps,
            epoch: Instant::now(),
            up: Window::default(),
            down: Window::default(),
        }
    }

    /// Count `n` bytes of one direction; how long to wait before sending more.
    pub fn take(&self, to_peer: bool, n: usize) -> Option<Duration> {
        if self.max_bps == 0 {
            return None;
        }
        let w = if to_peer { &self.up } else { &self.down };
        let now = self.epoch.elapsed().as_millis() as u64;
        let start = w.start_ms.load(Ordering::Relaxed);
        if now >= start + 1000
            && w.start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            w.used.store(0, Ordering::Relaxed);
        }
        let used = w.used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        (used >= self.max_bps).then(|| {
            let end = w.start_ms.load(Ordering::Relaxed) + 1000;
            Duration::from_millis(end.saturating_sub(now).max(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_window_and_per_direction() {
        let b = Budget::new(10_000);
        assert_eq!(b.take(true, 6_000), None);
        let wait = b.take(true, 6_000).expect("over the window's share");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        // The other direction has its own.
        assert_eq!(b.take(false, 9_000), None);
        // Unlimited never waits.
        let free = Budget::new(0);
        assert_eq!(free.take(true, usize::MAX / 2), None);
    }
}
