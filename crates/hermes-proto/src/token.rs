//! Join tokens: HS256 JWTs the API issues and signal (and the API itself) verify.
//!
//! The algorithm is pinned to HS256: a token whose header names any other algorithm, or `none`,
//! is refused before its signature is looked at. Expiry is checked against a `now` the caller
//! passes, so tests control time. The role is always chosen by the server when it signs.

use std::collections::HashSet;
use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::ids::{CallId, ParticipantId};

/// Issuer written into and required from every join token.
pub const TOKEN_ISSUER: &str = "hermes-api";
/// Audience written into and required from every join token.
pub const TOKEN_AUDIENCE: &str = "hermes-call";
/// Default lifetime of a join token (the spec: 24 hours).
pub const JOIN_TOKEN_TTL_SECS: u64 = 24 * 60 * 60;

/// What a participant may do in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Creates the call and makes the first offer (impolite side of perfect negotiation).
    Offerer,
    /// Joins by code and answers (polite side).
    Answerer,
    /// Receives call state and events, never sends SDP or ICE.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Offerer => "offerer",
            Role::Answerer => "answerer",
            Role::Observer => "observer",
        }
    }

    /// Offerer and answerer hold the two media seats; observers do not.
    pub fn is_media(self) -> bool {
        !matches!(self, Role::Observer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    pub iss: String,
    pub aud: String,
    /// The call this token admits to (and no other).
    pub cid: CallId,
    /// The participant seat; stable across reconnects.
    pub pid: ParticipantId,
    pub role: Role,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Unique token id (random), for audit and revocation.
    pub jti: String,
}

impl JoinClaims {
    /// Fresh claims for a participant, valid `ttl_secs` from `now`.
    pub fn new(
        call: CallId,
        participant: ParticipantId,
        role: Role,
        now: u64,
        ttl_secs: u64,
        rng: &mut impl RngCore,
    ) -> Self {
        let mut jti = [0u8; 12];
        rng.fill_bytes(&mut jti);
        Self {
            iss: TOKEN_ISSUER.to_owned(),
            aud: TOKEN_AUDIENCE.to_owned(),
            cid: call,
            pid: participant,
            role,
            iat: now,
            exp: now.saturating_add(ttl_secs),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Signing and verification keys for join tokens, derived from `JWT_SECRET`.
#[derive(Clone)]
pub struct JoinTokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for JoinTokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinTokenKeys(redacted)")
    }
}

impl JoinTokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        // Expiry is checked in `verify` against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims =
            HashSet::from(["exp", "iat", "iss", "aud"].map(String::from));
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Sign claims as an HS256 JWT.
    pub fn sign(&self, claims: &JoinClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    /// Verify a token's algorithm, signature, issuer, audience and expiry at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<JoinClaims, ProtoError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > 4096 {
            return Err(ProtoError::BadToken("too long"));
        }
        let data = jsonwebtoken::decode::<JoinClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ProtoError::BadToken(match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "algorithm not allowed"
                    }
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::MissingRequiredClaim(_) => "missing claim",
                    _ => "malformed",
                })
            })?;
        if data.claims.exp <= now {
            return Err(ProtoError::TokenExpired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use rand::SeedableRng;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
    const NOW: u64 = 1_800_000_000;

    fn claims(rng: &mut rand::rngs::StdRng) -> JoinClaims {
        JoinClaims::new(
            CallId::random(rng),
            ParticipantId::random(rng),
            Role::Answerer,
            NOW,
            JOIN_TOKEN_TTL_SECS,
            rng,
        )
    }

    #[test]
    fn round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let keys = JoinTokenKeys::new(SECRET);
        let c = claims(&mut rng);
        let token = keys.sign(&c);
        assert_eq!(keys.verify(&token, NOW + 10), Ok(c));
    }

    #[test]
    fn expired_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let keys = JoinTokenKeys::new(SECRET);
        let token = keys.sign(&claims(&mut rng));
        assert_eq!(
            keys.verify(&token, NOW + JOIN_TOKEN_TTL_SECS),
            Err(ProtoError::TokenExpired)
        );
    }

    #[test]
    fn wrong_key_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let token = JoinTokenKeys::new(b"another-secret-another-secret-xx").sign(&claims(&mut rng));
        assert_eq!(
            JoinTokenKeys::new(SECRET).verify(&token, NOW),
            Err(ProtoError::BadToken("bad signature"))
        );
    }

    #[test]
    fn wrong_audience_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let keys = JoinTokenKeys::new(SECRET);
        let mut c = claims(&mut rng);
        c.aud = "someone-else".into();
        assert_eq!(
            keys.verify(&keys.sign(&c), NOW),
            Err(ProtoError::BadToken("wrong audience"))
        );
        let mut c = claims(&mut rng);
        c.iss = "evil".into();
        assert_eq!(
            keys.verify(&keys.sign(&c), NOW),
            Err(ProtoError::BadToken("wrong issuer"))
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let keys = JoinTokenKeys::new(SECRET);
        let body = serde_json::to_vec(&claims(&mut rng)).expect("serialise");
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
        ] {
            let forged = format!("{}.{}.", B64.encode(header), B64.encode(&body));
            assert!(keys.verify(&forged, NOW).is_err(), "{header}");
        }
        // A real HS256 token with its header swapped to none must also fail.
        let token = keys.sign(&claims(&mut rng));
        let mut parts = token.split('.');
        let (_, payload) = (parts.next(), parts.next().expect("payload"));
        let forged = format!("{}.{payload}.", B64.encode(r#"{"alg":"none"}"#));
        assert!(keys.verify(&forged, NOW).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        let keys = JoinTokenKeys::new(SECRET);
        for bad in ["", "a.b.c", "....", &"x".repeat(5000)] {
            assert!(keys.verify(bad, NOW).is_err());
        }
    }
}
