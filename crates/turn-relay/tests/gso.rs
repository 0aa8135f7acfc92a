//! UDP GSO on the data path: bursts of same-sized datagrams through a channel, both ways,
//! arrive at the peer and at the client as the same separate datagrams, whole and in order,
//! with GSO on (and the metrics prove some left in GSO sends) and with `TURN_GSO=false`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

const CHANNEL: u16 = 0x4001;
const BURST: u32 = 40;
const BURSTS: u32 = 20;
const SIZE: usize = 1000;

/// Datagram `n` of a burst: its number, then a byte pattern that depends on it. The last of
/// each burst is shorter (a GSO run may end with one shorter segment).
fn datagram(n: u32) -> Vec<u8> {
    let len = if n % BURST == BURST - 1 { 333 } else { SIZE };
    let mut d: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + n) as u8).collect();
    d[..4].copy_from_slice(&n.to_be_bytes());
    d
}

fn relay_bursts(gso: bool) -> f64 {
    let relay = Relay::in_process(Opts {
        allow_loopback: true,
        env: vec![("TURN_GSO".into(), gso.to_string())],
        ..Default::default()
    });
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut c = TurnClient::new(relay.addr(), "burst");
    let relayed = c.allocate().unwrap();
    assert_eq!(c.channel_bind(CHANNEL, peer.local_addr().unwrap()), None);

    let mut buf = vec![0u8; 70_000];
    for b in 0..BURSTS {
        // Client → peer: ChannelData frames back to back.
        for n in b * BURST..(b + 1) * BURST {
            c.channel_data(CHANNEL, &datagram(n));
        }
        for n in b * BURST..(b + 1) * BURST {
            let (len, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(from, relayed);
            assert_eq!(&buf[..len], datagram(n).as_slice(), "to peer, datagram {n}");
        }
        // Peer → client: raw datagrams back to back, each a ChannelData frame at the client.
        for n in b * BURST..(b + 1) * BURST {
            peer.send_to(&datagram(n), relayed).unwrap();
        }
        for n in b * BURST..(b + 1) * BURST {
            let want = datagram(n);
            let (len, from) = c.sock.recv_from(&mut buf).unwrap();
            assert_eq!(from, relay.addr());
            assert_eq!(&buf[..2], CHANNEL.to_be_bytes().as_slice());
            let data_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            assert_eq!(data_len, want.len(), "to client, datagram {n}");
            assert!(len >= 4 + data_len && len <= 4 + data_len.next_multiple_of(4));
            assert_eq!(
                &buf[4..4 + data_len],
                want.as_slice(),
                "to client, datagram {n}"
            );
        }
    }
    assert_eq!(
        relay.metric("hermes_turn_gso_sends_total") > 0.0,
        relay.metric("hermes_turn_gso_datagrams_total") > 0.0
    );
    relay.metric("hermes_turn_gso_datagrams_total")
}

#[test]
fn bursts_arrive_whole_and_in_order_with_gso() {
    if !hermes_turn::io::gso::supported() {
        eprintln!("kernel without UDP_SEGMENT: GSO stays off, checked by the next test");
        return;
    }
    let sent_in_gso = relay_bursts(true);
    eprintln!(
        "datagrams sent in GSO sends: {sent_in_gso} of {}",
        2 * BURST * BURSTS
    );
    // 20 bursts of 40 back-to-back datagrams each way: some must have been gathered.
    assert!(sent_in_gso >= 2.0, "no datagram left in a GSO send");
}

#[test]
fn bursts_arrive_whole_and_in_order_without_gso() {
    assert_eq!(relay_bursts(false), 0.0, "TURN_GSO=false still used GSO");
}
