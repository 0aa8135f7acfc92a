//! The call log event every service publishes on `logs:{service}` and appends to the
//! `logs-history` stream; the logger renders it.
//!
//! Events name lifecycle steps (`call.created`, `peer.joined`, `turn.allocation.created`, …),
//! never carry tokens, codes or TURN passwords, and are emitted per lifecycle step, not per packet.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::CallId;

/// Severity of a log event, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            other => Err(format!(
                "unknown level {other:?} (debug, info, warn, error)"
            )),
        }
    }
}

/// One call log event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    /// Unix milliseconds.
    pub ts: u64,
    /// Publishing service: `api`, `signal`, `turn`, `logger`.
    pub service: String,
    pub level: LogLevel,
    /// Dotted event name, e.g. `call.created`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
    /// Event-specific fields (a JSON object), or null.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl LogEvent {
    pub fn new(ts: u64, service: &str, level: LogLevel, event: &str) -> Self {
        Self {
            ts,
            service: service.to_owned(),
            level,
            event: event.to_owned(),
            call_id: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn call(mut self, call: &CallId) -> Self {
        self.call_id = Some(call.clone());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The pub/sub channel this event goes to.
    pub fn channel(&self) -> String {
        crate::keys::log_channel(&self.service)
    }
}
