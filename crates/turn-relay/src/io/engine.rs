//! The data plane: one worker per core, each owning its own sans-IO [`Server`], its
//! own UDP listener socket (all bound to the same address with SO_REUSEPORT, so the kernel
//! spreads clients across workers by 5-tuple hash) and the relay sockets of its allocations,
//! multiplexed with mio (epoll). A worker runs on one thread at a time (its own with
//! `TURN_WORKER_THREADS=fixed`, else shared as `runner.rs` decides, one [`Engine::turn`] at a
//! time). Each worker is the single owner of its state, so no locks
//! anywhere on the packet path (the shared allocation ledger is touched only when an
//! allocation is created or removed); datagrams are received with `recvmmsg` into reused
//! slots (with headroom for the ChannelData/Data-indication header, see `batch.rs`), handed
//! to the core by reference and sent to peers from the same slot: one `sendto`, or one GSO
//! `sendmsg` for a run of same-sized datagrams to one peer (`gso.rs`); datagrams to UDP
//! clients are copied into a [`SendBatch`] (which coalesces runs the same way) and leave with
//! one `sendmmsg` per wake-up. No allocation.
//!
//! Stream (TCP/TLS) clients are accepted by tokio tasks (`io/stream.rs`, which also do the
//! TLS handshake and read the first frame) and then handed to a worker, which serves them
//! like its UDP sockets: read when epoll says so, frames parsed in place and handed to the
//! core, replies and relayed packets queued per connection and written once per turn
//! (`io/stream_conn.rs`); with io_uring, their datagrams to peers and the TCP clients'
//! writes each leave in one submission per turn (`io/uring.rs`). Only RFC 6062 data connections (first frame ConnectionBind) stay
//! on tokio tasks, which pass frames in through a channel plus a mio `Waker`; RFC 6062 TCP
//! relays (`io/tcp_relay.rs`) run as tokio tasks too; the engine keeps their listeners and
//! the peer connections that wait for ConnectionBind.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use hermes_proto::CallEvent;
use hermes_service::EventPublisher;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::io::batch::{self, RecvBatch, SendBatch};
use crate::io::gso;
pub use crate::io::handoff::{EngineHandle, EngineMsg, Engines};
use crate::io::handoff::{Pipe, PipeDone, StreamOut};
use crate::io::stream_conn::{Close, ConnMap, RecordEdge, StreamConn};
use crate::io::tcp_relay::{self, TcpRelay};
use crate::io::uring::{PeerSends, StreamWrites};
use crate::server::{Client, Command, ConnId, Event, Forward, Millis, RelayId, Server, Via};
use crate::wire;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const RELAY_BASE: usize = 16;
/// Tokens of stream connections: this plus the connection number (relay tokens stay below:
/// relay ids are u32).
const STREAM_BASE: usize = 1 << 40;
/// Tokens of other workers' epoll descriptors this one watches for its thread
/// (`io/runner.rs`): this plus the worker number.
const WATCHED_BASE: usize = usize::MAX / 2;
/// How often stream connections are checked for stalls.
const SWEEP_MS: u64 = 1000;

/// `recvmmsg` batches read from one socket per wake-up before looking at the others, so one
/// busy allocation cannot starve the rest (and the timer) for long.
const BATCHES: usize = 4;

/// Create a non-blocking UDP socket with the given buffer sizes; `reuse_port` lets several
/// workers bind the same listener address.
pub fn udp_socket(
    bind: SocketAddr,
    buffer: usize,
    reuse_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(s.into())
}

pub struct Engine {
    poll: Poll,
    core: Server,
    listener: UdpSocket,
    relays: Vec<Option<UdpSocket>>,
    /// RFC 6062 data connections, served by their tokio tasks.
    streams: ConnMap<tokio::sync::mpsc::Sender<StreamOut>>,
    /// TCP/TLS client connections this worker serves itself.
    conns: ConnMap<StreamConn>,
    /// Connections with output queued this turn.
    dirty: Vec<u64>,
    /// A stream client that leaves a frame half-sent, or its output unread, this long is cut.
    stream_stall_ms: u64,
    next_sweep_ms: u64,
    /// The tokio runtime RFC 6062 TCP relays run on (none in unit tests: TCP relays refused).
    rt: Option<tokio::runtime::Handle>,
    /// A handle into `tcp_rx`, for the TCP relay tasks to report back.
    me: EngineHandle,
    tcp_relays: HashMap<RelayId, TcpRelay>,
    /// Peer connections waiting for their ConnectionBind.
    tcp_peers: HashMap<ConnId, tokio::net::TcpStream>,
    rx: Receiver<EngineMsg>,
    /// Reports of this engine's own TCP relay tasks (a channel apart, so that the engine
    /// holding its sender does not keep the main channel from disconnecting).
    tcp_rx: Receiver<EngineMsg>,
    events: Option<EventPublisher>,
    relay_buffer: usize,
    batch: RecvBatch,
    out: SendBatch,
    /// Client datagrams for one peer, gathered within a receive batch for one GSO send.
    to_peer: PeerRun,
    /// Stream clients' datagrams for peers, sent together at the end of the turn's reads.
    peer_sends: PeerSends,
    /// TCP clients' queued output, written together at the end of the turn.
    stream_writes: StreamWrites,
    /// Outcomes of `stream_writes` (kept between turns: no allocation per turn).
    written: Vec<(u64, std::io::Result<usize>)>,
    gso: bool,
    /// GSO sends of peer runs since the last fold into the metrics.
    peer_gso: gso::Tally,
    drain_deadline: Option<u64>,
    polled: Events,
    /// Sockets to serve this turn, and those whose budget ran out (served again next turn).
    ready: Vec<Token>,
    again: Vec<Token>,
    /// Other workers whose epoll (watched from this one) was ready in the last turn.
    watched_ready: Vec<usize>,
}

/// What one [`Engine::turn`] tells the thread that runs the worker.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    /// The worker has stopped (or its drain completed): call [`Engine::finish`].
    pub done: bool,
    /// A socket was left undrained: turn again without waiting.
    pub hot: bool,
    /// When the core next needs a turn for its timers (unix ms).
    pub deadline_ms: u64,
    /// How long the turn waited for its sockets (zero when it was not asked to wait).
    pub idle: Duration,
}

/// A run of datagrams from one relay socket to one peer, each a byte range of a slot of the
/// receive batch, sent together with UDP GSO (see `io/gso.rs`) before the batch is reused.
struct PeerRun {
    relay: RelayId,
    peer: SocketAddr,
    segment: usize,
    total: usize,
    closed: bool,
    count: usize,
    /// (slot, start, end) of each datagram.
    parts: [(u16, u16, u16); gso::MAX_SEGMENTS],
}

impl PeerRun {
    fn new() -> Self {
        Self {
            relay: RelayId(0),
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment: 0,
            total: 0,
            closed: false,
            count: 0,
            parts: [(0, 0, 0); gso::MAX_SEGMENTS],
        }
    }

    fn joins(&self, relay: RelayId, peer: SocketAddr, len: usize) -> bool {
        self.count > 0
            && self.relay == relay
            && self.peer == peer
            && gso::can_join(self.segment, self.count, self.total, self.closed, len)
    }

    fn push(&mut self, relay: RelayId, peer: SocketAddr, slot: usize, start: usize, end: usize) {
        let len = end - start;
        if self.count == 0 {
            (self.relay, self.peer, self.segment, self.total) = (relay, peer, len, 0);
            self.closed = false;
        }
        self.parts[self.count] = (slot as u16, start as u16, end as u16);
        self.count += 1;
        self.total += len;
        self.closed = len < self.segment;
    }
}

impl Engine {
    pub fn new(
        core: Server,
        listener: std::net::UdpSocket,
        events: Option<EventPublisher>,
        relay_buffer: usize,
        gso: bool,
    ) -> std::io::Result<(Self, EngineHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = UdpSocket::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (tcp_tx, tcp_rx) = std::sync::mpsc::channel();
        Ok((
            Self {
                poll,
                core,
                listener,
                relays: Vec::new(),
                streams: ConnMap::default(),
                conns: ConnMap::default(),
                dirty: Vec::new(),
                stream_stall_ms: 10_000,
                next_sweep_ms: 0,
                rt: tokio::runtime::Handle::try_current().ok(),
                me: EngineHandle::new(tcp_tx, waker.clone()),
                tcp_relays: HashMap::new(),
                tcp_peers: HashMap::new(),
                rx,
                tcp_rx,
                events,
                relay_buffer,
                batch: RecvBatch::new(),
                out: SendBatch::new(gso),
                to_peer: PeerRun::new(),
                peer_sends: PeerSends::new(false),
                stream_writes: StreamWrites::new(false),
                written: Vec::new(),
                gso,
                peer_gso: gso::Tally::default(),
                drain_deadline: None,
                polled: Events::with_capacity(1024),
                ready: Vec::new(),
                again: Vec::new(),
                watched_ready: Vec::new(),
            },
            EngineHandle::new(tx, waker),
        ))
    }

    /// Cut stream clients that stall for `ms` (a frame half-sent, output unread).
    pub fn with_stream_stall_ms(mut self, ms: u64) -> Self {
        self.stream_stall_ms = ms.max(1);
        self
    }

    /// Batch stream clients' peer sends and TCP writes with io_uring (`io/uring.rs`), where the
    /// kernel allows it.
    pub fn with_io_uring(mut self, on: bool) -> Self {
        self.peer_sends = PeerSends::new(on);
        self.stream_writes = StreamWrites::new(on);
        self
    }

    /// The epoll descriptor of this worker: readable whenever one of its sockets or its waker
    /// is, so that a thread can wait for several workers at once (`io/runner.rs`).
    pub fn poll_fd(&self) -> std::os::fd::RawFd {
        self.poll.as_raw_fd()
    }

    /// This worker's waker: wakes a thread that waits in [`Engine::turn`] (`io/runner.rs`).
    pub fn waker(&self) -> Arc<Waker> {
        self.me.waker()
    }

    /// Watch worker `index`'s epoll descriptor `fd` from this worker's epoll, so that the
    /// thread running both waits in one `epoll_wait` (see [`Engine::take_watched_ready`]).
    pub fn watch_worker(&mut self, fd: std::os::fd::RawFd, index: usize) -> std::io::Result<()> {
        self.poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            Token(WATCHED_BASE + index),
            Interest::READABLE,
        )
    }

    pub fn unwatch_worker(&mut self, fd: std::os::fd::RawFd) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&fd));
    }

    /// Move the numbers of the watched workers that were ready in the last turn to `out`.
    pub fn take_watched_ready(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.watched_ready);
    }

    /// Run on this thread until stopped, or until a drain completes.
    pub fn run(mut self) {
        let mut wait = self.wait_for(self.core.poll_timeout().0, false);
        loop {
            let t = self.turn(wait);
            if t.done {
                break;
            }
            wait = self.wait_for(t.deadline_ms, t.hot);
        }
        self.finish();
    }

    /// How long to wait for sockets before the next turn: not at all when `hot`, else until
    /// the core's next deadline (at least 1 ms, at most 250 ms).
    pub fn wait_for(&self, deadline_ms: u64, hot: bool) -> Duration {
        if hot {
            Duration::ZERO
        } else {
            let now = hermes_service::unix_now_ms();
            Duration::from_millis(deadline_ms.saturating_sub(now).clamp(1, 250))
        }
    }

    /// One turn: wait up to `wait` for this worker's sockets and messages, serve what is
    /// ready (each socket up to its batch budget), flush the sends, run the core's timers
    /// and commands.
    pub fn turn(&mut self, wait: Duration) -> Turn {
        let before = (!wait.is_zero()).then(std::time::Instant::now);
        if let Err(e) = self.poll.poll(&mut self.polled, Some(wait))
            && e.kind() != ErrorKind::Interrupted
        {
            tracing::error!(error = %e, "poll failed; relay stopping");
            return Turn {
                done: true,
                hot: false,
                deadline_ms: 0,
                idle: Duration::ZERO,
            };
        }
        let idle = before.map_or(Duration::ZERO, |b| b.elapsed());
        let now = hermes_service::unix_now_ms();
        // Sockets whose budget ran out last turn are served again first.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.append(&mut self.again);
        let mut stop = false;
        let mut woken = false;
        let mut events = 0;
        for ev in self.polled.iter() {
            events += 1;
            if ev.token() == WAKER {
                woken = true;
            } else if ev.token().0 >= WATCHED_BASE {
                self.watched_ready.push(ev.token().0 - WATCHED_BASE);
            } else {
                ready.push(ev.token());
            }
        }
        if woken {
            stop |= self.messages(now);
        }
        for &t in &ready {
            let drained = if t == LISTENER {
                self.client_datagrams(now)
            } else if t.0 >= STREAM_BASE {
                self.stream_ready((t.0 - STREAM_BASE) as u64, now)
            } else {
                self.peer_datagrams(RelayId((t.0 - RELAY_BASE) as u32), now)
            };
            if !drained {
                self.again.push(t);
            }
            // Without io_uring, what this socket's packets queued for stream clients leaves
            // now, not at the end of the turn: still one write per client for the whole batch
            // (a relay socket feeds one client connection), without waiting for the other
            // sockets' batches. With io_uring all clients' writes leave together at the end
            // of the turn, in one system call (`io/uring.rs`): the wait is the rest of this
            // turn (a few µs per socket), the gain one wake-up of each client process per
            // turn instead of one per write.
            if !self.dirty.is_empty() && !self.stream_writes.batched() {
                self.flush_streams(now);
            }
        }
        self.ready = ready;
        self.flush_peer_sends();
        if !self.out.is_empty() {
            let failed = self.out.flush(self.listener.as_raw_fd());
            self.core.send_failed_n(failed);
        }
        self.fold_gso_tally();
        self.core.handle_timeout(Millis(now));
        self.commands(now);
        if now >= self.next_sweep_ms {
            self.next_sweep_ms = now + SWEEP_MS;
            self.sweep_streams(now);
        }
        self.flush_streams(now);
        let drained = self
            .drain_deadline
            .is_some_and(|deadline| self.core.allocation_count() == 0 || now >= deadline);
        // A full event list may have left ready sockets in the epoll set; they raise no new
        // edge for a thread waiting on this worker's epoll descriptor, so turn again at once.
        let full = events >= self.polled.capacity();
        Turn {
            done: stop || drained,
            hot: full || !self.again.is_empty(),
            deadline_ms: self.core.poll_timeout().0,
            idle,
        }
    }

    /// End this worker: cut the allocations that are left and run their last commands.
    pub fn finish(mut self) {
        let left = self.core.allocation_count();
        self.core.shutdown();
        let now = hermes_service::unix_now_ms();
        self.commands(now);
        self.flush_peer_sends();
        self.flush_streams(now);
        tracing::info!(allocations_cut = left, "relay stopped");
    }

    /// Send the stream clients' datagrams gathered for peers this turn (one system call).
    fn flush_peer_sends(&mut self) {
        if !self.peer_sends.is_empty() {
            let failed = self.peer_sends.flush();
            self.core.send_failed_n(failed);
        }
    }

    /// Add this wake-up's GSO sends (both directions) to the shared metrics.
    fn fold_gso_tally(&mut self) {
        let (a, b) = (self.out.take_gso_tally(), self.peer_gso.take());
        if a.sends + b.sends > 0 {
            let m = self.core.metrics();
            m.gso_sends.add(a.sends + b.sends);
            m.gso_datagrams.add(a.datagrams + b.datagrams);
        }
    }

    /// Handle async-side messages; `true` to stop.
    fn messages(&mut self, now: u64) -> bool {
        while let Ok(msg) = self.tcp_rx.try_recv() {
            self.message(msg, now);
        }
        loop {
            match self.rx.try_recv() {
                Ok(msg) => {
                    if self.message(msg, now) {
                        return true;
                    }
                }
                Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => return false,
            }
        }
    }

    /// Handle one async-side message; `true` to stop.
    fn message(&mut self, msg: EngineMsg, now: u64) -> bool {
        match msg {
            EngineMsg::StreamOpened { conn, tx } => {
                self.streams.insert(conn, tx);
            }
            EngineMsg::StreamAdopt {
                conn,
                peer,
                sock,
                tls,
                early,
                slot,
            } => self.adopt_stream(conn, peer, sock, tls, &early, slot, now),
            EngineMsg::StreamFrame { conn, peer, frame } => {
                let client = Client {
                    via: Via::Stream(conn),
                    addr: peer,
                };
                if let Forward::ToPeer { relay, peer, range } =
                    self.core.handle_client(client, &frame, Millis(now))
                {
                    self.send_to_peer(relay, peer, &frame[range]);
                }
                self.commands(now);
            }
            EngineMsg::StreamClosed { conn, peer } => {
                self.streams.remove(&conn);
                self.core.client_closed(Client {
                    via: Via::Stream(conn),
                    addr: peer,
                });
                self.commands(now);
            }
            EngineMsg::Drain { deadline_ms } => {
                self.core.drain();
                self.drain_deadline = Some(deadline_ms);
                tracing::info!(
                    allocations = self.core.allocation_count(),
                    "draining: new allocations refused"
                );
            }
            EngineMsg::Stop => return true,
            EngineMsg::PeerConnected { id, stream } => {
                if self.core.peer_connected(id, stream.is_some(), Millis(now))
                    && let Some(stream) = stream
                {
                    self.tcp_peers.insert(id, stream);
                }
                self.commands(now);
            }
            EngineMsg::PipeClosed { id } => self.core.pipe_closed(id),
            EngineMsg::PeerAccepted {
                relay,
                bind,
                peer,
                stream,
            } => {
                // A report from a relay that has since closed (and whose id may be reused)
                // names the old bind address: drop its connection.
                if self.tcp_relays.get(&relay).is_some_and(|r| r.bind == bind)
                    && let Some(id) = self.core.peer_accepted(relay, peer, Millis(now))
                {
                    self.tcp_peers.insert(id, stream);
                }
                self.commands(now);
            }
        }
        false
    }

    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, bytes: &[u8]) {
        let ok = match self.relays.get(relay.index()) {
            Some(Some(s)) => s.send_to(bytes, peer).is_ok(),
            _ => false,
        };
        if !ok {
            self.core.send_failed();
        }
    }

    /// Read client datagrams; `true` when the socket was drained.
    fn client_datagrams(&mut self, now: u64) -> bool {
        let mut drained = false;
        let Self {
            core,
            listener,
            relays,
            batch,
            to_peer,
            gso,
            peer_gso,
            ..
        } = self;
        for _ in 0..BATCHES {
            let n = match batch.recv(listener.as_raw_fd()) {
                Ok(n) => n,
                // ICMP errors surface here on Linux; the next read gets the datagrams.
                Err(_) => continue,
            };
            for i in 0..n {
                let (slot, len, from, truncated) = batch.get(i);
                let (Some(from), false) = (from, truncated) else {
                    core.send_failed();
                    continue;
                };
                let packet = &slot[wire::HEADROOM..wire::HEADROOM + len];
                if let Forward::ToPeer { relay, peer, range } =
                    core.handle_client(Client::udp(0, from), packet, Millis(now))
                {
                    let (start, end) = (wire::HEADROOM + range.start, wire::HEADROOM + range.end);
                    if !(*gso && to_peer.joins(relay, peer, end - start)) {
                        send_peer_run(to_peer, batch, relays, core, gso, peer_gso);
                    }
                    to_peer.push(relay, peer, i, start, end);
                }
            }
            // The run points into this batch: out before the next receive reuses it.
            send_peer_run(to_peer, batch, relays, core, gso, peer_gso);
            if n < batch::BATCH {
                drained = true;
                break;
            }
        }
        self.commands(now);
        drained
    }

    /// Read peer datagrams on one relay socket; `true` when drained (or gone).
    fn peer_datagrams(&mut self, relay: RelayId, now: u64) -> bool {
        let Self {
            core,
            listener,
            relays,
            streams,
            conns,
            dirty,
            batch,
            out,
            ..
        } = self;
        let Some(Some(sock)) = relays.get(relay.index()) else {
            return true;
        };
        for _ in 0..BATCHES {
            let n = match batch.recv(sock.as_raw_fd()) {
                Ok(n) => n,
                Err(_) => continue,
            };
            for i in 0..n {
                let (slot, len, from, truncated) = batch.get(i);
                let (Some(from), false) = (from, truncated) else {
                    core.send_failed();
                    continue;
                };
                if let Forward::ToClient { to, range } =
                    core.handle_peer(relay, from, slot, len, Millis(now))
                {
                    let ok = match to.via {
                        Via::Udp(_) => {
                            if out.push(&slot[range], to.addr) {
                                core.send_failed_n(out.flush(listener.as_raw_fd()));
                            }
                            true
                        }
                        Via::Stream(conn) => match conns.get_mut(&conn) {
                            Some(c) => queue_to_stream(conn, c, dirty, &slot[range], now),
                            // An RFC 6062 data connection's task: the frame is copied over.
                            None => streams.get(&conn).is_some_and(|tx| {
                                tx.try_send(StreamOut::Frame(slot[range].to_vec())).is_ok()
                            }),
                        },
                    };
                    if !ok {
                        core.send_failed();
                    }
                }
            }
            if n < batch::BATCH {
                return true;
            }
        }
        false
    }

    /// Execute the core's commands.
    fn commands(&mut self, now: u64) {
        while let Some(c) = self.core.poll_command() {
            match c {
                Command::ToClient { to, bytes } => {
                    if bytes.is_empty() {
                        continue;
                    }
                    match to.via {
                        Via::Udp(_) => {
                            let _ = self.listener.send_to(&bytes, to.addr);
                        }
                        Via::Stream(conn) => {
                            if let Some(c) = self.conns.get_mut(&conn) {
                                if !queue_to_stream(conn, c, &mut self.dirty, &bytes, now) {
                                    self.core.send_failed();
                                }
                            } else if let Some(tx) = self.streams.get(&conn) {
                                let _ = tx.try_send(StreamOut::Frame(bytes));
                            }
                        }
                    }
                }
                Command::OpenRelay { relay, bind, tcp } => {
                    let ok = if tcp {
                        self.open_tcp_relay(relay, bind)
                    } else {
                        self.open_relay(relay, bind)
                    };
                    self.core.relay_opened(relay, ok, Millis(now));
                }
                Command::CloseRelay { relay } => {
                    // Gathered sends name relay sockets by descriptor: out before one closes
                    // (and its number is reused).
                    self.flush_peer_sends();
                    if let Some(slot) = self.relays.get_mut(relay.index())
                        && let Some(mut s) = slot.take()
                    {
                        let _ = self.poll.registry().deregister(&mut s);
                    }
                    // Dropping the relay stops its listener and closes its pipes.
                    self.tcp_relays.remove(&relay);
                }
                Command::ConnectPeer { id, bind, peer } => match &self.rt {
                    Some(rt) => tcp_relay::connect(rt, id, bind, peer, self.me.clone()),
                    None => {
                        self.core.peer_connected(id, false, Millis(now));
                    }
                },
                Command::BindConnection {
                    to,
                    relay,
                    id,
                    response,
                } => {
                    let peer = self.tcp_peers.remove(&id);
                    let relay = self.tcp_relays.get(&relay);
                    let tx = match to.via {
                        Via::Stream(conn) => self.streams.get(&conn),
                        Via::Udp(_) => None,
                    };
                    let sent = match (peer, relay, tx) {
                        (Some(peer), Some(relay), Some(tx)) => {
                            let pipe = Pipe {
                                done: PipeDone {
                                    id,
                                    engine: self.me.clone(),
                                },
                                response,
                                peer,
                                closed: relay.closed(),
                                budget: relay.budget(),
                                metrics: self.core.metrics().clone(),
                            };
                            tx.try_send(StreamOut::Pipe(Box::new(pipe))).is_ok()
                        }
                        _ => false,
                    };
                    if !sent {
                        // The client connection or the peer is gone: no pipe to wait for (a
                        // pipe refused by a full queue reports itself when dropped).
                        self.core.pipe_closed(id);
                    }
                }
                Command::DropPeer { id } => {
                    self.tcp_peers.remove(&id);
                }
                Command::Event(e) => self.event(e),
            }
        }
    }

    /// Take over a client connection from its accepting task and serve what it sent so far.
    #[allow(clippy::too_many_arguments)]
    fn adopt_stream(
        &mut self,
        conn: u64,
        peer: SocketAddr,
        sock: std::net::TcpStream,
        tls: Option<(Box<tokio_rustls::rustls::ServerConnection>, RecordEdge)>,
        early: &[u8],
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        now: u64,
    ) {
        let mut sock = mio::net::TcpStream::from_std(sock);
        // Edge-triggered: writable is reported only after a write found the socket full.
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(STREAM_BASE + conn as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot watch a client connection; closed");
            return;
        }
        let c = StreamConn::new(sock, peer, tls, early, slot, now);
        self.conns.insert(conn, c);
        // Bytes that arrived before the registration raised no event: serve them now.
        if !self.stream_ready(conn, now) {
            self.again.push(Token(STREAM_BASE + conn as usize));
        }
    }

    /// Serve a readable (or writable) client connection; `true` when its socket was drained.
    fn stream_ready(&mut self, conn: u64, now: u64) -> bool {
        let Self {
            core,
            relays,
            conns,
            dirty,
            peer_sends,
            ..
        } = self;
        let Some(c) = conns.get_mut(&conn) else {
            return true;
        };
        let client = Client {
            via: Via::Stream(conn),
            addr: c.peer,
        };
        let read = c.read(now, |frame| {
            if let Forward::ToPeer { relay, peer, range } =
                core.handle_client(client, frame, Millis(now))
            {
                let failed = match relays.get(relay.index()) {
                    Some(Some(s)) => peer_sends.send(s.as_raw_fd(), peer, &frame[range]),
                    _ => 1,
                };
                core.send_failed_n(failed);
            }
        });
        // Room again after a full socket, TLS records to send (e.g. session tickets).
        if c.wants_write() && !c.dirty {
            c.dirty = true;
            dirty.push(conn);
        }
        self.commands(now);
        match read {
            Ok(drained) => drained,
            Err(why) => {
                self.close_stream(conn, why, now);
                true
            }
        }
    }

    /// Write every connection's queued output (one write each).
    fn flush_streams(&mut self, now: u64) {
        let mut dirty = std::mem::take(&mut self.dirty);
        // Closing a connection runs the core's commands, which may queue output to others.
        while !dirty.is_empty() {
            if self.stream_writes.batched() {
                // TCP connections: one system call for all; TLS ones below.
                let conns = &self.conns;
                self.stream_writes.write_all(
                    dirty.iter().filter_map(|&conn| {
                        let (fd, bytes) = conns.get(&conn)?.tcp_pending()?;
                        Some((conn, fd, bytes))
                    }),
                    &mut self.written,
                );
                let mut written = std::mem::take(&mut self.written);
                for (conn, result) in written.drain(..) {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    c.dirty = false;
                    if let Err(why) = c.wrote(result, now) {
                        self.close_stream(conn, why, now);
                    }
                }
                self.written = written;
            }
            for conn in dirty.drain(..) {
                let Some(c) = self.conns.get_mut(&conn) else {
                    continue;
                };
                if !c.dirty {
                    // Written above (or listed twice).
                    continue;
                }
                c.dirty = false;
                if let Err(why) = c.flush(now) {
                    self.close_stream(conn, why, now);
                }
            }
            std::mem::swap(&mut dirty, &mut self.dirty);
        }
        // Keep the list's room for the next turn (the drained list is the one that has it;
        // a fresh one each turn cost a malloc, reallocs and a free per turn).
        if dirty.capacity() > self.dirty.capacity() {
            self.dirty = dirty;
        }
    }

    /// Cut the connections that stalled; free the buffers of those that are quiet.
    fn sweep_streams(&mut self, now: u64) {
        let stall = self.stream_stall_ms;
        let quiet_since = now.saturating_sub(SWEEP_MS);
        let cut: Vec<(u64, Close)> = self
            .conns
            .iter_mut()
            .filter_map(|(&conn, c)| {
                c.trim(quiet_since);
                c.check(now, stall).err().map(|why| (conn, why))
            })
            .collect();
        for (conn, why) in cut {
            self.close_stream(conn, why, now);
        }
    }

    fn close_stream(&mut self, conn: u64, why: Close, now: u64) {
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        let _ = self.poll.registry().deregister(c.socket());
        if why == Close::Gone {
            tracing::debug!("client connection closed");
        } else {
            tracing::info!(reason = why.as_str(), "client connection cut");
        }
        self.core.metrics().stream_closed(why.as_str());
        self.core.client_closed(Client {
            via: Via::Stream(conn),
            addr: c.peer,
        });
        self.commands(now);
    }

    fn open_relay(&mut self, relay: RelayId, bind: SocketAddr) -> bool {
        let sock = match udp_socket(bind, self.relay_buffer, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%bind, error = %e, "relay port unavailable");
                return false;
            }
        };
        let mut sock = UdpSocket::from_std(sock);
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                Token(RELAY_BASE + relay.index()),
                Interest::READABLE,
            )
            .is_err()
        {
            return false;
        }
        let idx = relay.index();
        if self.relays.len() <= idx {
            self.relays.resize_with(idx + 1, || None);
        }
        self.relays[idx] = Some(sock);
        true
    }

    fn open_tcp_relay(&mut self, relay: RelayId, bind: SocketAddr) -> bool {
        let Some(rt) = &self.rt else {
            return false;
        };
        match tcp_relay::listen(rt, relay, bind, self.core.max_bps(), self.me.clone()) {
            Ok(r) => {
                self.tcp_relays.insert(relay, r);
                true
            }
            Err(e) => {
                tracing::debug!(%bind, error = %e, "TCP relay port unavailable");
                false
            }
        }
    }

    fn event(&self, e: Event) {
        let event = match e {
            Event::Created {
                user,
                client: _,
                relay,
                lifetime,
            } => {
                tracing::info!(relay_port = relay.port(), lifetime, "allocation created");
                CallEvent::TurnAllocationCreated {
                    participant_id: user,
                    relay_port: relay.port(),
                    lifetime,
                }
            }
            Event::Ended {
                user,
                relay,
                reason,
                packets,
                bytes,
            } => {
                tracing::info!(
                    relay_port = relay.port(),
                    reason = reason.as_str(),
                    packets,
                    bytes,
                    "allocation ended"
                );
                CallEvent::TurnAllocationEnded {
                    participant_id: user,
                    relay_port: relay.port(),
                    reason: reason.as_str().to_owned(),
                    packets,
                    bytes,
                }
            }
            Event::Refused {
                client: _,
                code,
                reason,
            } => {
                tracing::info!(code, reason, "allocation refused");
                CallEvent::TurnAllocationRefused {
                    code,
                    reason: reason.to_owned(),
                }
            }
        };
        if let Some(p) = &self.events {
            p.publish(None, event);
        }
    }
}

/// Queue a frame for a client connection and note it for the flush after the socket being
/// served (written at once when the queue is long); `false` when it was dropped (queue full).
fn queue_to_stream(
    conn: u64,
    c: &mut StreamConn,
    dirty: &mut Vec<u64>,
    bytes: &[u8],
    now: u64,
) -> bool {
    if !c.queue(bytes) {
        return false;
    }
    if c.queue_is_long() {
        // A failed write shows again at that flush, which closes the connection.
        let _ = c.flush(now);
    }
    if !c.dirty {
        c.dirty = true;
        dirty.push(conn);
    }
    true
}

/// Send the gathered run to its peer (one GSO send when it holds several datagrams) and empty
/// it; a refused GSO send is repeated datagram by datagram (`gso::send_each`).
fn send_peer_run(
    run: &mut PeerRun,
    batch: &RecvBatch,
    relays: &[Option<UdpSocket>],
    core: &mut Server,
    gso: &mut bool,
    tally: &mut gso::Tally,
) {
    let count = std::mem::take(&mut run.count);
    if count == 0 {
        return;
    }
    let Some(Some(sock)) = relays.get(run.relay.index()) else {
        core.send_failed_n(count);
        return;
    };
    let mut parts: [&[u8]; gso::MAX_SEGMENTS] = [&[]; gso::MAX_SEGMENTS];
    for (p, &(slot, start, end)) in parts.iter_mut().zip(&run.parts[..count]) {
        *p = batch.payload(usize::from(slot), usize::from(start), usize::from(end));
    }
    let parts = &parts[..count];
    if count == 1 {
        if sock.send_to(parts[0], run.peer).is_err() {
            core.send_failed();
        }
        return;
    }
    match gso::send_segments(sock.as_raw_fd(), parts, run.segment as u16, run.peer) {
        Ok(()) => tally.record(count),
        Err(e) => {
            let failed = gso::send_each(sock.as_raw_fd(), parts.iter().copied(), run.peer, &e, gso);
            core.send_failed_n(failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_run_holds_one_relay_one_peer_one_size() {
        let (a, b) = (
            SocketAddr::from(([192, 0, 2, 1], 5000)),
            SocketAddr::from(([192, 0, 2, 1], 5001)),
        );
        let mut run = PeerRun::new();
        assert!(
            !run.joins(RelayId(1), a, 100),
            "an empty run is started, not joined"
        );
        run.push(RelayId(1), a, 0, 52, 152);
        assert!(run.joins(RelayId(1), a, 100));
        assert!(
            run.joins(RelayId(1), a, 60),
            "a shorter last datagram joins"
        );
        assert!(!run.joins(RelayId(2), a, 100), "other relay socket");
        assert!(!run.joins(RelayId(1), b, 100), "other peer");
        assert!(
            !run.joins(RelayId(1), a, 101),
            "longer than the segment size"
        );
        run.push(RelayId(1), a, 1, 52, 112);
        assert!(
            !run.joins(RelayId(1), a, 100),
            "closed by the shorter datagram"
        );
        assert_eq!((run.count, run.total, run.segment), (2, 160, 100));
        assert_eq!(run.parts[1], (1, 52, 112));
        // Emptied (as `send_peer_run` does), the next push starts a new run.
        run.count = 0;
        run.push(RelayId(2), b, 5, 52, 1052);
        assert_eq!(
            (run.relay, run.peer, run.segment, run.total),
            (RelayId(2), b, 1000, 1000)
        );
        assert!(run.joins(RelayId(2), b, 1000));
    }
}
