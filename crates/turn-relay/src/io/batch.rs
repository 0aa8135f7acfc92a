//! Batched UDP receive with `recvmmsg(2)`: one system call fetches every datagram queued on a
//! socket (up to [`BATCH`]), and because a short batch proves the queue was empty, the
//! edge-triggered loop needs no extra `EAGAIN` read to know it is drained.
//!
//! Each slot has [`wire::HEADROOM`] bytes free before the datagram (for in-place
//! ChannelData/Data-indication headers) and room for 4-byte padding after it. Datagrams larger
//! than [`MAX_DATAGRAM`] are flagged truncated and dropped by the caller (WebRTC keeps packets
//! under the path MTU; 9000 covers jumbo frames).
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::io::gso;
use crate::io::sockaddr::{sockaddr, write_sockaddr};
use crate::wire;

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Largest datagram relayed.
pub const MAX_DATAGRAM: usize = 9000;
/// Bytes per slot: headroom + datagram + padding.
pub const SLOT: usize = wire::HEADROOM + MAX_DATAGRAM + 4;

pub struct RecvBatch {
    slots: Vec<u8>,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iov`/`hdrs` point into this struct's own heap buffers,
// which are never shared; moving the struct to another thread moves their only user.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        let mut b = Self {
            slots: vec![0u8; BATCH * SLOT],
            // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs for which
            // all-zero bytes are a valid (empty) value.
            iov: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        };
        // The Vecs above never grow again, so these pointers stay valid for `b`'s lifetime.
        for i in 0..BATCH {
            b.iov[i].iov_base = b.slots[i * SLOT + wire::HEADROOM..].as_mut_ptr().cast();
            b.iov[i].iov_len = MAX_DATAGRAM;
            b.hdrs[i].msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iov[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    /// Receive up to [`BATCH`] datagrams without blocking. `Ok(0)` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in &mut self.hdrs {
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: `hdrs` holds BATCH initialised mmsghdr entries whose name/iov pointers point
        // into `addrs`/`slots` (sized to match, see `new`); the kernel writes at most
        // `iov_len` bytes into each slot and `msg_namelen` bytes into each address.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }

    /// Bytes `start..end` of slot `i` (offsets include the headroom).
    pub fn payload(&self, i: usize, start: usize, end: usize) -> &[u8] {
        &self.slots[i * SLOT..(i + 1) * SLOT][start..end]
    }

    /// Datagram `i` of the last batch: its slot (payload at `HEADROOM..HEADROOM+len`), length,
    /// sender, and whether it was truncated.
    pub fn get(&mut self, i: usize) -> (&mut [u8], usize, Option<SocketAddr>, bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(MAX_DATAGRAM);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let addr = sockaddr(&self.addrs[i], h.msg_hdr.msg_namelen);
        (
            &mut self.slots[i * SLOT..(i + 1) * SLOT],
            len,
            addr,
            truncated,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn receives_a_batch_with_senders() {
        for (rx, tx) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let Ok(rx) = std::net::UdpSocket::bind(rx) else {
                continue; // no IPv6 on this host
            };
            rx.set_nonblocking(true).unwrap();
            let tx = std::net::UdpSocket::bind(tx).unwrap();
            let mut b = RecvBatch::new();
            assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 0);
            for i in 0..40u8 {
                tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
            }
            tx.send_to(&vec![1u8; MAX_DATAGRAM + 100], rx.local_addr().unwrap())
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), BATCH);
            let (slot, len, from, trunc) = b.get(3);
            assert_eq!(
                (len, from, trunc),
                (10, Some(tx.local_addr().unwrap()), false)
            );
            assert_eq!(&slot[wire::HEADROOM..wire::HEADROOM + 10], &[3u8; 10]);
            assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 9);
            assert!(b.get(8).3, "oversized datagram flagged truncated");
            assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 0);
        }
    }
}

/// Batched UDP send with `sendmmsg(2)` towards many destinations from one socket: the data
/// plane queues every datagram for UDP clients during one wake-up (copying it, ~100 ns, far
/// cheaper than a system call) and sends them with one call. With GSO on, a datagram for the
/// same destination as the one queued just before it (and of a size that fits the run, see
/// [`gso::can_join`]) is appended to that entry instead, and the entry leaves as one GSO send.
pub struct SendBatch {
    /// Datagrams back to back; an entry's segments are contiguous.
    buf: Vec<u8>,
    used: usize,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    control: Vec<gso::ControlBuf>,
    runs: Vec<Run>,
    n: usize,
    gso: bool,
    /// GSO sends made since the last [`SendBatch::take_gso_tally`].
    tally: gso::Tally,
}

/// One queued entry: a datagram, or a GSO run of them, to one destination.
#[derive(Clone, Copy)]
struct Run {
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    closed: bool,
}

const EMPTY_RUN: Run = Run {
    to: None,
    segment: 0,
    count: 0,
    closed: false,
};

// SAFETY: as for RecvBatch, the raw pointers point into this struct's own heap buffers.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new(false)
    }
}

impl SendBatch {
    /// `gso`: coalesce runs to one destination (when [`gso::supported`]).
    pub fn new(gso: bool) -> Self {
        let mut b = Self {
            buf: vec![0u8; BATCH * SLOT],
            used: 0,
            // SAFETY: plain C structs, all-zero is a valid value.
            iov: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            control: vec![gso::ControlBuf::default(); BATCH],
            runs: vec![EMPTY_RUN; BATCH],
            n: 0,
            gso,
            tally: gso::Tally::default(),
        };
        // The Vecs above never grow again, so these pointers stay valid for `b`'s lifetime.
        for i in 0..BATCH {
            b.hdrs[i].msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iov[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Queue a datagram; `true` when the batch is full and must be flushed.
    pub fn push(&mut self, data: &[u8], to: SocketAddr) -> bool {
        let len = data.len().min(SLOT);
        let start = self.used;
        self.buf[start..start + len].copy_from_slice(&data[..len]);
        self.used += len;
        let joined = self.gso
            && self.n > 0
            && self.runs[self.n - 1].to == Some(to)
            && self.runs[self.n - 1].joins(self.iov[self.n - 1].iov_len, len);
        if joined {
            // Contiguous with the entry's bytes: the last entry ends where `used` was.
            let i = self.n - 1;
            self.iov[i].iov_len += len;
            let run = &mut self.runs[i];
            run.count += 1;
            run.closed = len < run.segment;
        } else {
            let i = self.n;
            self.iov[i].iov_base = self.buf[start..].as_mut_ptr().cast();
            self.iov[i].iov_len = len;
            self.hdrs[i].msg_hdr.msg_namelen = write_sockaddr(&mut self.addrs[i], to);
            self.runs[i] = Run {
                to: Some(to),
                segment: len,
                count: 1,
                closed: false,
            };
            self.n += 1;
        }
        self.n == BATCH || self.buf.len() - self.used < SLOT
    }

    /// Send everything queued on `fd`; returns how many datagrams could not be sent.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        for i in 0..self.n {
            let h = &mut self.hdrs[i].msg_hdr;
            if self.runs[i].count > 1 {
                let segment = self.runs[i].segment as u16;
                h.msg_controllen = self.control[i].write(segment) as _;
                h.msg_control = self.control[i].as_mut_ptr();
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        let mut failed = 0;
        let mut sent = 0;
        while sent < self.n {
            // SAFETY: entries sent..n are initialised (push), their pointers point into
            // this struct's buffers, and the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (self.n - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                // The head entry failed: EAGAIN (socket buffer full) or a per-destination
                // error, skipped as a failed sendto would be; a refused GSO run is sent again
                // datagram by datagram.
                let e = io::Error::last_os_error();
                failed += self.resend_run(fd, sent, &e);
                sent += 1;
                continue;
            }
            for run in &self.runs[sent..sent + r as usize] {
                if run.count > 1 {
                    self.tally.record(run.count);
                }
            }
            sent += r as usize;
        }
        self.n = 0;
        self.used = 0;
        failed
    }

    /// Entry `i` was refused: send its datagrams one by one (if it was a GSO run); returns how
    /// many could not be sent.
    fn resend_run(&mut self, fd: RawFd, i: usize, e: &io::Error) -> usize {
        let run = self.runs[i];
        let Some(to) = run.to.filter(|_| run.count > 1) else {
            return run.count;
        };
        let start = self.iov[i].iov_base as usize - self.buf.as_ptr() as usize;
        let bytes = &self.buf[start..start + self.iov[i].iov_len];
        gso::send_each(fd, bytes.chunks(run.segment), to, e, &mut self.gso)
    }

    /// GSO sends and the datagrams they carried since the last call.
    pub fn take_gso_tally(&mut self) -> gso::Tally {
        self.tally.take()
    }
}

impl Run {
    fn joins(&self, total: usize, len: usize) -> bool {
        gso::can_join(self.segment, self.count, total, self.closed, len)
    }
}

#[cfg(test)]
mod send_tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn sends_a_batch_to_several_destinations() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut b = SendBatch::new(false);
        assert!(b.is_empty());
        for i in 0..40usize {
            if b.push(&[i as u8; 5], rx[i % 3].local_addr().unwrap()) {
                assert_eq!(b.flush(tx.as_raw_fd()), 0);
            }
        }
        assert_eq!(b.flush(tx.as_raw_fd()), 0);
        let mut buf = [0u8; 16];
        for (k, r) in rx.iter().enumerate() {
            r.set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            let mut got = 0;
            while let Ok((n, from)) = r.recv_from(&mut buf) {
                assert_eq!(n, 5);
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(buf[0] as usize % 3, k);
                got += 1;
                if got == 40 / 3 + usize::from(k < 40 % 3) {
                    break;
                }
            }
            assert_eq!(got, 40 / 3 + usize::from(k < 40 % 3));
        }
    }

    #[test]
    fn runs_to_one_destination_leave_as_gso_sends_and_arrive_separately() {
        let gso = gso::supported();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b) = (
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let mut batch = SendBatch::new(gso);
        // To a: 5 × 300 B + one 120 B (closes the run) + 300 B (a new entry); to b: 2 × 300 B,
        // then a again: 3 × 40 B.
        let mut plan: Vec<(&std::net::UdpSocket, Vec<u8>)> = Vec::new();
        for i in 0..5u8 {
            plan.push((&a, vec![i; 300]));
        }
        plan.push((&a, vec![5; 120]));
        plan.push((&a, vec![6; 300]));
        plan.push((&b, vec![7; 300]));
        plan.push((&b, vec![8; 300]));
        for i in 9..12u8 {
            plan.push((&a, vec![i; 40]));
        }
        for (to, d) in &plan {
            assert!(!batch.push(d, to.local_addr().unwrap()));
        }
        assert_eq!(batch.flush(tx.as_raw_fd()), 0);
        let tally = batch.take_gso_tally();
        if gso {
            // Runs: a×6 (closed by the short one), a×1, b×2, a×3.
            assert_eq!((tally.sends, tally.datagrams), (3, 11));
        } else {
            assert_eq!(tally, gso::Tally::default());
        }
        assert!(batch.is_empty());
        let mut buf = [0u8; 2048];
        for r in [&a, &b] {
            r.set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
        }
        for (to, want) in &plan {
            let (n, from) = to.recv_from(&mut buf).unwrap();
            assert_eq!(from, tx.local_addr().unwrap());
            assert_eq!(&buf[..n], want.as_slice());
        }
    }

    #[test]
    fn a_failed_flush_counts_every_datagram_of_a_run() {
        // A socket that cannot send (closed descriptor): each datagram is counted once as
        // failed, runs included, and the batch is empty and reusable afterwards.
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let mut batch = SendBatch::new(gso::supported());
        for len in [200, 200, 200, 50, 10] {
            batch.push(&vec![1u8; len], to);
        }
        assert_eq!(batch.flush(-1), 5);
        assert!(batch.is_empty());
        assert_eq!(batch.take_gso_tally(), gso::Tally::default());
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        batch.push(b"after", rx.local_addr().unwrap());
        assert_eq!(batch.flush(tx.as_raw_fd()), 0);
        let mut buf = [0u8; 16];
        rx.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
    }
}
