//! The zero-copy part of the STUN/TURN codec, for the data path and for checks over raw
//! bytes: classification and stream framing, a borrowing attribute walker (Send
//! indications, and the CONNECTION-ID peek that routes a ConnectionBind to the worker
//! holding its connection before any core decodes it), XOR address values, and the
//! in-place writers for ChannelData and Data indications.
//!
//! Control requests are decoded (once) and answered by the `stun`/`turn` crates (see
//! `server/request.rs`); MESSAGE-INTEGRITY and FINGERPRINT are checked there, so no message is
//! read by both codecs. Everything a relayed packet touches lives here and never allocates.
//! Every function is total over its input bytes: malformed input yields `None`/`Err`, never a
//! panic (see `fuzz/`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;

pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub const ATTR_DATA: u16 = 0x0013;
/// RFC 6062 §6.2.1.
pub const ATTR_CONNECTION_ID: u16 = 0x002A;

/// Method|class of a Send indication (0x0016) and Data indication (0x0017).
pub const SEND_INDICATION: u16 = 0x0016;
pub const DATA_INDICATION: u16 = 0x0017;

/// Bytes the I/O layer leaves free before a payload read from a relay socket, so that a
/// ChannelData header (4) or a Data indication header (20 + XOR-PEER-ADDRESS up to 24 + DATA
/// header 4 = 48) can be written in place in front of it.
pub const HEADROOM: usize = 48;

/// Largest UDP payload we relay (and the size of the receive buffers after the headroom).
pub const MAX_PAYLOAD: usize = 65_535;

/// Size of a receive buffer that can hold any datagram plus headroom and 4-byte padding.
pub const BUF_LEN: usize = HEADROOM + MAX_PAYLOAD + 4;

/// What the first bytes of a client packet are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ChannelData: channel number and payload length.
    ChannelData { channel: u16, len: usize },
    /// A STUN message: type and total length (header + attributes).
    Stun { typ: u16, len: usize },
}

/// Classify a packet. `None` for anything that is neither a STUN message nor ChannelData.
pub fn classify(b: &[u8]) -> Option<Kind> {
    if b.len() < 4 {
        return None;
    }
    let first = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    match b[0] >> 6 {
        0b00 => {
            if b.len() < HEADER_LEN
                || u32::from_be_bytes([b[4], b[5], b[6], b[7]]) != MAGIC_COOKIE
                || !len.is_multiple_of(4)
            {
                return None;
            }
            Some(Kind::Stun {
                typ: first,
                len: HEADER_LEN + len,
            })
        }
        0b01 => Some(Kind::ChannelData {
            channel: first,
            len,
        }),
        _ => None,
    }
}

/// Whether a STUN message type (first two header bytes) is of the request class: the
/// check on raw bytes that keeps responses and stray indications away from the codec.
pub const fn is_request(typ: u16) -> bool {
    typ & 0x0110 == 0
}

/// Length of the next frame in a stream (TCP/TLS) buffer, including ChannelData padding
/// (RFC 8656 §12.5: over streams ChannelData is padded to a multiple of 4).
/// `None` when the header is incomplete; `Some(Err(()))` when it is not a TURN frame.
pub fn stream_frame_len(b: &[u8]) -> Option<Result<usize, ()>> {
    if b.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    match b[0] >> 6 {
        0b00 => Some(Ok(HEADER_LEN + len)),
        0b01 => Some(Ok(4 + padded(len))),
        _ => Some(Err(())),
    }
}

/// `n` rounded up to a multiple of 4.
pub const fn padded(n: usize) -> usize {
    (n + 3) & !3
}

/// Transaction id of a STUN message (caller checked the header length).
pub fn transaction_id(msg: &[u8]) -> [u8; 12] {
    let mut t = [0u8; 12];
    if msg.len() >= HEADER_LEN {
        t.copy_from_slice(&msg[8..20]);
    }
    t
}

/// One attribute: type, value, and the offset of its header in the message.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    pub offset: usize,
}

/// Borrowing iterator over the attributes of a STUN message. Stops at the first malformed
/// attribute (truncated value).
pub struct Attrs<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
}

/// Walk the attributes of `msg` (which must start with a STUN header).
pub fn attrs(msg: &[u8]) -> Attrs<'_> {
    let end = if msg.len() >= HEADER_LEN {
        (HEADER_LEN + u16::from_be_bytes([msg[2], msg[3]]) as usize).min(msg.len())
    } else {
        0
    };
    Attrs {
        msg,
        pos: HEADER_LEN.min(end),
        end,
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        if self.pos + 4 > self.end {
            return None;
        }
        let b = &self.msg[self.pos..self.end];
        let typ = u16::from_be_bytes([b[0], b[1]]);
        let len = u16::from_be_bytes([b[2], b[3]]) as usize;
        let value = b.get(4..4 + len)?;
        let offset = self.pos;
        self.pos = (self.pos + 4 + padded(len)).min(self.end);
        Some(Attr { typ, value, offset })
    }
}

/// First attribute of type `typ`.
pub fn find_attr(msg: &[u8], typ: u16) -> Option<Attr<'_>> {
    attrs(msg).find(|a| a.typ == typ)
}

/// The CONNECTION-ID of an RFC 6062 message (a 4-byte attribute).
pub fn connection_id(msg: &[u8]) -> Option<u32> {
    let a = find_attr(msg, ATTR_CONNECTION_ID)?;
    Some(u32::from_be_bytes(<[u8; 4]>::try_from(a.value).ok()?))
}

/// Decode an XOR-*-ADDRESS value.
pub fn decode_xor_addr(value: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match value[1] {
        0x01 if value.len() == 8 => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        0x02 if value.len() == 20 => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                ip[i] = value[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Encode an XOR-*-ADDRESS value into `out` (at least 20 bytes); returns its length.
pub fn encode_xor_addr(out: &mut [u8], addr: SocketAddr, txid: &[u8; 12]) -> usize {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            let o = ip.octets();
            for i in 0..4 {
                out[4 + i] = o[i] ^ cookie[i];
            }
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let o = ip.octets();
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                out[4 + i] = o[i] ^ k;
            }
            20
        }
    }
}

/// Write a ChannelData header in front of a payload at `buf[HEADROOM..HEADROOM+len]`; with
/// `stream` the padding bytes after it are zeroed and counted. Returns the range to send.
pub fn write_channel_data(
    buf: &mut [u8],
    channel: u16,
    len: usize,
    stream: bool,
) -> std::ops::Range<usize> {
    let start = HEADROOM - 4;
    buf[start..start + 2].copy_from_slice(&channel.to_be_bytes());
    buf[start + 2..HEADROOM].copy_from_slice(&(len as u16).to_be_bytes());
    let mut end = HEADROOM + len;
    if stream {
        let p = padded(len);
        buf[end..HEADROOM + p].fill(0);
        end = HEADROOM + p;
    }
    start..end
}

/// Write a Data indication (XOR-PEER-ADDRESS, DATA) in front of a payload at
/// `buf[HEADROOM..HEADROOM+len]`, zero the DATA padding. Returns the range to send.
pub fn write_data_indication(
    buf: &mut [u8],
    peer: SocketAddr,
    len: usize,
    txid: &[u8; 12],
) -> std::ops::Range<usize> {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let start = HEADROOM - (HEADER_LEN + 4 + addr_len + 4);
    let p = padded(len);
    buf[HEADROOM + len..HEADROOM + p].fill(0);
    let body = 4 + addr_len + 4 + p;
    let h = &mut buf[start..];
    h[0..2].copy_from_slice(&DATA_INDICATION.to_be_bytes());
    h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(txid);
    h[20..22].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    encode_xor_addr(&mut h[24..48], peer, txid);
    let d = 24 + addr_len;
    h[d..d + 2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    start..HEADROOM + p
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Bytes from a spaced hex dump (the RFC 5769 vectors); also used by the request decoder's
    /// tests.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 5769 §2.2 and §2.3 sample responses (the requests are decoded in server/request.rs).
    const RESP4: &str = "01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 08
        00 01 a1 47 e1 12 a6 43 00 08 00 14 2b 91 f5 99 fd 9e 90 c3
        8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7 80 28 00 04 c0 7d 4c 96";
    // §2.3 IPv6 response.
    const RESP6: &str = "01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 14
        00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75
        bf e3 ed 41 80 28 00 04 c8 fb 0b 4c";
    #[test]
    fn rfc5769_responses_mapped_address() {
        for (v, want) in [
            (RESP4, "192.0.2.1:32853"),
            (RESP6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
        ] {
            let m = hex(v);
            let txid = transaction_id(&m);
            let a = find_attr(&m, 0x0020).unwrap();
            let addr = decode_xor_addr(a.value, &txid).unwrap();
            assert_eq!(addr.to_string(), want);
            let mut out = [0u8; 20];
            let n = encode_xor_addr(&mut out, addr, &txid);
            assert_eq!(&out[..n], a.value);
        }
    }

    #[test]
    fn channel_data_and_data_indication_in_place() {
        let mut buf = vec![0xAAu8; BUF_LEN];
        buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
        let r = write_channel_data(&mut buf, 0x4001, 5, true);
        assert_eq!(
            &buf[r.clone()],
            &[0x40, 0x01, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]
        );
        assert_eq!(stream_frame_len(&buf[r.clone()]), Some(Ok(12)));
        let r = write_channel_data(&mut buf, 0x4001, 5, false);
        assert_eq!(r.len(), 9);

        for peer in ["203.0.113.7:5000", "[2001:db8::1]:5000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut buf = vec![0xAAu8; BUF_LEN];
            buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
            let txid = [7u8; 12];
            let r = write_data_indication(&mut buf, peer, 5, &txid);
            let m = &buf[r];
            assert_eq!(
                classify(m),
                Some(Kind::Stun {
                    typ: DATA_INDICATION,
                    len: m.len()
                })
            );
            let p = find_attr(m, ATTR_XOR_PEER_ADDRESS).unwrap();
            assert_eq!(decode_xor_addr(p.value, &txid), Some(peer));
            assert_eq!(find_attr(m, ATTR_DATA).unwrap().value, b"hello");
            // The same bytes parse with the stun crate.
            let mut msg = stun::message::Message::new();
            msg.unmarshal_binary(m).unwrap();
            assert_eq!(msg.typ.value(), DATA_INDICATION);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 1u64;
        for len in 0..200 {
            let mut b = vec![0u8; len];
            for x in b.iter_mut() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                *x = (seed >> 33) as u8;
            }
            if len >= 8 {
                b[0] &= 0x3f;
                b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            }
            let _ = classify(&b);
            let _ = attrs(&b).count();
            let _ = stream_frame_len(&b);
        }
    }
}
