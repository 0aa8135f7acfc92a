//! The 6-character one-time code a caller reads out or shares as `/c/CODE`.
//!
//! Alphabet: Crockford base32 (0-9, A-Z without I, L, O, U), so no two characters look alike.
//! Input is case-insensitive, ignores spaces and dashes, and maps the look-alikes people type
//! (O → 0, I and L → 1) as Crockford's decoding rule does. 32^6 ≈ 1.07 billion codes; together
//! with the resolve rate limits that makes guessing a live code impractical.

use std::fmt;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::error::ProtoError;

/// Characters a code is made of.
pub const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Number of characters in a code.
pub const CODE_LEN: usize = 6;

/// A normalised, valid one-time code (always 6 uppercase alphabet characters).
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct OneTimeCode(String);

impl OneTimeCode {
    /// A fresh random code.
    pub fn random(rng: &mut impl Rng) -> Self {
        let code = (0..CODE_LEN)
            .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
            .collect();
        Self(code)
    }

    /// Normalise user input (case, spaces, dashes, look-alike letters) and validate it.
    pub fn parse(input: &str) -> Result<Self, ProtoError> {
        let mut out = String::with_capacity(CODE_LEN);
        for ch in input.chars() {
            let c = match ch.to_ascii_uppercase() {
                ' ' | '-' | '\t' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) || out.len() >= CODE_LEN {
                return Err(bad_code(input));
            }
            out.push(c);
        }
        if out.len() != CODE_LEN {
            return Err(bad_code(input));
        }
        Ok(Self(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Keyed hash of the code for rate-limit keys (`rl:code:{hash}`), so Redis never holds the
    /// code itself there and the hash cannot be reversed by enumerating the 2^30 codes without
    /// the key. Hex of the first 16 bytes of HMAC-SHA256.
    pub fn keyed_hash(&self, key: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(self.0.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn bad_code(input: &str) -> ProtoError {
    // Only a bounded prefix of hostile input is echoed back.
    let got: String = input.chars().take(16).collect();
    ProtoError::BadCode {
        expected: CODE_LEN,
        got,
    }
}

impl fmt::Display for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Codes are secrets while they live: Debug never shows one.
impl fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeCode(******)")
    }
}

impl<'de> Deserialize<'de> for OneTimeCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn alphabet_has_no_ambiguous_letters() {
        assert_eq!(CODE_ALPHABET.len(), 32);
        for c in [b'I', b'L', b'O', b'U'] {
            assert!(!CODE_ALPHABET.contains(&c));
        }
        let mut sorted = CODE_ALPHABET.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), 32, "no duplicates");
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            OneTimeCode::parse("ab3-x9z").map(|c| c.0),
            Ok("AB3X9Z".into())
        );
        assert_eq!(
            OneTimeCode::parse(" ab 3x 9z ").map(|c| c.0),
            Ok("AB3X9Z".into())
        );
        assert_eq!(
            OneTimeCode::parse("oilOIL").map(|c| c.0),
            Ok("011011".into())
        );
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "ABC",
            "ABCDEFG",
            "ABCDEU",
            "ABC!EF",
            "АБВГДЕ",
            "ABCDE\u{0}",
        ] {
            assert!(OneTimeCode::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_code() {
        let code = OneTimeCode::parse("ABCDEF").expect("valid");
        assert!(!format!("{code:?}").contains("ABCDEF"));
    }

    #[test]
    fn keyed_hash_depends_on_key_and_code() {
        let a = OneTimeCode::parse("ABCDEF").expect("valid");
        let b = OneTimeCode::parse("ABCDEG").expect("valid");
        assert_eq!(a.keyed_hash(b"k1").len(), 32);
        assert_ne!(a.keyed_hash(b"k1"), a.keyed_hash(b"k2"));
        assert_ne!(a.keyed_hash(b"k1"), b.keyed_hash(b"k1"));
        assert!(!a.keyed_hash(b"k1").contains("ABCDEF"));
    }

    proptest! {
        #[test]
        fn random_codes_parse_back(seed in any::<u64>()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let code = OneTimeCode::random(&mut rng);
            prop_assert_eq!(OneTimeCode::parse(&code.0.to_lowercase()), Ok(code));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = OneTimeCode::parse(&s);
        }
    }
}
