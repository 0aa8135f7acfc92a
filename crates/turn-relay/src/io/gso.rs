//! UDP generic segmentation offload (Linux `UDP_SEGMENT`, 4.18+): several datagrams of one
//! size to one destination leave in a single `sendmsg`, and the kernel builds, routes and
//! filters them as one packet, splitting it only at the device (or at the receiving socket on
//! loopback). A WebRTC sender's packets come in bursts (a video frame is several packets of
//! the same size), so runs of consecutive datagrams from one client to one peer, or from one
//! peer to one client, are common inside a `recvmmsg` batch.
//!
//! The rule for a run ([`can_join`]) is the kernel's: every segment has the run's segment size
//! except possibly a shorter last one; at most [`MAX_SEGMENTS`] segments and [`MAX_BYTES`]
//! bytes. A send the kernel refuses is retried datagram by datagram, and a kernel or device
//! without support turns GSO off for the worker ([`is_unsupported`]).
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Segments per send: the kernel's `UDP_MAX_SEGMENTS` (64 before Linux 6.9; 128 since).
pub const MAX_SEGMENTS: usize = 64;
/// Payload bytes per send: under the 65 535-byte IP datagram limit with room for headers.
pub const MAX_BYTES: usize = 65_000;

/// Whether a datagram of `len` bytes may join a run (same destination) that holds `count`
/// segments of `seg` bytes, `total` bytes in all, `closed` once a shorter segment ended it.
pub fn can_join(seg: usize, count: usize, total: usize, closed: bool, len: usize) -> bool {
    !closed && len > 0 && len <= seg && count < MAX_SEGMENTS && total + len <= MAX_BYTES
}

/// Whether this kernel accepts `UDP_SEGMENT` on a UDP socket.
pub fn supported() -> bool {
    let Ok(s) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) else {
        return false;
    };
    let size: libc::c_int = 1200;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Errors that mean "no GSO here" (old kernel, device without checksum offload), after which
/// a worker stops trying; other errors (a segment larger than the route's MTU, a full socket
/// buffer) only fall back for the one send.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// GSO sends made and the datagrams they carried, counted on the worker and folded into the
/// shared metrics once per wake-up (no atomic per send).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sends: u64,
    pub datagrams: u64,
}

impl Tally {
    pub fn record(&mut self, datagrams: usize) {
        self.sends += 1;
        self.datagrams += datagrams as u64;
    }

    /// The counts so far, leaving zero.
    pub fn take(&mut self) -> Self {
        std::mem::take(self)
    }
}

/// After the kernel refused a GSO send with `refused`: turn GSO off (`enabled`) when it means
/// "no GSO here", then send the datagrams one by one. Returns how many could not be sent.
pub fn send_each<'a>(
    fd: RawFd,
    datagrams: impl Iterator<Item = &'a [u8]>,
    to: SocketAddr,
    refused: &io::Error,
    enabled: &mut bool,
) -> usize {
    if *enabled && is_unsupported(refused) {
        tracing::info!(error = %refused, "UDP GSO refused by the kernel: sending datagram by datagram");
        *enabled = false;
    }
    datagrams.filter(|d| send_one(fd, d, to).is_err()).count()
}

/// One `sendto` without blocking (also the io_uring batches' fallback, `io/uring.rs`).
pub(crate) fn send_one(fd: RawFd, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = crate::io::sockaddr::write_sockaddr(&mut addr, to);
    // SAFETY: `bytes` and `addr` are live for the call; the kernel only reads them.
    let r = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Room for one `UDP_SEGMENT` control message, aligned for `cmsghdr`.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct ControlBuf([u8; 32]);

impl ControlBuf {
    /// Write a `UDP_SEGMENT` message for `segment` bytes; returns the `msg_controllen`.
    pub fn write(&mut self, segment: u16) -> usize {
        self.0 = [0; 32];
        // SAFETY: CMSG_SPACE(2) is 24 bytes on every Linux ABI, within the 32-byte,
        // 8-aligned buffer; the header and its u16 payload are written inside it.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            debug_assert!(space <= self.0.len());
            let hdr = self.0.as_mut_ptr().cast::<libc::cmsghdr>();
            (*hdr).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            (*hdr).cmsg_level = libc::SOL_UDP;
            (*hdr).cmsg_type = libc::UDP_SEGMENT;
            std::ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<u16>(), segment);
            space
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }
}

/// Send `segments` (each `segment` bytes but the last, which may be shorter) to `to` from
/// `fd` as one GSO datagram. The caller falls back to one send per segment on error.
pub fn send_segments(
    fd: RawFd,
    segments: &[&[u8]],
    segment: u16,
    to: SocketAddr,
) -> io::Result<()> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_SEGMENTS];
    let n = segments.len().min(MAX_SEGMENTS);
    for (v, s) in iov.iter_mut().zip(segments) {
        v.iov_base = s.as_ptr().cast_mut().cast();
        v.iov_len = s.len();
    }
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let addr_len = crate::io::sockaddr::write_sockaddr(&mut addr, to);
    let mut control = ControlBuf::default();
    let control_len = control.write(segment);
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    msg.msg_control = control.as_mut_ptr();
    msg.msg_controllen = control_len as _;
    // SAFETY: every pointer in `msg` points at live locals or at the caller's slices, which
    // outlive the call; the kernel only reads them.
    let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    #[test]
    fn runs_follow_the_kernel_rule() {
        // Same size joins; a shorter one joins and closes; a longer one never joins.
        assert!(can_join(1200, 1, 1200, false, 1200));
        assert!(can_join(1200, 1, 1200, false, 300));
        assert!(
            !can_join(1200, 2, 1500, true, 300),
            "closed by a short segment"
        );
        assert!(!can_join(1200, 1, 1200, false, 1201));
        assert!(!can_join(1200, 1, 1200, false, 0));
        assert!(
            !can_join(100, MAX_SEGMENTS, 6400, false, 100),
            "segment cap"
        );
        assert!(!can_join(1400, 46, 64_400, false, 1400), "byte cap");
        assert!(can_join(1400, 45, 63_000, false, 1400));
    }

    #[test]
    fn one_send_arrives_as_separate_datagrams() {
        if !supported() {
            return; // kernel without UDP_SEGMENT: nothing to test
        }
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(tx) = std::net::UdpSocket::bind(host) else {
                continue; // no IPv6 on this host
            };
            let rx = std::net::UdpSocket::bind(host).unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let data: Vec<Vec<u8>> = (0..10u8)
                .map(|i| vec![i; if i == 9 { 77 } else { 500 }])
                .collect();
            let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            send_segments(tx.as_raw_fd(), &slices, 500, rx.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 2048];
            for (i, want) in data.iter().enumerate() {
                let (n, from) = rx.recv_from(&mut buf).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(&buf[..n], want.as_slice(), "{host}: datagram {i}");
            }
        }
    }
}
