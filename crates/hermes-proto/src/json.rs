//! JSON decoding that accepts only objects where the wire format says "object".
//!
//! serde's derived `Deserialize` for a struct (and for an internally tagged enum) also accepts
//! a JSON array of the field values in declaration order, so `["ABCDEF"]` would pass as
//! `{"code":"ABCDEF"}` and `["hangup"]` as `{"type":"hangup"}`. The documented formats are
//! objects only: every API body and every signaling message is decoded through
//! [`from_object_slice`] / [`from_object_str`], and nested objects use [`object_only`].

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// `deserialize_with` for a field whose value must be a JSON object (never an array).
pub fn object_only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// Decode a whole JSON text that must be an object (trailing whitespace only after it).
pub fn from_object_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = object_only(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`from_object_slice`] for text.
pub fn from_object_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    from_object_slice(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Code {
        code: String,
    }

    #[test]
    fn objects_pass_everything_else_fails() {
        assert_eq!(
            from_object_str::<Code>(r#" {"code":"ABCDEF"} "#).unwrap(),
            Code {
                code: "ABCDEF".into()
            }
        );
        for bad in [
            r#"["ABCDEF"]"#,
            r#""ABCDEF""#,
            "null",
            "1",
            r#"{"code":"A"} x"#,
            "",
        ] {
            assert!(from_object_str::<Code>(bad).is_err(), "{bad}");
        }
        // The plain serde path accepts the array: the reason this module exists.
        assert!(serde_json::from_str::<Code>(r#"["ABCDEF"]"#).is_ok());
        let e = from_object_str::<Code>(r#"["ABCDEF"]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
    }
}
