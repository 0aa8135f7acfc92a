//! Which IP a request counts against: the socket peer, or — only when that peer is a trusted
//! proxy (Caddy) — the right-most untrusted address of `X-Forwarded-For`.
//!
//! Pure functions, no I/O. Walking X-Forwarded-For from the right and skipping trusted hops
//! means a client cannot choose its own rate-limit key by sending a forged header: the
//! left-most entries are whatever the client wrote, the right-most ones were appended by
//! proxies we trust.

use std::net::IpAddr;

/// An IP network (`10.0.0.0/8`, `::1/128`; a bare address means a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a CIDR like 10.0.0.0/8 or ::1/128")]
pub struct CidrError(pub String);

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.chars().take(64).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The client address of a request that arrived from `peer` with the given
/// `X-Forwarded-For` header values (in order of appearance).
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    proxies: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut last_trusted = peer;
    // Bound the walk: a header longer than this is hostile or broken; we stop and use the
    // last trusted hop rather than spend time on it.
    const MAX_HOPS: usize = 32;
    let hops = forwarded_for
        .rev()
        .flat_map(|v| v.rsplit(','))
        .take(MAX_HOPS);
    for hop in hops {
        let hop = hop.trim();
        let Some(ip) = parse_hop(hop) else {
            // Garbage in the header: the nearest address we can vouch for is the last proxy.
            return last_trusted;
        };
        if !trusted(ip, proxies) {
            return ip;
        }
        last_trusted = ip;
    }
    last_trusted
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // Tolerate `[v6]:port` and `v4:port`, which some proxies write.
    let host = hop
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .or_else(|| hop.rsplit_once(':').map(|(h, _)| h))?;
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn proxies() -> Vec<Cidr> {
        ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]
            .iter()
            .map(|c| Cidr::parse(c).expect("cidr"))
            .collect()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("any")
                .contains(ip("8.8.8.8"))
        );
        assert!(
            Cidr::parse("::/0")
                .expect("any6")
                .contains(ip("2001:db8::1"))
        );
        assert!(
            Cidr::parse("192.0.2.7")
                .expect("host")
                .contains(ip("192.0.2.7"))
        );
        assert!(
            Cidr::parse("127.0.0.1/32")
                .expect("lo")
                .contains(ip("::ffff:127.0.0.1"))
        );
        assert!(
            !Cidr::parse("::1/128")
                .expect("lo6")
                .contains(ip("127.0.0.1"))
        );
        for bad in ["", "10.0.0.0/33", "::1/129", "nope/8", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn untrusted_peer_ignores_the_header() {
        let got = client_ip(ip("203.0.113.9"), ["198.51.100.1"].into_iter(), &proxies());
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_hop() {
        let p = proxies();
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["198.51.100.1"].into_iter(), &p),
            ip("198.51.100.1")
        );
        // The client forged the left-most entry; Caddy appended the real one.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                ["1.2.3.4, 198.51.100.7, 10.0.0.5"].into_iter(),
                &p
            ),
            ip("198.51.100.7")
        );
        // Several header lines count as one list, in order.
        assert_eq!(
            client_ip(ip("::1"), ["1.2.3.4", "198.51.100.8"].into_iter(), &p),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn trusted_peer_without_usable_header() {
        let p = proxies();
        assert_eq!(
            client_ip(ip("127.0.0.1"), std::iter::empty(), &p),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["10.0.0.9"].into_iter(), &p),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["1.2.3.4, garbage"].into_iter(), &p),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["[2001:db8::5]:443"].into_iter(), &p),
            ip("2001:db8::5")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), ["198.51.100.3:5000"].into_iter(), &p),
            ip("198.51.100.3")
        );
    }
}
