//! TURN REST credentials in coturn's `use-auth-secret` format.
//!
//! username = `"<unix-expiry>:<user>"`, password = `base64(HMAC-SHA1(TURN_SECRET, username))`.
//! The API mints them; hermes-turn (and a real coturn with the same `static-auth-secret`)
//! verifies them. Comparison is constant-time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::error::ProtoError;

/// Lifetime of minted TURN credentials (the spec: 10 minutes).
pub const TURN_CREDENTIALS_TTL_SECS: u64 = 10 * 60;

/// A username/password pair for TURN long-term authentication.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    pub username: String,
    /// Named `credential` as in `RTCIceServer`.
    #[serde(rename = "credential")]
    pub password: String,
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl TurnCredentials {
    /// Mint credentials for `user` valid until `now + ttl_secs`.
    pub fn mint(secret: &[u8], user: &str, now: u64, ttl_secs: u64) -> Self {
        let username = format!("{}:{user}", now.saturating_add(ttl_secs));
        let password = password_for(secret, &username);
        Self { username, password }
    }
}

/// The password coturn derives for a REST username: base64(HMAC-SHA1(secret, username)).
/// The TURN server needs it to compute the long-term key `MD5(username:realm:password)`.
pub fn password_for(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// Split a REST username into its expiry (unix seconds) and user part.
pub fn parse_username(username: &str) -> Result<(u64, &str), ProtoError> {
    let (expiry, user) = username
        .split_once(':')
        .ok_or(ProtoError::BadTurnUsername)?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtoError::BadTurnUsername);
    }
    let expiry = expiry.parse().map_err(|_| ProtoError::BadTurnUsername)?;
    Ok((expiry, user))
}

/// Check that a REST username is well formed and not expired at `now`.
pub fn check_username(username: &str, now: u64) -> Result<(u64, &str), ProtoError> {
    let (expiry, user) = parse_username(username)?;
    if expiry <= now {
        return Err(ProtoError::TurnCredentialsExpired);
    }
    Ok((expiry, user))
}

/// Verify a username/password pair at `now`, in constant time over the password.
pub fn verify(secret: &[u8], username: &str, password: &str, now: u64) -> Result<(), ProtoError> {
    check_username(username, now)?;
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    let given = B64
        .decode(password)
        .map_err(|_| ProtoError::TurnPasswordMismatch)?;
    mac.verify_slice(&given)
        .map_err(|_| ProtoError::TurnPasswordMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"north";

    #[test]
    fn matches_coturn_rule() {
        // Value computed independently with:
        //   printf '%s' '1700000600:alice' | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(
            password_for(SECRET, "1700000600:alice"),
            "gthUwOpcRoLI0MMCziCEBOWYnpo="
        );
        let creds = TurnCredentials::mint(SECRET, "alice", 1_700_000_000, 600);
        assert_eq!(creds.username, "1700000600:alice");
        assert_eq!(creds.password, "gthUwOpcRoLI0MMCziCEBOWYnpo=");
    }

    #[test]
    fn verify_accepts_fresh_and_refuses_expired_or_wrong() {
        let creds = TurnCredentials::mint(SECRET, "bob", 1_000, 600);
        assert_eq!(
            verify(SECRET, &creds.username, &creds.password, 1_000),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, &creds.username, &creds.password, 1_600),
            Err(ProtoError::TurnCredentialsExpired)
        );
        assert_eq!(
            verify(b"other", &creds.username, &creds.password, 1_000),
            Err(ProtoError::TurnPasswordMismatch)
        );
        assert_eq!(
            verify(SECRET, &creds.username, "not base64!", 1_000),
            Err(ProtoError::TurnPasswordMismatch)
        );
    }

    #[test]
    fn username_parsing() {
        assert_eq!(parse_username("123:a:b"), Ok((123, "a:b")));
        for bad in [
            "",
            "alice",
            ":alice",
            "12x:alice",
            "-1:alice",
            "99999999999999999999999:a",
        ] {
            assert!(parse_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_password() {
        let creds = TurnCredentials::mint(SECRET, "bob", 1_000, 600);
        assert!(!format!("{creds:?}").contains(&creds.password));
    }
}
