//! Pure formatting of console and file lines: time, service, level, event, callId and (when
//! enabled) the detail, colored by level and by service with owo-colors, plus the logger's own
//! notices (malformed payload, connection gap, falling behind).
//!
//! Everything appends to a caller-owned `Vec<u8>` that the caller reuses, so rendering an event
//! allocates nothing. Text from the wire is never written raw to a terminal: control characters
//! (ESC, C1, DEL, newlines) are shown escaped, so an event cannot move the cursor or recolor
//! the screen.

use std::fmt;
use std::io::Write;

use hermes_proto::{LogEvent, LogLevel};
use owo_colors::Style;

use crate::decode::EventView;

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// ANSI colors.
    pub color: bool,
    /// Append the detail object.
    pub detail: bool,
    /// `2026-01-02T03:04:05.678Z` instead of `03:04:05.678` (files outlive a day).
    pub full_date: bool,
    /// The whole callId instead of its first 8 characters (files get grepped by id).
    pub full_call_id: bool,
}

impl RenderOptions {
    /// The console: time of day, short callId.
    pub fn console(color: bool, detail: bool) -> Self {
        Self {
            color,
            detail,
            full_date: false,
            full_call_id: false,
        }
    }

    /// The plain file: never colored, full date and callId.
    pub fn file(detail: bool) -> Self {
        Self {
            color: false,
            detail,
            full_date: true,
            full_call_id: true,
        }
    }
}

/// Width of the service column (longest built-in name, `signal`).
const SERVICE_WIDTH: usize = 6;
/// Width of the level column (`DEBUG`).
const LEVEL_WIDTH: usize = 5;
/// Width of the event column; longer names push the rest right.
const EVENT_WIDTH: usize = 24;
/// Characters of the callId on the console (`CallId::short`).
const SHORT_CALL: usize = 8;
/// At most this many bytes of a malformed payload are shown.
pub const MAX_RAW_SHOWN: usize = 1024;

/// Color of a level.
pub fn level_style(level: LogLevel) -> Style {
    match level {
        LogLevel::Debug => Style::new().bright_black(),
        LogLevel::Info => Style::new().green(),
        LogLevel::Warn => Style::new().yellow(),
        LogLevel::Error => Style::new().red().bold(),
    }
}

/// Color of a service: fixed for the known ones, a stable pick from a palette otherwise.
pub fn service_style(service: &str) -> Style {
    match service {
        "api" => Style::new().cyan(),
        "signal" => Style::new().magenta(),
        "turn" => Style::new().blue(),
        "logger" => Style::new().bright_white(),
        other => {
            let palette = [
                Style::new().bright_cyan(),
                Style::new().bright_magenta(),
                Style::new().bright_blue(),
                Style::new().bright_green(),
            ];
            let h = other
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
            palette[h % palette.len()]
        }
    }
}

fn level_label(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

/// Text shown with control characters escaped and padded to `width` characters.
struct Clean<'a>(&'a str, usize);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Fast path (nearly every field): no byte that can start a control character (C0, DEL,
        // or 0xC2, the lead byte of the C1 range) → write the text as is.
        let suspicious = self.0.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2);
        let mut shown = 0usize;
        if suspicious {
            for c in self.0.chars() {
                if c.is_control() {
                    for e in c.escape_default() {
                        f.write_fmt(format_args!("{e}"))?;
                        shown += 1;
                    }
                } else {
                    f.write_fmt(format_args!("{c}"))?;
                    shown += 1;
                }
            }
        } else {
            f.write_str(self.0)?;
            if self.1 > 0 {
                shown = self.0.chars().count();
            }
        }
        for _ in shown..self.1 {
            f.write_str(" ")?;
        }
        Ok(())
    }
}

/// Write `text` (cleaned, padded) in `style` when coloring.
fn paint(out: &mut Vec<u8>, color: bool, style: Style, text: &str, width: usize) {
    let text = Clean(text, width);
    let _ = if color {
        write!(out, "{}", style.style(text))
    } else {
        write!(out, "{text}")
    };
}

/// Civil UTC date and time of unix milliseconds (Howard Hinnant's days-to-civil).
fn civil(ts_ms: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let ms = (ts_ms % 1000) as u32;
    let secs = ts_ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = (secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, sod / 3600, sod / 60 % 60, sod % 60, ms)
}

/// `03:04:05.678` or `2026-01-02T03:04:05.678Z` (UTC).
pub fn write_time(out: &mut Vec<u8>, ts_ms: u64, full_date: bool) {
    let (y, mo, d, h, mi, s, ms) = civil(ts_ms);
    let _ = if full_date {
        write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    } else {
        write!(out, "{h:02}:{mi:02}:{s:02}.{ms:03}")
    };
}

fn write_time_styled(out: &mut Vec<u8>, ts_ms: u64, opts: &RenderOptions) {
    if opts.color {
        let _ = write!(out, "{}", Style::new().bright_black().prefix_formatter());
        write_time(out, ts_ms, opts.full_date);
        let _ = write!(out, "{}", Style::new().bright_black().suffix_formatter());
    } else {
        write_time(out, ts_ms, opts.full_date);
    }
}

/// The common head of every line: time, service, level.
fn write_head(out: &mut Vec<u8>, ts: u64, service: &str, level: LogLevel, opts: &RenderOptions) {
    write_time_styled(out, ts, opts);
    out.push(b' ');
    paint(
        out,
        opts.color,
        service_style(service),
        service,
        SERVICE_WIDTH,
    );
    out.push(b' ');
    paint(
        out,
        opts.color,
        level_style(level),
        level_label(level),
        LEVEL_WIDTH,
    );
    out.push(b' ');
}

/// Append one event line (with its newline).
pub fn render_event(ev: &EventView<'_>, opts: &RenderOptions, out: &mut Vec<u8>) {
    write_head(out, ev.ts, &ev.service, ev.level, opts);
    let event_style = if ev.level == LogLevel::Error {
        Style::new().bold()
    } else {
        Style::new()
    };
    paint(out, opts.color, event_style, &ev.event, EVENT_WIDTH);
    out.push(b' ');
    let call = match ev.call_id.as_deref() {
        Some(id) if !opts.full_call_id => id.get(..SHORT_CALL).unwrap_or(id),
        Some(id) => id,
        None => "-",
    };
    let with_detail = opts.detail && (ev.detail_raw.is_some() || !ev.detail.is_null());
    // Pad the short id only when the detail follows, so colored lines carry no trailing blanks.
    let call_width = if with_detail && !opts.full_call_id {
        SHORT_CALL
    } else {
        0
    };
    paint(out, opts.color, Style::new().bold(), call, call_width);
    if with_detail {
        out.push(b' ');
        if opts.color {
            let _ = write!(out, "{}", Style::new().bright_black().prefix_formatter());
        }
        match ev.detail_raw {
            // Decode only borrows single-line text free of terminal controls.
            Some(raw) => out.extend_from_slice(raw),
            None => write_json_clean(out, &ev.detail),
        }
        if opts.color {
            let _ = write!(out, "{}", Style::new().bright_black().suffix_formatter());
        }
    }
    trim_trailing_spaces(out);
    out.push(b'\n');
}

fn trim_trailing_spaces(out: &mut Vec<u8>) {
    while out.last() == Some(&b' ') {
        out.pop();
    }
}

/// Compact JSON of `value` with the characters JSON leaves raw but terminals act on (DEL and
/// the C1 controls) escaped too.
fn write_json_clean(out: &mut Vec<u8>, value: &serde_json::Value) {
    let start = out.len();
    let _ = serde_json::to_writer(&mut *out, value);
    if has_raw_terminal_controls(&out[start..]) {
        let text = String::from_utf8_lossy(&out[start..]).into_owned();
        out.truncate(start);
        let _ = write!(out, "{}", Clean(&text, 0));
    }
}

/// DEL or a UTF-8 encoded C1 control (U+0080..U+009F): valid inside JSON strings, but acted on
/// by terminals.
fn has_raw_terminal_controls(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]))
        || bytes.contains(&0x7f)
}

/// Append a payload that decoded as an event as one JSON line: as published when it is
/// compact and terminal-safe (the usual case, no allocation), re-serialized otherwise.
pub fn render_json_line(payload: &[u8], out: &mut Vec<u8>) {
    let needs_rewrite =
        payload.iter().any(|&b| b == b'\n' || b == b'\r') || has_raw_terminal_controls(payload);
    if needs_rewrite && let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) {
        let start = out.len();
        let _ = serde_json::to_writer(&mut *out, &value);
        if has_raw_terminal_controls(&out[start..]) {
            // Escape DEL/C1 as \u00XX, still valid JSON.
            let text = String::from_utf8_lossy(&out[start..]).into_owned();
            out.truncate(start);
            for c in text.chars() {
                if c.is_control() {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "{c}");
                }
            }
        }
    } else {
        out.extend_from_slice(payload);
    }
    out.push(b'\n');
}

/// Append a LogEvent as a JSON line (the logger's own notices in JSON modes).
pub fn render_log_event_json(event: &LogEvent, out: &mut Vec<u8>) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, event).is_err() {
        out.truncate(start);
        return;
    }
    out.push(b'\n');
}

/// The raw payload as text: lossy UTF-8, controls escaped, cut at [`MAX_RAW_SHOWN`] bytes.
pub fn raw_preview(raw: &[u8]) -> String {
    let cut = raw.len().min(MAX_RAW_SHOWN);
    let text = String::from_utf8_lossy(&raw[..cut]);
    let mut shown = Clean(&text, 0).to_string();
    if raw.len() > cut {
        shown.push_str(&format!("… ({} bytes)", raw.len()));
    }
    shown
}

/// A payload on `logs:{service}` that is not a log event: shown raw, with a warning.
pub fn render_malformed(
    now_ms: u64,
    service: &str,
    raw: &[u8],
    reason: &str,
    opts: &RenderOptions,
    out: &mut Vec<u8>,
) {
    write_head(out, now_ms, service, LogLevel::Warn, opts);
    let msg = format!("malformed event ({reason}): ");
    paint(out, opts.color, Style::new().yellow(), &msg, 0);
    paint(out, false, Style::new(), &raw_preview(raw), 0);
    trim_trailing_spaces(out);
    out.push(b'\n');
}

/// One line from the logger itself (service `logger`).
pub fn render_notice(
    now_ms: u64,
    level: LogLevel,
    text: &str,
    opts: &RenderOptions,
    out: &mut Vec<u8>,
) {
    write_head(out, now_ms, "logger", level, opts);
    paint(out, opts.color, level_style(level), text, 0);
    trim_trailing_spaces(out);
    out.push(b'\n');
}

/// The one line printed after Redis came back.
pub fn gap_text(lost_at_ms: Option<u64>, back_at_ms: u64) -> String {
    match lost_at_ms {
        Some(lost) => {
            let mut when = Vec::new();
            write_time(&mut when, lost, false);
            let secs = back_at_ms.saturating_sub(lost) as f64 / 1000.0;
            format!(
                "── Redis connection lost at {} for {secs:.1} s: events published meanwhile were not received (the --since history may still have them) ──",
                String::from_utf8_lossy(&when)
            )
        }
        None => "── Redis connection was re-established: events published while it was down were not received (the --since history may still have them) ──".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::borrow::Cow;

    const TS: u64 = 1_800_000_000_123; // 2027-01-15T08:00:00.123Z

    fn ev(level: LogLevel, call: Option<&'static str>) -> EventView<'static> {
        EventView {
            ts: TS,
            service: Cow::Borrowed("signal"),
            level,
            event: Cow::Borrowed("peer.joined"),
            call_id: call.map(Cow::Borrowed),
            detail: serde_json::json!({"role": "offerer"}),
            detail_raw: None,
        }
    }

    fn line(ev: &EventView<'_>, opts: RenderOptions) -> String {
        let mut out = Vec::new();
        render_event(ev, &opts, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn civil_time_matches_known_dates() {
        let mut out = Vec::new();
        write_time(&mut out, 0, true);
        write_time(&mut out, TS, true);
        write_time(&mut out, 951_782_400_000, true); // leap day 2000
        write_time(&mut out, TS, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000Z2027-01-15T08:00:00.123Z2000-02-29T00:00:00.000Z08:00:00.123"
        );
    }

    #[test]
    fn plain_console_line_has_every_column() {
        let l = line(
            &ev(LogLevel::Info, Some("c0ffee0c0ffee0c0ffee0c0ffe")),
            RenderOptions::console(false, true),
        );
        assert_eq!(
            l,
            "08:00:00.123 signal INFO  peer.joined              c0ffee0c {\"role\":\"offerer\"}\n"
        );
        assert!(!l.contains('\x1b'));
    }

    #[test]
    fn detail_only_when_enabled_and_dash_without_call() {
        let l = line(
            &ev(LogLevel::Info, None),
            RenderOptions::console(false, false),
        );
        assert_eq!(l, "08:00:00.123 signal INFO  peer.joined              -\n");
    }

    #[test]
    fn file_line_has_date_and_full_call_id() {
        let l = line(
            &ev(LogLevel::Warn, Some("c0ffee0c0ffee0c0ffee0c0ffe")),
            RenderOptions::file(false),
        );
        assert_eq!(
            l,
            "2027-01-15T08:00:00.123Z signal WARN  peer.joined              c0ffee0c0ffee0c0ffee0c0ffe\n"
        );
    }

    #[test]
    fn colors_by_level_and_service() {
        let error = line(
            &ev(LogLevel::Error, None),
            RenderOptions::console(true, false),
        );
        let red = format!("{}", Style::new().red().bold().style("ERROR"));
        assert!(error.contains(&red), "{error:?} lacks {red:?}");
        assert!(red.starts_with("\x1b[31"), "{red:?}");
        let magenta = format!("{}", Style::new().magenta().style("signal"));
        assert!(error.contains(&magenta), "{error:?}");
        let info = line(
            &ev(LogLevel::Info, None),
            RenderOptions::console(true, false),
        );
        assert!(info.contains("\x1b[32mINFO"), "{info:?}");
        assert!(!info.contains("\x1b[31m"));
        assert_ne!(service_style("api"), service_style("signal"));
        assert_eq!(service_style("custom"), service_style("custom"));
    }

    #[test]
    fn terminal_controls_from_the_wire_are_escaped() {
        let mut e = ev(LogLevel::Info, None);
        e.service = Cow::Owned("ap\x1b[2Ji".into());
        e.event = Cow::Owned("evil\u{9b}31m\nnext".into());
        e.detail = serde_json::json!({"x": "\u{7f}\u{1b}]0;title\u{7}"});
        let l = line(&e, RenderOptions::console(false, true));
        assert_eq!(l.matches('\n').count(), 1, "{l:?}");
        assert!(!l.contains('\x1b'), "{l:?}");
        assert!(!l.contains('\u{9b}'), "{l:?}");
        assert!(!l.contains('\u{7f}'), "{l:?}");
        assert!(l.contains("ap\\u{1b}[2Ji"), "{l:?}");
    }

    #[test]
    fn json_line_is_the_payload_or_a_safe_rewrite() {
        let mut out = Vec::new();
        let p = br#"{"ts":1,"service":"api","level":"info","event":"e"}"#;
        render_json_line(p, &mut out);
        assert_eq!(out, [p.as_slice(), b"\n"].concat());
        out.clear();
        let pretty =
            "{\n \"ts\": 1, \"service\": \"a\u{9b}pi\", \"level\": \"info\", \"event\": \"e\"\n}";
        render_json_line(pretty.as_bytes(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(!text.contains('\u{9b}'));
        let back: LogEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back.service, "a\u{9b}pi");
    }

    #[test]
    fn malformed_line_shows_escaped_truncated_raw() {
        let mut out = Vec::new();
        let mut raw = b"\x1b[31mnot json".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 3000));
        render_malformed(
            TS,
            "api",
            &raw,
            "expected value",
            &RenderOptions::console(false, false),
            &mut out,
        );
        let l = String::from_utf8(out).unwrap();
        assert!(
            l.starts_with(
                "08:00:00.123 api    WARN  malformed event (expected value): \\u{1b}[31mnot json"
            ),
            "{l}"
        );
        assert!(l.ends_with("… (3013 bytes)\n"), "{l}");
        assert!(l.len() < MAX_RAW_SHOWN + 200);
    }

    #[test]
    fn gap_line_mentions_loss_time_and_duration() {
        let t = gap_text(Some(TS), TS + 3_240);
        assert!(t.contains("08:00:00.123") && t.contains("3.2 s"), "{t}");
        assert!(gap_text(None, TS).contains("re-established"));
    }
}
