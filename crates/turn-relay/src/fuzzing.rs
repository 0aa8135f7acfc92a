//! Entry points for the cargo-fuzz targets in `fuzz/` (and the in-tree tests below):
//! every parser that sees network bytes, driven with arbitrary input. None may panic.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::server::{Client, ConnId, CoreConfig, Millis, RelayId, RelayIp, Server, Via};
use crate::wire;

mod signed_session;

pub use signed_session::{Reached, signed_session};

/// The wire codec (classification, stream framing, the attribute walker, XOR addresses) and
/// the control-plane decoder built on the `stun` crate.
pub fn wire_codec(data: &[u8]) {
    let _ = wire::classify(data);
    let _ = wire::stream_frame_len(data);
    let txid = wire::transaction_id(data);
    for a in wire::attrs(data) {
        let _ = wire::decode_xor_addr(a.value, &txid);
    }
    if let Some(mut req) = crate::server::decode_request(data) {
        let _ = req.integrity_ok(b"0123456789abcdef");
    }
}

/// The whole core: arbitrary bytes from a UDP client, a stream client and a peer, and
/// arbitrary RFC 6062 connection reports.
pub fn server_input(data: &[u8]) {
    let relay = RelayIp {
        bind: [127, 0, 0, 1].into(),
        public: [127, 0, 0, 1].into(),
    };
    let mut cfg = CoreConfig::new("fuzz", b"secret", Some(relay));
    cfg.filter.allow_loopback = true;
    let mut s = Server::new(cfg, [1; 32], 1, Arc::new(Metrics::default()));
    let from = SocketAddr::from(([127, 0, 0, 1], 5000));
    let now = Millis(1_700_000_000_000);
    let _ = s.handle_client(Client::udp(0, from), data, now);
    let _ = s.handle_client(
        Client {
            via: Via::Stream(1),
            addr: from,
        },
        data,
        now,
    );
    let mut buf = vec![0u8; wire::BUF_LEN];
    let n = data.len().min(wire::MAX_PAYLOAD);
    buf[wire::HEADROOM..wire::HEADROOM + n].copy_from_slice(&data[..n]);
    let _ = s.handle_peer(RelayId(0), from, &mut buf, n, now);
    // RFC 6062 reports from the I/O layer, with ids the input picks.
    let mut id = [0u8; 4];
    id[..n.min(4)].copy_from_slice(&data[..n.min(4)]);
    let _ = s.peer_connected(ConnId(u32::from_be_bytes(id)), n.is_multiple_of(2), now);
    let _ = s.peer_accepted(RelayId(u32::from_be_bytes(id) % 4), from, now);
    while s.poll_command().is_some() {}
    s.handle_timeout(now.after_ms(1_000_000));
}

#[cfg(test)]
mod tests {
    /// The stateful target as a bounded property test: seeded random scripts (the same
    /// every run), each up to 256 operations.
    #[test]
    fn signed_sessions_keep_the_invariants() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut reached = super::Reached::default();
        for _ in 0..400 {
            let script: Vec<u8> = (0..768)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect();
            reached += super::signed_session(&script);
        }
        // The scripts get past authentication into every handler and the data path.
        let r = reached;
        eprintln!("{r:?}");
        for (what, n) in [
            ("Allocate", r.allocate),
            ("Refresh", r.refresh),
            ("CreatePermission", r.create_permission),
            ("ChannelBind", r.channel_bind),
            ("Connect", r.connect),
            ("ConnectionBind", r.connection_bind),
            ("Send relayed", r.send_relayed),
            ("ChannelData relayed", r.channel_data_relayed),
            ("peer data relayed", r.peer_data_relayed),
            ("tampered refused", r.tampered_refused),
            ("quota refused", r.quota_refused),
        ] {
            assert!(n >= 10, "{what} reached only {n} times: {r:?}");
        }
    }

    #[test]
    fn smoke() {
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            super::wire_codec(&data);
            super::server_input(&data);
        }
    }
}
