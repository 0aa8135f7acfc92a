//! Datagrams for peers, gathered while a worker serves its stream (TCP/TLS) clients, and
//! writes to its TCP clients, each handed to the kernel together: one `io_uring_enter` for the
//! lot instead of one `sendto` or `write` each ([`PeerSends`], [`StreamWrites`]).
//!
//! Why: each relayed frame from a stream client goes out of its own relay socket (one per
//! allocation), so `sendmmsg` cannot batch them. On loopback (and on any host whose peer
//! process shares the CPU) every `sendto` wakes the receiver onto the sender's CPU, and the
//! kernel switches to it when the system call returns: measured over TCP at 10k msg/s, 6 600
//! preemptions of the worker by the echo peer in 3 s, a context switch each way per packet and
//! the largest single item of the worker's CPU profile. Sends submitted in one system call
//! return to user space once, so the receiver is switched to once per batch and finds all of
//! its datagrams queued.
//!
//! Each send carries `MSG_DONTWAIT`, so the kernel completes it inline (sent, or failed with
//! `EAGAIN` like a full socket buffer, counted as a failed send) and never parks it: when
//! [`PeerSends::flush`] returns, every buffer is free again. Where io_uring is unavailable
//! (an old kernel, `kernel.io_uring_disabled`, a seccomp filter) each datagram is sent at once
//! with `sendto`, as before.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, types};

use crate::io::gso::send_one;
use crate::io::sockaddr::write_sockaddr;

/// Datagrams gathered before a flush is forced (the ring's size).
pub const SLOTS: usize = 64;
/// Bytes gathered before a flush is forced: 64 small frames, or a few long ones.
const ARENA: usize = 64 * 1024;

/// Peer-bound datagrams of one worker waiting for their common submission.
pub struct PeerSends {
    ring: Option<IoUring>,
    arena: Vec<u8>,
    /// (socket, start in `arena`, length) of each gathered datagram; its address is in
    /// `addrs` at the same index.
    sends: Vec<(RawFd, u32, u32)>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
}

impl PeerSends {
    /// With `uring` false, or when the kernel refuses a ring, every datagram is sent at once.
    pub fn new(uring: bool) -> Self {
        let ring = if uring {
            match IoUring::new(SLOTS as u32) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::info!(error = %e, "io_uring unavailable; peer sends one by one");
                    None
                }
            }
        } else {
            None
        };
        Self {
            ring,
            arena: Vec::with_capacity(ARENA),
            sends: Vec::with_capacity(SLOTS),
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { std::mem::zeroed() }; SLOTS],
            addr_lens: vec![0; SLOTS],
        }
    }

    /// Whether sends are gathered (io_uring) rather than made at once.
    pub fn batched(&self) -> bool {
        self.ring.is_some()
    }

    /// Send `bytes` from socket `fd` to `to`, now or at the next [`PeerSends::flush`]; the
    /// number of sends that failed (those of an earlier batch flushed to make room included).
    pub fn send(&mut self, fd: RawFd, to: SocketAddr, bytes: &[u8]) -> usize {
        if self.ring.is_none() {
            return usize::from(send_one(fd, bytes, to).is_err());
        }
        let mut failed = 0;
        if self.sends.len() == SLOTS || self.arena.len() + bytes.len() > ARENA {
            failed = self.flush();
        }
        if bytes.len() > ARENA || bytes.len() > u32::MAX as usize {
            return failed + usize::from(send_one(fd, bytes, to).is_err());
        }
        let i = self.sends.len();
        self.addr_lens[i] = write_sockaddr(&mut self.addrs[i], to);
        self.sends
            .push((fd, self.arena.len() as u32, bytes.len() as u32));
        self.arena.extend_from_slice(bytes);
        failed
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Submit what was gathered in one system call and wait for every send to complete (each
    /// completes inline: `MSG_DONTWAIT`); the number that failed.
    pub fn flush(&mut self) -> usize {
        let n = self.sends.len();
        if n == 0 {
            return 0;
        }
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        // The message headers the submissions point at: on this stack frame, which outlives
        // every send (all are complete before it returns).
        // SAFETY: all-zero is a valid iovec and msghdr.
        let mut iovs: [libc::iovec; SLOTS] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::msghdr; SLOTS] = unsafe { std::mem::zeroed() };
        let base = self.arena.as_mut_ptr();
        let mut failed = 0;
        {
            let mut sq = ring.submission();
            for (i, &(_, start, len)) in self.sends.iter().enumerate() {
                // SAFETY: start + len lies within the arena (pushed together in `send`).
                iovs[i].iov_base = unsafe { base.add(start as usize) }.cast();
                iovs[i].iov_len = len as usize;
                msgs[i].msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                msgs[i].msg_namelen = self.addr_lens[i];
                msgs[i].msg_iov = &mut iovs[i];
                msgs[i].msg_iovlen = 1;
            }
            for (i, &(fd, _, _)) in self.sends.iter().enumerate() {
                let sqe = opcode::SendMsg::new(types::Fd(fd), &msgs[i])
                    .flags(libc::MSG_DONTWAIT as u32)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the header, its iovec, address and bytes stay valid and unmoved
                // until the completions are reaped below. The ring has SLOTS entries and at
                // most SLOTS sends are gathered, so the queue has room.
                if unsafe { sq.push(&sqe) }.is_err() {
                    failed += 1;
                }
            }
        }
        let submitted = n - failed;
        let mut done = 0;
        while done < submitted {
            match ring.submit_and_wait(submitted - done) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The kernel took none of them (or stopped answering): count them lost.
                    // Nothing is in flight (inline completion), so the buffers may be reused.
                    tracing::warn!(error = %e, "io_uring submit failed; peer sends dropped");
                    failed += submitted - done;
                    break;
                }
            }
            for cqe in ring.completion() {
                done += 1;
                if cqe.result() < 0 {
                    failed += 1;
                }
            }
        }
        self.sends.clear();
        self.arena.clear();
        failed
    }
}

/// Writes to several stream (TCP) clients in one system call: what a worker's turn queued for
/// its clients leaves together, so each client process is woken (and switched to) once per
/// turn, not once per write. Without io_uring it does nothing ([`StreamWrites::batched`] is
/// false) and the caller writes each connection itself.
pub struct StreamWrites {
    ring: Option<IoUring>,
    /// Connection of each submitted write, by its `user_data`.
    conns: Vec<u64>,
}

impl StreamWrites {
    pub fn new(uring: bool) -> Self {
        Self {
            ring: if uring {
                IoUring::new(SLOTS as u32).ok()
            } else {
                None
            },
            conns: Vec::with_capacity(SLOTS),
        }
    }

    pub fn batched(&self) -> bool {
        self.ring.is_some()
    }

    /// Write each `(connection, socket, bytes)`, `SLOTS` per system call (`MSG_DONTWAIT`: each
    /// completes inline, so every buffer is free again when this returns), and append each
    /// outcome to `results`: the bytes the socket took, or the error (`WouldBlock` when full).
    pub fn write_all<'a>(
        &mut self,
        writes: impl Iterator<Item = (u64, RawFd, &'a [u8])>,
        results: &mut Vec<(u64, std::io::Result<usize>)>,
    ) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mut writes = writes.peekable();
        while writes.peek().is_some() {
            self.conns.clear();
            {
                let mut sq = ring.submission();
                for (conn, fd, bytes) in writes.by_ref().take(SLOTS) {
                    let len = bytes.len().min(u32::MAX as usize) as u32;
                    let sqe = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(self.conns.len() as u64);
                    // SAFETY: `bytes` is borrowed for 'a, past this call, and every write is
                    // complete before the call returns. At most SLOTS are pushed per
                    // submission into a ring of SLOTS entries.
                    if unsafe { sq.push(&sqe) }.is_ok() {
                        self.conns.push(conn);
                    } else {
                        results.push((conn, Err(std::io::ErrorKind::WouldBlock.into())));
                    }
                }
            }
            let submitted = self.conns.len();
            let mut done = 0;
            while done < submitted {
                match ring.submit_and_wait(submitted - done) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring submit failed; stream writes retried");
                        // Reported as a full socket: the connection stays queued and is
                        // written again when epoll reports room, or cut by the stall timer.
                        for &conn in &self.conns[done..] {
                            results.push((conn, Err(std::io::ErrorKind::WouldBlock.into())));
                        }
                        break;
                    }
                }
                for cqe in ring.completion() {
                    done += 1;
                    let conn = self.conns[cqe.user_data() as usize];
                    let r = cqe.result();
                    results.push((
                        conn,
                        if r >= 0 {
                            Ok(r as usize)
                        } else {
                            Err(std::io::Error::from_raw_os_error(-r))
                        },
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsRawFd;

    fn exchange(uring: bool) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut sends = PeerSends::new(uring);
        let mut expected = Vec::new();
        // More than the ring holds, from two sockets, of varied sizes.
        for i in 0..(SLOTS + 3) {
            let sock = if i % 2 == 0 { &a } else { &b };
            let bytes = vec![i as u8; 1 + i * 7];
            assert_eq!(sends.send(sock.as_raw_fd(), to, &bytes), 0);
            expected.push((sock.local_addr().unwrap(), bytes));
        }
        assert_eq!(sends.flush(), 0);
        assert!(sends.is_empty());
        let mut buf = [0u8; 2048];
        for (from, bytes) in expected {
            let (n, src) = rx.recv_from(&mut buf).expect("every datagram arrives");
            assert_eq!(
                (src, &buf[..n]),
                (from, &bytes[..]),
                "in order, from its socket"
            );
        }
        assert!(rx.recv_from(&mut buf).is_err(), "nothing more");
    }

    #[test]
    fn gathered_datagrams_leave_in_order_from_their_own_sockets() {
        let sends = PeerSends::new(true);
        if !sends.batched() {
            eprintln!("io_uring unavailable here: only the fallback is tested");
        }
        exchange(true);
    }

    #[test]
    fn without_io_uring_each_datagram_leaves_at_once() {
        exchange(false);
    }

    #[test]
    fn stream_writes_report_each_connections_outcome() {
        use std::io::Read;
        let mut w = StreamWrites::new(true);
        if !w.batched() {
            eprintln!("io_uring unavailable here: nothing to test");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..SLOTS + 2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let served: Vec<_> = (0..clients.len())
            .map(|_| listener.accept().unwrap().0)
            .collect();
        let payloads: Vec<Vec<u8>> = (0..served.len()).map(|i| vec![i as u8; 10 + i]).collect();
        let mut results = Vec::new();
        w.write_all(
            served
                .iter()
                .zip(&payloads)
                .enumerate()
                .map(|(i, (s, p))| (i as u64, s.as_raw_fd(), &p[..])),
            &mut results,
        );
        assert_eq!(results.len(), served.len());
        for (conn, r) in results {
            assert_eq!(r.unwrap(), payloads[conn as usize].len(), "conn {conn}");
        }
        // Each client got its own bytes (the accept order matches the connect order here:
        // one listener, connections completed in turn).
        let mut got: Vec<Vec<u8>> = Vec::new();
        for mut c in clients {
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        got.sort();
        let mut want = payloads.clone();
        want.sort();
        assert_eq!(got, want);
        // A closed peer: the write fails (or is taken and the next one fails), never panics.
        drop(served);
    }

    #[test]
    fn a_send_that_fails_is_counted() {
        // An IPv6 destination from an IPv4 socket: refused by the kernel.
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to: SocketAddr = "[::1]:9".parse().unwrap();
        for uring in [true, false] {
            let mut sends = PeerSends::new(uring);
            let failed = sends.send(a.as_raw_fd(), to, b"x") + sends.flush();
            assert_eq!(failed, 1, "uring {uring}");
        }
    }
}
