//! Secrets (`JWT_SECRET`, `TURN_SECRET`): a type that never prints its value, and the start-up
//! check that refuses missing, short or example secrets in production.

use std::fmt;

use crate::config::HermesEnv;

/// Minimum secret length accepted in production.
pub const MIN_SECRET_BYTES: usize = 32;

/// Placeholder values shipped in `.env.example` and docs; never accepted in production.
pub const EXAMPLE_SECRETS: &[&str] = &[
    "change-me-jwt-secret-at-least-32-bytes-long",
    "change-me-turn-secret-at-least-32-bytes-long",
    "changeme",
    "secret",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "{name} is not set; HERMES_ENV=production needs a random secret of at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 48`)"
    )]
    Missing { name: &'static str },
    #[error(
        "{name} is {len} bytes; HERMES_ENV=production needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -base64 48`)"
    )]
    TooShort { name: &'static str, len: usize },
    #[error(
        "{name} is an example value from the documentation; set a random secret (e.g. `openssl rand -base64 48`)"
    )]
    Example { name: &'static str },
}

/// A secret value. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Validate a configured secret. In development a missing secret is replaced by a random
    /// one (with a warning: services started separately will then not share it).
    pub fn from_config(
        name: &'static str,
        value: Option<&str>,
        env: HermesEnv,
    ) -> Result<Self, SecretError> {
        let value = value.map(str::trim).filter(|v| !v.is_empty());
        match (value, env) {
            (None, HermesEnv::Production) => Err(SecretError::Missing { name }),
            (None, HermesEnv::Development) => {
                tracing::warn!(
                    "{name} not set: using a random secret for this process only (development)"
                );
                let mut bytes = [0u8; 32];
                rand_fill(&mut bytes);
                Ok(Self(bytes.to_vec()))
            }
            (Some(v), HermesEnv::Production) => {
                let lower = v.to_ascii_lowercase();
                if EXAMPLE_SECRETS.iter().any(|e| lower == *e)
                    || lower.contains("change-me")
                    || lower.contains("changeme")
                {
                    Err(SecretError::Example { name })
                } else if v.len() < MIN_SECRET_BYTES {
                    Err(SecretError::TooShort { name, len: v.len() })
                } else {
                    Ok(Self(v.as_bytes().to_vec()))
                }
            }
            (Some(v), HermesEnv::Development) => Ok(Self(v.as_bytes().to_vec())),
        }
    }

    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret's bytes, for keying HMACs. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality with another byte string.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.len() && bool::from(self.0.as_slice().ct_eq(other))
    }
}

fn rand_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && f.read_exact(buf).is_ok()
    {
        return;
    }
    // /dev/urandom exists on every platform we run on; this path only keeps us from panicking.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "kQ8x1v7ZC3n0bqk2m9Wj4sT6yH5rL2pA8dF1gE7uJ0c=";

    #[test]
    fn production_refuses_weak_secrets() {
        let p = HermesEnv::Production;
        assert_eq!(
            Secret::from_config("JWT_SECRET", None, p),
            Err(SecretError::Missing { name: "JWT_SECRET" })
        );
        assert_eq!(
            Secret::from_config("JWT_SECRET", Some("   "), p),
            Err(SecretError::Missing { name: "JWT_SECRET" })
        );
        assert_eq!(
            Secret::from_config("JWT_SECRET", Some("short"), p),
            Err(SecretError::TooShort {
                name: "JWT_SECRET",
                len: 5
            })
        );
        for example in EXAMPLE_SECRETS {
            assert!(Secret::from_config("TURN_SECRET", Some(example), p).is_err());
        }
        assert_eq!(
            Secret::from_config("JWT_SECRET", Some(GOOD), p).map(|s| s.expose().len()),
            Ok(GOOD.len())
        );
    }

    #[test]
    fn development_generates_missing_secrets() {
        let a = Secret::from_config("JWT_SECRET", None, HermesEnv::Development).expect("dev");
        let b = Secret::from_config("JWT_SECRET", None, HermesEnv::Development).expect("dev");
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a, b);
        assert!(Secret::from_config("JWT_SECRET", Some("short"), HermesEnv::Development).is_ok());
    }

    #[test]
    fn never_printed() {
        let s = Secret::from_bytes(GOOD.as_bytes());
        assert!(!format!("{s:?} {s}").contains(GOOD));
        assert!(s.ct_eq(GOOD.as_bytes()));
        assert!(!s.ct_eq(b"nope"));
    }
}
