//! Properties over arbitrary input: decoding never panics and accepts exactly what
//! `hermes_proto::LogEvent` accepts; a rendered line is always one line with no terminal
//! control characters, whatever the strings in the event.

use std::borrow::Cow;

use hermes_logger::decode::{Decoded, EventView, decode};
use hermes_logger::render::{RenderOptions, render_event, render_json_line, render_malformed};
use hermes_proto::{LogEvent, LogLevel};
use proptest::prelude::*;

fn level() -> impl Strategy<Value = LogLevel> {
    prop_oneof![
        Just(LogLevel::Debug),
        Just(LogLevel::Info),
        Just(LogLevel::Warn),
        Just(LogLevel::Error)
    ]
}

/// Any char, with a bias towards the nasty ones (C0, C1, DEL, ESC, quotes, backslashes).
fn nasty_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '\x1b', '\u{9b}', '\x7f', '\n', '\r', '\x07', '"', '\\', '\0'
            ]),
        ],
        0..40,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn no_terminal_controls(line: &str) -> bool {
    let body = line.strip_suffix('\n').unwrap_or(line);
    !body.chars().any(char::is_control) && line.ends_with('\n')
}

proptest! {
    #[test]
    fn decode_agrees_with_log_event_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let proto_ok = serde_json::from_slice::<LogEvent>(&bytes).is_ok();
        for want_detail in [false, true] {
            let ours_ok = matches!(decode(&bytes, want_detail), Decoded::Event(_));
            prop_assert_eq!(ours_ok, proto_ok);
        }
    }

    #[test]
    fn decode_round_trips_generated_events(
        ts in any::<u64>(),
        service in nasty_string(),
        event in nasty_string(),
        lvl in level(),
        detail in nasty_string(),
        with_call in any::<bool>(),
    ) {
        let mut ev = LogEvent::new(ts, &service, lvl, &event).detail(serde_json::json!({ "s": detail }));
        if with_call {
            ev = ev.call(&hermes_proto::CallId::parse("c0ffee0c0ffee0c0ffee0c0ffe").expect("valid"));
        }
        let json = serde_json::to_vec(&ev).expect("serialize");
        let Decoded::Event(view) = decode(&json, true) else {
            return Err(TestCaseError::fail("a serialized LogEvent must decode"));
        };
        prop_assert_eq!(view.ts, ev.ts);
        prop_assert_eq!(&*view.service, ev.service.as_str());
        prop_assert_eq!(&*view.event, ev.event.as_str());
        prop_assert_eq!(view.level, ev.level);
        prop_assert_eq!(view.call_id.as_deref(), ev.call_id.as_ref().map(|c| c.as_str()));
        let detail: serde_json::Value = match view.detail_raw {
            Some(raw) => serde_json::from_slice(raw).expect("raw detail is JSON"),
            None => view.detail.clone(),
        };
        prop_assert_eq!(&detail, &ev.detail);
        // Whichever way the detail was kept, the rendered line is one safe line.
        let mut out = Vec::new();
        render_event(&view, &RenderOptions::console(false, true), &mut out);
        let rendered = String::from_utf8(out).expect("utf-8");
        prop_assert!(no_terminal_controls(&rendered), "{:?}", rendered);

        let mut out = Vec::new();
        render_json_line(&json, &mut out);
        let line = String::from_utf8(out).expect("utf-8");
        prop_assert!(no_terminal_controls(&line), "{:?}", line);
        let back: LogEvent = serde_json::from_str(&line).expect("JSON line parses");
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn rendered_lines_are_single_and_free_of_controls(
        service in nasty_string(),
        event in nasty_string(),
        detail in nasty_string(),
        lvl in level(),
        color in any::<bool>(),
        full in any::<bool>(),
    ) {
        let view = EventView {
            ts: 1_800_000_000_123,
            service: Cow::Owned(service),
            level: lvl,
            event: Cow::Owned(event),
            call_id: Some(Cow::Borrowed("c0ffee0c0ffee0c0ffee0c0ffe")),
            detail: serde_json::json!({ "d": detail }),
            detail_raw: None,
        };
        let opts = RenderOptions { color: false, detail: true, full_date: full, full_call_id: full };
        let mut out = Vec::new();
        render_event(&view, &opts, &mut out);
        let line = String::from_utf8(out).expect("utf-8");
        prop_assert!(no_terminal_controls(&line), "{:?}", line);
        // With colors the only escapes are our own SGR sequences.
        let mut out = Vec::new();
        render_event(&view, &RenderOptions { color, ..opts }, &mut out);
        let colored = String::from_utf8(out).expect("utf-8");
        let stripped: String = {
            let mut s = String::new();
            let mut chars = colored.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\x1b' && chars.peek() == Some(&'[') {
                    for c in chars.by_ref() {
                        if c == 'm' { break; }
                    }
                } else {
                    s.push(c);
                }
            }
            s
        };
        prop_assert_eq!(stripped, line);
    }

    #[test]
    fn malformed_lines_are_single_and_free_of_controls(raw in prop::collection::vec(any::<u8>(), 0..3000)) {
        let mut out = Vec::new();
        render_malformed(0, "api", &raw, "reason\x1b", &RenderOptions::console(false, false), &mut out);
        let line = String::from_utf8(out).expect("utf-8");
        prop_assert!(no_terminal_controls(&line), "{:?}", line);
        prop_assert!(line.len() < 1024 * 4 + 200);
    }
}
