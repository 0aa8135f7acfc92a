//! Pure decoding of one payload (a `logs:{service}` message or a `logs-history` entry) into a
//! borrowed view of a [`hermes_proto::LogEvent`], or [`Decoded::Malformed`] with the raw bytes.
//!
//! The view borrows strings from the payload, so decoding an event allocates nothing unless a
//! string contains JSON escapes. A wanted detail object is borrowed too, as the raw JSON text
//! the service published, when that text is a single terminal-safe line (services publish
//! compact JSON); otherwise it is parsed into a `serde_json::Value` and re-serialized. It
//! accepts exactly what `LogEvent` accepts (a unit test checks both agree), so what the console
//! shows and what `--json` emits for `jq` never disagree.

use std::borrow::Cow;

use hermes_proto::LogLevel;
use hermes_proto::ids::ID_LEN;
use serde::Deserialize;
use serde::de::IgnoredAny;

use hermes_proto::ids::is_id_byte;

/// A decoded log event borrowing from its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EventView<'a> {
    /// Unix milliseconds.
    pub ts: u64,
    pub service: Cow<'a, str>,
    pub level: LogLevel,
    pub event: Cow<'a, str>,
    /// A valid callId (26 characters of lowercase base32), if any.
    pub call_id: Option<Cow<'a, str>>,
    /// The detail object when it had to be parsed (see `detail_raw`); `Null` when absent, when
    /// not asked for, or when `detail_raw` holds it.
    pub detail: serde_json::Value,
    /// The detail as published, borrowed: single-line compact JSON with no terminal controls.
    pub detail_raw: Option<&'a [u8]>,
}

/// Outcome of decoding one payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<'a> {
    Event(EventView<'a>),
    /// Not a log event; `raw` is shown (escaped) so nothing is lost, `reason` says why.
    Malformed {
        raw: &'a [u8],
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a, D> {
    ts: u64,
    #[serde(borrow)]
    service: Cow<'a, str>,
    level: LogLevel,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    call_id: Option<CallIdRef<'a>>,
    #[serde(default)]
    detail: D,
}

/// A callId, borrowed unless it contains JSON escapes, validated like `hermes_proto::CallId`.
struct CallIdRef<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CallIdRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a callId string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
        }
        let s = d.deserialize_str(Visitor)?;
        if s.len() == ID_LEN && s.bytes().all(is_id_byte) {
            Ok(Self(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "callId: expected {ID_LEN} characters of lowercase base32"
            )))
        }
    }
}

/// Decode `payload`; `want_detail` decides whether the detail object is kept (it is always
/// checked to be valid JSON).
pub fn decode(payload: &[u8], want_detail: bool) -> Decoded<'_> {
    let lean = serde_json::from_slice::<Wire<'_, IgnoredAny>>(payload);
    let result = match lean {
        Ok(w) if !want_detail => Ok(view(w, |_| serde_json::Value::Null, None)),
        Ok(w) => match raw_detail(payload) {
            // Absent or null: nothing to show.
            None => Ok(view(w, |_| serde_json::Value::Null, None)),
            Some(b"null") => Ok(view(w, |_| serde_json::Value::Null, None)),
            Some(raw) if is_single_safe_line(raw) => {
                Ok(view(w, |_| serde_json::Value::Null, Some(raw)))
            }
            // Pretty-printed or carrying characters a terminal acts on: parse and rewrite.
            Some(_) => serde_json::from_slice::<Wire<'_, serde_json::Value>>(payload)
                .map(|w| view(w, |d| d, None)),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(event) => Decoded::Event(event),
        Err(e) => Decoded::Malformed {
            raw: payload,
            reason: e.to_string(),
        },
    }
}

fn view<'a, D>(
    w: Wire<'a, D>,
    detail: impl FnOnce(D) -> serde_json::Value,
    detail_raw: Option<&'a [u8]>,
) -> EventView<'a> {
    EventView {
        ts: w.ts,
        service: w.service,
        level: w.level,
        event: w.event,
        call_id: w.call_id.map(|c| c.0),
        detail: detail(w.detail),
        detail_raw,
    }
}

/// No byte a terminal acts on: C0 (including newlines), DEL, or a C1 control (0xC2 0x80..0x9F).
fn is_single_safe_line(raw: &[u8]) -> bool {
    !raw.iter().any(|&b| b < 0x20 || b == 0x7f)
        && !raw
            .windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]))
}

/// The raw text of the top-level `detail` member of a JSON object that serde already
/// validated. Pure byte scanning, no allocation (a key spelled with escapes is compared after
/// unescaping, the one allocating case).
pub fn raw_detail(json: &[u8]) -> Option<&[u8]> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        if json.get(i) != Some(&b'"') {
            return None; // `}` of an empty object, or not an object member
        }
        let key_start = i;
        i = skip_string(json, i)?;
        let key = &json[key_start..i];
        i = skip_ws(json, i);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(json, i + 1);
        let value_start = i;
        i = skip_value(json, i)?;
        if key_is_detail(key) {
            return Some(&json[value_start..i]);
        }
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn key_is_detail(quoted: &[u8]) -> bool {
    if quoted == b"\"detail\"" {
        return true;
    }
    quoted.contains(&b'\\') && serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == "detail")
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i]` is the opening quote; returns the index after the closing one.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Returns the index after the value starting at `b[i]`.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while !matches!(
                b.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                i += 1;
            }
            Some(i)
        }
    }
}

/// The service a channel belongs to: `logs:api` → `api` (used for malformed payloads, whose
/// own `service` field cannot be trusted).
pub fn channel_service(channel: &[u8]) -> &[u8] {
    channel.strip_prefix(b"logs:").unwrap_or(channel)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hermes_proto::{CallId, LogEvent};

    fn fixture(name: &str) -> Vec<u8> {
        let path = hermes_testkit::workspace_root()
            .join("crates/hermes-proto/fixtures")
            .join(name);
        std::fs::read(&path).unwrap()
    }

    fn event(payload: &[u8]) -> EventView<'_> {
        match decode(payload, true) {
            Decoded::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn golden_fixtures_decode_like_log_event() {
        for name in ["log-event.json", "log-event.minimal.json"] {
            let raw = fixture(name);
            let proto: LogEvent = serde_json::from_slice(&raw).unwrap();
            let v = event(&raw);
            assert_eq!(v.ts, proto.ts);
            assert_eq!(v.service, proto.service);
            assert_eq!(v.level, proto.level);
            assert_eq!(v.event, proto.event);
            assert_eq!(
                v.call_id.as_deref(),
                proto.call_id.as_ref().map(CallId::as_str)
            );
            let detail: serde_json::Value = match v.detail_raw {
                Some(raw) => serde_json::from_slice(raw).unwrap(),
                None => v.detail.clone(),
            };
            assert_eq!(detail, proto.detail);
        }
    }

    #[test]
    fn raw_detail_finds_the_top_level_member_only() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (
                br#"{"ts":1,"detail":{"a":[1,"}",{"b":"\"x"}]},"z":2}"#,
                Some(br#"{"a":[1,"}",{"b":"\"x"}]}"#),
            ),
            (br#"{"x":{"detail":1},"detail":"top"}"#, Some(br#""top""#)),
            (br#" { "detail" : 42 , "y" : [] } "#, Some(b"42")),
            (br#"{"d\u0065tail":true}"#, Some(b"true")),
            (br#"{"ts":1,"event":"detail"}"#, None),
            (br#"{}"#, None),
            (br#"[1,2]"#, None),
            (br#"{"detail":null}"#, Some(b"null")),
        ];
        for (json, want) in cases {
            assert_eq!(raw_detail(json), *want, "{}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn detail_is_borrowed_when_safe_and_parsed_otherwise() {
        let compact =
            br#"{"ts":1,"service":"api","level":"info","event":"e","detail":{"b":2,"a":1}}"#;
        let v = event(compact);
        assert_eq!(
            v.detail_raw,
            Some(&br#"{"b":2,"a":1}"#[..]),
            "publisher's order kept"
        );
        assert!(v.detail.is_null());
        let pretty = b"{\"ts\":1,\"service\":\"api\",\"level\":\"info\",\"event\":\"e\",\"detail\":{\n \"a\": 1\n}}";
        let v = event(pretty);
        assert_eq!(v.detail_raw, None);
        assert_eq!(v.detail, serde_json::json!({"a": 1}));
        let c1 = "{\"ts\":1,\"service\":\"api\",\"level\":\"info\",\"event\":\"e\",\"detail\":\"\u{9b}31m\"}";
        let v = event(c1.as_bytes());
        assert_eq!(
            v.detail_raw, None,
            "C1 control: parsed, then escaped by render"
        );
        assert_eq!(v.detail, serde_json::json!("\u{9b}31m"));
        let v = event(br#"{"ts":1,"service":"api","level":"info","event":"e","detail":null}"#);
        assert_eq!((v.detail_raw, v.detail), (None, serde_json::Value::Null));
    }

    #[test]
    fn plain_strings_are_borrowed_and_detail_skipped_when_not_wanted() {
        let raw = fixture("log-event.json");
        let Decoded::Event(v) = decode(&raw, false) else {
            panic!("fixture must decode");
        };
        assert!(matches!(v.service, Cow::Borrowed("signal")));
        assert!(matches!(v.event, Cow::Borrowed("peer.joined")));
        assert_eq!(v.detail, serde_json::Value::Null);
        // Escaped strings still decode (owned).
        let escaped = br#"{"ts":1,"service":"a\u0070i","level":"info","event":"x"}"#;
        assert_eq!(event(escaped).service, "api");
    }

    /// The view must accept exactly the payloads `LogEvent` accepts.
    #[test]
    fn agrees_with_log_event_on_edge_cases() {
        let cases: &[&[u8]] = &[
            br#"{"ts":1,"service":"api","level":"info","event":"e"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","extra":[1,2]}"#,
            br#"{"ts":1,"service":"api","level":"INFO","event":"e"}"#,
            br#"{"ts":1,"service":"api","level":"fatal","event":"e"}"#,
            br#"{"ts":-1,"service":"api","level":"info","event":"e"}"#,
            br#"{"ts":"1","service":"api","level":"info","event":"e"}"#,
            br#"{"service":"api","level":"info","event":"e"}"#,
            br#"{"ts":1,"level":"info","event":"e"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","callId":null}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","callId":"c0ffee0c0ffee0c0ffee0c0ffe"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","callId":"C0FFEE0C0FFEE0C0FFEE0C0FFE"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","callId":"short"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","callId":5}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","callId":"\u00630ffee0c0ffee0c0ffee0c0ffe"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","detail":{"a":[1,{"b":null}]}}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e","detail":"text"}"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e"} trailing"#,
            br#"{"ts":1,"service":"api","level":"info","event":"e""#,
            b"[1,2,3]",
            b"",
            b"\xff\xfe",
            b"not json at all",
        ];
        for raw in cases {
            let proto_ok = serde_json::from_slice::<LogEvent>(raw).is_ok();
            for want_detail in [false, true] {
                let ours_ok = matches!(decode(raw, want_detail), Decoded::Event(_));
                assert_eq!(
                    ours_ok,
                    proto_ok,
                    "{} (detail {want_detail})",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    #[test]
    fn malformed_keeps_raw_bytes_and_reason() {
        let raw = b"{\"ts\":1,\"service\":\"api\"";
        match decode(raw, false) {
            Decoded::Malformed { raw: r, reason } => {
                assert_eq!(r, raw);
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn channel_to_service() {
        assert_eq!(channel_service(b"logs:turn"), b"turn");
        assert_eq!(channel_service(b"other"), b"other");
    }
}
