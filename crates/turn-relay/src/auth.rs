//! Long-term authentication with coturn's REST credentials, and stateless nonces (pure).
//!
//! The password of a REST username (`"<expiry>:<user>"`) is derived from `TURN_SECRET` by
//! `hermes_proto::turn_credentials::password_for`, and the long-term key is
//! `MD5(username ":" realm ":" password)` (RFC 5389 §15.4). Nothing is stored per client
//! before it authenticates: a nonce is `<time bucket, hex>` + a truncated HMAC of the bucket
//! and the client IP under a per-process key, so any nonce can be checked without a table
//! (no memory grows with unauthenticated Allocates).

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Length of a nonce bucket. A nonce is accepted in its bucket and the next one, so it lives
/// between `NONCE_BUCKET_SECS` and twice that; then the client gets 438 Stale Nonce and
/// retries with the fresh one (one extra round trip per 5–10 minutes).
pub const NONCE_BUCKET_SECS: u64 = 300;

/// Issues and checks stateless nonces.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// Result of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Well-formed and ours, but too old.
    Stale,
    /// Not a nonce we issued (for this client).
    Invalid,
}

const NONCE_LEN: usize = 16 + 16;

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn tag(&self, bucket: u64, ip: IpAddr) -> [u8; 8] {
        let mut mac =
            <Hmac<Sha1> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(&bucket.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let out = mac.finalize().into_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&out[..8]);
        tag
    }

    /// The nonce for a client at `now_secs` (32 ASCII hex characters).
    pub fn issue(&self, ip: IpAddr, now_secs: u64) -> String {
        let bucket = now_secs / NONCE_BUCKET_SECS;
        let mut s = String::with_capacity(NONCE_LEN);
        push_hex(&mut s, &bucket.to_be_bytes());
        push_hex(&mut s, &self.tag(bucket, ip));
        s
    }

    pub fn check(&self, nonce: &[u8], ip: IpAddr, now_secs: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let (Some(bucket), Some(tag)) =
            (parse_hex::<8>(&nonce[..16]), parse_hex::<8>(&nonce[16..]))
        else {
            return NonceCheck::Invalid;
        };
        let bucket = u64::from_be_bytes(bucket);
        use subtle_eq::ct_eq;
        if !ct_eq(&self.tag(bucket, ip), &tag) {
            return NonceCheck::Invalid;
        }
        let current = now_secs / NONCE_BUCKET_SECS;
        if bucket > current {
            NonceCheck::Invalid
        } else if current - bucket <= 1 {
            NonceCheck::Valid
        } else {
            NonceCheck::Stale
        }
    }
}

mod subtle_eq {
    /// Constant-time comparison of equal-length tags.
    pub fn ct_eq(a: &[u8; 8], b: &[u8; 8]) -> bool {
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(s[2 * i])? << 4 | nib(s[2 * i + 1])?;
    }
    Some(out)
}

/// The long-term key of a REST username: MD5(username:realm:password(secret, username)).
pub fn long_term_key(secret: &[u8], username: &str, realm: &str) -> [u8; 16] {
    let password = hermes_proto::turn_credentials::password_for(secret, username);
    let key = stun::integrity::MessageIntegrity::new_long_term_integrity(
        username.to_string(),
        realm.to_string(),
        password,
    );
    let mut out = [0u8; 16];
    if key.0.len() == 16 {
        out.copy_from_slice(&key.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_lifecycle() {
        let k = NonceKey::new([7; 32]);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t = 1_700_000_000;
        let n = k.issue(ip, t);
        assert_eq!(n.len(), 32);
        assert_eq!(k.check(n.as_bytes(), ip, t), NonceCheck::Valid);
        assert_eq!(
            k.check(n.as_bytes(), ip, t + NONCE_BUCKET_SECS),
            NonceCheck::Valid
        );
        assert_eq!(
            k.check(n.as_bytes(), ip, t + 3 * NONCE_BUCKET_SECS),
            NonceCheck::Stale
        );
        assert_eq!(k.check(n.as_bytes(), other, t), NonceCheck::Invalid);
        assert_eq!(
            NonceKey::new([8; 32]).check(n.as_bytes(), ip, t),
            NonceCheck::Invalid
        );
        // From the future, or garbage.
        assert_eq!(
            k.check(k.issue(ip, t + 10_000).as_bytes(), ip, t),
            NonceCheck::Invalid
        );
        assert_eq!(k.check(b"xyz", ip, t), NonceCheck::Invalid);
        assert_eq!(k.check(&[b'g'; 32], ip, t), NonceCheck::Invalid);
    }

    #[test]
    fn long_term_key_matches_coturn_rule() {
        // MD5("1700000600:alice:example.org:gthUwOpcRoLI0MMCziCEBOWYnpo="), computed with
        // `printf '%s' ... | md5sum`; the password comes from hermes-proto's own test vector.
        let key = long_term_key(b"north", "1700000600:alice", "example.org");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KEY_HEX);
    }

    const KEY_HEX: &str = "6357e9ab160416a5e26dd0bfa67bffea";
}
