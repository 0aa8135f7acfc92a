//! A TCP or TLS client connection served on the data plane itself: its worker reads the
//! socket when epoll says so, splits the bytes into STUN messages and ChannelData frames in
//! place (many frames per read, none copied, RFC 8656 §12.5 padding), and queues what goes
//! back to the client in one buffer that leaves in one write per turn (with io_uring, the
//! writes of all of a worker's TCP clients in one submission: `io/uring.rs`; without, when the
//! worker has served the socket whose packets queued it). So a relayed packet costs no allocation, no channel and no
//! thread hop, as on the UDP path. TLS is rustls driven by hand (sans-IO), over the same
//! non-blocking socket: each frame is sealed into a TLS record of its own as it is queued
//! (some clients, coturn's `turnutils_uclient` among them, read one frame per record and
//! lose the rest of a record), and the records queued together leave in one `writev`.
//!
//! Bounds, so that a slow or hostile client cannot hurt the others: the input buffer grows
//! only to the frame being read (at most [`MAX_FRAME`]); the output queue holds at most
//! [`OUT_CAP`] bytes and further frames are dropped (as a full UDP buffer would); a frame left
//! half-sent, or output the client does not read, for longer than the stall timeout closes
//! the connection ([`StreamConn::check`]); so does a byte that starts neither kind of frame.
//! Over TLS, a record left half-sent counts as a half-sent frame: rustls keeps such bytes to
//! itself, so [`RecordEdge`] follows the record boundaries of the client's byte stream from
//! its very first byte (the accepting task counts the handshake's records).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::rustls::ServerConnection;

use crate::wire;

/// Input buffer of a connection to start with: room for dozens of small frames per read.
pub const IN_START: usize = 4096;
/// The longest frame: a STUN header plus 65 535 bytes (a ChannelData frame is shorter).
pub const MAX_FRAME: usize = wire::HEADER_LEN + u16::MAX as usize;
/// Bytes queued towards one client (beyond what its socket took) before frames are dropped.
pub const OUT_CAP: usize = 128 * 1024;
/// Queued bytes at which the queue is written at once instead of after the socket being served.
pub const FLUSH_AT: usize = 32 * 1024;
/// The most a TLS record adds to its plaintext (TLS 1.2 AES-GCM: 5 header, 8 explicit nonce,
/// 16 tag).
const TLS_RECORD_OVERHEAD: usize = 29;
/// Reads per wake-up before the worker serves its other sockets (each read fills up to the
/// input buffer, so this bounds one connection's share of a turn).
const READS: usize = 8;
/// Longest silence on a client connection. Clients refresh allocations every few minutes
/// and keep permissions alive every 5, so 10 minutes of nothing means the client is gone.
pub const IDLE_MS: u64 = 600_000;

/// A map keyed by connection number, looked up for every frame queued to a client: hashed by
/// one multiplication instead of SipHash (the numbers come from a counter, not from the
/// network, so there is nothing to flood it with).
pub type ConnMap<V> = HashMap<u64, V, BuildHasherDefault<ConnHasher>>;

/// Fibonacci hashing of a connection number: well-spread high bits (hashbrown's tags) and a
/// permutation of the low ones (its bucket index).
#[derive(Default)]
pub struct ConnHasher(u64);

impl Hasher for ConnHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closed it, or the socket failed.
    Gone,
    /// A byte that starts neither a STUN message nor a ChannelData frame, or a TLS error.
    Garbage,
    /// A frame left half-sent, or output left unread, past the stall timeout; or silence past
    /// [`IDLE_MS`].
    Stalled,
}

impl Close {
    /// The `reason` label of `hermes_turn_stream_connections_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::Gone => "gone",
            Close::Garbage => "garbage",
            Close::Stalled => "stalled",
        }
    }
}

/// Where a client's TLS byte stream stands against its record boundaries (a record is a
/// 5-byte header, whose last two bytes give the length of the body that follows; RFC 8446
/// §5.1, RFC 5246 §6.2). Fed every byte read from the socket, from the first one on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordEdge {
    header: [u8; 5],
    /// Header bytes seen of the record that is starting.
    have: u8,
    /// Body bytes still to come of the current record.
    body_left: u16,
}

impl RecordEdge {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = usize::from(self.body_left).min(bytes.len());
                self.body_left -= k as u16;
                bytes = &bytes[k..];
            } else {
                let have = usize::from(self.have);
                let k = (5 - have).min(bytes.len());
                self.header[have..have + k].copy_from_slice(&bytes[..k]);
                self.have += k as u8;
                bytes = &bytes[k..];
                if self.have == 5 {
                    self.have = 0;
                    self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]);
                }
            }
        }
    }

    /// A record has begun and not ended.
    pub fn inside(&self) -> bool {
        self.have > 0 || self.body_left > 0
    }
}

/// Bytes read but not yet framed. `buf` is initialised up to its length; `filled` of it hold
/// data.
struct InBuf {
    buf: Vec<u8>,
    filled: usize,
    /// Since when a frame has been incomplete.
    partial_since_ms: Option<u64>,
}

impl InBuf {
    fn new(early: &[u8]) -> Self {
        let mut buf = vec![0u8; IN_START.max(early.len())];
        buf[..early.len()].copy_from_slice(early);
        Self {
            buf,
            filled: early.len(),
            partial_since_ms: None,
        }
    }

    /// Room to read into: grows the buffer when a frame longer than it is pending.
    fn spare(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            // Given back while the connection was quiet (`StreamConn::trim`).
            self.buf.resize(IN_START, 0);
        } else if self.filled == self.buf.len() {
            // Full: at least 4 bytes, so the pending frame's length is known; `frames` left
            // no complete frame, so it is longer than the buffer (and at most MAX_FRAME).
            let want = match wire::stream_frame_len(&self.buf[..self.filled]) {
                Some(Ok(len)) => len.min(MAX_FRAME),
                _ => self.buf.len(),
            };
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.filled..]
    }

    /// Hand each complete frame to `on_frame` and keep the incomplete rest.
    fn frames(&mut self, now: u64, on_frame: &mut impl FnMut(&[u8])) -> Result<(), Close> {
        let mut start = 0;
        loop {
            match wire::stream_frame_len(&self.buf[start..self.filled]) {
                None => break,
                Some(Err(())) => return Err(Close::Garbage),
                Some(Ok(len)) if self.filled - start >= len => {
                    on_frame(&self.buf[start..start + len]);
                    start += len;
                }
                Some(Ok(_)) => break,
            }
        }
        if start > 0 {
            self.buf.copy_within(start..self.filled, 0);
            self.filled -= start;
            self.partial_since_ms = None;
        }
        if self.filled == 0 {
            self.partial_since_ms = None;
            if self.buf.len() > IN_START {
                // A long frame passed: give its room back.
                self.buf.truncate(IN_START);
                self.buf.shrink_to_fit();
            }
        } else if self.partial_since_ms.is_none() {
            self.partial_since_ms = Some(now);
        }
        Ok(())
    }
}

/// A socket reader that notes whether its last read returned less than asked for, and
/// follows the record boundaries of what it read.
struct ShortRead<'a> {
    sock: &'a mut TcpStream,
    edge: &'a mut RecordEdge,
    short: bool,
}

impl Read for ShortRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        self.edge.feed(&buf[..n]);
        Ok(n)
    }
}

/// One client connection of a worker.
pub struct StreamConn {
    pub peer: SocketAddr,
    sock: TcpStream,
    tls: Option<Box<ServerConnection>>,
    /// TLS only: the record boundaries of what the client sent.
    edge: RecordEdge,
    /// TLS only: since when a record has been incomplete.
    record_since_ms: Option<u64>,
    input: InBuf,
    /// Bytes for the client not yet written (TCP only); the first `sent` of them are gone.
    out: Vec<u8>,
    sent: usize,
    /// TLS only: bytes of records rustls holds for the client (an estimate: plaintext plus
    /// the largest record overhead), counted against [`OUT_CAP`].
    tls_pending: usize,
    /// In the worker's list of connections to flush after the socket being served.
    pub dirty: bool,
    last_rx_ms: u64,
    /// Since when output has been waiting without the socket taking any of it.
    blocked_since_ms: Option<u64>,
    /// This connection's share of `TURN_MAX_STREAM_CONNECTIONS`, held while it lives.
    _slot: Option<OwnedSemaphorePermit>,
}

impl StreamConn {
    /// A connection whose first bytes (`early`, already read by the accepting task) and TLS
    /// state (handshake done; `edge`: the record boundaries of all bytes read so far) come
    /// along.
    pub fn new(
        sock: TcpStream,
        peer: SocketAddr,
        tls: Option<(Box<ServerConnection>, RecordEdge)>,
        early: &[u8],
        slot: Option<OwnedSemaphorePermit>,
        now: u64,
    ) -> Self {
        let (mut tls, edge) = match tls {
            Some((t, edge)) => (Some(t), edge),
            None => (None, RecordEdge::default()),
        };
        if let Some(t) = tls.as_deref_mut() {
            // Bounded by `queue` instead, which never hands rustls part of a frame.
            t.set_buffer_limit(None);
        }
        Self {
            peer,
            sock,
            tls,
            record_since_ms: edge.inside().then_some(now),
            edge,
            input: InBuf::new(early),
            out: Vec::new(),
            sent: 0,
            tls_pending: 0,
            dirty: false,
            last_rx_ms: now,
            blocked_since_ms: None,
            _slot: slot,
        }
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Frame what is buffered, then read the socket (a bounded number of times), handing each
    /// complete frame to `on_frame`. `Ok(true)` when the socket was drained, `Ok(false)` when
    /// the read budget ran out first.
    pub fn read(&mut self, now: u64, mut on_frame: impl FnMut(&[u8])) -> Result<bool, Close> {
        self.input.frames(now, &mut on_frame)?;
        match self.tls.as_deref_mut() {
            None => Self::read_tcp(&mut self.sock, &mut self.input, now, &mut on_frame),
            Some(tls) => {
                let read = Self::read_tls(
                    &mut self.sock,
                    tls,
                    &mut self.edge,
                    &mut self.input,
                    now,
                    &mut on_frame,
                );
                if !self.edge.inside() {
                    self.record_since_ms = None;
                } else if self.record_since_ms.is_none() {
                    self.record_since_ms = Some(now);
                }
                read
            }
        }
        .inspect(|_| self.last_rx_ms = now)
    }

    fn read_tcp(
        sock: &mut TcpStream,
        input: &mut InBuf,
        now: u64,
        on_frame: &mut impl FnMut(&[u8]),
    ) -> Result<bool, Close> {
        for _ in 0..READS {
            let room = input.spare();
            let want = room.len();
            match sock.read(room) {
                Ok(0) => return Err(Close::Gone),
                Ok(n) => {
                    input.filled += n;
                    input.frames(now, on_frame)?;
                    // A short read emptied the socket's receive queue: more data raises a new
                    // edge, so the read that would only say EAGAIN is saved.
                    if n < want {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Close::Gone),
            }
        }
        Ok(false)
    }

    fn read_tls(
        sock: &mut TcpStream,
        tls: &mut ServerConnection,
        edge: &mut RecordEdge,
        input: &mut InBuf,
        now: u64,
        on_frame: &mut impl FnMut(&[u8]),
    ) -> Result<bool, Close> {
        for _ in 0..READS {
            // Plaintext rustls holds already (handed over with the connection) comes first.
            let mut eof = false;
            let mut drained = false;
            let mut rd = ShortRead {
                sock,
                edge,
                short: false,
            };
            match tls.read_tls(&mut rd) {
                Ok(0) => eof = true,
                // As for TCP: a short read emptied the receive queue.
                Ok(_) => drained = rd.short,
                Err(e) if e.kind() == ErrorKind::WouldBlock => drained = true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Close::Gone),
            }
            if tls.process_new_packets().is_err() {
                // Send the alert rustls queued, best effort.
                let _ = tls.write_tls(sock);
                return Err(Close::Garbage);
            }
            loop {
                match tls.reader().read(input.spare()) {
                    // close_notify.
                    Ok(0) => return Err(Close::Gone),
                    Ok(n) => {
                        input.filled += n;
                        input.frames(now, on_frame)?;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return Err(Close::Gone),
                }
            }
            if eof {
                return Err(Close::Gone);
            }
            if drained {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Bytes queued and not yet taken by the socket.
    fn pending(&self) -> usize {
        self.out.len() - self.sent + self.tls_pending
    }

    /// Queue one frame for the client; `false` when the queue is full (the frame is dropped).
    pub fn queue(&mut self, frame: &[u8]) -> bool {
        if self.pending() + frame.len() > OUT_CAP {
            return false;
        }
        match self.tls.as_deref_mut() {
            None => self.out.extend_from_slice(frame),
            Some(tls) => {
                // One record; without a buffer limit rustls takes all of it.
                if tls.writer().write_all(frame).is_err() {
                    return false;
                }
                self.tls_pending += frame.len() + TLS_RECORD_OVERHEAD;
            }
        }
        true
    }

    /// Whether the queue is long enough to be written before the turn ends.
    pub fn queue_is_long(&self) -> bool {
        self.pending() >= FLUSH_AT
    }

    /// Something is waiting to be written.
    pub fn wants_write(&self) -> bool {
        self.out.len() > self.sent || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// TCP only: the socket and the bytes waiting for it, for a write made elsewhere
    /// (`io/uring.rs`, several connections in one system call); its outcome goes to
    /// [`StreamConn::wrote`].
    pub fn tcp_pending(&self) -> Option<(std::os::fd::RawFd, &[u8])> {
        use std::os::fd::AsRawFd;
        (self.tls.is_none() && self.sent < self.out.len())
            .then(|| (self.sock.as_raw_fd(), &self.out[self.sent..]))
    }

    /// Take note of a write of [`StreamConn::tcp_pending`]'s bytes: `Ok(n)` bytes taken, or
    /// the error. A short write is continued here ([`StreamConn::flush`]).
    pub fn wrote(&mut self, result: std::io::Result<usize>, now: u64) -> Result<(), Close> {
        let before = self.sent;
        match result {
            Ok(0) => return Err(Close::Gone),
            Ok(n) => self.sent = (self.sent + n).min(self.out.len()),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(Close::Gone),
        }
        let progressed = self.sent > before;
        if progressed && self.sent < self.out.len() {
            // A short write: the socket may take more (else the next write says so).
            self.flush(now)?;
        }
        self.settle(now, progressed);
        Ok(())
    }

    /// Write what is queued: one `write` (TCP) or one `writev` of the queued records (TLS),
    /// more only when the socket takes less. Stops when the socket is full; epoll reports
    /// when it has room again.
    pub fn flush(&mut self, now: u64) -> Result<(), Close> {
        let before = self.sent;
        let mut progressed = false;
        match self.tls.as_deref_mut() {
            None => {
                while self.sent < self.out.len() {
                    match self.sock.write(&self.out[self.sent..]) {
                        Ok(0) => return Err(Close::Gone),
                        Ok(n) => self.sent += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return Err(Close::Gone),
                    }
                }
            }
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(0) => return Err(Close::Gone),
                        Ok(n) => {
                            progressed = true;
                            self.tls_pending = self.tls_pending.saturating_sub(n);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return Err(Close::Gone),
                    }
                }
                if !tls.wants_write() {
                    self.tls_pending = 0;
                }
            }
        }
        progressed |= self.sent > before;
        self.settle(now, progressed);
        Ok(())
    }

    /// After a write: release the sent bytes' room, and start (or stop) the clock of output
    /// the client does not take.
    fn settle(&mut self, now: u64, progressed: bool) {
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            if self.out.capacity() > FLUSH_AT {
                self.out.shrink_to(FLUSH_AT);
            }
        }
        if !self.wants_write() || progressed {
            self.blocked_since_ms = None;
        }
        if self.wants_write() {
            self.blocked_since_ms.get_or_insert(now);
        }
    }

    /// Close a connection that has stalled: a frame (or TLS record) half-sent, or output not
    /// taken, for `stall_ms`; or nothing received for [`IDLE_MS`].
    pub fn check(&self, now: u64, stall_ms: u64) -> Result<(), Close> {
        let over = |since: Option<u64>, limit: u64| since.is_some_and(|s| now >= s + limit);
        if over(self.input.partial_since_ms, stall_ms)
            || over(self.record_since_ms, stall_ms)
            || over(self.blocked_since_ms, stall_ms)
            || over(Some(self.last_rx_ms), IDLE_MS)
        {
            return Err(Close::Stalled);
        }
        Ok(())
    }

    /// Give the buffers of a connection that has been quiet since `quiet_since` back to the
    /// allocator (a relay with thousands of idle clients holds no buffers for them); the next
    /// read takes one again. At most one allocation per quiet spell, never one per packet.
    pub fn trim(&mut self, quiet_since: u64) {
        if self.last_rx_ms < quiet_since && self.input.filled == 0 && !self.wants_write() {
            self.input.buf = Vec::new();
            self.out = Vec::new();
            self.sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = channel.to_be_bytes().to_vec();
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload);
        f.resize(wire::padded(f.len()), 0);
        f
    }

    fn collect(input: &mut InBuf, now: u64) -> (Result<(), Close>, Vec<Vec<u8>>) {
        let mut got = Vec::new();
        let r = input.frames(now, &mut |f: &[u8]| got.push(f.to_vec()));
        (r, got)
    }

    #[test]
    fn many_frames_in_one_read_are_split_in_place_and_a_partial_one_waits() {
        let a = channel_data(0x4000, &[1; 5]);
        let b = channel_data(0x4001, &[2; 100]);
        let mut bytes = [a.clone(), b.clone(), a.clone()].concat();
        bytes.extend_from_slice(&b[..10]);
        let mut input = InBuf::new(&bytes);
        let (r, got) = collect(&mut input, 7);
        assert_eq!(r, Ok(()));
        assert_eq!(got, vec![a.clone(), b.clone(), a]);
        assert_eq!(input.filled, 10);
        assert_eq!(input.partial_since_ms, Some(7));
        // The rest arrives: the frame completes and the stall clock stops.
        let rest = &b[10..];
        input.spare()[..rest.len()].copy_from_slice(rest);
        input.filled += rest.len();
        let (r, got) = collect(&mut input, 9);
        assert_eq!((r, got), (Ok(()), vec![b]));
        assert_eq!((input.filled, input.partial_since_ms), (0, None));
    }

    #[test]
    fn the_buffer_grows_to_a_long_frame_only_and_shrinks_after_it() {
        let long = channel_data(0x4000, &[3; 10_000]);
        let mut input = InBuf::new(&long[..IN_START]);
        assert_eq!(collect(&mut input, 1).1.len(), 0);
        let room = input.spare().len();
        assert_eq!(room, long.len() - IN_START, "grown to exactly the frame");
        input.spare().copy_from_slice(&long[IN_START..]);
        input.filled = long.len();
        assert_eq!(collect(&mut input, 2).1, vec![long]);
        assert_eq!(input.buf.len(), IN_START);
    }

    #[test]
    fn a_byte_that_starts_no_frame_is_garbage() {
        let mut input = InBuf::new(&[0xff; 64]);
        assert_eq!(collect(&mut input, 0).0, Err(Close::Garbage));
        // Garbage after a good frame: the good one is served first.
        let mut bytes = channel_data(0x4000, &[1; 4]);
        bytes.extend_from_slice(&[0x80; 8]);
        let mut input = InBuf::new(&bytes);
        let (r, got) = collect(&mut input, 0);
        assert_eq!((r, got.len()), (Err(Close::Garbage), 1));
    }

    #[test]
    fn record_edges_are_followed_across_reads_of_any_size() {
        let record = |len: u16| {
            let mut r = vec![0x17, 0x03, 0x03];
            r.extend_from_slice(&len.to_be_bytes());
            r.resize(5 + usize::from(len), 0xee);
            r
        };
        let stream = [record(300), record(0), record(16_401), record(5)].concat();
        for chunk in [1, 2, 3, 4, 5, 7, 64, 4096, stream.len()] {
            let mut edge = RecordEdge::default();
            let mut fed = 0;
            for part in stream.chunks(chunk) {
                edge.feed(part);
                fed += part.len();
                let at_edge = [0, 305, 310, 16_716, 16_726].contains(&fed);
                assert_eq!(edge.inside(), !at_edge, "chunk {chunk}, after {fed} bytes");
            }
            assert!(!edge.inside());
        }
        // A header alone, or part of one, is a record begun.
        let mut edge = RecordEdge::default();
        edge.feed(&[0x17, 0x03]);
        assert!(edge.inside());
        edge.feed(&[0x03, 0x00, 0x00]);
        assert!(!edge.inside(), "an empty record ends with its header");
    }

    #[test]
    fn connection_numbers_spread_over_buckets_and_tags() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<ConnHasher>::default();
        let hashes: Vec<u64> = (1..=1024u64).map(|n| b.hash_one(n)).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(low.len(), 1024, "consecutive numbers take distinct buckets");
        assert!(tags.len() > 100, "the top 7 bits vary: {}", tags.len());
        let mut m: ConnMap<u32> = ConnMap::default();
        m.insert(7, 1);
        assert_eq!(m.get(&7), Some(&1));
    }

    #[test]
    fn every_close_reason_is_a_metric_label() {
        for why in [Close::Gone, Close::Garbage, Close::Stalled] {
            assert!(crate::metrics::STREAM_CLOSE_REASONS.contains(&why.as_str()));
        }
    }

    #[test]
    fn a_trimmed_buffer_is_taken_again_for_the_next_read() {
        let mut input = InBuf::new(&[]);
        input.buf = Vec::new();
        assert_eq!(input.spare().len(), IN_START);
        let frame = channel_data(0x4000, &[9; 8]);
        input.spare()[..frame.len()].copy_from_slice(&frame);
        input.filled = frame.len();
        assert_eq!(collect(&mut input, 0).1, vec![frame]);
    }

    #[test]
    fn a_buffer_never_grows_past_the_longest_frame() {
        // A STUN header claiming the longest body.
        let mut header = vec![0u8; 20];
        header[2..4].copy_from_slice(&u16::MAX.to_be_bytes());
        let mut input = InBuf::new(&header);
        let _ = collect(&mut input, 0);
        while input.filled < MAX_FRAME {
            let n = input.spare().len();
            assert!(n > 0);
            input.filled += n;
        }
        assert_eq!(input.buf.len(), MAX_FRAME);
        assert_eq!(collect(&mut input, 0).1.len(), 1);
    }
}
