//! One payload in, lines out: decode → filter → (seam dedup) → render → console and file.
//! Synchronous and free of Redis; the async loop in `lib.rs` feeds it.
//!
//! Hot path per shown event: decode borrows from the payload, render appends to the one
//! reused line buffer, and both outputs are `BufWriter`s flushed only when the queue of
//! received messages runs empty (`flush`), so a burst costs a few large writes.

use std::io::{BufWriter, Write};
use std::time::Instant;

use hermes_proto::{LogEvent, LogLevel};

use crate::config::{FileFormat, Settings};
use crate::decode::{Decoded, decode};
use crate::error::LoggerError;
use crate::filter::Filter;
use crate::history::SeamDedup;
use crate::render::{self, RenderOptions};
use crate::sink::FileSink;

/// Console buffer; large enough that a burst is written in few syscalls.
const CONSOLE_BUFFER: usize = 64 * 1024;

/// Where a payload came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Received on `logs:*`.
    Live,
    /// Replayed from `logs-history`; `remember` when a live copy may still arrive.
    History { remember: bool },
}

/// Whether to keep going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Flow {
    Continue,
    /// `--max-events` reached or stdout closed (e.g. `| head`): stop cleanly.
    Done,
}

/// How the dedup at the history/live seam ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeamEnd {
    /// When the logger's own seam marker, published after the replay, arrives live: Redis
    /// delivers a connection's messages in publish order, so every live copy of a replayed
    /// event is in by then. Exact, whatever the load.
    Marker,
    /// A while after the live backlog first ran empty (the marker could not be sent).
    Window,
}

#[derive(Debug)]
struct Seam {
    dedup: SeamDedup,
    end: SeamEnd,
    deadline: Option<Instant>,
}

pub struct Pipeline {
    filter: Filter,
    json: bool,
    want_detail: bool,
    console_opts: RenderOptions,
    file_opts: RenderOptions,
    out: BufWriter<Box<dyn Write + Send>>,
    file: Option<(FileSink, FileFormat)>,
    line: Vec<u8>,
    /// Seam dedup, how it ends, and (window mode) when it expires.
    dedup: Option<Seam>,
    shown: u64,
    max_events: u64,
    stdout_closed: bool,
}

impl Pipeline {
    /// Opens the file (a clear error when it cannot be created).
    pub fn new(
        settings: &Settings,
        out: Box<dyn Write + Send>,
        color: bool,
    ) -> Result<Self, LoggerError> {
        let file = match &settings.file {
            Some(target) => Some((FileSink::open(&target.path)?, target.format)),
            None => None,
        };
        let plain_file = matches!(file, Some((_, FileFormat::Plain)));
        Ok(Self {
            filter: settings.filter.clone(),
            json: settings.json,
            want_detail: settings.detail && (!settings.json || plain_file),
            console_opts: RenderOptions::console(color, settings.detail),
            file_opts: RenderOptions::file(settings.detail),
            out: BufWriter::with_capacity(CONSOLE_BUFFER, out),
            file,
            line: Vec::with_capacity(1024),
            dedup: None,
            shown: 0,
            max_events: settings.max_events,
            stdout_closed: false,
        })
    }

    /// Events shown so far.
    pub fn shown(&self) -> u64 {
        self.shown
    }

    /// Install the seam dedup for the live events that follow a history replay.
    pub fn set_dedup(&mut self, dedup: SeamDedup, end: SeamEnd) {
        self.dedup = (!dedup.is_empty()).then_some(Seam {
            dedup,
            end,
            deadline: None,
        });
    }

    /// The seam marker arrived live: every live copy of a replayed event arrived before it, so
    /// the dedup has done its work.
    pub fn end_seam(&mut self) {
        self.dedup = None;
    }

    /// The connection dropped before the seam marker arrived (it may never come): fall back to
    /// ending the dedup by time.
    pub fn seam_marker_lost(&mut self) {
        if let Some(seam) = self.dedup.as_mut() {
            seam.end = SeamEnd::Window;
        }
    }

    /// Called whenever the live queue ran empty. The dedup is dropped once every remembered
    /// copy was matched; in [`SeamEnd::Window`] mode also `window` after the first call (the
    /// backlog queued during the replay was worked through; the rest is slack for delay).
    pub fn expire_dedup(&mut self, now: Instant, window: std::time::Duration) {
        let Some(seam) = self.dedup.as_mut() else {
            return;
        };
        let expired = match seam.end {
            SeamEnd::Marker => false,
            SeamEnd::Window => now >= *seam.deadline.get_or_insert(now + window),
        };
        if seam.dedup.is_empty() || expired {
            self.dedup = None;
        }
    }

    pub fn has_dedup(&self) -> bool {
        self.dedup.is_some()
    }

    /// Handle one payload. `channel_service` names the source for malformed payloads.
    pub fn handle(
        &mut self,
        channel_service: &[u8],
        payload: &[u8],
        source: Source,
        now_ms: u64,
        history_dedup: Option<&mut SeamDedup>,
    ) -> Result<Flow, LoggerError> {
        match decode(payload, self.want_detail) {
            Decoded::Event(event) => {
                if !self.filter.matches(&event) {
                    return Ok(Flow::Continue);
                }
                match source {
                    Source::History { remember: true } => {
                        if let Some(d) = history_dedup {
                            d.remember(payload);
                        }
                    }
                    Source::History { remember: false } => {}
                    Source::Live => {
                        if let Some(seam) = self.dedup.as_mut()
                            && seam.dedup.take(payload)
                        {
                            return Ok(Flow::Continue);
                        }
                    }
                }
                self.line.clear();
                if self.json {
                    render::render_json_line(payload, &mut self.line);
                } else {
                    render::render_event(&event, &self.console_opts, &mut self.line);
                }
                let flow = self.write_console()?;
                if let Some((sink, format)) = self.file.as_mut() {
                    self.line.clear();
                    match format {
                        FileFormat::Plain => {
                            render::render_event(&event, &self.file_opts, &mut self.line)
                        }
                        FileFormat::Json => render::render_json_line(payload, &mut self.line),
                    }
                    sink.write(&self.line);
                }
                self.shown += 1;
                if flow == Flow::Done || (self.max_events > 0 && self.shown >= self.max_events) {
                    return Ok(Flow::Done);
                }
                Ok(Flow::Continue)
            }
            Decoded::Malformed { raw, reason } => {
                if !self.filter.matches_service(channel_service) {
                    return Ok(Flow::Continue);
                }
                let service = String::from_utf8_lossy(channel_service);
                let text = format!("malformed event on logs:{service} ({reason})");
                let detail = serde_json::json!({
                    "channel": format!("logs:{service}"),
                    "reason": reason,
                    "raw": render::raw_preview(raw),
                });
                self.line.clear();
                if self.json {
                    let ev = LogEvent::new(now_ms, "logger", LogLevel::Warn, "logger.malformed")
                        .detail(detail.clone());
                    render::render_log_event_json(&ev, &mut self.line);
                } else {
                    render::render_malformed(
                        now_ms,
                        &service,
                        raw,
                        &reason,
                        &self.console_opts,
                        &mut self.line,
                    );
                }
                let flow = self.write_console()?;
                if let Some((sink, format)) = self.file.as_mut() {
                    self.line.clear();
                    match format {
                        FileFormat::Plain => render::render_malformed(
                            now_ms,
                            &service,
                            raw,
                            &reason,
                            &self.file_opts,
                            &mut self.line,
                        ),
                        FileFormat::Json => {
                            let ev =
                                LogEvent::new(now_ms, "logger", LogLevel::Warn, "logger.malformed")
                                    .detail(detail);
                            render::render_log_event_json(&ev, &mut self.line);
                        }
                    }
                    sink.write(&self.line);
                }
                tracing::debug!("{text}");
                Ok(flow)
            }
        }
    }

    /// A line from the logger itself (gap, falling behind, history seam), on the console and
    /// in the file; in JSON modes a LogEvent of service `logger`.
    pub fn notice(
        &mut self,
        now_ms: u64,
        level: LogLevel,
        event: &str,
        text: &str,
        detail: serde_json::Value,
    ) -> Result<Flow, LoggerError> {
        let ev = LogEvent::new(now_ms, "logger", level, event).detail(detail);
        self.line.clear();
        if self.json {
            render::render_log_event_json(&ev, &mut self.line);
        } else {
            render::render_notice(now_ms, level, text, &self.console_opts, &mut self.line);
        }
        let flow = self.write_console()?;
        if let Some((sink, format)) = self.file.as_mut() {
            self.line.clear();
            match format {
                FileFormat::Plain => {
                    render::render_notice(now_ms, level, text, &self.file_opts, &mut self.line)
                }
                FileFormat::Json => render::render_log_event_json(&ev, &mut self.line),
            }
            sink.write(&self.line);
        }
        Ok(flow)
    }

    /// A console-only line for people (not written in JSON mode nor to the file).
    pub fn banner(&mut self, now_ms: u64, text: &str) -> Result<Flow, LoggerError> {
        if self.json {
            return Ok(Flow::Continue);
        }
        self.line.clear();
        render::render_notice(
            now_ms,
            LogLevel::Info,
            text,
            &self.console_opts,
            &mut self.line,
        );
        self.write_console()
    }

    fn write_console(&mut self) -> Result<Flow, LoggerError> {
        if self.stdout_closed {
            return Ok(Flow::Done);
        }
        match self.out.write_all(&self.line) {
            Ok(()) => Ok(Flow::Continue),
            Err(e) => self.console_error(e),
        }
    }

    fn console_error(&mut self, e: std::io::Error) -> Result<Flow, LoggerError> {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            self.stdout_closed = true;
            Ok(Flow::Done)
        } else {
            Err(LoggerError::Stdout(e))
        }
    }

    /// Push buffered lines out (called when no message is waiting).
    pub fn flush(&mut self) -> Result<Flow, LoggerError> {
        if let Some((sink, _)) = self.file.as_mut() {
            sink.flush();
        }
        if self.stdout_closed {
            return Ok(Flow::Done);
        }
        match self.out.flush() {
            Ok(()) => Ok(Flow::Continue),
            Err(e) => self.console_error(e),
        }
    }

    /// SIGHUP: reopen the file at its path (logrotate moved the old one away).
    pub fn reopen_file(&mut self) {
        if let Some((sink, _)) = self.file.as_mut() {
            match sink.reopen() {
                Ok(()) => tracing::info!(path = %sink.path().display(), "log file reopened"),
                Err(e) => tracing::error!(error = %e, "log file not reopened"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use clap::Parser;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pipeline(args: &[&str]) -> (Pipeline, Shared) {
        let mut argv = vec!["hermes-logger", "--no-file"];
        argv.extend_from_slice(args);
        let settings = Config::try_parse_from(argv).unwrap().validate().unwrap();
        let shared = Shared::default();
        (
            Pipeline::new(&settings, Box::new(shared.clone()), false).unwrap(),
            shared,
        )
    }

    fn text(s: &Shared) -> String {
        String::from_utf8(s.0.lock().unwrap().clone()).unwrap()
    }

    const EV: &[u8] = br#"{"ts":1800000000123,"service":"api","level":"info","event":"call.created","callId":"c0ffee0c0ffee0c0ffee0c0ffe"}"#;

    #[test]
    fn buffered_until_flush_and_max_events() {
        let (mut p, out) = pipeline(&["--max-events", "2"]);
        assert_eq!(
            p.handle(b"api", EV, Source::Live, 0, None).unwrap(),
            Flow::Continue
        );
        assert_eq!(text(&out), "", "buffered until the queue is empty");
        assert_eq!(p.flush().unwrap(), Flow::Continue);
        assert!(text(&out).contains("call.created"));
        assert_eq!(
            p.handle(b"api", EV, Source::Live, 0, None).unwrap(),
            Flow::Done
        );
        assert_eq!(p.shown(), 2);
    }

    #[test]
    fn seam_dedup_skips_replayed_live_copies_once() {
        let (mut p, out) = pipeline(&[]);
        let mut dedup = SeamDedup::default();
        let _ = p
            .handle(
                b"history",
                EV,
                Source::History { remember: true },
                0,
                Some(&mut dedup),
            )
            .unwrap();
        p.set_dedup(dedup, SeamEnd::Window);
        let _ = p.handle(b"api", EV, Source::Live, 0, None).unwrap();
        let _ = p.handle(b"api", EV, Source::Live, 0, None).unwrap();
        let _ = p.flush().unwrap();
        assert_eq!(
            text(&out).matches("call.created").count(),
            2,
            "{}",
            text(&out)
        );
        assert_eq!(p.shown(), 2);
    }

    /// Two replayed copies remembered; returns the pipeline with the dedup installed.
    fn pipeline_with_seam(end: SeamEnd) -> (Pipeline, Shared) {
        let (mut p, out) = pipeline(&[]);
        let mut dedup = SeamDedup::default();
        for _ in 0..2 {
            let _ = p
                .handle(
                    b"history",
                    EV,
                    Source::History { remember: true },
                    0,
                    Some(&mut dedup),
                )
                .unwrap();
        }
        p.set_dedup(dedup, end);
        (p, out)
    }

    #[test]
    fn marker_mode_keeps_the_dedup_past_any_window_until_the_marker() {
        let (mut p, _) = pipeline_with_seam(SeamEnd::Marker);
        let start = Instant::now();
        let window = std::time::Duration::from_secs(5);
        p.expire_dedup(start, window);
        p.expire_dedup(start + window * 100, window);
        assert!(p.has_dedup(), "a late live copy is still recognised");
        let _ = p.handle(b"api", EV, Source::Live, 0, None).unwrap();
        assert_eq!(p.shown(), 2, "the live copy was skipped");
        p.end_seam();
        assert!(!p.has_dedup());
        let _ = p.handle(b"api", EV, Source::Live, 0, None).unwrap();
        assert_eq!(p.shown(), 3, "after the marker, live events are all new");
    }

    #[test]
    fn window_mode_and_a_lost_marker_end_by_time() {
        let window = std::time::Duration::from_secs(5);
        let (mut p, _) = pipeline_with_seam(SeamEnd::Window);
        let start = Instant::now();
        p.expire_dedup(start, window);
        assert!(p.has_dedup());
        p.expire_dedup(start + window, window);
        assert!(!p.has_dedup());

        let (mut p, _) = pipeline_with_seam(SeamEnd::Marker);
        p.seam_marker_lost();
        p.expire_dedup(start, window);
        p.expire_dedup(start + window, window);
        assert!(!p.has_dedup());
    }

    #[test]
    fn the_dedup_ends_once_every_remembered_copy_was_matched() {
        let (mut p, _) = pipeline_with_seam(SeamEnd::Marker);
        for _ in 0..2 {
            let _ = p.handle(b"api", EV, Source::Live, 0, None).unwrap();
        }
        p.expire_dedup(Instant::now(), std::time::Duration::from_secs(5));
        assert!(!p.has_dedup());
        assert_eq!(p.shown(), 2, "only the two replayed copies were shown");
    }

    #[test]
    fn filtered_events_are_not_remembered_nor_shown() {
        let (mut p, out) = pipeline(&["--service", "turn"]);
        let mut dedup = SeamDedup::default();
        let _ = p
            .handle(
                b"history",
                EV,
                Source::History { remember: true },
                0,
                Some(&mut dedup),
            )
            .unwrap();
        assert!(dedup.is_empty());
        let _ = p.flush().unwrap();
        assert_eq!(text(&out), "");
    }

    #[test]
    fn malformed_in_json_mode_is_a_parseable_logger_event() {
        let (mut p, out) = pipeline(&["--json"]);
        let _ = p.handle(b"api", b"{oops", Source::Live, 42, None).unwrap();
        let _ = p.flush().unwrap();
        let ev: LogEvent = serde_json::from_str(text(&out).trim()).unwrap();
        assert_eq!(ev.event, "logger.malformed");
        assert_eq!(ev.detail["raw"], "{oops");
        assert_eq!(ev.detail["channel"], "logs:api");
    }

    #[test]
    fn closed_stdout_stops_cleanly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let settings = Config::try_parse_from(["hermes-logger", "--no-file"])
            .unwrap()
            .validate()
            .unwrap();
        let mut p = Pipeline::new(&settings, Box::new(Closed), false).unwrap();
        let _ = p.handle(b"api", EV, Source::Live, 0, None).unwrap();
        assert_eq!(p.flush().unwrap(), Flow::Done);
    }
}
