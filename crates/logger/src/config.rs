//! Command line and environment of `hermes-logger`, parsed by clap and validated once at start
//! into [`Settings`].
//!
//! Every flag also reads an environment variable (`LOGGER_*`), so the same binary works as a
//! daemon under docker/systemd (environment) and as an operator's console (flags).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};
use hermes_proto::LogLevel;
use hermes_proto::ids::{ID_LEN, is_id_byte};
use hermes_service::CommonArgs;

use crate::error::LoggerError;
use crate::filter::Filter;

/// Where the daemon keeps its copy of the call log unless told otherwise.
pub const DEFAULT_FILE: &str = "/var/log/calls/observer.log";
/// Where `/healthz` listens unless told otherwise.
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:9642";

/// When to color the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ColorChoice {
    /// Color when stdout is a terminal, NO_COLOR is unset or empty and TERM is not `dumb`.
    #[default]
    Auto,
    /// Always color (overrides NO_COLOR, as an explicit flag should).
    Always,
    /// Never color.
    Never,
}

/// What the log file receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum FileFormat {
    /// The console line without colors, with the full UTC date.
    #[default]
    Plain,
    /// One LogEvent JSON object per line (the payload as published).
    Json,
}

/// `hermes-logger`: the live, colored console of the Hermes call log.
///
/// Follows every service's log events (Redis pub/sub `logs:*`), prints one line per event and
/// keeps a copy in a file. Use `--call` to watch one call, `--since 10m` to start with what
/// already happened, `--json` to pipe into jq.
#[derive(Debug, Clone, Parser)]
#[command(name = "hermes-logger", version)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Only events of these calls: a full callId or a prefix of one (e.g. the 8-character short
    /// id printed on every line). Repeat the flag or give a comma list. Events without a callId
    /// are hidden while a call filter is set.
    #[arg(
        long = "call",
        env = "LOGGER_CALL_FILTER",
        value_delimiter = ',',
        value_name = "CALL_ID"
    )]
    pub calls: Vec<String>,

    /// Only events of these services (`api`, `signal`, `turn`, …). Repeat or comma list.
    #[arg(
        long = "service",
        env = "LOGGER_SERVICE_FILTER",
        value_delimiter = ',',
        value_name = "SERVICE"
    )]
    pub services: Vec<String>,

    /// Minimum level shown: debug, info, warn or error.
    #[arg(long, env = "LOGGER_LEVEL", default_value = "debug")]
    pub level: LogLevel,

    /// Print each event's detail object after the callId (as published). Off by default to
    /// keep lines short.
    #[arg(long, env = "LOGGER_INCLUDE_DETAIL", value_parser = BoolishValueParser::new())]
    pub detail: bool,

    /// Print the events as JSON lines (one LogEvent each) instead of colored text, for jq.
    #[arg(long, env = "LOGGER_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,

    /// First print the events of this recent past from the `logs-history` stream (e.g. `90s`,
    /// `10m`, `2h`, `1h30m`, `1d`), then follow live without duplicates at the seam.
    #[arg(long, env = "LOGGER_SINCE", value_parser = parse_duration, value_name = "DURATION")]
    pub since: Option<Duration>,

    /// Colors on the console: auto (only on a terminal, honouring NO_COLOR), always, never.
    #[arg(long, env = "LOGGER_COLOR", value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Append every shown line to this file (its directory is created). It is reopened on
    /// SIGHUP, so logrotate can move it away. Empty disables the file.
    #[arg(long, env = "LOGGER_FILE", default_value = DEFAULT_FILE, value_name = "PATH")]
    pub file: String,

    /// Do not write a file (same as an empty --file); handy for an operator's console.
    #[arg(long)]
    pub no_file: bool,

    /// Lines in the file: plain (uncolored console lines with the date) or json (LogEvents).
    #[arg(long, env = "LOGGER_FILE_FORMAT", value_enum, default_value_t = FileFormat::Plain)]
    pub file_format: FileFormat,

    /// Address of the `/healthz` listener, `off` to disable. Default 0.0.0.0:9642; when the
    /// default port is already taken (another logger runs on this host) the console starts
    /// without it, while an address given explicitly must bind.
    #[arg(long, env = "LOGGER_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<String>,

    /// Exit after this many events were shown (0: follow forever). For scripts and benchmarks.
    #[arg(long, env = "LOGGER_MAX_EVENTS", default_value_t = 0, value_name = "N")]
    pub max_events: u64,
}

/// Where `/healthz` listens, and whether failing to bind is fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthListen {
    Off,
    /// The built-in default: if taken, warn and go on without it.
    Default(String),
    /// Given by the operator: must bind.
    Explicit(String),
}

/// The log file and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    pub path: PathBuf,
    pub format: FileFormat,
}

/// Configuration validated once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis_url: String,
    pub filter: Filter,
    pub detail: bool,
    pub json: bool,
    pub since: Option<Duration>,
    pub color: ColorChoice,
    pub file: Option<FileTarget>,
    pub health: HealthListen,
    pub max_events: u64,
}

impl Config {
    /// Check every value and build [`Settings`]; the error says which flag is wrong and why.
    pub fn validate(&self) -> Result<Settings, LoggerError> {
        let mut calls = Vec::new();
        for raw in &self.calls {
            let call = raw.trim().to_ascii_lowercase();
            if call.is_empty() {
                continue;
            }
            if call.len() > ID_LEN || !call.bytes().all(is_id_byte) {
                return Err(LoggerError::Config(format!(
                    "--call / LOGGER_CALL_FILTER {raw:?} is not a callId or a prefix of one \
                     (up to {ID_LEN} characters of lowercase base32)"
                )));
            }
            calls.push(call);
        }
        let mut services = Vec::new();
        for raw in &self.services {
            let service = raw.trim();
            if service.is_empty() {
                continue;
            }
            if !service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(LoggerError::Config(format!(
                    "--service / LOGGER_SERVICE_FILTER {raw:?} is not a service name"
                )));
            }
            services.push(service.to_owned());
        }
        let file = if self.no_file || self.file.trim().is_empty() {
            None
        } else {
            Some(FileTarget {
                path: PathBuf::from(self.file.trim()),
                format: self.file_format,
            })
        };
        let health = match self.health_listen.as_deref().map(str::trim) {
            None => HealthListen::Default(DEFAULT_HEALTH_LISTEN.to_owned()),
            Some("" | "off" | "none" | "false") => HealthListen::Off,
            Some(addr) => {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(LoggerError::Config(format!(
                        "LOGGER_HEALTH_LISTEN / --health-listen {addr:?} is not an ip:port address"
                    )));
                }
                HealthListen::Explicit(addr.to_owned())
            }
        };
        Ok(Settings {
            redis_url: self.common.redis_url.clone(),
            filter: Filter::new(calls, services, self.level),
            detail: self.detail,
            json: self.json,
            since: self.since,
            color: self.color,
            file,
            health,
            max_events: self.max_events,
        })
    }
}

/// Decide whether the console gets ANSI colors.
///
/// `always`/`never` are explicit and win. Under `auto`: only when stdout is a terminal, `NO_COLOR`
/// is unset or empty (<https://no-color.org>) and `TERM` is not `dumb`.
pub fn color_enabled(
    choice: ColorChoice,
    stdout_is_terminal: bool,
    no_color: Option<&OsStr>,
    term: Option<&OsStr>,
) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            stdout_is_terminal
                && no_color.is_none_or(OsStr::is_empty)
                && term != Some(OsStr::new("dumb"))
        }
    }
}

/// Parse `500ms`, `90s`, `10m`, `2h`, `1d` and sums such as `1h30m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{s:?}: expected a number before {rest:?} (e.g. 90s, 10m, 1h30m)"
            ));
        }
        let value: u64 = rest[..digits].parse().map_err(|e| format!("{s:?}: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" | "sec" => Duration::from_secs(value),
            "m" | "min" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            other => {
                return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h, d)"));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["hermes-logger"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn call_filters_from_flags_and_comma_lists() {
        let s = parse(&["--call", "C0FFEE", "--call", "ab12,  ,cd34", "--no-file"])
            .validate()
            .unwrap();
        assert_eq!(s.filter.calls(), ["c0ffee", "ab12", "cd34"]);
        assert!(s.file.is_none());
        let err = parse(&["--call", "not-an-id"]).validate().unwrap_err();
        assert!(err.to_string().contains("not-an-id"), "{err}");
    }

    #[test]
    fn file_and_health_defaults() {
        let s = parse(&[]).validate().unwrap();
        let file = s.file.unwrap();
        assert_eq!(file.path, PathBuf::from(DEFAULT_FILE));
        assert_eq!(file.format, FileFormat::Plain);
        assert_eq!(
            s.health,
            HealthListen::Default(DEFAULT_HEALTH_LISTEN.to_owned())
        );
        let s = parse(&["--file", "", "--health-listen", "off"])
            .validate()
            .unwrap();
        assert!(s.file.is_none());
        assert_eq!(s.health, HealthListen::Off);
        let s = parse(&["--health-listen", "127.0.0.1:0"])
            .validate()
            .unwrap();
        assert_eq!(s.health, HealthListen::Explicit("127.0.0.1:0".into()));
        assert!(parse(&["--health-listen", "localhost"]).validate().is_err());
    }

    #[test]
    fn boolean_flags_and_their_environment_spellings() {
        let c = parse(&["--detail", "--json"]);
        assert!(c.detail && c.json);
        let c = parse(&[]);
        assert!(!c.detail && !c.json);
        // clap reads the same parser for env values; check the spellings operators use.
        let parser = BoolishValueParser::new();
        let cmd = clap::Command::new("t");
        for (text, want) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("off", false),
        ] {
            let got =
                clap::builder::TypedValueParser::parse_ref(&parser, &cmd, None, OsStr::new(text))
                    .unwrap();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn level_and_color_values() {
        let c = parse(&["--level", "WARN", "--color", "never", "--since", "10m"]);
        assert_eq!(c.level, LogLevel::Warn);
        assert_eq!(c.color, ColorChoice::Never);
        assert_eq!(c.since, Some(Duration::from_secs(600)));
        let argv = ["hermes-logger", "--level", "loud"];
        assert!(Config::try_parse_from(argv).is_err());
    }

    #[test]
    fn color_decision() {
        let empty = OsStr::new("");
        let one = OsStr::new("1");
        let xterm = OsStr::new("xterm-256color");
        let dumb = OsStr::new("dumb");
        assert!(color_enabled(ColorChoice::Auto, true, None, Some(xterm)));
        assert!(color_enabled(ColorChoice::Auto, true, Some(empty), None));
        assert!(!color_enabled(ColorChoice::Auto, false, None, Some(xterm)));
        assert!(!color_enabled(
            ColorChoice::Auto,
            true,
            Some(one),
            Some(xterm)
        ));
        assert!(!color_enabled(ColorChoice::Auto, true, None, Some(dumb)));
        assert!(color_enabled(ColorChoice::Always, false, Some(one), None));
        assert!(!color_enabled(ColorChoice::Never, true, None, Some(xterm)));
    }
}
