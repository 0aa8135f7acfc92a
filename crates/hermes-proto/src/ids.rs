//! Call and participant identifiers: random, URL-safe, fixed length, validated on parse.
//!
//! Ids are 16 random bytes in lowercase Crockford base32 (26 characters), so they can sit in
//! URLs, Redis keys and log lines without escaping and cannot be guessed.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ProtoError;

/// Lowercase Crockford base32 alphabet used for ids.
const ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Length of an id in characters (16 bytes = 128 bits, 26 base32 characters).
pub const ID_LEN: usize = 26;

fn random_id(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    let mut value = u128::from_be_bytes(bytes);
    let mut out = [0u8; ID_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ID_ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// True for a byte of the id alphabet (digits and lowercase letters except i, l, o, u), for
/// callers that check id-shaped text byte by byte (the logger's filters and decoder).
pub fn is_id_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'z') && !matches!(b, b'i' | b'l' | b'o' | b'u')
}

fn validate_id(s: &str) -> Result<(), ProtoError> {
    if s.len() == ID_LEN && s.bytes().all(is_id_byte) {
        Ok(())
    } else {
        Err(ProtoError::BadId(format!(
            "expected {ID_LEN} characters of lowercase base32"
        )))
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn random(rng: &mut impl RngCore) -> Self {
                Self(random_id(rng))
            }

            /// Parse and validate an id received from outside.
            pub fn parse(s: &str) -> Result<Self, ProtoError> {
                validate_id(s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// First 8 characters, for human-facing log lines.
            pub fn short(&self) -> &str {
                &self.0[..8]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ProtoError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identifies one call from creation to end.
    CallId
);
id_type!(
    /// Identifies one participant's seat in a call; stable across reconnects (it is in the token).
    ParticipantId
);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn is_id_byte_is_exactly_the_alphabet() {
        for b in 0u8..=255 {
            assert_eq!(is_id_byte(b), ID_ALPHABET.contains(&b), "byte {b:#x}");
        }
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = CallId::random(&mut rng);
        let b = CallId::random(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(CallId::parse(a.as_str()), Ok(a.clone()));
        assert_eq!(a.short().len(), 8);
    }

    #[test]
    fn parse_rejects_bad_ids() {
        assert!(CallId::parse("").is_err());
        assert!(
            CallId::parse("ABCDEFGHJKMNPQRSTVWXYZ0123").is_err(),
            "uppercase"
        );
        assert!(
            CallId::parse("0123456789abcdefghjkmnpqrs0").is_err(),
            "too long"
        );
        assert!(
            CallId::parse("0123456789abcdefghjkmnpqri").is_err(),
            "i is not in the alphabet"
        );
        assert!(serde_json::from_str::<ParticipantId>("\"../../etc\"").is_err());
    }
}
