//! Which peer addresses a relay may talk to (pure, no I/O).
//!
//! Secure by default: every IANA special-purpose range (loopback, private, CGNAT, link-local,
//! benchmarking, multicast, reserved, unique-local…) is refused, including the IPv4 ranges
//! written in IPv6 form (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, 6to4
//! `2002:aabb:ccdd::/48`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`), so that a TURN client
//! cannot reach the operator's internal network through the relay. Operators override with
//! an allow list and the allow-loopback switch tests use (both win, as coturn's
//! `allowed-peer-ip` does), and refuse more with a deny list.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid CIDR or address range {0:?} (expected e.g. 10.0.0.0/8, 2001:db8::/32 or 10.0.0.1-10.0.0.9)"
)]
pub struct CidrError(pub String);

impl Cidr {
    pub const fn v4(a: [u8; 4], prefix: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_string());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

/// A rule from coturn's `denied-peer-ip`/`allowed-peer-ip`: a CIDR or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRule {
    Cidr(Cidr),
    Range(IpAddr, IpAddr),
}

impl IpRule {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match *self {
            IpRule::Cidr(c) => c.contains(ip),
            IpRule::Range(IpAddr::V4(a), IpAddr::V4(b)) => match ip {
                IpAddr::V4(ip) => (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)),
                IpAddr::V6(_) => false,
            },
            IpRule::Range(IpAddr::V6(a), IpAddr::V6(b)) => match ip {
                IpAddr::V6(ip) => (u128::from(a)..=u128::from(b)).contains(&u128::from(ip)),
                IpAddr::V4(_) => false,
            },
            IpRule::Range(..) => false,
        }
    }
}

impl FromStr for IpRule {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        if let Some((a, b)) = s.trim().split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| CidrError(s.into()))?;
            let b: IpAddr = b.trim().parse().map_err(|_| CidrError(s.into()))?;
            if a.is_ipv4() != b.is_ipv4() {
                return Err(CidrError(s.into()));
            }
            return Ok(IpRule::Range(a, b));
        }
        s.parse().map(IpRule::Cidr)
    }
}

/// IANA IPv4 special-purpose ranges refused by default.
const SPECIAL_V4: &[Cidr] = &[
    Cidr::v4([0, 0, 0, 0], 8),
    Cidr::v4([10, 0, 0, 0], 8),
    Cidr::v4([100, 64, 0, 0], 10),
    Cidr::v4([127, 0, 0, 0], 8),
    Cidr::v4([169, 254, 0, 0], 16),
    Cidr::v4([172, 16, 0, 0], 12),
    Cidr::v4([192, 0, 0, 0], 24),
    Cidr::v4([192, 0, 2, 0], 24),
    Cidr::v4([192, 88, 99, 0], 24),
    Cidr::v4([192, 168, 0, 0], 16),
    Cidr::v4([198, 18, 0, 0], 15),
    Cidr::v4([198, 51, 100, 0], 24),
    Cidr::v4([203, 0, 113, 0], 24),
    Cidr::v4([224, 0, 0, 0], 4),
    Cidr::v4([240, 0, 0, 0], 4),
    Cidr::v4([255, 255, 255, 255], 32),
];

/// Why a peer was refused (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// In the operator's deny list.
    Denied,
    /// In an IANA special-purpose range.
    Special,
}

/// The peer policy of a relay.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    /// Allow 127.0.0.0/8 and ::1 (and their mapped forms). For tests and local benchmarks.
    pub allow_loopback: bool,
    /// Allowed even when special-purpose or denied (e.g. an internal SFU network); as in
    /// coturn, an address both allowed and denied is allowed.
    pub allow: Vec<IpRule>,
    /// Refused unless allowed.
    pub deny: Vec<IpRule>,
}

impl PeerFilter {
    pub fn check(&self, ip: IpAddr) -> Verdict {
        // Judge an IPv4 address hidden in an IPv6 form as the IPv4 address it reaches.
        let canonical = embedded_v4(ip).map(IpAddr::V4).unwrap_or(ip);
        let hit = |rules: &[IpRule]| {
            rules
                .iter()
                .any(|r| r.contains(ip) || r.contains(canonical))
        };
        // coturn's order: an address both allowed and denied is allowed.
        if hit(&self.allow) || (self.allow_loopback && canonical.is_loopback()) {
            return Verdict::Allowed;
        }
        if hit(&self.deny) {
            return Verdict::Denied;
        }
        if is_special(ip) {
            Verdict::Special
        } else {
            Verdict::Allowed
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.check(ip) == Verdict::Allowed
    }
}

/// The IPv4 address reached through an IPv6 form: IPv4-mapped, IPv4-compatible, 6to4 or NAT64.
pub fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, but routable by some stacks). `::` and `::1`
    // are not IPv4 forms; they are handled as IPv6 specials.
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return Some(tail);
    }
    // 6to4 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return Some(tail);
    }
    None
}

/// Whether `ip` is in a special-purpose range (or reaches one through an IPv6 form).
pub fn is_special(ip: IpAddr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_special(IpAddr::V4(v4));
    }
    match ip {
        IpAddr::V4(v4) => SPECIAL_V4.iter().any(|c| c.contains(IpAddr::V4(v4))),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_unspecified()
                || v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 deprecated site-local
                || (s[0] & 0xff00) == 0xff00 // ff00::/8 multicast
                || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
                || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments (Teredo, ORCHID…)
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // 100::/64 discard-only
                || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20 documentation
                || (s[0] == 0x5f00) // 5f00::/16 SRv6 SIDs
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_special_range_by_default() {
        let f = PeerFilter::default();
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "2001:db8::1",
        ] {
            assert_ne!(f.check(ip(s)), Verdict::Allowed, "{s} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        let f = PeerFilter::default();
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
        ] {
            assert_eq!(f.check(ip(s)), Verdict::Allowed, "{s} must be allowed");
        }
    }

    #[test]
    fn overrides() {
        let f = PeerFilter {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(f.allows(ip("127.0.0.1")));
        assert!(f.allows(ip("::1")));
        assert!(f.allows(ip("::ffff:127.0.0.1")));
        assert!(!f.allows(ip("10.0.0.1")));
        assert!(!f.allows(ip("0.0.0.0")));

        let f = PeerFilter {
            allow_loopback: false,
            allow: vec!["10.1.0.0/16".parse().unwrap(), "8.8.8.5".parse().unwrap()],
            deny: vec![
                "10.0.0.0/8".parse().unwrap(),
                "8.8.8.0-8.8.8.9".parse().unwrap(),
            ],
        };
        assert!(f.allows(ip("10.1.9.9")));
        assert!(f.allows(ip("::ffff:10.1.9.9")));
        assert!(f.allows(ip("8.8.8.5")), "allowed and denied: allowed");
        assert_eq!(f.check(ip("10.2.2.3")), Verdict::Denied);
        assert_eq!(f.check(ip("::ffff:10.2.2.3")), Verdict::Denied);
        assert_eq!(f.check(ip("8.8.8.8")), Verdict::Denied);
        assert!(f.allows(ip("8.8.8.10")));
        assert!(!f.allows(ip("10.2.0.1")));
    }

    #[test]
    fn parses_rules() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<IpRule>().is_err());
        assert!("10.0.0.1-::1".parse::<IpRule>().is_err());
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!("1.2.3.4".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
    }
}
